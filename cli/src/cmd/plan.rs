//! `shardpack plan SRC OUT --parts N`: plan a pack spread over many machines, and (from
//! `shardpack pack --plan OUT --part I`) run one part of it.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use shardpack::compile::{pack_part, plan_inputs, plan_parts, PackOptions, Progress};

use crate::util::human_bytes;

/// Plan a pack spread over many machines (or processes): scan SRC once and fix everything
/// that decides the bytes (sample order, each field's compression and dictionary, the shard
/// boundaries), written into OUT. Then run every part, anywhere, in any order, at the same
/// time (`shardpack pack --plan OUT --part I`, I from 0 to N-1), and `shardpack merge OUT`.
/// The dataset is byte-identical to `shardpack pack SRC OUT` with the same options, whatever
/// N. OUT must be new or empty and reachable from every machine (a network file system).
/// Until merged, OUT is no dataset (readers refuse it).
///
/// Every pack option applies as in `shardpack pack`; shards are cut by raw sizes
/// (--shard-cut raw). A part cannot skip a file it fails to read (--skip-errors covers what
/// the scan leaves out), and a .tar.gz source cannot be split (gunzip it first).
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
#[group(skip)]
pub struct Args {
    /// Number of parts (at most one per shard does work; extra parts write nothing). Default:
    /// $SLURM_ARRAY_TASK_COUNT.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub parts: Option<u64>,
    #[command(flatten)]
    pub pack: crate::cmd::pack::Args,
}

/// The CLI's progress for plans and parts: notes on stderr (shown by pack's rule: field
/// notes capped, none under `-q`), cancelled by SIGINT/SIGTERM.
struct Notes(crate::notes::Notes);

impl Notes {
    fn new(quiet: bool) -> Notes {
        Notes(crate::notes::Notes::new(quiet))
    }

    /// Prints the closing line of the field notes, if some were left out.
    fn finish(&self, hint: &str) {
        if let Some(line) = self.0.summary(hint) {
            eprintln!("shardpack: {line}");
        }
    }
}

impl Progress for Notes {
    fn note(&self, msg: &str) {
        if self.0.admit(msg) {
            eprintln!("shardpack: {msg}");
        }
    }
    fn cancelled(&self) -> bool {
        crate::signal::received().is_some()
    }
}

/// An environment variable as a number, naming it when it is not one.
fn env_number(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<u64>> {
    match get(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("${name} is {v:?}, not a number")),
    }
}

/// The part number from the scheduler: a Slurm array task (its id minus the array's first
/// id) or a Kubernetes Indexed Job's completion index.
pub(crate) fn part_from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<u64>> {
    if let Some(id) = env_number(get, "SLURM_ARRAY_TASK_ID")? {
        let min = env_number(get, "SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let Some(part) = id.checked_sub(min) else {
            bail!("$SLURM_ARRAY_TASK_ID {id} is below $SLURM_ARRAY_TASK_MIN {min}");
        };
        return Ok(Some(part));
    }
    env_number(get, "JOB_COMPLETION_INDEX")
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Runs `plan`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let p = &a.pack;
    if p.plan.is_some() || p.part.is_some() {
        bail!("--plan and --part are options of `shardpack pack`, not of `shardpack plan`");
    }
    if p.force {
        bail!("a plan needs a new or empty OUT; remove the old one first (--force does not apply)");
    }
    let parts = match a.parts {
        Some(n) => n,
        None => env_number(&env, "SLURM_ARRAY_TASK_COUNT")?
            .context("give the number of parts: --parts N (or run in a Slurm array)")?,
    };
    let opts = crate::cmd::pack::options(p)?;
    let dst = p.out.clone().context("OUT is required")?;
    let notes = Notes::new(p.quiet);
    let s = plan_inputs(&p.src, &dst, parts, &opts, &notes);
    notes.finish(&format!(
        "after `shardpack merge {0}`, `shardpack info --all-fields {0}` lists every field's codec",
        dst.display()
    ));
    let s = s.with_context(|| {
        let srcs: Vec<String> = p.src.iter().map(|x| x.display().to_string()).collect();
        format!("planning {} into {} failed", srcs.join(" "), dst.display())
    })?;
    if p.json {
        serde_json::to_writer_pretty(&mut *out, &s)?;
        writeln!(out)?;
    } else if !p.quiet {
        let busy = s.parts.iter().filter(|x| x.shards > 0).count();
        writeln!(
            out,
            "planned {} samples ({} files, {}) into {} shards over {} parts ({} with work) in \
             {:.1} s",
            s.samples,
            s.files,
            human_bytes(s.input_bytes),
            s.shards,
            s.parts.len(),
            busy,
            s.seconds
        )?;
        writeln!(
            out,
            "next: shardpack pack --plan {} --part I   (for I in 0..{}), then shardpack merge {}",
            dst.display(),
            s.parts.len(),
            dst.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `pack --plan OUT [--part I]`.
pub(crate) fn run_part(
    plan: &Path,
    a: &crate::cmd::pack::Args,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let parts = plan_parts(plan)?;
    let part = match a.part {
        Some(i) => i,
        None => part_from_env(&env)?.context(
            "give the part: --part I (or run in a Slurm array or a Kubernetes Indexed Job)",
        )?,
    };
    if let Some(n) = env_number(&env, "SLURM_ARRAY_TASK_COUNT")? {
        if a.part.is_none() && n != parts {
            bail!(
                "the Slurm array has {n} tasks but the plan in {} has {parts} parts; run an \
                 array of {parts} tasks (--array=0-{})",
                plan.display(),
                parts - 1
            );
        }
    }
    let local = PackOptions {
        threads: a.threads.unwrap_or(0) as usize,
        io_threads: a.io_threads.unwrap_or(0) as usize,
        ..PackOptions::default()
    };
    let notes = Notes::new(a.quiet);
    let s = pack_part(plan, part, &local, &notes);
    notes.finish(&format!(
        "`shardpack info --all-fields {}` lists every field's codec once merged",
        plan.display()
    ));
    let s = s.with_context(|| format!("part {part} of the plan in {} failed", plan.display()))?;
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &s)?;
        writeln!(out)?;
    } else if !a.quiet {
        if s.already_done {
            writeln!(
                out,
                "part {}/{}: already done ({} samples in {} shards)",
                s.part, s.parts, s.samples, s.shards
            )?;
        } else {
            writeln!(
                out,
                "part {}/{}: {} samples in {} shards ({} read, {} written) in {:.1} s",
                s.part,
                s.parts,
                s.samples,
                s.shards,
                human_bytes(s.input_bytes),
                human_bytes(s.output_bytes),
                s.seconds
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_part_comes_from_slurm_or_kubernetes() {
        assert_eq!(part_from_env(&with(&[])).unwrap(), None);
        assert_eq!(
            part_from_env(&with(&[("SLURM_ARRAY_TASK_ID", "3")])).unwrap(),
            Some(3)
        );
        assert_eq!(
            part_from_env(&with(&[
                ("SLURM_ARRAY_TASK_ID", "5"),
                ("SLURM_ARRAY_TASK_MIN", "1")
            ]))
            .unwrap(),
            Some(4)
        );
        assert_eq!(
            part_from_env(&with(&[("JOB_COMPLETION_INDEX", "7")])).unwrap(),
            Some(7)
        );
        let e = part_from_env(&with(&[("JOB_COMPLETION_INDEX", "x")])).unwrap_err();
        assert!(e.to_string().contains("JOB_COMPLETION_INDEX"), "{e}");
    }
}

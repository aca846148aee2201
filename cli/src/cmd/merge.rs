//! `shardpack merge OUT`: check every part of a plan and write the dataset's manifest.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use shardpack::compile::{merge, MergeOptions};

use crate::util::human_bytes;

/// Merge the parts of a plan (see `shardpack plan`) into the dataset: check every part's
/// receipt and shards (sizes, footers and index checksums; every byte with --verify), name
/// every part that is missing or damaged (and change nothing then: rerun those parts and
/// merge again), write manifest.json last, and remove the plan's files. OUT then holds exactly
/// what `shardpack pack` would have written. While another run of a part is still going (a
/// straggler or a duplicate of a part already done), the plan's files stay and merge names
/// that part on stderr: merge again once it has ended to remove them.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The directory holding the plan and its parts' shards.
    pub out: PathBuf,
    /// Hash every byte of every shard against its part's receipt (reads the whole dataset).
    #[arg(long)]
    pub verify: bool,
    /// Print the summary as one JSON object: out, parts, samples, shards, output_bytes,
    /// verified, running (part, scratch: runs still going), left (what stays in the plan's
    /// directory, and why), seconds.
    #[arg(long)]
    pub json: bool,
    /// No summary.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `merge`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let s = merge(&a.out, &MergeOptions { verify: a.verify })
        .with_context(|| format!("merging the plan in {} failed", a.out.display()))?;
    for r in &s.running {
        eprintln!(
            "shardpack: part {} is still running (another run of it, in {}); the dataset is \
             complete, but the plan's files stay while it runs: merge again (`shardpack merge \
             {}`) once it has ended to remove them",
            r.part,
            r.scratch.display(),
            a.out.display()
        );
    }
    for l in &s.left {
        eprintln!("shardpack: left {l}");
    }
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &s)?;
        writeln!(out)?;
    } else if !a.quiet {
        writeln!(
            out,
            "merged {} parts: {} samples in {} shards ({}) in {:.2} s; {} is a dataset",
            s.parts,
            s.samples,
            s.shards,
            human_bytes(s.output_bytes),
            s.seconds,
            a.out.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

//! `shardpack ls DATASET`: one line per sample.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use shardpack::reader::OpenOptions;
use shardpack::Dataset;

/// List samples, one per line: index, key, label, and each field with its size
/// (tab-separated; keys are written as their raw bytes). A damaged shard does not stop the
/// listing: its samples are reported on stderr, the others listed, and the exit code is 1.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset directory.
    pub dataset: PathBuf,
}

/// Runs `ls`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let ds = Dataset::open_with(&a.dataset, &OpenOptions::mark_damaged())?;
    let m = ds.manifest();
    for shard in 0..ds.shard_count() {
        if let Some(d) = ds.damaged().iter().find(|d| d.index == shard) {
            out.flush()?;
            eprintln!(
                "shardpack: error: samples {}..{} not listed: {}",
                d.first_sample,
                d.first_sample + d.samples,
                d.error(None)
            );
            continue;
        }
        for s in ds.shard_samples(shard) {
            list(&mut *out, m, s?)?;
        }
    }
    if !ds.damaged().is_empty() {
        bail!(
            "{} of {} shards are damaged; the other samples are listed",
            ds.damaged().len(),
            ds.shard_count()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(out: &mut impl Write, m: &shardpack::Manifest, s: shardpack::Sample<'_>) -> Result<()> {
    write!(out, "{}\t", s.index())?;
    out.write_all(s.key())?;
    match s.label() {
        Some(l) => match m.class_name(l) {
            Some(c) => {
                write!(out, "\t{l}:")?;
                out.write_all(c.as_bytes())?;
            }
            None => write!(out, "\t{l}")?,
        },
        None => write!(out, "\t-")?,
    }
    for f in s.fields() {
        let f = f?;
        out.write_all(b"\t")?;
        out.write_all(f.name())?;
        write!(out, "={}", f.raw_len())?;
    }
    out.write_all(b"\n")?;
    Ok(())
}

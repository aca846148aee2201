//! `shardpack ls DATASET`: one line per sample.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use shardpack::Dataset;

/// List samples, one per line: index, key, label, and each field with its size
/// (tab-separated; keys are written as their raw bytes).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset directory.
    pub dataset: PathBuf,
}

/// Runs `ls`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let ds = Dataset::open(&a.dataset)?;
    let m = ds.manifest();
    for s in ds.iter() {
        let s = s?;
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
    }
    Ok(ExitCode::SUCCESS)
}

//! `shardpack verify DATASET`: check every byte.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use shardpack::verify_dir;

/// Check every byte and every rule of the format: shard and record checksums, that every
/// record decodes (one zstd frame, window at most 128 MiB), the index structure (unique keys,
/// no empty samples, sorted key hashes, safe extraction paths), labels and the manifest's
/// per-field statistics. Exits 3 and lists each problem (shard, sample, key, field, and its
/// kind in brackets, e.g. `[duplicate-key]`) when anything is wrong.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `verify`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let r = verify_dir(&a.dataset)?;
    if a.json {
        let problems: Vec<_> = r
            .problems
            .iter()
            .map(|p| {
                json!({"shard": p.shard, "sample": p.sample, "key": p.key,
                       "field": p.field, "kind": p.kind.name(), "detail": p.detail})
            })
            .collect();
        let v = json!({
            "ok": r.is_ok(),
            "shards": r.shards,
            "samples": r.samples,
            "records": r.records,
            "bytes": r.bytes,
            "problems": problems,
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        for p in &r.problems {
            write!(out, "BAD {}", p.shard)?;
            if let Some(s) = p.sample {
                write!(out, " sample {s}")?;
            }
            if let Some(k) = &p.key {
                write!(out, " key {k:?}")?;
            }
            if let Some(f) = &p.field {
                write!(out, " field {f:?}")?;
            }
            writeln!(out, ": {} [{}]", p.detail, p.kind)?;
        }
        let verdict = if r.is_ok() { "OK" } else { "FAILED" };
        writeln!(
            out,
            "{verdict}: {} shards, {} samples, {} records, {} bytes checked, {} problems",
            r.shards,
            r.samples,
            r.records,
            r.bytes,
            r.problems.len()
        )?;
    }
    Ok(if r.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

//! `shardpack ls DATASET`: one line per sample (TSV, JSON Lines, or NUL-terminated keys).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::util::open_for_index;
use anyhow::{bail, Result};
use shardpack::manifest::Name;

/// List samples, one per line: index, key, label, and each field with its size
/// (tab-separated; keys are written as their raw bytes, so a key holding a tab or a newline
/// breaks the columns: use `--json` or `-0` for such keys). A damaged shard does not stop the
/// listing: its samples are reported on stderr, the others listed, and the exit code is 1.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset: a directory, or a URL (s3://bucket/prefix, http(s)://host/path; see
    /// "Remote datasets" in the README).
    pub dataset: PathBuf,
    /// One JSON object per line (JSON Lines): `index`, `key`, `label`, `class`, `fields`
    /// (list of `{"name", "size"}`). A key or name that is UTF-8 is a JSON string, any other
    /// is `{"hex": "..."}` (as in manifest.json); `label` and `class` are null when absent.
    #[arg(long, conflicts_with = "null")]
    pub json: bool,
    /// Print only the keys, each followed by a NUL byte (for `xargs -0`), like `find -print0`.
    #[arg(short = '0', long = "null")]
    pub null: bool,
}

#[derive(Clone, Copy)]
enum Style {
    Tsv,
    Json,
    Null,
}

/// Runs `ls`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let ds = open_for_index(&a.dataset)?;
    let m = ds.manifest();
    let style = if a.json {
        Style::Json
    } else if a.null {
        Style::Null
    } else {
        Style::Tsv
    };
    // Shard by shard: each index is checked when its shard is first listed (not all at open
    // for large datasets), so `ls | head` reads only what it shows.
    // Everything listed lives in the index: each sample is read with `sample_index`, which
    // (unlike `Dataset::get`) fetches no records of a shard streamed from a remote store.
    let mut damaged = 0usize;
    for shard in 0..ds.shard_count() {
        let meta = &m.shards[shard];
        let sh = match ds.shard(shard) {
            Ok(sh) => sh,
            Err(e) => {
                damaged += 1;
                out.flush()?;
                eprintln!(
                    "shardpack: error: samples {}..{} not listed: {e}",
                    meta.first_sample,
                    meta.first_sample + meta.samples,
                );
                continue;
            }
        };
        for local in 0..sh.len() {
            let s = sh.sample_index(local, meta.first_sample + local)?;
            match style {
                Style::Tsv => list(&mut *out, m, s)?,
                Style::Json => list_json(&mut *out, m, s)?,
                Style::Null => {
                    out.write_all(s.key())?;
                    out.write_all(b"\0")?;
                }
            }
        }
    }
    if damaged > 0 {
        bail!(
            "{damaged} of {} shards are damaged; the other samples are listed",
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

fn list_json(
    out: &mut impl Write,
    m: &shardpack::Manifest,
    s: shardpack::Sample<'_>,
) -> Result<()> {
    let mut fields = Vec::with_capacity(s.field_count());
    for f in s.fields() {
        let f = f?;
        fields.push(serde_json::json!({
            "name": Name::from(f.name()),
            "size": f.raw_len(),
        }));
    }
    let v = serde_json::json!({
        "index": s.index(),
        "key": Name::from(s.key()),
        "label": s.label(),
        "class": s.label().and_then(|l| m.class_name(l)),
        "fields": fields,
    });
    serde_json::to_writer(&mut *out, &v)?;
    out.write_all(b"\n")?;
    Ok(())
}

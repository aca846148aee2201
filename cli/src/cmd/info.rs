//! `shardpack info DATASET`: what the manifest says.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::json;
use shardpack::Dataset;

use crate::util::{human_bytes, open_for_index};

/// Summarize a dataset: format version, samples, shards, fields with counts, sizes and
/// compression, classes. A shard that cannot be opened is reported (with the samples it holds
/// and why) after the description of the rest, and the exit code is then 1.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset: a directory, or a URL (s3://bucket/prefix, http(s)://host/path; see
    /// "Remote datasets" in the README).
    pub dataset: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// List every field (by default a dataset with more than 20 fields shows the 20 with the
    /// most records and one line for the rest; `--json` always lists all).
    #[arg(long)]
    pub all_fields: bool,
}

/// Fields shown by default before the rest are summed up in one line.
pub const FIELDS_SHOWN: usize = 20;

/// Runs `info`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    // Opening validates every shard's header and footer against the manifest (and each index,
    // at open or, for large datasets, when `damaged()` below first asks); a shard that fails is
    // marked damaged, and the manifest still describes the rest.
    let t0 = std::time::Instant::now();
    let ds = open_for_index(&a.dataset)?;
    let m = ds.manifest();
    let damaged: Vec<_> = ds
        .damaged()
        .iter()
        .map(|d| {
            json!({
                "shard": d.index,
                "file": m.shards[d.index].file,
                "first_sample": d.first_sample,
                "samples": d.samples,
                "reason": d.reason,
            })
        })
        .collect();
    // A URL: what opening and checking the indexes cost (the manifest plus a few ranged GETs
    // per shard, in parallel).
    let remote = ds.remote_requests().map(|n| {
        (
            n,
            t0.elapsed().as_secs_f64(),
            ds.remote_mode().unwrap_or_default(),
        )
    });
    let shard_bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    if a.json {
        let v = json!({
            "format_version": m.format_version,
            "writer": m.writer,
            "features": m.features,
            "samples": m.samples,
            "records": m.records,
            "shards": m.shards.len(),
            "bytes": shard_bytes,
            "fields": m.fields,
            "labels": m.labels,
            "classes": m.classes,
            "skipped": m.skipped.len(),
            "options": m.options,
            "damaged": damaged,
            "remote_open": remote.as_ref().map(|(n, secs, mode)| json!({
                "requests": n, "seconds": secs, "mode": mode,
            })),
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return damage_verdict(&ds);
    }
    writeln!(out, "dataset:        {}", a.dataset.display())?;
    if let Some((n, secs, mode)) = &remote {
        writeln!(
            out,
            "remote open:    {n} requests in {:.1} ms ({} shards; read mode {mode}: only the \
             manifest and the indexes)",
            secs * 1e3,
            m.shards.len()
        )?;
    }
    writeln!(out, "format version: {}", m.format_version)?;
    if let Some(w) = &m.writer {
        writeln!(
            out,
            "written by:     {} {} (zstd {})",
            w.name, w.version, w.zstd
        )?;
        if m.fields.iter().any(|f| f.dict_bytes > 0) {
            writeln!(out, "dictionaries:   trained by {}", w.dict_trainer)?;
        }
    }
    let optional = m.unknown_optional_features();
    if !optional.is_empty() {
        writeln!(
            out,
            "features:       {} (optional, not known here: ignored)",
            optional.join(", ")
        )?;
    }
    writeln!(out, "samples:        {}", m.samples)?;
    writeln!(out, "records:        {}", m.records)?;
    writeln!(
        out,
        "shards:         {} ({} total)",
        m.shards.len(),
        human_bytes(shard_bytes)
    )?;
    writeln!(out, "fields:")?;
    writeln!(
        out,
        "  {:<14} {:>10} {:>12} {:>12} {:>7}  compression",
        "name", "records", "raw", "stored", "ratio"
    )?;
    let mut shown: Vec<&shardpack::manifest::FieldMeta> = m.fields.iter().collect();
    let mut rest = Vec::new();
    if !a.all_fields && shown.len() > FIELDS_SHOWN {
        // The most used fields first; the sort is stable, so ties keep the manifest's order.
        shown.sort_by_key(|f| std::cmp::Reverse(f.records));
        rest = shown.split_off(FIELDS_SHOWN);
    }
    for f in shown {
        let comp = match f.compression.as_str() {
            "none" => "none".to_string(),
            "zstd-dict" => format!("zstd-dict:{} ({} dict)", f.level, human_bytes(f.dict_bytes)),
            c => format!("{c}:{}", f.level),
        };
        writeln!(
            out,
            "  {:<14} {:>10} {:>12} {:>12} {:>7.3}  {}",
            format!("{:?}", f.name.display()),
            f.records,
            human_bytes(f.raw_bytes),
            human_bytes(f.stored_bytes),
            ratio(f.raw_bytes, f.stored_bytes),
            comp
        )?;
    }
    if !rest.is_empty() {
        let (records, raw, stored) = rest.iter().fold((0, 0, 0), |(r, a, b), f| {
            (r + f.records, a + f.raw_bytes, b + f.stored_bytes)
        });
        writeln!(
            out,
            "  {:<14} {:>10} {:>12} {:>12} {:>7.3}  (--all-fields lists them)",
            format!("{} more", rest.len()),
            records,
            human_bytes(raw),
            human_bytes(stored),
            ratio(raw, stored),
        )?;
    }
    writeln!(out, "labels:         {}", m.labels)?;
    if !m.classes.is_empty() {
        let shown: Vec<String> = m.classes.iter().take(10).map(|c| c.display()).collect();
        let more = if m.classes.len() > 10 {
            format!(", ... ({} more)", m.classes.len() - 10)
        } else {
            String::new()
        };
        writeln!(
            out,
            "classes:        {} ({}{more})",
            m.classes.len(),
            shown.join(", ")
        )?;
    }
    if let Ok(modes) = m.file_modes() {
        if !modes.is_empty() {
            writeln!(
                out,
                "file modes:     {} executable file{} keep their permission bits (extract \
                 restores them)",
                modes.len(),
                if modes.len() == 1 { "" } else { "s" }
            )?;
        }
    }
    if !m.skipped.is_empty() {
        writeln!(
            out,
            "skipped inputs: {} (listed in manifest.json)",
            m.skipped.len()
        )?;
    }
    if !ds.damaged().is_empty() {
        let unreadable: u64 = ds.damaged().iter().map(|d| d.samples).sum();
        writeln!(
            out,
            "damaged shards: {} of {} ({unreadable} samples unreadable)",
            ds.damaged().len(),
            m.shards.len()
        )?;
        for d in ds.damaged() {
            writeln!(
                out,
                "  {}  samples {}..{}  {}",
                m.shards[d.index].file,
                d.first_sample,
                d.first_sample + d.samples,
                d.reason
            )?;
        }
    }
    damage_verdict(&ds)
}

fn ratio(raw: u64, stored: u64) -> f64 {
    if raw == 0 {
        1.0
    } else {
        stored as f64 / raw as f64
    }
}

/// Success, or (after the description is written) an error naming each damaged shard.
fn damage_verdict(ds: &Dataset) -> Result<ExitCode> {
    let Some(first) = ds.damaged().first() else {
        return Ok(ExitCode::SUCCESS);
    };
    for d in &ds.damaged()[1..] {
        eprintln!("shardpack: error: {}", d.error(None));
    }
    bail!(
        "{}{}",
        first.error(None),
        match ds.damaged().len() {
            1 => String::new(),
            n => format!(" (and {} more damaged shards, above)", n - 1),
        }
    )
}

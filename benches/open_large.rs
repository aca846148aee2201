//! Opening a very large dataset (issue 16): generates a synthetic dataset of tiny samples
//! (default 10^8 samples of 16 bytes in 1,000 shards, written directly with the format's
//! encoders: `benches/synth/`), then measures, from a cold page cache:
//!
//! - `Dataset::open` (default `IndexCheck::Auto`, which leaves the indexes to first use at this
//!   size): time (median of `--runs`), resident memory before and after (VmRSS) and the peak
//!   (getrusage maxrss);
//! - the first `get` (checks that one shard's index) and further `get`s;
//! - a shuffled epoch's `Loader::new` and first batch (today's plan walks every index);
//! - what a plan from the footers alone costs (per-shard sample counts and data bytes).
//!
//! ```text
//! cargo bench --bench open_large -- [--samples N] [--shards S] [--dir DIR] [--runs R]
//!     [--reuse] [--keep] [--skip-loader] [--at-open]
//! ```
//!
//! DIR defaults to `/work/tmp-readpath/open-large.spk` if `/work/tmp-readpath` exists, else a
//! directory under the system's temp dir; it is deleted at the end unless `--keep`. The 10^8
//! default needs about 11 GB of disk.

#[path = "synth/mod.rs"]
mod synth;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardpack::loader::{Loader, LoaderOptions, Shuffle};
use shardpack::reader::{IndexCheck, OpenOptions};
use shardpack::Dataset;

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn maxrss_kib() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is valid.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss as u64
    }
}

fn evict(dir: &Path, ds: &shardpack::Manifest) {
    let paths: Vec<PathBuf> = ds
        .shards
        .iter()
        .map(|s| dir.join(&s.file))
        .chain(std::iter::once(dir.join("manifest.json")))
        .collect();
    shardpack::sys::evict_from_cache(paths.iter().map(PathBuf::as_path)).expect("evict");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let samples: u64 = arg(&args, "--samples").unwrap_or(100_000_000);
    let shards: u64 = arg(&args, "--shards").unwrap_or(1000);
    let runs: usize = arg(&args, "--runs").unwrap_or(3);
    let base = Path::new("/work/tmp-readpath");
    let dir: PathBuf = arg(&args, "--dir").unwrap_or_else(|| {
        if base.is_dir() {
            base.join("open-large.spk")
        } else {
            std::env::temp_dir().join("shardpack-open-large.spk")
        }
    });
    let flag = |f: &str| args.iter().any(|a| a == f);
    println!(
        "dataset: {samples} samples in {shards} shards at {}",
        dir.display()
    );

    let manifest = if flag("--reuse") && dir.join("manifest.json").exists() {
        Dataset::open(&dir).expect("reuse").manifest().clone()
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        let t = Instant::now();
        let m = synth::generate(&dir, samples, shards, 2).expect("generate");
        let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
        println!(
            "generate: {:.1} s, {:.2} GB on disk",
            t.elapsed().as_secs_f64(),
            bytes as f64 / 1e9
        );
        m
    };

    // Open, cold, `runs` times.
    let mut opens = Vec::new();
    let mut ds = None;
    let (rss0, _) = rss_kib();
    // `--at-open`: check every index at open (what open did before issue 16), for comparison.
    let check = match flag("--at-open") {
        true => IndexCheck::AtOpen,
        false => IndexCheck::Auto,
    };
    for _ in 0..runs.max(1) {
        drop(ds.take());
        evict(&dir, &manifest);
        let t = Instant::now();
        let d = Dataset::open_checked(&dir, &OpenOptions::default(), check).expect("open");
        opens.push(ms(t.elapsed()));
        ds = Some(d);
    }
    let ds = Arc::new(ds.unwrap());
    let (rss1, _) = rss_kib();
    let checked = (0..ds.shard_count())
        .filter(|&s| ds.index_checked(s))
        .count();
    println!(
        "open (cold, median of {}): {:.1} ms [{}]; indexes checked at open: {checked}/{}",
        opens.len(),
        median(opens.clone()),
        opens
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        ds.shard_count()
    );
    println!(
        "resident memory: {} KiB before open, {} KiB after ({} KiB for the open dataset); maxrss {} KiB",
        rss0,
        rss1,
        rss1.saturating_sub(rss0),
        maxrss_kib()
    );

    // The first get checks one shard's index; later gets in that shard are index lookups.
    let i = samples / 2 + 12_345 % samples;
    let t = Instant::now();
    let s = ds.get(i).expect("get");
    let first_get = t.elapsed();
    assert_eq!(s.key(), synth::expected_key(i).as_slice());
    let (shard, _) = ds.locate(i).unwrap();
    let span = ds.manifest().shards[shard].clone();
    let t = Instant::now();
    let n_gets = 100_000u64;
    for k in 0..n_gets {
        let j = span.first_sample + (k * 7919) % span.samples;
        std::hint::black_box(ds.get(j).expect("get").key());
    }
    let warm_get = t.elapsed().as_nanos() as f64 / n_gets as f64;
    let t = Instant::now();
    for k in 0..n_gets {
        std::hint::black_box(ds.locate((k * 1_000_003) % samples).unwrap());
    }
    let locate = t.elapsed().as_nanos() as f64 / n_gets as f64;
    println!(
        "first get (checks one shard's index, cold): {:.1} ms; get in a checked shard: {warm_get:.0} ns; locate: {locate:.0} ns",
        ms(first_get)
    );

    // A plan from the footers only: per shard (samples, data bytes), chunks of ~4 MiB.
    let t = Instant::now();
    let mut chunks = 0u64;
    for s in 0..ds.shard_count() {
        let f = ds.shard_footer(s).expect("footer");
        let per = (f.data_len / f.sample_count.max(1)).max(1);
        let per_chunk = ((4u64 << 20) / per).max(1);
        chunks += f.sample_count.div_ceil(per_chunk);
    }
    println!(
        "plan from footers (samples, data_len per shard): {chunks} chunks in {:.3} ms",
        ms(t.elapsed())
    );

    if !flag("--skip-loader") {
        let (r0, _) = rss_kib();
        let t = Instant::now();
        let opts = LoaderOptions {
            shuffle: Shuffle::Chunked,
            batch_size: 256,
            ..LoaderOptions::default()
        };
        let mut loader = Loader::new(ds.clone(), opts).expect("loader");
        let built = t.elapsed();
        let batch = loader.next_batch().expect("a batch").expect("batch ok");
        let first = t.elapsed();
        for s in &batch {
            assert_eq!(s.field(0).unwrap(), &synth::expected_record(s.index)[..]);
        }
        let (r1, _) = rss_kib();
        println!(
            "shuffled epoch: Loader::new {:.2} s, first batch of {} at {:.2} s; RSS +{} KiB; indexes checked: {}/{}",
            built.as_secs_f64(),
            batch.len(),
            first.as_secs_f64(),
            r1.saturating_sub(r0),
            (0..ds.shard_count()).filter(|&s| ds.index_checked(s)).count(),
            ds.shard_count()
        );
    }
    println!("maxrss at the end: {} KiB", maxrss_kib());
    if !flag("--keep") {
        std::fs::remove_dir_all(&dir).expect("remove the dataset");
    }
}

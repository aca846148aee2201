//! `shardpack bench DATASET`: the device limit, the shuffled loader, loose files and a simulated
//! trainer, each measured with a cold page cache, in one run.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use shardpack::loader::{epoch_order, DirectIo, Loader, LoaderOptions, Shuffle};
use shardpack::quality::{score, ShuffleQuality};
use shardpack::rng::SplitMix64;
use shardpack::storage::ReadAt;
use shardpack::sys::{evict_from_cache, AlignedBuf};
use shardpack::Dataset;

/// Measure, in one run and with a cold page cache for every phase: (1) the limit: the shard
/// files read front to back with large O_DIRECT reads (and, for reference, the same reads in
/// random order, the loader's pattern); (2) one shuffled loader epoch; (3) with
/// --loose, the original files read in random order by N threads, as a file-per-sample loader
/// would; (4) with --step-ms, a simulated trainer fed by (2) and by (3); (5) shuffle quality.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// The loose source tree the dataset was packed from, for the file-per-sample comparison.
    #[arg(long, value_name = "SRC")]
    pub loose: Option<PathBuf>,
    /// Threads reading loose files.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub threads: usize,
    /// Loader I/O threads (also the queue depth of the limit phase) [default: the loader's: 8, or 32 on a dataset streamed from a URL].
    #[arg(long, value_name = "N")]
    pub loader_threads: Option<usize>,
    /// Samples per batch (trainer and shuffle quality).
    #[arg(long, default_value_t = 256, value_name = "B")]
    pub batch: usize,
    /// Simulated trainer: milliseconds of compute (a sleep) per batch.
    #[arg(long, value_name = "T")]
    pub step_ms: Option<f64>,
    /// Trainer epochs per source (the loader's run back to back: each starts reading while
    /// the one before ends, `LoaderOptions::read_next_epoch`).
    #[arg(long, default_value_t = 1, value_name = "E")]
    pub epochs: u64,
    /// Without this, the trainer's loader epochs run back to back: each starts reading
    /// while the one before ends. With it, each epoch's loader starts when the epoch does
    /// (for comparison: the stall at each boundary).
    #[arg(long)]
    pub no_read_next_epoch: bool,
    /// Loader chunk size, e.g. 1MiB [default: the loader's, 256KiB].
    #[arg(long, value_parser = crate::util::parse_size)]
    pub chunk_size: Option<u64>,
    /// Loader window: chunks whose samples are mixed in memory [default: the loader's, 256].
    #[arg(long, value_name = "CHUNKS")]
    pub window: Option<usize>,
    /// Loader shuffle: interleaved (the default: each chunk spread over its window), chunked
    /// (a uniform shuffle of each window), none or full.
    #[arg(long, default_value = "interleaved",
          value_parser = ["interleaved", "chunked", "none", "full"])]
    pub shuffle: String,
    /// Loader prefetch budget: memory for samples read ahead of the trainer [default: the
    /// loader's, 256MiB].
    #[arg(long, value_parser = crate::util::parse_size)]
    pub prefetch: Option<u64>,
    /// Loader direct I/O: on, off or auto.
    #[arg(long, default_value = "on", value_parser = ["on", "off", "auto"])]
    pub direct: String,
    /// Shuffle seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

struct Rate {
    seconds: f64,
    bytes: u64,
    items: u64,
}

impl Rate {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
    fn items_s(&self) -> f64 {
        self.items as f64 / self.seconds.max(1e-9)
    }
}

/// Adds `msg` to the report's notes unless it is there already (phases repeat).
fn add_note(notes: &mut Vec<String>, msg: &str) {
    if !notes.iter().any(|n| n == msg) {
        notes.push(msg.to_string());
    }
}

/// Evicts every file; returns false (and a note) if that failed.
fn evict_all<'a>(paths: impl IntoIterator<Item = &'a Path>, notes: &mut Vec<String>) -> bool {
    match evict_from_cache(paths) {
        Ok(()) => true,
        Err(e) => {
            add_note(
                notes,
                &format!("could not evict files from the page cache ({e}); figures may be warm"),
            );
            false
        }
    }
}

/// Phase 1: every shard front to back, `threads` concurrent 4 MiB direct reads; with
/// `shuffle`, the same blocks in a random order (the loader's access pattern without its work).
fn limit(
    ds: &Dataset,
    threads: usize,
    shuffle: Option<u64>,
    block: u64,
    notes: &mut Vec<String>,
) -> Result<Rate> {
    let block = block.max(4096).div_ceil(4096) * 4096;
    let mut blocks = Vec::new();
    let mut files = Vec::new();
    let mut all_direct = true;
    for i in 0..ds.shard_count() {
        // Through the storage seam, so a dataset on a URL measures its link (ranged GETs).
        let (f, direct) = ds
            .range_reader(i, true)
            .with_context(|| format!("cannot open shard {i}"))?;
        all_direct &= direct || ds.remote_mode().is_some();
        files.push(f);
        let len = ds.manifest().shards[i].bytes;
        let mut off = 0;
        while off < len {
            blocks.push((i, off));
            off += block;
        }
    }
    if let Some(seed) = shuffle {
        SplitMix64::new(seed).shuffle(&mut blocks);
    }
    let msg = "the filesystem refuses O_DIRECT: the limit phase read through the page cache";
    if !all_direct {
        add_note(notes, msg);
    }
    let next = AtomicUsize::new(0);
    let total = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|sc| -> Result<()> {
        let mut hs = Vec::new();
        for _ in 0..threads.max(1) {
            hs.push(sc.spawn(|| -> std::io::Result<()> {
                let mut buf = AlignedBuf::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(f, off)) = blocks.get(k) else {
                        return Ok(());
                    };
                    let n = files[f].read_at(buf.resize(block as usize), off)?;
                    total.fetch_add(n as u64, Ordering::Relaxed);
                }
            }));
        }
        for h in hs {
            h.join().expect("reader thread").context("reading shards")?;
        }
        Ok(())
    })?;
    Ok(Rate {
        seconds: start.elapsed().as_secs_f64(),
        bytes: total.into_inner(),
        items: blocks.len() as u64,
    })
}

/// The simulated trainer: `step` of compute per batch, as a sleep (a GPU step costs the CPU
/// nothing). A sleep wakes late by tens to hundreds of microseconds on a loaded machine; the
/// lateness (up to one step) is taken off the next step, so the trainer asks for one batch
/// per `step` on average and its busy time is the time it really spent in steps. Longer
/// delays (the process descheduled) are not made up with a burst of empty steps.
struct Trainer {
    step: Duration,
    /// Seconds the steps so far overran `step` in total.
    late: f64,
    busy: Duration,
    /// Time spent waiting for the next batch.
    waiting: Duration,
    /// Per epoch: the wait for its first batch (at a boundary: the stall there), its busy
    /// share and its wall time.
    epochs: Vec<EpochFigures>,
}

/// One trainer epoch on the loader.
#[derive(Debug, Clone, Copy, Default)]
struct EpochFigures {
    first_wait_s: f64,
    busy: f64,
    seconds: f64,
}

impl Trainer {
    fn new(step: Duration) -> Trainer {
        Trainer {
            step,
            late: 0.0,
            busy: Duration::ZERO,
            waiting: Duration::ZERO,
            epochs: Vec::new(),
        }
    }

    fn train(&mut self) {
        let want = self.step.as_secs_f64() - self.late;
        let t = Instant::now();
        if want > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(want));
        }
        let took = t.elapsed();
        self.busy += took;
        self.late = (self.late + took.as_secs_f64() - self.step.as_secs_f64())
            .clamp(0.0, self.step.as_secs_f64());
    }
}

/// A trainer's figures over `epochs` epochs of total wall time `wall`.
struct TrainerRun {
    busy: f64,
    epoch_s: f64,
    wait_s: f64,
    /// Per epoch (the loader's trainer only).
    epochs: Vec<EpochFigures>,
    /// Busy share from the first batch of the first epoch to the end: every epoch boundary
    /// included, the very first start (which nothing can read ahead of) left out.
    busy_across_boundaries: Option<f64>,
}

impl TrainerRun {
    fn of(t: &Trainer, wall: f64, epochs: u64) -> TrainerRun {
        let first = t.epochs.first().map_or(0.0, |e| e.first_wait_s);
        TrainerRun {
            busy: t.busy.as_secs_f64() / wall.max(1e-9),
            epoch_s: wall / epochs as f64,
            wait_s: t.waiting.as_secs_f64() / epochs as f64,
            epochs: t.epochs.clone(),
            busy_across_boundaries: (!t.epochs.is_empty())
                .then(|| t.busy.as_secs_f64() / (wall - first).max(1e-9)),
        }
    }
}

impl Args {
    /// The loader's I/O threads on `ds` (and the limit phase's queue depth): --loader-threads,
    /// else the loader's automatic choice.
    fn io_threads(&self, ds: &Dataset) -> usize {
        LoaderOptions {
            io_threads: self.loader_threads.unwrap_or(0),
            ..LoaderOptions::default()
        }
        .io_threads_for(ds)
    }
}

fn loader_opts(a: &Args, epoch: u64) -> LoaderOptions {
    let d = LoaderOptions::default();
    LoaderOptions {
        seed: a.seed,
        epoch,
        batch_size: a.batch,
        chunk_bytes: a.chunk_size.unwrap_or(d.chunk_bytes),
        window_chunks: a.window.unwrap_or(d.window_chunks),
        shuffle: match a.shuffle.as_str() {
            "chunked" => Shuffle::Chunked,
            "none" => Shuffle::None,
            "full" => Shuffle::Full,
            _ => Shuffle::Interleaved,
        },
        prefetch_bytes: a.prefetch.unwrap_or(d.prefetch_bytes),
        io_threads: a.loader_threads.unwrap_or(0),
        direct_io: match a.direct.as_str() {
            "off" => DirectIo::Off,
            "auto" => DirectIo::Auto,
            _ => DirectIo::On,
        },
        ..d
    }
}

/// CPU seconds (user, system) of the whole process over a phase, from `getrusage`.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    user: f64,
    sys: f64,
}

impl Cpu {
    fn now() -> Option<(Duration, Duration)> {
        shardpack::sys::cpu_time()
    }

    fn since(start: Option<(Duration, Duration)>) -> Option<Cpu> {
        let (u0, s0) = start?;
        let (u1, s1) = Cpu::now()?;
        Some(Cpu {
            user: u1.saturating_sub(u0).as_secs_f64(),
            sys: s1.saturating_sub(s0).as_secs_f64(),
        })
    }

    fn total(&self) -> f64 {
        self.user + self.sys
    }
}

/// Phase 2 (and the trainer on the loader): one epoch, each batch handed to `trainer`. The
/// CPU time is the whole process's (the loader's threads and the consumer) over the epoch.
fn loader_epoch(
    ds: &Arc<Dataset>,
    opts: LoaderOptions,
    prepared: &mut Option<Loader>,
    mut trainer: Option<&mut Trainer>,
    notes: &mut Vec<String>,
) -> Result<(Rate, Option<Cpu>)> {
    let cpu0 = Cpu::now();
    let start = Instant::now();
    let read_next = opts.read_next_epoch;
    let mut loader = match prepared.take() {
        Some(mut l) => {
            // Made by the previous epoch with its options: only this one's may differ.
            l.set_read_next_epoch(read_next);
            l
        }
        None => Loader::new(ds.clone(), opts)?,
    };
    for n in loader.notes() {
        add_note(notes, n);
    }
    let (mut bytes, mut items) = (0u64, 0u64);
    let busy0 = trainer.as_ref().map(|t| t.busy);
    let mut first_wait = None;
    loop {
        let wait = Instant::now();
        let Some(batch) = loader.next_batch() else {
            break;
        };
        let batch = batch?;
        // From the end of the last epoch's last step (or this epoch's start) to its first batch.
        first_wait.get_or_insert_with(|| start.elapsed().as_secs_f64());
        for s in &batch {
            bytes += s.fields.iter().map(|f| f.data.len() as u64).sum::<u64>();
        }
        items += batch.len() as u64;
        if let Some(t) = trainer.as_deref_mut() {
            t.waiting += wait.elapsed();
            drop(batch); // the step is done with it; its buffers go back to the loader
            t.train();
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let (Some(t), Some(b0)) = (trainer, busy0) {
        t.epochs.push(EpochFigures {
            first_wait_s: first_wait.unwrap_or(seconds),
            busy: (t.busy - b0).as_secs_f64() / seconds.max(1e-9),
            seconds,
        });
    }
    if read_next {
        // The next epoch's loader is already reading: it is handed over, not dropped.
        *prepared = Some(loader.next_epoch()?);
    } else {
        drop(loader); // its threads have ended: their CPU time is counted
    }
    Ok((
        Rate {
            seconds,
            bytes,
            items,
        },
        Cpu::since(cpu0),
    ))
}

/// Loose samples: files grouped by folder + name up to the first dot, as `pack` groups them.
fn loose_samples(src: &Path) -> Result<Vec<Vec<PathBuf>>> {
    let mut groups: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for e in rd {
            let e = e?;
            let ft = e.file_type()?;
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let stem = match name.find('.') {
                    Some(d) if d + 1 < name.len() => &name[..d],
                    _ => &name[..],
                };
                groups
                    .entry(dir.join(format!("{stem}\0")))
                    .or_default()
                    .push(p);
            }
        }
    }
    Ok(groups.into_values().collect())
}

/// Phase 3 (and the trainer on loose files): `threads` readers over a random order of
/// samples; with a `trainer`, a consumer takes batches and hands each to it.
fn loose_epoch(
    samples: &[Vec<PathBuf>],
    threads: usize,
    seed: u64,
    batch: usize,
    mut trainer: Option<&mut Trainer>,
) -> Result<Rate> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let start = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<u64>(batch * 4);
    std::thread::scope(|sc| -> Result<()> {
        let mut hs = Vec::new();
        for _ in 0..threads.max(1) {
            let tx = tx.clone();
            let (order, next, bytes) = (&order, &next, &bytes);
            hs.push(sc.spawn(move || -> std::io::Result<()> {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&s) = order.get(k) else {
                        return Ok(());
                    };
                    let mut n = 0u64;
                    for p in &samples[s] {
                        n += fs::read(p)?.len() as u64;
                    }
                    bytes.fetch_add(n, Ordering::Relaxed);
                    if tx.send(n).is_err() {
                        return Ok(());
                    }
                }
            }));
        }
        drop(tx);
        let mut in_batch = 0usize;
        let mut wait = Instant::now();
        for _ in rx.iter() {
            in_batch += 1;
            if in_batch == batch {
                in_batch = 0;
                if let Some(t) = trainer.as_deref_mut() {
                    t.waiting += wait.elapsed();
                    t.train();
                    wait = Instant::now();
                }
            }
        }
        if in_batch > 0 {
            if let Some(t) = trainer {
                t.waiting += wait.elapsed();
                t.train();
            }
        }
        for h in hs {
            h.join()
                .expect("reader thread")
                .context("reading loose files")?;
        }
        Ok(())
    })?;
    Ok(Rate {
        seconds: start.elapsed().as_secs_f64(),
        bytes: bytes.into_inner(),
        items: samples.len() as u64,
    })
}

fn quality(ds: &Dataset, opts: &LoaderOptions) -> Result<Option<ShuffleQuality>> {
    if ds.manifest().classes.is_empty() {
        return Ok(None);
    }
    // Labels from the indexes alone: `get` would fetch every sample's records of a streamed
    // remote dataset, one request each.
    let labels: Vec<Option<u32>> = (0..ds.len())
        .map(|i| ds.label(i))
        .collect::<Result<_, _>>()?;
    let order = epoch_order(ds, opts)?;
    let q = score(&order, &labels, opts.batch_size as u64);
    Ok((q.batches > 0).then_some(q))
}

/// Runs `bench`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    if a.batch == 0 || a.threads == 0 || a.loader_threads == Some(0) || a.epochs == 0 {
        bail!("--batch, --threads, --loader-threads and --epochs must be at least 1");
    }
    if let Some(ms) = a.step_ms {
        if !(ms > 0.0 && ms < 1e9) {
            bail!("--step-ms must be a positive number of milliseconds, not {ms}");
        }
    }
    let ds = Arc::new(Dataset::open(&a.dataset)?);
    let mut notes = Vec::new();
    // A dataset on a URL has no local shard files to evict (and listing its shards would
    // fetch them): its reads go over the link every time.
    let shard_paths: Vec<PathBuf> = if ds.remote_mode().is_some() {
        Vec::new()
    } else {
        ds.shards().iter().map(|s| s.path().to_path_buf()).collect()
    };
    let shard_refs = || shard_paths.iter().map(PathBuf::as_path);
    let mut evicted = true;
    let step = a.step_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0));

    // 1. The limit.
    evicted &= evict_all(shard_refs(), &mut notes);
    let lim = limit(&ds, a.io_threads(&ds), None, 4 << 20, &mut notes)?;
    evicted &= evict_all(shard_refs(), &mut notes);
    let scattered = limit(&ds, a.io_threads(&ds), Some(a.seed), 4 << 20, &mut notes)?;
    // The device alone at the loader's read size (its chunks), in random order.
    let chunk = loader_opts(&a, 0).chunk_bytes;
    evicted &= evict_all(shard_refs(), &mut notes);
    let at_chunk = limit(&ds, a.io_threads(&ds), Some(a.seed), chunk, &mut notes)?;

    // 2. One shuffled loader epoch.
    evicted &= evict_all(shard_refs(), &mut notes);
    let (ld, ld_cpu) = loader_epoch(&ds, loader_opts(&a, 0), &mut None, None, &mut notes)?;
    // Compare like with like: the stored bytes the loader read (decoded sizes would flatter
    // compressed datasets).
    let stored: u64 = ds.manifest().fields.iter().map(|f| f.stored_bytes).sum();
    let ld = Rate {
        bytes: stored * ld.items / ds.len().max(1),
        ..ld
    };
    let loader_mb_s = ld.mb_s();
    // CPU per stored GB and samples per CPU-second of the loader phase.
    let cpu_per_gb = ld_cpu.map(|c| c.total() / (ld.bytes as f64 / 1e9).max(1e-12));
    let per_core_s = ld_cpu.map(|c| ld.items as f64 / c.total().max(1e-9));

    // 3. Loose files.
    let loose = match &a.loose {
        Some(src) => {
            let samples = loose_samples(src)?;
            let paths = samples.iter().flatten().map(PathBuf::as_path);
            evicted &= evict_all(paths, &mut notes);
            let r = loose_epoch(&samples, a.threads, a.seed, a.batch, None)?;
            Some((samples, r))
        }
        None => None,
    };

    // 4. The simulated trainer.
    let mut trainer_loader = None;
    let mut trainer_loose = None;
    if let Some(step) = step {
        let mut wall = 0.0;
        let mut t = Trainer::new(step);
        let mut prepared = None;
        for e in 0..a.epochs {
            evicted &= evict_all(shard_refs(), &mut notes);
            let opts = LoaderOptions {
                read_next_epoch: e + 1 < a.epochs && !a.no_read_next_epoch,
                ..loader_opts(&a, e)
            };
            wall += loader_epoch(&ds, opts, &mut prepared, Some(&mut t), &mut notes)?
                .0
                .seconds;
        }
        trainer_loader = Some(TrainerRun::of(&t, wall, a.epochs));
        if let Some((samples, _)) = &loose {
            let mut wall = 0.0;
            let mut t = Trainer::new(step);
            for e in 0..a.epochs {
                let paths = samples.iter().flatten().map(PathBuf::as_path);
                evicted &= evict_all(paths, &mut notes);
                wall += loose_epoch(samples, a.threads, a.seed ^ e, a.batch, Some(&mut t))?.seconds;
            }
            trainer_loose = Some(TrainerRun::of(&t, wall, a.epochs));
        }
    }

    // 5. Shuffle quality of the loader's order.
    let q = quality(&ds, &loader_opts(&a, 0))?;
    if let Some(q) = &q {
        if q.diversity_ratio < 0.9 {
            notes.push(format!(
                "WARNING: batches hold {:.1} distinct labels on average against {:.1} for a full \
                 shuffle ({:.0}%): the dataset is probably stored class-sorted (packed with \
                 --no-shuffle). Repack with the default shuffle, or give the loader more \
                 chunks per window (--window, at least the batch size) of fewer samples \
                 each (--chunk-size) with the interleaved shuffle.",
                q.labels_per_batch,
                q.labels_per_batch_full_random,
                100.0 * q.diversity_ratio
            ));
        }
    }

    let loose_rate = loose.as_ref().map(|(_, r)| r);
    let v = json!({
        "dataset": a.dataset,
        "samples": ds.len(),
        "stored_bytes": stored,
        "limit_mb_s": lim.mb_s(),
        "loader_mb_s": loader_mb_s,
        "loader_samples_s": ld.items_s(),
        "loader_to_limit": loader_mb_s / lim.mb_s().max(1e-9),
        "loader_user_s": ld_cpu.map(|c| c.user),
        "loader_sys_s": ld_cpu.map(|c| c.sys),
        "loader_cpu_s_per_gb": cpu_per_gb,
        "loader_samples_per_core_s": per_core_s,
        "limit_random_order_mb_s": scattered.mb_s(),
        "loader_to_limit_random_order": loader_mb_s / scattered.mb_s().max(1e-9),
        "limit_chunk_size_mb_s": at_chunk.mb_s(),
        "limit_chunk_size_to_limit": at_chunk.mb_s() / lim.mb_s().max(1e-9),
        "loader_direct_io": a.direct,
        "loose_mb_s": loose_rate.map(Rate::mb_s),
        "loose_samples_s": loose_rate.map(Rate::items_s),
        "loose_threads": loose_rate.map(|_| a.threads),
        "loader_to_loose": loose_rate.map(|r| ld.items_s() / r.items_s().max(1e-9)),
        "step_ms": a.step_ms,
        "trainer_demand_mb_s": a
            .step_ms
            .map(|ms| stored as f64 / ds.len().max(1) as f64 * a.batch as f64 / ms / 1e3),
        "batch": a.batch,
        "trainer_busy_loader": trainer_loader.as_ref().map(|t| t.busy),
        "trainer_busy_loose": trainer_loose.as_ref().map(|t| t.busy),
        "trainer_wait_s_loader": trainer_loader.as_ref().map(|t| t.wait_s),
        "trainer_wait_s_loose": trainer_loose.as_ref().map(|t| t.wait_s),
        "trainer_read_next_epoch": !a.no_read_next_epoch,
        "trainer_busy_across_boundaries": trainer_loader
            .as_ref()
            .and_then(|t| t.busy_across_boundaries),
        "trainer_epochs_loader": trainer_loader.as_ref().map(|t| t
            .epochs
            .iter()
            .map(|e| json!({
                "first_batch_wait_s": e.first_wait_s,
                "busy": e.busy,
                "seconds": e.seconds,
            }))
            .collect::<Vec<_>>()),
        "loader_shuffle": a.shuffle,
        "loader_chunk_bytes": loader_opts(&a, 0).chunk_bytes,
        "loader_window_chunks": loader_opts(&a, 0).window_chunks,
        "epoch_s_loader": trainer_loader.as_ref().map(|t| t.epoch_s).or(Some(ld.seconds)),
        "epoch_s_loose": trainer_loose
            .as_ref()
            .map(|t| t.epoch_s)
            .or(loose_rate.map(|r| r.seconds)),
        "batch_label_diversity": q.map(|q| q.labels_per_batch),
        "batch_label_diversity_full_random": q.map(|q| q.labels_per_batch_full_random),
        "batch_label_diversity_ratio": q.map(|q| q.diversity_ratio),
        "mean_displacement": q.map(|q| q.mean_displacement),
        "cache_evicted": evicted,
        "notes": notes,
    });
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let f = |x: &serde_json::Value| match x.as_f64() {
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    };
    writeln!(
        out,
        "shardpack bench: {} ({} samples, {:.1} MB stored), cold page cache: {}",
        a.dataset.display(),
        ds.len(),
        stored as f64 / 1e6,
        if evicted { "yes" } else { "NO (see notes)" }
    )?;
    writeln!(
        out,
        "  {:<44} {:>12} {:>14} {:>10}",
        "phase", "MB/s", "samples/s", "of limit"
    )?;
    writeln!(
        out,
        "  {:<44} {:>12.1} {:>14} {:>10}",
        format!("limit: O_DIRECT 4 MiB reads, {} threads", a.io_threads(&ds)),
        lim.mb_s(),
        "-",
        "1.00"
    )?;
    writeln!(
        out,
        "  {:<44} {:>12.1} {:>14} {:>10.2}",
        "  the same blocks in random order",
        scattered.mb_s(),
        "-",
        scattered.mb_s() / lim.mb_s().max(1e-9)
    )?;
    writeln!(
        out,
        "  {:<44} {:>12.1} {:>14} {:>10.2}",
        format!("  {} KiB blocks (the chunk size), random", chunk >> 10),
        at_chunk.mb_s(),
        "-",
        at_chunk.mb_s() / lim.mb_s().max(1e-9)
    )?;
    writeln!(
        out,
        "  {:<44} {:>12.1} {:>14.0} {:>10.2}",
        format!("loader: one shuffled epoch (direct {})", a.direct),
        loader_mb_s,
        ld.items_s(),
        loader_mb_s / lim.mb_s().max(1e-9)
    )?;
    if let Some(c) = ld_cpu {
        writeln!(
            out,
            "    loader CPU: user {:.2} s + system {:.2} s = {:.3} core-s per GB stored, {:.0} samples per core-second",
            c.user,
            c.sys,
            cpu_per_gb.unwrap_or(0.0),
            per_core_s.unwrap_or(0.0)
        )?;
    }
    if let Some(r) = loose_rate {
        writeln!(
            out,
            "  {:<44} {:>12.1} {:>14.0} {:>10}",
            format!("loose files, random order, {} threads", a.threads),
            r.mb_s(),
            r.items_s(),
            format!("{:.2}", r.mb_s() / lim.mb_s().max(1e-9))
        )?;
        writeln!(
            out,
            "  loader / loose files: {}x the samples per second",
            f(&v["loader_to_loose"])
        )?;
    }
    if let Some(ms) = a.step_ms {
        writeln!(
            out,
            "  trainer: {ms} ms per batch of {} (asks for {} MB/s), {} epoch(s)",
            a.batch,
            f(&v["trainer_demand_mb_s"]),
            a.epochs
        )?;
        for (source, t) in [
            ("the loader", &trainer_loader),
            ("loose files", &trainer_loose),
        ] {
            if let Some(t) = t {
                writeln!(
                    out,
                    "    fed by {:<16} busy {:>5.1}%   epoch {:>8.2} s   waiting for data {:>7.2} s",
                    format!("{source}:"),
                    100.0 * t.busy,
                    t.epoch_s,
                    t.wait_s
                )?;
                for (e, f) in t.epochs.iter().enumerate() {
                    let what = match e {
                        0 => "first batch after".to_string(),
                        _ => format!("boundary {}->{}: stall", e - 1, e),
                    };
                    writeln!(
                        out,
                        "      epoch {e}: busy {:>5.1}%   {what} {:.3} s   ({:.2} s)",
                        100.0 * f.busy,
                        f.first_wait_s,
                        f.seconds
                    )?;
                }
                if let (Some(b), true) = (t.busy_across_boundaries, t.epochs.len() > 1) {
                    writeln!(
                        out,
                        "      busy across the epoch boundaries (from the first batch on, next epoch read ahead: {}): {:.1}%",
                        if a.no_read_next_epoch { "no" } else { "yes" },
                        100.0 * b
                    )?;
                }
            }
        }
    }
    if let Some(q) = q {
        writeln!(
            out,
            "  shuffle ({}, {} chunks of {} KiB per window): {:.2} labels per batch of {} (full shuffle: {:.2}, {:.0}%), mean displacement {:.3}",
            a.shuffle,
            loader_opts(&a, 0).window_chunks,
            loader_opts(&a, 0).chunk_bytes >> 10,
            q.labels_per_batch,
            q.batch_size,
            q.labels_per_batch_full_random,
            100.0 * q.diversity_ratio,
            q.mean_displacement
        )?;
    }
    for n in &notes {
        writeln!(out, "  note: {n}")?;
    }
    Ok(ExitCode::SUCCESS)
}

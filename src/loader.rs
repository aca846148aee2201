//! The Loader: shuffled, partitioned, resumable epochs served with large sequential reads.
//!
//! An epoch's order is a pure function of `(seed, epoch, rank, world_size)` (and the dataset,
//! the chunking options, [`LoaderOptions::drop_last`] and [`LoaderOptions::subset`]):
//!
//! 1. Each shard's samples are cut into **chunks** of consecutive samples covering about
//!    [`LoaderOptions::chunk_bytes`]: the chunk's sample count is `chunk_bytes` divided by
//!    the shard's bytes per sample (its file size over its sample count, from the manifest),
//!    at least 1. The plan reads only the manifest, never a shard's index.
//! 2. The chunk list is shuffled with a generator seeded by `(seed, epoch)`; concatenated, the
//!    chunks give the epoch's **global sequence** of `N` samples. It does not depend on the
//!    world size or the rank. (With a [`Subset`], each chunk keeps only the subset's samples.)
//! 3. Rank `r` of `W` takes positions `r*n .. (r+1)*n` of that sequence, `n = ceil(N / W)`.
//!    Positions past `N` wrap around to the start: the last ranks are **padded by repeating**
//!    the first samples of the sequence (at most `W - 1` repeats), so every rank gets exactly
//!    `n` samples, ranks are disjoint before padding and their union is the dataset. With
//!    [`LoaderOptions::drop_last`], `n = floor(N / W)` instead: no repeats, and the last
//!    `N mod W` samples of the sequence are not served that epoch.
//! 4. The rank's pieces of chunks are grouped into **windows** of
//!    [`LoaderOptions::window_chunks`] pieces, ordered in memory with a generator seeded by
//!    `(seed, epoch, rank, window)`. Under the default [`Shuffle::Interleaved`] each piece's
//!    samples are shuffled and spread evenly over the window (its `m` samples at positions
//!    `(j + u) / m`, one random offset `u` per piece), so every run of consecutive samples
//!    draws from as many of the window's chunks as it has samples: a batch of `B <=
//!    window_chunks` samples holds one sample of `B` different chunks, and mixes labels like a
//!    full shuffle even on storage sorted by class (`pack --no-shuffle`, a sorted source), as
//!    long as a chunk holds fewer samples than a class. [`Shuffle::Chunked`] (the order of
//!    shardpack 0.2 and of states that say `"chunked"`) shuffles the window uniformly
//!    instead, which hits only about `K (1 - e^(-B/K))` of its `K` chunks per batch.
//!
//! With [`LoaderOptions::epoch_samples`] the global sequence of step 2 is cut after its first
//! `epoch_samples` samples (the rest of the last chunk is not served). [`MixedLoader`] mixes
//! several datasets this way ([`mix`]).
//!
//! # Shuffle quality and the defaults
//!
//! The defaults (256 KiB chunks, 256 per window: a 64 MiB window, the same as the 16 chunks of
//! 4 MiB before) give a batch of 256 at least 90% of a full shuffle's distinct labels on
//! class-sorted storage at 100 classes (from the plan: 1.01 with 16-sample chunks, 0.92 on a
//! rank of 8, `tests/loader_quality.rs`). For ImageNet's shape (1,000 classes x 1,300 images
//! of ~110 KiB) sorted by class: `chunk_bytes = 1 MiB, window_chunks = 256` (256 MiB windows,
//! `prefetch_bytes = 768 MiB`: under 1 GiB of buffers) gives 1.00 of a full shuffle's labels
//! per batch of 256, and the defaults 1.00 as well (chunks of two images). Keep
//! `window_chunks >= batch_size`; a batch cannot mix more chunks than a window holds.
//!
//! # Resuming, at the same or another world size
//!
//! [`Loader::state`] gives a [`LoaderState`]: at a global step (all ranks in lockstep, having
//! each taken the same number of samples, as data-parallel training does) it is one global
//! state, the same on every rank except for the informational [`LoaderState::rank`]. Save any
//! rank's; [`Loader::resume`] with it on every rank of the new job:
//!
//! - At the **same world size**, each rank continues exactly its uninterrupted order: it
//!   starts at the window holding the next sample, skips the chunks of that window that hold
//!   only consumed samples, and decodes none of those. O(chunks), no replay of samples.
//! - At **another world size** the rest of the epoch is partitioned again: the samples every
//!   rank had taken (padding repeats included) are removed from the global sequence, and the
//!   remaining sequence (in its order) is split as in step 3 over the new ranks, windows
//!   shuffled with generators that also take the segment number. Over all new ranks this
//!   serves exactly the samples of the epoch not yet served, each once, plus at most
//!   `W' - 1` padding repeats (none under `drop_last`, which leaves out at most `W' - 1`
//!   instead), with equal counts per rank. Whole chunks stay whole; only the windows that
//!   were in progress at the stop leave pieces with holes (read whole, holes not decoded).
//!   The state records each finished part as a [`Segment`] (world size, samples per rank),
//!   so the world size may change any number of times in one epoch; the remaining
//!   sequence is recomputed from the global one at resume (O(chunks + samples of the windows
//!   in progress), no I/O).
//!
//! What may change between stop and resume: the rank, the world size, the batch size, the
//! I/O threads, the prefetch budget, direct I/O and the error policy. What may not (it is
//! checked, and a mismatch is an [`Error::State`] naming the field with its saved and
//! current values): the dataset (its manifest's fingerprint), the subset, the seed, the epoch,
//! the shuffle mode, `chunk_bytes`, `window_chunks`, `drop_last` and `epoch_samples`. A state
//! saved with the defaults of before (`"shuffle": "chunked"`, 4 MiB chunks, 16 per window)
//! resumes with those options set explicitly, and is refused with the new defaults. States saved by
//! shardpack 0.2.0 (no `version`) are refused: this version cuts chunks differently.
//!
//! # The state as JSON
//!
//! A checkpoint stores [`LoaderState`] with serde; its JSON layout is a contract:
//!
//! ```json
//! {
//!   "version": 2,                    // STATE_VERSION
//!   "dataset": "9f0c3e1d2a4b5c6d",   // fingerprint(): xxh3-64 of manifest.json, hex
//!   "seed": 0, "epoch": 3,
//!   "rank": 1,                       // who saved it (informational)
//!   "world_size": 8,                 // of the current segment
//!   "samples_consumed": 1024,        // per rank, in the current segment
//!   "shuffle": "interleaved",        // "none" | "chunked" | "interleaved" | "full"
//!   "chunk_bytes": 262144, "window_chunks": 256, "drop_last": false,
//!   "subset": "1000:5d1e...",        // only with a subset: Subset::id()
//!   "epoch_samples": 5000,           // only with LoaderOptions::epoch_samples
//!   "segments": [                    // earlier parts of the epoch, oldest first
//!     {"world_size": 4, "samples_consumed": 5000}
//!   ]
//! }
//! ```
//!
//! Each piece of a chunk is read with one large read (aligned, `O_DIRECT` when asked) into a
//! recycled buffer by a background thread, which also checks every record's checksum and
//! decompresses it; the consumer only takes ready samples. Pieces are read in order, up to
//! [`LoaderOptions::io_threads`] at a time, so the window the consumer needs next is always
//! the one being read. A raw record is handed out as a view into its chunk's buffer
//! ([`SampleBytes`], no copy); a compressed one owns its decompressed bytes.
//!
//! Memory: the pieces read ahead of the consumer, plus the window it is taking samples from,
//! hold at most [`LoaderOptions::prefetch_bytes`] (stored bytes plus decompressed sizes).
//! Reads are granted memory in order while they fit; the window the consumer needs next is
//! granted even when it does not, so a single window larger than the whole budget is still
//! read (alone). Read buffers are recycled, so in use or idle they total about the budget plus
//! one chunk per I/O thread. Samples the consumer keeps after taking them keep their chunk
//! buffers alive on top of that, so drop them after each step (or copy out what must stay).
//!
//! The first sample of an epoch waits for its whole first window to be read. To hide that at
//! epoch boundaries, set [`LoaderOptions::read_next_epoch`]: once every piece of the epoch
//! has been handed to a reading thread, the loader starts the next epoch's loader (under its
//! own budget), and [`Loader::next_epoch`] hands it over, already reading.
//!
//! A sample that cannot be delivered (a record failing its checksum or not decoding, a read
//! error, a sample of a damaged shard) is handed out as its error by default; with
//! [`LoaderOptions::on_error`] set to [`ErrorPolicy::Skip`] it is left out instead, the rest
//! of its batch still delivered, and [`Loader::skipped`] says which samples were left out and
//! why. The order does not change either way (see [`ErrorPolicy`] for ranks and resume).
//!
//! ```
//! # use std::sync::Arc;
//! # use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
//! use shardpack::loader::{Loader, LoaderOptions};
//! # fn main() -> shardpack::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let mut w = DatasetWriter::create(dir.path(), vec![FieldSpec::raw("bin")], WriterOptions::default())?;
//! # for i in 0..100u32 { w.append(format!("{i:03}").as_bytes(), Some(i % 4), &[(0, &i.to_le_bytes())])?; }
//! # w.finish(DatasetInfo::default())?;
//! let ds = Arc::new(shardpack::Dataset::open(dir.path())?);
//! let opts = LoaderOptions { seed: 7, epoch: 0, batch_size: 32, ..LoaderOptions::default() };
//! let mut loader = Loader::new(ds.clone(), opts.clone())?;
//! let first = loader.next_batch().unwrap()?;          // 32 samples
//! let state = loader.state();                          // (seed 7, epoch 0, 32 consumed)
//! drop(loader);
//! // Later, perhaps in another process:
//! let mut resumed = Loader::resume(ds, opts, &state)?;
//! let rest: Vec<_> = resumed.by_ref().collect::<Result<_, _>>()?;
//! assert_eq!(first.len() + rest.len(), 100);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::codec::{decode_into, decode_record_with_base, max_decoded_len, new_dctx};
use crate::error::{Error, Result};
use crate::format::{record_checksum, Codec, FormatError, FormatErrorKind};
pub use crate::pool::SampleBytes;
use crate::pool::{BufPool, PooledBuf};
use crate::reader::Dataset;
use crate::sys::DIRECT_ALIGN;

pub mod mix;
mod plan;
mod state;
mod subset;

pub use mix::{mix_counts, mixed_epoch_order, MixedLoader, MixedSample, MixedState, Weight};

pub use plan::{epoch_order, epoch_order_from, resume_point};
use plan::{past_end, Piece, Plan};
pub use state::{fingerprint, LoaderState, Segment, STATE_VERSION};
pub use subset::Subset;

/// How an epoch's order is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shuffle {
    /// Stored order (shards in order, samples in order).
    None,
    /// Shuffled chunks, samples shuffled uniformly within windows of chunks (the default of
    /// shardpack 0.2 and of states without a `shuffle`).
    Chunked,
    /// Shuffled chunks, and within each window every chunk's samples, in a random order,
    /// spread evenly over the window's order (the default): any run of consecutive samples
    /// (a batch) draws from as many of the window's chunks as it has samples, up to all of
    /// them, so a batch mixes the classes of up to `window_chunks` chunks even when the
    /// dataset is stored class after class. The same chunks and reads as
    /// [`Shuffle::Chunked`]; only the order inside a window differs.
    Interleaved,
    /// A full random permutation; every sample is a separate small read (for comparison).
    Full,
}

/// Whether chunk reads bypass the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectIo {
    /// Always `O_DIRECT` (falls back to buffered reads where the filesystem refuses it).
    On,
    /// Always through the page cache.
    Off,
    /// `O_DIRECT` when the dataset is larger than half the memory available to cache it (later
    /// epochs could not be served from the cache anyway, and direct reads are faster);
    /// buffered when it fits, so later epochs come from memory.
    Auto,
}

/// What the loader does with a sample it cannot deliver (a record whose checksum fails or
/// that does not decode, an unreadable index entry, a read error, a sample of a shard that a
/// tolerant [`Dataset::open_with`](crate::reader::Dataset::open_with) marked damaged).
///
/// Skipping never changes the order: the epoch's order stays the pure function described in
/// the module docs (and [`epoch_order`] still lists every planned sample); a skipped sample
/// is simply not delivered, and the next one takes its place in the batch. Positions count
/// planned samples, so [`Loader::consumed`], [`LoaderState::samples_consumed`] and resume
/// include the skipped ones and a resumed loader continues exactly where it stopped. Every
/// rank still plans the same number of samples ([`Loader::len`]), but a rank that skips `k`
/// samples delivers `len() - k`: ranks that must take the same number of steps (distributed
/// data parallel training) should either keep the default [`ErrorPolicy::Fail`] or agree on a
/// step count below every rank's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorPolicy {
    /// Hand out the error in the sample's place (the default): it names the shard file, the
    /// sample, its key and the field where the index can still be read.
    /// [`Loader::next_batch`] then returns the error for the whole batch.
    #[default]
    Fail,
    /// Leave the sample out and record it in [`Loader::skipped`]; the good samples of the
    /// same batch are still delivered.
    Skip,
}

/// A sample the loader left out under [`ErrorPolicy::Skip`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedSample {
    /// Its position in this rank's epoch (0-based, counting skipped samples).
    pub position: u64,
    /// Its global sample index in the dataset.
    pub index: u64,
    /// Why it was left out: the error's message (shard file, sample, key, field).
    pub reason: String,
}

/// The reading threads of a loader whose [`LoaderOptions::io_threads`] is 0 (automatic, the
/// default) on a local dataset or one cached from a URL.
pub const DEFAULT_IO_THREADS: usize = 8;

/// The reading threads of a loader whose [`LoaderOptions::io_threads`] is 0 (automatic, the
/// default) on a dataset streamed from a URL (remote stream mode). There each piece is one
/// ranged GET that waits a round trip before its first byte, so the link stays busy only with
/// about latency x bandwidth in flight: 20 ms x 200 MB/s is 4 MB, 16 pieces of 256 KiB; 32
/// covers twice that. The pieces keep their size ([`LoaderOptions::chunk_bytes`]): a chunk is
/// the shuffle's unit, so larger remote pieces would give another order for the same seed than
/// the same dataset read from a local copy (and a state saved on one would not resume on the
/// other).
pub const STREAM_IO_THREADS: usize = 32;

/// Loader options. `Default` gives seed 0, epoch 0, rank 0 of 1, batches of 256, the
/// interleaved shuffle with 256 KiB chunks mixed 256 at a time, automatic I/O threads (8; 32 on a
/// dataset streamed from a URL), a 256 MiB
/// prefetch budget, automatic direct I/O and failing on a bad sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderOptions {
    /// Shuffle seed.
    pub seed: u64,
    /// Epoch number (each epoch has its own order).
    pub epoch: u64,
    /// This process's rank in `0..world_size`.
    pub rank: u32,
    /// Number of ranks sharing the dataset.
    pub world_size: u32,
    /// Samples per batch for [`Loader::next_batch`].
    pub batch_size: usize,
    /// How the order is made.
    pub shuffle: Shuffle,
    /// Target stored bytes per chunk (one read each).
    pub chunk_bytes: u64,
    /// Chunks whose samples are mixed together in memory.
    pub window_chunks: usize,
    /// Background threads reading and decoding. Each alternates between one large read and
    /// decoding what it read, so this is also about twice the I/O queue depth: 8 keeps an
    /// NVMe-class device busy with 4 MiB chunks; with the default 256 KiB chunks a device
    /// that needs more requests in flight wants more (`shardpack bench --loader-threads`).
    /// 0 (the default) is automatic: [`DEFAULT_IO_THREADS`], or [`STREAM_IO_THREADS`] on a
    /// dataset streamed from a URL ([`LoaderOptions::io_threads_for`]); any other value is used
    /// as given.
    pub io_threads: usize,
    /// Memory for samples read ahead of the consumer (see the module docs).
    pub prefetch_bytes: u64,
    /// Direct I/O policy.
    pub direct_io: DirectIo,
    /// What to do with a sample that cannot be delivered (absent in older serialized
    /// options: [`ErrorPolicy::Fail`]).
    #[serde(default)]
    pub on_error: ErrorPolicy,
    /// Equal counts per rank by dropping instead of padding: every rank gets
    /// `floor(N / world_size)` samples, all distinct, and the last `N mod world_size` samples
    /// of the epoch's global sequence are not served that epoch (others each epoch). `false`
    /// (the default, also when absent in older serialized options) pads to
    /// `ceil(N / world_size)` by repeating the first samples of the sequence.
    #[serde(default)]
    pub drop_last: bool,
    /// Serve only these samples (`None`: the whole dataset); see [`Subset`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<Subset>,
    /// Back-to-back epochs: once every piece of this epoch has been handed to a reading
    /// thread, start the loader of epoch `epoch + 1` (same options, from its start) so that
    /// it reads its first window while this epoch's last samples are taken; take it with
    /// [`Loader::next_epoch`]. At the boundary the two loaders hold up to twice
    /// [`LoaderOptions::prefetch_bytes`]. Off by default (a loader whose next epoch is never
    /// taken would read a window for nothing).
    #[serde(default)]
    pub read_next_epoch: bool,
    /// Serve only the first `epoch_samples` samples (over all ranks, before padding) of each
    /// epoch's global sequence (`None`: all of it): a shorter epoch, a different part of the
    /// dataset each epoch (the sequence is shuffled by chunks per epoch), still read in whole
    /// chunks but for the last one. At most the dataset's (or the subset's) size. The mixed
    /// loader ([`MixedLoader`]) takes each dataset's share this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_samples: Option<u64>,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            seed: 0,
            epoch: 0,
            rank: 0,
            world_size: 1,
            batch_size: 256,
            shuffle: Shuffle::Interleaved,
            chunk_bytes: 256 << 10,
            window_chunks: 256,
            io_threads: 0,
            prefetch_bytes: 256 << 20,
            direct_io: DirectIo::Auto,
            on_error: ErrorPolicy::Fail,
            drop_last: false,
            subset: None,
            read_next_epoch: false,
            epoch_samples: None,
        }
    }
}

impl LoaderOptions {
    fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(Error::Options(s));
        if self.world_size == 0 || self.rank >= self.world_size {
            return bad(format!(
                "rank {} is not in 0..{} (world size)",
                self.rank, self.world_size
            ));
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if self.chunk_bytes == 0 || self.window_chunks == 0 {
            return bad("chunk size and window must be at least 1".into());
        }
        Ok(())
    }

    /// The reading threads a loader with these options runs on `ds`: `io_threads`, or when it
    /// is 0 (automatic) [`STREAM_IO_THREADS`] for a dataset streamed from a URL and
    /// [`DEFAULT_IO_THREADS`] otherwise.
    pub fn io_threads_for(&self, ds: &Dataset) -> usize {
        match self.io_threads {
            0 if ds.streams_remotely() => STREAM_IO_THREADS,
            0 => DEFAULT_IO_THREADS,
            n => n,
        }
    }
}

/// A sample handed out by the loader: decoded, checksum-verified, and independent of the
/// loader's lifetime (raw fields share the chunk buffer they were read into; see
/// [`SampleBytes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSample {
    /// Global sample id in the dataset (stored order).
    pub index: u64,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Label, if any.
    pub label: Option<u32>,
    /// The fields present, in field order.
    pub fields: Vec<LoadedField>,
}

impl LoadedSample {
    /// The data of the field with index `field`, if present.
    pub fn field(&self, field: u32) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.field == field)
            .map(|f| f.data.as_slice())
    }
}

/// One decoded, checksum-verified field of a [`LoadedSample`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedField {
    /// Field index (see [`Dataset::field_names`]).
    pub field: u32,
    /// The data: a view of the read buffer for a raw record, decompressed bytes otherwise.
    pub data: SampleBytes,
}

// ---------------------------------------------------------------------------------------------
// Background reading
// ---------------------------------------------------------------------------------------------

/// Memory granted to pieces strictly in work order, so the window the consumer waits for is
/// always next in line. Pieces of the window the consumer needs next are granted even past the
/// limit, so a window larger than the whole budget still completes (no deadlock); every later
/// piece waits until it fits.
#[derive(Debug)]
struct Budget {
    state: Mutex<BudgetState>,
    cv: Condvar,
    limit: u64,
}

#[derive(Debug)]
struct BudgetState {
    used: u64,
    /// Work item allowed to ask next.
    next_grant: usize,
    /// The window the consumer takes next (all windows before it are released).
    consumer_window: usize,
    stopped: bool,
}

impl Budget {
    /// Waits until work item `seq` (of window `window`) may hold `bytes`; `false` if stopped.
    fn acquire(&self, seq: usize, window: usize, bytes: u64) -> bool {
        let mut s = self.state.lock().expect("budget lock");
        loop {
            if s.stopped {
                return false;
            }
            if s.next_grant == seq
                && (window <= s.consumer_window || s.used.saturating_add(bytes) <= self.limit)
            {
                s.used = s.used.saturating_add(bytes);
                s.next_grant += 1;
                self.cv.notify_all();
                return true;
            }
            s = self.cv.wait(s).expect("budget lock");
        }
    }

    /// The consumer is done with `window`, which held `bytes`.
    fn release(&self, window: usize, bytes: u64) {
        let mut s = self.state.lock().expect("budget lock");
        s.used = s.used.saturating_sub(bytes);
        s.consumer_window = s.consumer_window.max(window + 1);
        self.cv.notify_all();
    }

    fn stop(&self) {
        self.state.lock().expect("budget lock").stopped = true;
        self.cv.notify_all();
    }
}

struct Shared {
    ds: Arc<Dataset>,
    plan: Plan,
    /// Per manifest shard, the file to read; `None` for a damaged shard.
    files: Vec<Option<Box<dyn crate::storage::ReadAt>>>,
    /// Global number of the first piece of each window, and the total at the end: work item
    /// `k` is a piece of window `w` where `piece_starts[w] <= k < piece_starts[w + 1]`.
    piece_starts: Vec<usize>,
    next_work: AtomicUsize,
    budget: Budget,
    stop: AtomicBool,
    pool: Arc<BufPool>,
    /// Samples to skip at the start of the first window (resume).
    skip_first: u64,
    first_window: usize,
    /// For each piece of the first window, which of its samples are still to come after a
    /// resume (all of them on a fresh start).
    first_wanted: Vec<Vec<bool>>,
}

impl Shared {
    /// Whether sample `at` of piece `pi` of window `w` is handed out (not skipped by a resume).
    fn wanted(&self, w: usize, pi: usize, at: usize) -> bool {
        match w == self.first_window {
            true => self.first_wanted[pi][at],
            false => self.plan.windows[w].has(pi, at),
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.budget.stop();
    }
}

/// The samples of one piece in stored order; `None` for those a resume skips.
struct PieceResult {
    window: usize,
    piece: usize,
    /// Memory granted to the piece, released when its window is done.
    charge: u64,
    samples: PieceSamples,
}

/// The decoded samples of one piece, in stored order (`None` for those not handed out).
///
/// Their keys and fields lie in two arenas shared by the piece, so a reading thread makes a
/// few allocations per piece, not two per sample. The [`LoadedSample`] (its key `Vec` and
/// fields `Vec`, public types) is made by [`PieceSamples::take`] on the consumer's thread as
/// the sample is handed out, so those two allocations are usually freed by the thread that
/// made them (the allocator's per-thread cache) instead of crossing threads.
struct PieceSamples {
    keys: Vec<u8>,
    fields: Vec<LoadedField>,
    samples: Vec<Option<Result<Slot>>>,
}

/// Where a decoded sample's key and fields lie in its [`PieceSamples`].
struct Slot {
    label: Option<u32>,
    key: std::ops::Range<usize>,
    fields: std::ops::Range<usize>,
}

impl PieceSamples {
    /// Room for `count` samples of one field and a short key each (the arenas grow past it).
    fn with_capacity(count: usize) -> PieceSamples {
        PieceSamples {
            keys: Vec::with_capacity(count.saturating_mul(16)),
            fields: Vec::with_capacity(count),
            samples: Vec::with_capacity(count),
        }
    }

    /// A piece whose samples are `samples` (errors or `None`), with nothing in the arenas.
    fn of(samples: Vec<Option<Result<Slot>>>) -> PieceSamples {
        PieceSamples {
            keys: Vec::new(),
            fields: Vec::new(),
            samples,
        }
    }

    /// Sample `at` (in stored order) as handed out, with global index `index`; each wanted
    /// sample is taken once.
    fn take(&mut self, at: usize, index: u64) -> Result<LoadedSample> {
        let slot = self.samples[at]
            .take()
            .expect("every wanted sample is loaded and handed out once")?;
        let fields = self.fields[slot.fields]
            .iter_mut()
            .map(|f| LoadedField {
                field: f.field,
                // An empty owned placeholder allocates nothing and pins no buffer.
                data: std::mem::replace(&mut f.data, SampleBytes::from(Vec::new())),
            })
            .collect();
        Ok(LoadedSample {
            index,
            key: self.keys[slot.key].to_vec(),
            label: slot.label,
            fields,
        })
    }
}

/// Stops the loader if a worker thread panics, so the others do not wait forever for budget
/// that will never be released, and the consumer gets an error instead of hanging.
struct StopOnPanic<'a>(&'a Shared);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop();
        }
    }
}

fn worker(sh: Arc<Shared>, tx: Sender<PieceResult>) {
    let _guard = StopOnPanic(&sh);
    let mut dctx = new_dctx();
    let n_work = *sh.piece_starts.last().unwrap_or(&0);
    loop {
        let k = sh.next_work.fetch_add(1, Ordering::SeqCst);
        if k >= n_work || sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let w = sh.piece_starts.partition_point(|&s| s <= k) - 1;
        let pi = k - sh.piece_starts[w];
        let piece = sh.plan.windows[w].pieces[pi];
        let needed = (0..piece.count as usize).any(|at| sh.wanted(w, pi, at));
        let extent = match needed {
            true => extent_of(&sh, piece),
            false => Ok(Extent::default()),
        };
        // Charge the memory the piece will really hold: its buffer (a recycled one may be
        // larger than the read) and its decompressed records.
        let buf = match &extent {
            Ok(e) if e.len > 0 => sh.pool.take(e.len),
            _ => sh.pool.empty(),
        };
        let charge = match &extent {
            Ok(e) => (buf.buf().footprint_after(e.len) as u64).saturating_add(e.decoded),
            Err(_) => 0,
        };
        if !sh.budget.acquire(k, w, charge) {
            return;
        }
        let samples = match extent {
            _ if !needed => PieceSamples::of((0..piece.count).map(|_| None).collect()),
            Ok(e) => load_piece(&sh, w, pi, piece, &e, buf, &mut dctx),
            Err(e) => failed_piece(&sh, w, pi, piece, e),
        };
        let done = PieceResult {
            window: w,
            piece: pi,
            charge,
            samples,
        };
        if tx.send(done).is_err() {
            return;
        }
    }
}

/// The byte range a piece's records occupy, widened to the direct-I/O alignment, and the
/// decoded size of its compressed records.
#[derive(Debug, Default)]
struct Extent {
    /// File offset of the first byte to read.
    start: u64,
    /// Bytes to read (0 when nothing is stored).
    len: usize,
    /// End of the last record.
    end: u64,
    /// Bytes the compressed records decode to (bounded by what their stored size allows).
    decoded: u64,
}

fn extent_of(sh: &Shared, piece: Piece) -> Result<Extent> {
    let shard = sh.ds.shard(piece.shard as usize)?;
    let b = shard.bytes();
    let corrupt = |e| Error::corrupt(shard.path(), e);
    let (mut lo, mut hi, mut decoded) = (u64::MAX, 0u64, 0u64);
    for local in piece.first..piece.first + piece.count {
        let e = b.sample(local).map_err(corrupt)?;
        for r in e.first_record..e.first_record + e.record_count as u64 {
            let rec = b.record(r).map_err(corrupt)?;
            if rec.stored_len > 0 {
                lo = lo.min(rec.offset);
                hi = hi.max(rec.offset.saturating_add(rec.stored_len));
            }
            if rec.codec != Codec::Raw.as_u32() {
                let bound = max_decoded_len(rec.stored_len);
                decoded = decoded.saturating_add(rec.raw_len.min(bound));
            }
        }
    }
    if lo >= hi {
        return Ok(Extent {
            decoded,
            ..Extent::default()
        });
    }
    let a = DIRECT_ALIGN as u64;
    let start = lo / a * a;
    let len = usize::try_from(hi.div_ceil(a) * a - start).map_err(|_| {
        corrupt(FormatError {
            region: "index/records",
            offset: lo,
            kind: FormatErrorKind::Invalid(format!(
                "records from byte {lo} to {hi} do not fit in memory"
            )),
        })
    })?;
    Ok(Extent {
        start,
        len,
        end: hi,
        decoded,
    })
}

/// Reads a piece with one aligned read into `buf` and decodes the samples wanted.
fn load_piece(
    sh: &Shared,
    w: usize,
    pi: usize,
    piece: Piece,
    extent: &Extent,
    mut buf: PooledBuf,
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
) -> PieceSamples {
    if let Err(e) = read_extent(sh, piece, extent, &mut buf) {
        return failed_piece(sh, w, pi, piece, e);
    }
    // Looked up once per piece (extent_of has opened it), not once per sample.
    let shard = match sh.ds.shard(piece.shard as usize) {
        Ok(shard) => shard,
        Err(e) => return failed_piece(sh, w, pi, piece, e),
    };
    let first_sample = sh.ds.manifest().shards[piece.shard as usize].first_sample;
    let buf = Arc::new(buf);
    let mut out = PieceSamples::with_capacity(piece.count as usize);
    for at in 0..piece.count {
        let s = sh.wanted(w, pi, at as usize).then(|| {
            let (keys, fields) = (&mut out.keys, &mut out.fields);
            let local = piece.first + at;
            let sample = shard.sample_index(local, first_sample + local)?; // records in `buf`
            decode_sample(sample, local, extent.start, &buf, dctx, keys, fields)
        });
        out.samples.push(s);
    }
    out
}

/// The error of a piece that could not be read, for each of its wanted samples (naming the
/// sample).
fn failed_piece(sh: &Shared, w: usize, pi: usize, piece: Piece, e: Error) -> PieceSamples {
    let meta = &sh.ds.manifest().shards[piece.shard as usize];
    let path = sh.ds.dir().join(&meta.file);
    let first = meta.first_sample + piece.first;
    let msg = e.to_string();
    let samples = (0..piece.count as usize)
        .map(|at| {
            let sample = first + at as u64;
            sh.wanted(w, pi, at).then(|| match &e {
                Error::DamagedShard {
                    path,
                    shard,
                    detail,
                    ..
                } => Err(Error::DamagedShard {
                    path: path.clone(),
                    shard: *shard,
                    sample: Some(sample),
                    detail: detail.clone(),
                }),
                _ => Err(Error::Io {
                    path: path.clone(),
                    op: "read",
                    source: std::io::Error::other(format!("sample {sample}: {msg}")),
                }),
            })
        })
        .collect();
    PieceSamples::of(samples)
}

/// Reads `e` into `buf` with one read.
fn read_extent(sh: &Shared, piece: Piece, e: &Extent, buf: &mut PooledBuf) -> Result<()> {
    if e.len == 0 {
        return Ok(());
    }
    let shard = sh.ds.shard(piece.shard as usize)?;
    let Some(file) = &sh.files[piece.shard as usize] else {
        return Err(Error::io(
            shard.path(),
            "read",
            std::io::Error::other("the shard was not opened"),
        ));
    };
    // One range read through the storage seam (`crate::storage`): a local file here.
    let n = crate::storage::ReadAt::read_at(file, buf.buf_mut().resize(e.len), e.start)
        .map_err(|err| Error::io(shard.path(), "read", err))?;
    if (n as u64) < e.end - e.start {
        return Err(Error::io(
            shard.path(),
            "read",
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "shard ends at byte {} inside a record ending at {}",
                    e.start + n as u64,
                    e.end
                ),
            ),
        ));
    }
    Ok(())
}

/// Checks and decodes `sample` (number `local` of its shard), whose records are in `buf` (read
/// from file offset `base`), appending its key to `keys` and its fields to `fields` (nothing on
/// an error).
fn decode_sample(
    sample: crate::reader::Sample<'_>,
    local: u64,
    base: u64,
    buf: &Arc<PooledBuf>,
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
    keys: &mut Vec<u8>,
    fields: &mut Vec<LoadedField>,
) -> Result<Slot> {
    let first_field = fields.len();
    if let Err(e) = decode_fields(sample, local, base, buf, dctx, fields) {
        fields.truncate(first_field); // a sample's fields are all handed out, or none
        return Err(e);
    }
    let first_key = keys.len();
    keys.extend_from_slice(sample.key());
    Ok(Slot {
        label: sample.label(),
        key: first_key..keys.len(),
        fields: first_field..fields.len(),
    })
}

/// [`decode_sample`]'s checks and decoding: appends the fields.
fn decode_fields(
    sample: crate::reader::Sample<'_>,
    local: u64,
    base: u64,
    buf: &Arc<PooledBuf>,
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
    fields: &mut Vec<LoadedField>,
) -> Result<()> {
    let shard = sample.shard();
    let data = buf.buf().as_slice();
    for f in sample.fields() {
        let f = f?;
        let bad = |detail: String| Error::BadRecord {
            path: shard.path().to_path_buf(),
            sample: local,
            key: String::from_utf8_lossy(sample.key()).into_owned(),
            field: String::from_utf8_lossy(f.name()).into_owned(),
            offset: f.offset(),
            detail,
        };
        let len = f.stored().len();
        let at = match len {
            0 => 0,
            _ => f.offset().checked_sub(base).unwrap_or(u64::MAX) as usize,
        };
        let Some(stored) = at.checked_add(len).and_then(|end| data.get(at..end)) else {
            return Err(bad("the record lies outside the bytes read for it".into()));
        };
        // The bytes read (not the memory map) are what is checked and handed out.
        let actual = record_checksum(stored);
        if actual != f.checksum() {
            return Err(bad(format!(
                "checksum mismatch (stored {:016x}, computed {actual:016x})",
                f.checksum()
            )));
        }
        let data = if f.codec() == Codec::Raw && len == 0 {
            SampleBytes::from(Vec::new()) // pins no buffer
        } else if f.codec() == Codec::Raw {
            SampleBytes::view(buf.clone(), at, len)
        } else if f.codec() == Codec::ZstdRef {
            // The base, usually a sample or two earlier, is taken from the bytes read when
            // it is among them, else from the shard.
            let mut out = Vec::new();
            shard
                .ref_base(
                    dctx,
                    f.record_index(),
                    f.field_index(),
                    stored,
                    Some((base, data)),
                )
                .and_then(|b| {
                    decode_record_with_base(
                        dctx,
                        Codec::ZstdRef,
                        stored,
                        f.raw_len(),
                        None,
                        Some(&b),
                        &mut out,
                    )
                })
                .map_err(|e| bad(e.to_string()))?;
            out.into()
        } else {
            let mut out = Vec::new();
            decode_into(
                dctx,
                f.codec(),
                stored,
                f.raw_len(),
                shard.dict(f.field_index()),
                &mut out,
            )
            .map_err(bad)?;
            out.into()
        };
        fields.push(LoadedField {
            field: f.field_index(),
            data,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The loader
// ---------------------------------------------------------------------------------------------

/// The loaded pieces of one window, waiting for the rest.
struct PendingWindow {
    pieces: Vec<Option<PieceSamples>>,
    missing: usize,
    /// Memory granted to the pieces so far.
    charge: u64,
}

/// The window samples are being taken from: its loaded pieces and the rest of its order
/// (piece, sample of the shard). Each [`LoadedSample`] is made as it is handed out.
struct Current {
    window: usize,
    pieces: Vec<PieceSamples>,
    order: std::vec::IntoIter<(u32, u64)>,
}

impl Default for Current {
    fn default() -> Current {
        Current {
            window: 0,
            pieces: Vec::new(),
            order: Vec::new().into_iter(),
        }
    }
}

impl Current {
    /// The next sample in the window's order, with its global index.
    fn next(&mut self, sh: &Shared) -> Option<(u64, Result<LoadedSample>)> {
        let (pi, local) = self.order.next()?;
        let piece = &sh.plan.windows[self.window].pieces[pi as usize];
        let index = sh.ds.manifest().shards[piece.shard as usize].first_sample + local;
        let s = self.pieces[pi as usize].take((local - piece.first) as usize, index);
        Some((index, s))
    }
}

/// Serves one rank's epoch. See the module docs.
pub struct Loader {
    shared: Arc<Shared>,
    rx: Option<Receiver<PieceResult>>,
    threads: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, PendingWindow>,
    /// The current window's samples, and the rest of its output order.
    current: Current,
    /// The window samples are being taken from, and the memory granted to it.
    current_window: Option<(usize, u64)>,
    next_window: usize,
    consumed: u64,
    /// The state at position 0 of this loader's segment.
    base_state: LoaderState,
    batch_size: usize,
    direct: bool,
    notes: Vec<String>,
    /// The options, for the next epoch's loader.
    opts: LoaderOptions,
    /// The next epoch's loader, started early under [`LoaderOptions::read_next_epoch`].
    next: Option<Result<Box<Loader>>>,
    on_error: ErrorPolicy,
    skipped: Vec<SkippedSample>,
    skipped_total: u64,
    /// The global index of the sample handed out last (for the mixed loader's reports).
    last_index: Option<u64>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("len", &self.shared.plan.len)
            .field("consumed", &self.consumed)
            .field("direct_io", &self.direct)
            .finish()
    }
}

fn memory_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Loader {
    /// Starts this rank's epoch from its beginning.
    pub fn new(ds: Arc<Dataset>, opts: LoaderOptions) -> Result<Loader> {
        Loader::start(ds, opts, Vec::new(), 0)
    }

    /// Continues an epoch from `state`: over all ranks of `opts.world_size`, exactly the
    /// samples of the epoch not yet handed out when the state was saved. At the state's world
    /// size this is the uninterrupted order (the next sample is the one that would have come
    /// next); at another world size the rest of the epoch is partitioned again (see the
    /// module docs). The state must fit `ds` and `opts` ([`LoaderState::check`]: the same
    /// dataset, subset, seed, epoch, shuffle, chunk size, window and `drop_last`), or this is
    /// an [`Error::State`] naming the field with its saved and current values. Rank, world
    /// size, batch size, threads, prefetch, direct I/O and the error policy come from `opts`
    /// and may differ from the saving loader's.
    pub fn resume(ds: Arc<Dataset>, opts: LoaderOptions, state: &LoaderState) -> Result<Loader> {
        state.check(&ds, &opts)?;
        let (done, consumed) = state.rebased(&opts);
        Loader::start(ds, opts, done, consumed)
    }

    fn start(
        ds: Arc<Dataset>,
        mut opts: LoaderOptions,
        done: Vec<Segment>,
        consumed: u64,
    ) -> Result<Loader> {
        opts.io_threads = opts.io_threads_for(&ds);
        let plan = Plan::new(&ds, &opts, &done)?;
        if consumed > plan.len {
            return Err(past_end(consumed, plan.len));
        }
        let base_state = LoaderState::at(fingerprint(&ds), &opts, done, 0);
        let total: u64 = ds.manifest().shards.iter().map(|s| s.bytes).sum();
        let want_direct = match opts.direct_io {
            DirectIo::On => true,
            DirectIo::Off => false,
            DirectIo::Auto => memory_available().is_some_and(|m| total > m / 2),
        };
        let mut notes = Vec::new();
        let mut files = Vec::with_capacity(ds.shard_count());
        let mut direct = want_direct;
        // From the manifest and the damaged list only: starting a loader touches no shard's
        // index (each is first used by the reading thread of its first piece).
        let mut damaged = vec![false; ds.shard_count()];
        for d in ds.damaged_so_far() {
            damaged[d] = true;
        }
        for (s, meta) in ds.manifest().shards.iter().enumerate() {
            if damaged[s] {
                files.push(None); // damaged: each of its samples fails or is skipped
                continue;
            }
            let path = ds.dir().join(&meta.file);
            // The local file, or for a dataset opened from a URL its remote object or cache.
            let (f, d) = ds.range_reader(s, want_direct)?;
            if want_direct && !d && direct {
                notes.push(format!(
                    "{}: the filesystem refuses O_DIRECT; reading through the page cache",
                    path.display()
                ));
                direct = false;
            }
            files.push(Some(f));
        }
        let first_window = plan
            .starts
            .partition_point(|&s| s <= consumed)
            .saturating_sub(1);
        let skip_first = consumed - plan.starts.get(first_window).copied().unwrap_or(0);
        let mut first_wanted: Vec<Vec<bool>> = Vec::new();
        if let Some(win) = plan.windows.get(first_window) {
            first_wanted = win
                .pieces
                .iter()
                .map(|p| vec![false; p.count as usize])
                .collect();
            for &(pi, local) in &plan.window_order(first_window)[skip_first as usize..] {
                let p = &win.pieces[pi as usize];
                first_wanted[pi as usize][(local - p.first) as usize] = true;
            }
        }
        let mut piece_starts = Vec::with_capacity(plan.windows.len() + 1);
        let mut n_pieces = 0;
        for win in &plan.windows {
            piece_starts.push(n_pieces);
            n_pieces += win.pieces.len();
        }
        piece_starts.push(n_pieces);
        let first_piece = piece_starts[first_window];
        // Enough free buffers to refill the whole budget without allocating.
        let keep = usize::try_from(opts.prefetch_bytes / opts.chunk_bytes.max(1))
            .unwrap_or(usize::MAX)
            .saturating_add(opts.io_threads);
        let shared = Arc::new(Shared {
            ds,
            plan,
            files,
            piece_starts,
            next_work: AtomicUsize::new(first_piece),
            budget: Budget {
                state: Mutex::new(BudgetState {
                    used: 0,
                    next_grant: first_piece,
                    consumer_window: first_window,
                    stopped: false,
                }),
                cv: Condvar::new(),
                limit: opts.prefetch_bytes,
            },
            stop: AtomicBool::new(false),
            pool: BufPool::new(keep.min(1024)),
            skip_first,
            first_window,
            first_wanted,
        });
        let (tx, rx) = channel();
        let mut threads = Vec::new();
        if consumed < shared.plan.len {
            for i in 0..opts.io_threads.min(n_pieces - first_piece) {
                let sh = shared.clone();
                let tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("shardpack-loader-{i}"))
                    .spawn(move || worker(sh, tx));
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        shared.stop(); // the threads already started exit
                        return Err(Error::Options(format!("cannot start a loader thread: {e}")));
                    }
                }
            }
        }
        Ok(Loader {
            shared,
            rx: Some(rx),
            threads,
            pending: BTreeMap::new(),
            current: Current::default(),
            current_window: None,
            next_window: first_window,
            consumed,
            base_state,
            batch_size: opts.batch_size,
            direct,
            notes,
            on_error: opts.on_error,
            skipped: Vec::new(),
            skipped_total: 0,
            last_index: None,
            opts,
            next: None,
        })
    }

    /// Samples this rank gets in the epoch (the same on every rank). Under
    /// [`ErrorPolicy::Skip`] this is the planned count: `len() - skipped_count()` are
    /// delivered.
    pub fn len(&self) -> u64 {
        self.shared.plan.len
    }

    /// `true` when the epoch has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples handed out so far in this epoch (including those skipped by a resume and
    /// those left out under [`ErrorPolicy::Skip`]): the position in this rank's order.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The samples left out under [`ErrorPolicy::Skip`] so far (since the last
    /// [`Loader::take_skipped`]), in the order they were met, each with its reason.
    pub fn skipped(&self) -> &[SkippedSample] {
        &self.skipped
    }

    /// Takes the list of [`Loader::skipped`] samples, leaving it empty (for a long epoch that
    /// reports and forgets them as it goes).
    pub fn take_skipped(&mut self) -> Vec<SkippedSample> {
        std::mem::take(&mut self.skipped)
    }

    /// How many samples this loader has left out under [`ErrorPolicy::Skip`] (including those
    /// already taken with [`Loader::take_skipped`]).
    pub fn skipped_count(&self) -> u64 {
        self.skipped_total
    }

    /// The position to resume from (see [`LoaderState`]): at a global step, the same on
    /// every rank except for [`LoaderState::rank`].
    pub fn state(&self) -> LoaderState {
        LoaderState {
            samples_consumed: self.consumed,
            ..self.base_state.clone()
        }
    }

    /// Whether chunk reads bypass the page cache.
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    /// The loader of the next epoch (`epoch + 1`, from its start, the same options): the one
    /// [`LoaderOptions::read_next_epoch`] already started reading, else a new one. Call it at
    /// the end of an epoch (or earlier: the rest of this one is dropped):
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use shardpack::loader::{Loader, LoaderOptions};
    /// # fn main() -> shardpack::Result<()> {
    /// # let ds = Arc::new(shardpack::Dataset::open("train.spk")?);
    /// let opts = LoaderOptions { read_next_epoch: true, ..LoaderOptions::default() };
    /// let mut loader = Loader::new(ds, opts)?;
    /// for _epoch in 0..10 {
    ///     while let Some(batch) = loader.next_batch() {
    ///         let _ = batch?; // train
    ///     }
    ///     loader = loader.next_epoch()?; // already reading its first window
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn next_epoch(mut self) -> Result<Loader> {
        match self.next.take() {
            Some(next) => next.map(|b| *b),
            None => Loader::new(self.shared.ds.clone(), self.next_opts()),
        }
    }

    /// Turns [`LoaderOptions::read_next_epoch`] on or off for this loader (and the loaders
    /// [`Loader::next_epoch`] makes from it): off before the last epoch, so that no epoch is
    /// read that nobody takes. Turning it off drops a next epoch's loader already started.
    pub fn set_read_next_epoch(&mut self, on: bool) {
        self.opts.read_next_epoch = on;
        if !on {
            self.next = None;
        }
    }

    /// Whether the next epoch's loader has started (see [`LoaderOptions::read_next_epoch`]).
    pub fn next_epoch_started(&self) -> bool {
        self.next.is_some()
    }

    fn next_opts(&self) -> LoaderOptions {
        LoaderOptions {
            epoch: self.opts.epoch + 1,
            ..self.opts.clone()
        }
    }

    /// Starts the next epoch's loader once every piece of this one has been claimed by a
    /// reading thread (its I/O is done or in flight), at the latest when the consumer takes
    /// the first sample of the last window.
    fn maybe_start_next_epoch(&mut self) {
        let n_work = *self.shared.piece_starts.last().unwrap_or(&0);
        if self.shared.next_work.load(Ordering::SeqCst) >= n_work
            || self.next_window >= self.shared.plan.windows.len()
        {
            let next = Loader::new(self.shared.ds.clone(), self.next_opts());
            self.next = Some(next.map(Box::new));
        }
    }

    /// The global index of the sample handed out (or skipped) last, `None` before the first.
    pub fn last_index(&self) -> Option<u64> {
        self.last_index
    }

    /// Things the user should know (e.g. a fallback from direct I/O).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The next sample, or `None` at the end of the epoch.
    pub fn next_sample(&mut self) -> Option<Result<LoadedSample>> {
        if self.opts.read_next_epoch && self.next.is_none() {
            self.maybe_start_next_epoch();
        }
        loop {
            if let Some((index, s)) = self.current.next(&self.shared) {
                let position = self.consumed;
                self.consumed += 1;
                self.last_index = Some(index);
                match s {
                    Err(e) if self.on_error == ErrorPolicy::Skip => {
                        self.skipped.push(SkippedSample {
                            position,
                            index,
                            reason: e.to_string(),
                        });
                        self.skipped_total += 1;
                        continue;
                    }
                    s => return Some(s),
                }
            }
            if let Some((w, charge)) = self.current_window.take() {
                self.current = Current::default(); // its arenas go before the budget does
                self.shared.budget.release(w, charge);
            }
            if self.consumed >= self.len() || self.next_window >= self.shared.plan.windows.len() {
                return None;
            }
            let w = self.next_window;
            while self.pending.get(&w).is_none_or(|p| p.missing != 0) {
                match self.rx.as_ref().and_then(|rx| rx.recv().ok()) {
                    Some(done) => {
                        let n = self.shared.plan.windows[done.window].pieces.len();
                        let p = self
                            .pending
                            .entry(done.window)
                            .or_insert_with(|| PendingWindow {
                                pieces: (0..n).map(|_| None).collect(),
                                missing: n,
                                charge: 0,
                            });
                        p.pieces[done.piece] = Some(done.samples);
                        p.missing -= 1;
                        p.charge = p.charge.saturating_add(done.charge);
                    }
                    None => {
                        // Reported once; the epoch then ends (a `for` over the loader stops).
                        self.next_window = self.shared.plan.windows.len();
                        self.current = Current::default();
                        return Some(Err(Error::Options(
                            "the loader's reading threads stopped unexpectedly".into(),
                        )));
                    }
                }
            }
            let p = self.pending.remove(&w).expect("window complete");
            self.current_window = Some((w, p.charge));
            self.current = self.assemble(w, p.pieces);
            self.next_window += 1;
            if self.opts.read_next_epoch && self.next.is_none() {
                self.maybe_start_next_epoch();
            }
        }
    }

    /// The loaded samples of window `w`, to be handed out in its output order.
    fn assemble(&self, w: usize, pieces: Vec<Option<PieceSamples>>) -> Current {
        let sh = &self.shared;
        let pieces = pieces
            .into_iter()
            .map(|p| p.expect("a window is assembled only when all its pieces are in"))
            .collect();
        let mut order = sh.plan.window_order(w);
        if w == sh.first_window {
            order.drain(..sh.skip_first as usize);
        }
        Current {
            window: w,
            pieces,
            order: order.into_iter(),
        }
    }

    /// The next batch of up to `batch_size` samples (the last one of an epoch may be shorter),
    /// or `None` at the end of the epoch. Under [`ErrorPolicy::Fail`] an error in any sample
    /// is returned as the batch's error; under [`ErrorPolicy::Skip`] a bad sample is left out
    /// (see [`Loader::skipped`]) and the batch filled from the samples after it.
    pub fn next_batch(&mut self) -> Option<Result<Vec<LoadedSample>>> {
        let mut batch = Vec::with_capacity(self.batch_size);
        while batch.len() < self.batch_size {
            match self.next_sample() {
                Some(Ok(s)) => batch.push(s),
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
        }
        (!batch.is_empty()).then_some(Ok(batch))
    }
}

impl Iterator for Loader {
    type Item = Result<LoadedSample>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_sample()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.stop();
        self.rx = None; // unblocks senders
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Samples the caller still holds keep their own buffers, not the idle ones.
        self.shared.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};

    fn content(i: u64) -> (Vec<u8>, Vec<u8>) {
        let raw = (0..(i * 53 % 700) as usize)
            .map(|k| (k as u64 ^ i) as u8)
            .collect();
        let text = format!("sample {i} {}", "ab ".repeat((i % 40) as usize)).into_bytes();
        (raw, text)
    }

    /// A sample whose second field fails its checksum is an error (or skipped) while its first
    /// field already sat in the piece's arena: every other sample of its piece still gets its
    /// own key, label and fields, in the epoch's order.
    #[test]
    fn a_bad_second_field_leaves_the_pieces_other_samples_intact() {
        let dir = tempfile::tempdir().unwrap();
        let fields = vec![FieldSpec::raw("bin"), FieldSpec::zstd("txt")];
        let wopts = WriterOptions {
            shard_size: 32 << 10,
            ..WriterOptions::default()
        };
        let mut w = DatasetWriter::create(dir.path(), fields, wopts).unwrap();
        for i in 0..200u64 {
            let (raw, text) = content(i);
            let key = format!("key-{i}-{}", "x".repeat((i % 23) as usize));
            w.append(key.as_bytes(), Some(i as u32 % 5), &[(0, &raw), (1, &text)])
                .unwrap();
        }
        w.finish(DatasetInfo::default()).unwrap();
        let (path, offset) = {
            let ds = Dataset::open(dir.path()).unwrap();
            let s = ds.get(37).unwrap();
            let f = s.fields().nth(1).unwrap().unwrap();
            (s.shard().path().to_path_buf(), f.offset())
        };
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset as usize] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let ds = Arc::new(Dataset::open(dir.path()).unwrap());
        for on_error in [ErrorPolicy::Fail, ErrorPolicy::Skip] {
            let opts = LoaderOptions {
                seed: 3,
                chunk_bytes: 6 << 10, // several samples per piece
                window_chunks: 4,
                io_threads: 2,
                prefetch_bytes: 64 << 10,
                direct_io: DirectIo::Off,
                on_error,
                ..LoaderOptions::default()
            };
            let expected = epoch_order(&ds, &opts).unwrap();
            let mut loader = Loader::new(ds.clone(), opts).unwrap();
            let mut got = Vec::new();
            for s in loader.by_ref() {
                let Ok(s) = s else {
                    assert_eq!(on_error, ErrorPolicy::Fail);
                    got.push(37); // handed out in its place
                    continue;
                };
                let i = s.index;
                let (raw, text) = content(i);
                let key = format!("key-{i}-{}", "x".repeat((i % 23) as usize));
                assert_eq!(s.key, key.into_bytes(), "sample {i}");
                assert_eq!(s.label, Some(i as u32 % 5));
                assert_eq!(s.fields.len(), 2);
                assert_eq!(s.field(0).unwrap(), raw.as_slice(), "sample {i}");
                assert_eq!(s.field(1).unwrap(), text.as_slice(), "sample {i}");
                assert!(s.fields[0].data.is_view() || raw.is_empty());
                got.push(i);
            }
            match on_error {
                ErrorPolicy::Fail => assert_eq!(got, expected),
                ErrorPolicy::Skip => {
                    let left: Vec<u64> = expected.into_iter().filter(|&i| i != 37).collect();
                    assert_eq!(got, left);
                    assert_eq!(loader.skipped().len(), 1);
                    assert_eq!(loader.skipped()[0].index, 37);
                    assert!(loader.skipped()[0].reason.contains("checksum mismatch"));
                }
            }
        }
    }
}

//! The loader's checkpoint: a small, serializable, checked position in an epoch.
//!
//! A [`LoaderState`] is one *global* position: at a global step (all ranks in lockstep) every
//! rank's state is the same except for [`LoaderState::rank`], which only says who saved it.
//! It records what shapes the order (the dataset's fingerprint, the subset, seed, epoch,
//! shuffle mode, chunk size, window, `drop_last`), so that [`Loader::resume`](super::Loader::resume)
//! refuses a state that does not fit instead of silently serving duplicates, and the history
//! of world sizes the epoch ran at ([`LoaderState::segments`]), so that it can resume at any
//! world size. The JSON layout is in the [loader module docs](super#the-state-as-json).

use crate::hash::xxh3_64;
use serde::{Deserialize, Serialize};

use super::{LoaderOptions, Shuffle};
use crate::error::{Error, Result};
use crate::reader::Dataset;

/// The [`LoaderState::version`] this shardpack writes and reads. Version 1 was the Python
/// package's state of shardpack 0.2.0; Rust states of 0.2.0 had no version (read as 0).
pub const STATE_VERSION: u32 = 2;

/// A finished part of an epoch that ran at one world size (see [`LoaderState::segments`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Ranks that shared the epoch in this part.
    pub world_size: u32,
    /// Samples each rank had taken in this part when the world size changed (the same on
    /// every rank: ranks step in lockstep).
    pub samples_consumed: u64,
}

/// Where a loader is in its epoch: small, serializable, enough to resume exactly, at the same
/// or another world size. See the module docs of [`loader`](super) for what may change at
/// resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Layout version ([`STATE_VERSION`]); absent (0) in states of shardpack 0.2.0, which
    /// are refused.
    #[serde(default)]
    pub version: u32,
    /// The dataset's fingerprint ([`fingerprint`]): a state is refused on another dataset.
    #[serde(default)]
    pub dataset: String,
    /// Shuffle seed.
    pub seed: u64,
    /// Epoch.
    pub epoch: u64,
    /// The rank that saved the state. Not part of the position: any rank may resume from
    /// any rank's state of the same step, and [`Loader::resume`](super::Loader::resume) uses
    /// [`LoaderOptions::rank`].
    pub rank: u32,
    /// The world size of the current part of the epoch (the one `samples_consumed` counts in).
    pub world_size: u32,
    /// Samples each rank has taken in the current part of the epoch (all of the epoch when
    /// the world size never changed).
    pub samples_consumed: u64,
    /// Shuffle mode the order was made with.
    #[serde(default = "default_shuffle")]
    pub shuffle: Shuffle,
    /// [`LoaderOptions::chunk_bytes`] the order was made with.
    #[serde(default)]
    pub chunk_bytes: u64,
    /// [`LoaderOptions::window_chunks`] the order was made with.
    #[serde(default)]
    pub window_chunks: usize,
    /// [`LoaderOptions::drop_last`] the order was made with.
    #[serde(default)]
    pub drop_last: bool,
    /// The subset's identity ([`Subset::id`](super::Subset::id)), `None` for the whole
    /// dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// [`LoaderOptions::epoch_samples`] the order was made with (absent: the whole dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_samples: Option<u64>,
    /// The earlier parts of the epoch, oldest first, each run at another world size than the
    /// next: empty unless the world size changed during the epoch.
    #[serde(default)]
    pub segments: Vec<Segment>,
}

fn default_shuffle() -> Shuffle {
    Shuffle::Chunked
}

/// A dataset's identity for loader states: the xxh3-64 (16 hex digits) of its manifest, which
/// lists every shard's size and checksums. The same as the Python `Dataset.fingerprint`.
pub fn fingerprint(ds: &Dataset) -> String {
    format!("{:016x}", xxh3_64(&ds.manifest().to_json()))
}

impl LoaderState {
    /// The state at the start of epoch `opts.epoch` (nothing consumed yet) for `opts`.
    pub fn start(ds: &Dataset, opts: &LoaderOptions) -> LoaderState {
        LoaderState::at(fingerprint(ds), opts, Vec::new(), 0)
    }

    pub(super) fn at(
        dataset: String,
        opts: &LoaderOptions,
        segments: Vec<Segment>,
        consumed: u64,
    ) -> LoaderState {
        LoaderState {
            version: STATE_VERSION,
            dataset,
            seed: opts.seed,
            epoch: opts.epoch,
            rank: opts.rank,
            world_size: opts.world_size,
            samples_consumed: consumed,
            shuffle: opts.shuffle,
            chunk_bytes: opts.chunk_bytes,
            window_chunks: opts.window_chunks,
            drop_last: opts.drop_last,
            subset: opts.subset.as_ref().map(|s| s.id()),
            epoch_samples: opts.epoch_samples,
            segments,
        }
    }

    /// Checks that the state fits `ds` and `opts` (the same dataset, subset and order
    /// options, a known version), naming the first field that differs with its saved and
    /// current values.
    pub fn check(&self, ds: &Dataset, opts: &LoaderOptions) -> Result<()> {
        let bad = |s: String| Err(Error::State(s));
        if self.version == 0 {
            return bad(
                "it has no \"version\": it was saved by shardpack 0.2.0 or older, whose \
                 epoch order this version does not reproduce; start the epoch again \
                 (Loader::new, or set_epoch in Python)"
                    .into(),
            );
        }
        if self.version != STATE_VERSION {
            return bad(format!(
                "it has version {}, and this shardpack reads version {STATE_VERSION}; resume \
                 with the shardpack version that saved it",
                self.version
            ));
        }
        let fp = fingerprint(ds);
        if self.dataset != fp {
            return bad(format!(
                "the state is for another dataset (saved with dataset fingerprint {}, this \
                 dataset {} is {fp}); resume with the dataset the state was saved from",
                self.dataset,
                ds.dir().display()
            ));
        }
        let subset = opts.subset.as_ref().map(|s| s.id());
        if self.subset != subset {
            let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "none".into());
            return bad(format!(
                "the state was saved with subset={} but the options have subset={}; resume \
                 with the same subset of sample indices",
                show(&self.subset),
                show(&subset)
            ));
        }
        let show = |n: Option<u64>| n.map_or_else(|| "none".to_string(), |n| n.to_string());
        let fields: [(&str, String, String); 7] = [
            ("seed", self.seed.to_string(), opts.seed.to_string()),
            ("epoch", self.epoch.to_string(), opts.epoch.to_string()),
            (
                "shuffle",
                format!("{:?}", self.shuffle).to_lowercase(),
                format!("{:?}", opts.shuffle).to_lowercase(),
            ),
            (
                "chunk_bytes",
                self.chunk_bytes.to_string(),
                opts.chunk_bytes.to_string(),
            ),
            (
                "window_chunks",
                self.window_chunks.to_string(),
                opts.window_chunks.to_string(),
            ),
            (
                "drop_last",
                self.drop_last.to_string(),
                opts.drop_last.to_string(),
            ),
            (
                "epoch_samples",
                show(self.epoch_samples),
                show(opts.epoch_samples),
            ),
        ];
        for (name, saved, now) in fields {
            if saved != now {
                return bad(format!(
                    "the state was saved with {name}={saved} but the options have \
                     {name}={now}; build the loader with the options the state was saved \
                     with (only rank, world_size, batch_size, io_threads, prefetch_bytes, \
                     direct_io and on_error may change at resume)"
                ));
            }
        }
        if self.world_size == 0 || self.segments.iter().any(|s| s.world_size == 0) {
            return bad("a world size in the state is 0".into());
        }
        Ok(())
    }

    /// The same position expressed for a loader with `opts.rank` of `opts.world_size`: the
    /// current part of the epoch becomes a finished [`Segment`] when the world size changes
    /// (and is dropped when nothing was consumed in it).
    pub(super) fn rebased(&self, opts: &LoaderOptions) -> (Vec<Segment>, u64) {
        let mut segments = self.segments.clone();
        if opts.world_size == self.world_size {
            return (segments, self.samples_consumed);
        }
        if self.samples_consumed > 0 {
            segments.push(Segment {
                world_size: self.world_size,
                samples_consumed: self.samples_consumed,
            });
        }
        (segments, 0)
    }
}

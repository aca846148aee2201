//! The compiler: take a source's samples (a folder tree, WebDataset tars, an MDS dataset: see
//! [`crate::source`]), choose each field's compression, read and compress on many threads, and
//! commit records in order through the writer. Everything below is the same for every source;
//! the source only scans its input into a [`Catalog`] and reads members' bytes.
//!
//! Grouping follows the WebDataset convention: in one folder, `000123.jpg` and `000123.json`
//! form the sample with key `<folder>/000123` and fields `jpg` and `json`. With ImageFolder
//! labels, the first folder level under the root is the class; sorted class names give label
//! ids.
//!
//! Memory is bounded: besides one small entry per file (its relative path and size), at most
//! a few windows of [`PackOptions::window_bytes`] file contents are in memory at once, however
//! many files the tree holds. A file above [`STREAM_THRESHOLD`] (16 MiB) is never read whole:
//! at its turn it is copied into the shard in pieces of [`STREAM_PIECE`](crate::codec::STREAM_PIECE) bytes, checksummed on
//! the way, or, for a compressed field, encoded with zstd's streaming API into a temporary
//! file in the output (`shard-record.spk.tmp`) and copied from there. Such a record's frame is
//! the one [`FieldEncoder::encode`] gives for the same bytes in memory, so the output does not
//! depend on the path taken.
//!
//! # Output directory: where a pack writes
//!
//! - **OUT is new or an empty directory**: the dataset is built in OUT itself. A marker file
//!   [`PACK_MARKER_FILE`](crate::writer::PACK_MARKER_FILE) is created first and locked
//!   (`flock`) for as long as the pack runs; shards go under `.tmp` names, are synced and
//!   renamed; `manifest.json` comes last (the commit); then the marker is removed.
//! - **OUT holds a dataset and `--force` is given**: the new dataset is built beside it, in the
//!   staging directory `.<OUT's name>.shardpack-new.<pid>` in OUT's parent (with its own locked
//!   marker). Only when it is complete and synced are the two swapped, in one atomic
//!   `renameat2(RENAME_EXCHANGE)` on Linux; the old dataset, now under the staging name, is
//!   then removed. Where the exchange is not available (another OS, or a file system that
//!   refuses it) two renames do it: OUT to `.<OUT's name>.shardpack-old.<pid>`, then the
//!   staging directory to OUT. The old dataset needs no free space; the new one needs its own.
//!
//! ## Crash windows (SIGKILL, power loss) and what comes after
//!
//! | killed while | OUT holds | `Dataset::open(OUT)` | the next `pack` |
//! | --- | --- | --- | --- |
//! | building in OUT | the marker, some shards, no manifest | refuses: an interrupted pack, run it again | removes those files (the marker is unlocked) and packs; a foreign file there makes it refuse without touching anything |
//! | after the commit, before the marker is removed | the new dataset and the marker | opens the new dataset | removes the marker; `--force` needed as for any dataset |
//! | `--force`, building beside OUT | the old dataset, untouched | opens the old dataset | removes the staging directory |
//! | `--force`, after the exchange | the new dataset (and the marker) | opens the new dataset | removes the marker, and the old dataset left under the staging name |
//! | `--force` without exchange, between the two renames | nothing: OUT does not exist | refuses, naming `.<name>.shardpack-old.<pid>` and what to do | renames the old dataset back to OUT first, then packs |
//!
//! A staging directory or marker is recognised as a pack's own only by its exact name, a marker
//! that no running process holds locked, and contents that are all shardpack file names
//! (`manifest.json`, `manifest.json.tmp`, `shard-*.spk`, `shard-*.spk.tmp`, the marker); anything
//! else is left alone and named in a note or an error. One pack per OUT at a time.
//!
//! An error, or a cancel through [`Progress::cancelled`] (the CLI's SIGINT/SIGTERM, Python's
//! Ctrl-C), needs no next pack: the workers stop, and everything this pack wrote is removed
//! before `pack` returns (OUT too if it created it; a staging directory, leaving the old
//! dataset as it was).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::{json, Map, Value};
use zstd::zstd_safe::CCtx;

use crate::codec::{
    new_cctx, DecodeDict, DictTrainer, FieldEncoder, Policy, DEFAULT_LEVEL, STREAM_THRESHOLD,
};
use crate::error::{Error, Result};
use crate::format::Codec;
use crate::manifest::{FieldMeta, Name, Skipped, MANIFEST_FILE};
use crate::rng::SplitMix64;
use crate::source::{lossy, Access, Catalog, Input, Source};
pub use crate::source::{SourceFormat, SourceOptions};
pub use crate::writer::ShardCut;
use crate::writer::{
    DatasetInfo, DatasetWriter, EncodedRecord, FieldSpec, RawCutter, RecordInput, RefRecord,
    StreamedRecord, WriterOptions,
};

mod large;
mod out;
mod plan;
mod refs;

pub use plan::{
    merge, pack_part, plan, plan_inputs, plan_parts, MergeOptions, MergeSummary, PartSummary,
    PlanPart, PlanSummary, RunningPart,
};

use large::{prepare_large, CancelRead, Large, LargeError};

/// The shuffle seed used when none is given.
pub const DEFAULT_SHUFFLE_SEED: u64 = 0x5348_5244_5041_434B; // "SHRDPACK"

/// How sample labels are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelMode {
    /// The first folder level under the root is the class.
    ImageFolder,
    /// No labels.
    None,
}

/// Where a file name splits into key and field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// The first dot, unless that does not fit the tree: when the first-dot split makes many
    /// distinct fields that mostly occur in a single sample (`struct.Foo.html`,
    /// `frame.00001`), or more than 1024 distinct fields, the last dot, and when that does not fit either, whole names (each
    /// file its own sample). The walk says which it chose in one note, and the manifest
    /// records the mode used (never `auto`). The default.
    Auto,
    /// Key up to the first dot (`a.tar.gz` -> key `a`, field `tar.gz`).
    FirstDot,
    /// Key up to the last dot (`a.tar.gz` -> key `a.tar`, field `gz`).
    LastDot,
    /// The whole file name is the key (one sample per file, with the empty field name).
    Whole,
}

impl KeyMode {
    /// The name `--key` and the manifest's `options.key` use.
    pub fn name(self) -> &'static str {
        match self {
            KeyMode::Auto => "auto",
            KeyMode::FirstDot => "first-dot",
            KeyMode::LastDot => "last-dot",
            KeyMode::Whole => "whole",
        }
    }
}

impl std::str::FromStr for KeyMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(KeyMode::Auto),
            "first-dot" => Ok(KeyMode::FirstDot),
            "last-dot" => Ok(KeyMode::LastDot),
            "whole" => Ok(KeyMode::Whole),
            _ => Err(format!(
                "unknown key mode {s:?}: use auto, first-dot, last-dot or whole"
            )),
        }
    }
}

/// What `pack` does with symbolic links in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SymlinkPolicy {
    /// Follow links to files and folders, as torchvision's `ImageFolder` does (`os.walk` with
    /// `followlinks=True`): a link is packed with its target's bytes under the link's own
    /// path. A loop or a dangling link is an error (or skipped with `skip_errors`).
    #[default]
    Follow,
    /// Leave links out; each is listed as skipped (and counts towards
    /// [`PackOptions::max_skipped_share`]).
    Skip,
    /// Refuse a tree holding any symbolic link.
    Error,
}

impl std::str::FromStr for SymlinkPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "follow" => Ok(SymlinkPolicy::Follow),
            "skip" => Ok(SymlinkPolicy::Skip),
            "error" => Ok(SymlinkPolicy::Error),
            _ => Err(format!("{s:?} is not follow, skip or error")),
        }
    }
}

/// What `pack` does with samples that get no label under [`LabelMode::ImageFolder`]: files at
/// the top level of the tree, outside any class folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnlabeledPolicy {
    /// Pack them without a label; the summary counts them and names the first few.
    #[default]
    Allow,
    /// Refuse the tree, naming the first few.
    Error,
}

impl std::str::FromStr for UnlabeledPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "allow" => Ok(UnlabeledPolicy::Allow),
            "error" => Ok(UnlabeledPolicy::Error),
            _ => Err(format!("{s:?} is not allow or error")),
        }
    }
}

/// The default of [`PackOptions::max_skipped_share`]: 1% of the inputs.
pub const DEFAULT_MAX_SKIPPED_SHARE: f64 = 0.01;

/// Everything `pack` needs to know.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Shard size, sample count and alignment.
    pub writer: WriterOptions,
    /// Compression for fields without an override.
    pub compress: Policy,
    /// Per-field overrides: field name (file suffix) to policy.
    pub field_compress: BTreeMap<Vec<u8>, Policy>,
    /// Seed of the pack-time shuffle; `None` keeps the sorted walk order.
    pub shuffle_seed: Option<u64>,
    /// Compression threads (0: one per core).
    pub threads: usize,
    /// Concurrent file reads (0: 16, at least `threads`).
    pub io_threads: usize,
    /// Label derivation.
    pub labels: LabelMode,
    /// Key derivation.
    pub key: KeyMode,
    /// Follow symbolic links whatever [`PackOptions::symlinks`] says (kept for compatibility:
    /// following is now the default policy).
    pub follow_symlinks: bool,
    /// What to do with symbolic links (default: follow them).
    pub symlinks: SymlinkPolicy,
    /// Without `skip_errors`, the pack fails when more than this share (0 to 1) of its inputs
    /// is skipped (links under `SymlinkPolicy::Skip`, special files): a tree of links packed
    /// with almost nothing in it must not look like success. With `skip_errors` it packs, and
    /// the summary warns. Default 1%.
    pub max_skipped_share: f64,
    /// What to do with samples outside any class folder under ImageFolder labels.
    pub unlabeled: UnlabeledPolicy,
    /// Skip unreadable inputs (listed in the manifest and summary) instead of failing.
    pub skip_errors: bool,
    /// Replace an existing dataset in the output directory.
    pub force: bool,
    /// File bytes read ahead per window; about three windows are in memory at once.
    pub window_bytes: u64,
    /// What kind of source `src` is and the options of the non-tree sources.
    pub source: SourceOptions,
    /// What decides where shards are cut: raw sizes (the default, and the only rule a planned
    /// pack can follow) or stored sizes (the rule before planned packs).
    pub shard_cut: ShardCut,
    /// What trains the dictionaries of fields that get one (recorded in the manifest's
    /// `writer.dict_trainer`).
    pub dict_trainer: DictTrainer,
    /// Store a record of a compressed field that resembles an earlier one of the same field
    /// in its shard (an identical file, a variant of it) as zstd-ref: compressed against
    /// that record (`format-spec/shard.md` 6.1; the manifest then requires feature
    /// `zstd-ref`). Default on; needs [`ShardCut::Raw`] (ignored with stored-size cuts).
    pub refs: bool,
}

impl PackOptions {
    /// The symbolic-link policy in effect: [`SymlinkPolicy::Follow`] when `follow_symlinks`
    /// is set, else `symlinks`.
    pub fn symlink_policy(&self) -> SymlinkPolicy {
        if self.follow_symlinks {
            SymlinkPolicy::Follow
        } else {
            self.symlinks
        }
    }
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            writer: WriterOptions::default(),
            compress: Policy::Auto,
            field_compress: BTreeMap::new(),
            shuffle_seed: Some(DEFAULT_SHUFFLE_SEED),
            threads: 0,
            io_threads: 0,
            labels: LabelMode::ImageFolder,
            key: KeyMode::Auto,
            follow_symlinks: false,
            symlinks: SymlinkPolicy::Follow,
            max_skipped_share: DEFAULT_MAX_SKIPPED_SHARE,
            unlabeled: UnlabeledPolicy::Allow,
            skip_errors: false,
            force: false,
            window_bytes: 32 << 20,
            source: SourceOptions::default(),
            shard_cut: ShardCut::Raw,
            dict_trainer: DictTrainer::default(),
            refs: true,
        }
    }
}

/// Progress reports from `pack`. All methods have empty defaults.
pub trait Progress: Sync {
    /// The walk has found `files` files so far.
    fn walking(&self, _files: u64) {}
    /// The walk is done and field `field` (`index` of `fields`) gets its compression: its
    /// trial records are read and compressed, perhaps a dictionary trained (seconds on a big
    /// text field). Called once per field, before [`Progress::start`].
    fn choosing(&self, _field: &[u8], _index: usize, _fields: usize) {}
    /// Packing starts: this many files and bytes will be read.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// `files` more files with `bytes` more bytes are committed.
    fn advance(&self, _files: u64, _bytes: u64) {}
    /// A note for the user (a chosen compression, a fallback).
    fn note(&self, _msg: &str) {}
    /// Polled by `pack` while it works; returning `true` stops it. The pack then removes what
    /// it wrote and returns [`Error::Cancelled`]. Used for SIGINT/SIGTERM in the CLI and
    /// Ctrl-C in Python. Must be cheap: it is called often and from several threads.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// The outcome of a pack.
#[derive(Debug, Clone, Serialize)]
pub struct PackSummary {
    /// The dataset directory.
    pub out: PathBuf,
    /// Samples written.
    pub samples: u64,
    /// Shards written.
    pub shards: u64,
    /// Input files packed.
    pub files: u64,
    /// Input bytes packed.
    pub input_bytes: u64,
    /// Bytes of all shard files plus the manifest.
    pub output_bytes: u64,
    /// `output_bytes / input_bytes`.
    pub ratio: f64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Input files per second.
    pub files_per_s: f64,
    /// Input MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Number of classes (ImageFolder labels).
    pub classes: u64,
    /// What each field became (as in the manifest).
    pub fields: Vec<FieldMeta>,
    /// Inputs left out (as in the manifest).
    pub skipped: Vec<Skipped>,
    /// `skipped` over all inputs (packed files plus skipped entries); 0 when none.
    pub skipped_share: f64,
    /// Samples packed without a label under ImageFolder labels (files at the top level of the
    /// tree); 0 with `--labels none`.
    pub unlabeled: u64,
    /// The first few (at most 5, in key order) of those samples' keys.
    pub unlabeled_examples: Vec<Name>,
    /// What the user should not miss: more skipped than `max_skipped_share` allows (only
    /// possible with `skip_errors`), a class folder left without samples.
    pub warnings: Vec<String>,
}

/// How many unlabeled keys the summary names.
const UNLABELED_EXAMPLES: usize = 5;

pub use crate::source::tree::join_bytes;

// ---------------------------------------------------------------------------------------------
// Compression choice
// ---------------------------------------------------------------------------------------------

const TRIAL_FILES: usize = 1024;
const TRIAL_BYTES: u64 = 16 << 20;
const DICT_MAX: usize = 112 * 1024;

/// Reads a deterministic sample of a field's members (at most [`TRIAL_BYTES`] of each):
/// evenly spread, or the first ones of a sequential source.
fn trial_inputs(
    source: &dyn Source,
    cat: &Catalog,
    field: u32,
    cancel: &Cancel<'_>,
) -> Vec<Vec<u8>> {
    let idx: Vec<(usize, usize)> = (0..cat.len())
        .flat_map(|s| cat.member_range(s).map(move |m| (s, m)))
        .filter(|&(s, m)| cat.member(s, m).member.field == field)
        .collect();
    // Spread over the whole source; a sequential source (one stream) takes its first members
    // instead, so the trial reads only the start of the stream, not all of it.
    let step = match source.access() {
        Access::Random => idx.len().div_ceil(TRIAL_FILES).max(1),
        Access::Sequential => 1,
    };
    let mut picked = Vec::new();
    let mut total = 0u64;
    for &(s, m) in idx.iter().step_by(step) {
        if total >= TRIAL_BYTES {
            break;
        }
        total += cat.member(s, m).member.size.min(TRIAL_BYTES);
        picked.push((s, m));
    }
    let read = |&(s, m): &(usize, usize)| {
        if cancel.check() {
            return None;
        }
        let mr = cat.member(s, m);
        match source.access() {
            Access::Random => {
                let mut buf = Vec::new();
                source
                    .open(&mr)
                    .ok()?
                    .take(TRIAL_BYTES)
                    .read_to_end(&mut buf)
                    .ok()?;
                Some(buf)
            }
            Access::Sequential => {
                let mut buf = source.read(&mr).ok()?;
                buf.truncate(TRIAL_BYTES as usize);
                Some(buf)
            }
        }
    };
    match source.access() {
        Access::Random => picked.par_iter().filter_map(read).collect(),
        Access::Sequential => picked.iter().filter_map(read).collect(),
    }
}

fn compressed_sizes(inputs: &[&[u8]], enc: &FieldEncoder, cctx: &mut CCtx<'_>) -> u64 {
    let mut out = Vec::new();
    inputs
        .iter()
        .map(|raw| match enc.encode(cctx, raw, &mut out) {
            Codec::Raw => raw.len() as u64,
            _ => out.len() as u64,
        })
        .sum()
}

/// Compressed size over raw size of `inputs` concatenated into one zstd frame.
fn stream_ratio(inputs: &[&[u8]], enc: &FieldEncoder, cctx: &mut CCtx<'_>) -> f64 {
    let stream = inputs.concat();
    let mut out = Vec::new();
    match enc.encode(cctx, &stream, &mut out) {
        Codec::Raw => 1.0,
        _ => out.len() as f64 / stream.len().max(1) as f64,
    }
}

/// Resolves a field's policy into a spec, trial-compressing where the policy asks.
fn choose(
    name: &[u8],
    policy: Policy,
    inputs: &[Vec<u8>],
    field_bytes: u64,
    shard_size: u64,
    trainer: DictTrainer,
    notes: &mut Vec<String>,
) -> FieldSpec {
    let mut spec = FieldSpec::raw(name);
    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let train = |samples: &[&[u8]]| {
        let total: usize = samples.iter().map(|s| s.len()).sum();
        trainer.train(samples, DICT_MAX.min((total / 8).max(1024)))
    };
    match policy {
        Policy::None => {}
        Policy::Zstd(level) => {
            spec.codec = Codec::Zstd;
            spec.level = level;
        }
        Policy::ZstdDict(level) => {
            spec.level = level;
            match train(&refs) {
                Some(d) => {
                    spec.codec = Codec::ZstdDict;
                    spec.dict = Some(d);
                }
                None => {
                    spec.codec = Codec::Zstd;
                    notes.push(format!(
                        "field {:?}: too little data to train a dictionary; using zstd:{level}",
                        lossy(name)
                    ));
                }
            }
        }
        Policy::Auto => {
            let raw: u64 = refs.iter().map(|r| r.len() as u64).sum();
            if raw == 0 {
                return spec;
            }
            let mut cctx = new_cctx();
            let plain = FieldEncoder::new(Codec::Zstd, DEFAULT_LEVEL, None).expect("zstd");
            let z = compressed_sizes(&refs, &plain, &mut cctx);
            let plain_ratio = z as f64 / raw as f64;
            // A dictionary: train on half the trial, measure on the other half, and keep it
            // when it beats plain zstd by 3% and its saving outweighs one copy per shard.
            // Training costs seconds, so first ask whether the records share anything at all:
            // when the whole trial as one stream (every record in context) shrinks by less
            // than 5%, no dictionary can bring a record under the 90% needed below.
            let mean = raw / refs.len() as u64;
            let mut dict_choice = None;
            if refs.len() >= 16
                && mean <= 256 * 1024
                && stream_ratio(&refs, &plain, &mut cctx) < 0.95
            {
                let train_set: Vec<&[u8]> = refs.iter().copied().step_by(2).collect();
                let test_set: Vec<&[u8]> = refs.iter().copied().skip(1).step_by(2).collect();
                let trial = train(&train_set).and_then(|d| {
                    let enc = FieldEncoder::new(Codec::ZstdDict, DEFAULT_LEVEL, Some(&d)).ok()?;
                    Some((d, enc))
                });
                if let Some((d, with)) = trial {
                    let test_raw: u64 = test_set.iter().map(|r| r.len() as u64).sum();
                    let zp = compressed_sizes(&test_set, &plain, &mut cctx);
                    let zd = compressed_sizes(&test_set, &with, &mut cctx);
                    let saved_per_byte = (zp as f64 - zd as f64) / test_raw.max(1) as f64;
                    let shards = field_bytes.div_ceil(shard_size).max(1);
                    let cost = (d.len() as u64 * shards) as f64;
                    if zd as f64 <= 0.97 * zp as f64 && saved_per_byte * field_bytes as f64 > cost {
                        dict_choice = Some((zd as f64 / test_raw.max(1) as f64, zp, zd));
                    }
                }
            }
            if let Some((ratio, zp, zd)) = dict_choice.filter(|(r, _, _)| *r < 0.9) {
                if let Some(full) = train(&refs) {
                    notes.push(format!(
                        "field {:?}: zstd:{DEFAULT_LEVEL} with a {} KiB dictionary (trial: {:.1}% \
                         of raw size, {:.1}% smaller than plain zstd)",
                        lossy(name),
                        full.len().div_ceil(1024),
                        100.0 * ratio,
                        100.0 * (1.0 - zd as f64 / zp as f64)
                    ));
                    spec.codec = Codec::ZstdDict;
                    spec.level = DEFAULT_LEVEL;
                    spec.dict = Some(full);
                    return spec;
                }
            }
            if plain_ratio < 0.9 {
                notes.push(format!(
                    "field {:?}: zstd:{DEFAULT_LEVEL} (trial of {} files: {:.1}% of raw size)",
                    lossy(name),
                    refs.len(),
                    100.0 * plain_ratio
                ));
                spec.codec = Codec::Zstd;
                spec.level = DEFAULT_LEVEL;
            } else {
                notes.push(format!(
                    "field {:?}: stored raw (zstd saves {:.1}% on a trial of {} files)",
                    lossy(name),
                    100.0 * (1.0 - plain_ratio).max(0.0),
                    refs.len()
                ));
            }
        }
    }
    spec
}

// ---------------------------------------------------------------------------------------------
// Pack
// ---------------------------------------------------------------------------------------------

struct ReadFile {
    /// Member number in the catalog.
    member: u32,
    /// The member's bytes; empty for a large member (above [`STREAM_THRESHOLD`] in a source
    /// with random access), which is streamed at commit time instead of read here.
    data: std::result::Result<Vec<u8>, String>,
    large: bool,
}

struct Window {
    samples: Vec<u32>,
    files: Vec<ReadFile>,
}

/// For each member of `window`: the base it is to be encoded against, and the base id it
/// becomes (see [`refs`]). Sketches are computed on the CPU pool; the decisions go through
/// the samples in order, following the shard cut the writer will make.
fn decide_refs(
    window: &Window,
    cat: &Catalog,
    encoders: &[FieldEncoder],
    cutter: &mut RawCutter,
    bases: &mut refs::BaseIndex,
    cpu: &rayon::ThreadPool,
) -> (Vec<Option<u64>>, Vec<Option<u64>>) {
    let sketches: Vec<Option<refs::Sketch>> = cpu.install(|| {
        window
            .files
            .par_iter()
            .map(|rf| match &rf.data {
                Ok(d)
                    if !rf.large
                        && (refs::MIN_REF_LEN..=refs::MAX_REF_LEN).contains(&d.len())
                        && encoders[cat.member_field(rf.member as usize) as usize].codec()
                            != Codec::Raw =>
                {
                    Some(refs::sketch(d))
                }
                _ => None,
            })
            .collect()
    });
    let n = window.files.len();
    let (mut ref_of, mut base_of) = (vec![None; n], vec![None; n]);
    let mut at = 0usize;
    let mut raws = Vec::new();
    for &s in &window.samples {
        let s = s as usize;
        let range = cat.member_range(s);
        raws.clear();
        raws.extend(range.clone().map(|m| cat.member(s, m).member.size));
        if cutter.push(cat.key(s).len(), &raws) {
            bases.new_shard();
        }
        for _ in range {
            if let (Some(sk), Ok(d)) = (&sketches[at], &window.files[at].data) {
                let field = cat.member_field(window.files[at].member as usize);
                match bases.find(field, sk) {
                    Some(id) => ref_of[at] = Some(id),
                    // A base's data must not start with the dictionary magic (shard.md 6.1).
                    None if !crate::codec::has_dict_magic(d) => {
                        base_of[at] = Some(bases.add(field, *sk, at, d.len() as u64))
                    }
                    None => {}
                }
            }
            at += 1;
        }
    }
    (ref_of, base_of)
}

/// The data of base `id` for a member of `window`: from the window, or decoded from the
/// stored bytes kept from an earlier one. `None` if it is gone or does not decode.
fn base_bytes<'w>(
    bases: &refs::BaseIndex,
    id: u64,
    window: &'w Window,
    decoders: &[Option<DecodeDict>],
    field: u32,
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
) -> Option<std::borrow::Cow<'w, [u8]>> {
    let b = bases.base(id);
    match &b.data {
        refs::BaseData::Window(i) => window.files[*i]
            .data
            .as_deref()
            .ok()
            .map(std::borrow::Cow::Borrowed),
        refs::BaseData::Kept(stored, Codec::Raw) => Some(std::borrow::Cow::Owned(stored.to_vec())),
        refs::BaseData::Kept(stored, codec) => {
            let mut out = Vec::new();
            let dict = decoders[field as usize].as_ref();
            crate::codec::decode_record(dctx, *codec, stored, b.raw_len, dict, &mut out).ok()?;
            Some(std::borrow::Cow::Owned(out))
        }
        refs::BaseData::Dropped => None,
    }
}

fn pool(threads: usize, name: &'static str) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("shardpack-{name}-{i}"))
        .build()
        .map_err(|e| Error::Options(format!("cannot start {threads} threads: {e}")))
}

/// The manifest's `options` object (the label mode is the manifest's own `labels` key).
fn policy_options(opts: &PackOptions) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("shard_size".into(), json!(opts.writer.shard_size));
    m.insert(
        "max_samples_per_shard".into(),
        json!(opts.writer.max_samples_per_shard),
    );
    m.insert("align".into(), json!(opts.writer.record_align));
    m.insert("compress".into(), json!(opts.compress.to_string()));
    let fc: Map<String, Value> = opts
        .field_compress
        .iter()
        .map(|(k, v)| (lossy(k), json!(v.to_string())))
        .collect();
    m.insert("field_compress".into(), Value::Object(fc));
    m.insert("shuffle_seed".into(), json!(opts.shuffle_seed));
    m.insert(
        "key".into(),
        // A tree records the mode its walk resolved (`auto` never reaches a manifest; the
        // tree source's catalog options override this); other sources split no file names.
        json!(match opts.key {
            KeyMode::Auto => KeyMode::FirstDot.name(),
            k => k.name(),
        }),
    );
    m.insert(
        "follow_symlinks".into(),
        json!(opts.symlink_policy() == SymlinkPolicy::Follow),
    );
    m.insert("skip_errors".into(), json!(opts.skip_errors));
    // Only when on: a pack without them has the options (and bytes) of one made before them.
    if refs_on(opts) {
        m.insert("refs".into(), json!(true));
    }
    m
}

/// Whether the pack looks for zstd-ref records: asked for, and shards cut by raw sizes (a
/// record's base must be in its shard, known before encoding only under that rule).
fn refs_on(opts: &PackOptions) -> bool {
    opts.refs && opts.shard_cut == ShardCut::Raw
}

/// Packs the source at `src` into a dataset at `out`: a folder tree, or (see
/// [`PackOptions::source`] and [`SourceFormat`]) WebDataset tar shards or an MDS dataset. On
/// error or cancel (see [`Progress::cancelled`]), everything this call wrote is removed (and
/// `out` too if this call created it); a dataset that `force` replaces stays until the new one
/// is complete (see the module docs for every crash window). `src` is only ever read.
pub fn pack(
    src: &Path,
    out: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
) -> Result<PackSummary> {
    pack_inputs(
        std::slice::from_ref(&src.to_path_buf()),
        out,
        opts,
        progress,
    )
}

/// Like [`pack`], for a source given as several inputs: WebDataset shards (`.tar`, `.tar.gz`,
/// `.tgz` files, folders of them, brace patterns such as `shards-{000000..000099}.tar`),
/// packed in the order given. A tree or an MDS dataset is one input.
pub fn pack_inputs(
    inputs: &[PathBuf],
    out: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
) -> Result<PackSummary> {
    let started = Instant::now();
    opts.writer.validate()?;
    if opts.window_bytes == 0 {
        return Err(Error::Options("window size must be above 0".into()));
    }
    if !(0.0..=1.0).contains(&opts.max_skipped_share) {
        return Err(Error::Options(format!(
            "the largest skipped share must be between 0 and 1, not {}",
            opts.max_skipped_share
        )));
    }
    let input = Input::resolve(inputs, opts.source.format)?;
    let target = out::prepare(input.root(), out, opts.force, progress)?;
    let cancel = Cancel::new(progress);
    let mut summary = pack_into(&input, target.build_dir(), opts, progress, &cancel, started)?;
    target.commit(progress)?;
    summary.out = out.to_path_buf();
    Ok(summary)
}

/// Polls [`Progress::cancelled`] and remembers a `true`, so every thread that asks later sees
/// it even if the callback were to change its mind.
pub(crate) struct Cancel<'a> {
    progress: &'a dyn Progress,
    seen: std::sync::atomic::AtomicBool,
}

impl<'a> Cancel<'a> {
    fn new(progress: &'a dyn Progress) -> Self {
        Cancel {
            progress,
            seen: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn check(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.seen.load(Relaxed) {
            return true;
        }
        let c = self.progress.cancelled();
        if c {
            self.seen.store(true, Relaxed);
        }
        c
    }

    pub(crate) fn stop(&self) -> Result<()> {
        if self.check() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// `share` (0 to 1) as a percentage for messages: `1`, `0.5`, `7`, without float noise.
fn percent(share: f64) -> String {
    let s = format!("{:.4}", 100.0 * share);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Fails (`fail`) or describes the pack when more than `max_skipped_share` of its inputs is
/// skipped. Returns the warning when the share is above it and `fail` is off.
pub(crate) fn check_skipped_share(
    src: &Path,
    skipped: &[Skipped],
    packed: usize,
    opts: &PackOptions,
    fail: bool,
) -> Result<Option<String>> {
    let total = packed + skipped.len();
    if skipped.is_empty() || total == 0 {
        return Ok(None);
    }
    let share = skipped.len() as f64 / total as f64;
    if share <= opts.max_skipped_share {
        return Ok(None);
    }
    let what = format!(
        "{} of {} inputs ({:.1}%) were skipped, more than the {}% allowed (e.g. {}: {})",
        skipped.len(),
        total,
        100.0 * share,
        percent(opts.max_skipped_share),
        skipped[0].path.display(),
        skipped[0].reason
    );
    if fail {
        return Err(Error::input(
            src,
            format!(
                "{what}; a dataset missing that much is probably not what you meant: fix the \
                 inputs (for symbolic links, --symlinks follow packs what they point to), raise \
                 --max-skipped-share, or pass --skip-errors to pack anyway"
            ),
        ));
    }
    Ok(Some(what))
}

fn pack_into(
    input: &Input,
    out: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
    cancel: &Cancel<'_>,
    started: Instant,
) -> Result<PackSummary> {
    let (cpu, io) = pools(opts)?;
    let (source, cat, warnings) = crate::source::scan(input, opts, progress, cancel)?;
    pack_catalog(
        &*source,
        cat,
        warnings,
        out,
        opts,
        progress,
        cancel,
        started,
        (&cpu, &io),
        None,
    )
}

/// The thread pools of a pack: compression, and reading.
pub(crate) fn pools(opts: &PackOptions) -> Result<(rayon::ThreadPool, rayon::ThreadPool)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if opts.threads == 0 {
        cores
    } else {
        opts.threads
    };
    let io_threads = if opts.io_threads == 0 {
        16.max(threads)
    } else {
        opts.io_threads
    };
    Ok((pool(threads, "compress")?, pool(io_threads, "read")?))
}

/// What decides the bytes besides the catalog, fixed before anything is written: each field's
/// spec (policy trials, dictionaries; the notes explaining them go to the progress) and the
/// sample order.
pub(crate) struct Prepared {
    pub(crate) specs: Vec<FieldSpec>,
    pub(crate) order: Vec<u32>,
    pub(crate) sequential: bool,
}

/// Checks the labels, chooses every field's compression (reporting the notes) and shuffles:
/// the part of the pipeline a plan runs once for all parts.
pub(crate) fn prepare(
    source: &dyn Source,
    cat: &Catalog,
    opts: &PackOptions,
    progress: &dyn Progress,
    cancel: &Cancel<'_>,
    io: &rayon::ThreadPool,
) -> Result<Prepared> {
    let src = source.root();
    let sequential = source.access() == Access::Sequential;
    if cat.imagefolder_labels {
        let unlabeled: Vec<usize> = (0..cat.len()).filter(|&s| cat.label(s).is_none()).collect();
        if opts.unlabeled == UnlabeledPolicy::Error && !unlabeled.is_empty() {
            let names: Vec<String> = unlabeled
                .iter()
                .take(5)
                .map(|&s| {
                    let first = cat.member_range(s).start;
                    lossy(&source.skip_name(&cat.member(s, first)))
                })
                .collect();
            return Err(Error::input(
                src,
                format!(
                    "{} samples are at the top level of the tree, outside any class folder, so \
                     they get no label under --labels imagefolder (e.g. {}); move them into a \
                     class folder, or pass --labels none or --unlabeled allow",
                    unlabeled.len(),
                    names.join(", ")
                ),
            ));
        }
    }

    // Per-field policy and trial.
    let field_bytes = cat.field_bytes();
    let mut notes = cat.notes.clone();
    let mut specs = Vec::with_capacity(cat.fields.len());
    for (fi, name) in cat.fields.iter().enumerate() {
        cancel.stop()?;
        progress.choosing(name, fi, cat.fields.len());
        let policy = *opts.field_compress.get(name).unwrap_or(&opts.compress);
        let inputs = match policy {
            Policy::Auto | Policy::ZstdDict(_) => {
                io.install(|| trial_inputs(source, cat, fi as u32, cancel))
            }
            _ => Vec::new(),
        };
        cancel.stop()?;
        specs.push(choose(
            name,
            policy,
            &inputs,
            field_bytes[fi],
            opts.writer.shard_size,
            opts.dict_trainer,
            &mut notes,
        ));
    }
    // Sample order: a sequential source keeps its own order (see the `source` module docs).
    let shuffle_seed = if sequential { None } else { opts.shuffle_seed };
    if sequential && opts.shuffle_seed.is_some() {
        notes.push(source.sequential_note());
    }
    for n in &notes {
        progress.note(n);
    }
    cancel.stop()?;

    let mut order: Vec<u32> = (0..cat.len() as u32).collect();
    if let Some(seed) = shuffle_seed {
        SplitMix64::new(seed).shuffle(&mut order);
    }
    Ok(Prepared {
        specs,
        order,
        sequential,
    })
}

/// The pack pipeline over any source's catalog: policy trials, the shuffle, windows read in
/// parallel (or in order, for a sequential source), compressed on the CPU pool and committed in
/// order.
#[allow(clippy::too_many_arguments)]
fn pack_catalog(
    source: &dyn Source,
    cat: Catalog,
    mut warnings: Vec<String>,
    out: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
    cancel: &Cancel<'_>,
    started: Instant,
    (cpu, io): (&rayon::ThreadPool, &rayon::ThreadPool),
    part: Option<&mut plan::PartRun>,
) -> Result<PackSummary> {
    let src = source.root();
    let sequential = source.access() == Access::Sequential;
    let (specs, order) = match &part {
        None => {
            let p = prepare(source, &cat, opts, progress, cancel, io)?;
            (p.specs, p.order)
        }
        // A part's catalog is its slice of the plan, already in the planned order.
        Some(run) => (run.specs.clone(), (0..cat.len() as u32).collect()),
    };
    let scratch = part.as_ref().map_or(out, |run| run.scratch.as_path());
    let planned = part.is_some();

    // zstd-ref records: the shard cut predicted as the writer will make it (a base must be in
    // its record's shard), the bases found so far, and decoders for kept bases.
    let refs_wanted = refs_on(opts);
    let mut cutter = RawCutter::new(&specs, &opts.writer);
    let mut bases = refs::BaseIndex::new(specs.len());
    let decoders: Vec<Option<DecodeDict>> = specs
        .iter()
        .map(|s| s.dict.as_deref().and_then(DecodeDict::new))
        .collect();
    let mut commit_cctx = new_cctx();

    // Encoders for the worker threads (the writer keeps its own for `append`).
    let encoders = specs
        .iter()
        .map(|s| FieldEncoder::new(s.codec, s.level, s.dict.as_deref()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::Options)?;
    let mut writer = DatasetWriter::create(out, specs, opts.writer.clone())?;
    match &part {
        None => writer.set_shard_cut(opts.shard_cut),
        Some(run) => writer.set_part(run.first_shard, run.first_sample, &run.tag),
    }
    // Every source's catalog has distinct keys (trees by construction, the others checked).
    writer.assume_unique_keys();
    let total_bytes = cat.total_bytes();
    progress.start(cat.member_count() as u64, total_bytes);

    let mut skipped = cat.skipped.clone();
    let mut unlabeled = 0u64;
    let mut unlabeled_examples: BTreeSet<Name> = BTreeSet::new();
    let mut packed_files = 0u64;
    let mut packed_bytes = 0u64;

    // Windows of samples, each read in parallel on the I/O pool by a producer thread while the
    // consumer compresses the previous one and commits it in order.
    let windows = {
        let mut w = Vec::new();
        let mut start = 0usize;
        let (mut bytes, mut count) = (0u64, 0usize);
        for (pos, &s) in order.iter().enumerate() {
            for m in cat.member_range(s as usize) {
                bytes += cat.member(s as usize, m).member.size;
            }
            count += 1;
            if bytes >= opts.window_bytes || count >= 8192 {
                w.push(start..pos + 1);
                start = pos + 1;
                bytes = 0;
                count = 0;
            }
        }
        if start < order.len() {
            w.push(start..order.len());
        }
        w
    };

    let result: Result<()> = std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Window>(1);
        let cat = &cat;
        let order = &order;
        let windows = &windows;
        let encoders = &encoders;
        scope.spawn(move || {
            for range in windows {
                if cancel.check() {
                    return;
                }
                let samples: Vec<u32> = order[range.clone()].to_vec();
                let ids: Vec<(u32, u32)> = samples
                    .iter()
                    .flat_map(|&s| cat.member_range(s as usize).map(move |m| (s, m as u32)))
                    .collect();
                let read = |&(s, m): &(u32, u32)| {
                    let mr = cat.member(s as usize, m as usize);
                    let large = !sequential && mr.member.size > STREAM_THRESHOLD;
                    ReadFile {
                        member: m,
                        data: if cancel.check() {
                            Err(String::new()) // never committed: see below
                        } else if large {
                            Ok(Vec::new())
                        } else {
                            source.read(&mr)
                        },
                        large,
                    }
                };
                let files = if sequential {
                    ids.iter().map(read).collect()
                } else {
                    io.install(|| ids.par_iter().map(read).collect())
                };
                if cancel.check() {
                    return; // a window read while cancelling is never sent
                }
                if tx.send(Window { samples, files }).is_err() {
                    return; // the consumer stopped (an error); stop reading
                }
            }
        });

        for window in rx {
            cancel.stop()?;
            // Which members are stored against a base (`refs`), and which become bases.
            let (ref_of, base_of) = match refs_wanted {
                true => decide_refs(&window, cat, encoders, &mut cutter, &mut bases, cpu),
                false => (Vec::new(), Vec::new()),
            };
            let bases_now = &bases;
            // Compress every member of the window on the CPU pool.
            let mut encoded: Vec<(Codec, Vec<u8>, Option<u64>)> = cpu.install(|| {
                window
                    .files
                    .par_iter()
                    .enumerate()
                    .map_init(
                        || (new_cctx(), crate::codec::new_dctx()),
                        |(cctx, dctx), (at, rf)| match &rf.data {
                            Ok(_) if rf.large || cancel.check() => (Codec::Raw, Vec::new(), None),
                            Ok(raw) => {
                                let field = cat.member_field(rf.member as usize);
                                let enc = &encoders[field as usize];
                                let mut out = Vec::new();
                                if let Some(id) = ref_of.get(at).copied().flatten() {
                                    let base =
                                        base_bytes(bases_now, id, &window, &decoders, field, dctx);
                                    if let Some(b) = base {
                                        if enc.encode_ref(cctx, raw, &b, &mut out) {
                                            return (Codec::ZstdRef, out, Some(id));
                                        }
                                    }
                                }
                                let codec = enc.encode(cctx, raw, &mut out);
                                (codec, out, None)
                            }
                            Err(_) => (Codec::Raw, Vec::new(), None),
                        },
                    )
                    .collect()
            });
            // Commit in order.
            let mut at = 0usize;
            cancel.stop()?;
            for &s in &window.samples {
                cancel.stop()?;
                let s = s as usize;
                let range = cat.member_range(s);
                let first_at = at;
                // A ref whose base is not in the shard the writer puts this sample in (the
                // cut went otherwise than predicted: a member left out, a file that changed
                // size) is encoded on its own instead.
                if encoded[at..at + range.len()].iter().any(|e| e.2.is_some()) {
                    let raws: Vec<u64> = (at..at + range.len())
                        .filter_map(|i| {
                            let rf = &window.files[i];
                            match &rf.data {
                                Ok(_) if rf.large => {
                                    Some(cat.member(s, rf.member as usize).member.size)
                                }
                                Ok(d) => Some(d.len() as u64),
                                Err(_) => None,
                            }
                        })
                        .collect();
                    let start = writer.shard_start_for(cat.key(s).len(), &raws);
                    let members = window.files[at..].iter();
                    for (e, rf) in encoded[at..at + range.len()].iter_mut().zip(members) {
                        let Some(id) = e.2 else { continue };
                        let in_shard = bases
                            .base(id)
                            .sample
                            .zip(start)
                            .is_some_and(|(b, st)| b >= st);
                        if !in_shard {
                            let raw = rf.data.as_ref().expect("a ref's member was read");
                            let field = cat.member_field(rf.member as usize);
                            let mut out = Vec::new();
                            let codec =
                                encoders[field as usize].encode(&mut commit_cctx, raw, &mut out);
                            *e = (codec, out, None);
                        }
                    }
                }
                // In memory, or streamed (large members, kept in `larges` in record order).
                let mut recs: Vec<std::result::Result<EncodedRecord<'_>, (u32, u64)>> =
                    Vec::with_capacity(range.len());
                let mut larges: Vec<Large<'_>> = Vec::new();
                let (mut nfiles, mut nbytes) = (0u64, 0u64);
                let mut ref_bases: Vec<Option<(u64, u64)>> = Vec::with_capacity(range.len());
                for _ in range.clone() {
                    let rf = &window.files[at];
                    let (codec, buf, ref_base) = &encoded[at];
                    at += 1;
                    let mr = cat.member(s, rf.member as usize);
                    let field = mr.member.field;
                    let size = mr.member.size;
                    let data = match (&rf.data, rf.large) {
                        (Ok(_), true) => {
                            let enc = &encoders[field as usize];
                            let path = source.path(&mr);
                            match prepare_large(
                                || source.open(&mr),
                                path,
                                size,
                                enc,
                                scratch,
                                cancel,
                            ) {
                                Ok(l) => {
                                    larges.push(l);
                                    recs.push(Err((field, size)));
                                    nfiles += 1;
                                    nbytes += size;
                                    continue;
                                }
                                Err(LargeError::Output(e)) => return Err(e),
                                Err(LargeError::Source(reason)) => Err(reason),
                            }
                        }
                        (Ok(raw), false) => Ok(raw),
                        (Err(reason), _) => Err(reason.clone()),
                    };
                    match data {
                        Ok(raw) => {
                            recs.push(Ok(EncodedRecord {
                                field,
                                codec: *codec,
                                stored: if *codec == Codec::Raw { raw } else { buf },
                                raw_len: raw.len() as u64,
                            }));
                            ref_bases.push(ref_base.map(|id| {
                                let b = bases.base(id);
                                (b.sample.expect("checked above"), b.raw_len)
                            }));
                            nfiles += 1;
                            nbytes += raw.len() as u64;
                        }
                        // A part cannot leave a member out: the plan fixed every later shard's
                        // first sample and cut by this member's size.
                        Err(reason) if opts.skip_errors && !planned => {
                            skipped.push(Skipped {
                                path: Name(source.skip_name(&mr)),
                                reason,
                            });
                        }
                        Err(reason) => {
                            return Err(source.error(
                                &mr,
                                format!("{reason} (pass --skip-errors to leave it out)"),
                            ));
                        }
                    }
                }
                if !recs.is_empty() {
                    let key = cat.key(s);
                    let label = cat.label(s);
                    // Every stream stops soon once the pack is cancelled.
                    let mut readers: Vec<(CancelRead<'_, '_, &mut dyn Read>, Codec, u64, &Path)> =
                        larges
                            .iter_mut()
                            .map(|l| {
                                let reader = CancelRead {
                                    inner: &mut *l.file as &mut dyn Read,
                                    cancel,
                                };
                                (reader, l.codec, l.stored_len, l.path.as_path())
                            })
                            .collect();
                    let mut streams = readers.iter_mut();
                    let mut ref_bases = ref_bases.iter();
                    let mut inputs: Vec<RecordInput<'_>> = recs
                        .iter()
                        .map(|r| match r {
                            Ok(b) => match ref_bases.next().copied().flatten() {
                                Some((base_sample, base_raw_len)) => RecordInput::Ref(RefRecord {
                                    field: b.field,
                                    frame: b.stored,
                                    raw_len: b.raw_len,
                                    base_sample,
                                    base_raw_len,
                                }),
                                None => RecordInput::Bytes(*b),
                            },
                            Err((field, raw_len)) => {
                                let (reader, codec, stored_len, path) =
                                    streams.next().expect("one per streamed record");
                                RecordInput::Stream(StreamedRecord {
                                    field: *field,
                                    codec: *codec,
                                    stored_len: *stored_len,
                                    raw_len: *raw_len,
                                    reader,
                                    source: Some(path),
                                })
                            }
                        })
                        .collect();
                    let appended = writer.append_inputs(key, label, &mut inputs);
                    if appended.is_err() && cancel.check() {
                        return Err(Error::Cancelled);
                    }
                    appended?;
                    if label.is_none() && cat.imagefolder_labels {
                        unlabeled += 1;
                        unlabeled_examples.insert(Name(key.to_vec()));
                        if unlabeled_examples.len() > UNLABELED_EXAMPLES {
                            unlabeled_examples.pop_last();
                        }
                    }
                }
                // The sample's new bases are kept (their stored bytes) for later samples.
                if !base_of.is_empty() {
                    let sample_no = writer.samples().saturating_sub(1);
                    for i in first_at..at {
                        let (Some(id), Ok(raw)) = (base_of[i], &window.files[i].data) else {
                            continue;
                        };
                        let (codec, buf, _) = &mut encoded[i];
                        let stored = match codec {
                            Codec::Raw => raw.clone(),
                            _ => std::mem::take(buf),
                        };
                        bases.committed(id, sample_no, Arc::new(stored), *codec);
                    }
                }
                packed_files += nfiles;
                packed_bytes += nbytes;
                progress.advance(range.len() as u64, nbytes);
            }
            // Nothing decided or committed refers to the bases of a shard the window has left.
            bases.retire();
        }
        cancel.stop()
    });
    result?;
    if let Some(run) = part {
        cancel.stop()?;
        run.output = Some(writer.finish_part()?);
        return Ok(PackSummary {
            out: out.to_path_buf(),
            samples: cat.len() as u64,
            shards: run.output.as_ref().map_or(0, |o| o.shards.len() as u64),
            files: packed_files,
            input_bytes: packed_bytes,
            output_bytes: 0,
            ratio: 0.0,
            seconds: started.elapsed().as_secs_f64(),
            files_per_s: 0.0,
            mb_per_s: 0.0,
            classes: cat.classes.len() as u64,
            fields: Vec::new(),
            skipped: Vec::new(),
            skipped_share: 0.0,
            unlabeled,
            unlabeled_examples: unlabeled_examples.into_iter().collect(),
            warnings,
        });
    }
    if writer.samples() == 0 {
        return Err(Error::input(
            src,
            "every input file was skipped; nothing to pack",
        ));
    }

    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    let skipped_share = if skipped.is_empty() {
        0.0
    } else {
        skipped.len() as f64 / (packed_files as usize + skipped.len()) as f64
    };
    if let Some(w) = check_skipped_share(src, &skipped, packed_files as usize, opts, false)? {
        warnings.insert(0, w);
    }
    for w in &warnings {
        progress.note(&format!("WARNING: {w}"));
    }
    let mut options = policy_options(opts);
    if sequential {
        options.insert("shuffle_seed".into(), Value::Null);
    }
    for (k, v) in &cat.options {
        options.insert(k.clone(), v.clone());
    }
    let info = DatasetInfo {
        imagefolder_labels: cat.imagefolder_labels,
        classes: cat.classes.iter().map(|c| Name(c.clone())).collect(),
        options,
        skipped,
        dict_trainer: opts.dict_trainer,
    };
    // The last chance to stop: after this the dataset is committed.
    cancel.stop()?;
    let manifest = writer.finish(info)?;
    let skipped = manifest.skipped.clone();
    let output_bytes = manifest.shards.iter().map(|s| s.bytes).sum::<u64>()
        + fs::metadata(out.join(MANIFEST_FILE)).map_or(0, |m| m.len());
    let seconds = started.elapsed().as_secs_f64();
    Ok(PackSummary {
        out: out.to_path_buf(),
        samples: manifest.samples,
        shards: manifest.shards.len() as u64,
        files: packed_files,
        input_bytes: packed_bytes,
        output_bytes,
        ratio: if packed_bytes == 0 {
            0.0
        } else {
            output_bytes as f64 / packed_bytes as f64
        },
        seconds,
        files_per_s: packed_files as f64 / seconds.max(1e-9),
        mb_per_s: packed_bytes as f64 / 1e6 / seconds.max(1e-9),
        classes: manifest.classes.len() as u64,
        fields: manifest.fields.clone(),
        skipped,
        skipped_share,
        unlabeled,
        unlabeled_examples: unlabeled_examples.into_iter().collect(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents() {
        assert_eq!(percent(0.01), "1");
        assert_eq!(percent(0.07), "7");
        assert_eq!(percent(0.005), "0.5");
        assert_eq!(percent(1.0), "100");
        assert_eq!(percent(0.0), "0");
    }
}

//! A pack spread over many machines: [`plan`] once, [`pack_part`] for every part (anywhere, in
//! any order, at the same time, again after a crash), then [`merge`]. The result is
//! byte-identical to a one-machine [`pack`](super::pack) with the same options, whatever the
//! number of parts.
//!
//! # What the plan fixes
//!
//! Everything that decides the bytes is decided once, by the plan, before anything is
//! compressed: the source's scan (the [`Catalog`]), each field's compression (the policy
//! trials and the trained dictionaries), the sample order (the seeded shuffle) and the shard
//! boundaries. Shards are cut by the records' raw sizes ([`ShardCut::Raw`], the default of
//! `pack` too): that rule needs only the catalog, so the plan knows every shard's first sample
//! and a part can start writing shard 412 without compressing shards 0 to 411. Parts get
//! whole shards, consecutive, as evenly as the shard count allows.
//!
//! # Files
//!
//! Inside OUT, in [`PLAN_DIR`] (`.shardpack-plan/`):
//!
//! - `catalog.bin`: the samples in the planned order, one after another (little-endian: key
//!   length u32, label u32, member count u32, the key, then per member field u32, file u32,
//!   size u64, offset u64). Written as a stream; a part reads only its own byte range of it.
//! - `plan.json`: the options, the source's inputs, the fields with their dictionaries, what
//!   the manifest will say besides the shards, and the part table (each part's samples,
//!   shards and byte range of `catalog.bin`). Written last: a plan without it is unfinished.
//! - `part-NNNNNN.json`: part N's receipt (its shards with sizes and hashes, its per-field
//!   totals), written by the part after its shards, last.
//! - `tmp-NNNNNN-<run>.lock` and `tmp-NNNNNN-<run>/`: a run of part N going, and its scratch
//!   directory. The run holds an exclusive `flock` of the lock file from its start until its
//!   receipt is written; the file is created before the directory and removed after it.
//!
//! A part writes its shards straight into OUT under their final names: each under a
//! temporary name unique to the run (`shard-000412.spk.<run>.tmp`), synced, renamed. Two runs
//! of the same part write the same bytes, so a rerun after a crash, or a duplicate run at the
//! same time, is safe; a run that finds its receipt and its shards with the receipt's sizes
//! does nothing. Until [`merge`] has written `manifest.json`, opening OUT as a dataset fails
//! with an error that says so. [`merge`] checks every receipt and shard, names the parts that
//! are missing or damaged, writes the manifest (the same bytes a one-machine pack writes) and
//! then removes the plan's files, so OUT ends up holding exactly what `pack` would have made.
//! While a run's lock is held (a second run of a part already done: a straggler, a requeued
//! duplicate), merge still writes the manifest but removes nothing: that run still reads the
//! plan, writes in its scratch directory and its temporary shards, and rewrites its receipt
//! (the same bytes). [`MergeSummary::running`] names it; a later merge removes the plan's
//! files. Merge removes only files it knows (the plan, the catalog, receipts, what dead runs
//! left, temporary files), never a shard under its final name. The lock is seen from other
//! machines where the shared file system supports `flock` (NFS on Linux, CephFS, Lustre
//! mounted with `-o flock`).
//!
//! # Limits
//!
//! A part cannot leave out a member it fails to read (`skip_errors` covers only what the
//! plan's scan left out): the plan fixed the shard cuts by that member's size, so the part
//! fails, naming the file. A source read as one stream (`.tar.gz`) cannot be split: gunzip it.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::hash::Xxh3;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{policy_options, SymlinkPolicy, UnlabeledPolicy};
use super::{pools, prepare, Cancel, KeyMode, LabelMode, PackOptions, Progress, ShardCut};
use crate::codec::{DictTrainer, Policy};
use crate::error::{Error, Result};
use crate::format::{Codec, Footer, NO_LABEL};
use crate::manifest::{shard_file_name, Hash64, Name, ShardMeta, Skipped, MANIFEST_FILE};
use crate::source::{tree::TreeSource, Access, Catalog, Input, Member, Source};
use crate::sys;
use crate::writer::{
    build_manifest, commit_manifest, field_meta, DatasetInfo, FieldSpec, PartOutput, RawCutter,
    WriterOptions, PLAN_DIR,
};

/// The plan's description file inside [`PLAN_DIR`].
pub const PLAN_FILE: &str = "plan.json";
/// The planned catalog inside [`PLAN_DIR`].
const CATALOG_FILE: &str = "catalog.bin";
const PLAN_FORMAT: &str = "shardpack-plan";
const PLAN_VERSION: u32 = 1;
/// The most parts a plan may have.
pub const MAX_PARTS: u64 = 1_000_000;

/// The receipt file name of part `i`.
fn receipt_name(i: u64) -> String {
    format!("part-{i:06}.json")
}

/// One part of the plan: which samples and shards it writes and where its samples are in
/// `catalog.bin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPart {
    /// Its first sample (number in the dataset).
    pub first_sample: u64,
    /// Its sample count.
    pub samples: u64,
    /// Its first shard (number in the dataset).
    pub first_shard: u64,
    /// Its shard count (0 when there are more parts than shards).
    pub shards: u64,
    /// Byte offset of its first sample in `catalog.bin`.
    pub offset: u64,
    /// Byte length of its samples in `catalog.bin`.
    pub len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlanField {
    name: Name,
    codec: u32,
    level: i32,
    /// The trained dictionary, hex.
    dict: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlanOpts {
    inputs: Vec<Name>,
    format: String,
    cls_labels: bool,
    key_column: Option<String>,
    labels: String,
    key: String,
    symlinks: String,
    unlabeled: String,
    skip_errors: bool,
    max_skipped_share: f64,
    shard_size: u64,
    max_samples_per_shard: Option<u64>,
    align: u64,
    compress: String,
    field_compress: Vec<(Name, String)>,
    shuffle_seed: Option<u64>,
    /// The dictionary trainer's name; absent in plans made before `fastcover`, which trained
    /// with `zdict`.
    #[serde(default = "zdict_name")]
    dict_trainer: String,
    /// zstd-ref records (`pack --refs`); absent in plans made before them: off.
    #[serde(default)]
    refs: bool,
}

fn zdict_name() -> String {
    DictTrainer::Zdict.name().into()
}

impl PlanOpts {
    /// The trainer the plan's dictionaries came from.
    fn trainer(&self) -> Result<DictTrainer> {
        self.dict_trainer.parse().map_err(|_| {
            Error::Options(format!(
                "the plan's dictionary trainer {:?} is unknown to this shardpack",
                self.dict_trainer
            ))
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlanDoc {
    format: String,
    version: u32,
    /// xxh3 of the catalog file and the fields: receipts name it, so a receipt of another plan
    /// is never taken for this one's.
    id: String,
    options: PlanOpts,
    fields: Vec<PlanField>,
    imagefolder_labels: bool,
    classes: Vec<Name>,
    manifest_options: Map<String, Value>,
    skipped: Vec<Skipped>,
    samples: u64,
    members: u64,
    input_bytes: u64,
    shards: u64,
    parts: Vec<PlanPart>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    plan: String,
    part: u64,
    samples: u64,
    records: u64,
    /// Per field: records, raw bytes, stored bytes.
    fields: Vec<(u64, u64, u64)>,
    shards: Vec<ShardMeta>,
    /// zstd-ref records (absent in receipts of shardpack before they existed: none).
    #[serde(default)]
    ref_records: u64,
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    /// The output directory holding the plan.
    pub out: PathBuf,
    /// Samples planned.
    pub samples: u64,
    /// Input files planned.
    pub files: u64,
    /// Input bytes planned.
    pub input_bytes: u64,
    /// Shards the dataset will have.
    pub shards: u64,
    /// The parts, in order.
    pub parts: Vec<PlanPart>,
    /// Bytes of the plan's catalog file.
    pub catalog_bytes: u64,
    /// Warnings as a pack gives them (a high skipped share).
    pub warnings: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The outcome of [`pack_part`].
#[derive(Debug, Clone, Serialize)]
pub struct PartSummary {
    /// The part's number.
    pub part: u64,
    /// The number of parts.
    pub parts: u64,
    /// Samples written.
    pub samples: u64,
    /// Shards written.
    pub shards: u64,
    /// Input bytes read.
    pub input_bytes: u64,
    /// Bytes of the shards written.
    pub output_bytes: u64,
    /// `true` when a complete earlier run of this part was found and nothing was written.
    pub already_done: bool,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// How [`merge`] checks the parts.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeOptions {
    /// Hash every byte of every shard against its receipt (reads the whole dataset); without
    /// it each shard's size, footer and index checksum are checked (one small read per shard).
    pub verify: bool,
}

/// The outcome of [`merge`].
#[derive(Debug, Clone, Serialize)]
pub struct MergeSummary {
    /// The dataset directory.
    pub out: PathBuf,
    /// Parts merged.
    pub parts: u64,
    /// Samples in the dataset.
    pub samples: u64,
    /// Shards in the dataset.
    pub shards: u64,
    /// Bytes of all shards plus the manifest.
    pub output_bytes: u64,
    /// Whether every byte was hashed.
    pub verified: bool,
    /// Runs of parts still going when the merge ended (another run of a part that one run had
    /// finished already, such as a straggler or a duplicate): the dataset is complete, but
    /// none of the plan's files is removed while one runs; a later merge, once they have
    /// ended, removes them.
    pub running: Vec<RunningPart>,
    /// What the merge left in the plan's directory and why (files it does not know or could
    /// not remove); empty when the plan's files are gone, or stay for `running`.
    pub left: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// What a part's run hands the pack pipeline: the plan's field specs, where its shards start
/// and where to put temporary files; the pipeline puts what the writer wrote in `output`.
pub(crate) struct PartRun {
    pub(crate) specs: Vec<FieldSpec>,
    pub(crate) first_shard: u64,
    pub(crate) first_sample: u64,
    pub(crate) tag: String,
    pub(crate) scratch: PathBuf,
    pub(crate) output: Option<PartOutput>,
}

fn name_path(n: &Name) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(&n.0))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(&n.0).into_owned())
    }
}

fn path_name(p: &Path) -> Name {
    Name(p.as_os_str().as_encoded_bytes().to_vec())
}

/// Plans a pack of `src` into `out` over `parts` parts: see the module docs. `out` must be new
/// or an empty directory; it then holds the plan (and is no dataset until [`merge`]).
pub fn plan(
    src: &Path,
    out: &Path,
    parts: u64,
    opts: &PackOptions,
    progress: &dyn Progress,
) -> Result<PlanSummary> {
    plan_inputs(
        std::slice::from_ref(&src.to_path_buf()),
        out,
        parts,
        opts,
        progress,
    )
}

/// [`plan`] for a source given as several inputs (WebDataset shards), as
/// [`pack_inputs`](super::pack_inputs) takes them.
pub fn plan_inputs(
    inputs: &[PathBuf],
    out: &Path,
    parts: u64,
    opts: &PackOptions,
    progress: &dyn Progress,
) -> Result<PlanSummary> {
    let started = Instant::now();
    opts.writer.validate()?;
    if !(1..=MAX_PARTS).contains(&parts) {
        return Err(Error::Options(format!(
            "the number of parts must be between 1 and {MAX_PARTS}, not {parts}"
        )));
    }
    if opts.shard_cut != ShardCut::Raw {
        return Err(Error::Options(
            "a planned pack cuts shards by raw sizes (shard_cut raw): where stored sizes would \
             cut is only known after compressing every earlier sample"
                .into(),
        ));
    }
    // The parts run on other machines, in other directories: keep absolute inputs.
    let inputs: Vec<PathBuf> = inputs
        .iter()
        .map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let input = Input::resolve(&inputs, opts.source.format)?;
    prepare_out(input.root(), out)?;
    let dir = out.join(PLAN_DIR);
    let made = (|| {
        fs::create_dir(&dir).map_err(|e| Error::io(&dir, "create", e))?;
        write_plan(&input, &inputs, &dir, parts, opts, progress, started)
    })();
    match made {
        Ok(mut s) => {
            s.out = out.to_path_buf();
            Ok(s)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// OUT must be new or an empty directory, and not inside the source.
fn prepare_out(root: &Path, out: &Path) -> Result<()> {
    match fs::read_dir(out) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(Error::input(
                    out,
                    "is not empty; a plan needs a new or empty output directory (remove an \
                     earlier plan or dataset there, or choose another)",
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(out).map_err(|e| Error::io(out, "create", e))?;
        }
        Err(e) => return Err(Error::io(out, "read", e)),
    }
    let (o, r) = (fs::canonicalize(out), fs::canonicalize(root));
    if let (Ok(o), Ok(r)) = (o, r) {
        if o.starts_with(&r) && r.is_dir() {
            return Err(Error::input(
                out,
                format!(
                    "is inside the source {}; write the plan outside it",
                    r.display()
                ),
            ));
        }
    }
    Ok(())
}

fn policy_name(p: &Policy) -> String {
    p.to_string()
}

fn write_plan(
    input: &Input,
    inputs: &[PathBuf],
    dir: &Path,
    parts: u64,
    opts: &PackOptions,
    progress: &dyn Progress,
    started: Instant,
) -> Result<PlanSummary> {
    let cancel = Cancel::new(progress);
    let (_cpu, io) = pools(opts)?;
    let (source, cat, mut warnings) = crate::source::scan(input, opts, progress, &cancel)?;
    if source.access() == Access::Sequential {
        return Err(Error::input(
            source.root(),
            format!(
                "cannot be split into parts: {} (a planned pack needs a source read in any \
                 order: a tree, plain .tar WebDataset shards or MDS; pack it on one machine)",
                source.sequential_note()
            ),
        ));
    }
    let prepared = prepare(&*source, &cat, opts, progress, &cancel, &io)?;
    debug_assert!(!prepared.sequential);

    // The shard cuts, and the catalog in the planned order, streamed to disk.
    let mut cutter = RawCutter::new(&prepared.specs, &opts.writer);
    let cat_path = dir.join(CATALOG_FILE);
    let file = File::create(&cat_path).map_err(|e| Error::io(&cat_path, "create", e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Xxh3::new();
    // (first sample, catalog offset) of every shard.
    let mut shard_starts: Vec<(u64, u64)> = Vec::new();
    let mut at = 0u64;
    let mut raws: Vec<u64> = Vec::new();
    let mut rec: Vec<u8> = Vec::new();
    for (pos, &s) in prepared.order.iter().enumerate() {
        cancel.stop()?;
        let s = s as usize;
        let key = cat.key(s);
        raws.clear();
        rec.clear();
        let range = cat.member_range(s);
        rec.extend_from_slice(&(key.len() as u32).to_le_bytes());
        rec.extend_from_slice(&cat.label(s).unwrap_or(NO_LABEL).to_le_bytes());
        rec.extend_from_slice(&(range.len() as u32).to_le_bytes());
        rec.extend_from_slice(key);
        for m in range {
            let mr = cat.member(s, m).member;
            raws.push(mr.size);
            rec.extend_from_slice(&mr.field.to_le_bytes());
            rec.extend_from_slice(&mr.file.to_le_bytes());
            rec.extend_from_slice(&mr.size.to_le_bytes());
            rec.extend_from_slice(&mr.offset.to_le_bytes());
        }
        if cutter.push(key.len(), &raws) {
            shard_starts.push((pos as u64, at));
        }
        w.write_all(&rec)
            .map_err(|e| Error::io(&cat_path, "write", e))?;
        hasher.update(&rec);
        at += rec.len() as u64;
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io(&cat_path, "write", e.into_error()))?;
    file.sync_all()
        .map_err(|e| Error::io(&cat_path, "sync", e))?;
    let catalog_bytes = at;
    let samples = cat.len() as u64;

    // Parts: consecutive shards, as even as the count allows.
    let shards = shard_starts.len() as u64;
    let table: Vec<PlanPart> = (0..parts)
        .map(|i| {
            let (a, b) = (i * shards / parts, (i + 1) * shards / parts);
            let start = |k: u64| {
                shard_starts
                    .get(k as usize)
                    .copied()
                    .unwrap_or((samples, catalog_bytes))
            };
            let ((s0, o0), (s1, o1)) = (start(a), start(b));
            PlanPart {
                first_sample: s0,
                samples: s1 - s0,
                first_shard: a,
                shards: b - a,
                offset: o0,
                len: o1 - o0,
            }
        })
        .collect();

    // What the manifest says besides shards and totals, as `pack` computes it.
    let mut skipped = cat.skipped.clone();
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) =
        super::check_skipped_share(source.root(), &skipped, cat.member_count(), opts, false)?
    {
        warnings.insert(0, w);
    }
    for w in &warnings {
        progress.note(&format!("WARNING: {w}"));
    }
    let mut manifest_options = policy_options(opts);
    for (k, v) in &cat.options {
        manifest_options.insert(k.clone(), v.clone());
    }
    for s in &prepared.specs {
        hasher.update(&s.name);
        hasher.update(&s.codec.as_u32().to_le_bytes());
        hasher.update(&s.level.to_le_bytes());
        hasher.update(s.dict.as_deref().unwrap_or_default());
    }
    let doc = PlanDoc {
        format: PLAN_FORMAT.into(),
        version: PLAN_VERSION,
        id: format!("{:016x}", hasher.digest()),
        options: PlanOpts {
            inputs: inputs.iter().map(|p| path_name(p)).collect(),
            format: match opts.source.format {
                crate::source::SourceFormat::Auto => "auto",
                crate::source::SourceFormat::Tree => "tree",
                crate::source::SourceFormat::WebDataset => "wds",
                crate::source::SourceFormat::Mds => "mds",
                crate::source::SourceFormat::Parquet => "parquet",
            }
            .into(),
            cls_labels: opts.source.cls_labels,
            key_column: opts.source.key_column.clone(),
            labels: match opts.labels {
                LabelMode::ImageFolder => "imagefolder",
                LabelMode::None => "none",
            }
            .into(),
            key: opts.key.name().into(),
            symlinks: match opts.symlink_policy() {
                SymlinkPolicy::Follow => "follow",
                SymlinkPolicy::Skip => "skip",
                SymlinkPolicy::Error => "error",
            }
            .into(),
            unlabeled: match opts.unlabeled {
                UnlabeledPolicy::Allow => "allow",
                UnlabeledPolicy::Error => "error",
            }
            .into(),
            skip_errors: opts.skip_errors,
            max_skipped_share: opts.max_skipped_share,
            shard_size: opts.writer.shard_size,
            max_samples_per_shard: opts.writer.max_samples_per_shard,
            align: opts.writer.record_align,
            compress: policy_name(&opts.compress),
            field_compress: opts
                .field_compress
                .iter()
                .map(|(k, v)| (Name(k.clone()), policy_name(v)))
                .collect(),
            shuffle_seed: opts.shuffle_seed,
            dict_trainer: opts.dict_trainer.name().into(),
            refs: opts.refs,
        },
        fields: prepared
            .specs
            .iter()
            .map(|s| PlanField {
                name: Name(s.name.clone()),
                codec: s.codec.as_u32(),
                level: s.level,
                dict: s.dict.as_deref().map(crate::manifest::to_hex),
            })
            .collect(),
        imagefolder_labels: cat.imagefolder_labels,
        classes: cat.classes.iter().map(|c| Name(c.clone())).collect(),
        manifest_options,
        skipped,
        samples,
        members: cat.member_count() as u64,
        input_bytes: cat.total_bytes(),
        shards,
        parts: table.clone(),
    };
    cancel.stop()?;
    let bytes = serde_json::to_vec_pretty(&doc).expect("a plan serializes");
    write_atomic(&dir.join(PLAN_FILE), &bytes)?;
    Ok(PlanSummary {
        out: PathBuf::new(),
        samples,
        files: doc.members,
        input_bytes: doc.input_bytes,
        shards,
        parts: table,
        catalog_bytes,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes `bytes` to `path` through a temporary name unique to this process, synced, renamed,
/// with the directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.{}.tmp", std::process::id(), run_nonce()));
    let res = (|| {
        crate::writer::write_synced(&tmp, bytes)?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, "rename into", e))?;
        match path.parent() {
            Some(d) => crate::writer::sync_dir(d),
            None => Ok(()),
        }
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// A number that differs between runs (temporary names only; never in the output bytes).
fn run_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}

fn read_plan(out: &Path) -> Result<PlanDoc> {
    let path = out.join(PLAN_DIR).join(PLAN_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let what = if out.join(MANIFEST_FILE).is_file() {
                "holds a dataset, and no plan (a merged plan's files are removed)"
            } else {
                "holds no plan; make one with `shardpack plan SRC OUT --parts N`"
            };
            return Err(Error::input(out, what));
        }
        Err(e) => return Err(Error::io(&path, "read", e)),
    };
    let doc: PlanDoc = serde_json::from_slice(&bytes)
        .map_err(|e| Error::input(&path, format!("is not a readable plan: {e}")))?;
    if doc.format != PLAN_FORMAT || doc.version != PLAN_VERSION {
        return Err(Error::input(
            &path,
            format!(
                "is plan version {} of {:?}; this shardpack reads version {PLAN_VERSION} of \
                 {PLAN_FORMAT:?}: plan again with this version",
                doc.version, doc.format
            ),
        ));
    }
    Ok(doc)
}

fn specs_of(doc: &PlanDoc, path: &Path) -> Result<Vec<FieldSpec>> {
    doc.fields
        .iter()
        .map(|f| {
            let bad =
                |what: &str| Error::input(path, format!("field {}: {what}", f.name.display()));
            Ok(FieldSpec {
                name: f.name.0.clone(),
                codec: Codec::from_u32(f.codec).ok_or_else(|| bad("unknown codec"))?,
                level: f.level,
                dict: match &f.dict {
                    None => None,
                    Some(h) => Some(
                        crate::manifest::from_hex(h).ok_or_else(|| bad("damaged dictionary"))?,
                    ),
                },
            })
        })
        .collect()
}

fn parse_policy(s: &str) -> Result<Policy> {
    s.parse()
        .map_err(|e| Error::Options(format!("the plan's policy {s:?}: {e}")))
}

/// The pack options the plan was made with; threads and window size from `local`.
fn options_of(doc: &PlanDoc, local: &PackOptions) -> Result<PackOptions> {
    let o = &doc.options;
    let bad = |what: &str, v: &str| Error::Options(format!("the plan's {what} {v:?} is unknown"));
    let mut field_compress = std::collections::BTreeMap::new();
    for (k, v) in &o.field_compress {
        field_compress.insert(k.0.clone(), parse_policy(v)?);
    }
    Ok(PackOptions {
        writer: WriterOptions {
            shard_size: o.shard_size,
            max_samples_per_shard: o.max_samples_per_shard,
            record_align: o.align,
        },
        compress: parse_policy(&o.compress)?,
        field_compress,
        shuffle_seed: o.shuffle_seed,
        labels: match o.labels.as_str() {
            "imagefolder" => LabelMode::ImageFolder,
            "none" => LabelMode::None,
            v => return Err(bad("labels", v)),
        },
        key: o.key.parse::<KeyMode>().map_err(|_| bad("key", &o.key))?,
        follow_symlinks: false,
        symlinks: o
            .symlinks
            .parse()
            .map_err(|_| bad("symlinks", &o.symlinks))?,
        max_skipped_share: o.max_skipped_share,
        unlabeled: o
            .unlabeled
            .parse()
            .map_err(|_| bad("unlabeled", &o.unlabeled))?,
        skip_errors: o.skip_errors,
        force: false,
        source: crate::source::SourceOptions {
            format: o.format.parse().map_err(|_| bad("format", &o.format))?,
            cls_labels: o.cls_labels,
            key_column: o.key_column.clone(),
            // A plan refuses sequential sources, Parquet among them (see `plan_inputs`).
            label_column: None,
            field_columns: Vec::new(),
        },
        shard_cut: ShardCut::Raw,
        dict_trainer: o.trainer()?,
        refs: o.refs,
        threads: local.threads,
        io_threads: local.io_threads,
        window_bytes: local.window_bytes,
    })
}

/// Part `i`'s samples, read from its byte range of the plan's catalog.
fn read_slice(out: &Path, doc: &PlanDoc, part: &PlanPart) -> Result<Catalog> {
    let path = out.join(PLAN_DIR).join(CATALOG_FILE);
    let mut f = File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
    f.seek(SeekFrom::Start(part.offset))
        .map_err(|e| Error::io(&path, "seek", e))?;
    let mut r = BufReader::with_capacity(1 << 20, f.take(part.len));
    let damaged = || {
        Error::input(
            &path,
            "is damaged (a sample runs past its part's range); plan again",
        )
    };
    let mut cat = Catalog::planned(
        doc.fields.iter().map(|f| f.name.0.clone()).collect(),
        doc.classes.iter().map(|c| c.0.clone()).collect(),
        doc.imagefolder_labels,
    );
    let mut head = [0u8; 12];
    let mut key = Vec::new();
    let mut members = Vec::new();
    let mut m = [0u8; 24];
    for _ in 0..part.samples {
        r.read_exact(&mut head).map_err(|_| damaged())?;
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let (klen, label, n) = (u32_at(&head, 0), u32_at(&head, 4), u32_at(&head, 8));
        key.resize(klen as usize, 0);
        r.read_exact(&mut key).map_err(|_| damaged())?;
        members.clear();
        for _ in 0..n {
            r.read_exact(&mut m).map_err(|_| damaged())?;
            let field = u32_at(&m, 0);
            if field as usize >= doc.fields.len() {
                return Err(damaged());
            }
            members.push(Member {
                field,
                file: u32_at(&m, 4),
                size: u64::from_le_bytes(m[8..16].try_into().expect("8")),
                offset: u64::from_le_bytes(m[16..24].try_into().expect("8")),
            });
        }
        cat.push_planned(&key, label, &members);
    }
    Ok(cat)
}

/// Runs part `part` of the plan in `out`: writes its shards under their final names and then
/// its receipt. Safe to run again (after a crash, or while another run of the same part is
/// going: both write the same bytes); a run that finds the part complete does nothing.
/// Threads and the read-ahead window come from `local`; everything else from the plan.
pub fn pack_part(
    out: &Path,
    part: u64,
    local: &PackOptions,
    progress: &dyn Progress,
) -> Result<PartSummary> {
    let started = Instant::now();
    let doc = read_plan(out)?;
    let parts = doc.parts.len() as u64;
    let Some(p) = doc.parts.get(part as usize).cloned() else {
        return Err(Error::Options(format!(
            "part {part} does not exist: the plan in {} has parts 0 to {}",
            out.display(),
            parts - 1
        )));
    };
    let dir = out.join(PLAN_DIR);
    // This run's lock, held until its receipt is written: while it is, merge removes none of
    // the plan's files (see `RunLock`).
    let tag = format!("{}-{:x}", std::process::id(), run_nonce());
    let run_name = format!("tmp-{part:06}-{tag}");
    let _running = RunLock::take(out, &dir, &run_name)?;
    let receipt_path = dir.join(receipt_name(part));
    if let Some(r) = read_receipt(&receipt_path, &doc, part, &p).ok().flatten() {
        let complete = r
            .shards
            .iter()
            .all(|s| fs::metadata(out.join(&s.file)).is_ok_and(|m| m.len() == s.bytes));
        if complete {
            return Ok(PartSummary {
                part,
                parts,
                samples: r.samples,
                shards: r.shards.len() as u64,
                input_bytes: 0,
                output_bytes: r.shards.iter().map(|s| s.bytes).sum(),
                already_done: true,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
    let opts = options_of(&doc, local)?;
    let specs = specs_of(&doc, &dir.join(PLAN_FILE))?;
    let inputs: Vec<PathBuf> = doc.options.inputs.iter().map(name_path).collect();
    let input = Input::resolve(&inputs, opts.source.format)?;
    let cancel = Cancel::new(progress);
    let (cpu, io) = pools(&opts)?;
    let cat = read_slice(out, &doc, &p)?;
    // A tree is read straight from the plan's paths; another source is scanned again for its
    // reader (tar headers, an MDS index: small next to the members).
    let source: Box<dyn Source> = match &input {
        Input::Tree(root) => Box::new(TreeSource::at(root.clone())),
        _ => crate::source::scan(&input, &opts, progress, &cancel)?.0,
    };
    let scratch = dir.join(&run_name);
    fs::create_dir(&scratch).map_err(|e| Error::io(&scratch, "create", e))?;
    let mut run = PartRun {
        specs,
        first_shard: p.first_shard,
        first_sample: p.first_sample,
        tag,
        scratch: scratch.clone(),
        output: None,
    };
    let packed = super::pack_catalog(
        &*source,
        cat,
        Vec::new(),
        out,
        &opts,
        progress,
        &cancel,
        started,
        (&cpu, &io),
        Some(&mut run),
    );
    let _ = fs::remove_dir_all(&scratch);
    let summary = packed?;
    let output = run.output.expect("a part's run sets its output");
    // The writer cut by the same rule as the plan; a difference means the source changed.
    let first_samples_ok = output
        .shards
        .first()
        .map_or(p.shards == 0, |s| s.first_sample == p.first_sample);
    if output.shards.len() as u64 != p.shards || output.samples != p.samples || !first_samples_ok {
        return Err(Error::input(
            source.root(),
            format!(
                "part {part} wrote {} shards of {} samples where the plan has {} of {}; the \
                 source changed since it was planned: plan again",
                output.shards.len(),
                output.samples,
                p.shards,
                p.samples
            ),
        ));
    }
    if let Ok(d) = File::open(out) {
        let _ = d.sync_all();
    }
    let receipt = Receipt {
        plan: doc.id.clone(),
        part,
        samples: output.samples,
        records: output.records,
        fields: output.fields.clone(),
        shards: output.shards.clone(),
        ref_records: output.ref_records,
    };
    let bytes = serde_json::to_vec_pretty(&receipt).expect("a receipt serializes");
    write_atomic(&receipt_path, &bytes)?;
    Ok(PartSummary {
        part,
        parts,
        samples: output.samples,
        shards: output.shards.len() as u64,
        input_bytes: summary.input_bytes,
        output_bytes: output.shards.iter().map(|s| s.bytes).sum(),
        already_done: false,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The lock a run of a part holds for as long as it runs: an exclusive `flock` of
/// `tmp-<part>-<run>.lock` in [`PLAN_DIR`], beside its scratch directory `tmp-<part>-<run>`
/// (the file is created before the directory and removed after it). [`merge`] removes none of
/// the plan's files while any such lock is held. Dropping it removes the file.
struct RunLock {
    path: PathBuf,
    _file: File,
}

impl RunLock {
    /// Creates and locks the lock file of the run `name` (`tmp-<part>-<run>`) in `dir`.
    fn take(out: &Path, dir: &Path, name: &str) -> Result<RunLock> {
        let path = dir.join(format!("{name}.lock"));
        let merged = || {
            Error::input(
                out,
                "was merged while this part was starting (the plan's files are gone); the \
                 dataset is complete, nothing is left to do",
            )
        };
        let file = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(merged()),
            Err(e) => return Err(Error::io(&path, "create", e)),
        };
        let lock = RunLock {
            path: path.clone(),
            _file: file,
        };
        // A merge looking at the runs takes a lock it finds free for a moment (and, when it
        // cleans up, removes the file under it): wait for it to let go, then make sure the
        // file is still the one at `path`.
        let waited = Instant::now();
        while !sys::try_lock(&lock._file).map_err(|e| Error::io(&path, "lock", e))? {
            if waited.elapsed() > std::time::Duration::from_secs(30) {
                return Err(Error::input(
                    &path,
                    "stays locked by another process (this run's own lock file); run the part \
                     again",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !same_file(&lock._file, &path) {
            return Err(merged());
        }
        Ok(lock)
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this).
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether `path` names the open file `f` (not a file created there since, or none).
fn same_file(f: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (f.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        path.exists()
    }
}

/// A run of a part that [`merge`] found still going.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningPart {
    /// The part.
    pub part: u64,
    /// Its scratch directory (`OUT/.shardpack-plan/tmp-<part>-<run>`).
    pub scratch: PathBuf,
}

/// The runs of parts that left something in the plan's directory `dir`: those going (their
/// lock is held) and those gone (with their lock, held now by this process, when they left
/// one).
#[allow(clippy::type_complexity)]
fn runs(dir: &Path) -> Result<(Vec<RunningPart>, Vec<(String, Option<File>)>)> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io(dir, "read", e))?;
    let mut names = std::collections::BTreeSet::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, "read", e))?;
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if n.starts_with("tmp-") {
            names.insert(n.strip_suffix(".lock").unwrap_or(n).to_string());
        }
    }
    let (mut going, mut gone) = (Vec::new(), Vec::new());
    for n in names {
        let lock = dir.join(format!("{n}.lock"));
        match fs::OpenOptions::new().read(true).write(true).open(&lock) {
            // The lock comes before the scratch directory and goes after it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push((n, None)),
            Err(e) => return Err(Error::io(&lock, "open", e)),
            Ok(f) => {
                if sys::try_lock(&f).map_err(|e| Error::io(&lock, "lock", e))? {
                    gone.push((n, Some(f)));
                } else {
                    let part = n[4..].split('-').next().and_then(|p| p.parse().ok());
                    going.push(RunningPart {
                        part: part.unwrap_or(u64::MAX),
                        scratch: dir.join(&n),
                    });
                }
            }
        }
    }
    Ok((going, gone))
}

/// Removes the plan's files from `out` after the merge, unless a run of a part is still going:
/// then nothing is removed (that run still reads the plan, writes in its scratch directory
/// and its temporary shards, and rewrites its receipt) and the runs are returned. Removes only
/// what it knows (the plan, the catalog, the receipts, what runs that are gone left, and
/// temporary files); anything else stays, and is named in the second list.
fn clean_plan(out: &Path, dir: &Path) -> Result<(Vec<RunningPart>, Vec<String>)> {
    let (going, gone) = runs(dir)?;
    if !going.is_empty() {
        return Ok((going, Vec::new()));
    }
    for (n, lock) in gone {
        let scratch = dir.join(&n);
        match fs::remove_dir_all(&scratch) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&scratch, "remove", e)),
        }
        if lock.is_some() {
            let p = dir.join(format!("{n}.lock"));
            fs::remove_file(&p).map_err(|e| Error::io(&p, "remove", e))?;
        }
    }
    let mut ours = Vec::new();
    let mut left = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| Error::io(dir, "read", e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, "read", e))?;
        let n = e.file_name();
        let s = n.to_string_lossy();
        let known = s == CATALOG_FILE
            || s == PLAN_FILE
            || (s.starts_with("part-") && s.ends_with(".json"))
            || (!s.starts_with("tmp-") && s.ends_with(".tmp") && e.path().is_file());
        if known {
            ours.push(e.path());
        } else if !s.starts_with("tmp-") {
            // (A `tmp-` entry here is a run that started since: it is left to itself.)
            left.push(format!(
                "{}: not one of the plan's files (remove it yourself)",
                e.path().display()
            ));
        }
    }
    // The plan last: until it goes, `merge` can run again.
    ours.sort_by_key(|p| p.file_name().is_some_and(|n| n == PLAN_FILE));
    for p in &ours {
        fs::remove_file(p).map_err(|e| Error::io(p, "remove", e))?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => {}
        // Files merge does not know, or a run started since: they stay.
        Err(_) if dir.exists() => {
            if left.is_empty() {
                left.push(format!(
                    "{}: a run of a part started during the merge; merge again once it has \
                     ended",
                    dir.display()
                ));
            }
            return Ok((Vec::new(), left));
        }
        Err(e) => return Err(Error::io(dir, "remove", e)),
    }
    // Temporary shards in OUT of runs that are gone (no run is going: the plan is gone).
    if let Ok(rd) = fs::read_dir(out) {
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with("shard-") && n.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok((Vec::new(), left))
}

/// Reads part `i`'s receipt: `Ok(None)` when there is none, an error string when it is
/// damaged or does not match the plan.
fn read_receipt(
    path: &Path,
    doc: &PlanDoc,
    i: u64,
    p: &PlanPart,
) -> std::result::Result<Option<Receipt>, String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read its receipt: {e}")),
    };
    let r: Receipt =
        serde_json::from_slice(&bytes).map_err(|e| format!("its receipt is damaged: {e}"))?;
    if r.plan != doc.id || r.part != i {
        return Err("its receipt belongs to another plan".into());
    }
    let names_ok = r
        .shards
        .iter()
        .enumerate()
        .all(|(k, s)| s.file == shard_file_name(p.first_shard + k as u64));
    if r.shards.len() as u64 != p.shards
        || r.samples != p.samples
        || !names_ok
        || r.fields.len() != doc.fields.len()
    {
        return Err("its receipt does not match the plan's part".into());
    }
    Ok(Some(r))
}

/// Checks one shard against its receipt entry: size, footer, index checksum (and with
/// `verify`, the hash of every byte).
fn check_shard(out: &Path, s: &ShardMeta, verify: bool) -> std::result::Result<(), String> {
    let path = out.join(&s.file);
    let mut f = File::open(&path).map_err(|e| format!("{}: cannot open: {e}", s.file))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: cannot stat: {e}", s.file))?
        .len();
    if len != s.bytes {
        return Err(format!(
            "{} is {len} bytes, its receipt says {}",
            s.file, s.bytes
        ));
    }
    if verify {
        let mut h = Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("{}: cannot read: {e}", s.file))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        if Hash64(h.digest()) != s.xxh3 {
            return Err(format!(
                "{}: its bytes do not hash to its receipt's",
                s.file
            ));
        }
        return Ok(());
    }
    let mut tail = vec![0u8; Footer::SIZE];
    let at = len.saturating_sub(Footer::SIZE as u64);
    crate::source::read_exact_at(&f, &mut tail, at)
        .map_err(|e| format!("{}: cannot read its footer: {e}", s.file))?;
    let footer =
        Footer::decode_tail(&tail, len).map_err(|e| format!("{}: damaged footer: {e}", s.file))?;
    if Hash64(footer.index_checksum) != s.index_xxh3
        || footer.sample_count != s.samples
        || footer.record_count != s.records
    {
        return Err(format!("{}: its footer does not match its receipt", s.file));
    }
    Ok(())
}

/// Merges the parts of the plan in `out` into the dataset: checks every part's receipt and
/// shards, names every part that is missing or damaged (and writes nothing then), writes
/// `manifest.json` (the bytes a one-machine pack writes), and removes the plan's files, unless
/// a run of a part is still going ([`MergeSummary::running`]; merge again once it has ended).
pub fn merge(out: &Path, opts: &MergeOptions) -> Result<MergeSummary> {
    let started = Instant::now();
    let doc = read_plan(out)?;
    let dir = out.join(PLAN_DIR);
    let specs = specs_of(&doc, &dir.join(PLAN_FILE))?;
    let mut missing = Vec::new();
    let mut damaged = Vec::new();
    let mut receipts = Vec::with_capacity(doc.parts.len());
    for (i, p) in doc.parts.iter().enumerate() {
        let i = i as u64;
        match read_receipt(&dir.join(receipt_name(i)), &doc, i, p) {
            Ok(None) => missing.push(i),
            Err(why) => damaged.push(format!("part {i}: {why}")),
            Ok(Some(r)) => {
                match r
                    .shards
                    .iter()
                    .try_for_each(|s| check_shard(out, s, opts.verify))
                {
                    Ok(()) => receipts.push(r),
                    Err(why) => damaged.push(format!("part {i}: {why}")),
                }
            }
        }
    }
    if !missing.is_empty() || !damaged.is_empty() {
        let mut what = Vec::new();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(20).map(u64::to_string).collect();
            let more = if missing.len() > 20 {
                format!(" and {} more", missing.len() - 20)
            } else {
                String::new()
            };
            what.push(format!(
                "{} of {} parts are missing (not run, or not finished): {}{more}",
                missing.len(),
                doc.parts.len(),
                shown.join(", ")
            ));
        }
        if !damaged.is_empty() {
            let more = if damaged.len() > 20 {
                format!(" and {} more", damaged.len() - 20)
            } else {
                String::new()
            };
            what.push(format!(
                "{} parts are damaged: {}{more}",
                damaged.len(),
                damaged
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        return Err(Error::input(
            out,
            format!(
                "cannot merge: {}; run those parts (again) with `shardpack pack --plan {} \
                 --part I`, then merge again",
                what.join("; "),
                out.display()
            ),
        ));
    }
    let mut totals = vec![(0u64, 0u64, 0u64); specs.len()];
    let (mut samples, mut records, mut ref_records) = (0u64, 0u64, 0u64);
    let mut shards = Vec::with_capacity(doc.shards as usize);
    for r in receipts {
        ref_records += r.ref_records;
        for (t, f) in totals.iter_mut().zip(&r.fields) {
            t.0 += f.0;
            t.1 += f.1;
            t.2 += f.2;
        }
        samples += r.samples;
        records += r.records;
        shards.extend(r.shards);
    }
    let fields = specs
        .iter()
        .zip(&totals)
        .map(|(s, t)| field_meta(s, t.0, t.1, t.2))
        .collect();
    let output_shards: u64 = shards.iter().map(|s| s.bytes).sum();
    let nshards = shards.len() as u64;
    let info = DatasetInfo {
        imagefolder_labels: doc.imagefolder_labels,
        classes: doc.classes.clone(),
        options: doc.manifest_options.clone(),
        skipped: doc.skipped.clone(),
        dict_trainer: doc.options.trainer()?,
    };
    let manifest = build_manifest(samples, records, shards, fields, info, ref_records);
    commit_manifest(out, &manifest)?;
    // The dataset is committed; what is left of the plan goes, unless a run of a part is
    // still going (a stray file would only be ignored by readers, but OUT should hold what a
    // one-machine pack makes).
    let (running, left) = match clean_plan(out, &dir) {
        Ok(x) => x,
        Err(e) => (
            Vec::new(),
            vec![format!("the plan's files stay in {}: {e}", dir.display())],
        ),
    };
    let manifest_bytes = fs::metadata(out.join(MANIFEST_FILE)).map_or(0, |m| m.len());
    Ok(MergeSummary {
        out: out.to_path_buf(),
        parts: doc.parts.len() as u64,
        samples,
        shards: nshards,
        output_bytes: output_shards + manifest_bytes,
        verified: opts.verify,
        running,
        left,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The number of parts of the plan in `out` (for schedulers that give only the part number).
pub fn plan_parts(out: &Path) -> Result<u64> {
    Ok(read_plan(out)?.parts.len() as u64)
}

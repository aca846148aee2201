//! The writer: samples in, shard files and a manifest out.
//!
//! Records arrive already encoded (see [`crate::codec::FieldEncoder`]) so callers can compress
//! on many threads and commit in order on one. Shards are written under a temporary name,
//! synced, then renamed; the manifest is written last the same way, so a directory without
//! `manifest.json` is never mistaken for a dataset.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::hash::{xxh3_64, Xxh3};

use crate::codec::{new_cctx, DictTrainer, FieldEncoder, DEFAULT_LEVEL, STREAM_PIECE};
use crate::error::{Error, Result};
use crate::format::{
    align_up, is_safe_field_name, key_hash, record_checksum, Codec, FieldEntry, Footer, Header,
    IndexHeader, KeyHashEntry, RecordEntry, SampleEntry, Version, MAX_RECORD_ALIGN,
    MIN_RECORD_ALIGN, NO_LABEL, REF_HEADER_LEN, REGION_ALIGN, ZSTD_REF_FEATURE,
};
use crate::manifest::{
    shard_file_name, Features, FieldMeta, Hash64, Manifest, Name, ShardMeta, Skipped, WriterId,
    FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE,
};

/// Default shard size target: 1 GiB.
pub const DEFAULT_SHARD_SIZE: u64 = 1 << 30;

/// The marker file a pack keeps in the directory it is writing, locked for as long as it runs.
/// A dataset directory holding it with no running pack is the leftover of an interrupted pack:
/// readers ignore it, and the next pack into the same output removes it (and, when there is no
/// `manifest.json`, the shard files it left).
pub const PACK_MARKER_FILE: &str = ".shardpack-writing";

/// The directory a `shardpack plan` keeps inside OUT (the plan, its catalog, the parts'
/// receipts) until `shardpack merge` has written the manifest. A directory holding it and no
/// manifest is a pack spread over parts that is not merged yet: readers refuse it.
pub const PLAN_DIR: &str = ".shardpack-plan";

/// What decides where a pack cuts its shards (see [`WriterOptions::shard_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardCut {
    /// The records' *raw* (uncompressed) sizes: a shard is closed before a sample whose raw
    /// records would take it past the target, counted as if nothing were compressed. The cut
    /// then depends only on what is known before anything is compressed (the sizes, keys and
    /// fields), so a pack spread over many machines (`shardpack plan`) cuts exactly where one
    /// machine does. Shards of compressed fields come out smaller than the target by about the
    /// compression ratio. The default of `pack`.
    #[default]
    Raw,
    /// The records' stored (compressed) sizes: shards fill up to the target after
    /// compression. Where to cut is only known after compressing every earlier sample, so a
    /// planned pack cannot use it. The rule of `pack` before planned packs, and of a
    /// [`DatasetWriter`] unless told otherwise.
    Stored,
}

impl std::str::FromStr for ShardCut {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "raw" => Ok(ShardCut::Raw),
            "stored" => Ok(ShardCut::Stored),
            _ => Err(format!("{s:?} is not raw or stored")),
        }
    }
}

/// Everything a shard holds besides its records and per-sample index entries, at its largest:
/// two region paddings, the dictionaries, the index header, the field table, the names with
/// their padding, and the footer.
pub(crate) fn shard_fixed_bytes(fields: &[FieldSpec]) -> u64 {
    2 * REGION_ALIGN
        + fields
            .iter()
            .map(|f| f.dict.as_ref().map_or(0, |d| d.len() as u64 + 8))
            .sum::<u64>()
        + (IndexHeader::SIZE + fields.len() * FieldEntry::SIZE) as u64
        + fields.iter().map(|f| f.name.len() as u64).sum::<u64>()
        + 16
        + Footer::SIZE as u64
}

/// The [`ShardCut::Raw`] rule as a pure function of the samples in order: each sample's key
/// length and its records' raw lengths. The writer asks it before every sample; a plan runs
/// the same one over the catalog to know every shard's first sample before any compression.
#[derive(Debug, Clone)]
pub struct RawCutter {
    fixed: u64,
    align: u64,
    shard_size: u64,
    max_samples: Option<u64>,
    /// The open shard's data end counted with raw lengths, its index bytes and samples;
    /// `None` before the first sample.
    open: Option<(u64, u64, u64)>,
}

impl RawCutter {
    /// A cutter for shards holding `fields` under `opts`.
    pub fn new(fields: &[FieldSpec], opts: &WriterOptions) -> RawCutter {
        RawCutter {
            fixed: shard_fixed_bytes(fields),
            align: opts.record_align,
            shard_size: opts.shard_size,
            max_samples: opts.max_samples_per_shard,
            open: None,
        }
    }

    /// Takes the next sample; returns `true` when it starts a new shard (so also for the very
    /// first sample).
    pub fn push(&mut self, key_len: usize, raw_lens: &[u64]) -> bool {
        let align = self.align;
        let up = |n: u64| align_up(n, align).unwrap_or(u64::MAX);
        let index_need = (SampleEntry::SIZE + KeyHashEntry::SIZE + key_len) as u64
            + (raw_lens.len() * RecordEntry::SIZE) as u64;
        let new = match self.open {
            None => true,
            Some((pos, index, samples)) => {
                let need = raw_lens.iter().fold(0u64, |a, &r| a.saturating_add(up(r)));
                let projected = self
                    .fixed
                    .saturating_add(pos)
                    .saturating_add(need)
                    .saturating_add(index)
                    .saturating_add(index_need);
                self.max_samples.is_some_and(|m| samples >= m) || projected > self.shard_size
            }
        };
        let (mut pos, mut index, mut samples) = match (new, self.open) {
            (false, Some(o)) => o,
            _ => (REGION_ALIGN, 0, 0),
        };
        for &r in raw_lens {
            pos = up(pos).saturating_add(r);
        }
        index += index_need;
        samples += 1;
        self.open = Some((pos, index, samples));
        new
    }
}

/// The name of a staging directory beside the output `out_name`: `.<out_name>.shardpack-<kind>.<pid>`,
/// where `kind` is `new` (a dataset being built to replace OUT) or `old` (the replaced one
/// while it is being removed).
#[cfg(feature = "compile")]
pub(crate) fn stage_name(out_name: &std::ffi::OsStr, kind: &str, pid: u32) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(".");
    s.push(out_name);
    s.push(format!(".shardpack-{kind}.{pid}"));
    s
}

/// If `name` is a staging directory name of the output `out_name` (see [`stage_name`]), its
/// kind (`"new"` or `"old"`).
pub(crate) fn parse_stage_name(
    name: &std::ffi::OsStr,
    out_name: &std::ffi::OsStr,
) -> Option<&'static str> {
    let name = name.as_encoded_bytes();
    let rest = name
        .strip_prefix(b".")?
        .strip_prefix(out_name.as_encoded_bytes())?
        .strip_prefix(b".shardpack-")?;
    let (kind, pid) = if let Some(p) = rest.strip_prefix(b"new.") {
        ("new", p)
    } else {
        ("old", rest.strip_prefix(b"old.")?)
    };
    (!pid.is_empty() && pid.len() <= 10 && pid.iter().all(u8::is_ascii_digit)).then_some(kind)
}

/// When `out` does not exist but a staging directory `old` beside it holds a dataset: the
/// previous dataset of a `pack --force` interrupted between its two renames (only where the
/// atomic exchange is not available). Returns that directory.
pub(crate) fn interrupted_swap(out: &Path) -> Option<PathBuf> {
    if fs::symlink_metadata(out).is_ok() {
        return None;
    }
    let name = out.file_name()?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::read_dir(parent).ok()?.flatten().find_map(|e| {
        let n = e.file_name();
        let p = parent.join(&n);
        (parse_stage_name(&n, name) == Some("old") && p.join(MANIFEST_FILE).is_file()).then_some(p)
    })
}

/// A field of the dataset: its name and how its records are encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    /// Name bytes (the file suffix, e.g. `jpg`; may be empty).
    pub name: Vec<u8>,
    /// The codec chosen for the field.
    pub codec: Codec,
    /// zstd level (ignored for raw).
    pub level: i32,
    /// The trained dictionary, required for [`Codec::ZstdDict`].
    pub dict: Option<Vec<u8>>,
}

impl FieldSpec {
    /// A field stored raw.
    pub fn raw(name: impl Into<Vec<u8>>) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            codec: Codec::Raw,
            level: 0,
            dict: None,
        }
    }

    /// A field compressed with zstd at the default level.
    pub fn zstd(name: impl Into<Vec<u8>>) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            codec: Codec::Zstd,
            level: DEFAULT_LEVEL,
            dict: None,
        }
    }
}

/// Where shards are cut and how records are aligned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// Target shard file size in bytes; a shard is closed before a sample would take it past
    /// this (a sample larger than the target gets a shard of its own).
    pub shard_size: u64,
    /// Close a shard after this many samples.
    pub max_samples_per_shard: Option<u64>,
    /// Record alignment: a power of two in 8..=1 MiB.
    pub record_align: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            shard_size: DEFAULT_SHARD_SIZE,
            max_samples_per_shard: None,
            record_align: MIN_RECORD_ALIGN,
        }
    }
}

impl WriterOptions {
    /// Checks the option values.
    pub fn validate(&self) -> Result<()> {
        let a = self.record_align;
        if !a.is_power_of_two() || !(MIN_RECORD_ALIGN..=MAX_RECORD_ALIGN).contains(&a) {
            return Err(Error::Options(format!(
                "alignment {a} must be a power of two between {MIN_RECORD_ALIGN} and {MAX_RECORD_ALIGN}"
            )));
        }
        if self.shard_size == 0 {
            return Err(Error::Options("shard size must be above 0".into()));
        }
        if self.max_samples_per_shard == Some(0) {
            return Err(Error::Options(
                "max samples per shard must be above 0".into(),
            ));
        }
        Ok(())
    }
}

/// One encoded record ready to be written.
#[derive(Debug, Clone, Copy)]
pub struct EncodedRecord<'a> {
    /// Field index (position in the writer's field list).
    pub field: u32,
    /// How `stored` decodes.
    pub codec: Codec,
    /// The bytes to store.
    pub stored: &'a [u8],
    /// Length after decoding.
    pub raw_len: u64,
}

/// A record whose stored bytes are read from `reader` while they are written: a large file
/// copied raw, or its zstd frame from a temporary file (see
/// [`crate::codec::FieldEncoder::encode_stream`]).
pub struct StreamedRecord<'a> {
    /// Field index (position in the writer's field list).
    pub field: u32,
    /// How the stored bytes decode.
    pub codec: Codec,
    /// The number of bytes `reader` yields: exactly this many, or the append fails.
    pub stored_len: u64,
    /// Length after decoding.
    pub raw_len: u64,
    /// Where the stored bytes come from.
    pub reader: &'a mut dyn Read,
    /// The file `reader` reads, to name in errors (the sample's key otherwise).
    pub source: Option<&'a Path>,
}

impl std::fmt::Debug for StreamedRecord<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedRecord")
            .field("field", &self.field)
            .field("codec", &self.codec)
            .field("stored_len", &self.stored_len)
            .field("raw_len", &self.raw_len)
            .finish()
    }
}

/// A [`Codec::ZstdRef`] record: a frame compressed against an earlier record of the same
/// field in the same shard (its base; `format-spec/shard.md` 6.1), from
/// [`crate::codec::FieldEncoder::encode_ref`]. The writer puts the base's record index in
/// front of the frame.
#[derive(Debug, Clone, Copy)]
pub struct RefRecord<'a> {
    /// Field index (position in the writer's field list).
    pub field: u32,
    /// The zstd frame, compressed with the base's data as a raw-content prefix.
    pub frame: &'a [u8],
    /// Length after decoding.
    pub raw_len: u64,
    /// The sample holding the base, numbered as this writer appended them from 0 (see
    /// [`DatasetWriter::samples`]); it must be in the shard this sample goes to
    /// ([`DatasetWriter::shard_start_for`]) and have a record of `field` that is not
    /// zstd-ref and decodes to `base_raw_len` bytes.
    pub base_sample: u64,
    /// The base's data length, checked against the base's record.
    pub base_raw_len: u64,
}

/// One record of a sample for [`DatasetWriter::append_inputs`].
#[derive(Debug)]
pub enum RecordInput<'a> {
    /// Encoded bytes in memory.
    Bytes(EncodedRecord<'a>),
    /// Bytes read while written.
    Stream(StreamedRecord<'a>),
    /// A frame that refers to an earlier record of the field.
    Ref(RefRecord<'a>),
}

impl RecordInput<'_> {
    fn field(&self) -> u32 {
        match self {
            RecordInput::Bytes(b) => b.field,
            RecordInput::Stream(s) => s.field,
            RecordInput::Ref(r) => r.field,
        }
    }
    fn codec(&self) -> Codec {
        match self {
            RecordInput::Bytes(b) => b.codec,
            RecordInput::Stream(s) => s.codec,
            RecordInput::Ref(_) => Codec::ZstdRef,
        }
    }
    fn stored_len(&self) -> u64 {
        match self {
            RecordInput::Bytes(b) => b.stored.len() as u64,
            RecordInput::Stream(s) => s.stored_len,
            RecordInput::Ref(r) => (REF_HEADER_LEN + r.frame.len()) as u64,
        }
    }
    fn raw_len(&self) -> u64 {
        match self {
            RecordInput::Bytes(b) => b.raw_len,
            RecordInput::Stream(s) => s.raw_len,
            RecordInput::Ref(r) => r.raw_len,
        }
    }
}

/// What the manifest says beyond what the writer knows.
#[derive(Debug, Clone, Default)]
pub struct DatasetInfo {
    /// `true` for ImageFolder labels (`classes` names them).
    pub imagefolder_labels: bool,
    /// Class names; class `i` has label `i`.
    pub classes: Vec<Name>,
    /// Build options for provenance.
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Inputs left out.
    pub skipped: Vec<Skipped>,
    /// What trained the fields' dictionaries (the manifest's `writer.dict_trainer`).
    pub dict_trainer: DictTrainer,
}

struct FieldState {
    spec: FieldSpec,
    encoder: FieldEncoder,
    records: u64,
    raw_bytes: u64,
    stored_bytes: u64,
}

struct OpenShard {
    file: BufWriter<File>,
    tmp_path: PathBuf,
    hasher: Xxh3,
    pos: u64,
    samples: Vec<u8>,
    records: Vec<u8>,
    keys: Vec<u8>,
    key_hashes: Vec<KeyHashEntry>,
    sample_count: u64,
    record_count: u64,
    /// The writer's number of the shard's first sample (see [`DatasetWriter::samples`]).
    first_sample: u64,
}

/// Writes a dataset directory. See the module docs.
///
/// If the writer is dropped without [`DatasetWriter::finish`] (an error, a panic), the files it
/// wrote are removed.
pub struct DatasetWriter {
    dir: PathBuf,
    opts: WriterOptions,
    fields: Vec<FieldState>,
    names: Vec<u8>,
    shard: Option<OpenShard>,
    shards: Vec<ShardMeta>,
    written: Vec<PathBuf>,
    samples: u64,
    records: u64,
    /// Key hashes of the samples in finished shards, to refuse a key used twice; `None` when
    /// the caller guarantees unique keys (see [`DatasetWriter::assume_unique_keys`]).
    earlier_keys: Option<HashSet<u64>>,
    finished: bool,
    /// The largest label appended, checked against the classes at `finish`.
    max_label: Option<u32>,
    scratch: Vec<u8>,
    cctx: Option<zstd::zstd_safe::CCtx<'static>>,
    /// The raw-size cut rule when [`ShardCut::Raw`] is asked for (`None`: stored sizes).
    raw_cut: Option<RawCutter>,
    /// Shard number and sample number of this writer's first shard (0 and 0 unless it writes
    /// one part of a planned pack).
    base: (u64, u64),
    /// Part of a planned pack: temporary names carry this tag, finished shards stay when the
    /// writer is dropped unfinished, and `finish_part` writes no manifest.
    part_tag: Option<String>,
    /// zstd-ref records written (the manifest then requires [`ZSTD_REF_FEATURE`]).
    ref_records: u64,
}

/// What [`DatasetWriter::finish_part`] wrote: the shards and the per-field totals the manifest
/// sums over all parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartOutput {
    /// The shards, in order, as the manifest lists them.
    pub shards: Vec<ShardMeta>,
    /// Samples written.
    pub samples: u64,
    /// Records written.
    pub records: u64,
    /// Per field: records, raw bytes, stored bytes.
    pub fields: Vec<(u64, u64, u64)>,
    /// zstd-ref records written.
    pub ref_records: u64,
}

impl std::fmt::Debug for DatasetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetWriter")
            .field("dir", &self.dir)
            .field("samples", &self.samples)
            .field("shards", &self.shards.len())
            .finish()
    }
}

const ZEROS: [u8; 4096] = [0; 4096];

impl DatasetWriter {
    /// Starts a dataset in `dir`, which must exist and hold no dataset. `fields` are the
    /// dataset's fields; their order is their index in records. Field names must be unique and
    /// sorted by bytes (the order every shard's field table keeps).
    pub fn create(dir: &Path, fields: Vec<FieldSpec>, opts: WriterOptions) -> Result<Self> {
        opts.validate()?;
        if !dir.is_dir() {
            return Err(Error::input(dir, "output directory does not exist"));
        }
        if dir.join(MANIFEST_FILE).exists() {
            return Err(Error::input(
                dir,
                "already holds a dataset (manifest.json exists); remove it or write elsewhere",
            ));
        }
        for w in fields.windows(2) {
            if w[0].name >= w[1].name {
                return Err(Error::Options(format!(
                    "field names must be unique and sorted: {:?} then {:?}",
                    String::from_utf8_lossy(&w[0].name),
                    String::from_utf8_lossy(&w[1].name)
                )));
            }
        }
        if fields.len() > u32::MAX as usize {
            return Err(Error::Options("too many fields".into()));
        }
        if let Some(f) = fields.iter().find(|f| !is_safe_field_name(&f.name)) {
            return Err(Error::Options(format!(
                "field name {:?} contains '/' or a NUL byte; a field name is a file-name suffix",
                String::from_utf8_lossy(&f.name)
            )));
        }
        let mut names = Vec::new();
        let mut states = Vec::with_capacity(fields.len());
        for spec in fields {
            names.extend_from_slice(&spec.name);
            let encoder =
                FieldEncoder::new(spec.codec, spec.level, spec.dict.as_deref()).map_err(|e| {
                    Error::Options(format!(
                        "field {:?}: {e}",
                        String::from_utf8_lossy(&spec.name)
                    ))
                })?;
            states.push(FieldState {
                spec,
                encoder,
                records: 0,
                raw_bytes: 0,
                stored_bytes: 0,
            });
        }
        Ok(DatasetWriter {
            dir: dir.to_path_buf(),
            opts,
            fields: states,
            names,
            shard: None,
            shards: Vec::new(),
            written: Vec::new(),
            samples: 0,
            records: 0,
            earlier_keys: Some(HashSet::new()),
            finished: false,
            max_label: None,
            scratch: Vec::new(),
            cctx: None,
            raw_cut: None,
            base: (0, 0),
            part_tag: None,
            ref_records: 0,
        })
    }

    /// Cuts shards by `cut` (the default of a writer is [`ShardCut::Stored`]; `pack` asks for
    /// [`ShardCut::Raw`] unless told otherwise). Call before the first sample.
    pub fn set_shard_cut(&mut self, cut: ShardCut) {
        self.raw_cut = match cut {
            ShardCut::Raw => {
                let specs: Vec<FieldSpec> = self.fields.iter().map(|f| f.spec.clone()).collect();
                Some(RawCutter::new(&specs, &self.opts))
            }
            ShardCut::Stored => None,
        };
    }

    /// Makes this writer write one part of a planned pack: its first shard is number
    /// `first_shard` and starts with sample number `first_sample` of the whole dataset; the
    /// shards' temporary names carry `tag` (so two runs of the same part never write the same
    /// temporary file); shards it finished stay if it is dropped unfinished (they are the
    /// same bytes whichever run writes them); and [`DatasetWriter::finish_part`] ends it
    /// without a manifest. Cuts by [`ShardCut::Raw`]. Call before the first sample.
    pub fn set_part(&mut self, first_shard: u64, first_sample: u64, tag: &str) {
        self.set_shard_cut(ShardCut::Raw);
        self.base = (first_shard, first_sample);
        self.part_tag = Some(tag.to_string());
    }

    /// The encoder of field `i`, for callers that encode on their own threads.
    pub fn encoder(&self, i: u32) -> &FieldEncoder {
        &self.fields[i as usize].encoder
    }

    /// Declares that the caller never appends the same key twice, so the writer skips its
    /// check across shards and the 8 bytes per sample it keeps for it (duplicates within one
    /// shard are still refused). The tree compiler does this: its samples are grouped by key.
    pub fn assume_unique_keys(&mut self) {
        self.earlier_keys = None;
    }

    /// Samples appended so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Encodes and appends one sample: `fields` are `(field index, raw bytes)`, sorted by field
    /// index without repeats.
    pub fn append(
        &mut self,
        key: &[u8],
        label: Option<u32>,
        fields: &[(u32, &[u8])],
    ) -> Result<()> {
        let mut cctx = self.cctx.take().unwrap_or_else(new_cctx);
        let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(fields.len());
        let mut codecs = Vec::with_capacity(fields.len());
        for &(f, raw) in fields {
            let enc = self
                .fields
                .get(f as usize)
                .ok_or_else(|| Error::Options(format!("field index {f} does not exist")))?;
            let mut out = std::mem::take(&mut self.scratch);
            let codec = enc.encoder.encode(&mut cctx, raw, &mut out);
            codecs.push(codec);
            bufs.push(out);
        }
        self.cctx = Some(cctx);
        let recs: Vec<EncodedRecord<'_>> = fields
            .iter()
            .zip(&bufs)
            .zip(&codecs)
            .map(|((&(f, raw), buf), &codec)| EncodedRecord {
                field: f,
                codec,
                stored: if codec == Codec::Raw { raw } else { buf },
                raw_len: raw.len() as u64,
            })
            .collect();
        self.append_encoded(key, label, &recs)
    }

    /// The number (as [`DatasetWriter::samples`] counts) of the first sample of the shard that
    /// a next sample with this key length and these records' raw lengths would go to: the
    /// earliest sample a [`RefRecord`] of it may name as its base. `None` when shards are cut
    /// by stored sizes, which are not known before the records are encoded.
    pub fn shard_start_for(&self, key_len: usize, raw_lens: &[u64]) -> Option<u64> {
        let mut cutter = self.raw_cut.clone()?;
        let new = cutter.push(key_len, raw_lens);
        Some(match &self.shard {
            Some(s) if !new => s.first_sample,
            _ => self.samples,
        })
    }

    /// Appends one sample whose records are already encoded, sorted by field without repeats.
    pub fn append_encoded(
        &mut self,
        key: &[u8],
        label: Option<u32>,
        records: &[EncodedRecord<'_>],
    ) -> Result<()> {
        let mut inputs: Vec<RecordInput<'_>> =
            records.iter().map(|r| RecordInput::Bytes(*r)).collect();
        self.append_inputs(key, label, &mut inputs)
    }

    /// Appends one sample whose records are in memory or read from a stream (large records:
    /// see [`StreamedRecord`]), sorted by field without repeats. A streamed record is copied
    /// in pieces of [`STREAM_PIECE`] bytes and checksummed on the way, so it is never held
    /// whole in memory. If a stream fails or yields another length than it said, nothing of
    /// the sample is kept (the shard is cut back to where it was) and the error is returned;
    /// the writer can go on.
    pub fn append_inputs(
        &mut self,
        key: &[u8],
        label: Option<u32>,
        records: &mut [RecordInput<'_>],
    ) -> Result<()> {
        let key_path = || PathBuf::from(String::from_utf8_lossy(key).into_owned());
        for w in records.windows(2) {
            if w[0].field() >= w[1].field() {
                return Err(Error::input(
                    key_path(),
                    format!(
                        "sample has field {:?} twice or out of order: two inputs map to the same \
                         key and field",
                        String::from_utf8_lossy(&self.fields[w[1].field() as usize].spec.name)
                    ),
                ));
            }
        }
        if let Some(r) = records
            .iter()
            .find(|r| r.field() as usize >= self.fields.len())
        {
            return Err(Error::Options(format!(
                "field index {} does not exist",
                r.field()
            )));
        }
        if records.is_empty() {
            return Err(Error::input(
                key_path(),
                "a sample needs at least one field; leave empty samples out",
            ));
        }
        if label == Some(NO_LABEL) {
            return Err(Error::Options(format!("label {NO_LABEL} is reserved")));
        }
        if records.len() > u32::MAX as usize {
            return Err(Error::input(key_path(), "too many records in one sample"));
        }
        let align = self.opts.record_align;
        let mut need = 0u64;
        for r in records.iter() {
            need = need.saturating_add(align_up(r.stored_len(), align).unwrap_or(u64::MAX));
        }
        let index_need = (SampleEntry::SIZE + KeyHashEntry::SIZE + key.len()) as u64
            + (records.len() * RecordEntry::SIZE) as u64;
        if let Some(cutter) = &mut self.raw_cut {
            let raws: Vec<u64> = records.iter().map(|r| r.raw_len()).collect();
            if cutter.push(key.len(), &raws) && self.shard.is_some() {
                self.finish_shard()?;
            }
        } else if let Some(s) = &self.shard {
            // Everything the shard will hold besides data and per-sample index entries, at
            // its largest: two region paddings, the dictionaries, the index header, field
            // table, names with their padding, and the footer.
            let fixed = 2 * REGION_ALIGN
                + self
                    .fields
                    .iter()
                    .map(|f| f.spec.dict.as_ref().map_or(0, |d| d.len() as u64 + 8))
                    .sum::<u64>()
                + (IndexHeader::SIZE + self.fields.len() * FieldEntry::SIZE) as u64
                + self.names.len() as u64
                + 16
                + Footer::SIZE as u64;
            let projected = fixed
                + s.pos
                + need
                + (s.samples.len() + s.records.len() + s.keys.len()) as u64
                + s.key_hashes.len() as u64 * KeyHashEntry::SIZE as u64
                + index_need;
            let full = self
                .opts
                .max_samples_per_shard
                .is_some_and(|m| s.sample_count >= m);
            if full || projected > self.opts.shard_size {
                self.finish_shard()?;
            }
        }
        if self.shard.is_none() {
            self.open_shard()?;
        }
        // Checked after the cut above, which may just have finished the shard holding an
        // earlier sample with this key.
        let hash = key_hash(key);
        let seen = self
            .earlier_keys
            .as_ref()
            .is_some_and(|k| k.contains(&hash));
        if seen && self.key_in_earlier_shard(key)? {
            return Err(Error::input(
                key_path(),
                "two samples have the same key; keys must be unique",
            ));
        }
        let s = self.shard.as_mut().expect("shard open");
        let first_record = s.record_count;
        let (start_pos, hasher_before) = (s.pos, s.hasher.clone());
        let mut entries = Vec::with_capacity(records.len());
        for r in records.iter_mut() {
            let written = (|| {
                let pad = align_up(s.pos, align).expect("offset fits") - s.pos;
                write_zeros(s, pad)?;
                let offset = s.pos;
                let checksum = match r {
                    RecordInput::Bytes(b) => {
                        write_bytes(s, b.stored)?;
                        record_checksum(b.stored)
                    }
                    RecordInput::Stream(st) => copy_stream(s, st, &key_path)?,
                    RecordInput::Ref(rr) => {
                        let base = resolve_base(s, rr).map_err(|detail| {
                            Error::input(key_path(), format!("zstd-ref record: {detail}"))
                        })?;
                        let mut stored = Vec::with_capacity(REF_HEADER_LEN + rr.frame.len());
                        stored.extend_from_slice(&base.to_le_bytes());
                        stored.extend_from_slice(rr.frame);
                        write_bytes(s, &stored)?;
                        record_checksum(&stored)
                    }
                };
                Ok::<_, Error>(RecordEntry {
                    offset,
                    stored_len: r.stored_len(),
                    raw_len: r.raw_len(),
                    checksum,
                    field: r.field(),
                    codec: r.codec().as_u32(),
                })
            })();
            match written {
                Ok(e) => entries.push(e),
                Err(e) => {
                    let streamed = matches!(r, RecordInput::Stream(_));
                    if streamed {
                        rewind(s, start_pos, hasher_before)?;
                    }
                    return Err(e);
                }
            }
        }
        for e in &entries {
            if e.codec == Codec::ZstdRef.as_u32() {
                self.ref_records += 1;
            }
            e.encode_into(&mut s.records);
            let f = &mut self.fields[e.field as usize];
            f.records += 1;
            f.raw_bytes += e.raw_len;
            f.stored_bytes += e.stored_len;
        }
        SampleEntry {
            key_offset: s.keys.len() as u64,
            key_len: key.len() as u64,
            first_record,
            record_count: records.len() as u32,
            label: label.unwrap_or(NO_LABEL),
        }
        .encode_into(&mut s.samples);
        s.keys.extend_from_slice(key);
        self.max_label = self.max_label.max(label);
        s.key_hashes.push(KeyHashEntry {
            hash,
            sample: s.sample_count,
        });
        s.sample_count += 1;
        s.record_count += records.len() as u64;
        self.samples += 1;
        self.records += records.len() as u64;
        Ok(())
    }

    /// Whether a finished shard holds `key` (only asked when its hash was seen before, so
    /// practically only for real duplicates).
    fn key_in_earlier_shard(&self, key: &[u8]) -> Result<bool> {
        for meta in &self.shards {
            let shard = crate::reader::Shard::open(&self.dir.join(&meta.file))?;
            let found = shard
                .bytes()
                .find_key(key)
                .map_err(|e| Error::corrupt(shard.path(), e))?;
            if found.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn open_shard(&mut self) -> Result<()> {
        let i = self.base.0 + self.shards.len() as u64;
        let tmp_path = match &self.part_tag {
            None => self.dir.join(format!("{}.tmp", shard_file_name(i))),
            Some(tag) => self.dir.join(format!("{}.{tag}.tmp", shard_file_name(i))),
        };
        let file = File::create(&tmp_path).map_err(|e| Error::io(&tmp_path, "create", e))?;
        self.written.push(tmp_path.clone());
        let mut s = OpenShard {
            file: BufWriter::with_capacity(1 << 20, file),
            tmp_path,
            hasher: Xxh3::new(),
            pos: 0,
            samples: Vec::new(),
            records: Vec::new(),
            keys: Vec::new(),
            key_hashes: Vec::new(),
            sample_count: 0,
            record_count: 0,
            first_sample: self.samples,
        };
        let header = Header {
            version: Version::CURRENT,
            shard_index: i,
            record_align: self.opts.record_align,
            data_offset: REGION_ALIGN,
        };
        write_bytes(&mut s, &header.encode())?;
        write_zeros(&mut s, REGION_ALIGN - Header::SIZE as u64)?;
        self.shard = Some(s);
        Ok(())
    }

    fn finish_shard(&mut self) -> Result<()> {
        let Some(mut s) = self.shard.take() else {
            return Ok(());
        };
        let shard_index = self.base.0 + self.shards.len() as u64;
        let first_sample = self.base.1 + self.samples - s.sample_count;
        // Duplicate keys would make lookups ambiguous.
        s.key_hashes.sort_unstable();
        for w in s.key_hashes.windows(2) {
            if w[0].hash == w[1].hash {
                let k0 = sample_key(&s, w[0].sample);
                if k0 == sample_key(&s, w[1].sample) {
                    return Err(Error::input(
                        PathBuf::from(String::from_utf8_lossy(k0).into_owned()),
                        "two samples have the same key; keys must be unique",
                    ));
                }
            }
        }
        if let Some(k) = &mut self.earlier_keys {
            k.extend(s.key_hashes.iter().map(|k| k.hash));
        }
        let data_len = s.pos - REGION_ALIGN;

        // Dictionary region.
        let dict_offset = align_up(s.pos, REGION_ALIGN).expect("fits");
        pad_to(&mut s, dict_offset)?;
        let mut entries = Vec::with_capacity(self.fields.len() * FieldEntry::SIZE);
        let mut name_offset = 0u64;
        for f in &self.fields {
            let (mut d_off, mut d_len, mut d_sum) = (0, 0, 0);
            if let Some(d) = &f.spec.dict {
                let at = align_up(s.pos, 8).expect("fits");
                pad_to(&mut s, at)?;
                write_bytes(&mut s, d)?;
                (d_off, d_len, d_sum) = (at, d.len() as u64, xxh3_64(d));
            }
            FieldEntry {
                name_offset,
                name_len: f.spec.name.len() as u64,
                codec: f.spec.codec,
                level: if f.spec.codec == Codec::Raw {
                    0
                } else {
                    f.spec.level
                },
                dict_offset: d_off,
                dict_len: d_len,
                dict_checksum: d_sum,
            }
            .encode_into(&mut entries);
            name_offset += f.spec.name.len() as u64;
        }
        let dict_len = s.pos - dict_offset;

        // Index region.
        let index_offset = align_up(s.pos, REGION_ALIGN).expect("fits");
        pad_to(&mut s, index_offset)?;
        let ih = IndexHeader {
            sample_count: s.sample_count,
            record_count: s.record_count,
            field_count: self.fields.len() as u64,
            key_bytes_len: s.keys.len() as u64,
            name_bytes_len: self.names.len() as u64,
            first_sample,
        };
        let layout = ih.layout().expect("index sizes fit");
        let mut index = Vec::with_capacity(layout.end as usize);
        index.extend_from_slice(&ih.encode());
        index.extend_from_slice(&entries);
        index.extend_from_slice(&s.samples);
        index.extend_from_slice(&s.records);
        for kh in &s.key_hashes {
            kh.encode_into(&mut index);
        }
        index.extend_from_slice(&s.keys);
        index.resize(layout.names as usize, 0);
        index.extend_from_slice(&self.names);
        index.resize(layout.end as usize, 0);
        let index_checksum = xxh3_64(&index);
        write_bytes(&mut s, &index)?;
        let footer = Footer {
            data_offset: REGION_ALIGN,
            data_len,
            dict_offset,
            dict_len,
            index_offset,
            index_len: index.len() as u64,
            index_checksum,
            sample_count: s.sample_count,
            record_count: s.record_count,
            version: Version::CURRENT,
        };
        write_bytes(&mut s, &footer.encode())?;

        let path = s.tmp_path.clone();
        let file = s
            .file
            .into_inner()
            .map_err(|e| Error::io(&path, "write", e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&path, "sync", e))?;
        drop(file);
        let name = shard_file_name(shard_index);
        let final_path = self.dir.join(&name);
        fs::rename(&path, &final_path).map_err(|e| Error::io(&final_path, "rename into", e))?;
        if self.part_tag.is_some() {
            // A part's finished shard is final (the same bytes whichever run writes it).
            self.written.retain(|p| *p != path);
        } else if let Some(w) = self.written.iter_mut().find(|p| **p == path) {
            *w = final_path;
        }
        self.shards.push(ShardMeta {
            file: name,
            samples: s.sample_count,
            records: s.record_count,
            first_sample,
            bytes: s.pos,
            xxh3: Hash64(s.hasher.digest()),
            index_xxh3: Hash64(index_checksum),
        });
        Ok(())
    }

    /// Closes the last shard and writes the manifest (atomically, last). Returns the manifest.
    pub fn finish(mut self, info: DatasetInfo) -> Result<Manifest> {
        self.finish_shard()?;
        if info.imagefolder_labels {
            if let Some(l) = self.max_label.filter(|&l| l as usize >= info.classes.len()) {
                return Err(Error::Options(format!(
                    "a sample has label {l} but only {} classes are named; ImageFolder labels \
                     are class ids below the number of classes",
                    info.classes.len()
                )));
            }
        }
        let fields: Vec<FieldMeta> = self
            .fields
            .iter()
            .map(|f| field_meta(&f.spec, f.records, f.raw_bytes, f.stored_bytes))
            .collect();
        let manifest = build_manifest(
            self.samples,
            self.records,
            self.shards.clone(),
            fields,
            info,
            self.ref_records,
        );
        let tmp = self.dir.join(format!("{MANIFEST_FILE}.tmp"));
        let dst = self.dir.join(MANIFEST_FILE);
        self.written.push(tmp.clone());
        write_synced(&tmp, &manifest.to_json())?;
        sync_dir(&self.dir)?;
        fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, "rename into", e))?;
        // Until the directory sync succeeds the commit is not durable; should it fail, the
        // cleanup removes the manifest first, so no manifest ever outlives its shards.
        self.written.retain(|p| *p != tmp);
        self.written.insert(0, dst);
        sync_dir(&self.dir)?;
        self.finished = true;
        Ok(manifest)
    }

    /// Closes the last shard of a part of a planned pack (see [`DatasetWriter::set_part`])
    /// and returns what the part wrote; no manifest is written.
    pub fn finish_part(mut self) -> Result<PartOutput> {
        self.finish_shard()?;
        self.finished = true;
        self.cleanup();
        Ok(PartOutput {
            shards: std::mem::take(&mut self.shards),
            samples: self.samples,
            records: self.records,
            fields: self
                .fields
                .iter()
                .map(|f| (f.records, f.raw_bytes, f.stored_bytes))
                .collect(),
            ref_records: self.ref_records,
        })
    }

    /// Removes every file this writer created. Called on drop unless `finish` succeeded.
    pub fn abort(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        self.shard = None;
        for p in self.written.drain(..) {
            let _ = fs::remove_file(p);
        }
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.cleanup();
        }
    }
}

/// A field's manifest entry from its spec and totals.
pub(crate) fn field_meta(spec: &FieldSpec, records: u64, raw: u64, stored: u64) -> FieldMeta {
    FieldMeta {
        name: Name(spec.name.clone()),
        compression: spec.codec.name().to_string(),
        level: if spec.codec == Codec::Raw {
            0
        } else {
            spec.level
        },
        records,
        raw_bytes: raw,
        stored_bytes: stored,
        dict_bytes: spec.dict.as_ref().map_or(0, |d| d.len() as u64),
    }
}

/// The manifest of a dataset: what [`DatasetWriter::finish`] writes, and a planned pack's
/// merge from its parts (so both are the same bytes).
pub(crate) fn build_manifest(
    samples: u64,
    records: u64,
    shards: Vec<ShardMeta>,
    fields: Vec<FieldMeta>,
    info: DatasetInfo,
    ref_records: u64,
) -> Manifest {
    let mut features = Features::default();
    if ref_records > 0 {
        features.required.push(ZSTD_REF_FEATURE.to_string());
    }
    Manifest {
        format: FORMAT_NAME.to_string(),
        format_version: FORMAT_VERSION,
        writer: Some(WriterId::with_trainer(info.dict_trainer)),
        features: Some(features),
        samples,
        records,
        shards,
        fields,
        labels: if info.imagefolder_labels {
            "imagefolder"
        } else {
            "none"
        }
        .to_string(),
        classes: info.classes,
        options: info.options,
        skipped: info.skipped,
    }
}

/// Writes `manifest` into `dir` the way a pack commits: a temporary name, synced, renamed,
/// the directory synced. Used by `merge` (compile feature).
#[cfg(feature = "compile")]
pub(crate) fn commit_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let dst = dir.join(MANIFEST_FILE);
    write_synced(&tmp, &manifest.to_json())?;
    sync_dir(dir)?;
    fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, "rename into", e))?;
    sync_dir(dir)
}

fn sample_key(s: &OpenShard, i: u64) -> &[u8] {
    let at = i as usize * SampleEntry::SIZE;
    let e = SampleEntry::decode(&s.samples[at..at + SampleEntry::SIZE]);
    &s.keys[e.key_offset as usize..(e.key_offset + e.key_len) as usize]
}

fn write_bytes(s: &mut OpenShard, b: &[u8]) -> Result<()> {
    s.file
        .write_all(b)
        .map_err(|e| Error::io(&s.tmp_path, "write", e))?;
    s.hasher.update(b);
    s.pos += b.len() as u64;
    Ok(())
}

fn write_zeros(s: &mut OpenShard, mut n: u64) -> Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        write_bytes(s, &ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// The record index, in the open shard, of `r`'s base: the record of `r.field` in sample
/// `r.base_sample`, which must be in this shard, not be zstd-ref and have `r.base_raw_len`
/// bytes of data.
fn resolve_base(s: &OpenShard, r: &RefRecord<'_>) -> std::result::Result<u64, String> {
    let local = r
        .base_sample
        .checked_sub(s.first_sample)
        .filter(|&l| l < s.sample_count)
        .ok_or_else(|| {
            format!(
                "its base, sample {}, is not in the shard being written (samples {}..{})",
                r.base_sample,
                s.first_sample,
                s.first_sample + s.sample_count
            )
        })?;
    let at = local as usize * SampleEntry::SIZE;
    let e = SampleEntry::decode(&s.samples[at..at + SampleEntry::SIZE]);
    for i in e.first_record..e.first_record + u64::from(e.record_count) {
        let at = i as usize * RecordEntry::SIZE;
        let rec = RecordEntry::decode(&s.records[at..at + RecordEntry::SIZE]);
        if rec.field != r.field {
            continue;
        }
        if rec.codec == Codec::ZstdRef.as_u32() || rec.raw_len != r.base_raw_len {
            return Err(format!(
                "its base in sample {} is zstd-ref or has {} bytes, not {}",
                r.base_sample, rec.raw_len, r.base_raw_len
            ));
        }
        return Ok(i);
    }
    Err(format!(
        "its base, sample {}, has no record of field {}",
        r.base_sample, r.field
    ))
}

fn pad_to(s: &mut OpenShard, target: u64) -> Result<()> {
    let n = target - s.pos;
    write_zeros(s, n)
}

/// Creates `path` holding `bytes`, synced to disk.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, "create", e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(path, "write", e))?;
    f.sync_all().map_err(|e| Error::io(path, "sync", e))
}

/// Syncs a directory (so a rename or create in it is durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| Error::io(dir, "open", e))?;
        d.sync_all().map_err(|e| Error::io(dir, "sync", e))?;
    }
    Ok(())
}

/// Copies exactly `st.stored_len` bytes from `st.reader` into the shard in pieces, returning
/// their record checksum.
fn copy_stream(
    s: &mut OpenShard,
    st: &mut StreamedRecord<'_>,
    key_path: &dyn Fn() -> PathBuf,
) -> Result<u64> {
    let named = st.source.map_or_else(key_path, Path::to_path_buf);
    let key_path = || named.clone();
    let mut buf = vec![0u8; STREAM_PIECE];
    let mut hasher = Xxh3::new();
    let mut left = st.stored_len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = match st.reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Error::input(
                    key_path(),
                    format!(
                        "changed size while being read ({} bytes expected, {} read); make sure \
                         nothing writes to the source while packing",
                        st.stored_len,
                        st.stored_len - left
                    ),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(key_path(), "read", e)),
        };
        hasher.update(&buf[..n]);
        write_bytes(s, &buf[..n])?;
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    if st
        .reader
        .read(&mut probe)
        .map_err(|e| Error::io(key_path(), "read", e))?
        != 0
    {
        return Err(Error::input(
            key_path(),
            format!(
                "changed size while being read (more than the {} bytes expected); make sure \
                 nothing writes to the source while packing",
                st.stored_len
            ),
        ));
    }
    Ok(hasher.digest())
}

/// Cuts the open shard back to `pos` (undoing a sample whose stream failed).
fn rewind(s: &mut OpenShard, pos: u64, hasher: Xxh3) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    s.file
        .flush()
        .map_err(|e| Error::io(&s.tmp_path, "write", e))?;
    let f = s.file.get_mut();
    f.set_len(pos)
        .and_then(|()| f.seek(SeekFrom::Start(pos)))
        .map_err(|e| Error::io(&s.tmp_path, "truncate", e))?;
    s.pos = pos;
    s.hasher = hasher;
    Ok(())
}

//! Sources of samples for the pack pipeline: a folder tree ([`tree`]), WebDataset tar shards
//! ([`wds`]), MosaicML MDS shards ([`mds`]) and, with the `parquet` feature, Parquet tables
//! (`parquet`).
//!
//! A source gives the pipeline two things:
//!
//! 1. a [`Catalog`]: every sample (key, label) with its members (field, size and a locator the
//!    source understands), in a deterministic order, with the sorted field and class names and
//!    the inputs it left out. It is built once, before anything is written, by the source's
//!    scan, and is all that decides the bytes: the policy trials, the shuffle, the shard cuts
//!    and the commit order all work on it.
//! 2. a way to read a member's bytes ([`Source::read`], and [`Source::open`] to stream one
//!    above [`STREAM_THRESHOLD`](crate::codec::STREAM_THRESHOLD)). A source with
//!    [`Access::Random`] is read by many threads in any order (a tree: one file per member; an
//!    uncompressed tar or MDS shard: `pread` of the member's range). A source with
//!    [`Access::Sequential`] (a `.tar.gz`) is read through one cursor, in catalog order: the
//!    pipeline then keeps the source order instead of shuffling (the manifest's
//!    `shuffle_seed` is `null` and a note says so), reads each window on one thread, and reads
//!    large members whole instead of streaming them.
//!
//! A catalog may also carry **per-sample metadata** ([`CatalogBuilder::push_with_metadata`]):
//! a compact JSON object per sample, stored as one more field of the sample named
//! [`METADATA_FIELD`](crate::metadata::METADATA_FIELD) (see [`crate::metadata`] for its
//! encoding). Its bytes live in the catalog, not in the source: `scan` wraps the source so
//! that the pipeline reads them like any member.
//!
//! Everything the pipeline does after the scan (trials, parallel read and compress, ordered
//! commit, progress, cancellation, cleanup on failure) is the same for every source.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::NO_LABEL;
use crate::manifest::Skipped;

pub mod mds;
#[cfg(feature = "parquet")]
pub mod parquet;
mod tar;
pub mod tree;
pub mod wds;

/// How a source's members can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any member, from any thread, in any order.
    Random,
    /// Through one cursor: members are cheap to read only in catalog order.
    Sequential,
}

/// One member of a sample: a field's bytes somewhere in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Field id: position in [`Catalog::fields`].
    pub field: u32,
    /// Which input of the source holds it (a tar or MDS shard number; 0 for a tree).
    pub file: u32,
    /// Its bytes.
    pub size: u64,
    /// Where in `file` its bytes start (the source's own meaning; 0 for a tree).
    pub offset: u64,
}

#[derive(Debug, Clone, Copy)]
struct SampleEnt {
    key_off: u64,
    key_len: u32,
    first: u32,
    count: u32,
    label: u32,
}

/// A member with what a source needs to find and name it.
#[derive(Debug, Clone, Copy)]
pub struct MemberRef<'a> {
    /// The sample's key.
    pub key: &'a [u8],
    /// The field's name.
    pub field: &'a [u8],
    /// Where it is.
    pub member: Member,
}

/// The samples of a source in their deterministic order (see the module docs).
#[derive(Debug, Default)]
pub struct Catalog {
    keys: Vec<u8>,
    samples: Vec<SampleEnt>,
    members: Vec<Member>,
    /// Field names, sorted by bytes; a member's `field` indexes this.
    pub fields: Vec<Vec<u8>>,
    /// Class names (sorted) under ImageFolder labels; empty otherwise.
    pub classes: Vec<Vec<u8>>,
    /// `true` when labels are ImageFolder class ids (the manifest's `"imagefolder"`).
    pub imagefolder_labels: bool,
    /// Inputs the scan left out.
    pub skipped: Vec<Skipped>,
    /// What the manifest's `options` records about the source (besides the pack options);
    /// for a tree, the key mode its walk used (`key`).
    pub options: Map<String, Value>,
    /// Notes for the user from the scan.
    pub notes: Vec<String>,
    /// Provisional field ids while building (see [`CatalogBuilder`]).
    interned: HashMap<Vec<u8>, u32>,
    /// The per-sample metadata records, back to back; a member of the metadata field has
    /// `file` [`METADATA_FILE`] and its `offset` into this.
    metadata: std::sync::Arc<Vec<u8>>,
}

/// The `file` of a metadata member: its bytes are in the catalog (see the module docs).
pub const METADATA_FILE: u32 = u32::MAX;

/// How a [`CatalogBuilder`] labels samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// The key's first `/`-separated component is the class (a key without `/` gets none).
    ImageFolder,
    /// Each sample's label is what [`CatalogBuilder::push`] was given.
    Given,
}

/// Builds a [`Catalog`]: samples in order, each with members under field *names*; field ids
/// and (for ImageFolder labels) classes are assigned by [`CatalogBuilder::finish`].
#[derive(Debug)]
pub struct CatalogBuilder {
    cat: Catalog,
    labels: Labels,
}

impl CatalogBuilder {
    /// An empty catalog.
    pub fn new(labels: Labels) -> Self {
        CatalogBuilder {
            cat: Catalog::default(),
            labels,
        }
    }

    /// Samples so far.
    pub fn len(&self) -> usize {
        self.cat.samples.len()
    }

    /// Whether there are no samples yet.
    pub fn is_empty(&self) -> bool {
        self.cat.samples.is_empty()
    }

    /// Adds a sample. `members` are `(field name, member)` with distinct names (the source
    /// checks that and names the inputs); their `field` is ignored. `label` is used under
    /// [`Labels::Given`].
    pub fn push<'n>(
        &mut self,
        key: &[u8],
        label: Option<u32>,
        members: impl IntoIterator<Item = (&'n [u8], Member)>,
    ) -> Result<()> {
        let c = &mut self.cat;
        if key.len() > u32::MAX as usize || c.members.len() >= u32::MAX as usize {
            return Err(Error::Options(
                "more than 4 billion members, or a key above 4 GiB; split the source".into(),
            ));
        }
        let first = c.members.len() as u32;
        for (name, mut m) in members {
            m.field = match c.interned.get(name) {
                Some(&id) => id,
                None => {
                    let id = c.interned.len() as u32;
                    c.interned.insert(name.to_vec(), id);
                    id
                }
            };
            c.members.push(m);
        }
        c.samples.push(SampleEnt {
            key_off: c.keys.len() as u64,
            key_len: key.len() as u32,
            first,
            count: c.members.len() as u32 - first,
            label: label.unwrap_or(NO_LABEL),
        });
        c.keys.extend_from_slice(key);
        Ok(())
    }

    /// Like [`CatalogBuilder::push`], with the sample's metadata record (a JSON object, see
    /// [`crate::metadata`]) as a member of the field
    /// [`METADATA_FIELD`](crate::metadata::METADATA_FIELD), which `members` must not name.
    pub fn push_with_metadata<'n>(
        &mut self,
        key: &[u8],
        label: Option<u32>,
        members: impl IntoIterator<Item = (&'n [u8], Member)>,
        metadata: Option<&[u8]>,
    ) -> Result<()> {
        let meta = metadata.map(|m| {
            let blob = std::sync::Arc::make_mut(&mut self.cat.metadata);
            let offset = blob.len() as u64;
            blob.extend_from_slice(m);
            (
                crate::metadata::METADATA_FIELD,
                Member {
                    field: 0,
                    file: METADATA_FILE,
                    size: m.len() as u64,
                    offset,
                },
            )
        });
        self.push(key, label, members.into_iter().chain(meta))
    }

    /// [`CatalogBuilder::finish`] for labels that name classes: each label given to
    /// [`CatalogBuilder::push`] is an index into `names` (distinct, any order); the catalog's
    /// classes are `names` sorted by bytes and each label becomes its class's position there,
    /// so the manifest's labels read `"imagefolder"` (class ids of sorted class names).
    pub fn finish_with_classes(self, names: Vec<Vec<u8>>) -> Catalog {
        let mut c = self.finish();
        let mut order: Vec<u32> = (0..names.len() as u32).collect();
        order.sort_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
        let mut remap = vec![0u32; names.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old as usize] = new as u32;
        }
        for s in &mut c.samples {
            if s.label != NO_LABEL {
                s.label = remap[s.label as usize];
            }
        }
        let mut names = names;
        names.sort();
        c.classes = names;
        c.imagefolder_labels = true;
        c
    }

    /// The catalog: field ids in sorted name order (each sample's members sorted by it),
    /// labels and classes per [`Labels`].
    pub fn finish(self) -> Catalog {
        let mut c = self.cat;
        let mut names: Vec<(Vec<u8>, u32)> = std::mem::take(&mut c.interned).into_iter().collect();
        names.sort();
        let mut remap = vec![0u32; names.len()];
        for (new, (_, old)) in names.iter().enumerate() {
            remap[*old as usize] = new as u32;
        }
        c.fields = names.into_iter().map(|(n, _)| n).collect();
        for m in &mut c.members {
            m.field = remap[m.field as usize];
        }
        for s in &c.samples {
            let r = s.first as usize..(s.first + s.count) as usize;
            c.members[r].sort_by_key(|m| m.field);
        }
        if self.labels == Labels::ImageFolder {
            c.imagefolder_labels = true;
            let class_of = |k: &[u8]| k.iter().position(|&b| b == b'/').map(|i| k[..i].to_vec());
            let mut classes: Vec<Vec<u8>> = c
                .samples
                .iter()
                .filter_map(|s| class_of(&c.keys[s.key_off as usize..][..s.key_len as usize]))
                .collect();
            classes.sort();
            classes.dedup();
            for i in 0..c.samples.len() {
                let s = c.samples[i];
                let key = &c.keys[s.key_off as usize..][..s.key_len as usize];
                c.samples[i].label = class_of(key)
                    .and_then(|cl| classes.binary_search(&cl).ok())
                    .map_or(NO_LABEL, |x| x as u32);
            }
            c.classes = classes;
        }
        c.keys.shrink_to_fit();
        c.members.shrink_to_fit();
        c.samples.shrink_to_fit();
        c
    }
}

impl Catalog {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Number of members over all samples.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Sample `i`'s key.
    pub fn key(&self, i: usize) -> &[u8] {
        let s = &self.samples[i];
        &self.keys[s.key_off as usize..][..s.key_len as usize]
    }

    /// Sample `i`'s label (`None` for no label).
    pub fn label(&self, i: usize) -> Option<u32> {
        let l = self.samples[i].label;
        (l != NO_LABEL).then_some(l)
    }

    /// The range of sample `i`'s members in [`Catalog::member`] numbering.
    pub fn member_range(&self, i: usize) -> std::ops::Range<usize> {
        let s = &self.samples[i];
        s.first as usize..(s.first + s.count) as usize
    }

    /// Member `m` (of sample `sample`) with its key and field name.
    pub fn member(&self, sample: usize, m: usize) -> MemberRef<'_> {
        let member = self.members[m];
        MemberRef {
            key: self.key(sample),
            field: &self.fields[member.field as usize],
            member,
        }
    }

    /// The field id of member `m`.
    pub fn member_field(&self, m: usize) -> u32 {
        self.members[m].field
    }

    /// Total bytes of all members.
    pub fn total_bytes(&self) -> u64 {
        self.members.iter().map(|m| m.size).sum()
    }

    /// Total bytes per field id.
    pub fn field_bytes(&self) -> Vec<u64> {
        let mut v = vec![0u64; self.fields.len()];
        for m in &self.members {
            v[m.field as usize] += m.size;
        }
        v
    }

    /// Sample `i`'s metadata record (see [`CatalogBuilder::push_with_metadata`]), if any.
    pub fn metadata(&self, i: usize) -> Option<&[u8]> {
        self.member_range(i)
            .map(|m| self.members[m])
            .find(|m| m.file == METADATA_FILE)
            .map(|m| &self.metadata[m.offset as usize..][..m.size as usize])
    }

    /// Whether any sample has a metadata record.
    pub fn has_metadata(&self) -> bool {
        !self.metadata.is_empty() || self.members.iter().any(|m| m.file == METADATA_FILE)
    }

    /// Two samples with the same key, as sample numbers (the earlier first), if any.
    pub fn duplicate_key(&self) -> Option<(usize, usize)> {
        let mut idx: Vec<u32> = (0..self.samples.len() as u32).collect();
        idx.sort_by(|&a, &b| {
            self.key(a as usize)
                .cmp(self.key(b as usize))
                .then(a.cmp(&b))
        });
        idx.windows(2)
            .find(|w| self.key(w[0] as usize) == self.key(w[1] as usize))
            .map(|w| (w[0] as usize, w[1] as usize))
    }
}

/// A source of samples: see the module docs. Implementations are [`tree::TreeSource`],
/// [`wds::WdsSource`] and [`mds::MdsSource`].
pub trait Source: Sync {
    /// How members can be read.
    fn access(&self) -> Access {
        Access::Random
    }

    /// The member's bytes (exactly `member.size` of them, or an error saying why: the
    /// reason, without the member's name, which [`Source::error`] adds).
    fn read(&self, m: &MemberRef<'_>) -> std::result::Result<Vec<u8>, String>;

    /// A stream of the member's bytes, for members above the streaming threshold (only asked
    /// of [`Access::Random`] sources).
    fn open(&self, m: &MemberRef<'_>) -> std::result::Result<Box<dyn Read + Send + '_>, String>;

    /// The path to name for the member in messages (a tree's file; the tar or MDS shard).
    fn path(&self, m: &MemberRef<'_>) -> PathBuf;

    /// The error for `reason` about this member, naming it.
    fn error(&self, m: &MemberRef<'_>, reason: String) -> Error;

    /// The name a skip entry records for the member (relative to the source).
    fn skip_name(&self, m: &MemberRef<'_>) -> Vec<u8>;

    /// The root to name in errors about the whole source.
    fn root(&self) -> &Path;

    /// The note for the user when the source is [`Access::Sequential`] and a shuffle was
    /// asked for: why the samples keep the source order, and what to do about it.
    fn sequential_note(&self) -> String {
        "the source is read as one stream (.tar.gz), so the samples keep its order instead \
         of being shuffled (WebDataset shards are usually written shuffled); unpack the \
         tars (gunzip) to shuffle at pack time"
            .into()
    }
}

/// A source whose catalog carries metadata records: those members are answered from the
/// catalog's bytes, the others by the source.
struct WithMetadata {
    inner: Box<dyn Source>,
    blob: std::sync::Arc<Vec<u8>>,
}

impl WithMetadata {
    fn bytes(&self, m: &MemberRef<'_>) -> Option<&[u8]> {
        (m.member.file == METADATA_FILE)
            .then(|| &self.blob[m.member.offset as usize..][..m.member.size as usize])
    }
}

impl Source for WithMetadata {
    fn access(&self) -> Access {
        self.inner.access()
    }
    fn read(&self, m: &MemberRef<'_>) -> std::result::Result<Vec<u8>, String> {
        match self.bytes(m) {
            Some(b) => Ok(b.to_vec()),
            None => self.inner.read(m),
        }
    }
    fn open(&self, m: &MemberRef<'_>) -> std::result::Result<Box<dyn Read + Send + '_>, String> {
        match self.bytes(m) {
            Some(b) => Ok(Box::new(b)),
            None => self.inner.open(m),
        }
    }
    fn path(&self, m: &MemberRef<'_>) -> PathBuf {
        if m.member.file == METADATA_FILE {
            return self.inner.root().to_path_buf();
        }
        self.inner.path(m)
    }
    fn error(&self, m: &MemberRef<'_>, reason: String) -> Error {
        if m.member.file == METADATA_FILE {
            return Error::input(
                self.inner.root(),
                format!("sample {}, metadata: {reason}", lossy(m.key)),
            );
        }
        self.inner.error(m, reason)
    }
    fn skip_name(&self, m: &MemberRef<'_>) -> Vec<u8> {
        if m.member.file == METADATA_FILE {
            let mut n = m.key.to_vec();
            n.push(b'.');
            n.extend_from_slice(m.field);
            return n;
        }
        self.inner.skip_name(m)
    }
    fn root(&self) -> &Path {
        self.inner.root()
    }
    fn sequential_note(&self) -> String {
        self.inner.sequential_note()
    }
}

/// `/`-free display of raw bytes.
pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What kind of source `pack` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceFormat {
    /// Decided from the inputs: `.tar`, `.tar.gz` and `.tgz` files, brace patterns and folders
    /// holding only such files are WebDataset shards; a folder with `index.json` and
    /// `shard.*.mds*` files is an MDS dataset; `.parquet` files and folders holding only such
    /// files are Parquet; any other folder is a tree.
    #[default]
    Auto,
    /// A folder tree.
    Tree,
    /// WebDataset tar shards.
    WebDataset,
    /// A MosaicML MDS dataset (a folder with `index.json`).
    Mds,
    /// Parquet files (`.parquet` files or folders of them; feature `parquet`).
    Parquet,
}

impl std::str::FromStr for SourceFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(SourceFormat::Auto),
            "tree" => Ok(SourceFormat::Tree),
            "wds" | "webdataset" => Ok(SourceFormat::WebDataset),
            "mds" => Ok(SourceFormat::Mds),
            "parquet" => Ok(SourceFormat::Parquet),
            _ => Err(format!("{s:?} is not auto, tree, wds, mds or parquet")),
        }
    }
}

/// The options of the sources besides trees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceOptions {
    /// What the inputs are.
    pub format: SourceFormat,
    /// WebDataset: each sample's label is the integer in its `.cls` member (which also stays a
    /// field); the manifest's labels are then `"none"` (caller-chosen ids, no class names).
    pub cls_labels: bool,
    /// MDS and Parquet: the column whose value is each sample's key (MDS: `str`, `bytes` or an
    /// integer column; Parquet: a string, binary or integer column); without it the key is the
    /// sample number, zero-padded.
    pub key_column: Option<String>,
    /// Parquet: the column whose value is each sample's label (string labels become class ids
    /// of the sorted class names, integer labels are kept as they are).
    pub label_column: Option<String>,
    /// Parquet: the columns that become fields (binary columns or Hugging Face image structs);
    /// empty: every such column.
    pub field_columns: Vec<String>,
}

/// The inputs of a pack, resolved: what kind of source and which files.
#[derive(Debug, Clone)]
pub enum Input {
    /// A folder tree.
    Tree(PathBuf),
    /// WebDataset shards, in order; `root` is what OUT must not be inside of.
    WebDataset {
        /// The folder given, or the first shard.
        root: PathBuf,
        /// The tar files.
        shards: Vec<PathBuf>,
    },
    /// An MDS dataset folder.
    Mds(PathBuf),
    /// Parquet files, in order; `root` is what OUT must not be inside of.
    Parquet {
        /// The folder given, or the first file.
        root: PathBuf,
        /// The `.parquet` files.
        files: Vec<PathBuf>,
    },
}

fn is_parquet_name(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet") || e.eq_ignore_ascii_case("parq"))
}

/// The `.parquet` files directly in `dir`, sorted by name; `None` when it holds anything else
/// besides hidden files and `_`-prefixed ones (Spark's `_SUCCESS`, `_metadata`), or no
/// Parquet file.
fn parquets_in(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, "read directory", e))?;
        let p = e.path();
        let n = e.file_name();
        let n = n.to_string_lossy();
        if p.is_file() && is_parquet_name(&p) {
            v.push(p);
        } else if !(n.starts_with('.') || n.starts_with('_')) {
            return Ok(None);
        }
    }
    v.sort();
    Ok((!v.is_empty()).then_some(v))
}

fn is_tar_name(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase());
    n.is_some_and(|n| n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz"))
}

/// The tar files directly in `dir`, sorted by name; `None` when it holds anything else (or
/// nothing).
fn tars_in(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, "read directory", e))?;
        let p = e.path();
        if !(p.is_file() && is_tar_name(&p)) {
            return Ok(None);
        }
        v.push(p);
    }
    v.sort();
    Ok((!v.is_empty()).then_some(v))
}

fn is_mds_dir(dir: &Path) -> bool {
    if !dir.join("index.json").is_file() {
        return false;
    }
    fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("shard.") && n.contains(".mds")
        })
    })
}

/// Expands brace patterns as webdataset's `braceexpand` does for the usual cases: numeric
/// ranges `{000..099}` (zero-padded to the longer bound when either bound starts with 0) and
/// lists `{a,b,c}`, several per pattern (expanded left to right). Nested braces are refused.
pub fn brace_expand(pattern: &str) -> std::result::Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| format!("{pattern:?}: a '{{' without its '}}'"))?;
    let inner = &pattern[open + 1..close];
    if inner.contains('{') {
        return Err(format!("{pattern:?}: nested braces are not supported"));
    }
    let items: Vec<String> = if let Some((a, b)) = inner.split_once("..") {
        let (x, y) = (
            a.parse::<u64>()
                .map_err(|_| format!("{pattern:?}: {a:?} is not a number"))?,
            b.parse::<u64>()
                .map_err(|_| format!("{pattern:?}: {b:?} is not a number"))?,
        );
        let width = if a.starts_with('0') || b.starts_with('0') {
            a.len().max(b.len())
        } else {
            0
        };
        if y.abs_diff(x) > 10_000_000 {
            return Err(format!("{pattern:?}: a range of more than 10 million"));
        }
        let range: Vec<u64> = if x <= y {
            (x..=y).collect()
        } else {
            (y..=x).rev().collect()
        };
        range.into_iter().map(|i| format!("{i:0width$}")).collect()
    } else {
        inner.split(',').map(str::to_string).collect()
    };
    let rest = brace_expand(&pattern[close + 1..])?;
    let mut out = Vec::with_capacity(items.len() * rest.len());
    for i in &items {
        for r in &rest {
            out.push(format!("{}{i}{r}", &pattern[..open]));
        }
    }
    Ok(out)
}

impl Input {
    /// What a source of a pack is, from its inputs and the format asked for.
    pub fn resolve(inputs: &[PathBuf], format: SourceFormat) -> Result<Input> {
        let Some(first) = inputs.first() else {
            return Err(Error::Options("no source given".into()));
        };
        let not_found =
            |p: &Path| Error::input(p, "source does not exist; check the path".to_string());
        let parquet_like = |p: &Path| {
            (p.is_file() && is_parquet_name(p))
                || (p.is_dir() && parquets_in(p).ok().flatten().is_some())
        };
        if format == SourceFormat::Parquet
            || (format == SourceFormat::Auto && inputs.iter().all(|p| parquet_like(p)))
        {
            return Self::parquet(inputs);
        }
        if inputs.len() > 1 && !matches!(format, SourceFormat::Auto | SourceFormat::WebDataset) {
            return Err(Error::Options(
                "several sources are WebDataset shards or Parquet files only; a tree or an MDS \
                 dataset is one folder"
                    .into(),
            ));
        }
        match format {
            SourceFormat::Tree | SourceFormat::Mds | SourceFormat::Auto if inputs.len() == 1 => {
                let m = fs::metadata(first);
                let exists = m.is_ok();
                let brace = !exists && first.to_string_lossy().contains('{');
                if !brace {
                    let m = match m {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(not_found(first))
                        }
                        Err(e) => return Err(Error::io(first, "read", e)),
                        Ok(m) => m,
                    };
                    if m.is_dir() {
                        match format {
                            SourceFormat::Tree => return Ok(Input::Tree(first.clone())),
                            SourceFormat::Mds => {
                                if !first.join("index.json").is_file() {
                                    return Err(Error::input(
                                        first,
                                        "holds no index.json: not an MDS dataset (pass the \
                                         folder that MDSWriter wrote)",
                                    ));
                                }
                                return Ok(Input::Mds(first.clone()));
                            }
                            _ => {
                                if is_mds_dir(first) {
                                    return Ok(Input::Mds(first.clone()));
                                }
                                if let Some(shards) = tars_in(first)? {
                                    return Ok(Input::WebDataset {
                                        root: first.clone(),
                                        shards,
                                    });
                                }
                                return Ok(Input::Tree(first.clone()));
                            }
                        }
                    }
                    if format != SourceFormat::Auto || !is_tar_name(first) {
                        return Err(Error::input(
                            first,
                            "source is not a directory; pack takes a folder tree, WebDataset \
                             shards (.tar, .tar.gz, .tgz files, a folder of them, or a brace \
                             pattern) or an MDS dataset folder",
                        ));
                    }
                } else if format != SourceFormat::Auto {
                    return Err(not_found(first));
                }
                Self::webdataset(inputs)
            }
            _ => Self::webdataset(inputs),
        }
    }

    fn parquet(inputs: &[PathBuf]) -> Result<Input> {
        let mut files = Vec::new();
        for p in inputs {
            if p.is_dir() {
                match parquets_in(p)? {
                    Some(v) => files.extend(v),
                    None => {
                        return Err(Error::input(
                            p,
                            "is not a folder of Parquet files: it must hold only .parquet files \
                             (hidden and _-prefixed files aside)",
                        ))
                    }
                }
            } else if p.is_file() {
                files.push(p.clone());
            } else {
                return Err(Error::input(p, "source does not exist; check the path"));
            }
        }
        let root = if inputs.len() == 1 && inputs[0].is_dir() {
            inputs[0].clone()
        } else {
            files[0].clone()
        };
        Ok(Input::Parquet { root, files })
    }

    fn webdataset(inputs: &[PathBuf]) -> Result<Input> {
        let mut shards = Vec::new();
        for p in inputs {
            let s = p.to_string_lossy();
            if !p.exists() && s.contains('{') {
                let names = brace_expand(&s).map_err(Error::Options)?;
                for n in names {
                    let q = PathBuf::from(n);
                    if !q.is_file() {
                        return Err(Error::input(
                            &q,
                            format!("does not exist (from the pattern {s}); check the pattern"),
                        ));
                    }
                    shards.push(q);
                }
            } else if p.is_dir() {
                match tars_in(p)? {
                    Some(v) => shards.extend(v),
                    None => {
                        return Err(Error::input(
                            p,
                            "is not a folder of WebDataset shards: it must hold only .tar, \
                             .tar.gz or .tgz files",
                        ))
                    }
                }
            } else if p.is_file() {
                shards.push(p.clone());
            } else {
                return Err(Error::input(p, "source does not exist; check the path"));
            }
        }
        let root = if inputs.len() == 1 && inputs[0].is_dir() {
            inputs[0].clone()
        } else {
            shards[0].clone()
        };
        Ok(Input::WebDataset { root, shards })
    }

    /// What OUT must not be inside of.
    pub fn root(&self) -> &Path {
        match self {
            Input::Tree(p) | Input::Mds(p) => p,
            Input::WebDataset { root, .. } | Input::Parquet { root, .. } => root,
        }
    }
}

/// Scans the input into its source and catalog, with the scan's warnings.
pub(crate) fn scan(
    input: &Input,
    opts: &crate::compile::PackOptions,
    progress: &dyn crate::compile::Progress,
    cancel: &crate::compile::Cancel<'_>,
) -> Result<(Box<dyn Source>, Catalog, Vec<String>)> {
    let kind = match input {
        Input::Tree(_) => "a folder tree",
        Input::WebDataset { .. } => "WebDataset shards",
        Input::Mds(_) => "an MDS dataset",
        Input::Parquet { .. } => "Parquet files",
    };
    if opts.source.cls_labels && !matches!(input, Input::WebDataset { .. }) {
        return Err(Error::Options(format!(
            "labels from .cls members are for WebDataset shards, and the source is {kind}; \
             pass --labels imagefolder or none"
        )));
    }
    if opts.source.key_column.is_some() && !matches!(input, Input::Mds(_) | Input::Parquet { .. }) {
        return Err(Error::Options(format!(
            "--key-column is for MDS datasets and Parquet files, and the source is {kind}"
        )));
    }
    let parquet_only = opts.source.label_column.is_some() || !opts.source.field_columns.is_empty();
    if parquet_only && !matches!(input, Input::Parquet { .. }) {
        return Err(Error::Options(format!(
            "--label-column and --field-column are for Parquet files, and the source is {kind}"
        )));
    }
    let (source, cat, warnings) = scan_input(input, opts, progress, cancel)?;
    if cat.has_metadata() {
        let blob = cat.metadata.clone();
        let wrapped: Box<dyn Source> = Box::new(WithMetadata {
            inner: source,
            blob,
        });
        return Ok((wrapped, cat, warnings));
    }
    Ok((source, cat, warnings))
}

fn scan_input(
    input: &Input,
    opts: &crate::compile::PackOptions,
    progress: &dyn crate::compile::Progress,
    cancel: &crate::compile::Cancel<'_>,
) -> Result<(Box<dyn Source>, Catalog, Vec<String>)> {
    match input {
        Input::Tree(p) => {
            let (s, c, w) = tree::scan(p, opts, progress, cancel)?;
            Ok((Box::new(s), c, w))
        }
        Input::WebDataset { root, shards } => {
            let (s, c) = wds::scan(root, shards, opts, progress, cancel)?;
            Ok((Box::new(s), c, Vec::new()))
        }
        Input::Mds(p) => {
            let (s, c) = mds::scan(p, opts, progress, cancel)?;
            Ok((Box::new(s), c, Vec::new()))
        }
        #[cfg(feature = "parquet")]
        Input::Parquet { root, files } => {
            let (s, c) = parquet::scan(root, files, opts, progress, cancel)?;
            Ok((Box::new(s), c, Vec::new()))
        }
        #[cfg(not(feature = "parquet"))]
        Input::Parquet { root, .. } => Err(Error::input(
            root,
            "is Parquet, and this shardpack was built without the `parquet` feature; use the \
             shardpack command (it has it) or build with --features parquet",
        )),
    }
}

/// Reads `buf.len()` bytes of `file` at `offset`.
pub(crate) fn read_exact_at(file: &fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom};
        let mut f = file.try_clone()?;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

/// A `Read` over `file[pos..end]` by positioned reads (many may share one file).
pub(crate) struct RangeReader<'a> {
    pub(crate) file: &'a fs::File,
    pub(crate) pos: u64,
    pub(crate) end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        read_exact_at(self.file, &mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A catalog read back from a plan (see `compile::plan`): its samples arrive in the planned
/// order with members already under the plan's field ids.
#[cfg(feature = "compile")]
impl Catalog {
    pub(crate) fn planned(fields: Vec<Vec<u8>>, classes: Vec<Vec<u8>>, imagefolder: bool) -> Self {
        Catalog {
            fields,
            classes,
            imagefolder_labels: imagefolder,
            ..Catalog::default()
        }
    }

    pub(crate) fn push_planned(&mut self, key: &[u8], label: u32, members: &[Member]) {
        self.samples.push(SampleEnt {
            key_off: self.keys.len() as u64,
            key_len: key.len() as u32,
            first: self.members.len() as u32,
            count: members.len() as u32,
            label,
        });
        self.keys.extend_from_slice(key);
        self.members.extend_from_slice(members);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces() {
        assert_eq!(
            brace_expand("s-{000..002}.tar").unwrap(),
            ["s-000.tar", "s-001.tar", "s-002.tar"]
        );
        assert_eq!(brace_expand("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(
            brace_expand("{a,b}-{0..1}").unwrap(),
            ["a-0", "a-1", "b-0", "b-1"]
        );
        assert!(brace_expand("{a").is_err());
        assert!(brace_expand("{x..2}").is_err());
    }
}

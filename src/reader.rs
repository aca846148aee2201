//! The reader: open a dataset directory, random access by index or key, iteration, and full
//! verification.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::hash::Xxh3;
use memmap2::Mmap;
use zstd::zstd_safe::DCtx;

use crate::codec::{
    check_ref_base, check_ref_base_data, decode_record, decode_record_with_base, new_dctx,
    ref_parts, walk_frame, DecodeDict, DecodeError, FrameDecoder, StreamCheck,
};
use crate::error::{Error, Result};
use crate::format::{
    record_checksum, Codec, Footer, FormatError, FormatErrorKind, Header, RecordEntry, ShardBytes,
    NO_LABEL,
};
use crate::manifest::{Manifest, ShardMeta, MANIFEST_FILE};
use crate::storage::{DatasetSource, Fill, ReadAt};
use crate::sys::map_file;

thread_local! {
    static DCTX: RefCell<DCtx<'static>> = RefCell::new(new_dctx());
}

/// One open shard file. Cloning is cheap (the file, map and dictionaries are shared).
#[derive(Debug, Clone)]
pub struct Shard {
    path: PathBuf,
    /// The open file, for streaming large records with positioned reads.
    file: Arc<File>,
    bytes: Arc<ShardBytes<Mmap>>,
    dicts: Arc<Vec<Option<DecodeDict>>>,
    /// For a shard streamed from a remote store (a sparse local file holding its header and
    /// index): fetches a sample's records into the file before they are read.
    fill: Option<Arc<dyn Fill>>,
}

impl Shard {
    /// Maps and validates one shard file on its own (header, footer, index checksum, field
    /// table, dictionaries).
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| Error::io(path, "open shard", e))?;
        Shard::open_file(file, path, None)
    }

    /// [`Shard::open`] of an already open `file`, named `path` in messages (a remote shard's
    /// URL); `fill`, for a sparse local copy, fetches a sample's record bytes before
    /// [`Shard::sample`] hands it out.
    pub(crate) fn open_file(file: File, path: &Path, fill: Option<Arc<dyn Fill>>) -> Result<Shard> {
        let map = map_file(&file, path)?;
        // The index is about to be checksummed whole: read it ahead rather than page by page.
        if let Ok(f) = Footer::decode(&map) {
            crate::sys::will_need(&map, f.index_offset, f.index_len);
        }
        let bytes = ShardBytes::new(map).map_err(|e| Error::corrupt(path, e))?;
        let mut dicts = Vec::with_capacity(bytes.fields().len());
        for i in 0..bytes.fields().len() {
            dicts.push(match bytes.field_dict(i) {
                Some(d) => Some(DecodeDict::new(d).ok_or_else(|| {
                    Error::corrupt(
                        path,
                        crate::format::FormatError {
                            region: "dictionary",
                            offset: bytes.fields()[i].dict_offset,
                            kind: crate::format::FormatErrorKind::Invalid(
                                "zstd rejects the dictionary".into(),
                            ),
                        },
                    )
                })?),
                None => None,
            });
        }
        Ok(Shard {
            path: path.to_path_buf(),
            file: Arc::new(file),
            bytes: Arc::new(bytes),
            dicts: Arc::new(dicts),
            fill,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated bytes.
    pub fn bytes(&self) -> &ShardBytes<Mmap> {
        &self.bytes
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.bytes.sample_count()
    }

    /// `true` when the shard holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The prepared decoding dictionary of field `field`, if it has one.
    pub fn dict(&self, field: u32) -> Option<&DecodeDict> {
        self.dicts.get(field as usize).and_then(Option::as_ref)
    }

    fn corrupt(&self, e: crate::format::FormatError) -> Error {
        Error::corrupt(&self.path, e)
    }

    /// Sample `local` of this shard; `global` is its dataset-wide index. For a shard streamed
    /// from a remote store, the sample's records are fetched first (one ranged GET).
    pub fn sample(&self, local: u64, global: u64) -> Result<Sample<'_>> {
        let s = self.sample_index(local, global)?;
        if let Some(fill) = &self.fill {
            if s.record_count > 0 {
                let first = self
                    .bytes
                    .record(s.first_record)
                    .map_err(|e| self.corrupt(e))?;
                let last = self
                    .bytes
                    .record(s.first_record + s.record_count as u64 - 1)
                    .map_err(|e| self.corrupt(e))?;
                let end = last.offset.saturating_add(last.stored_len);
                fill.fill(first.offset, end)
                    .map_err(|e| Error::io(&self.path, "read", e))?;
            }
        }
        Ok(s)
    }

    /// The data of the base of zstd-ref record `record` (of field `field`, with stored bytes
    /// `stored`), checked as `format-spec/shard.md` 6.1 requires: the base's entry (section
    /// 9.2 and the base rules), its checksum, its decoding, and its first bytes. For a
    /// streamed remote shard, the base's bytes are fetched first. `read` is bytes the caller
    /// has read from the file (from offset `.0`): a base inside them is taken from there, not
    /// from the map. Raw bases are borrowed.
    pub(crate) fn ref_base<'s>(
        &'s self,
        dctx: &mut DCtx<'_>,
        record: u64,
        field: u32,
        stored: &[u8],
        read: Option<(u64, &'s [u8])>,
    ) -> std::result::Result<Cow<'s, [u8]>, DecodeError> {
        let (base, _) = ref_parts(stored)?;
        let entry = self
            .bytes
            .record(base)
            .map_err(|e| DecodeError::Base(format!("its base, record {base}: {e}")))?;
        check_ref_base(record, field, base, &entry)?;
        let in_read = read.and_then(|(start, b)| {
            let at = usize::try_from(entry.offset.checked_sub(start)?).ok()?;
            b.get(at..at.checked_add(entry.stored_len as usize)?)
        });
        let bytes = match in_read {
            Some(b) => b,
            None => {
                if let Some(fill) = &self.fill {
                    fill.fill(entry.offset, entry.offset + entry.stored_len)
                        .map_err(|e| {
                            DecodeError::Base(format!("reading its base, record {base}: {e}"))
                        })?;
                }
                self.bytes.stored(&entry)
            }
        };
        let data = base_data(dctx, base, &entry, bytes, self.dict(field))?;
        Ok(match data {
            Some(v) => Cow::Owned(v),
            None => Cow::Borrowed(bytes),
        })
    }

    /// For a shard streamed from a remote store, fetches all of it into the local copy.    /// For a shard streamed from a remote store, fetches all of it into the local copy.
    fn fill_all(&self) -> Result<()> {
        match &self.fill {
            Some(fill) => fill
                .fill(0, self.bytes.bytes().len() as u64)
                .map_err(|e| Error::io(&self.path, "read", e)),
            None => Ok(()),
        }
    }

    /// Sample `local` as its index entry describes it, without fetching the records of a
    /// streamed remote shard (for a reader that reads the bytes itself, like the Loader).
    pub fn sample_index(&self, local: u64, global: u64) -> Result<Sample<'_>> {
        if local >= self.len() {
            return Err(Error::OutOfRange {
                index: local,
                len: self.len(),
            });
        }
        let e = self.bytes.sample(local).map_err(|e| self.corrupt(e))?;
        Ok(Sample {
            shard: self,
            local,
            index: global,
            key: self.bytes.key(&e),
            label: (e.label != NO_LABEL).then_some(e.label),
            first_record: e.first_record,
            record_count: e.record_count,
        })
    }
}

/// What [`Dataset::open_with`] does with a listed shard that cannot be opened or does not
/// match the manifest (missing, truncated, corrupt header, footer, index or dictionary,
/// swapped or replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DamagedShards {
    /// Refuse the whole dataset with the shard's error (what [`Dataset::open`] does).
    #[default]
    Refuse,
    /// Open the dataset anyway and mark the shard damaged: its samples keep their global
    /// numbers (from the manifest's per-shard counts) and each access to one of them returns
    /// [`Error::DamagedShard`], naming the shard file and what is wrong with it, while samples
    /// of the intact shards read as usual. [`Dataset::damaged`] lists the damaged shards.
    Mark,
}

/// Options for [`Dataset::open_with`]. `Default` is what [`Dataset::open`] does.
///
/// ```no_run
/// use shardpack::reader::{DamagedShards, OpenOptions};
/// let opts = OpenOptions { damaged: DamagedShards::Mark, ..OpenOptions::default() };
/// let ds = shardpack::Dataset::open_with("train.spk", &opts)?;
/// for d in ds.damaged() {
///     eprintln!("{}: samples {}..{} unreadable: {}", d.path.display(), d.first_sample,
///         d.first_sample + d.samples, d.reason);
/// }
/// # Ok::<(), shardpack::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// What to do with a shard that fails to open or validate.
    pub damaged: DamagedShards,
}

impl OpenOptions {
    /// Options that mark damaged shards instead of refusing the dataset.
    pub fn mark_damaged() -> OpenOptions {
        OpenOptions {
            damaged: DamagedShards::Mark,
        }
    }
}

/// A listed shard that [`Dataset::open_with`] could not open and marked damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedShard {
    /// Position of the shard in the manifest.
    pub index: usize,
    /// The shard file.
    pub path: PathBuf,
    /// Global index of its first sample (from the manifest).
    pub first_sample: u64,
    /// Number of samples the manifest lists for it.
    pub samples: u64,
    /// Why it could not be opened (the error [`Dataset::open`] would have returned).
    pub reason: String,
}

impl DamagedShard {
    /// The error for sample `sample` (global index) of this shard, or for the shard as a
    /// whole (`None`).
    pub fn error(&self, sample: Option<u64>) -> Error {
        Error::DamagedShard {
            path: self.path.clone(),
            shard: self.index,
            sample,
            detail: self.reason.clone(),
        }
    }
}

/// When [`Dataset::open_checked`] checks each shard's index (its checksum, tables, field table
/// and dictionaries, and their agreement with the manifest). Whatever the choice, a shard's
/// index is checked before any of its samples is served, and [`Dataset::verify`] checks
/// every byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexCheck {
    /// [`IndexCheck::AtOpen`] when the shards' indexes together are at most
    /// [`EAGER_INDEX_BYTES`], else [`IndexCheck::FirstUse`]: small datasets report a damaged
    /// index at open, as before; a dataset of 10^8 samples opens in O(shards) bytes read.
    /// What [`Dataset::open`] and [`Dataset::open_with`] do.
    #[default]
    Auto,
    /// Check every index at open (reads every index once).
    AtOpen,
    /// Open reads the manifest and each shard's header and footer only (a few hundred bytes
    /// per shard, compared with the manifest); a shard's index is checked when the shard is
    /// first touched ([`Dataset::get`], [`Dataset::shard`], the Loader, ...). A damaged index
    /// is then an error on that first touch and on every later one ([`Error::Corrupt`], or
    /// [`Error::DamagedShard`] under [`DamagedShards::Mark`]), while the other shards serve.
    FirstUse,
}

/// Under [`IndexCheck::Auto`], the most index bytes (all shards together) open checks at once.
pub const EAGER_INDEX_BYTES: u64 = 64 << 20;

/// Why a listed shard cannot be used: the error [`Dataset::open`] reports for it, and its
/// entry in [`Dataset::damaged`].
#[derive(Debug)]
struct Failure {
    error: Error,
    damaged: DamagedShard,
}

/// The same error again (errors are reported on every touch of a damaged shard).
fn dup_error(e: &Error) -> Error {
    match e {
        Error::Corrupt { path, source } => Error::Corrupt {
            path: path.clone(),
            source: source.clone(),
        },
        Error::Manifest { path, detail } => Error::Manifest {
            path: path.clone(),
            detail: detail.clone(),
        },
        Error::DamagedShard {
            path,
            shard,
            sample,
            detail,
        } => Error::DamagedShard {
            path: path.clone(),
            shard: *shard,
            sample: *sample,
            detail: detail.clone(),
        },
        Error::Io { path, op, source } => Error::Io {
            path: path.clone(),
            op,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => Error::Options(other.to_string()),
    }
}

/// An open dataset: the manifest, a small table per shard (its footer), and each shard's
/// memory map and checked index once the shard is first used.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    mark: bool,
    /// Per manifest shard: its footer, as open read and checked it (`None` if it failed).
    footers: Vec<Option<Footer>>,
    /// Per manifest shard: the shard with its index checked, or why it cannot be used; filled
    /// on first touch (or at open, when the indexes are checked there).
    cells: Vec<OnceLock<std::result::Result<Shard, Box<Failure>>>>,
    /// Every shard touched: the usable ones and the damaged ones, in manifest order.
    all: OnceLock<(Vec<Shard>, Vec<DamagedShard>)>,
    starts: Vec<u64>,
    /// Where the shards come from when the dataset is not a local directory (a URL).
    source: Option<Arc<dyn DatasetSource>>,
}

impl Dataset {
    /// Opens the dataset in `dir`: reads the manifest and each shard's header and footer,
    /// and checks each shard's index at open when the indexes are small (at most
    /// [`EAGER_INDEX_BYTES`] together), else when the shard is first used
    /// ([`IndexCheck::Auto`]). Costs O(shards) requests; no per-sample parsing.
    /// Refuses the dataset when any listed shard cannot be opened; [`Dataset::open_with`] with
    /// [`DamagedShards::Mark`] opens the rest instead.
    ///
    /// Datasets are immutable once written: a shard rewritten or truncated by another process
    /// while mapped may return changed bytes (caught by the record checksums) or fault.
    pub fn open(dir: impl AsRef<Path>) -> Result<Dataset> {
        Dataset::open_with(dir, &OpenOptions::default())
    }

    /// Opens the dataset in `dir` with `opts` (see [`OpenOptions`]) and [`IndexCheck::Auto`].
    /// An unusable manifest is always an error.
    pub fn open_with(dir: impl AsRef<Path>, opts: &OpenOptions) -> Result<Dataset> {
        Dataset::open_checked(dir, opts, IndexCheck::Auto)
    }

    /// Opens the dataset in `dir` with `opts`, checking the shards' indexes as `check` says.
    ///
    /// ```no_run
    /// use shardpack::reader::{IndexCheck, OpenOptions};
    /// // 10^8 samples: read the manifest and 1,000 footers, not gigabytes of index.
    /// let ds = shardpack::Dataset::open_checked("big.spk", &OpenOptions::default(),
    ///     IndexCheck::FirstUse)?;
    /// let s = ds.get(123_456_789)?; // checks that one shard's index first
    /// # Ok::<(), shardpack::Error>(())
    /// ```
    pub fn open_checked(
        dir: impl AsRef<Path>,
        opts: &OpenOptions,
        check: IndexCheck,
    ) -> Result<Dataset> {
        let dir = dir.as_ref();
        if let Some(url) = crate::storage::url_of(dir) {
            return Dataset::open_url(url, opts, check);
        }
        let manifest = read_manifest(dir)?;
        Dataset::open_parts(dir.to_path_buf(), manifest, None, opts, check)
    }

    /// Opens a dataset given as a URL (`s3://`, `http(s)://`, `file://`).
    #[cfg(feature = "remote")]
    fn open_url(url: &str, opts: &OpenOptions, check: IndexCheck) -> Result<Dataset> {
        let ropts = crate::storage::remote::RemoteOptions::from_env();
        Dataset::open_remote(url, &ropts, opts, check)
    }

    #[cfg(not(feature = "remote"))]
    fn open_url(url: &str, opts: &OpenOptions, check: IndexCheck) -> Result<Dataset> {
        if let Some(path) = url.strip_prefix("file://") {
            return Dataset::open_checked(path, opts, check);
        }
        Err(Error::manifest(
            Path::new(url),
            "is a URL, and this build of shardpack reads local directories only (build it with \
             the cargo feature `remote` to read s3:// and http(s):// datasets)",
        ))
    }

    /// The opening common to local and remote datasets: footers, index checks, cells.
    pub(crate) fn open_parts(
        dir: PathBuf,
        manifest: Manifest,
        source: Option<Arc<dyn DatasetSource>>,
        opts: &OpenOptions,
        check: IndexCheck,
    ) -> Result<Dataset> {
        let dir = dir.as_path();
        let src = source.as_deref();
        let mark = opts.damaged == DamagedShards::Mark;
        let light = read_footers(dir, &manifest, src);
        let index_bytes = light
            .iter()
            .flatten()
            .fold(0u64, |acc, (_, f)| acc.saturating_add(f.index_len));
        let eager = match check {
            IndexCheck::AtOpen => true,
            IndexCheck::FirstUse => false,
            IndexCheck::Auto => index_bytes <= EAGER_INDEX_BYTES,
        };
        if let (true, Some(src)) = (eager, src) {
            // Cache mode downloads the shards whose indexes it checks: together, not in turn.
            let ok: Vec<usize> = (0..light.len()).filter(|&i| light[i].is_ok()).collect();
            src.prepare(&ok);
        }
        let mut footers = Vec::with_capacity(light.len());
        let mut cells = Vec::with_capacity(light.len());
        for (i, l) in light.into_iter().enumerate() {
            let meta = &manifest.shards[i];
            let cell = OnceLock::new();
            match l {
                Ok((_, footer)) => {
                    footers.push(Some(footer));
                    if eager {
                        match open_listed_shard(dir, &manifest, i, meta, src) {
                            Ok(s) => drop(cell.set(Ok(s))),
                            Err(e) if mark => drop(cell.set(Err(failure(dir, i, meta, e)))),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if mark => {
                    footers.push(None);
                    drop(cell.set(Err(failure(dir, i, meta, e))));
                }
                Err(e) => return Err(e),
            }
            cells.push(cell);
        }
        let starts = manifest.shards.iter().map(|s| s.first_sample).collect();
        Ok(Dataset {
            dir: dir.to_path_buf(),
            manifest,
            mark,
            footers,
            cells,
            all: OnceLock::new(),
            starts,
            source,
        })
    }

    /// A reader of manifest shard `i`'s byte ranges for the Loader, and whether it bypasses
    /// the page cache: the local file (opened for direct I/O when `direct` is asked and the
    /// filesystem allows it), or for a remote dataset its object (streaming: one ranged GET
    /// per read) or its cached copy (downloaded on first use).
    pub fn range_reader(&self, i: usize, direct: bool) -> Result<(Box<dyn ReadAt>, bool)> {
        let meta = self.manifest.shards.get(i).ok_or(Error::OutOfRange {
            index: i as u64,
            len: self.manifest.shards.len() as u64,
        })?;
        if let Some(src) = &self.source {
            return src.range_reader(i).map(|r| (r, false));
        }
        let path = self.dir.join(&meta.file);
        let (f, d) = crate::storage::open_local(&path, direct)
            .map_err(|e| Error::io(&path, "open shard", e))?;
        Ok((Box::new(f), d))
    }

    /// For a dataset opened from a URL, the number of requests made to the store so far
    /// (every attempt, retries included); `None` for a local directory.
    pub fn remote_requests(&self) -> Option<u64> {
        self.source.as_ref().map(|s| s.requests())
    }

    /// Whether the dataset was opened from a URL in stream mode, where every Loader read is
    /// a request over the link.
    pub(crate) fn streams_remotely(&self) -> bool {
        self.source.as_ref().is_some_and(|s| s.streams())
    }

    /// For a dataset opened from a URL, where its shards are read from: `"stream"` or
    /// `"cache: DIR"`; `None` for a local directory.
    pub fn remote_mode(&self) -> Option<String> {
        self.source.as_ref().map(|s| s.describe())
    }

    /// For a dataset opened from a URL, the options it reads with (mode, the resolved cache
    /// directory, cache limit, retries); `None` for a local directory. Reopening the URL with
    /// them reads it the same way (what Python's pickling does).
    #[cfg(feature = "remote")]
    pub fn remote_options(&self) -> Option<crate::storage::remote::RemoteOptions> {
        self.source.as_ref().map(|s| s.options())
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Manifest shard `i` with its index checked (checking it now if this is the first
    /// touch), or why it cannot be used.
    fn cell(&self, i: usize) -> Option<std::result::Result<&Shard, &Failure>> {
        let cell = self.cells.get(i)?;
        let got = cell.get_or_init(|| {
            let meta = &self.manifest.shards[i];
            open_listed_shard(&self.dir, &self.manifest, i, meta, self.source.as_deref())
                .map_err(|e| failure(&self.dir, i, meta, e))
        });
        Some(got.as_ref().map_err(|f| &**f))
    }

    /// The error for a touch of a shard that cannot be used (`sample`: the global sample
    /// asked for).
    fn failed(&self, f: &Failure, sample: Option<u64>) -> Error {
        match self.mark {
            true => f.damaged.error(sample),
            false => dup_error(&f.error),
        }
    }

    /// The usable shards, in manifest order. Checks every index not yet checked (O(total
    /// index) the first time). Shards that cannot be used are missing from this list (see
    /// [`Dataset::damaged`]); use [`Dataset::shard`] to look a shard up by its manifest
    /// position.
    pub fn shards(&self) -> &[Shard] {
        &self.all().0
    }

    fn all(&self) -> &(Vec<Shard>, Vec<DamagedShard>) {
        self.all.get_or_init(|| {
            self.prepare_unopened();
            let (mut ok, mut bad) = (Vec::new(), Vec::new());
            for i in 0..self.cells.len() {
                match self.cell(i) {
                    Some(Ok(s)) => ok.push(s.clone()),
                    Some(Err(f)) => bad.push(f.damaged.clone()),
                    None => {}
                }
            }
            (ok, bad)
        })
    }

    /// For a dataset opened from a URL, readies the shards not opened yet before they are
    /// opened in turn (cache mode: downloads them several at a time).
    fn prepare_unopened(&self) {
        if let Some(src) = &self.source {
            let todo: Vec<usize> = (0..self.cells.len())
                .filter(|&i| self.cells[i].get().is_none())
                .collect();
            src.prepare(&todo);
        }
    }

    /// Number of shards the manifest lists (usable and damaged).
    pub fn shard_count(&self) -> usize {
        self.cells.len()
    }

    /// Manifest shard `i`, its index checked (on this first touch if not at open):
    /// the shard, its error if it cannot be used ([`Error::DamagedShard`] if opened with
    /// [`DamagedShards::Mark`]), [`Error::OutOfRange`] past the last shard.
    pub fn shard(&self, i: usize) -> Result<&Shard> {
        match self.cell(i) {
            Some(Ok(s)) => Ok(s),
            Some(Err(f)) => Err(self.failed(f, None)),
            None => Err(Error::OutOfRange {
                index: i as u64,
                len: self.cells.len() as u64,
            }),
        }
    }

    /// The footer of manifest shard `i` as open read and checked it (against the manifest's
    /// counts, size and index checksum), without touching the index; `None` past the last
    /// shard or when the shard failed at open. The footer's `data_len` is the bytes of the
    /// shard's records (with padding), its `sample_count` its samples.
    pub fn shard_footer(&self, i: usize) -> Option<&Footer> {
        self.footers.get(i).and_then(Option::as_ref)
    }

    /// Whether manifest shard `i`'s index has been checked (at open or on a first touch),
    /// with either outcome.
    pub fn index_checked(&self, i: usize) -> bool {
        self.cells.get(i).is_some_and(|c| c.get().is_some())
    }

    /// The shards that cannot be used, in manifest order: those a tolerant
    /// [`Dataset::open_with`] marked damaged, and those whose index failed its check. Checks
    /// every index not yet checked. Always empty after an [`Dataset::open`] that checked the
    /// indexes at open.
    pub fn damaged(&self) -> &[DamagedShard] {
        &self.all().1
    }

    /// The manifest positions of the shards known to be damaged so far, without checking any
    /// index that is not checked yet (unlike [`Dataset::damaged`]): those refused at open and
    /// those whose index failed on an earlier touch. O(shards); a loader uses it to start
    /// without reading every index.
    pub fn damaged_so_far(&self) -> Vec<usize> {
        self.cells
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.get(), Some(Err(_))))
            .map(|(i, _)| i)
            .collect()
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.manifest.samples
    }

    /// `true` when the dataset holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Which shard (manifest position) holds global sample `i`, and its index there. A binary
    /// search over the shards' first samples: O(log shards), no I/O.
    #[inline]
    pub fn locate(&self, i: u64) -> Result<(usize, u64)> {
        if i >= self.len() {
            return Err(Error::OutOfRange {
                index: i,
                len: self.len(),
            });
        }
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        Ok((s, i - self.starts[s]))
    }

    /// Sample `i` (0-based, in stored order). Its records are not read or checked until asked
    /// for; its shard's index is checked first if this is the shard's first touch. A sample of
    /// a shard that cannot be used is that shard's error.
    #[inline]
    pub fn get(&self, i: u64) -> Result<Sample<'_>> {
        let (s, local) = self.locate(i)?;
        match self.cell(s) {
            Some(Ok(shard)) => shard.sample(local, i),
            Some(Err(f)) => Err(self.failed(f, Some(i))),
            None => unreachable!("locate returns a listed shard"),
        }
    }

    /// The class label of sample `i` (`None` when it has none), read from its shard's index
    /// alone: unlike [`Dataset::get`], it never fetches records of a shard streamed from a
    /// remote store, so a pass over every label costs no request beyond the indexes.
    pub fn label(&self, i: u64) -> Result<Option<u32>> {
        let (s, local) = self.locate(i)?;
        match self.cell(s) {
            Some(Ok(shard)) => Ok(shard.sample_index(local, i)?.label()),
            Some(Err(f)) => Err(self.failed(f, Some(i))),
            None => unreachable!("locate returns a listed shard"),
        }
    }

    /// The sample with key `key`, found through each shard's key-hash table (binary search,
    /// no scan). When the key is in none of the usable shards but a shard cannot be used, the
    /// answer is not "absent" but that shard's error ([`Error::DamagedShard`] under
    /// [`DamagedShards::Mark`]) for the first such shard (the key may be in it).
    pub fn get_by_key(&self, key: &[u8]) -> Result<Option<Sample<'_>>> {
        let mut first_bad: Option<&Failure> = None;
        for i in 0..self.cells.len() {
            let shard = match self.cell(i) {
                Some(Ok(s)) => s,
                Some(Err(f)) => {
                    first_bad.get_or_insert(f);
                    continue;
                }
                None => continue,
            };
            if let Some(local) = shard.bytes.find_key(key).map_err(|e| shard.corrupt(e))? {
                let index = shard.bytes.index_header().first_sample + local;
                return shard.sample(local, index).map(Some);
            }
        }
        match first_bad {
            Some(f) if self.mark => {
                let d = &f.damaged;
                Err(Error::DamagedShard {
                    path: d.path.clone(),
                    shard: d.index,
                    sample: None,
                    detail: format!(
                        "{}; no intact shard holds the key {:?}, so it may be in this one",
                        d.reason,
                        String::from_utf8_lossy(key)
                    ),
                })
            }
            Some(f) => Err(dup_error(&f.error)),
            None => Ok(None),
        }
    }

    /// All samples in stored order; each sample of a shard that cannot be used is its error.
    pub fn iter(&self) -> impl Iterator<Item = Result<Sample<'_>>> + '_ {
        (0..self.cells.len()).flat_map(move |s| self.shard_samples(s))
    }

    /// The samples of manifest shard `s` in stored order (each the shard's error if it
    /// cannot be used; nothing past the last shard). Checks the shard's index on first touch.
    pub fn shard_samples(&self, s: usize) -> impl Iterator<Item = Result<Sample<'_>>> + '_ {
        let start = self.starts.get(s).copied().unwrap_or(0);
        let n = self.manifest.shards.get(s).map_or(0, |m| m.samples);
        (0..n).map(move |local| match self.cell(s) {
            Some(Ok(shard)) => shard.sample(local, start + local),
            Some(Err(f)) => Err(self.failed(f, Some(start + local))),
            None => Err(Error::OutOfRange {
                index: start + local,
                len: self.len(),
            }),
        })
    }

    /// Field names, in field-index order.
    pub fn field_names(&self) -> Vec<&[u8]> {
        self.manifest
            .fields
            .iter()
            .map(|f| f.name.as_bytes())
            .collect()
    }

    /// The index of the field named `name` (as in [`LoadedSample::field`] and
    /// [`Field::field_index`]), if the dataset has one.
    ///
    /// [`LoadedSample::field`]: crate::loader::LoadedSample::field
    pub fn field_id(&self, name: &[u8]) -> Option<u32> {
        self.manifest
            .fields
            .iter()
            .position(|f| f.name.as_bytes() == name)
            .map(|i| i as u32)
    }

    /// Class names, in label order (label `i` is class `i`); empty without labels.
    pub fn class_names(&self) -> Vec<&[u8]> {
        self.manifest.classes.iter().map(|c| c.as_bytes()).collect()
    }

    /// The class name of `label`, if the dataset has that class.
    pub fn class_name(&self, label: u32) -> Option<&[u8]> {
        self.manifest.class_name(label).map(|c| c.as_bytes())
    }

    /// Checks every byte and every rule of the format: each shard's whole-file checksum, the
    /// index structure, every record's checksum and decoding, labels, unique keys across
    /// shards and the manifest's per-field statistics. Each problem is named by its
    /// [`ProblemKind`].
    pub fn verify(&self) -> VerifyReport {
        let mut v = Verifier::new(&self.manifest);
        self.prepare_unopened();
        for i in 0..self.cells.len() {
            let meta = &self.manifest.shards[i];
            match self.cell(i) {
                Some(Ok(shard)) => match shard.fill_all() {
                    // Streamed: the whole file is checked, so all of it is fetched first.
                    Ok(()) => v.shard(i, shard, meta),
                    Err(e) => v.unopened(meta, &e),
                },
                Some(Err(f)) => v.unopened(meta, &self.failed(f, None)),
                None => {}
            }
        }
        v.finish(|i| self.shard(i).ok())
    }
}

/// Shards from which open reads footers on several threads: a cold footer is a device read
/// of its own (about 0.3-0.7 ms here), so 1,000 shards one after another take most of a second.
const PARALLEL_FOOTERS_FROM: usize = 32;
/// Threads that read footers.
const FOOTER_THREADS: usize = 16;

/// [`open_listed_footer`] for every listed shard, in manifest order (on a few threads for many
/// shards; the outcome does not depend on it).
fn read_footers(
    dir: &Path,
    manifest: &Manifest,
    src: Option<&dyn DatasetSource>,
) -> Vec<Result<(Header, Footer)>> {
    let shards = &manifest.shards;
    if shards.len() < PARALLEL_FOOTERS_FROM || src.is_some() {
        return shards
            .iter()
            .enumerate()
            .map(|(i, meta)| open_listed_footer(dir, i, meta, src))
            .collect();
    }
    let per = shards.len().div_ceil(FOOTER_THREADS);
    std::thread::scope(|sc| {
        let parts: Vec<_> = shards
            .chunks(per)
            .enumerate()
            .map(|(k, part)| {
                sc.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(j, meta)| open_listed_footer(dir, k * per + j, meta, None))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("footer reader thread"))
            .collect()
    })
}

/// The [`Failure`] of listed shard `i`.
fn failure(dir: &Path, i: usize, meta: &ShardMeta, error: Error) -> Box<Failure> {
    Box::new(Failure {
        damaged: DamagedShard {
            index: i,
            path: dir.join(&meta.file),
            first_sample: meta.first_sample,
            samples: meta.samples,
            reason: error.to_string(),
        },
        error,
    })
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    if !dir.is_dir() {
        if let Some(old) = crate::writer::interrupted_swap(dir) {
            return Err(Error::manifest(
                dir,
                format!(
                    "does not exist: a `pack --force` replacing it was interrupted, and the \
                     previous dataset is in {}; run the same pack again (it moves that back \
                     first), or rename it to {}",
                    old.display(),
                    dir.display()
                ),
            ));
        }
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(Error::manifest(
            dir,
            format!(
                "{what}; a dataset is a directory holding manifest.json and shard files \
                 (made by `shardpack pack SRC OUT`)"
            ),
        ));
    }
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let partial = fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        (n.starts_with("shard-") && (n.ends_with(".spk") || n.ends_with(".tmp")))
                            || n == format!("{MANIFEST_FILE}.tmp")
                            || n == crate::writer::PACK_MARKER_FILE
                    })
                })
                .unwrap_or(false);
            let detail = if dir.join(crate::writer::PLAN_DIR).is_dir() {
                "holds a planned pack whose parts are not merged yet (.shardpack-plan), not a \
                 dataset; run every part (`shardpack pack --plan OUT --part I`), then \
                 `shardpack merge OUT`"
            } else if partial {
                "has shard files or a pack's marker but no manifest.json: an interrupted or \
                 failed pack, not a complete dataset; run the pack again (it removes what an \
                 interrupted pack left; add --force if it says the directory is not empty)"
            } else {
                "no manifest.json: not a shardpack dataset"
            };
            return Err(Error::manifest(dir, detail));
        }
        Err(e) => return Err(Error::io(&path, "read", e)),
    };
    Manifest::parse(&bytes, &path)
}

/// How opening listed shard `i` failed, as the manifest's reader reports it: a missing file
/// is the manifest's problem, and a file shorter than the manifest says was cut short (said
/// so, rather than whatever its last bytes happen to look like).
fn listed_open_error(path: &Path, i: usize, meta: &ShardMeta, e: Error) -> Error {
    match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::manifest(
                path,
                format!("shard {i} listed in the manifest is missing; the dataset is incomplete"),
            )
        }
        Error::Corrupt { source, .. } => {
            let len = fs::metadata(path).map_or(u64::MAX, |m| m.len());
            let source = if len < meta.bytes {
                FormatError {
                    region: "footer",
                    offset: len,
                    kind: FormatErrorKind::Truncated {
                        needed: meta.bytes,
                        available: len,
                    },
                }
            } else {
                source
            };
            Error::corrupt(path, source)
        }
        other => other,
    }
}

fn mismatch<T>(path: &Path, what: String) -> Result<T> {
    Err(Error::manifest(
        path,
        format!("{what}: the shard and the manifest disagree (shard swapped or replaced, or manifest edited?)"),
    ))
}

/// The checks of listed shard `i` that need only its header and footer: those of
/// `format-spec/shard.md` 9.1 (1-18) and the manifest's position, index checksum, counts and
/// size. Reads the file's first 64 and last 96 bytes with positioned reads.
fn open_listed_footer(
    dir: &Path,
    i: usize,
    meta: &ShardMeta,
    src: Option<&dyn DatasetSource>,
) -> Result<(Header, Footer)> {
    let path = dir.join(&meta.file);
    let read = || -> Result<(Header, Footer)> {
        let file: Box<dyn ReadAt> = match src {
            // Remote: the header and footer fetched at open (in parallel).
            Some(src) => src
                .footer_object(i)
                .map_err(|e| Error::io(&path, "open shard", e))?,
            None => Box::new(
                crate::storage::open_local(&path, false)
                    .map_err(|e| Error::io(&path, "open shard", e))?
                    .0,
            ),
        };
        let obj: &dyn ReadAt = &*file;
        let len = obj.len().map_err(|e| Error::io(&path, "open shard", e))?;
        let mut head = [0u8; Header::SIZE];
        let n = obj
            .read_at(&mut head, 0)
            .map_err(|e| Error::io(&path, "read", e))?;
        let header = Header::decode(&head[..n]).map_err(|e| Error::corrupt(&path, e))?;
        let mut tail = [0u8; Footer::SIZE];
        if len >= crate::format::MIN_SHARD_LEN {
            let n = obj
                .read_at(&mut tail, len - Footer::SIZE as u64)
                .map_err(|e| Error::io(&path, "read", e))?;
            if n < tail.len() {
                return Err(Error::io(
                    &path,
                    "read",
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while its footer was read",
                    ),
                ));
            }
        }
        let footer = Footer::decode_tail(&tail, len).map_err(|e| Error::corrupt(&path, e))?;
        crate::format::check_versions(&header, &footer, len)
            .map_err(|e| Error::corrupt(&path, e))?;
        Ok((header, footer))
    };
    let (header, footer) = read().map_err(|e| listed_open_error(&path, i, meta, e))?;
    check_against_manifest(&path, i, meta, &header, &footer, len_of(&footer))?;
    Ok((header, footer))
}

/// The file length a checked footer implies.
fn len_of(f: &Footer) -> u64 {
    f.index_offset + f.index_len + Footer::SIZE as u64
}

/// The manifest's checks that the header and footer answer: position, index checksum,
/// sample and record counts, file size.
fn check_against_manifest(
    path: &Path,
    i: usize,
    meta: &ShardMeta,
    header: &Header,
    footer: &Footer,
    file_len: u64,
) -> Result<()> {
    if header.shard_index != i as u64 {
        return mismatch(
            path,
            format!(
                "header says shard {}, the manifest lists it as shard {i}",
                header.shard_index
            ),
        );
    }
    if footer.index_checksum != meta.index_xxh3.0 {
        return mismatch(
            path,
            format!(
                "index checksum {:016x} differs from the manifest's {:016x}",
                footer.index_checksum, meta.index_xxh3.0
            ),
        );
    }
    if footer.sample_count != meta.samples || footer.record_count != meta.records {
        return mismatch(
            path,
            format!(
                "holds {} samples and {} records, the manifest says {} and {}",
                footer.sample_count, footer.record_count, meta.samples, meta.records
            ),
        );
    }
    if file_len != meta.bytes {
        return mismatch(
            path,
            format!(
                "the file is {file_len} bytes, the manifest says {}",
                meta.bytes
            ),
        );
    }
    Ok(())
}

/// Opens listed shard `i` with every check of open: [`Shard::open`] (header, footer, index,
/// dictionaries) and the manifest's (position, index checksum, counts, first sample, size,
/// field table).
fn open_listed_shard(
    dir: &Path,
    manifest: &Manifest,
    i: usize,
    meta: &ShardMeta,
    src: Option<&dyn DatasetSource>,
) -> Result<Shard> {
    let path = dir.join(&meta.file);
    let shard = match src {
        Some(src) => {
            let (file, fill) = src.local_shard(i)?;
            Shard::open_file(file, &path, fill)
        }
        None => Shard::open(&path),
    }
    .map_err(|e| listed_open_error(&path, i, meta, e))?;
    let b = shard.bytes();
    let mismatch = |what: String| mismatch(&path, what);
    if b.header().shard_index != i as u64 {
        return mismatch(format!(
            "header says shard {}, the manifest lists it as shard {i}",
            b.header().shard_index
        ));
    }
    if b.footer().index_checksum != meta.index_xxh3.0 {
        return mismatch(format!(
            "index checksum {:016x} differs from the manifest's {:016x}",
            b.footer().index_checksum,
            meta.index_xxh3.0
        ));
    }
    if b.sample_count() != meta.samples
        || b.footer().record_count != meta.records
        || b.index_header().first_sample != meta.first_sample
    {
        return mismatch(format!(
            "holds {} samples and {} records from sample {}, the manifest says {}, {} and {}",
            b.sample_count(),
            b.footer().record_count,
            b.index_header().first_sample,
            meta.samples,
            meta.records,
            meta.first_sample
        ));
    }
    if b.bytes().len() as u64 != meta.bytes {
        return mismatch(format!(
            "the file is {} bytes, the manifest says {}",
            b.bytes().len(),
            meta.bytes
        ));
    }
    let fields_match = b.fields().len() == manifest.fields.len()
        && b.fields().iter().enumerate().all(|(f, e)| {
            let m = &manifest.fields[f];
            b.field_name(f) == m.name.as_bytes()
                && e.codec.name() == m.compression
                && e.level == m.level
        });
    if !fields_match {
        return mismatch("its field table differs from the manifest's fields".into());
    }
    Ok(shard)
}

/// One sample: key, label and records, borrowed from the shard's memory map.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    shard: &'a Shard,
    local: u64,
    index: u64,
    key: &'a [u8],
    label: Option<u32>,
    first_record: u64,
    record_count: u32,
}

impl<'a> Sample<'a> {
    /// Global index in the dataset.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Key bytes (the source path up to the key dot).
    pub fn key(&self) -> &'a [u8] {
        self.key
    }

    /// Class label, if the dataset has labels and the sample one.
    pub fn label(&self) -> Option<u32> {
        self.label
    }

    /// Number of fields present.
    pub fn field_count(&self) -> usize {
        self.record_count as usize
    }

    /// The shard holding the sample.
    pub fn shard(&self) -> &'a Shard {
        self.shard
    }

    /// The sample's fields in field order.
    pub fn fields(&self) -> impl Iterator<Item = Result<Field<'a>>> + 'a {
        let this = *self;
        (0..self.record_count as u64).map(move |r| this.field_at(r))
    }

    /// The sample's `r`-th record as a field.
    fn field_at(&self, r: u64) -> Result<Field<'a>> {
        let shard = self.shard;
        let rec = shard
            .bytes
            .record(self.first_record + r)
            .map_err(|e| shard.corrupt(e))?;
        Ok(Field {
            sample: *self,
            record: self.first_record + r,
            name: shard.bytes.field_name(rec.field as usize),
            codec: Codec::from_u32(rec.codec).expect("checked by record()"),
            stored: shard.bytes.stored(&rec),
            rec,
        })
    }

    /// The field called `name`, if the sample has it.
    pub fn field(&self, name: &[u8]) -> Result<Option<Field<'a>>> {
        for f in self.fields() {
            let f = f?;
            if f.name == name {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }
}

/// One record of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    sample: Sample<'a>,
    /// Index in the shard's record table.
    record: u64,
    name: &'a [u8],
    codec: Codec,
    stored: &'a [u8],
    rec: RecordEntry,
}

impl<'a> Field<'a> {
    /// Field name bytes.
    pub fn name(&self) -> &'a [u8] {
        self.name
    }

    /// Field index in the dataset's field table.
    pub fn field_index(&self) -> u32 {
        self.rec.field
    }

    /// Index of the record in its shard's record table.
    pub fn record_index(&self) -> u64 {
        self.record
    }

    /// How the record is stored.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The stored bytes, unchecked and undecoded (zero-copy).
    pub fn stored(&self) -> &'a [u8] {
        self.stored
    }

    /// Length of the data after decoding.
    pub fn raw_len(&self) -> u64 {
        self.rec.raw_len
    }

    /// Absolute offset of the stored bytes in the shard.
    pub fn offset(&self) -> u64 {
        self.rec.offset
    }

    /// The xxh3-64 checksum of the stored bytes, as the index records it.
    pub fn checksum(&self) -> u64 {
        self.rec.checksum
    }

    fn bad(&self, detail: String) -> Error {
        Error::BadRecord {
            path: self.sample.shard.path.clone(),
            sample: self.sample.local,
            key: String::from_utf8_lossy(self.sample.key).into_owned(),
            field: String::from_utf8_lossy(self.name).into_owned(),
            offset: self.rec.offset,
            detail,
        }
    }

    /// Checks the record's checksum.
    pub fn check(&self) -> Result<()> {
        let actual = record_checksum(self.stored);
        if actual != self.rec.checksum {
            return Err(self.bad(format!(
                "checksum mismatch (stored {:016x}, computed {actual:016x})",
                self.rec.checksum
            )));
        }
        Ok(())
    }

    /// The data, checksum-verified: a zero-copy slice of the map for raw records, a decoded
    /// buffer for compressed ones.
    pub fn data(&self) -> Result<Cow<'a, [u8]>> {
        self.check()?;
        if self.codec == Codec::Raw {
            return Ok(Cow::Borrowed(self.stored));
        }
        let mut out = Vec::new();
        self.decode_unchecked(&mut out)?;
        Ok(Cow::Owned(out))
    }

    /// Verifies and decodes the data into `out` (cleared first), reusing its allocation.
    pub fn read_into(&self, out: &mut Vec<u8>) -> Result<()> {
        self.check()?;
        self.decode_unchecked(out)
    }

    /// What `verify` does with one record: the checksum, then for compressed records a full
    /// decode (frame rules of `format-spec/shard.md` section 6 included). Raw records are not
    /// copied.
    fn verify_record(
        &self,
        dctx: &mut DCtx<'_>,
        buf: &mut Vec<u8>,
    ) -> std::result::Result<(), (ProblemKind, Error)> {
        self.check().map_err(|e| (ProblemKind::RecordChecksum, e))?;
        if self.codec == Codec::Raw {
            return Ok(());
        }
        self.decode_with(dctx, buf)
            .map_err(|e| (ProblemKind::of_decode(&e), self.bad(e.to_string())))
    }

    /// Decodes the (checked) record into `out` with `dctx`; a zstd-ref record's base is
    /// checked and decoded first.
    fn decode_with(
        &self,
        dctx: &mut DCtx<'_>,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), DecodeError> {
        let shard = self.sample.shard;
        if self.codec == Codec::ZstdRef {
            let base = shard.ref_base(dctx, self.record, self.rec.field, self.stored, None)?;
            return decode_record_with_base(
                dctx,
                self.codec,
                self.stored,
                self.rec.raw_len,
                None,
                Some(&base),
                out,
            );
        }
        let dict = shard.dict(self.rec.field);
        decode_record(dctx, self.codec, self.stored, self.rec.raw_len, dict, out)
    }

    /// A reader of the data that holds a bounded amount of memory whatever the record's size,
    /// for copying large records to a file or a pipe. The record's checksum is checked before
    /// this returns (for a large record, by a first pass of positioned reads through the
    /// file), so a damaged record is an error before any byte is read from it; a compressed
    /// record is then decoded as it is read (zstd's streaming decoder) under the frame rules
    /// `verify` applies ([`crate::codec::FrameDecoder`]): a skippable frame, a window above
    /// 2^27 bytes or bytes after the frame (found by [`crate::codec::walk_frame`]) are an
    /// error before any byte is read, a decoded length other than the index's at the end.
    /// Records up to [`STREAM_ABOVE`] bytes (stored and decoded) are simply checked and
    /// decoded in memory.
    ///
    /// Errors while reading are `io::Error`s of kind `InvalidData` wrapping the
    /// [`Error::BadRecord`] (or, for a failed read of the shard file, its [`Error::Io`]).
    pub fn reader(&self) -> Result<FieldReader<'a>> {
        let stored_len = self.stored.len() as u64;
        // A zstd-ref record (at most 16 MiB of data) is decoded in memory with its base.
        let small = stored_len <= STREAM_ABOVE && self.rec.raw_len <= STREAM_ABOVE;
        if small || self.codec == Codec::ZstdRef {
            return Ok(FieldReader {
                kind: ReaderKind::Mem {
                    data: self.data()?,
                    pos: 0,
                },
            });
        }
        let shard = self.sample.shard;
        let (start, end) = (self.rec.offset, self.rec.offset + stored_len);
        // Pass 1: the checksum, in pieces that are not kept.
        let mut buf = vec![0u8; STREAM_PIECE];
        let mut h = Xxh3::new();
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            read_exact_at(&shard.file, &mut buf[..n], pos)
                .map_err(|e| Error::io(&shard.path, "read", e))?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        let actual = h.digest();
        if actual != self.rec.checksum {
            return Err(self.bad(format!(
                "checksum mismatch (stored {:016x}, computed {actual:016x})",
                self.rec.checksum
            )));
        }
        let kind = match self.codec {
            Codec::Raw => ReaderKind::Raw {
                field: *self,
                pos: start,
                end,
            },
            Codec::Zstd | Codec::ZstdDict | Codec::ZstdRef => {
                // The frame rules of `format-spec/shard.md` section 6, as in `decode_record`
                // and `verify`, before any byte is handed out: the header (skippable frame,
                // window) and, by walking the block headers, that the frame is the whole
                // record. The decoder checks them again, and the decoded length at the end.
                let dict = shard.dict(self.rec.field);
                let dec = FrameDecoder::new(self.codec, stored_len, self.rec.raw_len, dict)
                    .map_err(|e| self.bad(e.to_string()))?;
                let frame_len = walk_frame(stored_len, &mut |off, b| {
                    read_exact_at(&shard.file, b, start + off)
                })
                .map_err(|e| Error::io(&shard.path, "read", e))?
                .map_err(|e| self.bad(e.to_string()))?;
                if frame_len != stored_len {
                    let e = DecodeError::TrailingBytes {
                        frame_len,
                        stored_len,
                    };
                    return Err(self.bad(e.to_string()));
                }
                let n = (stored_len as usize).min(buf.len());
                read_exact_at(&shard.file, &mut buf[..n], start)
                    .map_err(|e| Error::io(&shard.path, "read", e))?;
                ReaderKind::Zstd(Box::new(ZstdStream {
                    field: *self,
                    dec,
                    pos: start + n as u64,
                    end,
                    input: buf,
                    in_pos: 0,
                    in_len: n,
                }))
            }
        };
        Ok(FieldReader { kind })
    }

    fn decode_unchecked(&self, out: &mut Vec<u8>) -> Result<()> {
        DCTX.with(|d| self.decode_with(&mut d.borrow_mut(), out))
            .map_err(|e| self.bad(e.to_string()))
    }
}

/// What kind of defect a [`Problem`] is: a stable name for each check `verify` makes
/// ([`ProblemKind::name`], printed by `shardpack verify --json` as `"kind"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The shard is missing, cut short, fails a check on open, or disagrees with the manifest
    /// (the detail says which).
    Shard,
    /// The shard file's size or whole-file xxh3 differs from the manifest.
    FileHash,
    /// Another defect in the shard's index tables (record ranges, field order, key hashes).
    Structure,
    /// Two samples of the dataset have the same key.
    DuplicateKey,
    /// A sample has no records.
    EmptySample,
    /// An ImageFolder label is not below the number of classes.
    LabelOutOfRange,
    /// A field name contains `/` or a NUL byte (extracting it would write outside the sample's
    /// name).
    UnsafeName,
    /// The key-hash table is out of order (lookups by key cannot be trusted).
    KeyHashOrder,
    /// A dictionary lacks the zstd dictionary magic.
    DictionaryMagic,
    /// A field that is not zstd-dict has a dictionary.
    DictionaryOnPlainField,
    /// A record's codec is neither raw nor its field's codec.
    RecordCodecMismatch,
    /// A record's stored bytes do not match their checksum.
    RecordChecksum,
    /// A zstd record holds more than one frame, or bytes after its frame.
    TrailingFrame,
    /// A zstd record starts with a skippable frame.
    SkippableFrame,
    /// A zstd frame declares a window above the format's maximum (2^27 bytes).
    WindowTooLarge,
    /// A record does not decode (zstd error, wrong length, impossible size).
    Decode,
    /// The manifest's per-field statistics (`records`, `raw_bytes`, `stored_bytes`,
    /// `dict_bytes`) differ from the shards.
    FieldStats,
    /// A zstd-ref record's base breaks a rule (an earlier record of the same field, not
    /// zstd-ref, intact, at most 16 MiB, not starting with the dictionary magic).
    RefBase,
}

impl ProblemKind {
    /// The stable kebab-case name (`"duplicate-key"`, `"window-too-large"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Shard => "shard",
            ProblemKind::FileHash => "file-hash",
            ProblemKind::Structure => "structure",
            ProblemKind::DuplicateKey => "duplicate-key",
            ProblemKind::EmptySample => "empty-sample",
            ProblemKind::LabelOutOfRange => "label-out-of-range",
            ProblemKind::UnsafeName => "unsafe-name",
            ProblemKind::KeyHashOrder => "key-hash-order",
            ProblemKind::DictionaryMagic => "dictionary-magic",
            ProblemKind::DictionaryOnPlainField => "dictionary-on-plain-field",
            ProblemKind::RecordCodecMismatch => "record-codec-mismatch",
            ProblemKind::RecordChecksum => "record-checksum",
            ProblemKind::TrailingFrame => "trailing-frame",
            ProblemKind::SkippableFrame => "skippable-frame",
            ProblemKind::WindowTooLarge => "window-too-large",
            ProblemKind::Decode => "decode",
            ProblemKind::FieldStats => "field-stats",
            ProblemKind::RefBase => "ref-base",
        }
    }

    /// The kind of a structural error (`fallback` for kinds without one of their own).
    pub fn of_format(e: &FormatError, fallback: ProblemKind) -> ProblemKind {
        match e.kind {
            FormatErrorKind::DuplicateKey { .. } => ProblemKind::DuplicateKey,
            FormatErrorKind::EmptySample { .. } => ProblemKind::EmptySample,
            FormatErrorKind::UnsafeFieldName { .. } => ProblemKind::UnsafeName,
            FormatErrorKind::KeyHashOrder { .. } => ProblemKind::KeyHashOrder,
            FormatErrorKind::DictionaryMagic { .. } => ProblemKind::DictionaryMagic,
            FormatErrorKind::DictionaryOnPlainField { .. } => ProblemKind::DictionaryOnPlainField,
            FormatErrorKind::RecordCodecMismatch { .. } => ProblemKind::RecordCodecMismatch,
            _ => fallback,
        }
    }

    /// The kind of an error from opening or reading a shard.
    pub fn of_error(e: &Error, fallback: ProblemKind) -> ProblemKind {
        match e {
            Error::Corrupt { source, .. } => ProblemKind::of_format(source, fallback),
            _ => fallback,
        }
    }

    /// The kind of a record decoding error.
    pub fn of_decode(e: &DecodeError) -> ProblemKind {
        match e {
            DecodeError::TrailingBytes { .. } => ProblemKind::TrailingFrame,
            DecodeError::SkippableFrame => ProblemKind::SkippableFrame,
            DecodeError::WindowTooLarge { .. } => ProblemKind::WindowTooLarge,
            DecodeError::Base(_) => ProblemKind::RefBase,
            _ => ProblemKind::Decode,
        }
    }
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A zstd-ref record's base `base` (entry `entry`, stored bytes `bytes`, already checked with
/// [`check_ref_base`]): its checksum, then its data, decoded (`Some`) or, for a raw base, the
/// stored bytes themselves (`None`), and the rule on its first bytes. Shared by the reader and
/// the Loader, which has the bytes from its own read.
pub(crate) fn base_data(
    dctx: &mut DCtx<'_>,
    base: u64,
    entry: &RecordEntry,
    bytes: &[u8],
    dict: Option<&DecodeDict>,
) -> std::result::Result<Option<Vec<u8>>, DecodeError> {
    let actual = record_checksum(bytes);
    if actual != entry.checksum {
        return Err(DecodeError::Base(format!(
            "its base, record {base}, fails its checksum (stored {:016x}, computed {actual:016x})",
            entry.checksum
        )));
    }
    let codec = Codec::from_u32(entry.codec).expect("checked by record()");
    if codec == Codec::Raw {
        check_ref_base_data(base, bytes)?;
        return Ok(None);
    }
    let mut out = Vec::new();
    decode_record(dctx, codec, bytes, entry.raw_len, dict, &mut out)
        .map_err(|e| DecodeError::Base(format!("its base, record {base}, does not decode: {e}")))?;
    check_ref_base_data(base, &out)?;
    Ok(Some(out))
}

/// Records larger than this (stored or decoded) are streamed by [`Field::reader`] instead of
/// being checked and decoded in memory.
pub const STREAM_ABOVE: u64 = 8 << 20;

/// Bytes [`Field::reader`] reads from the shard file at a time when streaming.
const STREAM_PIECE: usize = 1 << 20;

/// Fills `buf` from `offset` with positioned reads ([`crate::sys::read_full_at`]); a file that
/// ends first (a shard cut short under a record) is an `UnexpectedEof` saying where.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let n = crate::sys::read_full_at(file, buf, offset)?;
    if n < buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the file ends at byte {} inside a record that ends at {}",
                offset + n as u64,
                offset + buf.len() as u64
            ),
        ));
    }
    Ok(())
}

/// The data of one record as an [`std::io::Read`] in bounded memory; see [`Field::reader`].
#[derive(Debug)]
pub struct FieldReader<'a> {
    kind: ReaderKind<'a>,
}

enum ReaderKind<'a> {
    /// A small record, checked and decoded.
    Mem { data: Cow<'a, [u8]>, pos: usize },
    /// A large raw record: positioned reads of `pos..end`.
    Raw {
        field: Field<'a>,
        pos: u64,
        end: u64,
    },
    /// A large compressed record through zstd's streaming decoder.
    Zstd(Box<ZstdStream<'a>>),
}

impl std::fmt::Debug for ReaderKind<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReaderKind::Mem { .. } => "Mem",
            ReaderKind::Raw { .. } => "Raw",
            ReaderKind::Zstd(_) => "Zstd",
        })
    }
}

struct ZstdStream<'a> {
    field: Field<'a>,
    dec: FrameDecoder<'a>,
    /// Next stored byte to read from the file, and the end of the record.
    pos: u64,
    end: u64,
    input: Vec<u8>,
    in_pos: usize,
    in_len: usize,
}

fn invalid(e: Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

impl ZstdStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let shard = self.field.sample.shard;
        let bad = |e: DecodeError| invalid(self.field.bad(e.to_string()));
        loop {
            if self.in_pos == self.in_len && self.pos < self.end {
                let n = ((self.end - self.pos) as usize).min(self.input.len());
                read_exact_at(&shard.file, &mut self.input[..n], self.pos)
                    .map_err(|e| invalid(Error::io(&shard.path, "read", e)))?;
                self.pos += n as u64;
                self.in_pos = 0;
                self.in_len = n;
            }
            if self.dec.is_done() {
                // Bytes after the frame are refused by `decode`; `finish` checks the length
                // and that the frame ended at the end of the record.
                self.dec
                    .decode(&self.input[self.in_pos..self.in_len], out)
                    .map_err(bad)?;
                self.dec.finish().map_err(bad)?;
                return Ok(0);
            }
            if out.is_empty() {
                return Ok(0);
            }
            let (consumed, written) = self
                .dec
                .decode(&self.input[self.in_pos..self.in_len], out)
                .map_err(bad)?;
            self.in_pos += consumed;
            if written > 0 {
                return Ok(written);
            }
            if consumed == 0 && self.in_pos == self.in_len && self.pos >= self.end {
                if self.dec.is_done() {
                    continue;
                }
                // All input in, nothing more out, and the frame has not ended.
                return Err(bad(DecodeError::Zstd(
                    "the frame ends early (truncated record)",
                )));
            }
        }
    }
}

impl std::io::Read for FieldReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.kind {
            ReaderKind::Mem { data, pos } => {
                let n = (data.len() - *pos).min(out.len());
                out[..n].copy_from_slice(&data[*pos..*pos + n]);
                *pos += n;
                Ok(n)
            }
            ReaderKind::Raw { field, pos, end } => {
                let n = ((*end - *pos) as usize).min(out.len());
                let shard = field.sample.shard;
                read_exact_at(&shard.file, &mut out[..n], *pos)
                    .map_err(|e| invalid(Error::io(&shard.path, "read", e)))?;
                *pos += n as u64;
                Ok(n)
            }
            ReaderKind::Zstd(z) => z.read(out),
        }
    }
}

/// A problem found by [`Dataset::verify`] or [`verify_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Shard file name (`manifest.json` for a problem of the manifest as a whole).
    pub shard: String,
    /// Sample index within the shard, when the problem is one record.
    pub sample: Option<u64>,
    /// The sample's key (lossy UTF-8).
    pub key: Option<String>,
    /// The field (lossy UTF-8).
    pub field: Option<String>,
    /// Which check failed.
    pub kind: ProblemKind,
    /// What is wrong.
    pub detail: String,
}

/// The outcome of a full verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Shards checked.
    pub shards: u64,
    /// Samples checked.
    pub samples: u64,
    /// Records checked.
    pub records: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Everything found wrong.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// `true` when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// `true` when some problem is of `kind`.
    pub fn has(&self, kind: ProblemKind) -> bool {
        self.problems.iter().any(|p| p.kind == kind)
    }
}

/// Verifies the dataset in `dir` even where [`Dataset::open`] would stop at the first bad
/// shard: every listed shard is opened and checked on its own and every problem reported.
/// Errors only when the manifest itself is unusable.
///
/// Memory stays bounded whatever the record sizes: whole files are hashed from 8 MiB pieces
/// read with `pread`, and records of [`LARGE_RECORD`] bytes or more are checksummed from such
/// pieces and, when compressed, decoded by streaming into a fixed buffer (neither is touched
/// through the memory map or copied whole).
pub fn verify_dir(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    let dir = dir.as_ref();
    if crate::storage::url_of(dir).is_some() {
        // A URL: every shard is read (downloaded to the cache, or streamed) and checked.
        return Ok(Dataset::open_with(dir, &OpenOptions::mark_damaged())?.verify());
    }
    let manifest = read_manifest(dir)?;
    let mut v = Verifier::new(&manifest);
    for (i, meta) in manifest.shards.iter().enumerate() {
        match open_listed_shard(dir, &manifest, i, meta, None) {
            Ok(shard) => v.shard(i, &shard, meta),
            Err(e) => v.unopened(meta, &e),
        }
    }
    Ok(v.finish(|i| open_listed_shard(dir, &manifest, i, &manifest.shards[i], None).ok()))
}

/// The dataset-wide state of one verification: the report, per-field sums, key hashes.
struct Verifier<'m> {
    manifest: &'m Manifest,
    report: VerifyReport,
    /// Per field: records, raw bytes, stored bytes.
    stats: Vec<(u64, u64, u64)>,
    /// Every shard opened and every record entry read, so the per-field sums are complete.
    all_opened: bool,
    /// (key hash, shard) of every sample of the opened shards.
    hashes: Vec<(u64, u32)>,
    buf: Vec<u8>,
    /// Records of at least this many stored bytes are checked in pieces read from the file
    /// ([`LARGE_RECORD`]), not through the map.
    large: u64,
    /// The read buffer for whole-file hashing and large records ([`PIECE`] bytes).
    piece: Vec<u8>,
}

/// Records of at least this many stored bytes are verified in bounded memory: read in
/// 8 MiB pieces with `pread` (not touched through the map), checksummed piece by
/// piece, and zstd records decoded by streaming into a fixed buffer.
pub const LARGE_RECORD: u64 = 64 << 20;

/// The size of the pieces `verify` reads: whole-file hashing and large records.
const PIECE: usize = 8 << 20;

fn problem(shard: &str, kind: ProblemKind, detail: String) -> Problem {
    Problem {
        shard: shard.to_string(),
        sample: None,
        key: None,
        field: None,
        kind,
        detail,
    }
}

impl<'m> Verifier<'m> {
    fn new(manifest: &'m Manifest) -> Verifier<'m> {
        Verifier {
            manifest,
            report: VerifyReport::default(),
            stats: vec![(0, 0, 0); manifest.fields.len()],
            all_opened: true,
            hashes: Vec::new(),
            buf: Vec::new(),
            large: LARGE_RECORD,
            piece: Vec::new(),
        }
    }

    /// xxh3-64 of the whole file, read in pieces (so hashing a shard does not map all of it
    /// into this process's memory).
    fn file_hash(&mut self, file: &File) -> std::io::Result<(u64, u64)> {
        self.piece.resize(PIECE, 0);
        let mut h = Xxh3::new();
        let mut at = 0u64;
        loop {
            let n = crate::sys::read_full_at(file, &mut self.piece, at)?;
            h.update(&self.piece[..n]);
            at += n as u64;
            if n < PIECE {
                return Ok((h.digest(), at));
            }
        }
    }

    /// A large record's checks in bounded memory: checksum and (compressed) decoding from
    /// pieces read with `pread`.
    fn large_record(
        piece_buf: &mut Vec<u8>,
        file: &File,
        f: &Field<'_>,
    ) -> std::result::Result<(), (ProblemKind, Error)> {
        piece_buf.resize(PIECE, 0);
        let dict = f.sample.shard.dict(f.rec.field);
        let mut check = (f.codec != Codec::Raw)
            .then(|| StreamCheck::new(f.codec, f.rec.stored_len, f.rec.raw_len, dict));
        let mut h = Xxh3::new();
        let mut decode: std::result::Result<(), DecodeError> = Ok(());
        let mut at = f.rec.offset;
        let end = f.rec.offset + f.rec.stored_len;
        while at < end {
            let n = PIECE.min((end - at) as usize);
            read_exact_at(file, &mut piece_buf[..n], at).map_err(|e| {
                (
                    ProblemKind::Shard,
                    Error::io(f.sample.shard.path(), "read", e),
                )
            })?;
            let piece = &piece_buf[..n];
            h.update(piece);
            if decode.is_ok() {
                decode = match &mut check {
                    Some(Ok(c)) => c.feed(piece),
                    Some(Err(e)) => Err(e.clone()),
                    None => Ok(()),
                };
            }
            at += n as u64;
        }
        let actual = h.digest();
        if actual != f.rec.checksum {
            return Err((
                ProblemKind::RecordChecksum,
                f.bad(format!(
                    "checksum mismatch (stored {:016x}, computed {actual:016x})",
                    f.rec.checksum
                )),
            ));
        }
        let res = decode.and_then(|()| match check {
            Some(Ok(c)) => c.finish(),
            Some(Err(e)) => Err(e),
            None => Ok(()),
        });
        res.map_err(|e| (ProblemKind::of_decode(&e), f.bad(e.to_string())))
    }

    /// A record whose stored bytes are read through the map but whose decoded size is
    /// [`LARGE_RECORD`] or more: the checksum, then a streaming decode that keeps none of
    /// the output.
    fn large_decode(f: &Field<'_>) -> std::result::Result<(), (ProblemKind, Error)> {
        f.check().map_err(|e| (ProblemKind::RecordChecksum, e))?;
        let dict = f.sample.shard.dict(f.rec.field);
        StreamCheck::new(f.codec, f.rec.stored_len, f.rec.raw_len, dict)
            .and_then(|mut c| {
                for piece in f.stored().chunks(PIECE) {
                    c.feed(piece)?;
                }
                c.finish()
            })
            .map_err(|e| (ProblemKind::of_decode(&e), f.bad(e.to_string())))
    }

    fn unopened(&mut self, meta: &ShardMeta, e: &Error) {
        self.report.shards += 1;
        self.all_opened = false;
        let kind = ProblemKind::of_error(e, ProblemKind::Shard);
        self.report
            .problems
            .push(problem(&meta.file, kind, e.to_string()));
    }

    fn shard(&mut self, index: usize, shard: &Shard, meta: &ShardMeta) {
        self.report.shards += 1;
        let name = meta.file.as_str();
        let all = shard.bytes.bytes();
        // A file of LARGE_RECORD bytes or more is hashed from pieces read with pread (and its
        // large records checked the same way), so verifying it does not map it all into this
        // process's memory; smaller files are hashed through the map.
        let mut file = None;
        let (sum, len) = if all.len() as u64 >= self.large {
            match File::open(shard.path()).and_then(|f| {
                let h = self.file_hash(&f)?;
                file = Some(f);
                Ok(h)
            }) {
                Ok(h) => h,
                Err(e) => {
                    self.all_opened = false;
                    let e = Error::io(shard.path(), "read", e);
                    self.report
                        .problems
                        .push(problem(name, ProblemKind::Shard, e.to_string()));
                    return;
                }
            }
        } else {
            let mut h = Xxh3::new();
            for chunk in all.chunks(PIECE) {
                h.update(chunk);
            }
            (h.digest(), all.len() as u64)
        };
        let report = &mut self.report;
        report.bytes += len;
        if len != all.len() as u64 {
            report.problems.push(problem(
                name,
                ProblemKind::FileHash,
                format!(
                    "the file is {len} bytes, {} when it was opened: changed while being verified",
                    all.len()
                ),
            ));
        }
        if all.len() as u64 != meta.bytes || sum != meta.xxh3.0 {
            report.problems.push(problem(
                name,
                ProblemKind::FileHash,
                format!(
                    "file is {} bytes with xxh3 {sum:016x}, the manifest says {} bytes with {:016x}",
                    all.len(),
                    meta.bytes,
                    meta.xxh3.0
                ),
            ));
        }
        if let Err(e) = shard.bytes.check_structure() {
            let kind = ProblemKind::of_format(&e, ProblemKind::Structure);
            report
                .problems
                .push(problem(name, kind, shard.corrupt(e).to_string()));
        }
        for (f, entry) in shard.bytes.fields().iter().enumerate() {
            let want = self.manifest.fields.get(f).map_or(0, |m| m.dict_bytes);
            if entry.dict_len != want {
                report.problems.push(problem(
                    name,
                    ProblemKind::FieldStats,
                    format!(
                        "field {f} ({:?}) has a {}-byte dictionary, the manifest's dict_bytes \
                         says {want}",
                        String::from_utf8_lossy(shard.bytes.field_name(f)),
                        entry.dict_len
                    ),
                ));
            }
        }
        let imagefolder = self.manifest.labels == "imagefolder";
        let classes = self.manifest.classes.len() as u64;
        let mut dctx = new_dctx();
        for local in 0..shard.len() {
            report.samples += 1;
            let sample = match shard.sample(local, meta.first_sample + local) {
                Ok(s) => s,
                Err(e) => {
                    self.all_opened = false; // the per-field sums miss this sample
                    report.problems.push(Problem {
                        sample: Some(local),
                        ..problem(
                            name,
                            ProblemKind::of_error(&e, ProblemKind::Structure),
                            e.to_string(),
                        )
                    });
                    continue;
                }
            };
            self.hashes
                .push((crate::format::key_hash(sample.key()), index as u32));
            let key = String::from_utf8_lossy(sample.key()).into_owned();
            if let Some(label) = sample
                .label()
                .filter(|&l| imagefolder && u64::from(l) >= classes)
            {
                report.problems.push(Problem {
                    sample: Some(local),
                    key: Some(key.clone()),
                    ..problem(
                        name,
                        ProblemKind::LabelOutOfRange,
                        format!(
                            "label out of range: sample {local} has label {label}, the manifest \
                             names {classes} classes (labels 0..{classes}, or none)"
                        ),
                    )
                });
            }
            for f in sample.fields() {
                report.records += 1;
                let (field, res) = match f {
                    Ok(f) => {
                        // Saturating: `raw_len` is untrusted (a damaged table can claim
                        // sizes that overflow a sum); a saturated sum still differs from the
                        // manifest's and is reported as field statistics.
                        if let Some(st) = self.stats.get_mut(f.field_index() as usize) {
                            st.0 += 1;
                            st.1 = st.1.saturating_add(f.raw_len());
                            st.2 = st.2.saturating_add(f.stored().len() as u64);
                        }
                        let res = match file.as_ref() {
                            // A zstd-ref record (at most 16 MiB) is decoded in memory with its
                            // base.
                            _ if f.codec == Codec::ZstdRef => {
                                f.verify_record(&mut dctx, &mut self.buf)
                            }
                            Some(file) if f.rec.stored_len >= self.large => {
                                Self::large_record(&mut self.piece, file, &f)
                            }
                            // A small record that decodes to a large one (a 5 GiB file of
                            // zeros is a few hundred KiB of zstd): checked through the map,
                            // decoded by streaming instead of into one buffer.
                            _ if f.codec != Codec::Raw && f.raw_len() >= self.large => {
                                Self::large_decode(&f)
                            }
                            _ => f.verify_record(&mut dctx, &mut self.buf),
                        };
                        (Some(String::from_utf8_lossy(f.name()).into_owned()), res)
                    }
                    Err(e) => {
                        self.all_opened = false; // the per-field sums miss this record
                        let kind = ProblemKind::of_error(&e, ProblemKind::Structure);
                        (None, Err((kind, e)))
                    }
                };
                if let Err((kind, e)) = res {
                    report.problems.push(Problem {
                        shard: name.to_string(),
                        sample: Some(local),
                        key: Some(key.clone()),
                        field,
                        kind,
                        detail: e.to_string(),
                    });
                }
            }
        }
    }

    /// The dataset-wide checks (keys unique across shards, per-field statistics); `open`
    /// gives shard `i` again for naming a duplicate key.
    fn finish<S: std::borrow::Borrow<Shard>>(
        mut self,
        open: impl Fn(usize) -> Option<S>,
    ) -> VerifyReport {
        if self.all_opened {
            for (f, (m, got)) in self.manifest.fields.iter().zip(&self.stats).enumerate() {
                if (m.records, m.raw_bytes, m.stored_bytes) != *got {
                    self.report.problems.push(problem(
                        MANIFEST_FILE,
                        ProblemKind::FieldStats,
                        format!(
                            "field statistics: field {f} ({:?}) has {} records, {} raw bytes and \
                             {} stored bytes in the shards, the manifest says {}, {} and {}",
                            m.name.display(),
                            got.0,
                            got.1,
                            got.2,
                            m.records,
                            m.raw_bytes,
                            m.stored_bytes
                        ),
                    ));
                }
            }
        }
        // Keys repeated across shards (repeats within a shard are the shard's structure
        // problem). Sorting 12 bytes per sample; only a repeated hash costs any lookups.
        let mut hashes = std::mem::take(&mut self.hashes);
        hashes.sort_unstable();
        let mut i = 0;
        while i < hashes.len() {
            let j = i + hashes[i..].partition_point(|h| h.0 == hashes[i].0);
            let mut shards: Vec<u32> = hashes[i..j].iter().map(|h| h.1).collect();
            shards.dedup();
            if shards.len() > 1 {
                self.cross_shard_duplicates(hashes[i].0, &shards, &open);
            }
            i = j;
        }
        self.report
    }

    fn cross_shard_duplicates<S: std::borrow::Borrow<Shard>>(
        &mut self,
        hash: u64,
        shards: &[u32],
        open: &impl Fn(usize) -> Option<S>,
    ) {
        let mut seen: Vec<(Vec<u8>, usize, u64)> = Vec::new();
        for &s in shards {
            let Some(shard) = open(s as usize) else {
                continue;
            };
            let shard = shard.borrow();
            for local in shard.bytes.samples_with_hash(hash) {
                let Ok(e) = shard.bytes.sample(local) else {
                    continue;
                };
                let key = shard.bytes.key(&e).to_vec();
                if let Some((_, s0, l0)) = seen
                    .iter()
                    .find(|(k, s0, _)| *k == key && *s0 != s as usize)
                {
                    let file = &self.manifest.shards[s as usize].file;
                    self.report.problems.push(Problem {
                        sample: Some(local),
                        key: Some(String::from_utf8_lossy(&key).into_owned()),
                        ..problem(
                            file,
                            ProblemKind::DuplicateKey,
                            format!(
                                "duplicate key: sample {local} of {file} has the same key as \
                                 sample {l0} of {}; keys must be unique",
                                self.manifest.shards[*s0].file
                            ),
                        )
                    });
                } else {
                    seen.push((key, s as usize, local));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `verify_dir` with records checked in pieces from `large` stored bytes up.
    fn verify_with(dir: &Path, large: u64) -> VerifyReport {
        let manifest = read_manifest(dir).unwrap();
        let mut v = Verifier::new(&manifest);
        v.large = large;
        for (i, meta) in manifest.shards.iter().enumerate() {
            match open_listed_shard(dir, &manifest, i, meta, None) {
                Ok(shard) => v.shard(i, &shard, meta),
                Err(e) => v.unopened(meta, &e),
            }
        }
        v.finish(|i| open_listed_shard(dir, &manifest, i, &manifest.shards[i], None).ok())
    }

    /// The bounded-memory path (pieces read with pread, zstd streamed) finds what the map
    /// path finds, on every fixture: raw, zstd and zstd-dict records, intact and damaged.
    #[test]
    fn large_records_are_checked_in_pieces_with_the_same_outcome() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut dirs = vec![root.join("golden-v1"), root.join("golden-v2")];
        for case in [
            "intact",
            "flipped-record-bit",
            "two-zstd-frames",
            "skippable-frame",
            "huge-window",
            "empty-sample",
        ] {
            dirs.push(root.join("corrupt").join(case));
        }
        for dir in dirs {
            let whole = verify_with(&dir, u64::MAX);
            let pieces = verify_with(&dir, 1);
            let kinds = |r: &VerifyReport| -> Vec<(String, Option<u64>, ProblemKind)> {
                r.problems
                    .iter()
                    .map(|p| (p.shard.clone(), p.sample, p.kind))
                    .collect()
            };
            assert_eq!(kinds(&pieces), kinds(&whole), "{}", dir.display());
            assert_eq!(
                (pieces.records, pieces.bytes),
                (whole.records, whole.bytes),
                "{}",
                dir.display()
            );
        }
    }

    /// The streaming check refuses what the one-shot decoder refuses.
    #[test]
    fn stream_check_rules() {
        let raw = b"stream check stream check stream check".repeat(1000);
        let frame = zstd::bulk::compress(&raw, 3).unwrap();
        let n = raw.len() as u64;
        let run = |stored: &[u8], raw_len: u64, piece: usize| {
            let mut c = StreamCheck::new(Codec::Zstd, stored.len() as u64, raw_len, None)?;
            for p in stored.chunks(piece) {
                c.feed(p)?;
            }
            c.finish()
        };
        for piece in [20, 100, 1 << 20] {
            run(&frame, n, piece).unwrap();
            assert!(matches!(
                run(&frame, n - 1, piece),
                Err(DecodeError::LengthMismatch { .. })
            ));
            assert!(matches!(
                run(&frame, n + 1, piece),
                Err(DecodeError::LengthMismatch { .. })
            ));
            let two = [frame.clone(), frame.clone()].concat();
            assert!(
                matches!(run(&two, 2 * n, piece), Err(DecodeError::TrailingBytes { frame_len, .. }) if frame_len == frame.len() as u64),
                "{piece}"
            );
            assert!(run(&frame[..frame.len() - 3], n, piece).is_err());
        }
        let mut skip = vec![0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
        skip.extend_from_slice(&frame);
        assert_eq!(run(&skip, n, 1 << 20), Err(DecodeError::SkippableFrame));
    }
}

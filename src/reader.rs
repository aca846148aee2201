//! The reader: open a dataset directory, random access by index or key, iteration, and full
//! verification.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use xxhash_rust::xxh3::Xxh3;
use zstd::zstd_safe::DCtx;

use crate::codec::{decode_into, new_dctx, DecodeDict};
use crate::error::{Error, Result};
use crate::format::{
    record_checksum, Codec, FormatError, FormatErrorKind, RecordEntry, ShardBytes, NO_LABEL,
};
use crate::manifest::{Manifest, ShardMeta, MANIFEST_FILE};
use crate::sys::map_file;

thread_local! {
    static DCTX: RefCell<DCtx<'static>> = RefCell::new(new_dctx());
}

/// One open shard file.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    bytes: ShardBytes<Mmap>,
    dicts: Vec<Option<DecodeDict>>,
}

impl Shard {
    /// Maps and validates one shard file on its own (header, footer, index checksum, field
    /// table, dictionaries).
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| Error::io(path, "open shard", e))?;
        let map = map_file(&file, path)?;
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
            bytes,
            dicts,
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

    /// Sample `local` of this shard; `global` is its dataset-wide index.
    pub fn sample(&self, local: u64, global: u64) -> Result<Sample<'_>> {
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

/// An open dataset: the manifest and a memory map per shard.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<Shard>,
    starts: Vec<u64>,
}

impl Dataset {
    /// Opens the dataset in `dir`: reads the manifest and maps and validates each shard. Costs
    /// O(shards) plus one checksum pass over each shard's index; no per-sample parsing.
    ///
    /// Datasets are immutable once written: a shard rewritten or truncated by another process
    /// while mapped may return changed bytes (caught by the record checksums) or fault.
    pub fn open(dir: impl AsRef<Path>) -> Result<Dataset> {
        let dir = dir.as_ref();
        let manifest = read_manifest(dir)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for (i, meta) in manifest.shards.iter().enumerate() {
            shards.push(open_listed_shard(dir, &manifest, i, meta)?);
        }
        let starts = manifest.shards.iter().map(|s| s.first_sample).collect();
        Ok(Dataset {
            dir: dir.to_path_buf(),
            manifest,
            shards,
            starts,
        })
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The open shards.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.manifest.samples
    }

    /// `true` when the dataset holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Which shard holds global sample `i`, and its index there.
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
    /// for.
    #[inline]
    pub fn get(&self, i: u64) -> Result<Sample<'_>> {
        let (s, local) = self.locate(i)?;
        self.shards[s].sample(local, i)
    }

    /// The sample with key `key`, found through each shard's key-hash table (binary search,
    /// no scan).
    pub fn get_by_key(&self, key: &[u8]) -> Result<Option<Sample<'_>>> {
        for (s, shard) in self.shards.iter().enumerate() {
            if let Some(local) = shard.bytes.find_key(key).map_err(|e| shard.corrupt(e))? {
                return shard.sample(local, self.starts[s] + local).map(Some);
            }
        }
        Ok(None)
    }

    /// All samples in stored order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Sample<'_>>> + '_ {
        self.shards.iter().enumerate().flat_map(move |(s, shard)| {
            let start = self.starts[s];
            (0..shard.len()).map(move |local| shard.sample(local, start + local))
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

    /// Checks every byte: each shard's whole-file checksum, every record's checksum, and that
    /// every compressed record decodes to its recorded length.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        for (i, shard) in self.shards.iter().enumerate() {
            verify_shard(shard, &self.manifest.shards[i], &mut report);
        }
        report
    }
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
        return Err(Error::manifest(
            dir,
            "is not a directory; a dataset is a directory holding manifest.json and shard files",
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
            let detail = if partial {
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

fn open_listed_shard(dir: &Path, manifest: &Manifest, i: usize, meta: &ShardMeta) -> Result<Shard> {
    let path = dir.join(&meta.file);
    let shard = match Shard::open(&path) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::manifest(
                &path,
                format!("shard {i} listed in the manifest is missing; the dataset is incomplete"),
            ))
        }
        Err(Error::Corrupt { source, .. }) => {
            // A file shorter than the manifest says was cut short: say so, rather than
            // whatever its last bytes happen to look like.
            let len = fs::metadata(&path).map_or(u64::MAX, |m| m.len());
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
            return Err(Error::corrupt(&path, source));
        }
        other => other?,
    };
    let b = shard.bytes();
    let mismatch = |what: String| {
        Err(Error::manifest(
            &path,
            format!("{what}: the shard and the manifest disagree (shard swapped or replaced, or manifest edited?)"),
        ))
    };
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

    fn decode_unchecked(&self, out: &mut Vec<u8>) -> Result<()> {
        let dict = self.sample.shard.dict(self.rec.field);
        DCTX.with(|d| {
            decode_into(
                &mut d.borrow_mut(),
                self.codec,
                self.stored,
                self.rec.raw_len,
                dict,
                out,
            )
        })
        .map_err(|e| self.bad(e))
    }
}

/// A problem found by [`Dataset::verify`] or [`verify_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Shard file name.
    pub shard: String,
    /// Sample index within the shard, when the problem is one record.
    pub sample: Option<u64>,
    /// The sample's key (lossy UTF-8).
    pub key: Option<String>,
    /// The field (lossy UTF-8).
    pub field: Option<String>,
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
}

/// Verifies the dataset in `dir` even where [`Dataset::open`] would stop at the first bad
/// shard: every listed shard is opened and checked on its own and every problem reported.
/// Errors only when the manifest itself is unusable.
pub fn verify_dir(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    let dir = dir.as_ref();
    let manifest = read_manifest(dir)?;
    let mut report = VerifyReport::default();
    for (i, meta) in manifest.shards.iter().enumerate() {
        match open_listed_shard(dir, &manifest, i, meta) {
            Ok(shard) => verify_shard(&shard, meta, &mut report),
            Err(e) => {
                report.shards += 1;
                report.problems.push(Problem {
                    shard: meta.file.clone(),
                    sample: None,
                    key: None,
                    field: None,
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(report)
}

fn verify_shard(shard: &Shard, meta: &ShardMeta, report: &mut VerifyReport) {
    report.shards += 1;
    let name = meta.file.clone();
    let all = shard.bytes.bytes();
    let mut h = Xxh3::new();
    for chunk in all.chunks(8 << 20) {
        h.update(chunk);
    }
    report.bytes += all.len() as u64;
    let sum = h.digest();
    if all.len() as u64 != meta.bytes || sum != meta.xxh3.0 {
        report.problems.push(Problem {
            shard: name.clone(),
            sample: None,
            key: None,
            field: None,
            detail: format!(
                "file is {} bytes with xxh3 {sum:016x}, the manifest says {} bytes with {:016x}",
                all.len(),
                meta.bytes,
                meta.xxh3.0
            ),
        });
    }
    if let Err(e) = shard.bytes.check_structure() {
        report.problems.push(Problem {
            shard: name.clone(),
            sample: None,
            key: None,
            field: None,
            detail: shard.corrupt(e).to_string(),
        });
    }
    let mut buf = Vec::new();
    for local in 0..shard.len() {
        report.samples += 1;
        let sample = match shard.sample(local, meta.first_sample + local) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(Problem {
                    shard: name.clone(),
                    sample: Some(local),
                    key: None,
                    field: None,
                    detail: e.to_string(),
                });
                continue;
            }
        };
        let key = String::from_utf8_lossy(sample.key()).into_owned();
        for f in sample.fields() {
            report.records += 1;
            let (field, res) = match f {
                Ok(f) => (
                    Some(String::from_utf8_lossy(f.name()).into_owned()),
                    f.read_into(&mut buf),
                ),
                Err(e) => (None, Err(e)),
            };
            if let Err(e) = res {
                report.problems.push(Problem {
                    shard: name.clone(),
                    sample: Some(local),
                    key: Some(key.clone()),
                    field,
                    detail: e.to_string(),
                });
            }
        }
    }
}

//! A MosaicML MDS dataset (what `streaming.MDSWriter` writes) as a source.
//!
//! The folder holds `index.json` (`{"version": 2, "shards": [...]}`) and the shard files it
//! names (`shard.NNNNN.mds`, or `shard.NNNNN.mds.zstd` when written with
//! `compression='zstd'`; after `merge_index`, names with a subfolder). A shard file is
//! `u32 samples | u32 offsets[samples + 1] | ... | samples`, little-endian, the offsets
//! absolute; a sample is the `u32` sizes of its variable-size columns (those whose
//! `column_sizes` entry is `null`), then every column's bytes in `column_names` order.
//!
//! - Each column becomes a field of the same name, and each record holds the column's MDS
//!   bytes exactly as the shard stores them: nothing is decoded or re-encoded, so the
//!   conversion is lossless and `mds_decode(encoding, record)` gives the original value.
//!   By encoding, that is: `bytes`, `jpeg`, `png` the bytes themselves; `str`, `str_int`,
//!   `str_float`, `str_decimal` UTF-8 text; `json` JSON text; `int` an 8-byte little-endian
//!   `int64`; `int8`..`int64`, `uint8`..`uint64`, `float16`..`float64` their little-endian
//!   bytes; `ndarray[:dtype[:shape]]`, `pil`, `jpeg_array`, `list[pil|jpeg|png]` MDS's own
//!   layout of those (see `streaming/base/format/mds/encodings.py`). The manifest's
//!   `options.source.columns` records each column's encoding.
//! - `pkl` columns are kept as their raw pickle bytes and never unpickled (shardpack runs no
//!   Python and executes nothing it reads).
//! - The key is the value of `--key-column` (a `str`, `bytes` or integer column; integers in
//!   decimal), or else the sample's number over the whole dataset, zero-padded to at least six
//!   digits. Keys must be unique.
//! - Labels as for trees: `imagefolder` takes the key's first folder (MDS keys rarely have
//!   one), `none` gives none.
//! - Hashes: every `raw_data.hashes` / `zip_data.hashes` entry that shardpack can compute
//!   (`sha256`, `xxh64`, `xxh3_64`, `xxh3_128`) is checked against the file, and a mismatch
//!   is an error naming the shard; others are listed in a note as not checked.
//! - Compression: `null` and `zstd` (any level). Shards compressed otherwise (`br`, `bz2`,
//!   `gz`, `snappy`) are refused, naming the shard and its compression. A zstd shard is
//!   decompressed whole into memory when it is read (MDS shards are small: `size_limit`,
//!   64 MiB by default), so such a dataset is read shard by shard in order: the samples keep
//!   the source order instead of being shuffled (see the `source` module docs).
//! - Only `format: "mds"` shards; the `json`, `csv` and `tsv` formats of other writers are
//!   refused.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

use crate::compile::{Cancel, LabelMode, PackOptions, Progress};
use crate::error::{Error, Result};

use super::{
    lossy, read_exact_at, Access, Catalog, CatalogBuilder, Labels, Member, MemberRef, Source,
};

/// The encodings MDS writes (`streaming/base/format/mds/encodings.py`).
const ENCODINGS: &[&str] = &[
    "bytes",
    "str",
    "int",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "str_int",
    "str_float",
    "str_decimal",
    "pil",
    "jpeg",
    "jpeg_array",
    "jpegarray",
    "png",
    "list[pil]",
    "list[jpeg]",
    "list[png]",
    "pkl",
    "json",
];

fn known_encoding(e: &str) -> bool {
    ENCODINGS.contains(&e) || e == "ndarray" || e.starts_with("ndarray:")
}

struct Shard {
    /// The file as stored (the zstd file when compressed).
    path: PathBuf,
    zstd: bool,
}

/// An MDS dataset being packed (see the module docs).
pub struct MdsSource {
    root: PathBuf,
    shards: Vec<Shard>,
    files: Vec<OnceLock<std::result::Result<File, String>>>,
    /// The last decompressed shard.
    current: Mutex<Option<(u32, Arc<Vec<u8>>)>>,
}

impl std::fmt::Debug for MdsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdsSource")
            .field("root", &self.root)
            .field("shards", &self.shards.len())
            .finish()
    }
}

fn decompress(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(f)
        .and_then(|mut d| d.read_to_end(&mut out))
        .map_err(|e| format!("not a valid zstd stream: {e}"))?;
    Ok(out)
}

impl MdsSource {
    fn raw(&self, shard: u32) -> std::result::Result<Arc<Vec<u8>>, String> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, data)) = cur.as_ref() {
            if *s == shard {
                return Ok(data.clone());
            }
        }
        let data = Arc::new(decompress(&self.shards[shard as usize].path)?);
        *cur = Some((shard, data.clone()));
        Ok(data)
    }

    /// The shard's file kept open, or `None` when there are too many shards to keep open
    /// (each read then opens it).
    fn file(&self, shard: u32) -> std::result::Result<Option<&File>, String> {
        let Some(cell) = self.files.get(shard as usize) else {
            return Ok(None);
        };
        let path = &self.shards[shard as usize].path;
        cell.get_or_init(|| File::open(path).map_err(|e| format!("cannot open: {e}")))
            .as_ref()
            .map(Some)
            .map_err(Clone::clone)
    }

    fn open_file(&self, shard: u32) -> std::result::Result<File, String> {
        File::open(&self.shards[shard as usize].path).map_err(|e| format!("cannot open: {e}"))
    }
}

impl Source for MdsSource {
    fn access(&self) -> Access {
        if self.shards.iter().any(|s| s.zstd) {
            Access::Sequential
        } else {
            Access::Random
        }
    }

    fn read(&self, m: &MemberRef<'_>) -> std::result::Result<Vec<u8>, String> {
        let (off, n) = (m.member.offset, m.member.size);
        if self.shards[m.member.file as usize].zstd {
            let raw = self.raw(m.member.file)?;
            return Ok(raw[off as usize..(off + n) as usize].to_vec());
        }
        let mut v = vec![0u8; usize::try_from(n).map_err(|_| "record too large")?];
        let r = match self.file(m.member.file)? {
            Some(f) => read_exact_at(f, &mut v, off),
            None => read_exact_at(&self.open_file(m.member.file)?, &mut v, off),
        };
        r.map_err(|e| format!("cannot read: {e}"))?;
        Ok(v)
    }

    fn open(&self, m: &MemberRef<'_>) -> std::result::Result<Box<dyn Read + Send + '_>, String> {
        if self.shards[m.member.file as usize].zstd {
            return Ok(Box::new(std::io::Cursor::new(self.read(m)?)));
        }
        let (pos, end) = (m.member.offset, m.member.offset + m.member.size);
        match self.file(m.member.file)? {
            Some(file) => Ok(Box::new(super::RangeReader { file, pos, end })),
            None => {
                use std::io::{Seek, SeekFrom};
                let mut f = self.open_file(m.member.file)?;
                f.seek(SeekFrom::Start(pos))
                    .map_err(|e| format!("cannot read: {e}"))?;
                Ok(Box::new(f.take(m.member.size)))
            }
        }
    }

    fn path(&self, m: &MemberRef<'_>) -> PathBuf {
        self.shards[m.member.file as usize].path.clone()
    }

    fn error(&self, m: &MemberRef<'_>, reason: String) -> Error {
        Error::input(
            self.path(m),
            format!(
                "sample {}, column {}: {reason}",
                lossy(m.key),
                lossy(m.field)
            ),
        )
    }

    fn skip_name(&self, m: &MemberRef<'_>) -> Vec<u8> {
        let p = self.path(m);
        let rel = p.strip_prefix(&self.root).unwrap_or(&p);
        let mut n = rel.to_string_lossy().into_owned().into_bytes();
        n.push(b':');
        n.extend_from_slice(m.key);
        n.push(b'.');
        n.extend_from_slice(m.field);
        n
    }

    fn root(&self) -> &Path {
        &self.root
    }
}

/// A hash of `data` under MDS's algorithm name, where shardpack can compute it.
fn hash_hex(algo: &str, data: &[u8]) -> Option<String> {
    Some(match algo {
        "sha256" => sha256(data).iter().map(|b| format!("{b:02x}")).collect(),
        "xxh64" => format!("{:016x}", xxhash_rust::xxh64::xxh64(data, 0)),
        "xxh3_64" => format!("{:016x}", crate::hash::xxh3_64(data)),
        "xxh3_128" => format!("{:032x}", xxhash_rust::xxh3::xxh3_128(data)),
        _ => return None,
    })
}

/// Checks `hashes` (`{algo: hex}`) of `data`; returns the algorithms it could not check.
fn check_hashes(
    path: &Path,
    what: &str,
    hashes: Option<&Value>,
    data: &[u8],
) -> Result<Vec<String>> {
    let mut unchecked = Vec::new();
    let Some(Value::Object(h)) = hashes else {
        return Ok(unchecked);
    };
    for (algo, want) in h {
        let want = want.as_str().unwrap_or_default().to_ascii_lowercase();
        match hash_hex(algo, data) {
            Some(got) if got == want => {}
            Some(got) => {
                return Err(Error::input(
                    path,
                    format!(
                        "{what} {algo} hash is {got}, but index.json says {want}: the shard is \
                         damaged or not the one the index was written with; restore it from a \
                         copy or write the MDS dataset again"
                    ),
                ))
            }
            None => unchecked.push(algo.clone()),
        }
    }
    Ok(unchecked)
}

/// A shard's relative name from index.json, refused if it could leave the folder.
fn shard_path(root: &Path, name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    if name.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::input(
            root.join("index.json"),
            format!("names the shard {name:?}, which is not a relative path inside the folder"),
        ));
    }
    Ok(root.join(p))
}

fn u32_at(raw: &[u8], at: usize) -> Option<u32> {
    raw.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// The key bytes of a key-column value.
fn key_of(encoding: &str, v: &[u8]) -> Option<Vec<u8>> {
    let int = |signed: bool| -> Option<Vec<u8>> {
        if v.is_empty() || v.len() > 8 {
            return None;
        }
        let mut b = [0u8; 8];
        b[..v.len()].copy_from_slice(v);
        if signed && v[v.len() - 1] & 0x80 != 0 {
            for x in &mut b[v.len()..] {
                *x = 0xff;
            }
        }
        Some(if signed {
            i64::from_le_bytes(b).to_string().into_bytes()
        } else {
            u64::from_le_bytes(b).to_string().into_bytes()
        })
    };
    match encoding {
        "str" | "bytes" | "str_int" | "str_decimal" => Some(v.to_vec()),
        "int" | "int8" | "int16" | "int32" | "int64" => int(true),
        "uint8" | "uint16" | "uint32" | "uint64" => int(false),
        _ => None,
    }
}

/// Scans an MDS dataset into a catalog (see the module docs).
pub(crate) fn scan(
    root: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
    cancel: &Cancel<'_>,
) -> Result<(MdsSource, Catalog)> {
    let index_path = root.join("index.json");
    let text = fs::read(&index_path).map_err(|e| Error::io(&index_path, "read", e))?;
    let bad = |what: String| Error::input(&index_path, format!("{what}; not an MDS index"));
    let index: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("{e}")))?;
    let list = index
        .get("shards")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"shards\" list".into()))?;
    if list.is_empty() {
        return Err(Error::input(
            &index_path,
            "lists no shards; nothing to pack",
        ));
    }
    let labels = match opts.labels {
        LabelMode::ImageFolder => Labels::ImageFolder,
        LabelMode::None => Labels::Given,
    };
    let total: u64 = list
        .iter()
        .map(|s| s.get("samples").and_then(Value::as_u64).unwrap_or(0))
        .sum();
    let width = total.saturating_sub(1).to_string().len().max(6);
    let mut b = CatalogBuilder::new(labels);
    let mut shards = Vec::new();
    let mut columns_seen: Option<(Vec<String>, Vec<String>)> = None;
    let mut unchecked: Vec<String> = Vec::new();
    let mut number = 0u64;
    for (si, sh) in list.iter().enumerate() {
        cancel.stop()?;
        let field = |k: &str| sh.get(k);
        let fmt = field("format").and_then(Value::as_str).unwrap_or("");
        if fmt != "mds" {
            return Err(Error::input(
                &index_path,
                format!("shard {si} has format {fmt:?}; shardpack reads MDS shards (\"mds\") only"),
            ));
        }
        let strings = |k: &str| -> Result<Vec<String>> {
            field(k)
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| bad(format!("shard {si} has no list of strings {k:?}")))
        };
        let names = strings("column_names")?;
        let encodings = strings("column_encodings")?;
        let sizes: Vec<Option<u64>> = field("column_sizes")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(Value::as_u64).collect())
            .ok_or_else(|| bad(format!("shard {si} has no \"column_sizes\"")))?;
        if names.len() != encodings.len() || names.len() != sizes.len() || names.is_empty() {
            return Err(bad(format!(
                "shard {si}'s column names, encodings and sizes differ in number"
            )));
        }
        for (n, e) in names.iter().zip(&encodings) {
            if !known_encoding(e) {
                return Err(Error::input(
                    &index_path,
                    format!(
                        "column {n:?} of shard {si} has the encoding {e:?}, which is not one MDS \
                         writes (known: {}, ndarray[:dtype[:shape]])",
                        ENCODINGS.join(", ")
                    ),
                ));
            }
        }
        match &columns_seen {
            None => columns_seen = Some((names.clone(), encodings.clone())),
            Some((n, e)) if *n == names && *e == encodings => {}
            Some(_) => {
                return Err(bad(format!(
                    "shard {si} has other columns than shard 0; shardpack packs one schema"
                )))
            }
        }
        let compression = field("compression").and_then(Value::as_str);
        let raw_name = field("raw_data")
            .and_then(|r| r.get("basename"))
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("shard {si} has no raw_data.basename")))?;
        let (path, zstd) = match compression {
            None => (shard_path(root, raw_name)?, false),
            Some(c) if c == "zstd" || c.starts_with("zstd:") => {
                let zip = field("zip_data")
                    .and_then(|r| r.get("basename"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("shard {si} has no zip_data.basename")))?;
                (shard_path(root, zip)?, true)
            }
            Some(c) => {
                let zip = field("zip_data")
                    .and_then(|r| r.get("basename"))
                    .and_then(Value::as_str)
                    .unwrap_or(raw_name);
                return Err(Error::input(
                    shard_path(root, zip)?,
                    format!(
                        "is compressed with {c:?}; shardpack reads uncompressed and zstd MDS \
                         shards: write the dataset with MDSWriter(compression='zstd') or None"
                    ),
                ));
            }
        };
        let stored = fs::read(&path).map_err(|e| Error::io(&path, "read", e))?;
        let raw = if zstd {
            unchecked.extend(check_hashes(
                &path,
                "its",
                field("zip_data").and_then(|z| z.get("hashes")),
                &stored,
            )?);
            zstd::stream::decode_all(&stored[..])
                .map_err(|e| Error::input(&path, format!("not a valid zstd stream: {e}")))?
        } else {
            stored
        };
        unchecked.extend(check_hashes(
            &path,
            if zstd { "its decompressed" } else { "its" },
            field("raw_data").and_then(|z| z.get("hashes")),
            &raw,
        )?);
        let shard_err = |what: String| {
            Error::input(
                &path,
                format!("{what}: the MDS shard is damaged or truncated"),
            )
        };
        let n = u32_at(&raw, 0).ok_or_else(|| shard_err("shorter than its header".into()))?;
        if let Some(want) = field("samples").and_then(Value::as_u64) {
            if want != n as u64 {
                return Err(shard_err(format!(
                    "holds {n} samples, index.json says {want}"
                )));
            }
        }
        let key_col = match &opts.source.key_column {
            None => None,
            Some(k) => Some(names.iter().position(|n| n == k).ok_or_else(|| {
                Error::Options(format!(
                    "--key-column {k:?} is not a column of the MDS dataset (columns: {})",
                    names.join(", ")
                ))
            })?),
        };
        let mut members: Vec<Member> = Vec::with_capacity(names.len());
        for i in 0..n as usize {
            if i % 1024 == 0 {
                cancel.stop()?;
            }
            let (start, end) = match (u32_at(&raw, 4 + 4 * i), u32_at(&raw, 8 + 4 * i)) {
                (Some(a), Some(z)) if a <= z && z as usize <= raw.len() => (a as u64, z as u64),
                _ => return Err(shard_err(format!("sample {i} has bad offsets"))),
            };
            let mut at = start;
            let mut col_sizes = Vec::with_capacity(sizes.len());
            for s in &sizes {
                match s {
                    Some(s) => col_sizes.push(*s),
                    None => {
                        let v = u32_at(&raw, at as usize)
                            .filter(|_| at + 4 <= end)
                            .ok_or_else(|| shard_err(format!("sample {i} ends in its sizes")))?;
                        col_sizes.push(v as u64);
                        at += 4;
                    }
                }
            }
            members.clear();
            for &s in &col_sizes {
                members.push(Member {
                    field: 0,
                    file: si as u32,
                    size: s,
                    offset: at,
                });
                at += s;
            }
            if at != end {
                return Err(shard_err(format!(
                    "sample {i}'s columns take {} bytes, its offsets give {}",
                    at - start,
                    end - start
                )));
            }
            let key = match key_col {
                None => format!("{number:0width$}").into_bytes(),
                Some(c) => {
                    let m = members[c];
                    let v = &raw[m.offset as usize..(m.offset + m.size) as usize];
                    key_of(&encodings[c], v).ok_or_else(|| {
                        Error::Options(format!(
                            "--key-column {:?} has the encoding {:?}; keys come from str, bytes \
                             or integer columns",
                            names[c], encodings[c]
                        ))
                    })?
                }
            };
            b.push(
                &key,
                None,
                names
                    .iter()
                    .map(|n| n.as_bytes())
                    .zip(members.iter().copied()),
            )?;
            number += 1;
            if number % 4096 == 0 {
                progress.walking(number * names.len() as u64);
            }
        }
        shards.push(Shard { path, zstd });
    }
    progress.walking(number * columns_seen.as_ref().map_or(0, |c| c.0.len()) as u64);
    if b.is_empty() {
        return Err(Error::input(root, "the MDS dataset holds no samples"));
    }
    let mut cat = b.finish();
    if let Some((a, z)) = cat.duplicate_key() {
        return Err(Error::input(
            root,
            format!(
                "samples {a} and {z} have the same key {:?} (from --key-column); shardpack keys \
                 must be unique: choose a column with unique values, or no --key-column (the \
                 sample number)",
                lossy(cat.key(a))
            ),
        ));
    }
    unchecked.sort();
    unchecked.dedup();
    if !unchecked.is_empty() {
        cat.notes.push(format!(
            "MDS hashes not checked (algorithms shardpack does not compute): {}",
            unchecked.join(", ")
        ));
    }
    let (names, encodings) = columns_seen.expect("one shard at least");
    let cols: Map<String, Value> = names
        .into_iter()
        .zip(encodings)
        .map(|(n, e)| (n, json!(e)))
        .collect();
    let mut src = Map::new();
    src.insert("format".into(), json!("mds"));
    src.insert("shards".into(), json!(shards.len()));
    src.insert("columns".into(), Value::Object(cols));
    src.insert("key_column".into(), json!(opts.source.key_column));
    cat.options.insert("source".into(), Value::Object(src));
    Ok((
        MdsSource {
            root: root.to_path_buf(),
            files: if shards.len() <= super::wds::CACHED_FILES {
                (0..shards.len()).map(|_| OnceLock::new()).collect()
            } else {
                Vec::new()
            },
            shards,
            current: Mutex::new(None),
        },
        cat,
    ))
}

/// SHA-256 (FIPS 180-4), for index.json's `sha256` hashes.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for chunk in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (x, b) in w.iter_mut().zip(chunk.chunks_exact(4)) {
            *x = u32::from_be_bytes(b.try_into().expect("4 bytes"));
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for (&k, &wi) in K.iter().zip(&w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(k)
                .wrapping_add(wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// SHA-256 of `data` in hex (tests and the CLI's checks use it).
pub fn sha256_hex(data: &[u8]) -> String {
    sha256(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(
            sha256_hex(&long),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
    }

    #[test]
    fn keys_from_columns() {
        assert_eq!(key_of("int", &5i64.to_le_bytes()).unwrap(), b"5");
        assert_eq!(key_of("int", &(-2i64).to_le_bytes()).unwrap(), b"-2");
        assert_eq!(key_of("uint8", &[200]).unwrap(), b"200");
        assert_eq!(key_of("int8", &[0xff]).unwrap(), b"-1");
        assert_eq!(key_of("str", b"a/b").unwrap(), b"a/b");
        assert!(key_of("float32", &[0; 4]).is_none());
        assert!(known_encoding("ndarray:int32:3,4"));
        assert!(!known_encoding("avif"));
    }
}

//! WebDataset tar shards as a source.
//!
//! Grouping follows webdataset's own reader (`tariterators.py`: `tar_file_iterator`,
//! `base_plus_ext`, `group_by_keys`), checked against its test tars:
//!
//! - Only regular members count. Members whose name has no `/` and starts and ends with `__`,
//!   or whose first path segment is `__...__` (webdataset's `skip_meta`), are passed over as
//!   metadata, silently, as webdataset does. Directories are passed over silently; links and
//!   other special members are listed as skipped.
//! - A member's name splits into key and field as webdataset's
//!   `^((?:.*/|)[^.]+)[.]([^/]*)$`: the key is the folder part plus the base name up to its
//!   first dot, the field everything after that dot, so `a/b.seg.png` is key `a/b`, field
//!   `seg.png` (a multi-dot extension stays one field). A name the pattern does not match (no
//!   dot, or only a leading one) gives no sample: it is listed as skipped.
//! - Fields are lower-cased (webdataset's `lcase=True`: Unicode lower case for UTF-8 names,
//!   ASCII for others).
//! - A sample is a run of consecutive members with the same key, within one shard. A field
//!   twice in one sample is an error (webdataset raises `duplicate file name`); a key that
//!   appears again later, in the same shard or another, is an error naming both places (in
//!   webdataset it would be a second sample with the same key; shardpack keys are unique).
//! - Labels: `--labels imagefolder` takes the key's first folder as for trees, `--labels none`
//!   gives none, and [`SourceOptions::cls_labels`](super::SourceOptions::cls_labels) reads each
//!   sample's `.cls` member (an integer in text, as webdataset writes it), which every sample
//!   must have; the `.cls` member stays a field too.
//!
//! Members are read straight from the tar, never extracted to disk. An uncompressed `.tar` is
//! read with positioned reads (random access: the pack shuffles as for a tree). A gzip tar
//! (`.tar.gz`, `.tgz`, detected by its magic bytes; needs the `gzip` feature) is one stream:
//! the scan decompresses it once to list its members, the trials and the pack read it again
//! in order, and the samples keep the source order (see the `source` module docs). bzip2, xz
//! and zstd tars are refused, naming the file.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
#[cfg(feature = "gzip")]
use std::sync::Mutex;
use std::sync::OnceLock;

use serde_json::json;

use crate::compile::{Cancel, LabelMode, PackOptions, Progress};
use crate::error::{Error, Result};
use crate::format::NO_LABEL;
use crate::manifest::{Name, Skipped};

use super::tar::{FileInput, Kind, TarReader};
#[cfg(feature = "gzip")]
use super::tar::{StreamInput, TarInput};
use super::{
    lossy, read_exact_at, Access, Catalog, CatalogBuilder, Labels, Member, MemberRef, Source,
};

/// Shards whose files stay open for positioned reads; above this, each read opens its file.
pub(crate) const CACHED_FILES: usize = 512;

/// Splits a member name as webdataset's `base_plus_ext` does: `Some((key_end, field_start))`.
pub fn base_plus_ext(name: &[u8]) -> Option<(usize, usize)> {
    // `(?:.*/|)` ends just after a `/` (greedy: the last one first, then earlier ones, then
    // empty), and `.` does not match a newline, so it cannot reach past the first one.
    let newline = name.iter().position(|&b| b == b'\n').unwrap_or(name.len());
    let mut starts: Vec<usize> = name[..newline]
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| i + 1)
        .collect();
    starts.reverse();
    starts.push(0);
    for s in starts {
        // `[^.]+[.]`: at least one non-dot, up to the first dot after `s`.
        let Some(d) = name[s..].iter().position(|&b| b == b'.').map(|d| s + d) else {
            continue;
        };
        if d == s {
            continue;
        }
        // `([^/]*)$`
        if name[d + 1..].contains(&b'/') {
            continue;
        }
        return Some((d, d + 1));
    }
    None
}

/// Whether webdataset passes over the member as metadata.
fn is_meta(name: &[u8]) -> bool {
    if !name.contains(&b'/') && name.starts_with(b"__") && name.ends_with(b"__") {
        return true;
    }
    // skip_meta = r"__[^/]*__($|/)" with re.match: the first segment is `__X__`.
    let seg = name.split(|&b| b == b'/').next().unwrap_or(name);
    seg.len() >= 4 && seg.starts_with(b"__") && seg.ends_with(b"__")
}

fn lowercase(field: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(field) {
        Ok(s) => s.to_lowercase().into_bytes(),
        Err(_) => field.to_ascii_lowercase(),
    }
}

/// How a shard file is compressed, from its first bytes.
fn compression(path: &Path) -> Result<bool> {
    let mut f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut magic = [0u8; 6];
    let mut got = 0;
    while got < magic.len() {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(Error::io(path, "read", e)),
        }
    }
    let m = &magic[..got];
    let refuse = |what: &str| {
        Err(Error::input(
            path,
            format!(
                "is a {what}-compressed tar, which shardpack does not read; decompress it \
                 (or recompress with gzip) first"
            ),
        ))
    };
    if m.starts_with(&[0x1f, 0x8b]) {
        return Ok(true);
    }
    if m.starts_with(b"BZh") {
        return refuse("bzip2");
    }
    if m.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return refuse("xz");
    }
    if m.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return refuse("zstd");
    }
    Ok(false)
}

#[cfg(feature = "gzip")]
type GzStream = StreamInput<flate2::read::MultiGzDecoder<BufReader<File>>>;

#[cfg(feature = "gzip")]
fn open_gz(path: &Path) -> Result<GzStream> {
    let f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    Ok(StreamInput(flate2::read::MultiGzDecoder::new(
        BufReader::with_capacity(1 << 20, f),
    )))
}

/// The cursor of a gzip shard being read in order.
#[cfg(feature = "gzip")]
struct Cursor {
    shard: u32,
    stream: GzStream,
    pos: u64,
}

/// WebDataset shards being packed (see the module docs).
pub struct WdsSource {
    root: PathBuf,
    shards: Vec<PathBuf>,
    /// Each shard's name in skip entries: relative to the folder given, else its file name.
    names: Vec<Vec<u8>>,
    gz: Vec<bool>,
    files: Vec<OnceLock<std::result::Result<File, String>>>,
    #[cfg(feature = "gzip")]
    cursor: Mutex<Option<Cursor>>,
}

impl std::fmt::Debug for WdsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WdsSource")
            .field("root", &self.root)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl WdsSource {
    fn file(&self, shard: u32) -> std::result::Result<Option<&File>, String> {
        let Some(cell) = self.files.get(shard as usize) else {
            return Ok(None);
        };
        let path = &self.shards[shard as usize];
        cell.get_or_init(|| File::open(path).map_err(|e| format!("cannot open: {e}")))
            .as_ref()
            .map(Some)
            .map_err(Clone::clone)
    }

    fn member_name(m: &MemberRef<'_>) -> String {
        let mut n = m.key.to_vec();
        n.push(b'.');
        n.extend_from_slice(m.field);
        lossy(&n)
    }

    #[cfg(feature = "gzip")]
    fn read_gz(&self, m: &MemberRef<'_>) -> std::result::Result<Vec<u8>, String> {
        let mut guard = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let shard = m.member.file;
        let reuse = guard
            .as_ref()
            .is_some_and(|c| c.shard == shard && c.pos <= m.member.offset);
        if !reuse {
            let stream =
                open_gz(&self.shards[shard as usize]).map_err(|e| format!("cannot open: {e}"))?;
            *guard = Some(Cursor {
                shard,
                stream,
                pos: 0,
            });
        }
        let c = guard.as_mut().expect("set above");
        let gap = m.member.offset - c.pos;
        // On any error the cursor's position is unknown: drop it.
        let result = (|| {
            c.stream.skip(gap)?;
            let n = usize::try_from(m.member.size).map_err(std::io::Error::other)?;
            let mut v = vec![0u8; n];
            c.stream.read_exact(&mut v)?;
            Ok::<_, std::io::Error>(v)
        })();
        match result {
            Ok(v) => {
                c.pos = m.member.offset + m.member.size;
                Ok(v)
            }
            Err(e) => {
                *guard = None;
                Err(format!("cannot read the gzip stream: {e}"))
            }
        }
    }
}

impl Source for WdsSource {
    fn access(&self) -> Access {
        if self.gz.iter().any(|&g| g) {
            Access::Sequential
        } else {
            Access::Random
        }
    }

    fn read(&self, m: &MemberRef<'_>) -> std::result::Result<Vec<u8>, String> {
        let shard = m.member.file;
        if self.gz[shard as usize] {
            #[cfg(feature = "gzip")]
            return self.read_gz(m);
            #[cfg(not(feature = "gzip"))]
            return Err("gzip support is not built in (feature `gzip`)".into());
        }
        let n = usize::try_from(m.member.size).map_err(|_| "member too large for this platform")?;
        let mut v = vec![0u8; n];
        let r = match self.file(shard)? {
            Some(f) => read_exact_at(f, &mut v, m.member.offset),
            None => File::open(&self.shards[shard as usize])
                .and_then(|f| read_exact_at(&f, &mut v, m.member.offset)),
        };
        r.map_err(|e| format!("cannot read: {e}"))?;
        Ok(v)
    }

    fn open(&self, m: &MemberRef<'_>) -> std::result::Result<Box<dyn Read + Send + '_>, String> {
        let shard = m.member.file;
        if self.gz[shard as usize] {
            return Ok(Box::new(std::io::Cursor::new(self.read(m)?)));
        }
        let (pos, end) = (m.member.offset, m.member.offset + m.member.size);
        match self.file(shard)? {
            Some(file) => Ok(Box::new(super::RangeReader { file, pos, end })),
            None => {
                use std::io::{Seek, SeekFrom};
                let mut f = File::open(&self.shards[shard as usize])
                    .map_err(|e| format!("cannot open: {e}"))?;
                f.seek(SeekFrom::Start(pos))
                    .map_err(|e| format!("cannot read: {e}"))?;
                Ok(Box::new(f.take(m.member.size)))
            }
        }
    }

    fn path(&self, m: &MemberRef<'_>) -> PathBuf {
        self.shards[m.member.file as usize].clone()
    }

    fn error(&self, m: &MemberRef<'_>, reason: String) -> Error {
        Error::input(
            self.path(m),
            format!("member {}: {reason}", Self::member_name(m)),
        )
    }

    fn skip_name(&self, m: &MemberRef<'_>) -> Vec<u8> {
        let mut n = self.names[m.member.file as usize].clone();
        n.push(b':');
        n.extend_from_slice(Self::member_name(m).as_bytes());
        n
    }

    fn root(&self) -> &Path {
        &self.root
    }
}

/// A sample being grouped.
struct Pending {
    key: Vec<u8>,
    shard: u32,
    members: Vec<(Vec<u8>, Member)>,
    label: Option<u32>,
}

/// Scans the shards in order into a catalog (see the module docs for the rules).
pub(crate) fn scan(
    root: &Path,
    shards: &[PathBuf],
    opts: &PackOptions,
    progress: &dyn Progress,
    cancel: &Cancel<'_>,
) -> Result<(WdsSource, Catalog)> {
    if shards.len() > u32::MAX as usize {
        return Err(Error::input(root, "more than 4 billion shards"));
    }
    let cls = opts.source.cls_labels;
    let labels = if !cls && opts.labels == LabelMode::ImageFolder {
        Labels::ImageFolder
    } else {
        Labels::Given
    };
    let names: Vec<Vec<u8>> = shards
        .iter()
        .map(|p| {
            let rel = if root.is_dir() {
                p.strip_prefix(root).ok()
            } else {
                None
            };
            let rel = rel.unwrap_or_else(|| p.file_name().map_or(p.as_path(), Path::new));
            rel.to_string_lossy().into_owned().into_bytes()
        })
        .collect();
    let mut gz = Vec::with_capacity(shards.len());
    let mut b = CatalogBuilder::new(labels);
    let mut sample_shard: Vec<u32> = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut members = 0u64;
    for (si, path) in shards.iter().enumerate() {
        cancel.stop()?;
        let is_gz = compression(path)?;
        gz.push(is_gz);
        let si = si as u32;
        let mut cur: Option<Pending> = None;
        let mut flush = |cur: &mut Option<Pending>, b: &mut CatalogBuilder| -> Result<()> {
            if let Some(p) = cur.take() {
                if cls && p.label.is_none() {
                    return Err(Error::input(
                        path,
                        format!(
                            "sample {} has no .cls member, and labels from .cls need one in \
                             every sample; pass --labels none or imagefolder instead",
                            lossy(&p.key)
                        ),
                    ));
                }
                b.push(
                    &p.key,
                    p.label,
                    p.members.iter().map(|(f, m)| (f.as_slice(), *m)),
                )?;
                sample_shard.push(p.shard);
            }
            Ok(())
        };
        let mut on_entry = |tar_err: &dyn Fn(String) -> Error,
                            entry: super::tar::Entry,
                            data: &mut dyn FnMut() -> std::result::Result<Vec<u8>, String>,
                            cur: &mut Option<Pending>,
                            b: &mut CatalogBuilder|
         -> Result<()> {
            let name = entry.name;
            match entry.kind {
                Kind::Dir => return Ok(()),
                Kind::Other(t) => {
                    let mut n = names[si as usize].clone();
                    n.push(b':');
                    n.extend_from_slice(&name);
                    skipped.push(Skipped {
                        path: Name(n),
                        reason: format!("not a regular file (tar member type {:?})", char::from(t)),
                    });
                    return Ok(());
                }
                Kind::File => {}
            }
            if is_meta(&name) {
                return Ok(());
            }
            let Some((ke, fs)) = base_plus_ext(&name) else {
                let mut n = names[si as usize].clone();
                n.push(b':');
                n.extend_from_slice(&name);
                skipped.push(Skipped {
                    path: Name(n),
                    reason: "no extension: webdataset's rule (key = the name up to the first \
                             dot of its base name) gives it no field, so it belongs to no sample"
                        .into(),
                });
                return Ok(());
            };
            let key = &name[..ke];
            let field = lowercase(&name[fs..]);
            if cur.as_ref().is_none_or(|p| p.key != key) {
                flush(cur, b)?;
                *cur = Some(Pending {
                    key: key.to_vec(),
                    shard: si,
                    members: Vec::new(),
                    label: None,
                });
            }
            let p = cur.as_mut().expect("set above");
            if p.members.iter().any(|(f, _)| *f == field) {
                return Err(tar_err(format!(
                    "member {}: sample {} has field {:?} twice (webdataset refuses this too: \
                     duplicate file name in tar file); rename one of them",
                    lossy(&name),
                    lossy(key),
                    lossy(&field)
                )));
            }
            if cls && field == b"cls" {
                let d = data().map_err(tar_err)?;
                let label = std::str::from_utf8(&d)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .filter(|&l| l != NO_LABEL)
                    .ok_or_else(|| {
                        tar_err(format!(
                            "member {}: a .cls member must hold a class number below {NO_LABEL} \
                             as text, not {:?}",
                            lossy(&name),
                            lossy(&d[..d.len().min(40)])
                        ))
                    })?;
                p.label = Some(label);
            }
            p.members.push((
                field,
                Member {
                    field: 0,
                    file: si,
                    size: entry.size,
                    offset: entry.offset,
                },
            ));
            members += 1;
            if members % 4096 == 0 {
                progress.walking(members);
            }
            Ok(())
        };
        let what = if is_gz { "gzip-compressed tar" } else { "tar" };
        let tar_err = |e: String| Error::input(path, e);
        let read_err = |e: String| Error::input(path, format!("reading it as a {what}: {e}"));
        macro_rules! walk {
            ($reader:expr) => {{
                let mut r = $reader;
                let mut entries = 0u64;
                loop {
                    entries += 1;
                    if entries % 1024 == 0 {
                        cancel.stop()?;
                    }
                    let Some(entry) = r.next_entry().map_err(read_err)? else {
                        break;
                    };
                    let mut data = || r.read_data();
                    let mut data_fn: &mut dyn FnMut() -> std::result::Result<Vec<u8>, String> =
                        &mut data;
                    on_entry(&tar_err, entry, &mut data_fn, &mut cur, &mut b)?;
                }
            }};
        }
        if is_gz {
            #[cfg(feature = "gzip")]
            walk!(TarReader::new(open_gz(path)?));
            #[cfg(not(feature = "gzip"))]
            return Err(Error::input(
                path,
                "is gzip-compressed, and this build of shardpack has no gzip support (the \
                 library's `gzip` feature; the shardpack command has it)",
            ));
        } else {
            let f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
            let len = f.metadata().map_err(|e| Error::io(path, "stat", e))?.len();
            walk!(TarReader::new(FileInput {
                inner: BufReader::with_capacity(64 << 10, f),
                pos: 0,
                len,
            }));
        }
        flush(&mut cur, &mut b)?;
    }
    progress.walking(members);
    if b.is_empty() {
        return Err(Error::input(
            root,
            format!(
                "the WebDataset shards hold no samples ({} members skipped); nothing to pack",
                skipped.len()
            ),
        ));
    }
    if !opts.skip_errors {
        crate::compile::check_skipped_share(root, &skipped, members as usize, opts, true)?;
    }
    let mut cat = b.finish();
    if let Some((a, z)) = cat.duplicate_key() {
        let key = lossy(cat.key(a));
        let (sa, sz) = (sample_shard[a] as usize, sample_shard[z] as usize);
        let first = if sa == sz {
            "earlier in the same shard".to_string()
        } else {
            format!("first in {}", shards[sa].display())
        };
        return Err(Error::input(
            &shards[sz],
            format!(
                "sample key {key:?} appears again ({first}): WebDataset samples are runs of \
                 consecutive members with one key, and shardpack keys must be unique; rename \
                 the members of one of them, or put each sample's members together"
            ),
        ));
    }
    cat.skipped = skipped;
    let mut src = serde_json::Map::new();
    src.insert("format".into(), json!("webdataset"));
    src.insert("shards".into(), json!(shards.len()));
    src.insert("cls_labels".into(), json!(cls));
    cat.options
        .insert("source".into(), serde_json::Value::Object(src));
    let cache = shards.len() <= CACHED_FILES;
    let files = if cache {
        (0..shards.len()).map(|_| OnceLock::new()).collect()
    } else {
        Vec::new()
    };
    Ok((
        WdsSource {
            root: root.to_path_buf(),
            shards: shards.to_vec(),
            names,
            gz,
            files,
            #[cfg(feature = "gzip")]
            cursor: Mutex::new(None),
        },
        cat,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: &str) -> Option<(String, String)> {
        base_plus_ext(n.as_bytes()).map(|(k, f)| (n[..k].to_string(), n[f..].to_string()))
    }

    #[test]
    fn names_split_as_webdataset_does() {
        let s = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(split("000123.jpg"), s("000123", "jpg"));
        assert_eq!(split("a/b.seg.png"), s("a/b", "seg.png"));
        assert_eq!(split("x.y/z.name.txt"), s("x.y/z", "name.txt"));
        assert_eq!(split("./000.jpg"), s("./000", "jpg"));
        assert_eq!(split("README"), None);
        assert_eq!(split(".hidden"), None);
        assert_eq!(split("a.b/c"), None);
        // Backtracking: `[^.]+` may hold a `/`.
        assert_eq!(split("a/b/.hidden"), s("a/b/", "hidden"));
        assert_eq!(split("x/.a.b"), s("x/", "a.b"));
        assert_eq!(split("a..b"), s("a", ".b"));
        assert!(is_meta(b"__meta__"));
        assert!(is_meta(b"__a__/x.txt"));
        assert!(is_meta(b"___"));
        assert!(!is_meta(b"__a__b"));
        assert!(!is_meta(b"x/__a__"));
        assert_eq!(lowercase(b"JPG"), b"jpg");
        assert_eq!(lowercase(b"Name.TXT"), b"name.txt");
    }
}

//! A folder tree as a source: the sorted walk, the grouping of files into samples (the
//! WebDataset convention: in one folder, files sharing a name up to the first dot, or the last
//! with [`KeyMode::LastDot`]), ImageFolder classes, and reading each member from its file.
//!
//! The catalog's order is the files sorted by (key, field); output is byte-identical to the
//! compiler before sources had their own module (the golden fixtures prove it).

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::compile::{
    check_skipped_share, Cancel, KeyMode, LabelMode, PackOptions, Progress, SymlinkPolicy,
};
use crate::error::{Error, Result};
use crate::manifest::{Name, Skipped};

use super::{lossy, Catalog, CatalogBuilder, Labels, Member, MemberRef, Source};

// ---------------------------------------------------------------------------------------------
// Paths as bytes
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
fn os_to_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_to_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

/// The path `root/rel` where `rel` is `/`-separated raw bytes.
#[cfg(unix)]
pub fn join_bytes(root: &Path, rel: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    root.join(std::ffi::OsStr::from_bytes(rel))
}

/// The path `root/rel` where `rel` is `/`-separated raw bytes.
#[cfg(not(unix))]
pub fn join_bytes(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(String::from_utf8_lossy(rel).as_ref())
}

// ---------------------------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------------------------

/// One input file: its relative path lives in the arena at `path`; `key_end` and
/// `field_start` split it into key and field.
#[derive(Debug, Clone, Copy)]
struct FileEnt {
    path_off: u64,
    path_len: u32,
    key_len: u32,
    field_start: u32,
    size: u64,
    /// Permission bits (`st_mode & 0o7777`; 0 where the platform has none).
    mode: u32,
}

struct Tree {
    arena: Vec<u8>,
    files: Vec<FileEnt>,
    skipped: Vec<Skipped>,
    /// The folders at the first level (the class folders under ImageFolder labels).
    class_dirs: Vec<Vec<u8>>,
    /// Folders with nothing in them (relative paths, in walk order): a dataset holds files
    /// only, so pack says it leaves them out.
    empty_dirs: Vec<Vec<u8>>,
}

/// A file's permission bits, as [`FileEnt::mode`] keeps them.
fn mode_bits(m: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o7777
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        0
    }
}

/// The manifest option `file_modes` (`format-spec/manifest.md` section 2.5) for the files of
/// `tree`: the permission bits of every file with an execute bit, as an object from the mode
/// (four octal digits) to the sorted paths that have it. `None` when no file is executable,
/// so a tree without one packs to the bytes it always did. Only files with an execute bit are
/// listed: that is the bit a round trip must not lose (a script, `bin/rustc`), it is what git
/// keeps (so a checkout packs the same on every machine, whatever its umask), and other files
/// get the extracting user's default mode.
fn file_modes(tree: &Tree) -> Option<serde_json::Value> {
    let mut by_mode: std::collections::BTreeMap<u32, Vec<&[u8]>> = Default::default();
    for f in &tree.files {
        if f.mode & 0o111 != 0 {
            by_mode.entry(f.mode).or_default().push(tree.path(f));
        }
    }
    if by_mode.is_empty() {
        return None;
    }
    let mut obj = serde_json::Map::new();
    for (mode, mut paths) in by_mode {
        paths.sort_unstable();
        let names: Vec<serde_json::Value> = paths
            .into_iter()
            .map(|p| serde_json::to_value(Name(p.to_vec())).expect("a name serializes"))
            .collect();
        obj.insert(format!("{mode:04o}"), serde_json::Value::Array(names));
    }
    Some(serde_json::Value::Object(obj))
}

impl Tree {
    fn path(&self, f: &FileEnt) -> &[u8] {
        &self.arena[f.path_off as usize..f.path_off as usize + f.path_len as usize]
    }
    fn key(&self, f: &FileEnt) -> &[u8] {
        &self.path(f)[..f.key_len as usize]
    }
    fn field(&self, f: &FileEnt) -> &[u8] {
        &self.path(f)[f.field_start as usize..]
    }
}

/// Splits a file name into (key part length, field start) per the key mode. A name without a
/// dot, or whose suffix would be empty (`a.`), is all key with the empty field, which keeps the
/// name -> (key, field) mapping one-to-one so every tree round-trips.
/// [`KeyMode::Auto`] splits at the first dot here (the walk may re-split, see [`choose_key`]).
pub(crate) fn split_name(name: &[u8], mode: KeyMode) -> (usize, usize) {
    let dot = match mode {
        KeyMode::Auto | KeyMode::FirstDot => name.iter().position(|&c| c == b'.'),
        KeyMode::LastDot => name.iter().rposition(|&c| c == b'.'),
        KeyMode::Whole => None,
    };
    match dot {
        Some(d) if d + 1 < name.len() => (d, d + 1),
        _ => (name.len(), name.len()),
    }
}

/// Where a relative path's last component splits ([`split_name`]): (key length, field start),
/// counted from the start of the path (the directories belong to the key).
fn split_path(rel: &[u8], mode: KeyMode) -> (u32, u32) {
    let name_start = rel.iter().rposition(|&c| c == b'/').map_or(0, |p| p + 1);
    let (k, f) = split_name(&rel[name_start..], mode);
    ((name_start + k) as u32, (name_start + f) as u32)
}

/// The most distinct fields a tree may split into. Thousands of field names are a sign that the
/// key rule cuts names in the wrong place (every field gets a table entry in every shard and a
/// line in `info`); the error names `--key`.
pub const MAX_FIELDS: usize = 4096;

/// What a key mode makes of the tree's names: samples (counted as runs of one key in walk
/// order, which groups every key that the sort keeps together: all of them for first-dot and
/// whole names), distinct fields, and the fields that occur in one sample only.
struct Split {
    samples: u64,
    fields: usize,
    single: usize,
}

impl Tree {
    fn resplit(&mut self, mode: KeyMode) {
        for f in &mut self.files {
            let path = &self.arena[f.path_off as usize..f.path_off as usize + f.path_len as usize];
            (f.key_len, f.field_start) = split_path(path, mode);
        }
    }

    fn split_stats(&self) -> Split {
        let mut fields: std::collections::HashMap<&[u8], u64> = Default::default();
        let mut samples = 0u64;
        let mut last: Option<&[u8]> = None;
        for f in &self.files {
            let key = self.key(f);
            if last != Some(key) {
                samples += 1;
                last = Some(key);
            }
            *fields.entry(self.field(f)).or_default() += 1;
        }
        Split {
            samples,
            fields: fields.len(),
            single: fields.values().filter(|&&n| n == 1).count(),
        }
    }
}

/// Whether a split groups the tree sensibly: few distinct fields, or fields that recur and
/// are not more than [`AUTO_MAX_FIELDS`]. Many fields that mostly occur once
/// (`struct.Foo.html`, `frame.00001`) mean the rule cuts names in the wrong place, and so do
/// thousands of fields even when each recurs (a Rust toolchain's documentation: 16,043 fields
/// such as `Iter.html`, each in several modules' `struct` samples).
fn fits(s: &Split) -> bool {
    s.fields <= 64 || (2 * s.single <= s.fields && s.fields <= AUTO_MAX_FIELDS)
}

/// The most fields [`KeyMode::Auto`] accepts from a split (an explicit `--key` allows up to
/// [`MAX_FIELDS`]): a field is a kind of file, and datasets have a few, not thousands.
const AUTO_MAX_FIELDS: usize = 1024;

/// Resolves [`KeyMode::Auto`] on the walked tree (split at the first dot): keeps the first dot
/// when it fits, else the last dot, else whole names; returns the mode used and, when it is
/// not the first dot, the one-line note saying why.
fn choose_key(tree: &mut Tree) -> (KeyMode, Option<String>) {
    let first = tree.split_stats();
    if fits(&first) {
        return (KeyMode::FirstDot, None);
    }
    let mut why = format!(
        "splitting names at the first dot made {} samples with {} distinct fields, {} of them in \
         a single sample",
        first.samples, first.fields, first.single
    );
    if 2 * first.single <= first.fields {
        why.push_str(&format!(
            " (more fields than the {AUTO_MAX_FIELDS} auto accepts)"
        ));
    }
    tree.resplit(KeyMode::LastDot);
    let last = tree.split_stats();
    if fits(&last) {
        return (
            KeyMode::LastDot,
            Some(format!(
                "key: {why}; using the last dot instead ({} samples, {} fields; --key picks a \
         rule)",
                last.samples, last.fields
            )),
        );
    }
    tree.resplit(KeyMode::Whole);
    (
        KeyMode::Whole,
        Some(format!(
            "key: {why}, and the last dot fits no better ({} fields); using whole file names \
         instead, one sample per file (--key picks a rule)",
            last.fields
        )),
    )
}

/// The `/`-separated bytes of `p` relative to the tree root `src`: every path `pack` records
/// (skip entries, reasons, the summary) is of this form, so the output does not depend on how
/// the source was spelled.
fn rel_bytes(src: &Path, p: &Path) -> Vec<u8> {
    let rel = p.strip_prefix(src).unwrap_or(p);
    let mut out = Vec::new();
    for (i, c) in rel.components().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(&os_to_bytes(c.as_os_str()));
    }
    out
}

/// Why the walk could not take `path`: a loop, a dangling link or an I/O error, said without
/// any path outside the tree. `hint` adds what to do (for errors, not for skip entries).
fn walk_error_reason(src: &Path, path: &Path, e: &walkdir::Error, hint: bool) -> String {
    if let Some(anc) = e.loop_ancestor() {
        let to = rel_bytes(src, anc);
        let to = if to.is_empty() {
            "the root of the tree".to_string()
        } else {
            lossy(&to)
        };
        let mut r = format!("symbolic link loop: it leads back to {to}");
        if hint {
            r.push_str("; remove the link, or pack with --symlinks skip");
        }
        return r;
    }
    let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let io = e.io_error();
    if is_link && io.is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) {
        let mut r = "dangling symlink: its target does not exist".to_string();
        if hint {
            r.push_str("; fix or remove the link, pass --symlinks skip, or --skip-errors");
        }
        return r;
    }
    let msg = io.map_or_else(|| e.to_string(), |io| io.to_string());
    let mut r = format!("cannot read: {msg}");
    if hint {
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied) {
            r.push_str("; fix the permissions or pass --skip-errors");
        } else {
            r.push_str("; pass --skip-errors to leave it out");
        }
    }
    r
}

fn walk(
    src: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
    cancel: &Cancel<'_>,
) -> Result<Tree> {
    let mut tree = Tree {
        arena: Vec::new(),
        files: Vec::new(),
        skipped: Vec::new(),
        class_dirs: Vec::new(),
        empty_dirs: Vec::new(),
    };
    // The last folder seen, and its depth, until an entry inside it shows it is not empty
    // (the walk lists a folder's entries right after it).
    let mut open_dir: Option<(Vec<u8>, usize)> = None;
    let policy = opts.symlink_policy();
    let walker = walkdir::WalkDir::new(src)
        .min_depth(1)
        .follow_links(policy == SymlinkPolicy::Follow)
        .sort_by(|a, b| a.file_name().cmp(b.file_name()));
    for entry in walker {
        cancel.stop()?;
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                // Not empty, just unreadable (or holding something unreadable).
                open_dir = None;
                let path = e
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| src.into());
                if opts.skip_errors {
                    tree.skipped.push(Skipped {
                        path: Name(rel_bytes(src, &path)),
                        reason: walk_error_reason(src, &path, &e, false),
                    });
                    continue;
                }
                return Err(Error::input(&path, walk_error_reason(src, &path, &e, true)));
            }
        };
        if let Some((dir, depth)) = open_dir.take() {
            if entry.depth() <= depth {
                tree.empty_dirs.push(dir);
            }
        }
        let ft = entry.file_type();
        let rel = rel_bytes(src, entry.path());
        if ft.is_dir() {
            open_dir = Some((rel.clone(), entry.depth()));
            if entry.depth() == 1 {
                tree.class_dirs.push(rel);
            }
            continue;
        }
        if ft.is_symlink() {
            if policy == SymlinkPolicy::Error {
                return Err(Error::input(
                    entry.path(),
                    "is a symbolic link, and --symlinks error refuses them; pass --symlinks \
                     follow (the default) to pack what links point to, or --symlinks skip",
                ));
            }
            tree.skipped.push(Skipped {
                path: Name(rel),
                reason: "symbolic link not followed (--symlinks skip; --symlinks follow packs \
                         what it points to)"
                    .into(),
            });
            continue;
        }
        if !ft.is_file() {
            tree.skipped.push(Skipped {
                path: Name(rel),
                reason: "not a regular file".into(),
            });
            continue;
        }
        let (size, mode) = match entry.metadata() {
            Ok(m) => (m.len(), mode_bits(&m)),
            Err(e) => {
                let reason = format!(
                    "cannot stat: {}",
                    e.io_error()
                        .map_or_else(|| e.to_string(), |io| io.to_string())
                );
                if opts.skip_errors {
                    tree.skipped.push(Skipped {
                        path: Name(rel),
                        reason,
                    });
                    continue;
                }
                return Err(Error::input(entry.path(), reason));
            }
        };
        if rel.len() > u32::MAX as usize {
            return Err(Error::input(entry.path(), "path too long"));
        }
        let (key_len, field_start) = split_path(&rel, opts.key);
        tree.files.push(FileEnt {
            path_off: tree.arena.len() as u64,
            path_len: rel.len() as u32,
            key_len,
            field_start,
            size,
            mode,
        });
        tree.arena.extend_from_slice(&rel);
        if tree.files.len() % 4096 == 0 {
            progress.walking(tree.files.len() as u64);
        }
    }
    if let Some((dir, _)) = open_dir {
        tree.empty_dirs.push(dir);
    }
    progress.walking(tree.files.len() as u64);
    tree.arena.shrink_to_fit();
    tree.files.shrink_to_fit();
    Ok(tree)
}

/// A folder tree being packed: members are files under `root`.
#[derive(Debug)]
pub struct TreeSource {
    root: PathBuf,
}

impl TreeSource {
    /// The tree at `root`, for reading members a plan lists (without walking it again).
    #[cfg(feature = "compile")]
    pub(crate) fn at(root: PathBuf) -> TreeSource {
        TreeSource { root }
    }

    /// The member's path relative to the root: its key, plus `.` and the field unless the
    /// field is empty (the split is one-to-one, see [`split_name`]).
    fn rel(m: &MemberRef<'_>) -> Vec<u8> {
        let mut p = m.key.to_vec();
        if !m.field.is_empty() {
            p.push(b'.');
            p.extend_from_slice(m.field);
        }
        p
    }
}

/// Reads a whole file, which must still have the size the walk saw.
pub(crate) fn read_one(path: &Path, expected: u64) -> std::result::Result<Vec<u8>, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let cap = usize::try_from(expected).map_err(|_| "file too large for this platform")?;
    let mut buf = Vec::with_capacity(cap.saturating_add(1));
    f.read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 != expected {
        return Err(format!(
            "changed size while being read ({expected} bytes when the tree was scanned, {} when \
             read); make sure nothing writes to the source while packing",
            buf.len()
        ));
    }
    Ok(buf)
}

impl Source for TreeSource {
    fn read(&self, m: &MemberRef<'_>) -> std::result::Result<Vec<u8>, String> {
        read_one(&join_bytes(&self.root, &Self::rel(m)), m.member.size)
    }

    fn open(&self, m: &MemberRef<'_>) -> std::result::Result<Box<dyn Read + Send + '_>, String> {
        let f = File::open(join_bytes(&self.root, &Self::rel(m)))
            .map_err(|e| format!("cannot open: {e}"))?;
        Ok(Box::new(f))
    }

    fn path(&self, m: &MemberRef<'_>) -> PathBuf {
        join_bytes(&self.root, &Self::rel(m))
    }

    fn error(&self, m: &MemberRef<'_>, reason: String) -> Error {
        Error::input(self.path(m), reason)
    }

    fn skip_name(&self, m: &MemberRef<'_>) -> Vec<u8> {
        Self::rel(m)
    }

    fn root(&self) -> &Path {
        &self.root
    }
}

/// Walks the tree at `src` into a catalog. Returns the source, its catalog and the warnings
/// (class folders left without samples, under `skip_errors`).
pub(crate) fn scan(
    src: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
    cancel: &Cancel<'_>,
) -> Result<(TreeSource, Catalog, Vec<String>)> {
    let mut tree = walk(src, opts, progress, cancel)?;
    let mut notes = Vec::new();
    let key_mode = if opts.key == KeyMode::Auto && !tree.files.is_empty() {
        let (mode, note) = choose_key(&mut tree);
        notes.extend(note);
        mode
    } else {
        opts.key
    };
    if tree.files.is_empty() {
        let detail = if tree.skipped.is_empty() {
            "source holds no files; nothing to pack".to_string()
        } else {
            format!(
                "source holds no packable files ({} skipped, e.g. {}: {})",
                tree.skipped.len(),
                tree.skipped[0].path.display(),
                tree.skipped[0].reason
            )
        };
        return Err(Error::input(src, detail));
    }
    if !opts.skip_errors {
        check_skipped_share(src, &tree.skipped, tree.files.len(), opts, true)?;
    }
    if tree.files.len() > u32::MAX as usize {
        return Err(Error::input(
            src,
            "more than 4 billion files; split the tree",
        ));
    }
    let modes = file_modes(&tree);
    if !tree.empty_dirs.is_empty() {
        let n = tree.empty_dirs.len();
        let mut shown: Vec<String> = tree.empty_dirs.iter().take(3).map(|d| lossy(d)).collect();
        if n > shown.len() {
            shown.push("...".into());
        }
        notes.push(format!(
            "left out {n} empty folder{} (a dataset holds files only; extract does not \
             recreate {}): {}",
            if n == 1 { "" } else { "s" },
            if n == 1 { "it" } else { "them" },
            shown.join(", ")
        ));
    }
    let mut files = std::mem::take(&mut tree.files);
    files.sort_unstable_by(|a, b| {
        tree.key(a)
            .cmp(tree.key(b))
            .then_with(|| tree.field(a).cmp(tree.field(b)))
    });
    // Same key and field twice cannot come from one directory listing (the mapping is
    // one-to-one), but a buggy filesystem or a future key rule could; never overwrite.
    for w in files.windows(2) {
        if tree.key(&w[0]) == tree.key(&w[1]) && tree.field(&w[0]) == tree.field(&w[1]) {
            return Err(Error::input(
                join_bytes(src, tree.path(&w[1])),
                format!(
                    "maps to the same key and field as {}; rename one of them",
                    lossy(tree.path(&w[0]))
                ),
            ));
        }
    }
    let labels = match opts.labels {
        LabelMode::ImageFolder => Labels::ImageFolder,
        LabelMode::None => Labels::Given,
    };
    let mut b = CatalogBuilder::new(labels);
    let mut i = 0usize;
    while i < files.len() {
        let key = tree.key(&files[i]);
        let mut j = i + 1;
        while j < files.len() && tree.key(&files[j]) == key {
            j += 1;
        }
        b.push(
            key,
            None,
            files[i..j].iter().map(|f| {
                (
                    tree.field(f),
                    Member {
                        field: 0,
                        file: 0,
                        size: f.size,
                        offset: 0,
                    },
                )
            }),
        )?;
        i = j;
    }
    drop(files);
    let mut cat = b.finish();
    if cat.fields.len() > MAX_FIELDS {
        let example = cat
            .fields
            .iter()
            .find(|f| f.contains(&b'.'))
            .unwrap_or(&cat.fields[0]);
        return Err(Error::input(
            src,
            format!(
                "the names split into {} distinct fields with --key {} (at most {MAX_FIELDS}; \
         e.g. field {:?}): the key rule cuts names in the wrong place for this tree; \
         pass --key last-dot or --key whole (or --key auto, the default, which picks one)",
                cat.fields.len(),
                key_mode.name(),
                lossy(example)
            ),
        ));
    }
    cat.skipped = std::mem::take(&mut tree.skipped);
    cat.options
        .insert("key".into(), serde_json::json!(key_mode.name()));
    if let Some(m) = modes {
        cat.options.insert("file_modes".into(), m);
    }
    cat.notes.extend(notes);

    let mut warnings = Vec::new();
    if opts.labels == LabelMode::ImageFolder {
        // A class folder whose every input was skipped (or that is empty) would silently drop
        // out of the class list and shift every later label id.
        for dir in &tree.class_dirs {
            if cat.classes.binary_search(dir).is_ok() {
                continue;
            }
            let mut prefix = dir.clone();
            prefix.push(b'/');
            let inside = cat
                .skipped
                .iter()
                .filter(|k| k.path.as_bytes().starts_with(&prefix))
                .count();
            let what = if inside == 0 {
                format!("class folder {} is empty", lossy(dir))
            } else {
                format!(
                    "class folder {} has no packable file (all {inside} inputs in it are skipped)",
                    lossy(dir)
                )
            };
            if !opts.skip_errors {
                return Err(Error::input(
                    join_bytes(src, dir),
                    format!(
                        "{what}: a class without samples would vanish from the class list and \
                         shift the label ids; fix or remove the folder, or pass --skip-errors to \
                         pack without it"
                    ),
                ));
            }
            warnings.push(format!("{what}; it is not in the class list"));
        }
    }
    Ok((
        TreeSource {
            root: src.to_path_buf(),
        },
        cat,
        warnings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_one_to_one() {
        let f = |n: &str, m| {
            let (k, s) = split_name(n.as_bytes(), m);
            (n[..k].to_string(), n[s..].to_string())
        };
        assert_eq!(
            f("000123.jpg", KeyMode::FirstDot),
            ("000123".into(), "jpg".into())
        );
        assert_eq!(
            f("a.tar.gz", KeyMode::FirstDot),
            ("a".into(), "tar.gz".into())
        );
        assert_eq!(
            f("a.tar.gz", KeyMode::LastDot),
            ("a.tar".into(), "gz".into())
        );
        assert_eq!(f("README", KeyMode::FirstDot), ("README".into(), "".into()));
        assert_eq!(f("a.", KeyMode::FirstDot), ("a.".into(), "".into()));
        assert_eq!(
            f(".bashrc", KeyMode::FirstDot),
            ("".into(), "bashrc".into())
        );
    }
}

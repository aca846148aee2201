//! The output directory of a pack: where the dataset is built, how it replaces what was there,
//! and how the leftovers of an interrupted pack are recognised and removed.
//!
//! The behaviour is documented in the parent module (`compile`), section "Output directory".

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::compile::Progress;
use crate::error::{Error, Result};
use crate::manifest::MANIFEST_FILE;
use crate::sys;
use crate::writer::{stage_name, PACK_MARKER_FILE};

/// Whether `name` is a file shardpack writes into a dataset directory.
pub(super) fn is_our_file(name: &str) -> bool {
    name == MANIFEST_FILE
        || name == PACK_MARKER_FILE
        || name == format!("{MANIFEST_FILE}.tmp")
        || (name.starts_with("shard-") && (name.ends_with(".spk") || name.ends_with(".spk.tmp")))
}

fn is_ours(name: &OsStr) -> bool {
    name.to_str().is_some_and(is_our_file)
}

/// The names in `dir`, sorted.
fn list(dir: &Path) -> Result<Vec<OsString>> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    let mut names = Vec::new();
    for e in rd {
        names.push(
            e.map_err(|e| Error::io(dir, "read directory", e))?
                .file_name(),
        );
    }
    names.sort();
    Ok(names)
}

/// What a directory's marker says.
enum Marker {
    /// No marker.
    Absent,
    /// A running pack holds it.
    Live,
    /// Left by a pack that is gone; the lock is now ours for as long as the file is open.
    Stale(File),
}

fn marker(dir: &Path) -> Result<Marker> {
    let p = dir.join(PACK_MARKER_FILE);
    match fs::OpenOptions::new().read(true).write(true).open(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Marker::Absent),
        Err(e) => Err(Error::io(&p, "open", e)),
        Ok(f) => match sys::try_lock(&f) {
            Ok(true) => Ok(Marker::Stale(f)),
            Ok(false) => Ok(Marker::Live),
            Err(e) => Err(Error::io(&p, "lock", e)),
        },
    }
}

/// Creates and locks `dir`'s marker.
fn create_marker(dir: &Path) -> Result<File> {
    let p = dir.join(PACK_MARKER_FILE);
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .map_err(|e| Error::io(&p, "create", e))?;
    let locked = sys::try_lock(&f).map_err(|e| Error::io(&p, "lock", e))?;
    if !locked {
        let _ = fs::remove_file(&p);
        return Err(Error::input(
            dir,
            "another process locked the marker file this pack just created; run one pack per \
             output at a time",
        ));
    }
    let text = format!(
        "shardpack pack (process {}) is writing this directory. If no such process runs, it \
         was interrupted: the next pack into the same output removes this file and the shard \
         files it left.\n",
        std::process::id()
    );
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(&p, "write", e))?;
    Ok(f)
}

/// Removes the shardpack files among `names` in `dir`: the manifest first (so the directory
/// stops being a dataset at once), the marker last. Returns how many were removed.
fn remove_ours(dir: &Path, names: &[OsString]) -> Result<usize> {
    let mut order: Vec<&OsString> = names.iter().filter(|n| is_ours(n)).collect();
    order.sort_by_key(|n| match n.to_str() {
        Some(MANIFEST_FILE) => 0,
        Some(PACK_MARKER_FILE) => 2,
        _ => 1,
    });
    let mut removed = 0;
    for n in order {
        let p = dir.join(n);
        match fs::remove_file(&p) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, "remove", e)),
        }
    }
    Ok(removed)
}

/// Removes the staging directories of OUT (`dir`/`name`) left by packs that are gone: see the
/// module docs for how they are recognised. An `old` one found while OUT does not exist is the
/// previous dataset of an interrupted two-rename swap: it is renamed back to OUT instead.
fn recover_stages(dir: &Path, name: &OsStr, out: &Path, progress: &dyn Progress) -> Result<()> {
    // A parent that cannot be listed (no read permission) has no staging directory this
    // process could have made.
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut stages: Vec<(bool, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let n = e.file_name();
        if let Some(kind) = crate::writer::parse_stage_name(&n, name) {
            stages.push((kind != "old", dir.join(&n)));
        }
    }
    // `old` ones first: one may have to go back to OUT before the others are removed.
    stages.sort();
    for (is_new, path) in stages {
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            continue;
        }
        let names = match list(&path) {
            Ok(n) => n,
            Err(e) => {
                progress.note(&format!("leaving {}: {e}", path.display()));
                continue;
            }
        };
        let _lock = match marker(&path) {
            Ok(Marker::Live) => continue, // a running pack's
            Ok(Marker::Stale(f)) => Some(f),
            Ok(Marker::Absent) => None,
            Err(e) => {
                progress.note(&format!("leaving {}: {e}", path.display()));
                continue;
            }
        };
        if let Some(foreign) = names.iter().find(|n| !is_ours(n)) {
            progress.note(&format!(
                "leaving {}: it is named like a pack's staging directory but holds {:?}, which \
                 is not a shardpack file",
                path.display(),
                foreign
            ));
            continue;
        }
        let complete = names.iter().any(|n| n == MANIFEST_FILE);
        if !is_new && complete && fs::symlink_metadata(out).is_err() {
            fs::rename(&path, out).map_err(|e| Error::io(out, "restore the dataset into", e))?;
            progress.note(&format!(
                "restored the previous dataset {} from {}, where an interrupted `pack --force` \
                 had moved it",
                out.display(),
                path.display()
            ));
            continue;
        }
        let removed = remove_ours(&path, &names)
            .and_then(|_| fs::remove_dir(&path).map_err(|e| Error::io(&path, "remove", e)));
        match removed {
            Ok(()) => progress.note(&format!(
                "removed {}, left by an interrupted pack",
                path.display()
            )),
            Err(e) => progress.note(&format!(
                "cannot remove {}, left by an interrupted pack: {e}",
                path.display()
            )),
        }
    }
    Ok(())
}

/// The absolute, symlink-free form of `p`, which may not exist yet: its nearest existing
/// ancestor is canonicalized and the missing components appended.
fn resolve_nonexistent(p: &Path) -> std::io::Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    let mut missing = Vec::new();
    let mut cur = abs.as_path();
    loop {
        match fs::canonicalize(cur) {
            Ok(mut c) => {
                for m in missing.iter().rev() {
                    c.push(m);
                }
                return Ok(c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (cur.parent(), cur.file_name()) else {
                    return Err(e);
                };
                missing.push(name.to_os_string());
                cur = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where a pack writes, and how it finishes. Dropped without [`Target::commit`], it removes
/// what it created (the marker, a staging directory, OUT if it created OUT); the writer has
/// removed its own files by then.
#[derive(Debug)]
pub(super) struct Target {
    /// OUT as given.
    out: PathBuf,
    /// OUT resolved (absolute, without symbolic links).
    out_abs: PathBuf,
    /// Where the dataset is written: OUT, or the staging directory beside it.
    build: PathBuf,
    staged: bool,
    created: bool,
    marker: Option<File>,
    done: bool,
}

/// Prepares OUT for a pack of `src` (see the module docs): refuses an OUT inside the source,
/// a file, a non-empty directory without `force`, or foreign files; removes the leftovers of
/// interrupted packs that it recognises as its own.
pub(super) fn prepare(
    src: &Path,
    out: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<Target> {
    let src_c = fs::canonicalize(src).map_err(|e| Error::io(src, "resolve", e))?;
    let out_c = resolve_nonexistent(out).map_err(|e| Error::io(out, "resolve", e))?;
    if out_c.starts_with(&src_c) {
        return Err(Error::input(
            out,
            format!(
                "the output is inside the source tree {}; choose an output outside it",
                src.display()
            ),
        ));
    }
    let (Some(parent), Some(name)) = (out_c.parent(), out_c.file_name()) else {
        return Err(Error::input(out, "choose a folder below / for the output"));
    };
    recover_stages(parent, name, &out_c, progress)?;
    let target = |build: PathBuf, staged: bool, created: bool| -> Result<Target> {
        let mut t = Target {
            out: out.to_path_buf(),
            out_abs: out_c.clone(),
            build,
            staged,
            created,
            marker: None,
            done: false,
        };
        t.marker = Some(create_marker(&t.build)?);
        Ok(t)
    };
    let mut names = match fs::read_dir(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(out).map_err(|e| Error::io(out, "create directory", e))?;
            let t = target(out.to_path_buf(), false, true);
            if t.is_err() {
                let _ = fs::remove_dir(out);
            }
            return t;
        }
        Err(e) => {
            if out.exists() && !out.is_dir() {
                return Err(Error::input(
                    out,
                    "exists and is not a directory; choose another output path",
                ));
            }
            return Err(Error::io(out, "read directory", e));
        }
        Ok(_) => list(out)?,
    };
    let has = |names: &[OsString], n: &str| names.iter().any(|x| x == n);
    if has(&names, PACK_MARKER_FILE) {
        match marker(out)? {
            Marker::Live => {
                return Err(Error::input(
                    out,
                    format!(
                        "another pack is writing into it right now (its {PACK_MARKER_FILE} is \
                         locked by a running process); wait for it, or stop it"
                    ),
                ))
            }
            Marker::Stale(_lock) if !has(&names, MANIFEST_FILE) => {
                if let Some(foreign) = names.iter().find(|n| !is_ours(n)) {
                    return Err(Error::input(
                        out,
                        format!(
                            "holds the files of an interrupted pack and also {foreign:?}, which \
                             is not a shardpack file; move it away and pack again (the \
                             interrupted pack's files are removed then)"
                        ),
                    ));
                }
                let n = remove_ours(out, &names)?;
                progress.note(&format!(
                    "removed {n} files left in {} by an interrupted pack",
                    out.display()
                ));
                names.clear();
            }
            Marker::Stale(_lock) => {
                // A committed dataset whose pack died before removing its marker.
                let p = out.join(PACK_MARKER_FILE);
                fs::remove_file(&p).map_err(|e| Error::io(&p, "remove", e))?;
                names.retain(|n| n != PACK_MARKER_FILE);
            }
            Marker::Absent => names.retain(|n| n != PACK_MARKER_FILE),
        }
    }
    if names.is_empty() {
        return target(out.to_path_buf(), false, false);
    }
    if !force {
        return Err(Error::input(
            out,
            format!(
                "exists and is not empty ({} entries); pass --force to replace a previous \
                 dataset there, or choose an empty or new directory",
                names.len()
            ),
        ));
    }
    if let Some(foreign) = names.iter().find(|n| !is_ours(n)) {
        return Err(Error::input(
            out,
            format!(
                "holds {:?}, which is not a shardpack file; --force only replaces a dataset, so \
                 move other files away first",
                foreign.to_string_lossy()
            ),
        ));
    }
    if !has(&names, MANIFEST_FILE) {
        // Shard files without a manifest are not a dataset (an interrupted or failed pack of
        // an earlier version): nothing there to keep.
        remove_ours(out, &names)?;
        return target(out.to_path_buf(), false, false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
        if dev(&out_c) != dev(parent) {
            return Err(Error::input(
                out,
                format!(
                    "is a mount point: --force builds the new dataset beside it in {} and then \
                     swaps the two, which cannot cross file systems; pack into a new folder \
                     inside it instead",
                    parent.display()
                ),
            ));
        }
    }
    let stage = parent.join(stage_name(name, "new", std::process::id()));
    fs::create_dir(&stage).map_err(|e| {
        Error::io(
            &stage,
            "create (--force builds the new dataset beside the old one, so the parent folder \
             must be writable)",
            e,
        )
    })?;
    match target(stage.clone(), true, false) {
        Ok(t) => Ok(t),
        Err(e) => {
            let _ = fs::remove_dir(&stage);
            Err(e)
        }
    }
}

impl Target {
    /// The directory the writer writes into.
    pub(super) fn build_dir(&self) -> &Path {
        &self.build
    }

    /// Finishes a pack whose dataset is complete and synced in [`Target::build_dir`]: removes
    /// the marker, or swaps the staged dataset into OUT and removes the old one.
    pub(super) fn commit(mut self, progress: &dyn Progress) -> Result<()> {
        if !self.staged {
            self.done = true;
            let _ = fs::remove_file(self.build.join(PACK_MARKER_FILE));
            return Ok(());
        }
        let parent = self.out_abs.parent().expect("checked in prepare");
        let name = self.out_abs.file_name().expect("checked in prepare");
        let old = match sys::exchange(&self.build, &self.out_abs) {
            Ok(true) => self.build.clone(),
            Ok(false) => {
                let old = parent.join(stage_name(name, "old", std::process::id()));
                fs::rename(&self.out_abs, &old)
                    .map_err(|e| Error::io(&self.out, "move the previous dataset aside:", e))?;
                if let Err(e) = fs::rename(&self.build, &self.out_abs) {
                    let back = match fs::rename(&old, &self.out_abs) {
                        Ok(()) => String::new(),
                        Err(b) => format!(
                            "; the previous dataset is in {} (moving it back failed: {b})",
                            old.display()
                        ),
                    };
                    return Err(Error::input(
                        &self.out,
                        format!(
                            "cannot rename the new dataset {} into place: {e}{back}",
                            self.build.display()
                        ),
                    ));
                }
                old
            }
            Err(e) => return Err(Error::io(&self.out, "swap the new dataset into", e)),
        };
        // OUT now holds the new dataset.
        self.done = true;
        if let Err(e) = File::open(parent).and_then(|d| d.sync_all()) {
            progress.note(&format!(
                "cannot sync {} after the swap: {e}",
                parent.display()
            ));
        }
        let _ = fs::remove_file(self.out_abs.join(PACK_MARKER_FILE));
        let cleaned = list(&old).and_then(|names| {
            if let Some(foreign) = names.iter().find(|n| !is_ours(n)) {
                return Err(Error::input(
                    &old,
                    format!("also holds {foreign:?}, which is not a shardpack file"),
                ));
            }
            remove_ours(&old, &names)?;
            fs::remove_dir(&old).map_err(|e| Error::io(&old, "remove", e))
        });
        if let Err(e) = cleaned {
            progress.note(&format!(
                "the previous dataset was moved to {} and is not removed ({e}); remove it \
                 yourself",
                old.display()
            ));
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.staged {
            if let Ok(names) = list(&self.build) {
                let _ = remove_ours(&self.build, &names);
            }
            let _ = fs::remove_dir(&self.build);
        } else {
            let _ = fs::remove_file(self.build.join(PACK_MARKER_FILE));
            if self.created {
                let _ = fs::remove_dir(&self.out);
            }
        }
        self.marker = None;
    }
}

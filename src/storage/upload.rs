//! Uploading a packed dataset to an object store (cargo feature `remote`): what
//! `shardpack pack SRC s3://bucket/prefix` does once the dataset is packed in a local staging
//! directory.
//!
//! **Order.** An interrupted upload never looks like a dataset, and a rerun replaces it:
//! 1. `manifest.json` at the prefix is checked: one already there is refused without
//!    [`UploadOptions::force`]; with it, that manifest is deleted first (from then on the old
//!    dataset is gone: nothing at the prefix looks complete until the new manifest is there);
//! 2. every shard is uploaded, several at a time ([`UploadOptions::parallel`]), each larger
//!    than [`UploadOptions::part_size`] as a multipart upload (an upload that fails is
//!    aborted, so no parts are left behind where the store allows);
//! 3. `manifest.json` is uploaded last, only once every shard is there;
//! 4. objects directly under the prefix that look like shardpack's (`shard-*.spk`,
//!    `manifest.json.tmp`) and that the new manifest does not name are deleted (the shards of
//!    an older, larger dataset, or of an interrupted upload). Nothing else is ever deleted.
//!
//! A failed or cancelled upload stops before step 3 (an error from [`upload_dataset`] means no
//! manifest was uploaded; a failure in step 4 is a warning of its [`UploadSummary`]). Only object stores are written (`s3://`);
//! an `http(s)://` URL is read-only.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::remote::{make_client, runtime, Location, RemoteOptions};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, MANIFEST_FILE};

/// How a dataset is uploaded.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Replace a dataset (a `manifest.json`) already at the destination.
    pub force: bool,
    /// The size of a multipart upload's parts (at least 5 MiB, S3's smallest part); a shard
    /// of at most this size is one PUT.
    pub part_size: usize,
    /// Shards uploaded at the same time.
    pub parallel: usize,
    /// Testing only: fail the upload of the shard after this many shards were uploaded.
    #[doc(hidden)]
    pub fail_after: Option<usize>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            force: false,
            part_size: 16 << 20,
            parallel: 4,
            fail_after: None,
        }
    }
}

/// S3's smallest part of a multipart upload (but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

/// What an upload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UploadSummary {
    /// The dataset's URL.
    pub url: String,
    /// Shards uploaded.
    pub shards: u64,
    /// Bytes uploaded (shards and manifest).
    pub bytes: u64,
    /// Of the shards, those sent as multipart uploads.
    pub multipart: u64,
    /// Whether a dataset that was there was replaced (its manifest deleted first).
    pub replaced: bool,
    /// Objects deleted after the manifest was uploaded (stale shards).
    pub deleted: Vec<String>,
    /// Stale shards that could not be listed or deleted (the dataset is complete: a manifest
    /// never names them).
    pub warnings: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// What the upload reports as it goes; every method has a default.
pub trait UploadProgress: Sync {
    /// `bytes` more were uploaded.
    fn uploaded(&self, bytes: u64) {
        let _ = bytes;
    }
    /// Polled between parts: `true` stops the upload (before the manifest), with
    /// [`Error::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// A new, empty folder inside `parent` where a dataset is packed before it is uploaded;
/// removed, with what is in it, when dropped (on success, failure or interrupt).
#[derive(Debug)]
pub struct Staging(PathBuf);

impl Staging {
    /// Makes the folder (`parent/.shardpack-upload.PID.TIME`), and `parent` if need be.
    pub fn new(parent: &Path) -> Result<Staging> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = parent.join(format!(
            ".shardpack-upload.{}.{stamp:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::create_dir(&dir))
            .map_err(|e| Error::io(&dir, "create the staging folder", e))?;
        Ok(Staging(dir))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// No progress reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoUploadProgress;
impl UploadProgress for NoUploadProgress {}

/// A connection to the destination prefix.
struct Dest {
    loc: Location,
    client: Arc<dyn ObjectStore>,
}

impl fmt::Debug for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dest")
            .field("url", &self.loc.url())
            .finish()
    }
}

impl Dest {
    fn new(dest: &Location, ropts: &RemoteOptions) -> Result<Dest> {
        let url = dest.url();
        match dest {
            Location::S3 { .. } => {}
            Location::Http(_) => {
                return Err(Error::input(
                    Path::new(&url),
                    "an http(s):// URL is read-only: a dataset can be read from it but not \
                     written there; pack into an s3:// URL (or a local directory) and serve \
                     that instead",
                ))
            }
            Location::Local(p) => {
                return Err(Error::input(
                    p,
                    "is a local path: pack into it directly, uploads go to s3:// URLs",
                ))
            }
        }
        let client = make_client(dest, ropts, ropts.retries as usize)
            .map_err(|e| Error::io(Path::new(&url), "connect", e))?;
        Ok(Dest {
            loc: dest.clone(),
            client,
        })
    }

    fn prefix(&self) -> &str {
        match &self.loc {
            Location::S3 { prefix, .. } => prefix,
            _ => "",
        }
    }

    fn path(&self, name: &str) -> ObjPath {
        self.loc.object_path(name)
    }

    /// This process's runtime for the requests.
    fn rt(&self) -> Result<Arc<tokio::runtime::Runtime>> {
        runtime().map_err(|e| Error::io(Path::new(&self.loc.url()), "start", e))
    }

    fn url_of(&self, name: &str) -> String {
        self.loc.url_of(name)
    }

    /// The error of a failed request on `name`, naming its URL.
    fn err(&self, name: &str, what: &'static str, e: object_store::Error) -> Error {
        let kind = match e {
            object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        let hint = if kind == io::ErrorKind::PermissionDenied {
            " (check the credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, \
             and that they may write to the bucket)"
        } else {
            ""
        };
        Error::io(
            Path::new(&self.url_of(name)),
            what,
            io::Error::new(kind, format!("{e}{hint}")),
        )
    }

    /// Whether object `name` exists.
    fn exists(&self, name: &str) -> Result<bool> {
        let rt = self.rt()?;
        match rt.block_on(self.client.head(&self.path(name))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(name, "check", e)),
        }
    }

    fn delete(&self, name: &str) -> Result<()> {
        let rt = self.rt()?;
        match rt.block_on(self.client.delete(&self.path(name))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(name, "delete", e)),
        }
    }

    /// The names of the objects directly under the prefix.
    fn list(&self) -> Result<Vec<String>> {
        let rt = self.rt()?;
        let prefix = (!self.prefix().is_empty()).then(|| ObjPath::from(self.prefix()));
        let r = rt
            .block_on(self.client.list_with_delimiter(prefix.as_ref()))
            .map_err(|e| {
                let u = self.loc.url();
                Error::io(Path::new(&u), "list", io::Error::other(e.to_string()))
            })?;
        Ok(r.objects
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect())
    }

    /// Uploads local file `path` as object `name`: one PUT up to `part_size`, else a multipart
    /// upload (aborted on failure). Returns whether it was multipart.
    async fn upload_file(
        &self,
        path: &Path,
        name: &str,
        opts: &UploadOptions,
        progress: &dyn UploadProgress,
        stop: &AtomicBool,
    ) -> Result<bool> {
        let mut f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let len = f.metadata().map_err(|e| Error::io(path, "stat", e))?.len();
        let part = opts.part_size.max(MIN_PART_SIZE);
        let read = |f: &mut File, n: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; n];
            io::Read::read_exact(f, &mut buf).map_err(|e| Error::io(path, "read", e))?;
            Ok(buf)
        };
        let dst = self.path(name);
        if len <= part as u64 {
            let buf = read(&mut f, len as usize)?;
            self.client
                .put(&dst, PutPayload::from(buf))
                .await
                .map_err(|e| self.err(name, "upload", e))?;
            progress.uploaded(len);
            return Ok(false);
        }
        let mut up = self
            .client
            .put_multipart(&dst)
            .await
            .map_err(|e| self.err(name, "start the multipart upload of", e))?;
        let mut sent = 0u64;
        let r: Result<()> = async {
            while sent < len {
                if stop.load(Ordering::Relaxed) || progress.cancelled() {
                    return Err(Error::Cancelled);
                }
                let n = (len - sent).min(part as u64) as usize;
                let buf = read(&mut f, n)?;
                up.put_part(PutPayload::from(buf))
                    .await
                    .map_err(|e| self.err(name, "upload a part of", e))?;
                sent += n as u64;
                progress.uploaded(n as u64);
            }
            up.complete()
                .await
                .map_err(|e| self.err(name, "complete the multipart upload of", e))?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            let _ = up.abort().await; // no parts left behind, where the store allows
            return Err(e);
        }
        Ok(true)
    }
}

/// Whether `name` (an object directly under the prefix) is one that shardpack writes.
fn is_ours(name: &str) -> bool {
    name == format!("{MANIFEST_FILE}.tmp")
        || (name.starts_with("shard-") && (name.ends_with(".spk") || name.ends_with(".spk.tmp")))
}

/// Checks that a dataset can be uploaded to `dest`: an object store URL (not `http(s)://`),
/// without a `manifest.json` unless `force`, whose bucket exists and can be listed. Returns whether a dataset is there.
/// What `pack` calls before packing, so a refusal costs nothing.
pub fn check_destination(dest: &Location, ropts: &RemoteOptions, force: bool) -> Result<bool> {
    let d = Dest::new(dest, ropts)?;
    let there = d.exists(MANIFEST_FILE)?;
    if there && !force {
        return Err(refusal(&d));
    }
    // A missing bucket answers the HEAD above with 404 too: a listing tells (and the upload
    // lists the prefix at its end, to remove stale shards).
    d.list()?;
    Ok(there)
}

fn refusal(d: &Dest) -> Error {
    Error::input(
        Path::new(&d.loc.url()),
        format!(
            "holds a dataset already ({} exists); pass --force to replace it, or choose \
             another prefix",
            d.url_of(MANIFEST_FILE)
        ),
    )
}

/// Uploads the dataset in local directory `local` (made by a pack) to `dest` in the order of
/// the module docs: the old manifest deleted (with `force`), the shards, the manifest last,
/// then stale shards deleted.
pub fn upload_dataset(
    local: &Path,
    dest: &Location,
    ropts: &RemoteOptions,
    opts: &UploadOptions,
    progress: &dyn UploadProgress,
) -> Result<UploadSummary> {
    let t0 = Instant::now();
    let d = Dest::new(dest, ropts)?;
    let mpath = local.join(MANIFEST_FILE);
    let mbytes = std::fs::read(&mpath).map_err(|e| Error::io(&mpath, "read", e))?;
    let manifest = Manifest::parse(&mbytes, &mpath)?;
    let names: Vec<String> = manifest.shards.iter().map(|s| s.file.clone()).collect();
    for n in &names {
        if n.contains('/') || n == MANIFEST_FILE {
            return Err(Error::manifest(&mpath, format!("shard file name {n:?}")));
        }
    }

    // 1. The old dataset stops looking complete before anything of the new one is written.
    let replaced = d.exists(MANIFEST_FILE)?;
    if replaced {
        if !opts.force {
            return Err(refusal(&d));
        }
        d.delete(MANIFEST_FILE)?;
    }

    // 2. The shards, `parallel` at a time; the first failure stops the others.
    let rt = d.rt()?;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let bytes = AtomicU64::new(0);
    let multipart = AtomicU64::new(0);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        stop.store(true, Ordering::Relaxed);
        let mut g = first_err.lock().unwrap_or_else(|e| e.into_inner());
        // A real error beats the cancellations it caused in the other uploads.
        if g.is_none() || matches!(*g, Some(Error::Cancelled)) {
            *g = Some(e);
        }
    };
    std::thread::scope(|sc| {
        for _ in 0..opts.parallel.clamp(1, names.len().max(1)) {
            sc.spawn(|| {
                while let Some(name) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if progress.cancelled() {
                        fail(Error::Cancelled);
                        return;
                    }
                    if opts
                        .fail_after
                        .is_some_and(|k| done.load(Ordering::Relaxed) >= k)
                    {
                        fail(Error::io(
                            Path::new(&d.url_of(name)),
                            "upload",
                            io::Error::other("failed on purpose (test hook)"),
                        ));
                        return;
                    }
                    let path = local.join(name);
                    match rt.block_on(d.upload_file(&path, name, opts, progress, &stop)) {
                        Ok(mp) => {
                            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                            bytes.fetch_add(len, Ordering::Relaxed);
                            multipart.fetch_add(mp as u64, Ordering::Relaxed);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            fail(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    if progress.cancelled() {
        return Err(Error::Cancelled);
    }

    // 3. The manifest, last.
    let mlen = mbytes.len() as u64;
    rt.block_on(
        d.client
            .put(&d.path(MANIFEST_FILE), PutPayload::from(mbytes)),
    )
    .map_err(|e| d.err(MANIFEST_FILE, "upload", e))?;
    progress.uploaded(mlen);

    // 4. Stale shards: ours by name, not named by the new manifest.
    let keep: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut deleted = Vec::new();
    let mut warnings = Vec::new();
    match d.list() {
        Ok(names) => {
            for n in names {
                if is_ours(&n) && !keep.contains(n.as_str()) {
                    match d.delete(&n) {
                        Ok(()) => deleted.push(d.url_of(&n)),
                        Err(e) => warnings.push(format!("stale shard left: {e}")),
                    }
                }
            }
        }
        Err(e) => warnings.push(format!("stale shards not removed: {e}")),
    }
    deleted.sort();
    Ok(UploadSummary {
        url: d.loc.url(),
        shards: names.len() as u64,
        bytes: bytes.into_inner() + mlen,
        multipart: multipart.into_inner(),
        replaced,
        deleted,
        warnings,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shardpack_names_are_stale() {
        assert!(is_ours("shard-000001.spk"));
        assert!(is_ours("shard-000001.spk.tmp"));
        assert!(is_ours("manifest.json.tmp"));
        assert!(!is_ours("manifest.json"));
        assert!(!is_ours("README.md"));
        assert!(!is_ours("shard-1.tar"));
    }

    #[test]
    fn http_and_local_destinations_are_refused() {
        let o = RemoteOptions::default();
        let e = check_destination(&Location::Http("http://h/x".into()), &o, true).unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        let e = check_destination(&Location::Local("d".into()), &o, true).unwrap_err();
        assert!(e.to_string().contains("local path"), "{e}");
    }
}

//! Datasets in object stores and on web servers (cargo feature `remote`): `s3://bucket/prefix`
//! (credentials and endpoint from the usual `AWS_*` environment: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` /
//! `AWS_ENDPOINT_URL_S3` for an S3-compatible store) and `http(s)://host/path` (a server that
//! answers `Range` with `206`).
//!
//! **Open** is one GET of `manifest.json` and, per shard, two ranged GETs (its first 64 and last
//! 96 bytes: header and footer), all in flight together (at most
//! [`RemoteOptions::concurrency`]); streaming adds one ranged GET of each shard's dictionaries
//! and index. Nothing is ever listed (the manifest names every shard; an HTTP server's listing
//! would be WebDAV). [`Dataset::remote_requests`] counts the requests.
//!
//! **Two read modes** ([`ReadMode`]):
//! - *Cache* (the default): a shard is downloaded whole on its first use into
//!   `<cache>/<manifest xxh3>/<shard file>` (a `.part` file, checked against the manifest's size
//!   and xxh3, renamed into place under an exclusive `flock` of `<shard file>.lock`), then
//!   memory-mapped like a local shard. An open cached shard holds a shared `flock`; eviction
//!   (least recently used first, by modification time, which each use refreshes) removes only
//!   shards whose exclusive lock it can take, so a shard another process (a DataLoader worker,
//!   a DDP rank) has open is never removed. A failed download removes its `.part`; one left by
//!   a killed process is removed by the next download of that shard. What needs every shard
//!   at once ([`Dataset::verify`], [`Dataset::shards`], an open with [`IndexCheck::AtOpen`])
//!   downloads up to 8 together (in turn under a cache limit smaller than them all).
//! - *Stream*: nothing but indexes on local disk. Each shard is a sparse local file (removed
//!   from the directory as soon as it is created) holding its header, dictionaries and index
//!   at their offsets, so every index accessor works unchanged; the Loader reads each piece
//!   with one ranged GET ([`RemoteObject`]), [`crate::loader::STREAM_IO_THREADS`] of them in
//!   flight by default, and [`crate::Dataset::get`] fetches the sample's records into the
//!   sparse file first.
//!
//! **Faults.** Every GET is retried with exponential backoff on 5xx answers, timeouts and
//! connection errors ([`RemoteOptions::retries`]); a body cut short is resumed from the byte
//! where it stopped; an object whose size or ETag changes is an error (replaced while read);
//! 403 and 404 are errors naming the URL. Bytes are never trusted: records carry checksums,
//! the index is checked against the manifest, a cached download against the shard's xxh3.
//!
//! The sparse copy is memory-mapped while record bytes are written into it: only bytes no
//! sample was handed yet (holes, zero until then) are written, and a concurrent fill of the same
//! range writes the same bytes; this is the documented hazard of [`crate::sys`]'s map (a file
//! changed under its map), confined to holes, and every record is checksummed when read.
//!
//! Writing a dataset to a store (`shardpack pack SRC s3://...`) is [`super::upload`].
//!
//! Fork safety: the tokio runtime and the HTTP clients are created lazily per process (a
//! child after `fork` builds its own; it never uses the parent's connections).

use std::fmt;
use std::fs::{self, File, OpenOptions as FsOpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::hash::Xxh3;
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};

use super::{DatasetSource, Fill, ReadAt};
use crate::error::{Error, Result};
use crate::format::{Footer, Header};
use crate::manifest::{Manifest, ShardMeta, MANIFEST_FILE};
use crate::reader::{Dataset, IndexCheck, OpenOptions};

/// How a remote dataset's shards are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Download each shard whole on first use into a local cache, then map it.
    #[default]
    Cache,
    /// Keep only the indexes locally; read records with ranged GETs.
    Stream,
}

impl ReadMode {
    /// `cache` or `stream`.
    pub fn parse(s: &str) -> Option<ReadMode> {
        match s {
            "cache" | "cached" => Some(ReadMode::Cache),
            "stream" | "streaming" => Some(ReadMode::Stream),
            _ => None,
        }
    }

    /// The name [`ReadMode::parse`] reads back: `cache` or `stream`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::Cache => "cache",
            ReadMode::Stream => "stream",
        }
    }
}

/// How a remote dataset is read: mode, cache, retries.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Cache (the default) or stream.
    pub mode: ReadMode,
    /// The cache directory (default: `$SHARDPACK_CACHE_DIR`, else `$XDG_CACHE_HOME/shardpack`,
    /// else `~/.cache/shardpack`). Streaming puts its (unlinked) sparse index files here too.
    pub cache_dir: Option<PathBuf>,
    /// Evict least recently used shards when the cache holds more bytes than this (never
    /// one in use). `None`: no limit.
    pub cache_limit: Option<u64>,
    /// Retries of one request after a retryable failure (5xx, timeout, reset, cut body).
    pub retries: u32,
    /// The first retry's wait; each next one doubles it (capped at 5 s).
    pub backoff: Duration,
    /// The limit on one request, body included (a stalled server is a timeout, retried).
    pub timeout: Duration,
    /// Requests in flight together at open.
    pub concurrency: usize,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            mode: ReadMode::Cache,
            cache_dir: None,
            cache_limit: None,
            retries: 8,
            backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(60),
            concurrency: 64,
        }
    }
}

impl RemoteOptions {
    /// The defaults, overridden by `SHARDPACK_REMOTE_MODE` (`cache`/`stream`),
    /// `SHARDPACK_CACHE_DIR`, `SHARDPACK_CACHE_LIMIT` (bytes), `SHARDPACK_REMOTE_RETRIES` and
    /// `SHARDPACK_REMOTE_TIMEOUT` (seconds). What [`Dataset::open`] of a URL uses.
    pub fn from_env() -> RemoteOptions {
        let mut o = RemoteOptions::default();
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(m) = var("SHARDPACK_REMOTE_MODE").and_then(|v| ReadMode::parse(&v)) {
            o.mode = m;
        }
        o.cache_dir = var("SHARDPACK_CACHE_DIR").map(PathBuf::from);
        o.cache_limit = var("SHARDPACK_CACHE_LIMIT").and_then(|v| v.parse().ok());
        if let Some(r) = var("SHARDPACK_REMOTE_RETRIES").and_then(|v| v.parse().ok()) {
            o.retries = r;
        }
        if let Some(t) = var("SHARDPACK_REMOTE_TIMEOUT").and_then(|v| v.parse::<f64>().ok()) {
            if t > 0.0 {
                o.timeout = Duration::from_secs_f64(t);
            }
        }
        o
    }

    fn cache_root(&self) -> PathBuf {
        if let Some(d) = &self.cache_dir {
            return d.clone();
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(d) = env("SHARDPACK_CACHE_DIR") {
            return d.into();
        }
        if let Some(d) = env("XDG_CACHE_HOME") {
            return PathBuf::from(d).join("shardpack");
        }
        if let Some(h) = env("HOME") {
            return PathBuf::from(h).join(".cache").join("shardpack");
        }
        std::env::temp_dir().join("shardpack-cache")
    }
}

// ---------------------------------------------------------------------------------------------
// Locations and stores
// ---------------------------------------------------------------------------------------------

/// Where a dataset is: a local directory, an S3 bucket and prefix, or an HTTP(S) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory (a plain path or `file://`).
    Local(PathBuf),
    /// `s3://bucket/prefix`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (no leading or trailing `/`; may be empty).
        prefix: String,
    },
    /// `http(s)://host/path` (no trailing `/`).
    Http(String),
}

impl Location {
    /// Parses a URL or a plain path.
    pub fn parse(s: &str) -> std::result::Result<Location, String> {
        let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
        if lower.starts_with("file://") {
            return Ok(Location::Local(PathBuf::from(&s[7..])));
        }
        if lower.starts_with("s3://") {
            let rest = s[5..].trim_matches('/');
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{s}: no bucket (use s3://BUCKET/PREFIX)"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let host_at = s.find("://").unwrap() + 3;
            if s[host_at..].trim_matches('/').is_empty() {
                return Err(format!("{s}: no host"));
            }
            return Ok(Location::Http(s.trim_end_matches('/').to_string()));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }

    /// The URL of object `name` inside this location.
    pub fn url_of(&self, name: &str) -> String {
        match self {
            Location::Local(p) => p.join(name).display().to_string(),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}/{name}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}/{name}"),
            Location::Http(u) => format!("{u}/{name}"),
        }
    }

    /// The object store path of object `name` inside this location (S3: under the prefix;
    /// HTTP: relative to the base URL).
    pub(super) fn object_path(&self, name: &str) -> ObjPath {
        match self {
            Location::S3 { prefix, .. } if !prefix.is_empty() => {
                ObjPath::from(format!("{prefix}/{name}"))
            }
            _ => ObjPath::from(name),
        }
    }

    /// The location's URL.
    pub fn url(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Location::Http(u) => u.clone(),
        }
    }
}

/// The tokio runtime of this process (rebuilt in a child after `fork`).
pub(super) fn runtime() -> io::Result<Arc<tokio::runtime::Runtime>> {
    static RT: Mutex<Option<(u32, Arc<tokio::runtime::Runtime>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut g = RT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, rt)) = &*g {
        if *p == pid {
            return Ok(rt.clone());
        }
        // A forked child: the parent's worker threads do not exist here. Leak the copy (its
        // drop would wait for threads that are not there).
        if let Some((_, old)) = g.take() {
            std::mem::forget(old);
        }
    }
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("shardpack-remote")
            .enable_all()
            .build()?,
    );
    *g = Some((pid, rt.clone()));
    Ok(rt)
}

/// An object_store client for `loc` (S3 or HTTP) with `retries` retries inside object_store
/// (0 for the reader, whose retries are its own; the uploader lets object_store retry each
/// request, a multipart part included).
pub(super) fn make_client(
    loc: &Location,
    opts: &RemoteOptions,
    retries: usize,
) -> io::Result<Arc<dyn ObjectStore>> {
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: opts.backoff,
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: retries,
        retry_timeout: if retries == 0 {
            Duration::from_secs(1)
        } else {
            opts.timeout.saturating_mul(retries as u32 + 1)
        },
    };
    let copts = ClientOptions::new()
        .with_timeout(opts.timeout)
        .with_connect_timeout(opts.timeout.min(Duration::from_secs(10)));
    let bad = |e: object_store::Error| io::Error::other(format!("{}: {e}", loc.url()));
    let c: Arc<dyn ObjectStore> = match loc {
        Location::S3 { bucket, .. } => {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
            let mut copts = copts;
            if let Some(e) = endpoint {
                if e.starts_with("http://") {
                    copts = copts.with_allow_http(true);
                }
                b = b.with_endpoint(e);
            }
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                b = b.with_region("us-east-1");
            }
            Arc::new(b.with_client_options(copts).build().map_err(bad)?)
        }
        Location::Http(u) => Arc::new(
            HttpBuilder::new()
                .with_url(u.clone())
                .with_retry(retry)
                .with_client_options(copts.with_allow_http(u.starts_with("http://")))
                .build()
                .map_err(bad)?,
        ),
        Location::Local(p) => {
            return Err(io::Error::other(format!(
                "{}: a local path is not a remote store",
                p.display()
            )))
        }
    };
    Ok(c)
}

/// One remote location's client, with a request counter. The object_store client is built
/// per process (see `runtime`).
pub struct Store {
    loc: Location,
    opts: RemoteOptions,
    client: Mutex<Option<(u32, Arc<dyn ObjectStore>)>>,
    requests: AtomicU64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.loc.url())
            .field("requests", &self.requests())
            .finish()
    }
}

/// A failed attempt: worth retrying or not.
enum Fault {
    Retry(String),
    Fatal(io::Error),
}

impl Store {
    /// A client for `loc` (S3 or HTTP).
    pub fn new(loc: Location, opts: &RemoteOptions) -> io::Result<Store> {
        if let Location::Local(p) = &loc {
            return Err(io::Error::other(format!(
                "{}: a local path is not a remote store",
                p.display()
            )));
        }
        let s = Store {
            loc,
            opts: opts.clone(),
            client: Mutex::new(None),
            requests: AtomicU64::new(0),
        };
        s.client()?;
        Ok(s)
    }

    /// Requests made (every attempt).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The URL of object `name`.
    pub fn url_of(&self, name: &str) -> String {
        self.loc.url_of(name)
    }

    fn client(&self) -> io::Result<Arc<dyn ObjectStore>> {
        let pid = std::process::id();
        let mut g = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, c)) = &*g {
            if *p == pid {
                return Ok(c.clone());
            }
            if let Some((_, old)) = g.take() {
                std::mem::forget(old); // the parent's connections: never used or closed here
            }
        }
        // Retries are ours (they count requests and resume cut bodies): none inside.
        let c = make_client(&self.loc, &self.opts, 0)?;
        *g = Some((pid, c.clone()));
        Ok(c)
    }

    fn obj_path(&self, name: &str) -> ObjPath {
        self.loc.object_path(name)
    }

    /// Runs `f` on this process's runtime.
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> io::Result<T> {
        Ok(runtime()?.block_on(f))
    }

    /// The error for a failed request of `name`, naming its URL.
    fn classify(&self, name: &str, e: object_store::Error) -> Fault {
        use object_store::Error as E;
        let url = self.url_of(name);
        match e {
            E::NotFound { .. } => Fault::Fatal(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{url}: not found (HTTP 404): check the URL, bucket and prefix"),
            )),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Fault::Fatal(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{url}: access denied (HTTP 403/401): check the credentials \
                         (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the \
                         object's permissions ({e})"
                ),
            )),
            E::Precondition { .. } | E::NotModified { .. } => Fault::Fatal(io::Error::other(
                format!("{url}: the object changed while it was read (replaced?): {e}"),
            )),
            E::NotSupported { .. } | E::InvalidPath { .. } | E::NotImplemented { .. } => {
                Fault::Fatal(io::Error::other(format!("{url}: {e}")))
            }
            E::Generic { .. } | E::JoinError { .. } => {
                let msg = e.to_string();
                // A client error other than throttling is not worth retrying.
                let client_err =
                    msg.contains("status code: 4") && !msg.contains("status code: 429");
                match client_err {
                    true => Fault::Fatal(io::Error::other(format!("{url}: {msg}"))),
                    false => Fault::Retry(msg),
                }
            }
            other => Fault::Fatal(io::Error::other(format!("{url}: {other}"))),
        }
    }

    /// Fills `buf` with bytes `offset..` of object `name` (whose size must be `size` and whose
    /// ETag, once known in `etag`, must not change), retrying and resuming.
    async fn read_into(
        &self,
        name: &str,
        offset: u64,
        buf: &mut [u8],
        size: Option<u64>,
        etag: &Mutex<Option<String>>,
    ) -> io::Result<()> {
        let mut got = 0usize;
        let mut failures = 0u32;
        let mut last;
        while got < buf.len() {
            let before = got;
            match self.attempt(name, offset, buf, &mut got, size, etag).await {
                Ok(()) if got == buf.len() => return Ok(()),
                Ok(()) => last = format!("the body ended at byte {}", offset + got as u64),
                Err(Fault::Fatal(e)) => return Err(e),
                Err(Fault::Retry(m)) => last = m,
            }
            if got > before {
                failures = 0; // progress: a cut body resumes where it stopped
            } else {
                failures += 1;
            }
            if failures > self.opts.retries {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: bytes {}..{}: gave up after {} attempts without progress: {last}",
                        self.url_of(name),
                        offset,
                        offset + buf.len() as u64,
                        failures
                    ),
                ));
            }
            let wait = self
                .opts
                .backoff
                .saturating_mul(1 << failures.saturating_sub(1).min(6));
            tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
        }
        Ok(())
    }

    /// One GET of the rest of the range, writing into `buf[*got..]` as chunks arrive.
    async fn attempt(
        &self,
        name: &str,
        offset: u64,
        buf: &mut [u8],
        got: &mut usize,
        size: Option<u64>,
        etag: &Mutex<Option<String>>,
    ) -> std::result::Result<(), Fault> {
        let client = self.client().map_err(Fault::Fatal)?;
        let start = offset + *got as u64;
        let end = offset + buf.len() as u64;
        let opts = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            ..GetOptions::default()
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let res = client
            .get_opts(&self.obj_path(name), opts)
            .await
            .map_err(|e| self.classify(name, e))?;
        self.check_meta(name, res.meta.size, res.meta.e_tag.as_deref(), size, etag)?;
        let mut stream = res.into_stream();
        loop {
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(Pin::new(&mut stream), cx)
            })
            .await;
            match next {
                None => return Ok(()),
                Some(Ok(chunk)) => {
                    let Some(dst) = buf.get_mut(*got..*got + chunk.len()) else {
                        return Err(Fault::Fatal(io::Error::other(format!(
                            "{}: the server sent more bytes than the range {start}..{end} asked",
                            self.url_of(name)
                        ))));
                    };
                    dst.copy_from_slice(&chunk);
                    *got += chunk.len();
                }
                Some(Err(e)) => return Err(Fault::Retry(format!("the body was cut: {e}"))),
            }
        }
    }

    fn check_meta(
        &self,
        name: &str,
        actual: u64,
        tag: Option<&str>,
        size: Option<u64>,
        etag: &Mutex<Option<String>>,
    ) -> std::result::Result<(), Fault> {
        if let Some(want) = size {
            if actual != want {
                return Err(Fault::Fatal(io::Error::other(format!(
                    "{}: the object is {actual} bytes, the manifest says {want} (replaced or \
                     truncated; the dataset is not the one whose manifest was read)",
                    self.url_of(name)
                ))));
            }
        }
        if let Some(tag) = tag {
            let mut g = etag.lock().unwrap_or_else(|e| e.into_inner());
            match &*g {
                Some(t) if t != tag => {
                    return Err(Fault::Fatal(io::Error::other(format!(
                        "{}: the object was replaced while it was read (ETag {t} became {tag})",
                        self.url_of(name)
                    ))))
                }
                Some(_) => {}
                None => *g = Some(tag.to_string()),
            }
        }
        Ok(())
    }

    /// The whole object `name` (a small one: the manifest), retrying.
    pub fn get_all(&self, name: &str) -> io::Result<Vec<u8>> {
        self.block(async {
            let mut failures = 0;
            loop {
                let client = self.client()?;
                self.requests.fetch_add(1, Ordering::Relaxed);
                let r = match client
                    .get_opts(&self.obj_path(name), GetOptions::default())
                    .await
                {
                    Ok(r) => r.bytes().await.map_err(|e| self.classify(name, e)),
                    Err(e) => Err(self.classify(name, e)),
                };
                match r {
                    Ok(b) => return Ok(b.to_vec()),
                    Err(Fault::Fatal(e)) => return Err(e),
                    Err(Fault::Retry(m)) if failures >= self.opts.retries => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "{}: gave up after {} attempts: {m}",
                                self.url_of(name),
                                failures + 1
                            ),
                        ))
                    }
                    Err(Fault::Retry(_)) => {
                        failures += 1;
                        let wait = self.opts.backoff.saturating_mul(1 << (failures - 1).min(6));
                        tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                    }
                }
            }
        })?
    }

    /// Uploads `bytes` as object `name` (tests and tools).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> io::Result<()> {
        let client = self.client()?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.block(async {
            client
                .put(&self.obj_path(name), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| io::Error::other(format!("{}: upload: {e}", self.url_of(name))))
        })?
    }
}

/// One remote object read by ranges (a shard, in streaming mode): each
/// [`ReadAt::read_at`] is one ranged GET (more after a fault), checked against the manifest's
/// size and the first answer's ETag.
#[derive(Debug)]
pub struct RemoteObject {
    store: Arc<Store>,
    name: String,
    len: u64,
    etag: Arc<Mutex<Option<String>>>,
}

impl RemoteObject {
    /// Object `name` of `store`, `len` bytes long (as the manifest says).
    pub fn new(store: Arc<Store>, name: &str, len: u64) -> RemoteObject {
        RemoteObject {
            store,
            name: name.to_string(),
            len,
            etag: Arc::new(Mutex::new(None)),
        }
    }
}

impl ReadAt for RemoteObject {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let s = &self.store;
        s.block(s.read_into(
            &self.name,
            offset,
            &mut buf[..n],
            Some(self.len),
            &self.etag,
        ))??;
        Ok(n)
    }
}

/// Byte ranges of an object fetched in advance (a shard's header and footer at open).
#[derive(Debug)]
struct Prefetched {
    len: u64,
    parts: Vec<(u64, Arc<Vec<u8>>)>,
    url: String,
}

impl ReadAt for Prefetched {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        for (at, bytes) in &self.parts {
            if offset >= *at && offset + n as u64 <= at + bytes.len() as u64 {
                let from = (offset - at) as usize;
                buf[..n].copy_from_slice(&bytes[from..from + n]);
                return Ok(n);
            }
        }
        Err(io::Error::other(format!(
            "{}: bytes {offset}..{} were not fetched at open",
            self.url,
            offset + n as u64
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// The dataset source
// ---------------------------------------------------------------------------------------------

/// What open fetched of one shard.
#[derive(Debug, Default)]
struct Fetched {
    head: Arc<Vec<u8>>,
    tail: Arc<Vec<u8>>,
    /// Streaming: dictionaries and index (`dict_offset..len - 96`), once fetched.
    meta: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

struct ShardState {
    meta: ShardMeta,
    fetched: std::result::Result<Fetched, String>,
    etag: Arc<Mutex<Option<String>>>,
    /// Cached mode: the mapped copy's file (holding the shared lock).
    cached: Mutex<Option<Arc<File>>>,
}

struct Inner {
    store: Arc<Store>,
    mode: ReadMode,
    root: PathBuf,
    /// `<root>/<manifest xxh3>`.
    dir: PathBuf,
    limit: Option<u64>,
    shards: Vec<ShardState>,
}

/// A remote dataset's shards, as the reader asks for them ([`DatasetSource`]).
#[derive(Clone)]
pub(crate) struct RemoteSource {
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSource")
            .field("store", &self.inner.store)
            .field("mode", &self.inner.mode)
            .field("cache", &self.inner.dir)
            .finish()
    }
}

/// Runs `jobs` on the runtime with at most `limit` in flight; results in order.
fn run_all<T: Send + 'static>(
    jobs: Vec<Pin<Box<dyn std::future::Future<Output = T> + Send>>>,
    limit: usize,
) -> io::Result<Vec<T>> {
    let rt = runtime()?;
    let sem = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    Ok(rt.block_on(async move {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let sem = sem.clone();
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    job.await
                })
            })
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.expect("remote fetch task"));
        }
        out
    }))
}

async fn fetch_range(
    store: Arc<Store>,
    name: String,
    range: Range<u64>,
    size: u64,
    etag: Arc<Mutex<Option<String>>>,
) -> std::result::Result<Vec<u8>, String> {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    store
        .read_into(&name, range.start, &mut buf, Some(size), &etag)
        .await
        .map(|()| buf)
        .map_err(|e| e.to_string())
}

impl RemoteSource {
    /// Reads the manifest and every shard's header and footer (and, streaming, its index).
    fn open(loc: Location, opts: &RemoteOptions) -> Result<(Manifest, RemoteSource)> {
        let url = loc.url();
        let store =
            Arc::new(Store::new(loc, opts).map_err(|e| Error::io(Path::new(&url), "open", e))?);
        let murl = store.url_of(MANIFEST_FILE);
        let bytes = store.get_all(MANIFEST_FILE).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::manifest(
                    Path::new(&url),
                    format!("{e}; a dataset holds manifest.json and shard files (made by `shardpack pack`)"),
                )
            } else {
                Error::io(Path::new(&murl), "read", e)
            }
        })?;
        let manifest = Manifest::parse(&bytes, Path::new(&murl))?;
        let fp = format!("{:016x}", crate::hash::xxh3_64(&bytes));
        let root = opts.cache_root();
        let dir = root.join(&fp);

        // Headers and footers of every shard, in parallel.
        let etags: Vec<_> = manifest
            .shards
            .iter()
            .map(|_| Arc::new(Mutex::new(None)))
            .collect();
        let mut jobs: Vec<Pin<Box<dyn std::future::Future<Output = _> + Send>>> = Vec::new();
        for (m, etag) in manifest.shards.iter().zip(&etags) {
            let len = m.bytes;
            let head = 0..(Header::SIZE as u64).min(len);
            let tail = len.saturating_sub(Footer::SIZE as u64)..len;
            for r in [head, tail] {
                jobs.push(Box::pin(fetch_range(
                    store.clone(),
                    m.file.clone(),
                    r,
                    len,
                    etag.clone(),
                )));
            }
        }
        let mut got = run_all(jobs, opts.concurrency)
            .map_err(|e| Error::io(Path::new(&url), "open", e))?
            .into_iter();
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for (m, etag) in manifest.shards.iter().zip(etags) {
            let (h, t) = (got.next().unwrap(), got.next().unwrap());
            let fetched = h.and_then(|h| {
                t.map(|t| Fetched {
                    head: Arc::new(h),
                    tail: Arc::new(t),
                    meta: Mutex::new(None),
                })
            });
            shards.push(ShardState {
                meta: m.clone(),
                fetched,
                etag,
                cached: Mutex::new(None),
            });
        }
        let src = RemoteSource {
            inner: Arc::new(Inner {
                store,
                mode: opts.mode,
                root,
                dir,
                limit: opts.cache_limit,
                shards,
            }),
        };
        if opts.mode == ReadMode::Stream {
            src.prefetch_indexes(opts.concurrency)?;
        } else if let Some(limit) = opts.cache_limit {
            // Shards left by earlier runs (of any dataset) above the limit go first.
            evict(&src.inner.root, limit, None);
        }
        Ok((manifest, src))
    }

    /// Streaming: every shard's dictionaries and index in one ranged GET each, in parallel,
    /// when they are small together (at most [`crate::reader::EAGER_INDEX_BYTES`]); larger
    /// ones are fetched on each shard's first use.
    fn prefetch_indexes(&self, concurrency: usize) -> Result<()> {
        let mut want = Vec::new();
        let mut total = 0u64;
        for (i, s) in self.inner.shards.iter().enumerate() {
            if let Some(r) = s.meta_range() {
                total = total.saturating_add(r.end - r.start);
                want.push((i, r));
            }
        }
        if total > crate::reader::EAGER_INDEX_BYTES {
            return Ok(());
        }
        let jobs = want
            .iter()
            .map(|(i, r)| {
                let s = &self.inner.shards[*i];
                Box::pin(fetch_range(
                    self.inner.store.clone(),
                    s.meta.file.clone(),
                    r.clone(),
                    s.meta.bytes,
                    s.etag.clone(),
                )) as Pin<Box<dyn std::future::Future<Output = _> + Send>>
            })
            .collect();
        let got = run_all(jobs, concurrency)
            .map_err(|e| Error::io(Path::new(&self.inner.store.loc.url()), "open", e))?;
        for ((i, r), bytes) in want.into_iter().zip(got) {
            if let (Ok(b), Ok(f)) = (bytes, &self.inner.shards[i].fetched) {
                *f.meta.lock().unwrap_or_else(|e| e.into_inner()) = Some((r.start, Arc::new(b)));
            }
        }
        Ok(())
    }

    fn shard_url(&self, i: usize) -> PathBuf {
        PathBuf::from(self.inner.store.url_of(&self.inner.shards[i].meta.file))
    }

    /// Streaming: a sparse local file of shard `i` holding its header, dictionaries and index.
    fn sparse_copy(&self, i: usize) -> Result<(File, Option<Arc<dyn Fill>>)> {
        let s = &self.inner.shards[i];
        let url = self.shard_url(i);
        let f = s
            .fetched
            .as_ref()
            .map_err(|e| Error::io(&url, "open shard", io::Error::other(e.clone())))?;
        let range = s.meta_range().ok_or_else(|| {
            Error::io(
                &url,
                "open shard",
                io::Error::other("the footer does not decode"),
            )
        })?;
        let cached = f.meta.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let meta_bytes = match cached {
            Some((_, b)) => b,
            None => {
                let obj = RemoteObject {
                    store: self.inner.store.clone(),
                    name: s.meta.file.clone(),
                    len: s.meta.bytes,
                    etag: s.etag.clone(),
                };
                let mut b = vec![0u8; (range.end - range.start) as usize];
                obj.read_exact_at(&mut b, range.start)
                    .map_err(|e| Error::io(&url, "read", e))?;
                Arc::new(b)
            }
        };
        let tmp_dir = self.inner.root.join("stream");
        fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, "create", e))?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = tmp_dir.join(format!(
            ".{}-{i}-{}-{nanos}",
            s.meta.file,
            std::process::id()
        ));
        let file = FsOpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| Error::io(&p, "create", e))?;
        // Unlinked at once: the open file is the only reference, nothing stays on disk.
        let _ = fs::remove_file(&p);
        let write = || -> io::Result<()> {
            file.set_len(s.meta.bytes)?;
            write_all_at(&file, &f.head, 0)?;
            write_all_at(&file, &meta_bytes, range.start)?;
            write_all_at(&file, &f.tail, s.meta.bytes - f.tail.len() as u64)
        };
        write().map_err(|e| Error::io(&p, "write", e))?;
        let map_file = file.try_clone().map_err(|e| Error::io(&p, "open", e))?;
        let fill = StreamFill {
            file,
            obj: RemoteObject {
                store: self.inner.store.clone(),
                name: s.meta.file.clone(),
                len: s.meta.bytes,
                etag: s.etag.clone(),
            },
            done: Mutex::new(Vec::new()),
        };
        Ok((map_file, Some(Arc::new(fill))))
    }

    /// Cached mode: the local copy of shard `i`, downloaded first if needed, locked shared.
    fn cached_copy(&self, i: usize) -> Result<Arc<File>> {
        let s = &self.inner.shards[i];
        if let Some(f) = &*s.cached.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(f.clone());
        }
        let url = self.shard_url(i);
        if let Err(e) = &s.fetched {
            return Err(Error::io(&url, "open shard", io::Error::other(e.clone())));
        }
        let dir = &self.inner.dir;
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        let path = dir.join(&s.meta.file);
        for _ in 0..8 {
            match File::open(&path) {
                Ok(f) => {
                    lock(&f, libc_lock::SHARED).map_err(|e| Error::io(&path, "lock", e))?;
                    if still_linked(&f) {
                        // Least recently used = oldest modification time.
                        let _ = f.set_modified(SystemTime::now());
                        let f = Arc::new(f);
                        *s.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.clone());
                        return Ok(f);
                    }
                    // Evicted between our open and our lock: fetch it again.
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.download(i, &path)?,
                Err(e) => return Err(Error::io(&path, "open", e)),
            }
        }
        Err(Error::io(
            &path,
            "open",
            io::Error::other("the cached shard kept being evicted; raise the cache limit"),
        ))
    }

    /// Downloads shard `i` to `path` (under its lock; done already if another process did).
    fn download(&self, i: usize, path: &Path) -> Result<()> {
        let s = &self.inner.shards[i];
        let url = self.shard_url(i);
        let lock_path = path.with_file_name(format!("{}.lock", s.meta.file));
        let lf = FsOpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, "open", e))?;
        lock(&lf, libc_lock::EXCLUSIVE).map_err(|e| Error::io(&lock_path, "lock", e))?;
        if path.exists() {
            return Ok(()); // another process finished it while we waited
        }
        let part = path.with_file_name(format!("{}.part", s.meta.file));
        let _ = fs::remove_file(&part); // left by a killed download (we hold the lock)
        let r = self.download_to(i, &part);
        if let Err(e) = r {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        fs::rename(&part, path).map_err(|e| Error::io(path, "rename", e))?;
        drop(lf);
        if let Some(limit) = self.inner.limit {
            evict(&self.inner.root, limit, Some(path));
        }
        let _ = url;
        Ok(())
    }

    fn download_to(&self, i: usize, part: &Path) -> Result<()> {
        let s = &self.inner.shards[i];
        let url = self.shard_url(i);
        let mut out = File::create(part).map_err(|e| Error::io(part, "create", e))?;
        let obj = RemoteObject {
            store: self.inner.store.clone(),
            name: s.meta.file.clone(),
            len: s.meta.bytes,
            etag: s.etag.clone(),
        };
        const CHUNK: u64 = 16 << 20;
        let mut h = Xxh3::new();
        let mut buf = vec![0u8; CHUNK.min(s.meta.bytes) as usize];
        let mut at = 0u64;
        while at < s.meta.bytes {
            let n = (s.meta.bytes - at).min(CHUNK) as usize;
            obj.read_exact_at(&mut buf[..n], at)
                .map_err(|e| Error::io(&url, "download", e))?;
            h.update(&buf[..n]);
            io::Write::write_all(&mut out, &buf[..n]).map_err(|e| Error::io(part, "write", e))?;
            at += n as u64;
        }
        let actual = h.digest();
        if actual != s.meta.xxh3.0 {
            return Err(Error::io(
                &url,
                "download",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the downloaded shard's xxh3 is {actual:016x}, the manifest says {:016x}: \
                         the object is corrupt or was replaced; nothing was cached",
                        s.meta.xxh3.0
                    ),
                ),
            ));
        }
        out.sync_all().map_err(|e| Error::io(part, "sync", e))?;
        Ok(())
    }
}

impl ShardState {
    /// `dict_offset..index end` from the fetched footer.
    fn meta_range(&self) -> Option<Range<u64>> {
        let f = self.fetched.as_ref().ok()?;
        let footer = Footer::decode_tail(&f.tail, self.meta.bytes).ok()?;
        let end = footer.index_offset.checked_add(footer.index_len)?;
        (footer.dict_offset <= end && end <= self.meta.bytes).then_some(footer.dict_offset..end)
    }
}

impl DatasetSource for RemoteSource {
    fn footer_object(&self, i: usize) -> io::Result<Box<dyn ReadAt>> {
        let s = &self.inner.shards[i];
        let f = s
            .fetched
            .as_ref()
            .map_err(|e| io::Error::other(e.clone()))?;
        let len = s.meta.bytes;
        Ok(Box::new(Prefetched {
            len,
            parts: vec![
                (0, f.head.clone()),
                (len - f.tail.len() as u64, f.tail.clone()),
            ],
            url: self.inner.store.url_of(&s.meta.file),
        }))
    }

    fn local_shard(&self, i: usize) -> Result<(File, Option<Arc<dyn Fill>>)> {
        match self.inner.mode {
            ReadMode::Stream => self.sparse_copy(i),
            ReadMode::Cache => {
                let f = self.cached_copy(i)?;
                // A second descriptor of the same open file: it shares the shared lock.
                let f = f
                    .try_clone()
                    .map_err(|e| Error::io(self.shard_url(i), "open", e))?;
                Ok((f, None))
            }
        }
    }

    fn range_reader(&self, i: usize) -> Result<Box<dyn ReadAt>> {
        let s = &self.inner.shards[i];
        Ok(match self.inner.mode {
            ReadMode::Stream => Box::new(RemoteObject {
                store: self.inner.store.clone(),
                name: s.meta.file.clone(),
                len: s.meta.bytes,
                etag: s.etag.clone(),
            }),
            ReadMode::Cache => Box::new(CachedReader {
                src: self.clone(),
                i,
            }),
        })
    }

    fn requests(&self) -> u64 {
        self.inner.store.requests()
    }

    fn describe(&self) -> String {
        match self.inner.mode {
            ReadMode::Stream => "stream".into(),
            ReadMode::Cache => format!("cache: {}", self.inner.dir.display()),
        }
    }

    fn streams(&self) -> bool {
        self.inner.mode == ReadMode::Stream
    }

    fn prepare(&self, shards: &[usize]) {
        if self.inner.mode != ReadMode::Cache || shards.len() < 2 {
            return;
        }
        // Under a cache limit, shards downloaded together could evict each other before
        // their use: together only when they all fit.
        let total: u64 = shards
            .iter()
            .map(|&i| self.inner.shards[i].meta.bytes)
            .sum();
        if self.inner.limit.is_some_and(|l| total > l) {
            return;
        }
        let next = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..shards.len().min(DOWNLOADS_IN_FLIGHT) {
                sc.spawn(|| {
                    while let Some(&i) = shards.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let _ = self.cached_copy(i); // an error is reported by the open
                    }
                });
            }
        });
    }

    fn options(&self) -> RemoteOptions {
        let mut o = self.inner.store.opts.clone();
        o.mode = self.inner.mode;
        o.cache_dir = Some(self.inner.root.clone());
        o.cache_limit = self.inner.limit;
        o
    }
}

/// Cache mode: shards downloaded together when several are needed at once (an open that
/// checks every index, [`Dataset::shards`], [`Dataset::verify`]); each download is one ranged
/// GET per 16 MiB, in order, into a buffer of its own.
const DOWNLOADS_IN_FLIGHT: usize = 8;

/// Cached mode's reader for the Loader: the local copy (downloaded on first read).
#[derive(Debug)]
struct CachedReader {
    src: RemoteSource,
    i: usize,
}

impl ReadAt for CachedReader {
    fn len(&self) -> io::Result<u64> {
        Ok(self.src.inner.shards[self.i].meta.bytes)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let f = self
            .src
            .cached_copy(self.i)
            .map_err(|e| io::Error::other(e.to_string()))?;
        crate::sys::read_full_at(&f, buf, offset)
    }
}

/// Streaming: fetches record ranges into the sparse local copy.
#[derive(Debug)]
struct StreamFill {
    file: File,
    obj: RemoteObject,
    /// Ranges already fetched (sorted, disjoint).
    done: Mutex<Vec<Range<u64>>>,
}

impl Fill for StreamFill {
    fn fill(&self, start: u64, end: u64) -> io::Result<()> {
        if start >= end {
            return Ok(());
        }
        {
            let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            let k = done.partition_point(|r| r.end <= start);
            if done
                .get(k)
                .is_some_and(|r| r.start <= start && end <= r.end)
            {
                return Ok(());
            }
        }
        let mut buf = vec![0u8; (end - start) as usize];
        self.obj.read_exact_at(&mut buf, start)?;
        // Only bytes no sample has been handed yet (holes) are written; a concurrent fill of
        // the same range writes the same bytes.
        write_all_at(&self.file, &buf, start)?;
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let k = done.partition_point(|r| r.end < start);
        let mut merged = start..end;
        while let Some(r) = done.get(k) {
            if r.start > merged.end {
                break;
            }
            merged = merged.start.min(r.start)..merged.end.max(r.end);
            done.remove(k);
        }
        done.insert(k, merged);
        Ok(())
    }
}

fn write_all_at(f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(f, buf, offset)
    }
    #[cfg(not(unix))]
    {
        let mut done = 0;
        while done < buf.len() {
            let n =
                std::os::windows::fs::FileExt::seek_write(f, &buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n;
        }
        Ok(())
    }
}

mod libc_lock {
    #[cfg(unix)]
    pub const SHARED: i32 = libc::LOCK_SH;
    #[cfg(unix)]
    pub const EXCLUSIVE: i32 = libc::LOCK_EX;
    #[cfg(not(unix))]
    pub const SHARED: i32 = 1;
    #[cfg(not(unix))]
    pub const EXCLUSIVE: i32 = 2;
}

/// `flock(f, op)`, waiting (interrupted calls retried).
fn lock(f: &File, op: i32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (f, op);
        Ok(())
    }
}

/// Takes the exclusive lock without waiting: `false` when another holder has it.
fn try_lock_exclusive(f: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        false
    }
}

/// `false` once the file was removed from its directory (evicted while we opened it).
fn still_linked(f: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        f.metadata().is_ok_and(|m| m.nlink() > 0)
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        true
    }
}

/// The cached shards under `root` (every dataset), with size and modification time.
fn cached_shards(root: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    for d in fs::read_dir(root).into_iter().flatten().flatten() {
        for e in fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "spk") {
                if let Ok(m) = e.metadata() {
                    out.push((p, m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                }
            }
        }
    }
    out
}

/// Removes least recently used cached shards until the cache holds at most `limit` bytes,
/// skipping `keep` and every shard some process holds open (its shared lock). Returns the
/// bytes left.
pub fn evict(root: &Path, limit: u64, keep: Option<&Path>) -> u64 {
    let mut all = cached_shards(root);
    let mut total: u64 = all.iter().map(|(_, n, _)| n).sum();
    all.sort_by_key(|(_, _, t)| *t);
    for (p, n, _) in all {
        if total <= limit {
            break;
        }
        if Some(p.as_path()) == keep {
            continue;
        }
        let Ok(f) = File::open(&p) else { continue };
        if try_lock_exclusive(&f) && still_linked(&f) && fs::remove_file(&p).is_ok() {
            total -= n;
        }
    }
    total
}

impl Dataset {
    /// Opens the dataset at `url` (`s3://bucket/prefix`, `http(s)://host/path`, `file://` or a
    /// plain path) reading it as `ropts` says (see [`crate::storage::remote`]). [`Dataset::open`]
    /// of a URL is this with [`RemoteOptions::from_env`]. In cache mode the indexes are checked
    /// on each shard's first use (when it is downloaded) unless `check` is
    /// [`IndexCheck::AtOpen`], which downloads every shard at open (8 at a time).
    pub fn open_remote(
        url: &str,
        ropts: &RemoteOptions,
        opts: &OpenOptions,
        check: IndexCheck,
    ) -> Result<Dataset> {
        let loc = Location::parse(url).map_err(|m| Error::manifest(Path::new(url), m))?;
        if let Location::Local(p) = loc {
            return Dataset::open_checked(p, opts, check);
        }
        let display = PathBuf::from(loc.url());
        let (manifest, src) = RemoteSource::open(loc, ropts)?;
        let check = match (ropts.mode, check) {
            (ReadMode::Cache, IndexCheck::Auto) => IndexCheck::FirstUse,
            (_, c) => c,
        };
        Dataset::open_parts(display, manifest, Some(Arc::new(src)), opts, check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_mode_names_parse_back() {
        for m in [ReadMode::Cache, ReadMode::Stream] {
            assert_eq!(ReadMode::parse(m.as_str()), Some(m));
        }
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("s3://b/a/b/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3://b").unwrap().url_of("manifest.json"),
            "s3://b/manifest.json"
        );
        assert_eq!(
            Location::parse("http://h:1/x/").unwrap(),
            Location::Http("http://h:1/x".into())
        );
        assert_eq!(
            Location::parse("file:///tmp/d").unwrap(),
            Location::Local("/tmp/d".into())
        );
        assert_eq!(Location::parse("d").unwrap(), Location::Local("d".into()));
        assert!(Location::parse("s3://").is_err());
        assert!(Location::parse("http://").is_err());
    }

    #[test]
    fn fills_merge() {
        let dir = std::env::temp_dir();
        let p = dir.join(format!("spk-fill-{}", std::process::id()));
        let file = File::create(&p).unwrap();
        let _ = fs::remove_file(&p);
        let store = Arc::new(Store {
            loc: Location::Http("http://127.0.0.1:9".into()),
            opts: RemoteOptions::default(),
            client: Mutex::new(None),
            requests: AtomicU64::new(0),
        });
        let f = StreamFill {
            file,
            obj: RemoteObject::new(store, "x", 100),
            done: Mutex::new(vec![0..10, 20..30]),
        };
        // Covered ranges need no request (the store above answers nothing).
        f.fill(0, 10).unwrap();
        f.fill(22, 30).unwrap();
        assert_eq!(f.obj.store.requests(), 0);
    }
}

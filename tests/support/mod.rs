//! Loopback servers for the remote tests (one place for every test binary that needs them):
//! `scripts/testsrv.py` (nginx, moto) and `scripts/faultproxy.py`, each started with a piped
//! stdin that the guard closes on drop (the server then stops by itself), and a small
//! dataset made and uploaded for each test.
//!
//! A missing nginx or moto is a test failure naming `scripts/remote-env.sh`, never a pass.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use shardpack::storage::remote::{Location, RemoteOptions, Store};
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("scripts/testsrv.py").is_file())
        .expect("the repository root (with scripts/testsrv.py)")
        .to_path_buf()
}

/// A server started by a helper script; stops when dropped (its stdin closes).
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn start(script: &str, args: &[&str]) -> Server {
    let path = repo().join("scripts").join(script);
    assert!(
        path.is_file(),
        "{} is missing (it comes with the repository; for the fault proxy, see the remote \
         fault tests' docs)",
        path.display()
    );
    let mut child = Command::new("python3")
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", path.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!(
            "{script} {args:?} did not start (output {line:?}); the remote tests need nginx and \
             moto: run scripts/remote-env.sh first"
        )
    });
    Server {
        url: v["url"].as_str().expect("url").to_string(),
        child,
    }
}

/// nginx serving `root`.
pub fn http(root: &Path) -> Server {
    start("testsrv.py", &["http", "--root", root.to_str().unwrap()])
}

/// The fault proxy in front of `upstream`, with extra arguments.
pub fn proxy(upstream: &str, args: &[&str]) -> Server {
    let mut a = vec!["--upstream", upstream];
    a.extend_from_slice(args);
    start("faultproxy.py", &a)
}

/// One moto server for the whole test binary (the S3 endpoint is process-wide environment),
/// with bucket `test`; tests use distinct prefixes. Sets the dummy credentials.
pub fn s3() -> &'static str {
    static S3: OnceLock<Server> = OnceLock::new();
    let s = S3.get_or_init(|| {
        let s = start("testsrv.py", &["s3", "--bucket", "test"]);
        // SAFETY-free in edition 2021; done once, before any S3 client is built.
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ENDPOINT_URL", &s.url);
        s
    });
    &s.url
}

/// Deterministic sample content: `n` samples with a raw and a zstd field, small shards.
pub fn make_dataset(dir: &Path, n: u64) {
    let fields = vec![FieldSpec::raw("bin"), FieldSpec::zstd("txt")];
    let opts = WriterOptions {
        shard_size: 64 << 10,
        ..WriterOptions::default()
    };
    std::fs::create_dir_all(dir).unwrap();
    let mut w = DatasetWriter::create(dir, fields, opts).unwrap();
    for i in 0..n {
        let key = format!("s/{i:05}");
        let bin = content(i);
        let txt = format!("sample {i} ").repeat(1 + (i % 7) as usize);
        w.append(
            key.as_bytes(),
            Some((i % 3) as u32),
            &[(0, bin.as_slice()), (1, txt.as_bytes())],
        )
        .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
}

/// The raw field of sample `i`.
pub fn content(i: u64) -> Vec<u8> {
    let len = 500 + (i * 7919 % 3000) as usize;
    (0..len).map(|k| (k as u64 * 31 + i * 17) as u8).collect()
}

/// Uploads every file of the dataset in `dir` to `url` (manifest last).
pub fn upload(dir: &Path, url: &str) {
    let store = Store::new(Location::parse(url).unwrap(), &RemoteOptions::default()).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "manifest.json")
        .collect();
    names.sort();
    names.push("manifest.json".into());
    for n in names {
        store.put(&n, std::fs::read(dir.join(&n)).unwrap()).unwrap();
    }
}

/// Options for tests: a private cache, short waits.
pub fn opts(mode: shardpack::storage::remote::ReadMode, cache: &Path) -> RemoteOptions {
    RemoteOptions {
        mode,
        cache_dir: Some(cache.to_path_buf()),
        backoff: std::time::Duration::from_millis(20),
        timeout: std::time::Duration::from_secs(5),
        ..RemoteOptions::default()
    }
}

/// A control endpoint of the fault proxy at `url` (`stats`, `reset`): its JSON answer.
pub fn proxy_control(url: &str, what: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut c = std::net::TcpStream::connect(host).unwrap();
    write!(
        c,
        "GET /__proxy__/{what} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The proxy keeps the connection for a next request: end ours so it closes after answering.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|_| panic!("proxy {what}: {resp}"))
}

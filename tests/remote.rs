//! Remote datasets over real loopback servers (`scripts/testsrv.py`: moto for S3, nginx for
//! HTTP): byte-exact reads in both modes through `Dataset::get` and the Loader, the request
//! count of open, clear 403/404 errors, a corrupted remote shard, a cache shared by two
//! processes, and eviction under a limit. Needs `scripts/remote-env.sh` to have run.
#![cfg(feature = "remote")]

mod support;

use std::path::Path;
use std::sync::Arc;

use shardpack::reader::{IndexCheck, OpenOptions};
use shardpack::storage::remote::ReadMode;
use shardpack::{Dataset, Loader, LoaderOptions};
use support::*;

const N: u64 = 300;

fn open(url: &str, mode: ReadMode, cache: &Path) -> shardpack::Result<Dataset> {
    Dataset::open_remote(
        url,
        &opts(mode, cache),
        &OpenOptions::default(),
        IndexCheck::Auto,
    )
}

/// Every sample through get and through one Loader epoch equals what was packed.
fn check_all(ds: Dataset) {
    assert_eq!(ds.len(), N);
    for i in [0, 1, N / 2, N - 1] {
        let s = ds.get(i).unwrap();
        assert_eq!(s.key(), format!("s/{i:05}").as_bytes());
        assert_eq!(
            &*s.field(b"bin").unwrap().unwrap().data().unwrap(),
            &content(i)[..]
        );
    }
    let ds = Arc::new(ds);
    let loader = Loader::new(ds.clone(), LoaderOptions::default()).unwrap();
    let mut seen = vec![false; N as usize];
    for s in loader {
        let s = s.unwrap();
        assert_eq!(
            s.field(0).unwrap(),
            &content(s.index)[..],
            "sample {}",
            s.index
        );
        let txt = format!("sample {} ", s.index).repeat(1 + (s.index % 7) as usize);
        assert_eq!(s.field(1).unwrap(), txt.as_bytes());
        seen[s.index as usize] = true;
    }
    assert!(seen.iter().all(|&b| b), "the loader read every sample once");
    let r = ds.verify();
    assert!(r.is_ok(), "{r:?}");
}

fn s3_dataset(prefix: &str) -> (tempfile::TempDir, String, usize) {
    s3();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("ds");
    make_dataset(&src, N);
    let url = format!("s3://test/{prefix}");
    upload(&src, &url);
    let shards = Dataset::open(&src).unwrap().shard_count();
    (t, url, shards)
}

#[test]
fn s3_reads_back_in_both_modes() {
    let (t, url, shards) = s3_dataset("both");
    assert!(shards > 3, "several shards ({shards})");
    for mode in [ReadMode::Cache, ReadMode::Stream] {
        let cache = t.path().join(format!("cache-{mode:?}"));
        let ds = open(&url, mode, &cache).unwrap();
        // Open: the manifest and two ranged GETs per shard (plus the index when streaming).
        let per = if mode == ReadMode::Stream { 3 } else { 2 };
        assert_eq!(
            ds.remote_requests(),
            Some(1 + per * shards as u64),
            "{mode:?}"
        );
        check_all(ds);
        let spk = std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
                    .count()
            })
            .unwrap_or(0);
        match mode {
            ReadMode::Cache => assert!(spk >= shards, "shards cached ({spk})"),
            ReadMode::Stream => {
                // Only the (unlinked) sparse index files' folder: nothing left on disk.
                let left: Vec<_> = walk(&cache).into_iter().filter(|p| p.is_file()).collect();
                assert!(left.is_empty(), "streaming left {left:?}");
            }
        }
    }
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn http_reads_back_in_both_modes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    make_dataset(&root.join("data/ds"), N);
    let srv = http(&root);
    let url = format!("{}/data/ds", srv.url);
    for mode in [ReadMode::Cache, ReadMode::Stream] {
        let cache = t.path().join(format!("cache-{mode:?}"));
        check_all(open(&url, mode, &cache).unwrap());
    }
    // Dataset::open of a URL (options from the environment) works too.
    std::env::set_var("SHARDPACK_CACHE_DIR", t.path().join("env-cache"));
    assert_eq!(Dataset::open(&url).unwrap().len(), N);
}

#[test]
fn missing_and_forbidden_name_the_url() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    make_dataset(&root.join("ds"), N);
    let srv = http(&root);
    let url = format!("{}/nothing-here", srv.url);
    let e = open(&url, ReadMode::Cache, t.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{url}/manifest.json")) && e.contains("404"),
        "{e}"
    );
    // A shard the manifest lists but the server lacks.
    let url = format!("{}/ds", srv.url);
    std::fs::remove_file(root.join("ds/shard-000001.spk")).unwrap();
    let e = open(&url, ReadMode::Stream, t.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{url}/shard-000001.spk")) && e.contains("404"),
        "{e}"
    );
    // 403 through the fault proxy.
    let p = proxy(&srv.url, &["--fault", "403", "--every", "1"]);
    let url = format!("{}/ds", p.url);
    let e = open(&url, ReadMode::Cache, t.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{url}/manifest.json")) && e.contains("403"),
        "{e}"
    );
}

#[test]
fn a_corrupted_remote_shard_is_an_error_in_both_modes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    let ds_dir = root.join("ds");
    make_dataset(&ds_dir, N);
    // Flip a byte inside sample 0's raw record (shard 0's data region).
    let local = Dataset::open(&ds_dir).unwrap();
    let off = local
        .get(0)
        .unwrap()
        .field(b"bin")
        .unwrap()
        .unwrap()
        .offset();
    drop(local);
    let p = ds_dir.join("shard-000000.spk");
    let mut b = std::fs::read(&p).unwrap();
    b[off as usize + 3] ^= 0x40;
    std::fs::write(&p, b).unwrap();
    let srv = http(&root);
    let url = format!("{}/ds", srv.url);
    // Cache: the download does not match the manifest's xxh3; nothing is cached.
    let cache = t.path().join("c");
    let ds = open(&url, ReadMode::Cache, &cache).unwrap();
    let e = ds.get(0).unwrap_err().to_string();
    assert!(e.contains("xxh3") && e.contains("shard-000000.spk"), "{e}");
    assert!(
        walk(&cache)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".spk")
                && !p.to_string_lossy().ends_with(".part")),
        "{:?}",
        walk(&cache)
    );
    // Stream: the record's checksum catches it, in get and in the Loader.
    let ds = open(&url, ReadMode::Stream, &t.path().join("s")).unwrap();
    let e = ds
        .get(0)
        .unwrap()
        .field(b"bin")
        .unwrap()
        .unwrap()
        .data()
        .unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    let ds = Arc::new(ds);
    let bad: Vec<_> = Loader::new(ds, LoaderOptions::default())
        .unwrap()
        .filter_map(|s| s.err())
        .collect();
    assert!(!bad.is_empty(), "the loader reports the corrupt record");
}

#[test]
fn evicts_least_recently_used_under_a_limit() {
    let (t, url, shards) = s3_dataset("evict");
    let cache = t.path().join("cache");
    let mut o = opts(ReadMode::Cache, &cache);
    let one = Dataset::open(t.path().join("ds"))
        .unwrap()
        .manifest()
        .shards[0]
        .bytes;
    o.cache_limit = Some(one * 2 + one / 2); // room for two shards
    {
        let ds = Dataset::open_remote(&url, &o, &OpenOptions::default(), IndexCheck::Auto).unwrap();
        for s in 0..shards {
            let first = ds.manifest().shards[s].first_sample;
            assert_eq!(
                &*ds.get(first)
                    .unwrap()
                    .field(b"bin")
                    .unwrap()
                    .unwrap()
                    .data()
                    .unwrap(),
                &content(first)[..]
            );
        }
        // In use: every shard stays while this dataset holds it open.
        assert_eq!(cached(&cache), shards);
    }
    // A new process-equivalent: opening another shard now evicts the unused ones down to the limit.
    let ds = Dataset::open_remote(&url, &o, &OpenOptions::default(), IndexCheck::Auto).unwrap();
    let first = ds.manifest().shards[0].first_sample;
    ds.get(first).unwrap();
    let _ = ds.get(ds.manifest().shards[1].first_sample).unwrap();
    assert!(cached(&cache) <= 2, "{} cached", cached(&cache));
    check_all(ds);
}

fn cached(cache: &Path) -> usize {
    walk(cache)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "spk"))
        .count()
}

/// Run as a child process by `two_processes_share_a_cache`.
#[test]
fn child_reads_through_the_cache() {
    let Ok(url) = std::env::var("SPK_CHILD_URL") else {
        return;
    };
    let cache = std::env::var("SPK_CHILD_CACHE").unwrap();
    check_all(open(&url, ReadMode::Cache, Path::new(&cache)).unwrap());
}

#[test]
fn two_processes_share_a_cache() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    make_dataset(&root.join("ds"), N);
    let srv = http(&root);
    let url = format!("{}/ds", srv.url);
    let cache = t.path().join("cache");
    let exe = std::env::current_exe().unwrap();
    let kids: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "child_reads_through_the_cache",
                    "--test-threads=1",
                ])
                .env("SPK_CHILD_URL", &url)
                .env("SPK_CHILD_CACHE", &cache)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success(), "a child failed");
    }
    let shards = Dataset::open(root.join("ds")).unwrap().shard_count();
    assert_eq!(
        cached(&cache),
        shards,
        "each shard downloaded once into one place"
    );
    let left: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn labels_of_a_streamed_dataset_cost_no_request() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    make_dataset(&root.join("ds"), N);
    let srv = http(&root);
    let ds = open(
        &format!("{}/ds", srv.url),
        ReadMode::Stream,
        &t.path().join("cache"),
    )
    .unwrap();
    let after_open = ds.remote_requests();
    let labels: Vec<Option<u32>> = (0..N).map(|i| ds.label(i).unwrap()).collect();
    let want: Vec<Option<u32>> = (0..N).map(|i| Some((i % 3) as u32)).collect();
    assert_eq!(labels, want);
    assert_eq!(
        ds.remote_requests(),
        after_open,
        "labels come from the indexes fetched at open, not from the records"
    );
    assert!(matches!(
        ds.label(N),
        Err(shardpack::Error::OutOfRange { .. })
    ));
}

/// Stream mode's Loader defaults cover the link's latency: with `io_threads` left automatic
/// (0, the default) the Loader keeps more requests in flight than the local default's threads
/// (the proxy counts them), still one ranged GET per piece, and the pieces, so the order, are
/// those of the same dataset read locally. An explicit `io_threads`, 8 included, is used as
/// given.
#[test]
fn a_streamed_loader_keeps_enough_requests_in_flight() {
    use shardpack::loader::{epoch_order, DEFAULT_IO_THREADS, STREAM_IO_THREADS};
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    make_dataset(&root.join("ds"), 3000);
    let local = Arc::new(Dataset::open(root.join("ds")).unwrap());
    let d = LoaderOptions::default();
    assert_eq!(d.io_threads, 0, "automatic");
    assert_eq!(d.io_threads_for(&local), DEFAULT_IO_THREADS);
    // Every shard is smaller than a chunk: one piece, so one ranged GET, per shard.
    let shards = local.shard_count() as u64;
    assert!(shards > 2 * STREAM_IO_THREADS as u64, "{shards} shards");
    assert!(local
        .manifest()
        .shards
        .iter()
        .all(|s| s.bytes < d.chunk_bytes));
    let want = epoch_order(&local, &d).unwrap();
    let srv = http(&root);
    let p = proxy(&srv.url, &["--latency-ms", "50"]);
    let url = format!("{}/ds", p.url);
    let ds = Arc::new(open(&url, ReadMode::Stream, &t.path().join("cache")).unwrap());
    assert_eq!(d.io_threads_for(&ds), STREAM_IO_THREADS);
    for (threads, lo, hi) in [
        (
            d.io_threads,
            DEFAULT_IO_THREADS as u64 + 1,
            STREAM_IO_THREADS as u64,
        ),
        (4, 1, 4),
        (DEFAULT_IO_THREADS, 1, DEFAULT_IO_THREADS as u64),
    ] {
        proxy_control(&p.url, "reset");
        let before = ds.remote_requests().unwrap();
        let o = LoaderOptions {
            io_threads: threads,
            ..d.clone()
        };
        let got: Vec<u64> = Loader::new(ds.clone(), o.clone())
            .unwrap()
            .map(|s| s.unwrap().index)
            .collect();
        assert_eq!(got, want, "io_threads {threads}: the local order");
        assert_eq!(epoch_order(&ds, &o).unwrap(), want);
        assert_eq!(ds.remote_requests().unwrap() - before, shards);
        let st = proxy_control(&p.url, "stats");
        assert_eq!(st["requests"].as_u64(), Some(shards), "{st}");
        let max = proxy_control(&p.url, "in_flight")["max_in_flight"]
            .as_u64()
            .unwrap();
        eprintln!("io_threads {threads}: {max} requests in flight at most");
        assert!(
            (lo..=hi).contains(&max),
            "io_threads {threads}: {max} requests in flight, not {lo}..={hi}"
        );
    }
}

/// Cache mode: what needs every shard ([`Dataset::verify`], `shards()`, an open that checks
/// every index) downloads them several at a time, not one after another; each once.
#[test]
fn cache_mode_downloads_what_verify_needs_together() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    make_dataset(&root.join("ds"), N);
    let shards = Dataset::open(root.join("ds")).unwrap().shard_count();
    assert!(shards > 3, "{shards} shards");
    let srv = http(&root);
    let p = proxy(&srv.url, &["--latency-ms", "50"]);
    let url = format!("{}/ds", p.url);
    let cache = t.path().join("cache");
    let ds = open(&url, ReadMode::Cache, &cache).unwrap();
    proxy_control(&p.url, "reset");
    let r = ds.verify();
    assert!(r.is_ok(), "{r:?}");
    let st = proxy_control(&p.url, "stats");
    assert_eq!(
        st["requests"].as_u64(),
        Some(shards as u64),
        "one GET per shard: {st}"
    );
    let max = proxy_control(&p.url, "in_flight")["max_in_flight"]
        .as_u64()
        .unwrap();
    eprintln!("verify, cache mode: {max} downloads in flight at most");
    assert!(
        (2..=8).contains(&max),
        "downloads in flight together, at most 8: {max}"
    );
    assert_eq!(cached(&cache), shards);
    check_all(ds);
}

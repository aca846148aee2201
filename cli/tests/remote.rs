//! The CLI on datasets given as URLs (nginx from `scripts/testsrv.py`; needs
//! `scripts/remote-env.sh`): `info` prints the open's request count, `cat`, `ls` and `verify`
//! read through both modes.

#[path = "../../tests/support/mod.rs"]
mod support;
mod util;

use util::*;

#[test]
fn commands_take_urls_in_both_modes() {
    let t = tmp();
    let root = t.path().join("www");
    support::make_dataset(&root.join("ds"), 120);
    let srv = support::http(&root);
    let url = format!("{}/ds", srv.url);
    let shards = shardpack::Dataset::open(root.join("ds"))
        .unwrap()
        .shard_count();
    for mode in ["cache", "stream"] {
        let cache = t.path().join(format!("cache-{mode}"));
        let run = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
            let out = shardpack(args)
                .into_command()
                .env("SHARDPACK_REMOTE_MODE", mode)
                .env("SHARDPACK_CACHE_DIR", &cache)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{mode}: {err}");
            out.stdout
        };
        let info: serde_json::Value =
            serde_json::from_slice(&run(&[&"info", &"--json", &url])).unwrap();
        // In either mode: the manifest and three ranged GETs per shard (header, footer,
        // index), and no shard downloaded (cache mode used to fetch every one to check it).
        assert_eq!(
            info["remote_open"]["requests"].as_u64(),
            Some(1 + 3 * shards as u64),
            "{mode}: {info}"
        );
        let text = String::from_utf8(run(&[&"info", &url])).unwrap();
        assert!(text.contains("remote open:"), "{text}");
        let spk = |d: &std::path::Path| {
            files(d)
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "spk"))
                .count()
        };
        assert_eq!(
            spk(&cache),
            0,
            "{mode}: info downloaded shards: {:?}",
            files(&cache)
        );
        assert_eq!(
            run(&[&"cat", &url, &"s/00077", &"bin"]),
            support::content(77),
            "{mode}"
        );
        let ls = String::from_utf8(run(&[&"ls", &url])).unwrap();
        assert!(ls.contains("s/00119"), "{ls}");
        run(&[&"verify", &url]);
        if mode == "cache" {
            assert!(spk(&cache) > 0, "cat and verify use the cache");
        }
    }
    // A URL with nothing there: the error names it.
    let bad = format!("{}/nope", srv.url);
    shardpack(&[&"info", &bad])
        .run()
        .code(1)
        .stderr_has(&[&format!("{bad}/manifest.json"), "404"]);
}

/// Every file under `d`.
fn files(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `ls URL` needs only the indexes (keys, labels and field sizes are there), in either mode:
/// the requests the proxy counts are the open's (the manifest, three ranged GETs per shard),
/// no record GET and no shard downloaded; the listing equals the local one.
#[test]
fn ls_of_a_streamed_dataset_fetches_no_record() {
    let t = tmp();
    let root = t.path().join("www");
    support::make_dataset(&root.join("ds"), 120);
    let shards = shardpack::Dataset::open(root.join("ds"))
        .unwrap()
        .shard_count() as u64;
    assert!(shards > 1, "{shards} shards");
    let srv = support::http(&root);
    let p = support::proxy(&srv.url, &[]);
    let url = format!("{}/ds", p.url);
    let local = shardpack(&[&"ls", &root.join("ds")])
        .into_command()
        .output()
        .unwrap();
    assert!(local.status.success());
    let cache = t.path().join("cache");
    for (mode, args) in [
        ("stream", &[][..]),
        ("stream", &["--json"][..]),
        ("stream", &["-0"][..]),
        ("cache", &[][..]),
    ] {
        support::proxy_control(&p.url, "reset");
        let out = shardpack(&[&"ls", &url])
            .into_command()
            .args(args)
            .env("SHARDPACK_REMOTE_MODE", mode)
            .env("SHARDPACK_CACHE_DIR", &cache)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st = support::proxy_control(&p.url, "stats");
        assert_eq!(
            st["requests"].as_u64(),
            Some(1 + 3 * shards),
            "ls {args:?} ({mode}): only the open's requests: {st}"
        );
        let spk = files(&cache)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "spk"))
            .count();
        assert_eq!(spk, 0, "{mode}: ls downloaded shards");
        if args.is_empty() {
            assert_eq!(out.stdout, local.stdout, "the listing of the local dataset");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `pack SRC s3://bucket/prefix`: packed in a staging folder, then uploaded (moto)
// ---------------------------------------------------------------------------------------------

use shardpack::storage::remote::{Location, RemoteOptions, Store};

/// Runs `shardpack ARGS...` with extra environment (the S3 endpoint comes from `support::s3`).
fn sp_env(
    args: &[&dyn AsRef<std::ffi::OsStr>],
    env: &[(&str, &dyn AsRef<std::ffi::OsStr>)],
) -> Run {
    let mut c = shardpack(args).into_command();
    for (k, v) in env {
        c.env(k, v);
    }
    let desc = format!("{c:?}");
    let out = c.output().unwrap();
    Run {
        desc,
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn store(url: &str) -> Store {
    Store::new(Location::parse(url).unwrap(), &RemoteOptions::default()).unwrap()
}

/// Whether object `name` exists under `url`.
fn exists(url: &str, name: &str) -> bool {
    match store(url).get_all(name) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("{url}/{name}: {e}"),
    }
}

/// The names of a local dataset's files (manifest and shards).
fn dataset_files(d: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn staging_is_empty(d: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(d)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the staging folder was not removed: {left:?}"
    );
}

#[test]
fn pack_uploads_to_s3_and_reads_back_byte_exactly() {
    support::s3();
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    // One shard larger than a part: a multipart upload (5 MiB parts, S3's smallest).
    put(&src, b"big/0000.bin", &noise(1, (6 << 20) + 12_345));
    let stage = t.path().join("stage");
    let cache = t.path().join("cache");
    let local = t.path().join("local");
    sp(&[&"pack", &"-q", &"--shard-size", &"64KiB", &src, &local]).ok();
    let url = "s3://test/cli-pack/ds";
    let env: [(&str, &dyn AsRef<std::ffi::OsStr>); 2] = [
        ("SHARDPACK_CACHE_DIR", &cache),
        ("SHARDPACK_UPLOAD_PART_SIZE", &"5242880"),
    ];
    let r = sp_env(
        &[
            &"pack",
            &"--json",
            &"--shard-size",
            &"64KiB",
            &"--staging",
            &stage,
            &src,
            &url,
        ],
        &env,
    )
    .ok();
    let v = r.json();
    assert_eq!(v["out"].as_str(), Some(url), "{v}");
    let names = dataset_files(&local);
    let shards = names.len() as u64 - 1;
    assert!(shards > 1, "{names:?}");
    assert_eq!(v["upload"]["shards"].as_u64(), Some(shards), "{v}");
    assert!(v["upload"]["multipart"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["upload"]["replaced"].as_bool(), Some(false), "{v}");
    staging_is_empty(&stage);
    // Every object equals the local pack's file: shards and manifest byte-identical.
    let s = store(url);
    for n in &names {
        assert!(
            s.get_all(n).unwrap() == std::fs::read(local.join(n)).unwrap(),
            "{url}/{n} differs from the local pack's"
        );
    }
    sp_env(&[&"verify", &url], &env).ok();
    let want = sp(&[&"cat", &local, &"big/0000", &"bin"]).ok().stdout;
    assert_eq!(
        sp_env(&[&"cat", &url, &"big/0000", &"bin"], &env)
            .ok()
            .stdout,
        want
    );
    let (xl, xr) = (t.path().join("x-local"), t.path().join("x-remote"));
    sp(&[&"extract", &local, &xl]).ok();
    sp_env(&[&"extract", &url, &xr], &env).ok();
    assert_same_tree(&read_tree(&xr), &read_tree(&xl), "extract of the upload");

    // Again without --force: refused before packing, nothing changed.
    let before = s.get_all("manifest.json").unwrap();
    sp_env(&[&"pack", &"--staging", &stage, &src, &url], &env)
        .code(1)
        .stderr_has(&[&format!("{url}/manifest.json"), "--force"]);
    assert_eq!(s.get_all("manifest.json").unwrap(), before);
    staging_is_empty(&stage);

    // With --force: the same dataset again, said in the summary.
    let r = sp_env(
        &[
            &"pack",
            &"--force",
            &"--shard-size",
            &"64KiB",
            &"--staging",
            &stage,
            &src,
            &url,
        ],
        &env,
    )
    .ok()
    .stdout_has(&format!("uploaded {shards} shards"))
    .stdout_has(&format!("to {url} in "))
    .stdout_has("replacing the dataset there")
    .stdout_has(&format!("dataset: {url}"));
    let _ = r;
    assert_eq!(s.get_all("manifest.json").unwrap(), before);
    sp_env(&[&"verify", &url], &env).ok();
}

#[test]
fn pack_force_onto_s3_deletes_stale_shards_only() {
    support::s3();
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let cache = t.path().join("cache");
    let env: [(&str, &dyn AsRef<std::ffi::OsStr>); 1] = [("SHARDPACK_CACHE_DIR", &cache)];
    let url = "s3://test/cli-force/ds";
    let r = sp_env(
        &[
            &"pack",
            &"--json",
            &"--max-samples-per-shard",
            &"2",
            &src,
            &url,
        ],
        &env,
    )
    .ok();
    let many = r.json()["shards"].as_u64().unwrap();
    assert!(many > 3, "{many} shards");
    // Keys that are not shardpack's, or not directly under the prefix, are never deleted.
    let s = store(url);
    s.put("README.md", b"notes".to_vec()).unwrap();
    s.put("extra/shard-000999.spk", b"x".to_vec()).unwrap();
    let r = sp_env(&[&"pack", &"--json", &"--force", &src, &url], &env).ok();
    let v = r.json();
    let few = v["shards"].as_u64().unwrap();
    assert!(few < many, "{few} < {many}");
    assert_eq!(v["upload"]["replaced"].as_bool(), Some(true), "{v}");
    assert_eq!(
        v["upload"]["deleted"].as_array().unwrap().len() as u64,
        many - few,
        "{v}"
    );
    for i in 0..many {
        let name = shardpack::manifest::shard_file_name(i);
        assert_eq!(exists(url, &name), i < few, "{name}");
    }
    assert!(exists(url, "README.md") && exists(url, "extra/shard-000999.spk"));
    sp_env(&[&"verify", &url], &env).ok();
    let info = sp_env(&[&"info", &"--json", &url], &env).ok().json();
    assert_eq!(info["shards"].as_u64(), Some(few), "{info}");
}

#[test]
fn an_interrupted_upload_to_s3_is_not_a_dataset_and_a_rerun_replaces_it() {
    support::s3();
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let stage = t.path().join("stage");
    let cache = t.path().join("cache");
    let url = "s3://test/cli-interrupted/ds";
    let failing: [(&str, &dyn AsRef<std::ffi::OsStr>); 2] = [
        ("SHARDPACK_CACHE_DIR", &cache),
        ("SHARDPACK_TEST_FAIL_UPLOAD_AFTER", &"1"),
    ];
    let env = &failing[..1];
    let plain: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"pack",
        &"--max-samples-per-shard",
        &"2",
        &"--staging",
        &stage,
        &src,
        &url,
    ];
    let mut forced = plain.clone();
    forced.insert(1, &"--force");
    sp_env(&plain, &failing).code(1).stderr_has(&[
        url,
        "no manifest.json was uploaded",
        "test hook",
    ]);
    assert!(exists(url, "shard-000000.spk"), "a shard was uploaded");
    assert!(!exists(url, "manifest.json"));
    staging_is_empty(&stage);
    sp_env(&[&"info", &url], env).code(1);
    // A rerun (no --force: no dataset is there) replaces it.
    sp_env(&plain, env).ok();
    sp_env(&[&"verify", &url], env).ok();
    // A failed --force over a dataset: its manifest was deleted first, so neither the old
    // nor a half-new dataset looks complete.
    sp_env(&forced, &failing)
        .code(1)
        .stderr_has(&["was deleted first"]);
    assert!(!exists(url, "manifest.json"));
    sp_env(&forced, env).ok();
    sp_env(&[&"verify", &url], env).ok();
    staging_is_empty(&stage);
}

/// Ctrl-C during the upload (SIGINT raised by a test hook once the first shard's bytes are
/// sent): exit 130, no manifest.json at the prefix, the staging folder removed.
#[cfg(unix)]
#[test]
fn ctrl_c_during_an_upload_to_s3_leaves_no_manifest() {
    support::s3();
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let stage = t.path().join("stage");
    let url = "s3://test/cli-sigint/ds";
    let env: [(&str, &dyn AsRef<std::ffi::OsStr>); 1] =
        [("SHARDPACK_TEST_SIGINT_UPLOAD_AFTER", &"1")];
    sp_env(
        &[
            &"pack",
            &"--max-samples-per-shard",
            &"1",
            &"--staging",
            &stage,
            &src,
            &url,
        ],
        &env,
    )
    .code(130)
    .stderr_has(&[
        "interrupted by SIGINT",
        "stopped before its manifest.json",
        url,
    ]);
    assert!(!exists(url, "manifest.json"));
    staging_is_empty(&stage);
}

#[test]
fn pack_refuses_an_http_destination() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let stage = t.path().join("stage");
    for url in ["http://127.0.0.1:9/ds", "https://example.invalid/ds"] {
        sp(&[&"pack", &"--staging", &stage, &src, &url])
            .code(1)
            .stderr_has(&[url, "read-only", "s3://"]);
        staging_is_empty(&stage);
    }
    sp(&[&"pack", &"--staging", &stage, &src, &t.path().join("out")])
        .code(1)
        .stderr_has(&["--staging is for an s3:// OUT only"]);
    // A bucket that does not exist: refused before packing, naming the URL.
    support::s3();
    let url = "s3://no-such-bucket/ds";
    sp(&[&"pack", &"--staging", &stage, &src, &url])
        .code(1)
        .stderr_has(&[url]);
    staging_is_empty(&stage);
}

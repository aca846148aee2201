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

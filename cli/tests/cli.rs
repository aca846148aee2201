//! End-to-end tests of the `shardpack` binary on small temporary trees.
//!
//! Every failure test checks three things: the exit code, that stderr names the offending path
//! and says what to do, and that nothing is left looking like a complete dataset (no
//! manifest.json in OUT, and `shardpack info OUT` fails).

#![cfg(unix)]

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use util::*;

/// `shardpack pack -q SRC OUT EXTRA...` (exit code not checked).
fn pack_run(src: &Path, out: &Path, extra: &[&dyn AsRef<OsStr>]) -> Run {
    // No -q: tests read the summary (stderr is not a terminal, so there is no bar anyway).
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"pack", &src, &out];
    args.extend_from_slice(extra);
    sp(&args)
}

/// `shardpack pack SRC OUT EXTRA...`, which must succeed.
fn pack(src: &Path, out: &Path, extra: &[&dyn AsRef<OsStr>]) -> Run {
    pack_run(src, out, extra).ok()
}

/// `shardpack extract OUT DIR`, which must succeed, then the tree written.
fn extract(out: &Path, dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    sp(&[&"extract", &out, &dir]).ok();
    read_tree(dir)
}

/// Packs `src`, extracts into a fresh folder, and checks the result equals `src` byte for
/// byte; `verify` must pass too. Returns the dataset path.
fn round_trip(t: &TempDir, src: &Path, name: &str, extra: &[&dyn AsRef<OsStr>]) -> PathBuf {
    let want = read_tree(src);
    let out = t.path().join(name);
    pack(src, &out, extra);
    let got = extract(&out, &t.path().join(format!("{name}.extracted")));
    assert_same_tree(&got, &want, &format!("extract of {name}"));
    sp(&[&"verify", &out]).ok().stdout_has("OK:");
    out
}

fn json_names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            f.get("name")
                .unwrap_or(f)
                .as_str()
                .unwrap_or_else(|| panic!("not a UTF-8 name: {f}"))
                .to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The happy path: pack, info, ls, cat, extract, verify
// ---------------------------------------------------------------------------------------------

#[test]
fn pack_info_ls_cat_extract_verify_round_trip() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let tree = read_tree(&src);
    let want = expected_samples(&tree);
    let total: u64 = tree.values().map(|d| d.len() as u64).sum();
    let out = t.path().join("ds");

    // pack --json: one JSON object on stdout.
    let r = pack_run(&src, &out, &[&"--json"]).ok();
    let v = r.json();
    assert_keys(
        &v,
        &[
            "out",
            "samples",
            "shards",
            "files",
            "input_bytes",
            "output_bytes",
            "ratio",
            "seconds",
            "files_per_s",
            "mb_per_s",
            "classes",
            "fields",
            "skipped",
        ],
    );
    assert_eq!(v["samples"], want.len() as u64, "{v:#}");
    assert_eq!(v["files"], tree.len() as u64, "{v:#}");
    assert_eq!(v["input_bytes"], total, "{v:#}");
    assert_eq!(v["shards"], 1, "{v:#}");
    assert_eq!(v["classes"], 3, "{v:#}");
    assert_eq!(v["skipped"], serde_json::json!([]), "{v:#}");
    assert_eq!(
        json_names(&v["fields"]),
        ["", "jpg", "json", "meta", "tar.gz", "txt"],
        "fields sorted by name bytes: {v:#}"
    );
    for f in v["fields"].as_array().unwrap() {
        assert_keys(
            f,
            &[
                "name",
                "compression",
                "records",
                "raw_bytes",
                "stored_bytes",
            ],
        );
    }
    assert!(out.join("manifest.json").is_file());
    assert!(out.join("shard-000000.spk").is_file());

    // info --json
    let v = sp(&[&"info", &"--json", &out]).ok().json();
    assert_keys(
        &v,
        &[
            "format_version",
            "samples",
            "records",
            "shards",
            "bytes",
            "fields",
            "labels",
            "classes",
            "skipped",
            "options",
        ],
    );
    assert_eq!(v["samples"], want.len() as u64);
    assert_eq!(v["records"], tree.len() as u64);
    assert_eq!(v["shards"], 1);
    assert_eq!(v["labels"], "imagefolder");
    assert_eq!(v["classes"], serde_json::json!(["bird", "cat", "dog"]));
    assert_eq!(v["skipped"], 0);
    // info (text)
    sp(&[&"info", &out])
        .ok()
        .stdout_has(&format!("samples:        {}", want.len()))
        .stdout_has("classes:        3 (bird, cat, dog)");

    // ls: one line per sample: index, key, label, fields with sizes.
    let lines = ls(&out);
    assert_eq!(lines.len(), want.len());
    let classes = ["bird", "cat", "dog"];
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.index, i as u64, "ls indexes count from 0: {l:?}");
        let fields = want
            .get(&l.key)
            .unwrap_or_else(|| panic!("ls lists an unknown key {l:?}"));
        let got: BTreeMap<Vec<u8>, u64> = l.fields.iter().cloned().collect();
        assert_eq!(&got, fields, "fields of {l:?}");
        let sorted: Vec<_> = l.fields.iter().map(|f| f.0.clone()).collect();
        assert!(sorted.is_sorted(), "fields in field order: {l:?}");
        let key = String::from_utf8(l.key.clone()).unwrap();
        let label = match key.split_once('/') {
            Some((class, _)) => {
                let id = classes.iter().position(|c| *c == class).unwrap();
                format!("{id}:{class}")
            }
            None => "-".to_string(),
        };
        assert_eq!(String::from_utf8_lossy(&l.label), label, "label of {l:?}");
    }
    let keys: BTreeSet<_> = lines.iter().map(|l| l.key.clone()).collect();
    assert_eq!(keys.len(), lines.len(), "ls lists each key once");

    // cat: every file's bytes, by key and field (field left out for one-field samples).
    for (rel, data) in &tree {
        let (key, field) = split_rel(rel);
        let (key, field) = (OsStr::from_bytes(&key), OsStr::from_bytes(&field));
        let r = if want[key.as_bytes()].len() == 1 {
            sp(&[&"cat", &out, &key])
        } else {
            sp(&[&"cat", &out, &key, &field])
        };
        let r = r.ok();
        assert!(
            r.stdout == *data,
            "cat of {} gave {} bytes, expected {}",
            String::from_utf8_lossy(rel),
            r.stdout.len(),
            data.len()
        );
    }
    // A leading dot on FIELD is accepted.
    let r = sp(&[&"cat", &out, &"bird/0001", &".jpg"]).ok();
    assert!(r.stdout == tree[b"bird/0001.jpg".as_slice()]);

    // extract reproduces the tree byte for byte, and refuses a non-empty directory.
    let x = t.path().join("x");
    let got = extract(&out, &x);
    assert_same_tree(&got, &tree, "extract");
    sp(&[&"extract", &out, &x]).code(1).stderr_has(&[
        &disp(&x),
        "not empty",
        "new or empty directory",
    ]);

    // verify: text and JSON.
    sp(&[&"verify", &out]).ok().stdout_has("OK:");
    let v = sp(&[&"verify", &"--json", &out]).ok().json();
    assert_keys(
        &v,
        &["ok", "shards", "samples", "records", "bytes", "problems"],
    );
    assert_eq!(v["ok"], true);
    assert_eq!(v["samples"], want.len() as u64);
    assert_eq!(v["records"], tree.len() as u64);
    assert_eq!(v["problems"], serde_json::json!([]));
}

#[test]
fn round_trip_with_alignment_dictionaries_and_many_shards() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let n = expected_samples(&read_tree(&src)).len() as u64;
    let out = round_trip(
        &t,
        &src,
        "ds",
        &[
            &"--align",
            &"4096",
            &"--compress",
            &"none",
            &"--field-compress",
            &"json=zstd-dict",
            &"--field-compress",
            &".txt=zstd:5",
            &"--max-samples-per-shard",
            &"4",
        ],
    );
    let v = sp(&[&"info", &"--json", &out]).ok().json();
    assert_eq!(v["options"]["align"], 4096, "{v:#}");
    assert_eq!(v["shards"], n.div_ceil(4), "{v:#}");
    let comp: BTreeMap<String, String> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["compression"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(comp["jpg"], "none");
    assert_eq!(comp["txt"], "zstd");
    assert!(
        comp["json"] == "zstd-dict" || comp["json"] == "zstd",
        "json: {}",
        comp["json"]
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Bad sources
// ---------------------------------------------------------------------------------------------

#[test]
fn pack_refuses_a_missing_source() {
    let t = tmp();
    let src = t.path().join("no-such-tree");
    let out = t.path().join("ds");
    let r = pack_run(&src, &out, &[]);
    assert_pack_failed(r, &out, &[&disp(&src), "does not exist", "check the path"]);
    assert!(!out.exists(), "a failed pack left {}", out.display());
}

#[test]
fn pack_refuses_a_source_that_is_a_file() {
    let t = tmp();
    let src = t.path().join("file.jpg");
    fs::write(&src, b"not a tree").unwrap();
    let out = t.path().join("ds");
    let r = pack_run(&src, &out, &[]);
    assert_pack_failed(r, &out, &[&disp(&src), "not a directory", "folder"]);
    assert!(!out.exists(), "a failed pack left {}", out.display());
}

#[test]
fn pack_refuses_an_empty_source_and_keeps_an_existing_empty_out() {
    let t = tmp();
    let src = t.path().join("empty");
    fs::create_dir_all(src.join("sub/dir")).unwrap();
    let out = t.path().join("ds");
    let r = pack_run(&src, &out, &[]);
    assert_pack_failed(r, &out, &[&disp(&src), "no files", "nothing to pack"]);
    assert!(!out.exists(), "a failed pack left {}", out.display());

    // OUT existed (empty) before: it stays, empty.
    fs::create_dir(&out).unwrap();
    let r = pack_run(&src, &out, &[]);
    assert_pack_failed(r, &out, &[&disp(&src), "no files"]);
    assert!(out.is_dir());
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "OUT is left empty");
}

#[test]
fn pack_refuses_a_source_holding_only_a_symlink() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    put(t.path(), b"elsewhere.txt", b"target");
    symlink(t.path().join("elsewhere.txt"), src.join("link.txt")).unwrap();
    let out = t.path().join("ds");
    let r = pack_run(&src, &out, &[&"--symlinks", &"skip"]);
    assert_pack_failed(
        r,
        &out,
        &[
            &disp(&src),
            "no packable files",
            "link.txt",
            "--symlinks follow",
        ],
    );
    assert!(!out.exists(), "a failed pack left {}", out.display());
}

// ---------------------------------------------------------------------------------------------
// 3. OUT that is not new
// ---------------------------------------------------------------------------------------------

#[test]
fn pack_refuses_a_non_empty_out_without_force() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("ds");
    pack(&src, &out, &[]);
    let before = snapshot(&out);
    let r = pack_run(&src, &out, &[&"--shuffle-seed", &"7"]);
    r.code(1).stderr_has(&[&disp(&out), "not empty", "--force"]);
    assert_unchanged(&out, &before, "refused pack without --force");
    sp(&[&"info", &out]).ok();
}

#[test]
fn pack_refuses_an_out_that_is_a_file() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("ds");
    fs::write(&out, b"precious").unwrap();
    for extra in [&[][..], &[&"--force" as &dyn AsRef<OsStr>][..]] {
        pack_run(&src, &out, extra).code(1).stderr_has(&[
            &disp(&out),
            "not a directory",
            "another output path",
        ]);
        assert_eq!(fs::read(&out).unwrap(), b"precious");
    }
}

#[test]
fn force_replaces_a_previous_dataset_with_exactly_a_fresh_pack() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("ds");
    // The previous dataset has many more shards than the new one: none may survive.
    pack(
        &src,
        &out,
        &[&"--max-samples-per-shard", &"1", &"--shuffle-seed", &"3"],
    );
    assert!(out.join("shard-000005.spk").exists());
    pack(&src, &out, &[&"--force"]);
    let fresh = t.path().join("fresh");
    pack(&src, &fresh, &[]);
    assert_same_tree(
        &read_tree(&out),
        &read_tree(&fresh),
        "pack --force vs fresh pack",
    );
    sp(&[&"verify", &out]).ok();
}

#[test]
fn force_refuses_a_directory_with_a_foreign_file() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);

    // Only a foreign file.
    let out = t.path().join("notes");
    put(&out, b"thesis.tex", b"years of work");
    let r = pack_run(&src, &out, &[&"--force"]);
    assert_pack_failed(
        r,
        &out,
        &[&disp(&out), "thesis.tex", "move other files away"],
    );
    assert_eq!(fs::read(out.join("thesis.tex")).unwrap(), b"years of work");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);

    // A dataset plus a foreign file: refused before anything is touched.
    let out = t.path().join("ds");
    pack(&src, &out, &[]);
    put(&out, b"NOTES.md", b"mine");
    let before = snapshot(&out);
    pack_run(&src, &out, &[&"--force"]).code(1).stderr_has(&[
        &disp(&out),
        "NOTES.md",
        "move other files away",
    ]);
    assert_unchanged(&out, &before, "refused pack --force");
    sp(&[&"verify", &out]).ok();
}

// ---------------------------------------------------------------------------------------------
// 4. Unreadable input
// ---------------------------------------------------------------------------------------------

#[test]
fn unreadable_file_fails_or_is_skipped_with_skip_errors() {
    let prefix = match unprivileged_prefix() {
        Ok(p) => p,
        Err(why) => {
            skip("unreadable_file_fails_or_is_skipped_with_skip_errors", &why);
            return;
        }
    };
    let t = tmp();
    // The binary may run as nobody: it must be able to create OUT here.
    chmod(t.path(), 0o777);
    let src = t.path().join("src");
    sample_tree(&src);
    let mut want = read_tree(&src);
    let secret = src.join("cat/0002.jpg");
    want.remove(b"cat/0002.jpg".as_slice());
    chmod(&secret, 0o000);
    if !really_unreadable(&prefix, &secret) {
        chmod(&secret, 0o644);
        skip(
            "unreadable_file_fails_or_is_skipped_with_skip_errors",
            &format!(
                "chmod 000 does not stop reads here (run through {prefix:?}); dropping \
                 privileges is impossible on this machine"
            ),
        );
        return;
    }
    let before = snapshot(&src);
    let run = |out: &Path, extra: &[&dyn AsRef<OsStr>]| {
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"pack", &src, &out];
        args.extend_from_slice(extra);
        wrapped(&prefix, &args).run()
    };

    let out = t.path().join("ds");
    let r = run(&out, &[]);
    assert_pack_failed(
        r,
        &out,
        &[&disp(&secret), "Permission denied", "--skip-errors"],
    );
    assert!(!out.exists());

    let r = run(&out, &[&"--skip-errors"]).ok();
    let summary = r.out();
    assert!(
        summary.contains("skipped 1 inputs") && summary.contains("cat/0002.jpg"),
        "the summary lists the skipped file:\n{summary}"
    );
    let m = manifest(&out);
    let skipped = m["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{m:#}");
    assert_eq!(skipped[0]["path"], "cat/0002.jpg");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{m:#}"
    );
    let got = extract(&out, &t.path().join("x"));
    assert_same_tree(&got, &want, "extract after --skip-errors");
    sp(&[&"verify", &out]).ok();
    sp(&[&"info", &out]).ok().stdout_has("skipped inputs: 1");

    // --json summary lists it too.
    let out2 = t.path().join("ds2");
    let v = run(&out2, &[&"--skip-errors", &"--json"]).ok().json();
    assert_eq!(v["skipped"][0]["path"], "cat/0002.jpg", "{v:#}");

    assert_unchanged(&src, &before, "packs with an unreadable file");
    chmod(&secret, 0o644);
}

// ---------------------------------------------------------------------------------------------
// 5. Symbolic links
// ---------------------------------------------------------------------------------------------

fn tree_with_links(t: &TempDir) -> PathBuf {
    let src = t.path().join("src");
    put(&src, b"d/a.txt", b"aaa");
    put(&src, b"d/b.txt", b"bbb");
    symlink("..", src.join("d/link")).unwrap();
    src
}

#[test]
fn symlink_loop_is_an_error_with_follow_symlinks() {
    let t = tmp();
    let src = tree_with_links(&t);
    let out = t.path().join("ds");
    let r = pack_run(&src, &out, &[&"--follow-symlinks"]);
    assert_pack_failed(
        r,
        &out,
        &[&disp(&src.join("d/link")), "loop", "remove the link"],
    );
    assert!(!out.exists());
}

#[test]
fn symlink_loop_is_skipped_with_skip_errors() {
    let t = tmp();
    let src = tree_with_links(&t);
    let out = t.path().join("ds");
    let r = pack(&src, &out, &[&"--follow-symlinks", &"--skip-errors"]);
    assert!(
        r.out().contains("d/link"),
        "summary lists the loop: {}",
        r.out()
    );
    let m = manifest(&out);
    let skipped = m["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{m:#}");
    assert_eq!(skipped[0]["path"], "d/link");
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("loop"),
        "{m:#}"
    );
    let got = extract(&out, &t.path().join("x"));
    let mut want = BTreeMap::new();
    want.insert(b"d/a.txt".to_vec(), b"aaa".to_vec());
    want.insert(b"d/b.txt".to_vec(), b"bbb".to_vec());
    assert_same_tree(&got, &want, "extract");
}

#[test]
fn symlinks_are_skipped_and_listed_unless_followed() {
    let t = tmp();
    let src = tree_with_links(&t);
    put(t.path(), b"outside/c.txt", b"ccc");
    symlink(t.path().join("outside/c.txt"), src.join("d/c.txt")).unwrap();

    let out = t.path().join("ds");
    let r = pack(
        &src,
        &out,
        &[&"--symlinks", &"skip", &"--max-skipped-share", &"100%"],
    );
    assert!(r.out().contains("skipped 2 inputs"), "{}", r.out());
    let m = manifest(&out);
    let paths: Vec<_> = m["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(
                s["reason"].as_str().unwrap().contains("--symlinks follow"),
                "{s}"
            );
            s["path"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(paths, ["d/c.txt", "d/link"]);
    let keys: Vec<_> = ls(&out).into_iter().map(|l| l.key).collect();
    assert_eq!(keys.len(), 2);

    // Followed, a link to a file is packed with its target's bytes.
    fs::remove_file(src.join("d/link")).unwrap();
    let out = t.path().join("ds2");
    pack(&src, &out, &[&"--follow-symlinks", &"--no-shuffle"]);
    assert_eq!(manifest(&out)["skipped"], serde_json::json!([]));
    let keys: Vec<_> = ls(&out).into_iter().map(|l| l.key).collect();
    assert_eq!(keys, [b"d/a".to_vec(), b"d/b".to_vec(), b"d/c".to_vec()]);
    assert_eq!(sp(&[&"cat", &out, &"d/c"]).ok().stdout, b"ccc");
}

// ---------------------------------------------------------------------------------------------
// 6. Non-UTF-8 names
// ---------------------------------------------------------------------------------------------

#[test]
fn non_utf8_names_round_trip_and_cat_by_raw_key() {
    let t = tmp();
    let src = t.path().join("src");
    put(&src, b"\xffclass/k\xfe1.jpg", &noise(1, 900));
    put(&src, b"\xffclass/k\xfe1.json", b"{}");
    put(&src, b"\xffclass/plain.txt", b"plain");
    put(&src, b"utf8-\xc3\xa9/x.t\xffxt", b"odd field");
    let out = round_trip(&t, &src, "ds", &[]);

    let r = sp(&[
        &"cat",
        &out,
        &OsStr::from_bytes(b"\xffclass/k\xfe1"),
        &"jpg",
    ])
    .ok();
    assert_eq!(r.stdout, noise(1, 900));
    let r = sp(&[
        &"cat",
        &out,
        &OsStr::from_bytes(b"utf8-\xc3\xa9/x"),
        &OsStr::from_bytes(b"t\xffxt"),
    ])
    .ok();
    assert_eq!(r.stdout, b"odd field");

    // ls writes keys as raw bytes.
    let keys: BTreeSet<_> = ls(&out).into_iter().map(|l| l.key).collect();
    assert!(keys.contains(b"\xffclass/k\xfe1".as_slice()), "{keys:?}");
    // The manifest keeps non-UTF-8 class names as hex.
    let m = manifest(&out);
    assert!(
        m["classes"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"hex": "ff636c617373"})),
        "{m:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Sizes: empty files, large files, shard cuts
// ---------------------------------------------------------------------------------------------

#[test]
fn zero_length_files_round_trip() {
    let t = tmp();
    let src = t.path().join("src");
    put(&src, b"a/empty.jpg", b"");
    put(&src, b"a/empty.json", b"");
    put(&src, b"a/nothing", b"");
    put(&src, b"b/full.txt", b"x");
    let out = round_trip(&t, &src, "ds", &[]);
    let lines = ls(&out);
    let empty = lines.iter().find(|l| l.key == b"a/empty").unwrap();
    assert_eq!(
        empty.fields,
        [(b"jpg".to_vec(), 0), (b"json".to_vec(), 0)],
        "{empty:?}"
    );
    assert_eq!(sp(&[&"cat", &out, &"a/empty", &"jpg"]).ok().stdout, b"");
}

/// A tree of `n` small samples `s000..` (300 random bytes each) plus one 40 KB file `zbig`.
fn sized_tree(src: &Path, n: usize) {
    for i in 0..n {
        put(
            src,
            format!("s{i:03}.bin").as_bytes(),
            &noise(i as u64, 300),
        );
    }
    put(src, b"zbig.bin", &noise(999, 40_000));
}

#[test]
fn a_file_larger_than_the_shard_size_gets_a_shard_of_its_own() {
    let t = tmp();
    let src = t.path().join("src");
    sized_tree(&src, 30);
    let out = round_trip(
        &t,
        &src,
        "ds",
        &[&"--shard-size", &"16KiB", &"--compress", &"none"],
    );
    let m = manifest(&out);
    let shards = m["shards"].as_array().unwrap();
    assert!(shards.len() >= 3, "{m:#}");
    let big = ls(&out)
        .into_iter()
        .find(|l| l.key == b"zbig")
        .unwrap()
        .index;
    let home = shards
        .iter()
        .find(|s| {
            let first = s["first_sample"].as_u64().unwrap();
            (first..first + s["samples"].as_u64().unwrap()).contains(&big)
        })
        .unwrap();
    assert_eq!(home["samples"], 1, "the big sample shares its shard: {m:#}");
    assert!(home["bytes"].as_u64().unwrap() > 16 * 1024);
    let total: u64 = shards.iter().map(|s| s["samples"].as_u64().unwrap()).sum();
    assert_eq!(total, 31);
    // Shard files are where the manifest says, with the sizes it says.
    for s in shards {
        let len = fs::metadata(out.join(s["file"].as_str().unwrap()))
            .unwrap()
            .len();
        assert_eq!(len, s["bytes"].as_u64().unwrap());
    }
}

#[test]
fn shards_with_several_samples_stay_within_the_shard_size() {
    let t = tmp();
    let src = t.path().join("src");
    sized_tree(&src, 30);
    let out = t.path().join("ds");
    pack(
        &src,
        &out,
        &[&"--shard-size", &"12000", &"--compress", &"none"],
    );
    for s in manifest(&out)["shards"].as_array().unwrap() {
        if s["samples"].as_u64().unwrap() > 1 {
            assert!(
                s["bytes"].as_u64().unwrap() <= 12000,
                "shard {} is {} bytes, above --shard-size 12000",
                s["file"],
                s["bytes"]
            );
        }
    }
}

#[test]
fn max_samples_per_shard_cuts_shards() {
    let t = tmp();
    let src = t.path().join("src");
    sized_tree(&src, 9);
    let out = round_trip(&t, &src, "ds", &[&"--max-samples-per-shard", &"3"]);
    assert_eq!(shard_samples(&out), [3, 3, 3, 1]);
    for i in 0..4 {
        assert!(out.join(format!("shard-{i:06}.spk")).is_file());
    }
    assert!(!out.join("shard-000004.spk").exists());
}

// ---------------------------------------------------------------------------------------------
// 8. Deep trees
// ---------------------------------------------------------------------------------------------

#[test]
fn a_60_level_deep_tree_round_trips() {
    let t = tmp();
    let src = t.path().join("src");
    let mut rel = Vec::new();
    for level in 0..60 {
        rel.extend_from_slice(format!("d{level:02}/").as_bytes());
        let mut file = rel.clone();
        file.extend_from_slice(format!("f{level}.txt").as_bytes());
        put(&src, &file, format!("level {level}").as_bytes());
    }
    let out = round_trip(&t, &src, "ds", &[]);
    assert_eq!(ls(&out).len(), 60);
    assert_eq!(manifest(&out)["classes"], serde_json::json!(["d00"]));
}

// ---------------------------------------------------------------------------------------------
// 9. Determinism and order
// ---------------------------------------------------------------------------------------------

#[test]
fn output_is_byte_identical_whatever_the_thread_counts() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let common: [&dyn AsRef<OsStr>; 4] = [
        &"--max-samples-per-shard",
        &"5",
        &"--field-compress",
        &"json=zstd-dict",
    ];
    let mut dirs = Vec::new();
    for (threads, io) in [("1", "1"), ("4", "8"), ("2", "1"), ("1", "8")] {
        let out = t.path().join(format!("ds-{threads}-{io}"));
        let mut extra: Vec<&dyn AsRef<OsStr>> = vec![&"--threads", &threads, &"--io-threads", &io];
        extra.extend_from_slice(&common);
        pack(&src, &out, &extra);
        dirs.push(out);
    }
    let first = read_tree(&dirs[0]);
    assert!(first.len() > 2, "several shards");
    for d in &dirs[1..] {
        assert_same_tree(
            &read_tree(d),
            &first,
            &format!("{} vs {}", d.display(), dirs[0].display()),
        );
    }
}

#[test]
fn shuffle_seed_changes_order_and_no_shuffle_sorts_by_key() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let order = |name: &str, extra: &[&dyn AsRef<OsStr>]| -> Vec<Vec<u8>> {
        let out = t.path().join(name);
        pack(&src, &out, extra);
        ls(&out).into_iter().map(|l| l.key).collect()
    };
    let default = order("default", &[]);
    let default_again = order("default-again", &[]);
    let s1 = order("seed1", &[&"--shuffle-seed", &"1"]);
    let s1_again = order("seed1-again", &[&"--shuffle-seed", &"1"]);
    let s2 = order("seed2", &[&"--shuffle-seed", &"2"]);
    let sorted = order("sorted", &[&"--no-shuffle"]);

    let mut want_sorted = sorted.clone();
    want_sorted.sort();
    assert_eq!(sorted, want_sorted, "--no-shuffle gives key-sorted order");
    assert_eq!(
        sorted,
        expected_samples(&read_tree(&src))
            .into_keys()
            .collect::<Vec<_>>()
    );
    assert_eq!(default, default_again);
    assert_eq!(s1, s1_again);
    assert_ne!(s1, s2, "different seeds give different orders");
    assert_ne!(default, sorted, "packs are shuffled by default");
    assert_ne!(s1, sorted);
    for o in [&default, &s1, &s2] {
        let mut k = o.clone();
        k.sort();
        assert_eq!(k, sorted, "a shuffle is a permutation");
    }
}

// ---------------------------------------------------------------------------------------------
// 10. A closed stdout pipe
// ---------------------------------------------------------------------------------------------

#[test]
fn ls_into_a_pipe_closed_after_one_line_succeeds_quietly() {
    let t = tmp();
    let src = t.path().join("src");
    // ~1500 samples with long keys: ~300 KB of `ls` output, far more than a pipe buffer plus
    // the binary's output buffer, so the binary must meet the closed pipe.
    let long = "k".repeat(180);
    for i in 0..1500 {
        put(&src, format!("{long}{i:05}.t").as_bytes(), b"");
    }
    let out = t.path().join("ds");
    pack(&src, &out, &[&"--compress", &"none", &"--labels", &"none"]);

    let mut child = shardpack(&[&"ls", &out]).into_command().spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = Vec::new();
    stdout.read_until(b'\n', &mut first).unwrap();
    assert!(
        first.starts_with(b"0\t"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    drop(stdout); // like `head -1` exiting
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "ls | head -1 must exit 0; stderr: {stderr}"
    );
    assert!(
        stderr.is_empty(),
        "ls | head -1 printed on stderr: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. cat errors, verify, interrupted packs
// ---------------------------------------------------------------------------------------------

fn small_dataset(t: &TempDir) -> PathBuf {
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("ds");
    pack(&src, &out, &[&"--no-shuffle", &"--compress", &"none"]);
    out
}

#[test]
fn cat_errors_are_exit_1_with_a_helpful_message() {
    let t = tmp();
    let out = small_dataset(&t);
    sp(&[&"cat", &out, &"cat/9999"])
        .code(1)
        .stderr_has(&["cat/9999", &disp(&out), "shardpack ls"]);
    sp(&[&"cat", &out, &"cat/0001", &"png"])
        .code(1)
        .stderr_has(&["cat/0001", "png", "jpg, json"]);
    sp(&[&"cat", &out, &"cat/0001"]).code(1).stderr_has(&[
        "cat/0001",
        "2 fields",
        "jpg, json",
        "name one",
    ]);
    let missing = t.path().join("nope");
    sp(&[&"cat", &missing, &"cat/0001"])
        .code(1)
        .stderr_has(&[&disp(&missing), "does not exist"]);
    // Usage errors are exit 2.
    sp(&[&"cat", &out]).code(2);
}

#[test]
fn verify_finds_a_flipped_byte_and_names_shard_sample_key_field() {
    let t = tmp();
    let out = small_dataset(&t);
    sp(&[&"verify", &out]).ok();
    // With --no-shuffle and --compress none, the first record of sample 0 is its first field,
    // stored raw at byte 4096 of the first shard.
    let first = ls(&out).remove(0);
    let key = String::from_utf8(first.key.clone()).unwrap();
    let (field, size) = first.fields.iter().find(|f| f.1 > 0).cloned().unwrap();
    assert_eq!(
        field, first.fields[0].0,
        "first field of {first:?} is not empty"
    );
    assert!(size > 0);
    let field = String::from_utf8(field).unwrap();
    let shard = out.join("shard-000000.spk");
    let mut bytes = fs::read(&shard).unwrap();
    bytes[4096] ^= 0x01;
    fs::write(&shard, &bytes).unwrap();

    let r = sp(&[&"verify", &out]).code(3);
    let report = r.out();
    let bad = report
        .lines()
        .find(|l| l.starts_with("BAD shard-000000.spk sample 0"))
        .unwrap_or_else(|| panic!("no BAD line for sample 0:\n{report}"));
    assert!(
        bad.contains(&format!("key {key:?}")) && bad.contains(&format!("field {field:?}")),
        "{bad}"
    );
    assert!(bad.contains("checksum"), "{bad}");
    assert!(
        report.lines().last().unwrap().starts_with("FAILED:"),
        "{report}"
    );

    let v = sp(&[&"verify", &"--json", &out]).code(3).json();
    assert_eq!(v["ok"], false);
    let p = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sample"] == 0)
        .unwrap_or_else(|| panic!("{v:#}"))
        .clone();
    assert_eq!(p["shard"], "shard-000000.spk");
    assert_eq!(p["key"], key.as_str());
    assert_eq!(p["field"], field.as_str());

    // Reading the damaged record fails too, naming the shard.
    sp(&[&"cat", &out, &key, &field]).code(1).stderr_has(&[
        "shard-000000.spk",
        &key,
        "checksum mismatch",
    ]);
    sp(&[&"extract", &out, &t.path().join("x")])
        .code(1)
        .stderr_has(&["shard-000000.spk", "checksum mismatch"]);
}

#[test]
fn a_dataset_without_manifest_is_reported_as_an_interrupted_pack() {
    let t = tmp();
    let out = small_dataset(&t);
    fs::remove_file(out.join("manifest.json")).unwrap();
    for cmd in ["info", "ls", "verify"] {
        sp(&[&cmd, &out])
            .code(1)
            .stderr_has(&[&disp(&out), "interrupted", "run the pack again"]);
    }
    sp(&[&"cat", &out, &"cat/0001", &"jpg"])
        .code(1)
        .stderr_has(&["interrupted"]);
    // A directory that never was a dataset says so.
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    sp(&[&"info", &empty])
        .code(1)
        .stderr_has(&[&disp(&empty), "not a shardpack dataset"]);
}

#[test]
fn a_truncated_shard_is_reported_by_info_and_verify() {
    let t = tmp();
    let out = small_dataset(&t);
    let shard = out.join("shard-000000.spk");
    let f = fs::OpenOptions::new().write(true).open(&shard).unwrap();
    f.set_len(100).unwrap();
    sp(&[&"info", &out])
        .code(1)
        .stderr_has(&[&disp(&shard), "truncated"]);
    sp(&[&"verify", &out])
        .code(3)
        .stdout_has("BAD shard-000000.spk")
        .stdout_has("truncated");
}

#[test]
fn error_messages_do_not_repeat_their_cause() {
    let t = tmp();
    let out = small_dataset(&t);
    let shard = out.join("shard-000000.spk");
    fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(100)
        .unwrap();
    let r = sp(&[&"info", &out]).code(1);
    let mut lines = r.stderr.lines();
    let first = lines.next().unwrap();
    for cause in lines.filter_map(|l| l.trim().strip_prefix("caused by: ")) {
        assert!(
            !first.contains(cause),
            "the cause {cause:?} repeats the message:\n{}",
            r.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 12. Bad option values
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_option_values_are_rejected_naming_the_option() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("ds");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--align", "3"], &["align", "3", "power of two"]),
        (&["--align", "2MiB"], &["align", "power of two"]),
        (&["--align", "abc"], &["--align"]),
        (&["--compress", "gzip"], &["--compress", "gzip", "zstd"]),
        (&["--compress", "zstd:99"], &["--compress", "99"]),
        (
            &["--field-compress", "jpg"],
            &["--field-compress", "EXT=POLICY"],
        ),
        (
            &["--field-compress", "jpg=lz4"],
            &["--field-compress", "lz4"],
        ),
        (&["--shard-size", "0"], &["--shard-size", "0"]),
        (&["--shard-size", "5 parsecs"], &["--shard-size", "unit"]),
        (&["--threads", "0"], &["--threads"]),
        (&["--io-threads", "0"], &["--io-threads"]),
        (&["--threads=-1"], &["--threads", "-1"]),
        (
            &["--max-samples-per-shard", "0"],
            &["--max-samples-per-shard"],
        ),
        (&["--labels", "folders"], &["--labels", "imagefolder"]),
        (&["--key", "middle-dot"], &["--key", "first-dot"]),
        (
            &["--shuffle-seed", "1", "--no-shuffle"],
            &["--shuffle-seed", "--no-shuffle"],
        ),
    ];
    for (args, mentions) in cases {
        let mut a: Vec<&dyn AsRef<OsStr>> = vec![&"pack", &src, &out];
        for x in args.iter() {
            a.push(x);
        }
        let r = sp(&a);
        assert!(
            r.code == 1 || r.code == 2,
            "{:?}: exit code {} (stderr: {})",
            args,
            r.code,
            r.stderr
        );
        r.stderr_has(mentions);
        assert!(!out.exists(), "{args:?} created {}", out.display());
    }
}

#[test]
fn option_errors_found_after_parsing_name_the_flag() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("ds");
    for (args, flag) in [
        (["--align", "3"], "--align"),
        (["--align", "2MiB"], "--align"),
        (["--max-samples-per-shard", "0"], "--max-samples-per-shard"),
    ] {
        pack_run(&src, &out, &[&args[0], &args[1]]).stderr_has(&[flag]);
    }
}

// ---------------------------------------------------------------------------------------------
// 13. The source is never modified
// ---------------------------------------------------------------------------------------------

#[test]
fn pack_never_modifies_the_source() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    put(t.path(), b"elsewhere.txt", b"target");
    symlink(t.path().join("elsewhere.txt"), src.join("cat/link.txt")).unwrap();
    symlink("..", src.join("dog/loop")).unwrap();
    let before = snapshot(&src);

    // Successful packs, several option sets.
    pack(&src, &t.path().join("a"), &[&"--skip-errors"]);
    pack(
        &src,
        &t.path().join("b"),
        &[&"--follow-symlinks", &"--skip-errors", &"--threads", &"2"],
    );
    pack(&src, &t.path().join("b"), &[&"--force", &"--skip-errors"]);
    assert_unchanged(&src, &before, "successful packs");

    // Failed packs: a loop, an output inside the source, a refused OUT.
    let out = t.path().join("c");
    assert_pack_failed(
        pack_run(&src, &out, &[&"--follow-symlinks"]),
        &out,
        &["loop"],
    );
    let inside = src.join("out");
    assert_pack_failed(
        pack_run(&src, &inside, &[]),
        &inside,
        &[&disp(&inside), "inside the source tree", "outside"],
    );
    pack_run(&src, &t.path().join("a"), &[]).code(1);
    assert_unchanged(&src, &before, "failed packs");
}

#[test]
fn pack_refuses_an_output_inside_the_source_however_it_is_spelled() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let before = snapshot(&src);
    // OUT below a folder that does not exist yet.
    let deep = src.join("new/deeper/out");
    assert_pack_failed(
        pack_run(&src, &deep, &[]),
        &deep,
        &["inside the source tree"],
    );
    assert_unchanged(&src, &before, "pack SRC SRC/new/deeper/out");
    // A bare relative OUT, run from inside SRC.
    let r = shardpack(&[&"pack", &"-q", &".", &"out"])
        .current_dir(&src)
        .run();
    assert_pack_failed(r, &src.join("out"), &["inside the source tree"]);
    assert_unchanged(&src, &before, "(cd SRC && pack . out)");
    // OUT is SRC itself: refused for being non-empty, but the message should say why it
    // really cannot work rather than suggest --force.
    let r = shardpack(&[&"pack", &"-q", &"src", &"src"])
        .current_dir(t.path())
        .run();
    r.code(1).stderr_has(&["inside the source tree"]);
    assert_unchanged(&src, &before, "pack src src");
}

#[test]
fn pack_into_a_sibling_relative_path_works() {
    // The supported spelling of the case above: OUT next to SRC, both relative.
    let t = tmp();
    sample_tree(&t.path().join("src"));
    shardpack(&[&"pack", &"-q", &"src", &"ds"])
        .current_dir(t.path())
        .run()
        .ok();
    sp(&[&"verify", &t.path().join("ds")]).ok();
}

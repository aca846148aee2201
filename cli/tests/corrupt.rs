//! The `shardpack` binary on the corrupt-dataset fixtures (fixtures/corrupt/, see its
//! README.md): `verify` exits 3 and names the problem (1 when the manifest itself is
//! unusable), `info` and `cat` exit 1 with the error on stderr, and nothing panics (the `Run`
//! helper fails on any "panicked" in stderr).

#![cfg(unix)]

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use util::*;

/// The shard every shard-level edit damages.
const DAMAGED: &str = "shard-000001.spk";
/// flipped-record-bit: the sample whose raw `bin` record has a flipped bit.
const BAD_KEY: &str = "square/0010";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn case_dir(case: &str) -> PathBuf {
    repo().join("fixtures/corrupt").join(case)
}

/// The original bytes of `key.field` in the source tree the fixtures were packed from.
fn source(key: &str, field: &str) -> Vec<u8> {
    fs::read(repo().join(format!("fixtures/trees/corrupt-base/{key}.{field}"))).unwrap()
}

/// A case whose damage stops the dataset from opening: `verify` exits 3 with a `BAD` line for
/// the damaged shard holding every needle; `info` and `cat` exit 1 with an error holding them.
#[track_caller]
fn check_unopenable(case: &str, needles: &[&str]) {
    let dir = case_dir(case);
    let r = sp(&[&"verify", &dir]).code(3).stdout_has("FAILED:");
    let out = r.out();
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("BAD {DAMAGED}"))
                && needles.iter().all(|n| l.contains(n))),
        "{case}: no BAD line for {DAMAGED} names {needles:?}:\n{out}"
    );
    let j = sp(&[&"verify", &"--json", &dir]).code(3).json();
    assert_eq!(j["ok"], false, "{case}: {j}");
    assert!(
        j["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["shard"] == DAMAGED),
        "{case}: {j}"
    );

    sp(&[&"info", &dir])
        .code(1)
        .stderr_has(&["shardpack: error:", DAMAGED])
        .stderr_has(needles);
    let r = sp(&[&"cat", &dir, &BAD_KEY, &"bin"])
        .code(1)
        .stderr_has(&["shardpack: error:", DAMAGED])
        .stderr_has(needles);
    assert!(r.stdout.is_empty(), "{case}: cat wrote data");
}

#[test]
fn intact_control() {
    let dir = case_dir("intact");
    sp(&[&"verify", &dir])
        .ok()
        .stdout_has("OK: 3 shards, 30 samples");
    sp(&[&"info", &dir]).ok().stdout_has("samples:        30");
    let r = sp(&[&"cat", &dir, &BAD_KEY, &"bin"]).ok();
    assert!(r.stdout == source(BAD_KEY, "bin"));
}

#[test]
fn truncated_shard() {
    check_unopenable("truncated-shard", &["truncated"]);
}

#[test]
fn truncated_footer() {
    check_unopenable("truncated-footer", &["truncated"]);
}

#[test]
fn bad_magic() {
    check_unopenable("bad-magic", &["header at byte 0", "bad magic"]);
}

#[test]
fn unknown_version() {
    check_unopenable(
        "unknown-version",
        &[
            "header at byte 8",
            "version 2",
            "1..=1",
            "upgrade shardpack",
        ],
    );
}

#[test]
fn unknown_version_footer() {
    check_unopenable("unknown-version-footer", &["footer", "version 2", "1..=1"]);
}

#[test]
fn flipped_index_bit() {
    check_unopenable("flipped-index-bit", &["index at byte", "checksum mismatch"]);
}

#[test]
fn flipped_dict_bit() {
    check_unopenable(
        "flipped-dict-bit",
        &["dictionary at byte", "checksum mismatch"],
    );
}

#[test]
fn missing_shard() {
    check_unopenable("missing-shard", &["shard 1", "missing"]);
}

#[test]
fn manifest_counts() {
    check_unopenable(
        "manifest-counts",
        &["holds 12 samples", "the manifest says 11"],
    );
}

#[test]
fn swapped_shard() {
    check_unopenable("swapped-shard", &["index checksum", "disagree"]);
}

/// Damage inside one record: the dataset opens (`info` works), `cat` refuses that record and
/// serves the others, `verify` names the sample, key and field.
#[test]
fn flipped_record_bit() {
    let dir = case_dir("flipped-record-bit");
    sp(&[&"info", &dir]).ok().stdout_has("samples:        30");
    let r = sp(&[&"verify", &dir]).code(3);
    let out = r.out();
    assert!(
        out.lines().any(|l| l.starts_with(&format!(
            "BAD {DAMAGED} sample 6 key {BAD_KEY:?} field \"bin\""
        )) && l.contains("checksum mismatch")),
        "{out}"
    );
    let r = sp(&[&"cat", &dir, &BAD_KEY, &"bin"]).code(1).stderr_has(&[
        "shardpack: error:",
        "corrupt record",
        DAMAGED,
        BAD_KEY,
        "checksum mismatch",
    ]);
    assert!(r.stdout.is_empty(), "cat wrote the damaged record");
    // The sample's other records, and other samples, are intact.
    let r = sp(&[&"cat", &dir, &BAD_KEY, &"txt"]).ok();
    assert!(r.stdout == source(BAD_KEY, "txt"));
    let r = sp(&[&"cat", &dir, &"square/0009", &"bin"]).ok();
    assert!(r.stdout == source("square/0009", "bin"));
}

/// An unusable manifest: `verify` cannot report per shard, so it fails like any command (1).
#[test]
fn truncated_manifest() {
    let dir = case_dir("truncated-manifest");
    let needles = [
        "shardpack: error:",
        "manifest.json",
        "not a valid shardpack manifest",
    ];
    sp(&[&"verify", &dir]).code(1).stderr_has(&needles);
    sp(&[&"info", &dir]).code(1).stderr_has(&needles);
    sp(&[&"cat", &dir, &BAD_KEY, &"bin"])
        .code(1)
        .stderr_has(&needles);
}

/// The broken-rule cases (README's second table): `verify` exits 3, prints each problem with
/// its kind in brackets, and `verify --json` gives the same kind as `"kind"`.
#[test]
fn verify_names_each_broken_rule_with_its_kind() {
    for (case, kind, needle) in [
        ("duplicate-key", "duplicate-key", "duplicate key"),
        (
            "duplicate-key-across-shards",
            "duplicate-key",
            "same key as sample 0",
        ),
        ("empty-sample", "empty-sample", "has no records"),
        ("label-out-of-range", "label-out-of-range", "label 2"),
        ("slash-in-field-name", "unsafe-name", "contains '/'"),
        (
            "two-zstd-frames",
            "trailing-frame",
            "exactly one zstd frame",
        ),
        ("skippable-frame", "skippable-frame", "skippable frame"),
        ("huge-window", "window-too-large", "1073741824-byte window"),
        ("dict-without-magic", "dictionary-magic", "dictionary magic"),
        (
            "dict-on-zstd-field",
            "dictionary-on-plain-field",
            "has a dictionary",
        ),
        (
            "record-codec-mismatch",
            "record-codec-mismatch",
            "stored as zstd",
        ),
        ("key-hash-order", "key-hash-order", "out of order"),
        ("field-stats", "field-stats", "field statistics"),
    ] {
        let dir = case_dir(case);
        let r = sp(&[&"verify", &dir]).code(3).stdout_has("FAILED:");
        let out = r.out();
        assert!(
            out.lines().any(|l| l.starts_with("BAD ")
                && l.contains(needle)
                && l.ends_with(&format!("[{kind}]"))),
            "{case}: no BAD line with {needle:?} and [{kind}]:\n{out}"
        );
        let j = sp(&[&"verify", &"--json", &dir]).code(3).json();
        let problems = j["problems"].as_array().unwrap();
        assert!(problems.iter().all(|p| p["kind"] == kind), "{case}: {j}");
    }
}

/// An unknown required feature: every command refuses the dataset, naming the feature.
#[test]
fn unknown_required_feature_is_refused_by_name() {
    let dir = case_dir("unknown-required-feature");
    for cmd in ["verify", "info"] {
        sp(&[&cmd, &dir]).code(1).stderr_has(&[
            "shardpack: error:",
            "requires features this reader does not know: x-example-required",
        ]);
    }
}

/// `info` names the writer of a version-2 dataset, and the optional features it ignores.
#[test]
fn info_names_the_writer_and_ignored_features() {
    let golden = repo().join("fixtures/golden-v2");
    sp(&[&"info", &golden])
        .ok()
        .stdout_has("written by:     shardpack 0.1.0 (zstd 1.5.7)");
    let j = sp(&[&"info", &"--json", &golden]).ok().json();
    assert_eq!(j["writer"]["zstd"], "1.5.7", "{j}");
    assert_eq!(j["features"]["required"], serde_json::json!([]), "{j}");

    let tmp = tmp();
    let src = case_dir("unknown-required-feature");
    for f in fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), tmp.path().join(f.file_name())).unwrap();
    }
    let m = tmp.path().join("manifest.json");
    let text = fs::read_to_string(&m).unwrap();
    let text = text.replace("\"x-example-required\"", "");
    fs::write(&m, text).unwrap();
    sp(&[&"info", &tmp.path()])
        .ok()
        .stdout_has("features:       x-example-optional (optional, not known here: ignored)");
    sp(&[&"verify", &tmp.path()]).ok();
}

//! The frozen format-version-1 fixture.
//!
//! `fixtures/golden-v1/` was packed once from `fixtures/trees/golden/` with [`golden_options`]
//! (see `fixtures/README.md`) and is never regenerated. These tests check that
//!
//! - today's `pack` of the same tree with the same options writes the same bytes, file for file
//!   (the writer is deterministic and its output has not drifted), and
//! - today's reader opens and verifies the fixture and finds what it held when it was made
//!   (every release keeps reading version 1).
//!
//! If (a) fails after an intended change to what the writer produces, that change is a format
//! change: bump the format version and add a `golden-v2`, do not edit `golden-v1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::{assert_same_tree, dataset_tree, repo_root, snapshot, Tree};
use shardpack::codec::Policy;
use shardpack::compile::{pack, NoProgress, PackOptions, SymlinkPolicy};
use shardpack::format::Codec;
use shardpack::writer::WriterOptions;
use shardpack::Dataset;

fn golden_tree() -> PathBuf {
    repo_root().join("fixtures/trees/golden")
}

fn golden_v1() -> PathBuf {
    repo_root().join("fixtures/golden-v1")
}

/// The options golden-v1 was packed with: the defaults except the shard size, the sample cap
/// and a dictionary for `json`. The CLI equivalent is
/// `shardpack pack fixtures/trees/golden fixtures/golden-v1 --shard-size 22528
/// --max-samples-per-shard 8 --field-compress json=zstd-dict:3 --symlinks skip` (skipping
/// links was the default then; the manifest records it as `"follow_symlinks": false`).
fn golden_options() -> PackOptions {
    PackOptions {
        writer: WriterOptions {
            shard_size: 22528,
            max_samples_per_shard: Some(8),
            ..WriterOptions::default()
        },
        field_compress: BTreeMap::from([(b"json".to_vec(), Policy::ZstdDict(3))]),
        symlinks: SymlinkPolicy::Skip,
        ..PackOptions::default()
    }
}

#[test]
fn todays_pack_reproduces_golden_v1_byte_for_byte() {
    let tmp = common::tempdir();
    let out = tmp.path().join("golden");
    for threads in [1, 3] {
        let opts = PackOptions {
            threads,
            ..golden_options()
        };
        let _ = std::fs::remove_dir_all(&out);
        pack(&golden_tree(), &out, &opts, &NoProgress).unwrap();
        assert_same_tree(
            &snapshot(&out),
            &snapshot(&golden_v1()),
            &format!("pack of fixtures/trees/golden ({threads} threads) vs fixtures/golden-v1"),
        );
    }
}

/// The fake image bytes of `fixtures/trees/golden/<class c>/<i>.img`: a 31-bit LCG, as the
/// generator in fixtures/README.md writes them.
fn golden_image(c: u64, i: u64) -> Vec<u8> {
    let n = 512 + 97 * i as usize;
    let mut x = (c * 131 + i * 7 + 1) & 0x7FFF_FFFF;
    (0..n)
        .map(|_| {
            x = (x.wrapping_mul(1_103_515_245) + 12345) & 0x7FFF_FFFF;
            ((x >> 16) & 0xFF) as u8
        })
        .collect()
}

#[test]
fn todays_reader_reads_golden_v1() {
    let ds = Dataset::open(golden_v1()).unwrap();
    let report = ds.verify();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.shards, 3);
    assert_eq!(report.records, 55);

    let m = ds.manifest();
    assert_eq!(m.format_version, 1);
    assert_eq!(ds.len(), 19);
    assert_eq!(m.records, 55);
    let per_shard: Vec<u64> = m.shards.iter().map(|s| s.samples).collect();
    assert_eq!(per_shard, vec![8, 7, 4]);
    assert_eq!(m.labels, "imagefolder");
    let classes: Vec<&[u8]> = m.classes.iter().map(|c| c.as_bytes()).collect();
    assert_eq!(classes, vec![&b"bird"[..], b"cat", b"dog"]);
    let fields: Vec<(&[u8], &str, i32)> = m
        .fields
        .iter()
        .map(|f| (f.name.as_bytes(), f.compression.as_str(), f.level))
        .collect();
    assert_eq!(
        fields,
        vec![
            (&b""[..], "zstd", 3),
            (b"img", "none", 0),
            (b"json", "zstd-dict", 3),
            (b"txt", "zstd-dict", 3),
        ]
    );

    // The stored order is the seeded pack-time shuffle, frozen with the fixture.
    let keys: Vec<String> = ds
        .iter()
        .map(|s| String::from_utf8(s.unwrap().key().to_vec()).unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "bird/0004",
            "README",
            "dog/0004",
            "bird/0003",
            "dog/0001",
            "bird/0000",
            "dog/0005",
            "bird/0002",
            "bird/0001",
            "dog/0003",
            "cat/0004",
            "bird/0005",
            "dog/0000",
            "cat/0000",
            "cat/0005",
            "cat/0003",
            "dog/0002",
            "cat/0002",
            "cat/0001",
        ]
    );

    // Labels are the class of the first folder; the top-level README has none.
    for s in ds.iter() {
        let s = s.unwrap();
        let key = std::str::from_utf8(s.key()).unwrap();
        let expected = match key.split_once('/') {
            Some(("bird", _)) => Some(0),
            Some(("cat", _)) => Some(1),
            Some(("dog", _)) => Some(2),
            _ => None,
        };
        assert_eq!(s.label(), expected, "{key}");
    }

    // Known bytes, found by key.
    let s = ds.get_by_key(b"cat/0002").unwrap().unwrap();
    assert_eq!(s.index(), 17);
    let txt = s.field(b"txt").unwrap().unwrap();
    assert_eq!(txt.codec(), Codec::ZstdDict);
    assert_eq!(
        &*txt.data().unwrap(),
        "A photo of a quiet striped sleepy cat, number 2. "
            .repeat(5)
            .as_bytes()
    );
    let img = s.field(b"img").unwrap().unwrap();
    assert_eq!(img.codec(), Codec::Raw);
    assert_eq!(&*img.data().unwrap(), &golden_image(1, 2)[..]);
    let json = s.field(b"json").unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.data().unwrap()).unwrap();
    assert_eq!(v["class"], "cat");
    assert_eq!(v["id"], 102);

    let empty = ds.get_by_key(b"dog/0005").unwrap().unwrap();
    let t = empty.field(b"txt").unwrap().unwrap();
    assert_eq!(t.codec(), Codec::Raw);
    assert_eq!(t.raw_len(), 0);
    assert!(t.data().unwrap().is_empty());

    let readme = ds.get_by_key(b"README").unwrap().unwrap();
    assert_eq!(readme.label(), None);
    assert_eq!(readme.field_count(), 1);
    let r = readme.field(b"").unwrap().unwrap();
    assert_eq!(r.codec(), Codec::Zstd);
    assert!(r
        .data()
        .unwrap()
        .starts_with(b"The shardpack golden input tree"));

    // Every codec occurs among the records, and every image matches its formula.
    let mut codecs = BTreeSet::new();
    for s in ds.iter() {
        for f in s.unwrap().fields() {
            codecs.insert(f.unwrap().codec().as_u32());
        }
    }
    assert_eq!(codecs, BTreeSet::from([0, 1, 2]));
    for (c, class) in ["bird", "cat", "dog"].iter().enumerate() {
        for i in 0..6u64 {
            let s = ds
                .get_by_key(format!("{class}/{i:04}").as_bytes())
                .unwrap()
                .unwrap();
            let img = s
                .field(b"img")
                .unwrap()
                .unwrap()
                .data()
                .unwrap()
                .into_owned();
            assert_eq!(img, golden_image(c as u64, i), "{class}/{i:04}.img");
        }
    }
    assert!(ds.get_by_key(b"cat/0006").unwrap().is_none());
}

#[test]
fn golden_v1_holds_exactly_the_golden_tree() {
    let ds = Dataset::open(golden_v1()).unwrap();
    let tree: Tree = snapshot(&golden_tree());
    assert_eq!(tree.len(), 55);
    assert_same_tree(
        &dataset_tree(&ds),
        &tree,
        "golden-v1 vs fixtures/trees/golden",
    );
}

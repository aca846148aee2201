//! The frozen golden fixtures of each format version.
//!
//! `fixtures/golden-v1/` (format version 1) and `fixtures/golden-v2/` (format version 2) were
//! packed once each from `fixtures/trees/golden/` with [`golden_options`] (see
//! `fixtures/README.md`) and are never regenerated. Version 2 changed only the manifest (it
//! added `writer` and `features`); the shards of both are byte-identical. These tests check
//! that
//!
//! - today's `pack` of the same tree with the same options writes golden-v2's bytes, file for
//!   file (the writer is deterministic and its output has not drifted), and golden-v1's shards;
//! - today's reader opens and verifies both fixtures and finds what they held when they were
//!   made (every release keeps reading every version).
//!
//! Identical bytes are promised for the same writer identification (shardpack version, zstd
//! version, dictionary trainer) and options. When the bytes differ and the zstd library or the
//! trainer is not the one that made the fixture, the test says so instead of printing a bare
//! byte diff. The goldens' dictionary came from `DictTrainer::Zdict`, which `golden_options` names. If
//! they differ after an intended change to what the writer produces, that change is a format
//! change: bump the format version and add a `golden-v3`; do not edit the existing fixtures.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{assert_same_tree, dataset_tree, repo_root, snapshot, Tree};
use shardpack::codec::{DictTrainer, Policy};
use shardpack::compile::{pack, NoProgress, PackOptions, ShardCut, SymlinkPolicy};
use shardpack::format::Codec;
use shardpack::manifest::{Manifest, WriterId, MANIFEST_FILE};
use shardpack::writer::WriterOptions;
use shardpack::Dataset;

fn golden_tree() -> PathBuf {
    repo_root().join("fixtures/trees/golden")
}

fn golden_v1() -> PathBuf {
    repo_root().join("fixtures/golden-v1")
}

fn golden_v2() -> PathBuf {
    repo_root().join("fixtures/golden-v2")
}

/// The options golden-v1 and golden-v2 were packed with: the defaults except the shard size,
/// the sample cap and a dictionary for `json`. The CLI equivalent is
/// `shardpack pack fixtures/trees/golden fixtures/golden-vN --shard-size 22528
/// --max-samples-per-shard 8 --field-compress json=zstd-dict:3 --symlinks skip --shard-cut stored`
/// (shards were cut by stored sizes then, and skipping links was the default; the manifest
/// records it as `"follow_symlinks": false`; the cut rule is not recorded).
fn golden_options() -> PackOptions {
    PackOptions {
        writer: WriterOptions {
            shard_size: 22528,
            max_samples_per_shard: Some(8),
            ..WriterOptions::default()
        },
        field_compress: BTreeMap::from([(b"json".to_vec(), Policy::ZstdDict(3))]),
        symlinks: SymlinkPolicy::Skip,
        // The goldens were cut by stored sizes, the rule before planned packs.
        shard_cut: ShardCut::Stored,
        // And their json dictionary came from zstd's ZDICT_trainFromBuffer.
        dict_trainer: DictTrainer::Zdict,
        ..PackOptions::default()
    }
}

fn manifest_of(dir: &Path) -> Manifest {
    let p = dir.join(MANIFEST_FILE);
    Manifest::parse(&std::fs::read(&p).unwrap(), &p).unwrap()
}

/// Compares a fresh pack `out` with the frozen `golden` dataset, file for file, and explains a
/// difference: `made_by` is the writer identification the golden bytes came from (its zstd and
/// dictionary trainer are compared with this build's). The manifest is compared with its
/// `writer` object set to the golden's (a new shardpack version with the same bytes otherwise
/// is not a drift); everything else must be identical.
fn reproduction_problem(out: &Path, golden: &Path, made_by: &WriterId) -> Option<String> {
    let fresh = snapshot(out);
    let frozen = snapshot(golden);
    let now = manifest_of(out)
        .writer
        .expect("a fresh pack names its writer");
    let shards_differ = frozen
        .iter()
        .filter(|(k, _)| k.as_slice() != MANIFEST_FILE.as_bytes())
        .any(|(k, v)| fresh.get(k) != Some(v))
        || fresh.len() != frozen.len();
    if shards_differ && (now.zstd != made_by.zstd || now.dict_trainer != made_by.dict_trainer) {
        return Some(format!(
            "the compressor changed: {} was made with zstd {} (dictionary trainer {:?}), this \
             build links zstd {} ({:?}). Compressed records and trained dictionaries may differ \
             between zstd versions; identical bytes are promised only for the same writer \
             identification and options (format-spec/manifest.md section 2.2). Build against \
             the zstd the fixture records, or treat this as a writer change.",
            golden.display(),
            made_by.zstd,
            made_by.dict_trainer,
            now.zstd,
            now.dict_trainer
        ));
    }
    let mut fresh = fresh;
    if let Some(m) = fresh.get_mut(MANIFEST_FILE.as_bytes()) {
        let mut parsed = Manifest::parse(m, &out.join(MANIFEST_FILE)).unwrap();
        parsed.writer = manifest_of(golden).writer;
        *m = parsed.to_json();
    }
    let frozen_m = &frozen[MANIFEST_FILE.as_bytes()];
    if fresh == frozen {
        return None;
    }
    let what = if !shards_differ && fresh.get(MANIFEST_FILE.as_bytes()) != Some(frozen_m) {
        "the manifest (besides the writer version)"
    } else {
        "the shards"
    };
    Some(format!(
        "today's pack of fixtures/trees/golden differs from {} in {what}, with the same zstd \
         ({}): the writer's output drifted. If intended, that is a format change: bump the \
         format version and add a new golden fixture.",
        golden.display(),
        now.zstd
    ))
}

/// Packs the golden tree with [`golden_options`] at 1 and 3 threads and checks it against
/// `golden` with [`reproduction_problem`]; on a drift with the same zstd, also prints which
/// files differ.
fn assert_pack_reproduces(golden: &Path, made_by: &WriterId, cmp: impl Fn(&Tree, &Tree)) {
    let tmp = common::tempdir();
    let out = tmp.path().join("golden");
    for threads in [1, 3] {
        let opts = PackOptions {
            threads,
            ..golden_options()
        };
        let _ = std::fs::remove_dir_all(&out);
        pack(&golden_tree(), &out, &opts, &NoProgress).unwrap();
        if let Some(p) = reproduction_problem(&out, golden, made_by) {
            if !p.starts_with("the compressor changed") {
                cmp(&snapshot(&out), &snapshot(golden));
            }
            panic!("{threads} threads: {p}");
        }
    }
}

#[test]
fn todays_pack_reproduces_golden_v2_byte_for_byte() {
    let made_by = manifest_of(&golden_v2())
        .writer
        .expect("golden-v2 names its writer");
    assert_pack_reproduces(&golden_v2(), &made_by, |a, b| {
        assert_same_tree(a, b, "pack of fixtures/trees/golden vs fixtures/golden-v2")
    });
}

/// Format version 2 changed only the manifest: today's pack still writes golden-v1's shards
/// byte for byte, and its manifest is golden-v1's with `format_version` 2 and the `writer`
/// and `features` keys.
#[test]
fn todays_pack_reproduces_golden_v1_shards_byte_for_byte() {
    let tmp = common::tempdir();
    let out = tmp.path().join("golden");
    pack(&golden_tree(), &out, &golden_options(), &NoProgress).unwrap();
    let mut fresh = snapshot(&out);
    let mut v1 = snapshot(&golden_v1());
    let fm = fresh.remove(MANIFEST_FILE.as_bytes()).unwrap();
    let gm = v1.remove(MANIFEST_FILE.as_bytes()).unwrap();
    let made_by = manifest_of(&golden_v2()).writer.unwrap();
    if fresh != v1 && WriterId::current().zstd != made_by.zstd {
        panic!(
            "the compressor changed: golden-v1's shards were reproduced by zstd {}, this build \
             links zstd {}",
            made_by.zstd,
            WriterId::current().zstd
        );
    }
    assert_same_tree(
        &fresh,
        &v1,
        "shards of a pack of fixtures/trees/golden vs golden-v1",
    );
    let mut m = Manifest::parse(&fm, &out.join(MANIFEST_FILE)).unwrap();
    assert_eq!(m.format_version, 2);
    assert!(m.writer.is_some() && m.features.is_some());
    m.format_version = 1;
    m.writer = None;
    m.features = None;
    assert!(
        m.to_json() == gm,
        "the v2 manifest less its v2 keys is not golden-v1's manifest"
    );
}

/// The default trainer is not the goldens' zdict: its pack records its own identification, and
/// a golden comparison says the compressor changed rather than that the writer drifted.
#[test]
fn the_default_trainer_is_named_in_the_manifest() {
    let tmp = common::tempdir();
    let out = tmp.path().join("golden");
    let opts = PackOptions {
        dict_trainer: DictTrainer::default(),
        ..golden_options()
    };
    pack(&golden_tree(), &out, &opts, &NoProgress).unwrap();
    let w = manifest_of(&out).writer.unwrap();
    assert_eq!(w, WriterId::current());
    assert!(w.dict_trainer.starts_with("fastcover:"), "{w:?}");
    let made_by = manifest_of(&golden_v2()).writer.unwrap();
    let p = reproduction_problem(&out, &golden_v2(), &made_by).unwrap();
    assert!(p.starts_with("the compressor changed"), "{p}");
}

/// The explanation of a drift names the compressor when the zstd version differs.
#[test]
fn a_drift_with_another_zstd_names_the_compressor() {
    let tmp = common::tempdir();
    let out = tmp.path().join("golden");
    pack(&golden_tree(), &out, &golden_options(), &NoProgress).unwrap();
    let made_by = manifest_of(&golden_v2()).writer.unwrap();
    assert_eq!(reproduction_problem(&out, &golden_v2(), &made_by), None);
    // A newer shardpack version with the same bytes is no drift.
    let newer = WriterId {
        version: "99.0.0".into(),
        ..made_by.clone()
    };
    assert_eq!(reproduction_problem(&out, &golden_v2(), &newer), None);
    // Different shard bytes: with another zstd recorded, the message says the compressor
    // changed; with the same zstd, that the writer drifted.
    let shard = out.join("shard-000001.spk");
    let mut b = std::fs::read(&shard).unwrap();
    b[5000] ^= 1;
    std::fs::write(&shard, b).unwrap();
    let other = WriterId {
        zstd: "1.4.0".into(),
        dict_trainer: "zdict 1.4.0".into(),
        ..made_by.clone()
    };
    let p = reproduction_problem(&out, &golden_v2(), &other).unwrap();
    assert!(
        p.starts_with("the compressor changed") && p.contains("zstd 1.4.0"),
        "{p}"
    );
    let p = reproduction_problem(&out, &golden_v2(), &made_by).unwrap();
    assert!(p.contains("drifted") && p.contains("the shards"), "{p}");
}

/// golden-v2 holds what golden-v1 holds: the same shards, and a manifest that differs only by
/// the version and the two keys version 2 added.
#[test]
fn golden_v2_is_golden_v1_with_a_v2_manifest() {
    let mut v1 = snapshot(&golden_v1());
    let mut v2 = snapshot(&golden_v2());
    v1.remove(MANIFEST_FILE.as_bytes());
    v2.remove(MANIFEST_FILE.as_bytes());
    assert_same_tree(&v2, &v1, "golden-v2 shards vs golden-v1 shards");
    let m = manifest_of(&golden_v2());
    assert_eq!(m.format_version, 2);
    let w = m.writer.as_ref().unwrap();
    assert_eq!(w.name, "shardpack");
    assert!(!w.version.is_empty() && !w.zstd.is_empty() && !w.dict_trainer.is_empty());
    assert_eq!(m.features, Some(Default::default()));
}

#[test]
fn todays_reader_reads_golden_v2() {
    let ds = Dataset::open(golden_v2()).unwrap();
    let report = ds.verify();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(ds.manifest().format_version, 2);
    assert_eq!(ds.len(), 19);
    let tree: Tree = snapshot(&golden_tree());
    assert_same_tree(
        &dataset_tree(&ds),
        &tree,
        "golden-v2 vs fixtures/trees/golden",
    );
    let v1 = Dataset::open(golden_v1()).unwrap();
    let keys =
        |d: &Dataset| -> Vec<Vec<u8>> { d.iter().map(|s| s.unwrap().key().to_vec()).collect() };
    assert_eq!(keys(&ds), keys(&v1));
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

fn golden_zstd_ref() -> PathBuf {
    repo_root().join("fixtures/golden-zstd-ref")
}

/// `fixtures/golden-zstd-ref/`, the fixture of feature `zstd-ref` (format version 2 with
/// codec 3): packed once from `fixtures/trees/refs/` with the default options
/// (`shardpack pack fixtures/trees/refs fixtures/golden-zstd-ref`). Today's reader reads and
/// verifies it and finds the tree; it holds zstd-ref records (copies and variants).
#[test]
fn todays_reader_reads_golden_zstd_ref() {
    let ds = Dataset::open(golden_zstd_ref()).unwrap();
    let m = ds.manifest();
    assert_eq!(
        m.features.clone().unwrap().required,
        vec!["zstd-ref".to_string()]
    );
    let report = ds.verify();
    assert!(report.is_ok(), "{:?}", report.problems);
    let refs = ds
        .iter()
        .flat_map(|s| {
            s.unwrap()
                .fields()
                .map(|f| f.unwrap().codec())
                .collect::<Vec<_>>()
        })
        .filter(|c| *c == Codec::ZstdRef)
        .count();
    assert!(refs >= 4, "{refs} zstd-ref records");
    assert_same_tree(
        &dataset_tree(&ds),
        &snapshot(&repo_root().join("fixtures/trees/refs")),
        "fixtures/golden-zstd-ref vs fixtures/trees/refs",
    );
}

/// Today's default pack of `fixtures/trees/refs/` writes golden-zstd-ref's bytes (with the
/// same zstd; otherwise the message says the compressor changed).
#[test]
fn todays_pack_reproduces_golden_zstd_ref() {
    let made_by = manifest_of(&golden_zstd_ref()).writer.unwrap();
    let tmp = common::tempdir();
    let out = tmp.path().join("refs");
    for threads in [1, 3] {
        let _ = std::fs::remove_dir_all(&out);
        let opts = PackOptions {
            threads,
            ..PackOptions::default()
        };
        pack(
            &repo_root().join("fixtures/trees/refs"),
            &out,
            &opts,
            &NoProgress,
        )
        .unwrap();
        if let Some(p) = reproduction_problem(&out, &golden_zstd_ref(), &made_by) {
            panic!("{threads} threads: {p}");
        }
    }
}

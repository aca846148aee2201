//! Writer edge cases, corrupted datasets, and inputs that change while a pack reads them.
//!
//! Every failure must be an error that says what is wrong, never a panic or a wrong sample.

mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use common::{flip_byte, reseal, shard_files, snapshot, text_bytes, write_tree, Tree};
use shardpack::compile::{pack, PackOptions, Progress};
use shardpack::format::{Codec, Footer, MAX_RECORD_ALIGN, NO_LABEL};
use shardpack::manifest::{Hash64, Manifest, MANIFEST_FILE};
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::{verify_dir, Dataset, Error};

fn two_fields() -> Vec<FieldSpec> {
    vec![FieldSpec::raw("jpg"), FieldSpec::zstd("txt")]
}

fn opts(shard_size: u64, max: Option<u64>, align: u64) -> WriterOptions {
    WriterOptions {
        shard_size,
        max_samples_per_shard: max,
        record_align: align,
    }
}

/// Names of the entries in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Input validation
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_or_unsorted_field_in_one_sample_is_an_error() {
    let tmp = common::tempdir();
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), WriterOptions::default()).unwrap();
    let e = w.append(b"k", None, &[(0, b"a"), (0, b"b")]).unwrap_err();
    assert!(matches!(e, Error::Input { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("\"jpg\"") && msg.contains("twice"), "{msg}");
    assert!(msg.starts_with("k:"), "names the key: {msg}");

    let e = w.append(b"k", None, &[(1, b"a"), (0, b"b")]).unwrap_err();
    assert!(matches!(e, Error::Input { .. }), "{e:?}");

    let e = w.append(b"k", None, &[(2, b"a")]).unwrap_err();
    assert!(matches!(e, Error::Options(_)), "{e:?}");
    assert!(e.to_string().contains("field index 2"), "{e}");

    // The rejected samples left nothing behind: the writer still works.
    w.append(b"k", None, &[(0, b"a"), (1, b"b")]).unwrap();
    let m = w.finish(DatasetInfo::default()).unwrap();
    assert_eq!(m.samples, 1);
    let ds = Dataset::open(tmp.path()).unwrap();
    assert_eq!(ds.len(), 1);
    assert!(ds.verify().is_ok());
}

#[test]
fn duplicate_key_in_one_shard_fails_at_finish_and_cleans_up() {
    let tmp = common::tempdir();
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), WriterOptions::default()).unwrap();
    w.append(b"cat/1", Some(0), &[(0, b"one")]).unwrap();
    w.append(b"cat/2", Some(0), &[(0, b"two")]).unwrap();
    w.append(b"cat/1", Some(0), &[(1, b"again")]).unwrap();
    let e = w.finish(DatasetInfo::default()).unwrap_err();
    assert!(matches!(e, Error::Input { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("cat/1") && msg.contains("same key"), "{msg}");
    assert!(
        entries(tmp.path()).is_empty(),
        "a failed finish leaves files: {:?}",
        entries(tmp.path())
    );
}

#[test]
fn duplicate_key_across_shards_is_an_error() {
    // Keys are unique within a dataset (format-spec/manifest.md section 3); collisions are
    // errors, not overwrites (DESIGN.md).
    let tmp = common::tempdir();
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), opts(1 << 30, Some(1), 8)).unwrap();
    w.append(b"k", None, &[(0, b"one")]).unwrap();
    let r = w
        .append(b"k", None, &[(0, b"two")])
        .and_then(|()| w.finish(DatasetInfo::default()).map(|_| ()));
    let e = r.expect_err("a key repeated in a later shard must be rejected");
    assert!(matches!(e, Error::Input { .. }), "{e:?}");
    assert!(e.to_string().contains("same key"), "{e}");
    assert!(entries(tmp.path()).is_empty());
}

#[test]
fn a_sample_without_records_is_an_error() {
    let tmp = common::tempdir();
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), WriterOptions::default()).unwrap();
    let e = w
        .append(b"k", None, &[])
        .expect_err("an empty sample must be rejected");
    assert!(matches!(e, Error::Input { .. }), "{e:?}");
}

#[test]
fn field_specs_must_be_sorted_and_unique() {
    let tmp = common::tempdir();
    for fields in [
        vec![FieldSpec::raw("txt"), FieldSpec::raw("jpg")],
        vec![FieldSpec::raw("jpg"), FieldSpec::zstd("jpg")],
        vec![FieldSpec::raw("b"), FieldSpec::raw(""), FieldSpec::raw("c")],
    ] {
        let e = DatasetWriter::create(tmp.path(), fields, WriterOptions::default()).unwrap_err();
        assert!(matches!(e, Error::Options(_)), "{e:?}");
        assert!(e.to_string().contains("sorted"), "{e}");
    }
    // The empty name sorts first and is fine.
    let w = DatasetWriter::create(
        tmp.path(),
        vec![FieldSpec::raw(""), FieldSpec::raw("a")],
        WriterOptions::default(),
    )
    .unwrap();
    w.abort();
    assert!(entries(tmp.path()).is_empty());
}

#[test]
fn zstd_dict_field_needs_a_dictionary() {
    let tmp = common::tempdir();
    let spec = FieldSpec {
        name: b"txt".to_vec(),
        codec: Codec::ZstdDict,
        level: 3,
        dict: None,
    };
    let e = DatasetWriter::create(tmp.path(), vec![spec], WriterOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Options(_)), "{e:?}");
    assert!(e.to_string().contains("dictionary"), "{e}");
}

#[test]
fn label_u32_max_is_reserved() {
    let tmp = common::tempdir();
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), WriterOptions::default()).unwrap();
    let e = w.append(b"a", Some(NO_LABEL), &[(0, b"x")]).unwrap_err();
    assert!(matches!(e, Error::Options(_)), "{e:?}");
    assert!(e.to_string().contains("reserved"), "{e}");
    w.append(b"b", Some(u32::MAX - 1), &[(0, b"x")]).unwrap();
    w.append(b"c", None, &[(0, b"x")]).unwrap();
    w.finish(DatasetInfo::default()).unwrap();
    let ds = Dataset::open(tmp.path()).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.get(0).unwrap().label(), Some(u32::MAX - 1));
    assert_eq!(ds.get(1).unwrap().label(), None);
}

#[test]
fn writer_options_are_validated() {
    let tmp = common::tempdir();
    for align in [0, 1, 4, 12, 24, 4095, MAX_RECORD_ALIGN * 2, u64::MAX] {
        let e = DatasetWriter::create(tmp.path(), two_fields(), opts(1 << 20, None, align))
            .unwrap_err();
        assert!(matches!(e, Error::Options(_)), "align {align}: {e:?}");
        assert!(e.to_string().contains("alignment"), "{e}");
    }
    for align in [8, 16, 4096, MAX_RECORD_ALIGN] {
        DatasetWriter::create(tmp.path(), two_fields(), opts(1 << 20, None, align))
            .unwrap()
            .abort();
    }
    let e = DatasetWriter::create(tmp.path(), two_fields(), opts(0, None, 8)).unwrap_err();
    assert!(matches!(e, Error::Options(_)), "{e:?}");
    let e = DatasetWriter::create(tmp.path(), two_fields(), opts(1, Some(0), 8)).unwrap_err();
    assert!(matches!(e, Error::Options(_)), "{e:?}");
    let missing = tmp.path().join("nope");
    let e = DatasetWriter::create(&missing, two_fields(), WriterOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Input { .. }), "{e:?}");
    assert!(entries(tmp.path()).is_empty());
}

#[test]
fn refuses_a_directory_holding_a_dataset() {
    let tmp = common::tempdir();
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), WriterOptions::default()).unwrap();
    w.append(b"a", None, &[(0, b"x")]).unwrap();
    w.finish(DatasetInfo::default()).unwrap();
    let before = snapshot(tmp.path());
    let e = DatasetWriter::create(tmp.path(), two_fields(), WriterOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Input { .. }), "{e:?}");
    assert!(e.to_string().contains("already holds a dataset"), "{e}");
    assert_eq!(snapshot(tmp.path()), before);
}

// ---------------------------------------------------------------------------------------------
// Shapes: empty, oversized records, cleanup
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_dataset_has_no_shards_and_opens_empty() {
    let tmp = common::tempdir();
    let w = DatasetWriter::create(tmp.path(), two_fields(), WriterOptions::default()).unwrap();
    let m = w.finish(DatasetInfo::default()).unwrap();
    assert_eq!(m.samples, 0);
    assert!(m.shards.is_empty());
    assert_eq!(entries(tmp.path()), vec![MANIFEST_FILE.to_string()]);
    let ds = Dataset::open(tmp.path()).unwrap();
    assert_eq!(ds.len(), 0);
    assert!(ds.is_empty());
    assert_eq!(ds.iter().count(), 0);
    assert!(matches!(
        ds.get(0).unwrap_err(),
        Error::OutOfRange { index: 0, len: 0 }
    ));
    assert!(ds.get_by_key(b"").unwrap().is_none());
    assert!(ds.verify().is_ok());
    assert!(verify_dir(tmp.path()).unwrap().is_ok());
}

#[test]
fn a_record_bigger_than_the_shard_size_gets_its_own_shard() {
    let tmp = common::tempdir();
    let big = common::random_bytes(7, 40_000);
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), opts(16 << 10, None, 8)).unwrap();
    w.append(b"big0", None, &[(0, &big)]).unwrap();
    w.append(b"s1", None, &[(0, b"small")]).unwrap();
    w.append(b"s2", None, &[(1, b"small")]).unwrap();
    w.append(b"big3", None, &[(0, &big), (1, b"caption")])
        .unwrap();
    w.append(b"s4", None, &[(0, b"small")]).unwrap();
    let m = w.finish(DatasetInfo::default()).unwrap();
    let counts: Vec<u64> = m.shards.iter().map(|s| s.samples).collect();
    assert_eq!(counts, vec![1, 2, 1, 1]);
    let ds = Dataset::open(tmp.path()).unwrap();
    assert_eq!(
        &*ds.get(0)
            .unwrap()
            .field(b"jpg")
            .unwrap()
            .unwrap()
            .data()
            .unwrap(),
        &big[..]
    );
    assert_eq!(
        &*ds.get_by_key(b"big3")
            .unwrap()
            .unwrap()
            .field(b"jpg")
            .unwrap()
            .unwrap()
            .data()
            .unwrap(),
        &big[..]
    );
    assert!(ds.verify().is_ok());
}

/// Regression test: the shard-size projection once left out the 4096-byte region padding,
/// the index header, field table, names, dictionaries and footer, so shard files came out
/// above `WriterOptions::shard_size` (e.g. 19504 bytes for a 16384-byte target).
#[test]
fn shard_files_stay_within_the_shard_size() {
    // WriterOptions::shard_size: "a shard is closed before a sample would take it past this
    // (a sample larger than the target gets a shard of its own)".
    let samples: Vec<Vec<u8>> = (0..64)
        .map(|i| text_bytes(i, 200 + i as usize * 3))
        .collect();
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    let dict = shardpack::codec::train_dictionary(&refs, 4096).unwrap();
    for (limit, align) in [(16u64 << 10, 8u64), (40 << 10, 4096), (24 << 10, 64)] {
        let tmp = common::tempdir();
        let fields = vec![
            FieldSpec::raw("bin"),
            FieldSpec {
                name: b"txt".to_vec(),
                codec: Codec::ZstdDict,
                level: 3,
                dict: Some(dict.clone()),
            },
        ];
        let mut w = DatasetWriter::create(tmp.path(), fields, opts(limit, None, align)).unwrap();
        for i in 0..120u64 {
            let bin = common::random_bytes(i, (i as usize * 131) % 3000);
            let txt = text_bytes(i, 300);
            let key = format!("sample-{i:04}");
            if i % 37 == 5 {
                let big = common::random_bytes(i, limit as usize + 1000);
                w.append(key.as_bytes(), None, &[(0, &big)]).unwrap();
            } else {
                w.append(key.as_bytes(), None, &[(0, &bin), (1, &txt)])
                    .unwrap();
            }
        }
        let m = w.finish(DatasetInfo::default()).unwrap();
        assert!(m.shards.len() > 3);
        for s in &m.shards {
            assert!(
                s.samples == 1 || s.bytes <= limit,
                "{} holds {} samples in {} bytes, over the {limit}-byte target (align {align})",
                s.file,
                s.samples,
                s.bytes
            );
        }
        assert!(Dataset::open(tmp.path()).unwrap().verify().is_ok());
    }
}

#[test]
fn max_samples_per_shard_cuts_shards() {
    let tmp = common::tempdir();
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), opts(1 << 30, Some(3), 8)).unwrap();
    for i in 0..10u32 {
        w.append(format!("{i}").as_bytes(), Some(i % 2), &[(1, b"text")])
            .unwrap();
    }
    let m = w.finish(DatasetInfo::default()).unwrap();
    let counts: Vec<u64> = m.shards.iter().map(|s| s.samples).collect();
    assert_eq!(counts, vec![3, 3, 3, 1]);
    let firsts: Vec<u64> = m.shards.iter().map(|s| s.first_sample).collect();
    assert_eq!(firsts, vec![0, 3, 6, 9]);
    let ds = Dataset::open(tmp.path()).unwrap();
    for i in 0..10 {
        let s = ds.get(i).unwrap();
        assert_eq!(s.key(), format!("{i}").as_bytes());
        assert_eq!(s.label(), Some(i as u32 % 2));
    }
}

#[test]
fn dropping_an_unfinished_writer_removes_its_files() {
    let tmp = common::tempdir();
    fs::write(tmp.path().join("unrelated.txt"), b"keep me").unwrap();
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), opts(1 << 30, Some(2), 8)).unwrap();
    for i in 0..5u32 {
        w.append(format!("{i}").as_bytes(), None, &[(0, b"data")])
            .unwrap();
    }
    // Two shards are finished and renamed, a third is open.
    let names = entries(tmp.path());
    assert!(names.contains(&"shard-000000.spk".to_string()), "{names:?}");
    assert!(
        names.contains(&"shard-000002.spk.tmp".to_string()),
        "{names:?}"
    );
    drop(w);
    assert_eq!(entries(tmp.path()), vec!["unrelated.txt".to_string()]);
    let e = Dataset::open(tmp.path()).unwrap_err();
    assert!(matches!(e, Error::Manifest { .. }), "{e:?}");

    // abort() does the same.
    let mut w = DatasetWriter::create(tmp.path(), two_fields(), opts(1 << 30, Some(1), 8)).unwrap();
    w.append(b"a", None, &[(0, b"x")]).unwrap();
    w.append(b"b", None, &[(0, b"x")]).unwrap();
    w.abort();
    assert_eq!(entries(tmp.path()), vec!["unrelated.txt".to_string()]);
}

#[test]
fn shard_files_without_a_manifest_are_not_a_dataset() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    let mut w = DatasetWriter::create(dir, two_fields(), WriterOptions::default()).unwrap();
    w.append(b"a", None, &[(0, b"x")]).unwrap();
    w.finish(DatasetInfo::default()).unwrap();
    fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
    let e = Dataset::open(dir).unwrap_err();
    assert!(matches!(e, Error::Manifest { .. }), "{e:?}");
    assert!(e.to_string().contains("interrupted"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------------

/// A small dataset with raw, zstd and zstd-dict records over two shards.
fn small_dataset(dir: &Path) {
    let samples: Vec<Vec<u8>> = (0..64)
        .map(|i| text_bytes(i, 200 + i as usize * 3))
        .collect();
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    let dict = shardpack::codec::train_dictionary(&refs, 2048).unwrap();
    let fields = vec![
        FieldSpec::raw("bin"),
        FieldSpec {
            name: b"json".to_vec(),
            codec: Codec::ZstdDict,
            level: 3,
            dict: Some(dict),
        },
        FieldSpec::zstd("txt"),
    ];
    let mut w = DatasetWriter::create(dir, fields, opts(1 << 30, Some(3), 8)).unwrap();
    for i in 0..5u64 {
        let key = format!("class{}/{i:03}", i % 2);
        let bin = common::random_bytes(i, 100 + i as usize * 10);
        let json = text_bytes(100 + i, 300);
        let txt = text_bytes(200 + i, 400);
        w.append(
            key.as_bytes(),
            Some((i % 2) as u32),
            &[(0, &bin), (1, &json), (2, &txt)],
        )
        .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
}

/// Every (key, field) -> bytes of a dataset, read through the checked path.
fn read_all(ds: &Dataset) -> shardpack::Result<Tree> {
    let mut t = Tree::new();
    for s in ds.iter() {
        let s = s?;
        for f in s.fields() {
            let f = f?;
            t.insert(
                common::record_path(s.key(), f.name()),
                f.data()?.into_owned(),
            );
        }
    }
    Ok(t)
}

#[test]
fn flipped_record_bit_is_a_bad_record_naming_shard_sample_key_and_field() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    small_dataset(dir);
    for (field, codec) in [
        (&b"bin"[..], Codec::Raw),
        (b"json", Codec::ZstdDict),
        (b"txt", Codec::Zstd),
    ] {
        let ds = Dataset::open(dir).unwrap();
        let s = ds.get(4).unwrap(); // shard 1, sample 1
        let f = s.field(field).unwrap().unwrap();
        assert_eq!(f.codec(), codec);
        let (path, offset, key) = (s.shard().path().to_path_buf(), f.offset(), s.key().to_vec());
        drop(ds);
        flip_byte(&path, offset + 5, 0x10);

        let ds = Dataset::open(dir).expect("open does not read records");
        let s = ds.get(4).unwrap();
        let f = s.field(field).unwrap().unwrap();
        let e = f.data().unwrap_err();
        match &e {
            Error::BadRecord {
                path: p,
                sample,
                key: k,
                field: fname,
                offset: o,
                detail,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*sample, 1);
                assert_eq!(k.as_bytes(), key.as_slice());
                assert_eq!(fname.as_bytes(), field);
                assert_eq!(*o, offset);
                assert!(detail.contains("checksum"), "{detail}");
            }
            other => panic!("expected BadRecord, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("shard-000001.spk") && msg.contains("class0/004"),
            "{msg}"
        );
        let mut buf = Vec::new();
        assert!(matches!(
            f.read_into(&mut buf),
            Err(Error::BadRecord { .. })
        ));
        // verify names the same record; the other samples still read.
        let report = ds.verify();
        assert!(!report.is_ok());
        assert!(
            report.problems.iter().any(|p| p.sample == Some(1)
                && p.key.as_deref() == Some("class0/004")
                && p.field.as_deref() == Some(std::str::from_utf8(field).unwrap())),
            "{:?}",
            report.problems
        );
        for i in 0..4 {
            for f in ds.get(i).unwrap().fields() {
                f.unwrap().data().unwrap();
            }
        }
        drop(ds);
        flip_byte(&path, offset + 5, 0x10); // restore
        assert!(Dataset::open(dir).unwrap().verify().is_ok());
    }
}

#[test]
fn flipped_index_bit_fails_open_as_corrupt() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    small_dataset(dir);
    let shard = dir.join("shard-000000.spk");
    let bytes = fs::read(&shard).unwrap();
    let footer = Footer::decode(&bytes).unwrap();
    for rel in [0, 70, footer.index_len / 2, footer.index_len - 1] {
        let at = footer.index_offset + rel;
        flip_byte(&shard, at, 0x01);
        let e = Dataset::open(dir).unwrap_err();
        match &e {
            Error::Corrupt { path, source } => {
                assert_eq!(path, &shard);
                assert_eq!(source.region, "index");
            }
            other => panic!("flip at {at}: expected Corrupt, got {other:?}"),
        }
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        // verify_dir reports it instead of stopping.
        let report = verify_dir(dir).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert_eq!(report.problems[0].shard, "shard-000000.spk");
        flip_byte(&shard, at, 0x01);
    }
    assert!(Dataset::open(dir).unwrap().verify().is_ok());
}

#[test]
fn truncated_shard_is_corrupt() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    small_dataset(dir);
    let shard = dir.join("shard-000001.spk");
    let full = fs::read(&shard).unwrap();
    for len in [
        0,
        10,
        64,
        4096,
        4191,
        full.len() / 2,
        full.len() - 96,
        full.len() - 1,
    ] {
        fs::write(&shard, &full[..len]).unwrap();
        let e = Dataset::open(dir).unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt { path, .. } if path == &shard),
            "length {len}: {e:?}"
        );
    }
    // Extra bytes after the footer are as bad.
    let mut longer = full.clone();
    longer.extend_from_slice(&[0; 100]);
    fs::write(&shard, &longer).unwrap();
    assert!(matches!(
        Dataset::open(dir).unwrap_err(),
        Error::Corrupt { .. }
    ));
    fs::write(&shard, &full).unwrap();
    assert!(Dataset::open(dir).unwrap().verify().is_ok());
}

#[test]
fn deleted_shard_is_a_manifest_error_saying_missing() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    small_dataset(dir);
    let shard = dir.join("shard-000001.spk");
    fs::remove_file(&shard).unwrap();
    let e = Dataset::open(dir).unwrap_err();
    assert!(
        matches!(&e, Error::Manifest { path, .. } if path == &shard),
        "{e:?}"
    );
    assert!(e.to_string().contains("missing"), "{e}");
    let report = verify_dir(dir).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert!(report.problems[0].detail.contains("missing"));
}

#[test]
fn edited_manifest_is_a_manifest_error() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    small_dataset(dir);
    let mpath = dir.join(MANIFEST_FILE);
    let original = fs::read(&mpath).unwrap();
    let m: Manifest = serde_json::from_slice(&original).unwrap();

    type Edit = fn(&mut Manifest);
    let edits: Vec<(&str, Edit)> = vec![
        ("sample count", |m| m.samples += 1),
        ("a shard's sample count", |m| m.shards[1].samples -= 1),
        ("record count", |m| m.records -= 1),
        ("first sample", |m| m.shards[1].first_sample = 2),
        ("shard name", |m| m.shards[0].file = "../x.spk".into()),
        ("format version", |m| m.format_version = 3),
        ("labels", |m| m.labels = "folders".into()),
        ("index hash", |m| m.shards[0].index_xxh3 = Hash64(1)),
        ("field name", |m| m.fields[0].name = "jpg".into()),
        ("shards swapped", |m| {
            m.shards.swap(0, 1);
            m.shards[0].file = "shard-000000.spk".into();
            m.shards[1].file = "shard-000001.spk".into();
            m.shards[0].first_sample = 0;
            m.shards[1].first_sample = 2;
        }),
    ];
    for (what, edit) in edits {
        let mut m2 = m.clone();
        edit(&mut m2);
        fs::write(&mpath, m2.to_json()).unwrap();
        let e = Dataset::open(dir).unwrap_err();
        assert!(matches!(e, Error::Manifest { .. }), "{what}: {e:?}");
    }
    let e = {
        let mut m2 = m.clone();
        m2.format_version = 3;
        fs::write(&mpath, m2.to_json()).unwrap();
        Dataset::open(dir).unwrap_err().to_string()
    };
    assert!(e.contains("version 3") && e.contains("1..=2"), "{e}");
    for junk in [
        &b""[..],
        b"{",
        b"[]",
        b"{\"format\": \"shardpack\"}",
        b"\xff\xfe",
    ] {
        fs::write(&mpath, junk).unwrap();
        let e = Dataset::open(dir).unwrap_err();
        assert!(matches!(e, Error::Manifest { .. }), "{e:?}");
    }
    // A manifest with a wrong whole-file hash opens (open is cheap) but fails verify.
    let mut m2 = m.clone();
    m2.shards[0].xxh3 = Hash64(m2.shards[0].xxh3.0 ^ 1);
    fs::write(&mpath, m2.to_json()).unwrap();
    let report = Dataset::open(dir).unwrap().verify();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    fs::write(&mpath, &original).unwrap();
    assert!(Dataset::open(dir).unwrap().verify().is_ok());
}

#[test]
fn manifest_shard_size_is_checked_on_open() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    small_dataset(dir);
    let mpath = dir.join(MANIFEST_FILE);
    let mut m: Manifest = serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();
    m.shards[0].bytes += 4096;
    fs::write(&mpath, m.to_json()).unwrap();
    match Dataset::open(dir) {
        Ok(_) => panic!("a shard of the wrong size opened"),
        Err(e) => assert!(matches!(e, Error::Manifest { .. }), "{e:?}"),
    }
}

/// Opens, reads every record and verifies; returns the data when everything succeeded.
fn open_read_verify(dir: &Path) -> Option<(Tree, bool)> {
    let ds = Dataset::open(dir).ok()?;
    let data = read_all(&ds).ok();
    let ok = ds.verify().is_ok();
    for i in 0..ds.len() {
        if let Ok(s) = ds.get(i) {
            let _ = ds.get_by_key(s.key());
        }
    }
    data.map(|d| (d, ok))
}

#[test]
fn every_flipped_byte_is_caught_without_panicking() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    small_dataset(dir);
    let original = read_all(&Dataset::open(dir).unwrap()).unwrap();
    let shard = dir.join("shard-000001.spk");
    let full = fs::read(&shard).unwrap();
    let footer = Footer::decode(&full).unwrap();
    let data_end = footer.data_offset + footer.data_len;
    let dict_end = footer.dict_offset + footer.dict_len;
    let len = full.len() as u64;
    // Every byte of the header, records, index and footer; a sample of the dictionary and of
    // the zero padding.
    let positions = (0..64)
        .chain(4096..data_end)
        .chain(footer.index_offset..len)
        .chain((footer.dict_offset..dict_end).step_by(5))
        .chain((64..4096).step_by(509))
        .chain((data_end..footer.dict_offset).step_by(97))
        .chain((dict_end..footer.index_offset).step_by(97));
    let mut panics = Vec::new();
    let mut tried = 0;
    for at in positions {
        let mask = 1u8 << (at % 8);
        let mut b = full.clone();
        b[at as usize] ^= mask;
        fs::write(&shard, &b).unwrap();
        tried += 1;
        match catch_unwind(AssertUnwindSafe(|| open_read_verify(dir))) {
            Err(_) => panics.push(at),
            Ok(None) => {}
            Ok(Some((data, verified))) => {
                // Reads that succeed return the right bytes; verify sees every change.
                assert_eq!(data, original, "flip at {at} gave wrong data");
                assert!(!verified, "flip at {at} passed verify");
            }
        }
    }
    assert!(tried > 1000, "only {tried} positions");
    fs::write(&shard, &full).unwrap();
    assert!(panics.is_empty(), "panics at byte offsets {panics:?}");
}

#[test]
fn edited_index_with_valid_checksums_never_panics() {
    let tmp = common::tempdir();
    let dir = tmp.path();
    small_dataset(dir);
    let shard = dir.join("shard-000001.spk");
    let full = fs::read(&shard).unwrap();
    let manifest = fs::read(dir.join(MANIFEST_FILE)).unwrap();
    let footer = Footer::decode(&full).unwrap();
    let mut panics = Vec::new();
    for rel in 0..footer.index_len {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = full.clone();
            b[(footer.index_offset + rel) as usize] ^= mask;
            reseal(dir, 1, b);
            if catch_unwind(AssertUnwindSafe(|| open_read_verify(dir))).is_err() {
                panics.push((rel, mask));
            }
        }
    }
    fs::write(&shard, &full).unwrap();
    fs::write(dir.join(MANIFEST_FILE), &manifest).unwrap();
    assert!(Dataset::open(dir).unwrap().verify().is_ok());
    assert!(
        panics.is_empty(),
        "panics at (index offset, mask) {panics:?}"
    );
}

/// The keys of the manifest's `options` object, in the order they appear in the file.
fn option_keys(manifest_json: &str) -> Vec<String> {
    let start = manifest_json
        .find("\n  \"options\": {")
        .expect("an options object");
    let body = &manifest_json[start..];
    let end = body.find("\n  }").expect("the end of the options object");
    body[..end]
        .lines()
        .filter(|l| l.starts_with("    \"") && !l.starts_with("     "))
        .map(|l| l.trim().split('"').nth(1).unwrap().to_string())
        .collect()
}

#[test]
fn manifest_options_keys_are_the_spec_keys_in_byte_order() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    write_tree(&src, &Tree::from([(b"a/1.txt".to_vec(), b"one".to_vec())]));
    pack(
        &src,
        &out,
        &PackOptions::default(),
        &shardpack::compile::NoProgress,
    )
    .unwrap();
    let text = fs::read_to_string(out.join(MANIFEST_FILE)).unwrap();
    assert_eq!(
        option_keys(&text),
        [
            "align",
            "compress",
            "field_compress",
            "follow_symlinks",
            "key",
            "max_samples_per_shard",
            "refs",
            "shard_size",
            "shuffle_seed",
            "skip_errors",
        ],
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs that change during a pack
// ---------------------------------------------------------------------------------------------

/// Appends to one source file when packing starts (after the walk, before the reads).
struct Grow {
    path: PathBuf,
}

impl Progress for Grow {
    fn start(&self, _files: u64, _bytes: u64) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap();
        f.write_all(b" and some more bytes").unwrap();
    }
}

fn growing_tree(root: &Path) -> PathBuf {
    let mut t = Tree::new();
    for i in 0..6u64 {
        t.insert(format!("cat/{i}.txt").into_bytes(), text_bytes(i, 500));
        t.insert(
            format!("cat/{i}.bin").into_bytes(),
            common::random_bytes(i, 300),
        );
    }
    write_tree(root, &t);
    root.join("cat/3.txt")
}

#[test]
fn a_file_that_grows_while_packing_fails_the_pack_naming_it() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    let grown = growing_tree(&src);
    let e = pack(
        &src,
        &out,
        &PackOptions::default(),
        &Grow {
            path: grown.clone(),
        },
    )
    .unwrap_err();
    match &e {
        Error::Input { path, detail } => {
            assert_eq!(path, &grown);
            assert!(detail.contains("changed size"), "{detail}");
        }
        other => panic!("expected Input, got {other:?}"),
    }
    assert!(e.to_string().contains("cat/3.txt"), "{e}");
    assert!(!out.exists(), "a failed pack leaves its output behind");
}

#[test]
fn a_file_that_grows_while_packing_is_skipped_with_skip_errors() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    let grown = growing_tree(&src);
    let opts = PackOptions {
        skip_errors: true,
        ..PackOptions::default()
    };
    let summary = pack(&src, &out, &opts, &Grow { path: grown }).unwrap();
    assert_eq!(summary.files, 11);
    assert_eq!(summary.skipped.len(), 1, "{:?}", summary.skipped);
    assert_eq!(summary.skipped[0].path.as_bytes(), b"cat/3.txt");
    assert!(summary.skipped[0].reason.contains("changed size"));
    let ds = Dataset::open(&out).unwrap();
    let m = ds.manifest();
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(m.skipped[0].path.as_bytes(), b"cat/3.txt");
    assert!(m.skipped[0].reason.contains("changed size"));
    // The sample keeps its other field.
    let s = ds.get_by_key(b"cat/3").unwrap().unwrap();
    assert_eq!(s.field_count(), 1);
    assert!(s.field(b"txt").unwrap().is_none());
    assert_eq!(
        &*s.field(b"bin").unwrap().unwrap().data().unwrap(),
        &common::random_bytes(3, 300)[..]
    );
    assert_eq!(ds.len(), 6);
    assert!(ds.verify().is_ok());
    assert_eq!(shard_files(&out).len(), 1);
}

#[test]
fn a_file_that_grows_during_pack_force_leaves_the_previous_dataset() {
    // The new pack fails late (at the read of that file); the old dataset was never touched.
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    let grown = growing_tree(&src);
    pack(
        &src,
        &out,
        &PackOptions::default(),
        &shardpack::compile::NoProgress,
    )
    .unwrap();
    let before = snapshot(&out);
    let opts = PackOptions {
        force: true,
        ..PackOptions::default()
    };
    let e = pack(&src, &out, &opts, &Grow { path: grown }).unwrap_err();
    assert!(e.to_string().contains("changed size"), "{e}");
    assert_eq!(snapshot(&out), before, "the previous dataset changed");
    assert!(Dataset::open(&out).unwrap().verify().is_ok());
    assert_eq!(
        entries(tmp.path()),
        ["out", "src"],
        "a staging directory is left"
    );
}

/// Asks `pack` to stop once `after` files are committed (0: from the start).
struct CancelAfter {
    after: u64,
    done: std::sync::atomic::AtomicU64,
    polled: std::sync::atomic::AtomicU64,
}

impl CancelAfter {
    fn new(after: u64) -> Self {
        CancelAfter {
            after,
            done: 0.into(),
            polled: 0.into(),
        }
    }
}

impl Progress for CancelAfter {
    fn advance(&self, files: u64, _bytes: u64) {
        self.done
            .fetch_add(files, std::sync::atomic::Ordering::Relaxed);
    }
    fn cancelled(&self) -> bool {
        self.polled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.done.load(std::sync::atomic::Ordering::Relaxed) >= self.after
    }
}

fn many_samples(root: &Path) {
    let mut t = Tree::new();
    for i in 0..400u64 {
        t.insert(
            format!("c{}/{i:04}.bin", i % 3).into_bytes(),
            common::random_bytes(i, 2000),
        );
    }
    write_tree(root, &t);
}

#[test]
fn a_cancelled_pack_stops_and_removes_everything_it_wrote() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    many_samples(&src);
    let opts = PackOptions {
        writer: opts(16 << 10, None, 8),
        threads: 2,
        ..PackOptions::default()
    };
    // At once (during the walk), and part-way (after shards were written).
    for after in [0, 150] {
        let out = tmp.path().join(format!("out-{after}"));
        let p = CancelAfter::new(after);
        let e = pack(&src, &out, &opts, &p).unwrap_err();
        assert!(matches!(e, Error::Cancelled), "{e:?}");
        assert!(!out.exists(), "cancel after {after}: OUT is left");
        let done = p.done.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            done <= after + 1,
            "kept committing after the cancel: {done}"
        );
        assert!(p.polled.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }
    // An existing empty OUT stays, empty.
    let out = tmp.path().join("empty");
    fs::create_dir(&out).unwrap();
    let e = pack(&src, &out, &opts, &CancelAfter::new(100)).unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e:?}");
    assert_eq!(entries(&out), Vec::<String>::new());
    // --force over a dataset: the dataset stays as it was.
    let out = tmp.path().join("ds");
    pack(&src, &out, &opts, &shardpack::compile::NoProgress).unwrap();
    let before = snapshot(&out);
    let force = PackOptions {
        force: true,
        shuffle_seed: Some(5),
        ..opts.clone()
    };
    let e = pack(&src, &out, &force, &CancelAfter::new(200)).unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e:?}");
    assert_eq!(snapshot(&out), before);
    assert_eq!(entries(tmp.path()), ["ds", "empty", "src"]);
}

// ---------------------------------------------------------------------------------------------
// Large records streamed through the writer
// ---------------------------------------------------------------------------------------------

#[test]
fn streamed_encoding_gives_the_same_bytes_as_in_memory_encoding() {
    use shardpack::codec::{new_cctx, train_dictionary, FieldEncoder, STREAM_THRESHOLD};
    let samples: Vec<Vec<u8>> = (0..64).map(|i| text_bytes(i, 2000)).collect();
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    let dict = train_dictionary(&refs, 16 << 10).unwrap();
    let mut cctx = new_cctx();
    let big = STREAM_THRESHOLD as usize + 12345;
    let raw = text_bytes(77, big);
    for (codec, level, dict) in [
        (Codec::Zstd, 3, None),
        (Codec::Zstd, 1, None),
        (Codec::ZstdDict, 3, Some(dict.as_slice())),
    ] {
        let enc = FieldEncoder::new(codec, level, dict).unwrap();
        // Above the threshold, `encode` (a record in memory) and `encode_stream` (a record read
        // from a file in pieces of any size) give the same frame.
        let mut one = Vec::new();
        let c1 = enc.encode(&mut cctx, &raw, &mut one);
        assert_eq!(c1, codec);
        for piece in [4096usize, 1 << 20, 3 << 20] {
            let mut streamed = Vec::new();
            let (c2, n) = enc
                .encode_stream(&mut &raw[..], raw.len() as u64, piece, &mut streamed)
                .unwrap();
            assert_eq!(
                (c2, n),
                (codec, one.len() as u64),
                "{codec:?}:{level} {piece}"
            );
            assert!(
                one == streamed,
                "{codec:?}:{level} piece {piece}: bytes differ"
            );
        }
        // An input shorter or longer than said is an error.
        let raw = text_bytes(1, 5000);
        let mut sink = Vec::new();
        assert!(enc
            .encode_stream(&mut &raw[..], 6000, 1024, &mut sink)
            .is_err());
        assert!(enc
            .encode_stream(&mut &raw[..], 4000, 1024, &mut sink)
            .is_err());
    }
    // Incompressible data stays raw, as with `encode`.
    let enc = FieldEncoder::new(Codec::Zstd, 3, None).unwrap();
    let noise = common::random_bytes(3, 300 << 10);
    let mut sink = Vec::new();
    let (c, n) = enc
        .encode_stream(&mut &noise[..], noise.len() as u64, 65536, &mut sink)
        .unwrap();
    assert_eq!((c, n), (Codec::Raw, noise.len() as u64));
}

/// A tree with records above the streaming threshold: a compressible text, incompressible
/// noise (stored raw even under zstd), a big file in a raw field, and small neighbours.
fn large_tree(root: &Path) -> Tree {
    use shardpack::codec::STREAM_THRESHOLD;
    let big = STREAM_THRESHOLD as usize + 4099;
    let mut t = Tree::new();
    t.insert(b"a/big.txt".to_vec(), text_bytes(5, big));
    t.insert(b"a/big.json".to_vec(), text_bytes(6, 300));
    t.insert(b"a/noise.txt".to_vec(), common::random_bytes(7, big + 1));
    t.insert(b"b/video.mp4".to_vec(), common::random_bytes(8, big + 2));
    for i in 0..20u64 {
        t.insert(format!("b/{i:02}.txt").into_bytes(), text_bytes(i, 3000));
        t.insert(
            format!("b/{i:02}.mp4").into_bytes(),
            common::random_bytes(i, 500),
        );
    }
    write_tree(root, &t);
    t
}

#[test]
fn large_records_are_streamed_deterministically_and_read_back_exactly() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    let want = large_tree(&src);
    let mut first = None;
    for threads in [1, 3] {
        let out = tmp.path().join(format!("out-{threads}"));
        let opts = PackOptions {
            threads,
            field_compress: [(b"txt".to_vec(), shardpack::codec::Policy::Zstd(3))].into(),
            window_bytes: 1 << 20,
            writer: opts(8 << 20, None, 8),
            ..PackOptions::default()
        };
        pack(&src, &out, &opts, &shardpack::compile::NoProgress).unwrap();
        let ds = Dataset::open(&out).unwrap();
        assert!(ds.verify().is_ok());
        common::assert_same_tree(&common::dataset_tree(&ds), &want, "streamed pack");
        let big = ds.get_by_key(b"a/big").unwrap().unwrap();
        let txt = big.field(b"txt").unwrap().unwrap();
        assert_eq!(txt.codec(), Codec::Zstd);
        let noise = ds.get_by_key(b"a/noise").unwrap().unwrap();
        assert_eq!(noise.field(b"txt").unwrap().unwrap().codec(), Codec::Raw);
        // No temporary record file is left.
        assert!(
            !entries(&out).iter().any(|n| n.ends_with(".tmp")),
            "{:?}",
            entries(&out)
        );
        let snap = snapshot(&out);
        match &first {
            None => first = Some(snap),
            Some(f) => assert!(*f == snap, "{threads} threads give other bytes"),
        }
    }
}

#[test]
fn a_large_file_that_changes_size_fails_the_pack_and_leaves_nothing() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    large_tree(&src);
    let out = tmp.path().join("out");
    use shardpack::codec::Policy;
    // Compressed (caught while encoding), encoded raw (the same), stored raw (caught while
    // copied into the shard, which is cut back).
    for (field, policy, path) in [
        ("txt", Policy::Zstd(3), "a/big.txt"),
        ("mp4", Policy::Zstd(3), "b/video.mp4"),
        ("mp4", Policy::None, "b/video.mp4"),
    ] {
        let opts = PackOptions {
            field_compress: [(field.as_bytes().to_vec(), policy)].into(),
            ..PackOptions::default()
        };
        let grown = src.join(path);
        let e = pack(
            &src,
            &out,
            &opts,
            &Grow {
                path: grown.clone(),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("changed size"), "{e}");
        assert!(e.to_string().contains(path), "{e}");
        assert!(!out.exists());
        // Put it back for the next round.
        let f = fs::OpenOptions::new().write(true).open(&grown).unwrap();
        f.set_len(fs::metadata(&grown).unwrap().len() - 20).unwrap();
    }
}

#[test]
fn a_failed_stream_leaves_nothing_of_its_sample_and_the_writer_goes_on() {
    use shardpack::writer::{RecordInput, StreamedRecord};
    let tmp = common::tempdir();
    let dir = tmp.path().join("ds");
    fs::create_dir(&dir).unwrap();
    let mut w = DatasetWriter::create(&dir, two_fields(), WriterOptions::default()).unwrap();
    w.append(b"first", None, &[(0, b"one")]).unwrap();
    let big = common::random_bytes(1, 3 << 20);
    for claimed in [big.len() as u64 + 1, big.len() as u64 - 1] {
        let mut reader = &big[..];
        let mut inputs = [
            RecordInput::Stream(StreamedRecord {
                field: 0,
                codec: Codec::Raw,
                stored_len: claimed,
                raw_len: claimed,
                reader: &mut reader,
                source: None,
            }),
            RecordInput::Bytes(shardpack::writer::EncodedRecord {
                field: 1,
                codec: Codec::Raw,
                stored: b"caption",
                raw_len: 7,
            }),
        ];
        let e = w.append_inputs(b"broken", None, &mut inputs).unwrap_err();
        assert!(e.to_string().contains("changed size"), "{e}");
    }
    let mut reader = &big[..];
    let mut inputs = [RecordInput::Stream(StreamedRecord {
        field: 0,
        codec: Codec::Raw,
        stored_len: big.len() as u64,
        raw_len: big.len() as u64,
        reader: &mut reader,
        source: None,
    })];
    w.append_inputs(b"streamed", Some(3), &mut inputs).unwrap();
    w.append(b"last", None, &[(1, b"two")]).unwrap();
    w.finish(DatasetInfo::default()).unwrap();
    let ds = Dataset::open(&dir).unwrap();
    assert!(ds.verify().is_ok());
    assert_eq!(ds.len(), 3);
    assert!(ds.get_by_key(b"broken").unwrap().is_none());
    let s = ds.get_by_key(b"streamed").unwrap().unwrap();
    assert_eq!(s.label(), Some(3));
    assert!(*s.field(b"jpg").unwrap().unwrap().data().unwrap() == big[..]);
}

//! Parquet as a pack source (feature `parquet`), against the files pyarrow wrote in
//! `fixtures/parquet/` (scripts/make-parquet-fixtures.py): every codec, many row groups, nulls,
//! an HF image column, string and integer labels, metadata into the index table, errors, and
//! records byte-identical to packing the equivalent folder tree.
#![cfg(feature = "parquet")]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::Array;
use shardpack::codec::Policy;
use shardpack::compile::{pack, pack_inputs, LabelMode, NoProgress, PackOptions};
use shardpack::metadata::{sample_metadata, METADATA_FIELD};
use shardpack::source::{SourceFormat, SourceOptions};
use shardpack::Dataset;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/parquet")
        .join(name)
}

/// The generator's payload (scripts/make-parquet-fixtures.py).
fn payload(i: usize, what: &str, n: usize) -> Vec<u8> {
    let base = format!("{what}-{i:03}:");
    base.as_bytes().iter().copied().cycle().take(n).collect()
}

fn opts() -> PackOptions {
    PackOptions {
        source: SourceOptions {
            key_column: Some("key".into()),
            label_column: Some("label".into()),
            ..SourceOptions::default()
        },
        ..PackOptions::default()
    }
}

/// (key, field) -> decoded bytes.
fn records(ds: &Dataset) -> BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>> {
    let mut m = BTreeMap::new();
    for s in ds.iter() {
        let s = s.unwrap();
        for f in s.fields() {
            let f = f.unwrap();
            m.insert(
                (s.key().to_vec(), f.name().to_vec()),
                f.data().unwrap().into_owned(),
            );
        }
    }
    m
}

fn check_basic(out: &Path) {
    let ds = Dataset::open(out).unwrap();
    assert_eq!(ds.len(), 20);
    assert_eq!(ds.class_names(), [&b"bird"[..], b"cat", b"dog"]);
    assert_eq!(ds.manifest().labels, "imagefolder");
    let classes = ["cat", "dog", "bird"];
    for i in 0..20 {
        let key = format!("s{i:03}");
        let s = ds.get_by_key(key.as_bytes()).unwrap().unwrap();
        // Rows keep their order (the source is read as a stream).
        assert_eq!(s.index(), i as u64);
        let mut jpg = b"\xff\xd8".to_vec();
        jpg.extend(payload(i, "jpg", 200 + 37 * i));
        assert_eq!(
            &*s.field(b"jpg").unwrap().unwrap().data().unwrap(),
            &jpg[..]
        );
        let txt = s.field(b"txt").unwrap();
        if i == 4 || i == 11 {
            assert!(txt.is_none(), "a null value is an absent field");
        } else {
            assert_eq!(
                &*txt.unwrap().data().unwrap(),
                &payload(i, "txt", 10 + i)[..]
            );
        }
        let class = s.label().map(|l| ds.class_name(l).unwrap().to_vec());
        if i == 7 {
            assert_eq!(class, None);
        } else {
            assert_eq!(class.unwrap(), classes[(i * 7) % 3].as_bytes());
        }
        let meta = sample_metadata(&s).unwrap().unwrap();
        let names: Vec<&str> = meta.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["caption", "ok", "score", "width"],
            "tags is a list: left out"
        );
        if i == 2 {
            assert!(meta["caption"].is_null());
        } else {
            assert_eq!(meta["caption"], format!("a photo number {i}"));
        }
        assert_eq!(meta["width"], 100 + i as u64);
        assert_eq!(meta["ok"], i % 2 == 0);
        if i == 5 {
            assert_eq!(meta["score"], "NaN");
        } else {
            assert_eq!(meta["score"].as_f64().unwrap(), i as f64 / 4.0);
        }
    }
}

#[test]
fn every_codec_packs_the_same_samples() {
    let t = tempfile::tempdir().unwrap();
    let mut shards = Vec::new();
    for codec in ["snappy", "zstd", "gzip", "lz4", "none"] {
        let out = t.path().join(codec);
        pack(
            &fixture(&format!("basic-{codec}.parquet")),
            &out,
            &opts(),
            &NoProgress,
        )
        .unwrap();
        check_basic(&out);
        shards.push(fs::read(out.join("shard-000000.spk")).unwrap_or_default());
        let m = Dataset::open(&out).unwrap();
        let src = &m.manifest().options["source"];
        assert_eq!(src["format"], "parquet");
        assert_eq!(src["fields"]["jpg"], "binary");
    }
    // The Parquet codec does not change a byte of the dataset's shards.
    assert!(shards.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn output_is_the_same_whatever_the_threads_and_window() {
    let t = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (threads, io, window) in [(1, 1, 1u64 << 20), (3, 7, 5000)] {
        let out = t.path().join(format!("{threads}-{window}"));
        let mut o = opts();
        o.threads = threads;
        o.io_threads = io;
        o.window_bytes = window;
        o.writer.max_samples_per_shard = Some(6);
        pack(&fixture("basic-zstd.parquet"), &out, &o, &NoProgress).unwrap();
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&out)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        outs.push(files);
    }
    assert_eq!(outs[0], outs[1]);
    assert!(outs[0].len() >= 4, "several shards");
}

#[test]
fn several_files_and_a_folder_of_them() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("in");
    fs::create_dir(&dir).unwrap();
    fs::copy(fixture("hf-image.parquet"), dir.join("a.parquet")).unwrap();
    fs::copy(fixture("hf-image.parquet"), dir.join("b.parquet")).unwrap();
    fs::write(dir.join("_SUCCESS"), b"").unwrap();
    let o = PackOptions {
        source: SourceOptions {
            label_column: Some("label".into()),
            ..SourceOptions::default()
        },
        ..PackOptions::default()
    };
    let out = t.path().join("out");
    pack(&dir, &out, &o, &NoProgress).unwrap();
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.len(), 18);
    // Without --key-column, keys are row numbers over all files.
    assert_eq!(ds.get(17).unwrap().key(), b"000017");
    assert_eq!(ds.manifest().labels, "none");
    assert!(ds.manifest().classes.is_empty());
    for i in 0..18usize {
        let s = ds.get(i as u64).unwrap();
        let r = i % 9;
        let mut png = b"\x89PNG".to_vec();
        png.extend(payload(r, "png", 300 + 11 * r));
        let img = s.field(b"image").unwrap().unwrap();
        assert_eq!(&*img.data().unwrap(), &png[..]);
        // Integer labels kept; -1 is no label.
        assert_eq!(s.label(), (r != 3).then_some((r % 4) as u32));
        // No scalar column besides the label: no metadata field.
        assert!(s.field(METADATA_FIELD).unwrap().is_none());
    }
    let list = [dir.join("a.parquet"), dir.join("b.parquet")];
    let out2 = t.path().join("out2");
    pack_inputs(&list, &out2, &o, &NoProgress).unwrap();
    assert_eq!(records(&Dataset::open(&out2).unwrap()), records(&ds));
}

#[test]
fn metadata_survives_into_the_index_table() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    pack(&fixture("basic-snappy.parquet"), &out, &opts(), &NoProgress).unwrap();
    let ds = Dataset::open(&out).unwrap();
    let table = shardpack::table::IndexTable::new(&ds);
    let schema = table.schema();
    for (name, ty) in [
        ("meta.caption", arrow_schema::DataType::Utf8),
        ("meta.width", arrow_schema::DataType::Int64),
        ("meta.score", arrow_schema::DataType::Float64),
        ("meta.ok", arrow_schema::DataType::Boolean),
    ] {
        assert_eq!(
            schema.field_with_name(name).unwrap().data_type(),
            &ty,
            "{name}"
        );
    }
    let mut rows = 0;
    for b in table.batches(7) {
        let b = b.unwrap();
        let idx = b
            .column_by_name("index")
            .unwrap()
            .as_primitive::<arrow_array::types::UInt64Type>();
        let cap = b.column_by_name("meta.caption").unwrap().as_string::<i32>();
        let width = b
            .column_by_name("meta.width")
            .unwrap()
            .as_primitive::<Int64Type>();
        let score = b
            .column_by_name("meta.score")
            .unwrap()
            .as_primitive::<Float64Type>();
        for r in 0..b.num_rows() {
            let i = idx.value(r) as usize;
            assert_eq!(cap.is_null(r), i == 2);
            if i != 2 {
                assert_eq!(cap.value(r), format!("a photo number {i}"));
            }
            assert_eq!(width.value(r), 100 + i as i64);
            if i == 5 {
                assert!(score.value(r).is_nan());
            } else {
                assert_eq!(score.value(r), i as f64 / 4.0);
            }
            rows += 1;
        }
    }
    assert_eq!(rows, 20);
}

/// Packs the Parquet file and a tree holding the same payloads (each record of the Parquet
/// pack as a file `<key>.<field>`, the metadata record included): the records are
/// byte-identical, as stored.
#[test]
fn records_are_byte_identical_to_the_equivalent_tree() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let mut o = opts();
    o.labels = LabelMode::None;
    o.source.label_column = None;
    o.compress = Policy::Zstd(3);
    pack(&fixture("basic-gzip.parquet"), &a, &o, &NoProgress).unwrap();
    let tree = t.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let pa = Dataset::open(&a).unwrap();
    for ((k, f), v) in records(&pa) {
        let name = format!(
            "{}.{}",
            String::from_utf8(k).unwrap(),
            String::from_utf8(f).unwrap()
        );
        fs::write(tree.join(name), v).unwrap();
    }
    let b = t.path().join("b");
    let to = PackOptions {
        labels: LabelMode::None,
        compress: Policy::Zstd(3),
        ..PackOptions::default()
    };
    pack(&tree, &b, &to, &NoProgress).unwrap();
    let pb = Dataset::open(&b).unwrap();
    let stored = |ds: &Dataset| {
        let mut m = BTreeMap::new();
        for s in ds.iter() {
            let s = s.unwrap();
            for f in s.fields() {
                let f = f.unwrap();
                m.insert(
                    (s.key().to_vec(), f.name().to_vec()),
                    (f.codec(), f.stored().to_vec()),
                );
            }
        }
        m
    };
    let (sa, sb) = (stored(&pa), stored(&pb));
    assert_eq!(sa.len(), 20 * 3 - 2);
    assert_eq!(sa, sb);
}

fn fails(input: &Path, o: &PackOptions, mentions: &[&str]) {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let e = pack(input, &out, o, &NoProgress).unwrap_err().to_string();
    for m in mentions {
        assert!(e.contains(m), "{e:?} lacks {m:?}");
    }
    assert!(!out.join("manifest.json").exists());
}

#[test]
fn bad_input_is_an_error_naming_file_row_group_and_row() {
    fails(
        &fixture("truncated.parquet"),
        &opts(),
        &["truncated.parquet", "not a readable Parquet file"],
    );
    fails(
        &fixture("damaged.parquet"),
        &opts(),
        &["damaged.parquet", "row group"],
    );
    fails(
        &fixture("nullkey.parquet"),
        &opts(),
        &["nullkey.parquet", "row group 1, row 5", "null"],
    );
    fails(
        &fixture("dupkey.parquet"),
        &opts(),
        &[
            "dupkey.parquet",
            "row group 3, row 9",
            "row group 0, row 2",
            "s002",
            "unique",
        ],
    );
    let mut o = opts();
    o.source.key_column = Some("nope".into());
    fails(
        &fixture("basic-snappy.parquet"),
        &o,
        &["no column \"nope\"", "jpg"],
    );
    let mut o = opts();
    o.source.field_columns = vec!["caption".into()];
    fails(
        &fixture("basic-snappy.parquet"),
        &o,
        &["\"caption\"", "must be binary"],
    );
    let mut o = opts();
    o.source.label_column = Some("score".into());
    fails(
        &fixture("basic-snappy.parquet"),
        &o,
        &["\"score\"", "not a string or integer"],
    );
    // A Parquet-only option on another source.
    let mut o = PackOptions::default();
    o.source.label_column = Some("label".into());
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("a.txt"), b"x").unwrap();
    fails(t.path(), &o, &["--label-column"]);
}

#[test]
fn field_columns_pick_the_fields() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let mut o = opts();
    o.source.format = SourceFormat::Parquet;
    o.source.field_columns = vec!["jpg".into()];
    pack(&fixture("basic-lz4.parquet"), &out, &o, &NoProgress).unwrap();
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.field_names(), [METADATA_FIELD, b"jpg"]);
}

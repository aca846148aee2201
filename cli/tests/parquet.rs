//! `shardpack pack` from Parquet files pyarrow wrote (`fixtures/parquet/`, see
//! scripts/make-parquet-fixtures.py): auto-detection of a file, a list and a folder, labels from
//! a column, metadata columns into `shardpack index`, and errors that leave nothing behind.

mod util;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type};
use arrow_array::Array;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use util::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/parquet")
        .join(name)
}

#[test]
fn pack_a_parquet_file_then_index_it() {
    let t = tmp();
    let out = t.path().join("ds");
    let r = sp(&[
        &"pack",
        &"-q",
        &"--json",
        &"--key-column",
        &"key",
        &"--label-column",
        &"label",
        &fixture("basic-zstd.parquet"),
        &out,
    ])
    .ok();
    let j = r.json();
    assert_eq!(j["samples"], 20);
    assert_eq!(j["classes"], 3);
    let table = t.path().join("index.parquet");
    sp(&[&"index", &out, &"-o", &table]).ok();
    let b = ParquetRecordBatchReaderBuilder::try_new(File::open(&table).unwrap()).unwrap();
    let batches: Vec<_> = b.build().unwrap().map(|b| b.unwrap()).collect();
    let mut rows = 0;
    let classes = ["cat", "dog", "bird"];
    for b in &batches {
        let key = b.column_by_name("key_utf8").unwrap().as_string::<i32>();
        let class = b.column_by_name("class").unwrap().as_string::<i32>();
        let label = b
            .column_by_name("label")
            .unwrap()
            .as_primitive::<UInt32Type>();
        let width = b
            .column_by_name("meta.width")
            .unwrap()
            .as_primitive::<Int64Type>();
        let caption = b.column_by_name("meta.caption").unwrap().as_string::<i32>();
        let txt = b.column_by_name("txt_size").unwrap();
        for r in 0..b.num_rows() {
            let i: usize = key.value(r)[1..].parse().unwrap();
            assert_eq!(width.value(r), 100 + i as i64);
            assert_eq!(caption.is_null(r), i == 2);
            assert_eq!(txt.is_null(r), i == 4 || i == 11);
            if i == 7 {
                assert!(label.is_null(r) && class.is_null(r));
            } else {
                assert_eq!(class.value(r), classes[(i * 7) % 3]);
            }
            rows += 1;
        }
    }
    assert_eq!(rows, 20);
    // The note names the column left out.
    sp(&[&"pack", &"--force", &fixture("basic-zstd.parquet"), &out])
        .ok()
        .stderr_has(&["tags", "row order"]);
}

#[test]
fn a_folder_and_a_list_of_parquet_files() {
    let t = tmp();
    let dir = t.path().join("in");
    fs::create_dir(&dir).unwrap();
    for n in ["a", "b"] {
        fs::copy(
            fixture("hf-image.parquet"),
            dir.join(format!("{n}.parquet")),
        )
        .unwrap();
    }
    let (o1, o2) = (t.path().join("o1"), t.path().join("o2"));
    sp(&[&"pack", &"-q", &"--label-column", &"label", &dir, &o1]).ok();
    sp(&[
        &"pack",
        &"-q",
        &"--from",
        &"parquet",
        &"--label-column",
        &"label",
        &dir.join("a.parquet"),
        &dir.join("b.parquet"),
        &o2,
    ])
    .ok();
    let ls = |o: &Path| sp(&[&"ls", &"--json", &o]).ok().out();
    assert_eq!(ls(&o1), ls(&o2));
    assert_eq!(ls(&o1).lines().count(), 18);
}

#[test]
fn bad_parquet_leaves_nothing() {
    let t = tmp();
    let out = t.path().join("ds");
    assert_pack_failed(
        sp(&[&"pack", &"-q", &fixture("truncated.parquet"), &out]),
        &out,
        &["truncated.parquet", "not a readable Parquet file"],
    );
    assert_pack_failed(
        sp(&[&"pack", &"-q", &fixture("damaged.parquet"), &out]),
        &out,
        &["damaged.parquet", "row group"],
    );
    assert_pack_failed(
        sp(&[
            &"pack",
            &"-q",
            &"--key-column",
            &"key",
            &fixture("dupkey.parquet"),
            &out,
        ]),
        &out,
        &["dupkey.parquet", "row group 3, row 9", "unique"],
    );
    assert_pack_failed(
        sp(&[
            &"pack",
            &"-q",
            &"--field-column",
            &"width",
            &fixture("basic-none.parquet"),
            &out,
        ]),
        &out,
        &["\"width\"", "must be binary"],
    );
}

//! `shardpack index`: the sample index as Parquet / Arrow IPC (format-spec/index-table.md),
//! read back with the parquet and arrow crates and compared with `ls --json`.

mod util;

use std::fs::File;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use util::*;

/// The file's schema (with its metadata) and batches.
fn batches_parquet(p: &std::path::Path) -> (SchemaRef, Vec<RecordBatch>) {
    let b = ParquetRecordBatchReaderBuilder::try_new(File::open(p).unwrap()).unwrap();
    let schema = b.schema().clone();
    (schema, b.build().unwrap().map(|b| b.unwrap()).collect())
}

fn batches_arrow(p: &std::path::Path) -> (SchemaRef, Vec<RecordBatch>) {
    let r = arrow_ipc::reader::FileReader::try_new(File::open(p).unwrap(), None).unwrap();
    let schema = r.schema();
    (schema, r.map(|b| b.unwrap()).collect())
}

#[test]
fn index_table_agrees_with_ls() {
    let t = tmp();
    let (src, out) = (t.path().join("src"), t.path().join("ds"));
    sample_tree(&src);
    put(&src, b"cat/bad\xffkey.txt", b"non-utf8 key");
    sp(&[&"pack", &"-q", &"--max-samples-per-shard", &"5", &src, &out]).ok();
    let ls: Vec<Value> = sp(&[&"ls", &"--json", &out])
        .ok()
        .out()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for fmt in ["parquet", "arrow"] {
        let table = t.path().join(format!("index.{fmt}"));
        let r = sp(&[&"index", &out, &"-o", &table, &"--format", &fmt, &"--json"]).ok();
        assert_eq!(r.json()["rows"], ls.len() as u64);
        let (schema, batches) = if fmt == "parquet" {
            batches_parquet(&table)
        } else {
            batches_arrow(&table)
        };
        assert_eq!(
            schema.metadata()["shardpack.index_table_version"],
            "1",
            "{fmt}"
        );
        let mut row = 0usize;
        for b in &batches {
            let index = b
                .column_by_name("index")
                .unwrap()
                .as_primitive::<UInt64Type>();
            let key = b.column_by_name("key").unwrap().as_binary::<i32>();
            let key_utf8 = b.column_by_name("key_utf8").unwrap().as_string::<i32>();
            let label = b
                .column_by_name("label")
                .unwrap()
                .as_primitive::<UInt32Type>();
            let class = b.column_by_name("class").unwrap().as_string::<i32>();
            for i in 0..b.num_rows() {
                let want = &ls[row];
                assert_eq!(index.value(i), want["index"].as_u64().unwrap());
                match &want["key"] {
                    Value::String(s) => {
                        assert_eq!(key.value(i), s.as_bytes());
                        assert_eq!(key_utf8.value(i), s);
                    }
                    _ => assert!(key_utf8.is_null(i), "a non-UTF-8 key has a null key_utf8"),
                }
                assert_eq!(label.is_null(i), want["label"].is_null());
                if let Some(c) = want["class"].as_str() {
                    assert_eq!(class.value(i), c);
                }
                // Every field ls lists has its size; the others are null.
                let mut listed = std::collections::BTreeMap::new();
                for f in want["fields"].as_array().unwrap() {
                    listed.insert(f["name"].as_str().unwrap().to_string(), f["size"].as_u64());
                }
                for f in schema.fields() {
                    let Some(stem) = f.name().strip_suffix("_size") else {
                        continue;
                    };
                    let col = b.column_by_name(f.name()).unwrap();
                    let col = col.as_primitive::<UInt64Type>();
                    match listed.get(stem) {
                        Some(size) => assert_eq!(Some(col.value(i)), *size, "{fmt} row {row}"),
                        None => assert!(col.is_null(i), "{fmt} row {row} field {stem}"),
                    }
                }
                row += 1;
            }
        }
        assert_eq!(row, ls.len());
    }
}

#[test]
fn a_damaged_shard_fails_the_export_and_writes_nothing() {
    let t = tmp();
    let (src, out) = (t.path().join("src"), t.path().join("ds"));
    sample_tree(&src);
    sp(&[&"pack", &"-q", &"--max-samples-per-shard", &"4", &src, &out]).ok();
    let shard = out.join("shard-000001.spk");
    let mut b = std::fs::read(&shard).unwrap();
    let n = b.len();
    b[n - 3] ^= 0xff;
    std::fs::write(&shard, b).unwrap();
    let table = t.path().join("index.parquet");
    sp(&[&"index", &out, &"-o", &table])
        .code(1)
        .stderr_has(&["shard-000001.spk"]);
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("index"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

//! The sources seam through the library: WebDataset and MDS inputs give the same bytes whatever
//! the thread counts, and a gzip tar needs the `gzip` feature.

use std::fs;
use std::path::{Path, PathBuf};

use shardpack::compile::{pack, pack_inputs, NoProgress, PackOptions};

fn peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/peers")
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sources_give_the_same_bytes_whatever_the_threads() {
    let t = tempfile::tempdir().unwrap();
    let inputs = [
        vec![peers().join("webdataset/stamps-wds.tar")],
        vec![
            peers().join("webdataset/mpdata.tar"),
            peers().join("webdataset/compressed.tar"),
        ],
        vec![peers().join("mosaicml-streaming/mds-stamps")],
        vec![peers().join("mosaicml-streaming/mds-stamps-zstd")],
    ];
    for (i, input) in inputs.iter().enumerate() {
        let mut outs = Vec::new();
        for (threads, io) in [(1, 1), (3, 7)] {
            let out = t.path().join(format!("{i}-{threads}"));
            let mut opts = PackOptions {
                threads,
                io_threads: io,
                ..PackOptions::default()
            };
            opts.writer.max_samples_per_shard = Some(5);
            pack_inputs(input, &out, &opts, &NoProgress).unwrap();
            outs.push(files(&out));
        }
        assert_eq!(outs[0], outs[1], "{input:?}");
        assert!(outs[0].len() > 2, "several shards");
    }
}

#[cfg(not(feature = "gzip"))]
#[test]
fn a_gzip_tar_without_the_feature_says_so() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o");
    let e = pack(
        &peers().join("webdataset/sample.tgz"),
        &out,
        &PackOptions::default(),
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sample.tgz") && e.contains("gzip"), "{e}");
    assert!(!out.exists());
}

#[cfg(feature = "gzip")]
#[test]
fn a_gzip_tar_packs_in_its_own_order() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o");
    pack(
        &peers().join("webdataset/sample.tgz"),
        &out,
        &PackOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let ds = shardpack::Dataset::open(&out).unwrap();
    let keys: Vec<Vec<u8>> = (0..ds.len())
        .map(|i| ds.get(i).unwrap().key().to_vec())
        .collect();
    // The tar's own member order (10, 11, ...), not shuffled.
    assert_eq!(keys[0], b"10");
    assert_eq!(keys[1], b"11");
}

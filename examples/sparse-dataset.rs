//! Writes a dataset of one sample whose raw field `bin` is N GiB of zeros, as a sparse file
//! (almost nothing is written to disk), for measuring the memory of `verify`, `cat` and
//! `extract` on a very large record:
//!
//! ```sh
//! cargo run --release --example sparse-dataset -- /tmp/big.spk 5
//! /usr/bin/time -v target/release/shardpack verify /tmp/big.spk   # "Maximum resident set size"
//! ```
//!
//! The key is `big`, the dataset has no labels, and every checksum is right.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use shardpack::format::{
    align_up, key_hash, Codec, FieldEntry, Footer, Header, IndexHeader, KeyHashEntry, RecordEntry,
    SampleEntry, Version, NO_LABEL, REGION_ALIGN,
};
use shardpack::manifest::{
    shard_file_name, Features, FieldMeta, Hash64, Manifest, Name, ShardMeta, WriterId, FORMAT_NAME,
    FORMAT_VERSION, MANIFEST_FILE,
};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// xxh3-64 of `n` zero bytes, streamed.
fn zeros_hash(h: &mut Xxh3, n: u64) {
    let z = vec![0u8; 8 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(z.len() as u64) as usize;
        h.update(&z[..k]);
        left -= k as u64;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, gib) = match args.as_slice() {
        [d, g] => (
            PathBuf::from(d),
            g.parse::<u64>().expect("GiB is a whole number"),
        ),
        _ => {
            eprintln!("usage: sparse-dataset OUT_DIR GIB");
            std::process::exit(2);
        }
    };
    const RECORD_UNIT: u64 = 1 << 30;
    let record = gib * RECORD_UNIT;
    fs::create_dir_all(&dir).unwrap();
    let dir = dir.as_path();
    // One sample "big" with one raw field "bin": 1 GiB of zeros at 4096, left as a hole.
    let mut rh = Xxh3::new();
    zeros_hash(&mut rh, record);
    let record_sum = rh.digest();
    let data_len = record;
    let index_offset = align_up(REGION_ALIGN + data_len, REGION_ALIGN).unwrap();
    let key = b"big";
    let ih = IndexHeader {
        sample_count: 1,
        record_count: 1,
        field_count: 1,
        key_bytes_len: key.len() as u64,
        name_bytes_len: 3,
        first_sample: 0,
    };
    let layout = ih.layout().unwrap();
    let mut idx = ih.encode().to_vec();
    FieldEntry {
        name_offset: 0,
        name_len: 3,
        codec: Codec::Raw,
        level: 0,
        dict_offset: 0,
        dict_len: 0,
        dict_checksum: 0,
    }
    .encode_into(&mut idx);
    SampleEntry {
        key_offset: 0,
        key_len: key.len() as u64,
        first_record: 0,
        record_count: 1,
        label: NO_LABEL,
    }
    .encode_into(&mut idx);
    RecordEntry {
        offset: REGION_ALIGN,
        stored_len: record,
        raw_len: record,
        checksum: record_sum,
        field: 0,
        codec: Codec::Raw.as_u32(),
    }
    .encode_into(&mut idx);
    KeyHashEntry {
        hash: key_hash(key),
        sample: 0,
    }
    .encode_into(&mut idx);
    idx.extend_from_slice(key);
    idx.resize(layout.names as usize, 0);
    idx.extend_from_slice(b"bin");
    idx.resize(layout.end as usize, 0);
    let index_checksum = xxh3_64(&idx);
    let footer = Footer {
        data_offset: REGION_ALIGN,
        data_len,
        dict_offset: index_offset,
        dict_len: 0,
        index_offset,
        index_len: idx.len() as u64,
        index_checksum,
        sample_count: 1,
        record_count: 1,
        version: Version::V1,
    }
    .encode();
    let mut head = Header {
        version: Version::V1,
        shard_index: 0,
        record_align: 8,
        data_offset: REGION_ALIGN,
    }
    .encode()
    .to_vec();
    head.resize(REGION_ALIGN as usize, 0);

    let path = dir.join(shard_file_name(0));
    let f = File::create(&path).unwrap();
    f.write_all_at(&head, 0).unwrap();
    f.write_all_at(&idx, index_offset).unwrap();
    f.write_all_at(&footer, index_offset + idx.len() as u64)
        .unwrap();
    drop(f);
    let bytes = index_offset + idx.len() as u64 + footer.len() as u64;
    assert_eq!(fs::metadata(&path).unwrap().len(), bytes);

    let mut fh = Xxh3::new();
    fh.update(&head);
    zeros_hash(&mut fh, index_offset - REGION_ALIGN);
    fh.update(&idx);
    fh.update(&footer);
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        writer: Some(WriterId::current()),
        features: Some(Features::default()),
        samples: 1,
        records: 1,
        shards: vec![ShardMeta {
            file: shard_file_name(0),
            samples: 1,
            records: 1,
            first_sample: 0,
            bytes,
            xxh3: Hash64(fh.digest()),
            index_xxh3: Hash64(index_checksum),
        }],
        fields: vec![FieldMeta {
            name: Name::from("bin"),
            compression: "none".into(),
            level: 0,
            records: 1,
            raw_bytes: record,
            stored_bytes: record,
            dict_bytes: 0,
        }],
        labels: "none".into(),
        classes: vec![],
        options: Default::default(),
        skipped: vec![],
    };
    fs::write(dir.join(MANIFEST_FILE), manifest.to_json()).unwrap();

    println!(
        "{}: one raw record of {gib} GiB, {bytes} bytes",
        dir.display()
    );
}

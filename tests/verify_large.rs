//! `verify` of a very large record in bounded memory (issue 8, item 9): a shard holding one raw
//! record of 1 GiB (a sparse file on disk, so the test writes almost nothing) verifies with a
//! peak RSS far below the record's size. Records from `reader::LARGE_RECORD` up are read in
//! pieces with `pread` and checksummed piece by piece, and the whole-file hash reads in pieces
//! too, so neither touches the record through the memory map nor copies it.
//!
//! Its own test binary, so the process's peak RSS (`getrusage`) is this test's alone.

#![cfg(target_os = "linux")]

use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use shardpack::format::{
    align_up, key_hash, Codec, FieldEntry, Footer, Header, IndexHeader, KeyHashEntry, RecordEntry,
    SampleEntry, Version, NO_LABEL, REGION_ALIGN,
};
use shardpack::manifest::{
    shard_file_name, Features, FieldMeta, Hash64, Manifest, Name, ShardMeta, WriterId, FORMAT_NAME,
    FORMAT_VERSION, MANIFEST_FILE,
};
use shardpack::verify_dir;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const RECORD: u64 = 1 << 30;

fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0);
    u.ru_maxrss as u64 * 1024 // KiB on Linux
}

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

#[test]
fn a_1_gib_raw_record_verifies_in_bounded_memory() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path();

    // One sample "big" with one raw field "bin": 1 GiB of zeros at 4096, left as a hole.
    let mut rh = Xxh3::new();
    zeros_hash(&mut rh, RECORD);
    let record_sum = rh.digest();
    let data_len = RECORD;
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
        stored_len: RECORD,
        raw_len: RECORD,
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
            raw_bytes: RECORD,
            stored_bytes: RECORD,
            dict_bytes: 0,
        }],
        labels: "none".into(),
        classes: vec![],
        options: Default::default(),
        skipped: vec![],
    };
    fs::write(dir.join(MANIFEST_FILE), manifest.to_json()).unwrap();

    let before = peak_rss_bytes();
    let report = verify_dir(dir).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.records, report.bytes), (1, bytes));
    let peak = peak_rss_bytes();
    eprintln!(
        "verify of a 1 GiB raw record: peak RSS {} MiB (before verify: {} MiB)",
        peak >> 20,
        before >> 20
    );
    assert!(
        peak < before.max(64 << 20) + (128 << 20),
        "verify of a 1 GiB record peaked at {} MiB RSS (before: {} MiB)",
        peak >> 20,
        before >> 20
    );

    // The same record with one byte changed in its middle: the pieces find it.
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"\x01", REGION_ALIGN + RECORD / 2).unwrap();
    drop(f);
    let report = verify_dir(dir).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == shardpack::reader::ProblemKind::RecordChecksum),
        "{:?}",
        report.problems
    );
    assert!(peak_rss_bytes() < before.max(64 << 20) + (128 << 20));
}

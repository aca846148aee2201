//! A synthetic dataset of many tiny samples, written directly with the format's encoders
//! (no per-sample writer calls, no files read): `samples` samples of one raw 16-byte field
//! `bin`, keys `%010d` (the global id), no labels, cut into `shards` shards of equal counts.
//! The bytes follow `format-spec/shard.md` exactly (the reader's checks and `verify` accept
//! them); record contents come from SplitMix64 of the sample id, so the output is the same
//! on every run. Used by `benches/open_large.rs` (10^8 samples) and `tests/synthetic_open.rs`
//! (small N).

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

use shardpack::format::{
    align_up, Codec, FieldEntry, Footer, Header, IndexHeader, KeyHashEntry, RecordEntry,
    SampleEntry, Version, NO_LABEL, REGION_ALIGN,
};
use shardpack::manifest::{
    shard_file_name, Features, FieldMeta, Hash64, Manifest, Name, ShardMeta, WriterId,
    MANIFEST_FILE,
};
use shardpack::rng::SplitMix64;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Bytes of each record.
pub const RECORD_LEN: usize = 16;
const KEY_LEN: usize = 10;
const FIELD: &[u8] = b"bin";

fn record(id: u64) -> [u8; RECORD_LEN] {
    let mut r = SplitMix64::new(id);
    let mut b = [0u8; RECORD_LEN];
    b[..8].copy_from_slice(&r.next_u64().to_le_bytes());
    b[8..].copy_from_slice(&r.next_u64().to_le_bytes());
    b
}

fn key(id: u64) -> [u8; KEY_LEN] {
    let mut k = [b'0'; KEY_LEN];
    let mut v = id;
    for i in (0..KEY_LEN).rev() {
        k[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    k
}

/// The bytes of shard `index` holding samples `first..first + n`, and its manifest entry.
fn shard(index: u64, first: u64, n: u64) -> (Vec<u8>, ShardMeta) {
    let data_len = n * RECORD_LEN as u64;
    let index_offset = align_up(REGION_ALIGN + data_len, REGION_ALIGN).expect("fits");
    let ih = IndexHeader {
        sample_count: n,
        record_count: n,
        field_count: 1,
        key_bytes_len: n * KEY_LEN as u64,
        name_bytes_len: FIELD.len() as u64,
        first_sample: first,
    };
    let layout = ih.layout().expect("fits");
    let total = index_offset + layout.end + Footer::SIZE as u64;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(
        &Header {
            version: Version::CURRENT,
            shard_index: index,
            record_align: 8,
            data_offset: REGION_ALIGN,
        }
        .encode(),
    );
    out.resize(REGION_ALIGN as usize, 0);
    let mut records = Vec::with_capacity(n as usize * RecordEntry::SIZE);
    let mut samples = Vec::with_capacity(n as usize * SampleEntry::SIZE);
    let mut hashes = Vec::with_capacity(n as usize);
    let mut keys = Vec::with_capacity(n as usize * KEY_LEN);
    for local in 0..n {
        let id = first + local;
        let rec = record(id);
        let k = key(id);
        RecordEntry {
            offset: out.len() as u64,
            stored_len: RECORD_LEN as u64,
            raw_len: RECORD_LEN as u64,
            checksum: xxh3_64(&rec),
            field: 0,
            codec: Codec::Raw.as_u32(),
        }
        .encode_into(&mut records);
        out.extend_from_slice(&rec);
        SampleEntry {
            key_offset: local * KEY_LEN as u64,
            key_len: KEY_LEN as u64,
            first_record: local,
            record_count: 1,
            label: NO_LABEL,
        }
        .encode_into(&mut samples);
        hashes.push(KeyHashEntry {
            hash: xxh3_64(&k),
            sample: local,
        });
        keys.extend_from_slice(&k);
    }
    hashes.sort_unstable_by_key(|h| (h.hash, h.sample));
    out.resize(index_offset as usize, 0);
    let idx_start = out.len();
    out.extend_from_slice(&ih.encode());
    FieldEntry {
        name_offset: 0,
        name_len: FIELD.len() as u64,
        codec: Codec::Raw,
        level: 0,
        dict_offset: 0,
        dict_len: 0,
        dict_checksum: 0,
    }
    .encode_into(&mut out);
    out.extend_from_slice(&samples);
    out.extend_from_slice(&records);
    for h in &hashes {
        h.encode_into(&mut out);
    }
    out.extend_from_slice(&keys);
    out.resize(idx_start + layout.names as usize, 0);
    out.extend_from_slice(FIELD);
    out.resize(idx_start + layout.end as usize, 0);
    let index_checksum = xxh3_64(&out[idx_start..]);
    let footer = Footer {
        data_offset: REGION_ALIGN,
        data_len,
        dict_offset: index_offset,
        dict_len: 0,
        index_offset,
        index_len: layout.end,
        index_checksum,
        sample_count: n,
        record_count: n,
        version: Version::CURRENT,
    };
    out.extend_from_slice(&footer.encode());
    let mut h = Xxh3::new();
    h.update(&out);
    let meta = ShardMeta {
        file: shard_file_name(index),
        samples: n,
        records: n,
        first_sample: first,
        bytes: out.len() as u64,
        xxh3: Hash64(h.digest()),
        index_xxh3: Hash64(index_checksum),
    };
    (out, meta)
}

/// Writes the dataset into `dir` (created; must not hold a dataset) with `threads` threads.
/// Returns the manifest.
pub fn generate(
    dir: &Path,
    samples: u64,
    shards: u64,
    threads: usize,
) -> std::io::Result<Manifest> {
    assert!(
        shards > 0 && samples >= shards,
        "at least one sample per shard"
    );
    fs::create_dir_all(dir)?;
    let per = samples / shards;
    let span = |s: u64| {
        let first = s * per;
        let n = if s + 1 == shards {
            samples - first
        } else {
            per
        };
        (first, n)
    };
    let next = std::sync::atomic::AtomicU64::new(0);
    let metas = std::sync::Mutex::new(vec![None; shards as usize]);
    std::thread::scope(|scope| -> std::io::Result<()> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> std::io::Result<()> {
                    loop {
                        let s = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if s >= shards {
                            return Ok(());
                        }
                        let (first, n) = span(s);
                        let (bytes, meta) = shard(s, first, n);
                        let mut f = fs::File::create(dir.join(&meta.file))?;
                        f.write_all(&bytes)?;
                        metas.lock().unwrap()[s as usize] = Some(meta);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("generator thread")?;
        }
        Ok(())
    })?;
    let shards: Vec<ShardMeta> = metas
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|m| m.expect("every shard written"))
        .collect();
    let manifest = Manifest {
        format: "shardpack".into(),
        format_version: 2,
        writer: Some(WriterId::current()),
        features: Some(Features::default()),
        samples,
        records: samples,
        shards,
        fields: vec![FieldMeta {
            name: Name(FIELD.to_vec()),
            compression: Codec::Raw.name().into(),
            level: 0,
            records: samples,
            raw_bytes: samples * RECORD_LEN as u64,
            stored_bytes: samples * RECORD_LEN as u64,
            dict_bytes: 0,
        }],
        labels: "none".into(),
        classes: Vec::new(),
        options: serde_json::Map::new(),
        skipped: Vec::new(),
    };
    fs::write(dir.join(MANIFEST_FILE), manifest.to_json())?;
    Ok(manifest)
}

/// The record of global sample `id`, for checking what a reader returns.
pub fn expected_record(id: u64) -> [u8; RECORD_LEN] {
    record(id)
}

/// The key of global sample `id`.
pub fn expected_key(id: u64) -> Vec<u8> {
    key(id).to_vec()
}

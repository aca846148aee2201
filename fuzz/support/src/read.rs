//! Read everything a reader can read from untrusted bytes, asserting what must hold whatever
//! the bytes are. Errors are expected and ignored; a panic (a failed assertion included) is a
//! bug that the fuzzer reports.
//!
//! Invariants:
//! - no entry point panics, hangs or allocates without bound (the last two are libFuzzer's
//!   `-timeout` and `-rss_limit_mb`);
//! - a record handed out as data passed its checksum, and has exactly `raw_len` bytes;
//! - a raw record's data is its stored bytes;
//! - a key found by `find_key` / `get_by_key` is the key asked for;
//! - once `check_structure` accepts a shard, every sample and record entry is readable and
//!   every key is found;
//! - once `Dataset::open` accepts a dataset, each shard agrees with its manifest entry (size,
//!   position, counts, first sample, index checksum, field names), and `Dataset::verify` and
//!   `verify_dir` report the same problems.

use std::cell::RefCell;
use std::path::Path;

use shardpack::codec::{decode_into, new_dctx, DecodeDict};
use shardpack::format::{record_checksum, Codec, ShardBytes};
use shardpack::reader::Shard;
use shardpack::{verify_dir, Dataset};
use zstd::zstd_safe::DCtx;

thread_local! {
    /// One decompression context for every record, as the reader keeps one per thread.
    static DCTX: RefCell<DCtx<'static>> = RefCell::new(new_dctx());
}

/// A key no valid shard of the fuzz datasets holds.
const ABSENT_KEY: &[u8] = b"\xff\xfe no such key";

/// Validates `bytes` as a shard and, if it passes, reads every sample, key and record.
pub fn shard_bytes(bytes: &[u8]) {
    if let Ok(sb) = ShardBytes::new(bytes) {
        read_shard_bytes(&sb);
    }
}

/// Reads every field name, dictionary, sample, key and record of `sb`, decodes every record
/// whose checksum matches, looks every key up, and checks the structure.
pub fn read_shard_bytes<B: AsRef<[u8]>>(sb: &ShardBytes<B>) {
    let field_count = sb.fields().len();
    let dicts: Vec<Option<DecodeDict>> = (0..field_count)
        .map(|i| {
            let _ = sb.field_name(i);
            sb.field_dict(i).and_then(DecodeDict::new)
        })
        .collect();
    DCTX.with(|d| read_entries(sb, &dicts, &mut d.borrow_mut()));
}

fn read_entries<B: AsRef<[u8]>>(
    sb: &ShardBytes<B>,
    dicts: &[Option<DecodeDict>],
    dctx: &mut DCtx<'static>,
) {
    let file_len = sb.bytes().len() as u64;
    let footer = *sb.footer();
    let mut out = Vec::new();
    let n = sb.sample_count();
    for i in 0..n {
        let Ok(e) = sb.sample(i) else { continue };
        let key = sb.key(&e);
        assert_eq!(key.len() as u64, e.key_len);
        if let Ok(Some(j)) = sb.find_key(key) {
            let s = sb
                .sample(j)
                .expect("find_key returned a sample it had read");
            assert_eq!(
                sb.key(&s),
                key,
                "find_key returned a sample with another key"
            );
        }
        for r in e.first_record..e.first_record + u64::from(e.record_count) {
            let Ok(rec) = sb.record(r) else { continue };
            let stored = sb.stored(&rec);
            assert_eq!(stored.len() as u64, rec.stored_len);
            let range = ShardBytes::<B>::stored_range(&rec);
            assert!(range.start >= footer.data_offset);
            assert!(range.end <= footer.data_offset + footer.data_len && range.end <= file_len);
            if record_checksum(stored) != rec.checksum {
                // A reader refuses the record before decoding it.
                continue;
            }
            let codec = Codec::from_u32(rec.codec).expect("record() checked the codec");
            let dict = dicts[rec.field as usize].as_ref();
            if decode_into(dctx, codec, stored, rec.raw_len, dict, &mut out).is_ok() {
                assert_eq!(out.len() as u64, rec.raw_len, "decoded length");
                if codec == Codec::Raw {
                    assert_eq!(out, stored, "raw record data differs from its stored bytes");
                }
            }
        }
    }
    let _ = sb.sample(n);
    let _ = sb.record(sb.index_header().record_count);
    let _ = sb.find_key(ABSENT_KEY);
    if sb.check_structure().is_ok() {
        // The structure check vouches for every entry and for the key-hash table.
        for i in 0..n {
            let e = sb
                .sample(i)
                .expect("check_structure passed, sample readable");
            for r in e.first_record..e.first_record + u64::from(e.record_count) {
                sb.record(r)
                    .expect("check_structure passed, record readable");
            }
            let key = sb.key(&e);
            let found = sb
                .find_key(key)
                .expect("check_structure passed, lookup works");
            assert!(
                found.is_some(),
                "check_structure passed but key {key:?} is not found"
            );
        }
    }
}

/// Opens `path` as a shard file through the reader and reads every sample and field.
pub fn shard_file(path: &Path) {
    let Ok(shard) = Shard::open(path) else { return };
    read_shard_bytes(shard.bytes());
    let mut buf = Vec::new();
    for local in 0..shard.len() {
        let Ok(sample) = shard.sample(local, local) else {
            continue;
        };
        read_sample(&shard, local, &sample, &mut buf);
    }
    assert!(shard.sample(shard.len(), 0).is_err());
}

/// Checks every field of one sample: data handed out passed its checksum and has `raw_len`
/// bytes.
fn read_sample(shard: &Shard, local: u64, sample: &shardpack::Sample<'_>, buf: &mut Vec<u8>) {
    let sb = shard.bytes();
    let entry = sb.sample(local).expect("Shard::sample succeeded");
    assert_eq!(sample.key(), sb.key(&entry));
    assert_eq!(sample.field_count(), entry.record_count as usize);
    for (r, f) in sample.fields().enumerate() {
        let Ok(f) = f else { continue };
        let rec = sb
            .record(entry.first_record + r as u64)
            .expect("the reader handed out this record");
        assert_eq!(f.offset(), rec.offset);
        assert_eq!(f.stored(), sb.stored(&rec));
        assert_eq!(f.raw_len(), rec.raw_len);
        if let Ok(data) = f.data() {
            assert_eq!(
                record_checksum(f.stored()),
                rec.checksum,
                "data handed out for a record whose checksum does not match"
            );
            assert_eq!(data.len() as u64, rec.raw_len);
            if f.codec() == Codec::Raw {
                assert_eq!(&*data, f.stored());
            }
            f.read_into(buf)
                .expect("read_into fails where data() succeeded");
            assert_eq!(&buf[..], &*data);
        } else {
            assert!(
                f.read_into(buf).is_err(),
                "read_into succeeds where data() failed"
            );
        }
        match sample.field(f.name()) {
            Ok(Some(g)) => assert_eq!(g.name(), f.name()),
            Ok(None) => panic!("Sample::field misses a field the sample has"),
            Err(_) => {}
        }
    }
}

/// Opens the dataset in `dir`, reads every sample through every access path, and verifies it
/// both ways (`Dataset::verify` and `verify_dir`).
pub fn dataset(dir: &Path) {
    let Ok(ds) = Dataset::open(dir) else {
        let _ = verify_dir(dir);
        return;
    };
    // What open vouches for (format-spec/manifest.md section 4, checks 8 to 13).
    let m = ds.manifest();
    assert_eq!(ds.shards().len(), m.shards.len());
    for (i, (shard, meta)) in ds.shards().iter().zip(&m.shards).enumerate() {
        let b = shard.bytes();
        assert_eq!(b.bytes().len() as u64, meta.bytes, "shard {i}: file size");
        assert_eq!(b.header().shard_index, i as u64, "shard {i}: shard index");
        assert_eq!(
            b.index_header().first_sample,
            meta.first_sample,
            "shard {i}"
        );
        assert_eq!(b.sample_count(), meta.samples, "shard {i}: samples");
        assert_eq!(b.footer().record_count, meta.records, "shard {i}: records");
        assert_eq!(
            b.footer().index_checksum,
            meta.index_xxh3.0,
            "shard {i}: index checksum"
        );
        assert_eq!(b.fields().len(), m.fields.len(), "shard {i}: field count");
        for (f, meta_f) in m.fields.iter().enumerate() {
            assert_eq!(
                b.field_name(f),
                meta_f.name.as_bytes(),
                "shard {i}: field {f} name"
            );
        }
    }
    let mut buf = Vec::new();
    let len = ds.len();
    for (i, sample) in ds.iter().enumerate() {
        let Ok(sample) = sample else { continue };
        assert_eq!(sample.index(), i as u64);
        let (s, local) = ds.locate(i as u64).expect("iterated sample is locatable");
        let shard = ds.shard(s).expect("the shard of an iterated sample opens");
        assert!(std::ptr::eq(sample.shard(), shard));
        read_sample(shard, local, &sample, &mut buf);
        if let Ok(again) = ds.get(i as u64) {
            assert_eq!(again.key(), sample.key());
        }
        if let Ok(Some(found)) = ds.get_by_key(sample.key()) {
            assert_eq!(found.key(), sample.key());
        }
        if let Some(l) = sample.label() {
            let _ = ds.manifest().class_name(l);
        }
    }
    assert!(ds.get(len).is_err());
    assert!(ds.locate(len).is_err());
    let _ = ds.get_by_key(ABSENT_KEY);
    let _ = ds.field_names();
    let report = ds.verify();
    let again = verify_dir(dir).expect("Dataset::open read this manifest");
    assert_eq!(
        report.problems, again.problems,
        "verify and verify_dir disagree"
    );
}

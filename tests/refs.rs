//! zstd-ref records (`format-spec/shard.md` 6.1): a pack stores identical files and variants
//! of earlier ones against them, every reader gives back the files' bytes, the output does not
//! depend on the thread count, `--refs off` writes what shardpack wrote before, and a record
//! whose base breaks a rule is an error (never a panic or wrong data).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{dataset_tree, reseal, shard_files, snapshot, text_bytes, write_tree, Tree};
use shardpack::compile::{pack, PackOptions, Progress};
use shardpack::format::{Codec, ShardBytes, ZSTD_REF_FEATURE};
use shardpack::loader::{DirectIo, Loader, LoaderOptions};
use shardpack::writer::WriterOptions;
use shardpack::Dataset;

struct Quiet;
impl Progress for Quiet {}

/// Two classes of text files: originals, exact copies, variants with a piece cut out
/// (`x.opt.txt` of `x.txt`), and unrelated files; a JSON sidecar for some.
fn tree() -> Tree {
    let mut t = Tree::new();
    for c in ["a", "b"] {
        for i in 0..30u64 {
            let seed = i + if c == "a" { 0 } else { 1000 };
            let orig = text_bytes(seed, 3000 + (i as usize % 7) * 500);
            let mut variant = orig.clone();
            variant.drain(500..900);
            t.insert(format!("{c}/f{i:02}.txt").into_bytes(), orig.clone());
            t.insert(format!("{c}/f{i:02}-opt.txt").into_bytes(), variant);
            if i % 3 == 0 {
                t.insert(format!("{c}/copy{i:02}.txt").into_bytes(), orig);
            }
            t.insert(
                format!("{c}/other{i:02}.txt").into_bytes(),
                text_bytes(seed + 50_000, 2000),
            );
            t.insert(
                format!("{c}/f{i:02}.json").into_bytes(),
                format!("{{\"id\": {i}, \"class\": \"{c}\"}}").into_bytes(),
            );
        }
    }
    t
}

fn opts(threads: usize, refs: bool) -> PackOptions {
    PackOptions {
        writer: WriterOptions {
            shard_size: 400 << 10,
            ..WriterOptions::default()
        },
        threads,
        refs,
        // Windows smaller than a shard, so bases are kept across windows too.
        window_bytes: 24 << 10,
        ..PackOptions::default()
    }
}

fn pack_tree(src: &Path, out: &Path, o: &PackOptions) -> Arc<Dataset> {
    pack(src, out, o, &Quiet).unwrap();
    Arc::new(Dataset::open(out).unwrap())
}

/// [`tree`] written to `src` and packed (refs on, 2 threads) to `out` in a new temporary
/// directory.
fn packed() -> (tempfile::TempDir, PathBuf, PathBuf, Arc<Dataset>) {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    write_tree(&src, &tree());
    let out = tmp.path().join("out");
    let ds = pack_tree(&src, &out, &opts(2, true));
    (tmp, src, out, ds)
}

/// Records per codec over the whole dataset.
fn codecs(ds: &Dataset) -> BTreeMap<&'static str, u64> {
    let mut n = BTreeMap::new();
    for s in ds.iter() {
        for f in s.unwrap().fields() {
            *n.entry(f.unwrap().codec().name()).or_default() += 1;
        }
    }
    n
}

#[test]
fn similar_and_identical_files_are_stored_as_zstd_ref_and_read_back_exactly() {
    let (tmp, src, _out, ds) = packed();
    assert!(ds.shards().len() >= 2, "the test wants several shards");
    let n = codecs(&ds);
    let refs = n.get("zstd-ref").copied().unwrap_or(0);
    // 60 variants and 20 copies have their original in the dataset; the shuffle puts some
    // of the pairs in different shards.
    assert!(refs >= 20, "only {refs} zstd-ref records: {n:?}");
    let features = ds.manifest().features.clone().unwrap();
    assert_eq!(features.required, vec![ZSTD_REF_FEATURE.to_string()]);

    // The reader, verify and the Loader all give back the files.
    common::assert_same_tree(&dataset_tree(&ds), &snapshot(&src), "read back");
    let report = ds.verify();
    assert!(report.is_ok(), "{:?}", report.problems);
    let names: Vec<Vec<u8>> = ds.field_names().iter().map(|n| n.to_vec()).collect();
    let expected = snapshot(&src);
    let lo = LoaderOptions {
        batch_size: 8,
        chunk_bytes: 8 << 10,
        io_threads: 2,
        direct_io: DirectIo::Off,
        ..LoaderOptions::default()
    };
    let mut seen = 0;
    for s in Loader::new(ds.clone(), lo).unwrap() {
        let s = s.unwrap();
        for f in &s.fields {
            let path = common::record_path(&s.key, &names[f.field as usize]);
            assert_eq!(
                s.field(f.field).unwrap(),
                expected[&path].as_slice(),
                "{}",
                String::from_utf8_lossy(&path)
            );
            seen += 1;
        }
    }
    assert_eq!(seen, expected.len());

    // The same bytes with one thread as with three.
    let out3 = tmp.path().join("out3");
    pack_tree(&src, &out3, &opts(3, true));
    let out1 = tmp.path().join("out1");
    pack_tree(&src, &out1, &opts(1, true));
    for (a, b) in shard_files(&out1).iter().zip(shard_files(&out3)) {
        assert!(
            fs::read(a).unwrap() == fs::read(&b).unwrap(),
            "{} differs",
            b.display()
        );
    }
    assert_eq!(
        fs::read(out1.join("manifest.json")).unwrap(),
        fs::read(out3.join("manifest.json")).unwrap()
    );
}

#[test]
fn refs_off_writes_no_zstd_ref_record_and_requires_no_feature() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    write_tree(&src, &tree());
    let on = pack_tree(&src, &tmp.path().join("on"), &opts(2, true));
    let off = pack_tree(&src, &tmp.path().join("off"), &opts(2, false));
    assert!(!codecs(&off).contains_key("zstd-ref"));
    assert!(off.manifest().features.clone().unwrap().required.is_empty());
    assert!(!off.manifest().options.contains_key("refs"));
    assert_eq!(on.manifest().options["refs"], serde_json::json!(true));
    let stored = |ds: &Dataset| {
        ds.manifest()
            .fields
            .iter()
            .map(|f| f.stored_bytes)
            .sum::<u64>()
    };
    assert!(stored(&on) < stored(&off), "refs made nothing smaller");
    common::assert_same_tree(&dataset_tree(&off), &snapshot(&src), "refs off");
}

/// The first zstd-ref record of the dataset: shard number and record index.
fn first_ref(ds: &Dataset) -> (usize, u64) {
    for (i, sh) in ds.shards().iter().enumerate() {
        let b: &ShardBytes<_> = sh.bytes();
        for r in 0..b.index_header().record_count {
            let e = b.record(r).unwrap();
            if e.codec == Codec::ZstdRef.as_u32() {
                return (i, r);
            }
        }
    }
    panic!("no zstd-ref record");
}

#[test]
fn a_base_that_breaks_a_rule_is_an_error_naming_it() {
    let (_tmp, _src, out, ds) = packed();
    let (shard, r) = first_ref(&ds);
    let path = shard_files(&out)[shard].clone();
    let full = fs::read(&path).unwrap();
    let manifest = fs::read(out.join("manifest.json")).unwrap();
    let b = ds.shards()[shard].bytes();
    let e = b.record(r).unwrap();
    let entry_at = {
        // The record entry's absolute offset: the index's record table, entry r.
        let f = shardpack::format::Footer::decode(&full).unwrap();
        let idx = &full[f.index_offset as usize..];
        let samples = u64::from_le_bytes(idx[0..8].try_into().unwrap());
        let fields = u64::from_le_bytes(idx[16..24].try_into().unwrap());
        f.index_offset + 64 + 48 * fields + 32 * samples + 40 * r
    };
    let other_field = (0..b.index_header().record_count)
        .find(|&i| i < r && b.record(i).unwrap().field != e.field)
        .unwrap();
    drop(ds);
    // The base index rewritten (with the record's checksum fixed, and the index resealed,
    // so that only the rule is left to catch it): itself, a later record, another field's.
    for (bad, want) in [
        (r, "not an earlier record"),
        (r + 1, "not an earlier record"),
        (other_field, "not one of its own field"),
        (u64::MAX, "its base, record"),
    ] {
        let mut bytes = full.clone();
        let at = e.offset as usize;
        bytes[at..at + 8].copy_from_slice(&bad.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[at..at + e.stored_len as usize]);
        let ck = entry_at as usize + 24;
        bytes[ck..ck + 8].copy_from_slice(&sum.to_le_bytes());
        reseal(&out, shard, bytes);
        let ds = Dataset::open(&out).unwrap();
        let errs: Vec<String> = ds
            .iter()
            .flat_map(|s| {
                s.unwrap()
                    .fields()
                    .map(|f| f.unwrap().data().err())
                    .collect::<Vec<_>>()
            })
            .flatten()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 1, "base {bad}: {errs:?}");
        assert!(errs[0].contains(want), "base {bad}: {}", errs[0]);
        let report = ds.verify();
        assert!(
            report.problems.iter().any(|p| p.kind.name() == "ref-base"),
            "base {bad}: {:?}",
            report.problems
        );
    }
    fs::write(&path, &full).unwrap();
    fs::write(out.join("manifest.json"), &manifest).unwrap();
    assert!(Dataset::open(&out).unwrap().verify().is_ok());
}

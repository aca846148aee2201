//! Round-trip property tests: random trees through `compile::pack`, random samples through
//! `DatasetWriter`, read back through `Dataset`; and pack determinism across thread counts,
//! read concurrency and window sizes.
//!
//! Failures persist to `tests/roundtrip.proptest-regressions` (proptest's default); commit that
//! file when it appears so the failing case is replayed first forever after.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::select;

use common::{
    assert_same_tree, content, dataset_tree, record_path, snapshot, text_bytes, write_tree, Tree,
};
use shardpack::codec::{train_dictionary, Policy};
use shardpack::compile::{pack, KeyMode, LabelMode, NoProgress, PackOptions};
use shardpack::format::Codec;
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

// ---------------------------------------------------------------------------------------------
// Random trees through pack
// ---------------------------------------------------------------------------------------------

/// Folder names. None of them is also a file name below, so a path is never both.
const DIRS: &[&[u8]] = &[b"cat", b"dog", b"v1.2", b"\xffbin"];

/// File names covering every split rule: shared keys with several extensions, multiple dots,
/// no dot, dotfiles, trailing dots, non-UTF-8.
const NAMES: &[&[u8]] = &[
    b"0001.jpg",
    b"0001.txt",
    b"0001.json",
    b"0001",
    b"0001.seg.json",
    b"0002.jpg",
    b"0002.txt",
    b"a.tar.gz",
    b"a.b.c",
    b"a",
    b"a.",
    b"a..",
    b"a.b.",
    b"README",
    b".env",
    b".hidden.txt",
    b"..x",
    b"x.\xfe",
    b"\xfe.jpg",
];

#[derive(Debug, Clone)]
struct FileGen {
    dir: Vec<&'static [u8]>,
    name: &'static [u8],
    size: usize,
    text: bool,
    seed: u64,
}

fn file_gen() -> impl Strategy<Value = FileGen> {
    let size = prop_oneof![
        3 => Just(0usize),
        10 => 1usize..300,
        6 => 300usize..8192,
        1 => 8192usize..300 * 1024,
    ];
    (
        prop::collection::vec(select(DIRS), 0..=3),
        select(NAMES),
        size,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(dir, name, size, text, seed)| FileGen {
            dir,
            name,
            size,
            text,
            seed,
        })
}

fn tree_gen() -> impl Strategy<Value = Tree> {
    // Sometimes a run of similar JSON files in one folder, enough to train a dictionary.
    let bulk = prop::option::of((select(DIRS), 16usize..40, any::<u64>()));
    (prop::collection::vec(file_gen(), 1..40), bulk).prop_map(|(files, bulk)| {
        let mut t = Tree::new();
        if let Some((dir, n, seed)) = bulk {
            for i in 0..n {
                let mut p = dir.to_vec();
                p.extend_from_slice(format!("/s{i:03}.json").as_bytes());
                let len = 100 + (seed.wrapping_add(i as u64) % 500) as usize;
                t.insert(p, text_bytes(seed.wrapping_add(i as u64), len));
            }
        }
        for f in files {
            let mut p = Vec::new();
            for d in &f.dir {
                p.extend_from_slice(d);
                p.push(b'/');
            }
            p.extend_from_slice(f.name);
            t.insert(p, content(f.seed, f.size, f.text));
        }
        t
    })
}

fn policy_gen() -> impl Strategy<Value = Policy> {
    select(vec![
        Policy::Auto,
        Policy::None,
        Policy::Zstd(1),
        Policy::ZstdDict(3),
    ])
}

prop_compose! {
    fn pack_options_gen()(
        compress in policy_gen(),
        json_override in prop::option::of(policy_gen()),
        record_align in select(vec![8u64, 64, 4096]),
        shard_size in select(vec![9_000u64, 32 << 10, 256 << 10, 1 << 30]),
        max_samples in prop::option::of(1u64..6),
        shuffle_seed in prop::option::of(any::<u64>()),
        key in select(vec![KeyMode::FirstDot, KeyMode::LastDot]),
        labels in select(vec![LabelMode::ImageFolder, LabelMode::None]),
        threads in 1usize..=3,
        io_threads in 1usize..=4,
        window_bytes in select(vec![1u64, 5_000, 1 << 20, 32 << 20]),
    ) -> PackOptions {
        let mut field_compress = BTreeMap::new();
        if let Some(p) = json_override {
            field_compress.insert(b"json".to_vec(), p);
        }
        PackOptions {
            writer: WriterOptions {
                shard_size,
                max_samples_per_shard: max_samples,
                record_align,
            },
            compress,
            field_compress,
            shuffle_seed,
            threads,
            io_threads,
            labels,
            key,
            window_bytes,
            ..PackOptions::default()
        }
    }
}

/// The classes ImageFolder labelling must find: first components of paths inside a folder.
fn expected_classes(tree: &Tree) -> Vec<Vec<u8>> {
    let set: BTreeSet<Vec<u8>> = tree
        .keys()
        .filter_map(|p| p.iter().position(|&c| c == b'/').map(|i| p[..i].to_vec()))
        .collect();
    set.into_iter().collect()
}

fn check_pack_round_trip(tree: &Tree, opts: &PackOptions) -> Result<(), TestCaseError> {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    write_tree(&src, tree);
    let summary = pack(&src, &out, opts, &NoProgress)
        .map_err(|e| TestCaseError::fail(format!("pack failed: {e}\noptions: {opts:?}")))?;
    let ds = Dataset::open(&out).map_err(|e| TestCaseError::fail(format!("open: {e}")))?;

    // Every file comes back byte for byte, and nothing else.
    assert_same_tree(&dataset_tree(&ds), tree, "pack round trip");
    prop_assert_eq!(summary.files, tree.len() as u64);
    prop_assert_eq!(summary.samples, ds.len());

    // Lookup by key finds every sample, at its own index.
    for s in ds.iter() {
        let s = s.unwrap();
        let found = ds.get_by_key(s.key()).unwrap();
        prop_assert!(found.is_some(), "key {:?} not found", s.key());
        prop_assert_eq!(found.unwrap().index(), s.index());
    }
    prop_assert!(ds.get_by_key(b"no such key/\x00").unwrap().is_none());

    // Records are aligned; shards respect the sample cap.
    let align = opts.writer.record_align;
    for s in ds.iter() {
        for f in s.unwrap().fields() {
            let f = f.unwrap();
            prop_assert_eq!(
                f.offset() % align,
                0,
                "record at {} not aligned",
                f.offset()
            );
        }
    }
    if let Some(max) = opts.writer.max_samples_per_shard {
        for sh in &ds.manifest().shards {
            prop_assert!(
                sh.samples <= max,
                "shard has {} samples, cap {max}",
                sh.samples
            );
        }
    }

    // Labels: the first folder level, classes sorted; none at the top level or without labels.
    let classes = expected_classes(tree);
    match opts.labels {
        LabelMode::ImageFolder => {
            let got: Vec<Vec<u8>> = ds.manifest().classes.iter().map(|c| c.0.clone()).collect();
            prop_assert_eq!(&got, &classes);
            prop_assert_eq!(ds.manifest().labels.as_str(), "imagefolder");
        }
        LabelMode::None => {
            prop_assert!(ds.manifest().classes.is_empty());
            prop_assert_eq!(ds.manifest().labels.as_str(), "none");
        }
    }
    for s in ds.iter() {
        let s = s.unwrap();
        let key = s.key();
        let expected = match (opts.labels, key.iter().position(|&c| c == b'/')) {
            (LabelMode::ImageFolder, Some(i)) => {
                Some(classes.binary_search(&key[..i].to_vec()).unwrap() as u32)
            }
            _ => None,
        };
        prop_assert_eq!(
            s.label(),
            expected,
            "label of {:?}",
            String::from_utf8_lossy(key)
        );
    }

    let report = ds.verify();
    prop_assert!(report.is_ok(), "verify: {:?}", report.problems);
    prop_assert_eq!(report.samples, ds.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })]

    #[test]
    fn pack_round_trips_random_trees(tree in tree_gen(), opts in pack_options_gen()) {
        check_pack_round_trip(&tree, &opts)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Random samples through DatasetWriter
// ---------------------------------------------------------------------------------------------

const FIELD_NAMES: &[&[u8]] = &[b"", b"cls", b"jpg", b"json", b"txt", b"\xff\xfe"];

/// A dictionary trained once on text like [`text_bytes`] produces.
fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let samples: Vec<Vec<u8>> = (0..200).map(|i| text_bytes(i, 300 + i as usize)).collect();
        let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
        train_dictionary(&refs, 4096).expect("dictionary trains")
    })
}

fn spec(name: &[u8], codec: Codec, level: i32) -> FieldSpec {
    match codec {
        Codec::Raw => FieldSpec::raw(name),
        Codec::Zstd => FieldSpec {
            level,
            ..FieldSpec::zstd(name)
        },
        _ => FieldSpec {
            name: name.to_vec(),
            codec: Codec::ZstdDict,
            level,
            dict: Some(dictionary().to_vec()),
        },
    }
}

#[derive(Debug, Clone)]
struct SampleGen {
    key: Vec<u8>,
    label: Option<u32>,
    /// (present, size, text, seed) per field.
    fields: Vec<(bool, usize, bool, u64)>,
}

#[derive(Debug, Clone)]
struct WriterCase {
    fields: Vec<(&'static [u8], Codec, i32)>,
    samples: Vec<SampleGen>,
    opts: WriterOptions,
}

fn writer_case(max_size: usize, max_samples: usize) -> impl Strategy<Value = WriterCase> {
    let fields = prop::collection::btree_set(0..FIELD_NAMES.len(), 1..=4).prop_flat_map(|set| {
        let n = set.len();
        (
            Just(set),
            prop::collection::vec(
                (
                    select(vec![Codec::Raw, Codec::Zstd, Codec::ZstdDict]),
                    select(vec![1, 3, 9]),
                ),
                n,
            ),
        )
    });
    let opts = (
        select(vec![8u64, 16, 64, 4096, 65536]),
        select(vec![4_096u64, 20_000, 256 << 10, 1 << 30]),
        prop::option::of(1u64..5),
    )
        .prop_map(|(record_align, shard_size, max)| WriterOptions {
            shard_size,
            max_samples_per_shard: max,
            record_align,
        });
    let size = prop_oneof![
        2 => Just(0usize),
        8 => 0usize..2048,
        2 => 0usize..=max_size,
    ];
    let field = (any::<bool>(), size, any::<bool>(), any::<u64>());
    let sample = (
        prop::collection::vec(any::<u8>(), 0..12),
        prop::option::of(prop_oneof![0u32..10, Just(u32::MAX - 1)]),
        prop::collection::vec(field, FIELD_NAMES.len()),
    )
        .prop_map(|(key, label, fields)| SampleGen { key, label, fields });
    (fields, prop::collection::vec(sample, 0..max_samples), opts).prop_map(
        |((set, codecs), samples, opts)| {
            let fields = set
                .into_iter()
                .zip(codecs)
                .map(|(i, (c, l))| (FIELD_NAMES[i], c, l))
                .collect();
            // Keys must be unique: keep the first of each.
            let mut seen = BTreeSet::new();
            let samples = samples
                .into_iter()
                .filter(|s| seen.insert(s.key.clone()))
                .collect();
            WriterCase {
                fields,
                samples,
                opts,
            }
        },
    )
}

/// What one sample should read back as: key, label, (field index, bytes) sorted by field.
type Expected = (Vec<u8>, Option<u32>, Vec<(u32, Vec<u8>)>);

fn check_writer_round_trip(case: &WriterCase) -> Result<(), TestCaseError> {
    let tmp = common::tempdir();
    let dir = tmp.path();
    let specs: Vec<FieldSpec> = case.fields.iter().map(|&(n, c, l)| spec(n, c, l)).collect();
    let nf = specs.len();
    let mut w = DatasetWriter::create(dir, specs.clone(), case.opts.clone()).unwrap();
    let mut expected: Vec<Expected> = Vec::new();
    for s in &case.samples {
        let mut recs: Vec<(u32, Vec<u8>)> = s.fields[..nf]
            .iter()
            .enumerate()
            .filter(|(_, f)| f.0)
            .map(|(i, &(_, size, text, seed))| (i as u32, content(seed, size, text)))
            .collect();
        if recs.is_empty() {
            let (_, size, text, seed) = s.fields[0];
            recs.push((0, content(seed, size, text)));
        }
        let refs: Vec<(u32, &[u8])> = recs.iter().map(|(f, d)| (*f, d.as_slice())).collect();
        w.append(&s.key, s.label, &refs)
            .map_err(|e| TestCaseError::fail(format!("append: {e}")))?;
        expected.push((s.key.clone(), s.label, recs));
    }
    let manifest = w
        .finish(DatasetInfo::default())
        .map_err(|e| TestCaseError::fail(format!("finish: {e}")))?;
    prop_assert_eq!(manifest.samples, expected.len() as u64);

    let ds = Dataset::open(dir).map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
    prop_assert_eq!(ds.len(), expected.len() as u64);
    let check = |s: shardpack::Sample<'_>, e: &Expected| -> Result<(), TestCaseError> {
        prop_assert_eq!(s.key(), e.0.as_slice());
        prop_assert_eq!(s.label(), e.1);
        prop_assert_eq!(s.field_count(), e.2.len());
        for (f, (fi, data)) in s.fields().zip(&e.2) {
            let f = f.unwrap();
            prop_assert_eq!(f.field_index(), *fi);
            prop_assert_eq!(f.name(), specs[*fi as usize].name.as_slice());
            prop_assert!(
                f.codec() == Codec::Raw || f.codec() == specs[*fi as usize].codec,
                "record codec {:?} for a {:?} field",
                f.codec(),
                specs[*fi as usize].codec
            );
            prop_assert_eq!(f.offset() % case.opts.record_align, 0);
            prop_assert_eq!(f.raw_len(), data.len() as u64);
            let got = f.data().unwrap();
            prop_assert!(got.as_ref() == data.as_slice(), "field {} differs", fi);
        }
        Ok(())
    };
    for (i, e) in expected.iter().enumerate() {
        check(ds.get(i as u64).unwrap(), e)?;
        let by_key = ds.get_by_key(&e.0).unwrap();
        prop_assert!(by_key.is_some(), "key {:?} not found", e.0);
        let by_key = by_key.unwrap();
        prop_assert_eq!(by_key.index(), i as u64);
        check(by_key, e)?;
    }
    let report = ds.verify();
    prop_assert!(report.is_ok(), "verify: {:?}", report.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })]

    /// Many small cases: sizes up to 64 KiB.
    #[test]
    fn writer_round_trips_small_records(case in writer_case(64 << 10, 40)) {
        check_writer_round_trip(&case)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4,
        max_shrink_iters: 32,
        ..ProptestConfig::default()
    })]

    /// A few cases with records of several MiB.
    #[test]
    fn writer_round_trips_large_records(case in writer_case(5 << 20, 6)) {
        check_writer_round_trip(&case)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------

/// A fixed tree: three classes of 30 samples (a random "jpg", a text caption, a JSON-like
/// record), plus odd names, several MiB-free so it packs in well under a second.
fn determinism_tree() -> Tree {
    let mut t = Tree::new();
    for (c, class) in ["bird", "cat", "dog"].iter().enumerate() {
        for i in 0..30u64 {
            let seed = (c as u64) << 32 | i;
            let stem = format!("{class}/{i:05}");
            t.insert(
                format!("{stem}.jpg").into_bytes(),
                content(seed, 500 + (i as usize * 397) % 6000, false),
            );
            t.insert(
                format!("{stem}.txt").into_bytes(),
                content(seed, (i as usize * 53) % 700, true),
            );
            t.insert(
                format!("{stem}.json").into_bytes(),
                format!(
                    "{{\"class\": \"{class}\", \"id\": {i}, \"caption\": \"{}\"}}\n",
                    String::from_utf8(text_bytes(seed, 40 + (i as usize % 7) * 10)).unwrap()
                )
                .into_bytes(),
            );
        }
    }
    t.insert(b"README".to_vec(), text_bytes(1, 900));
    t.insert(b"cat/.hidden".to_vec(), Vec::new());
    t.insert(b"dog/a.b.".to_vec(), text_bytes(2, 100));
    t
}

fn pack_snapshot(src: &Path, opts: &PackOptions) -> Tree {
    let tmp = common::tempdir();
    let out = tmp.path().join("out");
    pack(src, &out, opts, &NoProgress).unwrap();
    snapshot(&out)
}

#[test]
fn pack_output_does_not_depend_on_threads_io_or_windows() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    write_tree(&src, &determinism_tree());

    let bases = [
        PackOptions {
            writer: WriterOptions {
                shard_size: 64 << 10,
                max_samples_per_shard: Some(25),
                record_align: 64,
            },
            field_compress: [(b"json".to_vec(), Policy::ZstdDict(3))].into(),
            ..PackOptions::default()
        },
        PackOptions {
            compress: Policy::Zstd(1),
            shuffle_seed: None,
            key: KeyMode::LastDot,
            labels: LabelMode::None,
            ..PackOptions::default()
        },
    ];
    for base in bases {
        let variant = |threads, io_threads, window_bytes| PackOptions {
            threads,
            io_threads,
            window_bytes,
            ..base.clone()
        };
        let reference = pack_snapshot(&src, &variant(1, 1, 1));
        assert!(reference.len() >= 2, "expected shards and a manifest");
        let manifest = String::from_utf8(reference[&b"manifest.json".to_vec()].clone()).unwrap();
        if base.field_compress.contains_key(b"json".as_slice()) {
            assert!(
                manifest.contains("\"zstd-dict\""),
                "the json field should get a dictionary: {manifest}"
            );
        }
        for (t, io, win) in [(4, 8, 1 << 30), (2, 3, 10_000), (4, 1, 1), (1, 8, 64 << 10)] {
            let other = pack_snapshot(&src, &variant(t, io, win));
            assert_same_tree(
                &other,
                &reference,
                &format!("threads {t}, io_threads {io}, window {win} vs threads 1, io 1, window 1"),
            );
        }
    }
}

/// The example tree the README packs (made by scripts/make-example.py) round-trips.
#[test]
fn example_fixture_round_trips() {
    let src = common::repo_root().join("fixtures/example");
    let tree = snapshot(&src);
    assert_eq!(
        tree.len(),
        180,
        "fixtures/example should hold 3 classes x 20 samples x 3 files"
    );
    let tmp = common::tempdir();
    let out = tmp.path().join("example.spk");
    let summary = pack(&src, &out, &PackOptions::default(), &NoProgress).unwrap();
    assert_eq!(summary.samples, 60);
    assert_eq!(summary.classes, 3);
    let ds = Dataset::open(&out).unwrap();
    assert_same_tree(&dataset_tree(&ds), &tree, "fixtures/example round trip");
    assert!(ds.verify().is_ok());
}

#[test]
fn record_paths_reverse_the_split() {
    assert_eq!(record_path(b"cat/0001", b"jpg"), b"cat/0001.jpg");
    assert_eq!(record_path(b"README", b""), b"README");
    assert_eq!(record_path(b"", b"env"), b".env");
}

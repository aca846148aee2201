//! Opening without reading every index (`IndexCheck::FirstUse`, issue 16): open reads the
//! manifest and each shard's header and footer; a shard's index is checked when the shard is
//! first touched, and a damaged index is an error on that touch (and every later one), naming
//! the shard and the problem, before any of its samples is served, while the other shards
//! serve. Uses the corrupt fixtures (fixtures/corrupt/, 3 shards of 12, 12 and 6 samples, every
//! edit to shard 1).

use std::path::PathBuf;
use std::sync::Arc;

use shardpack::format::FormatErrorKind;
use shardpack::loader::{DirectIo, ErrorPolicy, Loader, LoaderOptions, Shuffle};
use shardpack::reader::{DamagedShards, IndexCheck, OpenOptions, ProblemKind};
use shardpack::{Dataset, Error};

const DAMAGED: &str = "shard-000001.spk";

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/corrupt")
        .join(case)
}

fn lazy(case: &str) -> Dataset {
    Dataset::open_checked(
        case_dir(case),
        &OpenOptions::default(),
        IndexCheck::FirstUse,
    )
    .unwrap_or_else(|e| panic!("{case}: a lazy open reads no index and must succeed: {e}"))
}

/// The cases whose damage is inside shard 1's index or dictionaries (the footer and the
/// manifest agree), with the region `Dataset::open` names and the problem kind.
const INDEX_CASES: &[(&str, &str)] = &[
    ("flipped-index-bit", "index"),
    ("flipped-dict-bit", "dictionary"),
    ("slash-in-field-name", "index/fields"),
    ("dict-without-magic", "dictionary"),
    ("dict-on-zstd-field", "index/fields"),
];

#[test]
fn a_damaged_index_is_an_error_on_first_touch_and_other_shards_serve() {
    for &(case, region) in INDEX_CASES {
        // The eager open refuses it (the existing behaviour, unchanged for small datasets).
        let eager = Dataset::open(case_dir(case)).expect_err(case).to_string();
        let ds = lazy(case);
        assert!(
            (0..3).all(|s| !ds.index_checked(s)),
            "{case}: open checked an index"
        );
        // Shard 0 (samples 0..12) and shard 2 (24..30) serve, and only their indexes are read.
        for i in (0..12).chain(24..30) {
            let s = ds
                .get(i)
                .unwrap_or_else(|e| panic!("{case}: sample {i}: {e}"));
            for f in s.fields() {
                f.unwrap().data().unwrap();
            }
        }
        assert!(ds.index_checked(0) && ds.index_checked(2) && !ds.index_checked(1));
        // Every sample of shard 1 is the index's error, the one the eager open gives.
        for i in 12..24 {
            let e = ds.get(i).map(|_| ()).expect_err(case);
            match &e {
                Error::Corrupt { path, source } => {
                    assert_eq!(path, &case_dir(case).join(DAMAGED), "{case}: {e}");
                    assert_eq!(source.region, region, "{case}: {e}");
                }
                other => panic!("{case}: expected Error::Corrupt, got {other:?}"),
            }
            assert_eq!(e.to_string(), eager, "{case}");
        }
        assert!(ds.index_checked(1));
        assert!(ds.shard(1).is_err() && ds.shard(0).is_ok());
        // The iteration serves shards 0 and 2 and fails each sample of shard 1.
        let errs = ds.iter().filter(|s| s.is_err()).count();
        assert_eq!(errs, 12, "{case}");
        // After every shard was touched, the damaged one is listed and left out of shards().
        assert_eq!(ds.shards().len(), 2, "{case}");
        assert_eq!(ds.damaged().len(), 1, "{case}");
        assert_eq!(ds.damaged()[0].index, 1, "{case}");
    }
}

#[test]
fn the_index_checksum_error_names_region_offset_and_problem() {
    let ds = lazy("flipped-index-bit");
    let e = ds.shard(1).expect_err("damaged index");
    let Error::Corrupt { source, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(
        matches!(source.kind, FormatErrorKind::ChecksumMismatch { .. }),
        "{e}"
    );
    // Same answer on the second touch.
    assert_eq!(ds.shard(1).expect_err("again").to_string(), e.to_string());
    let msg = e.to_string();
    assert!(msg.contains(DAMAGED) && msg.contains("checksum"), "{msg}");
}

#[test]
fn marked_damaged_lazily() {
    for &(case, _) in INDEX_CASES {
        let opts = OpenOptions {
            damaged: DamagedShards::Mark,
        };
        let ds = Dataset::open_checked(case_dir(case), &opts, IndexCheck::FirstUse).unwrap();
        let e = ds.get(15).map(|_| ()).unwrap_err();
        match &e {
            Error::DamagedShard {
                shard,
                sample,
                path,
                ..
            } => {
                assert_eq!((*shard, *sample), (1, Some(15)), "{case}: {e}");
                assert_eq!(path, &case_dir(case).join(DAMAGED));
            }
            other => panic!("{case}: expected DamagedShard, got {other:?}"),
        }
        assert!(ds.get(3).is_ok() && ds.get(27).is_ok(), "{case}");
        // The key of a sample of shard 0 is found; an absent key cannot be "absent".
        let key = ds.get(3).unwrap().key().to_vec();
        assert_eq!(ds.get_by_key(&key).unwrap().unwrap().index(), 3);
        assert!(matches!(
            ds.get_by_key(b"no/such/key"),
            Err(Error::DamagedShard { shard: 1, .. })
        ));
        assert_eq!(ds.damaged().len(), 1);
        // The eager tolerant open marks the same shard.
        let eager = Dataset::open_with(case_dir(case), &opts).unwrap();
        assert_eq!(eager.damaged()[0].reason, ds.damaged()[0].reason, "{case}");
    }
}

#[test]
fn an_absent_key_is_the_damaged_shards_error_not_absent() {
    let ds = lazy("flipped-index-bit");
    let key = ds.get(0).unwrap().key().to_vec();
    assert!(ds.get_by_key(&key).unwrap().is_some());
    assert!(matches!(
        ds.get_by_key(b"no/such/key"),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn the_loader_never_serves_a_sample_of_a_damaged_index() {
    let ds = Arc::new(lazy("flipped-index-bit"));
    let opts = LoaderOptions {
        batch_size: 4,
        shuffle: Shuffle::Chunked,
        chunk_bytes: 2048,
        window_chunks: 2,
        io_threads: 2,
        direct_io: DirectIo::Off,
        on_error: ErrorPolicy::Skip,
        ..LoaderOptions::default()
    };
    let mut got: Vec<u64> = Loader::new(ds.clone(), opts.clone())
        .unwrap()
        .map(|s| s.unwrap().index)
        .collect();
    got.sort_unstable();
    let want: Vec<u64> = (0..12).chain(24..30).collect();
    assert_eq!(got, want);
    let fail = LoaderOptions {
        on_error: ErrorPolicy::Fail,
        ..opts
    };
    let results: Vec<_> = Loader::new(ds, fail).unwrap().collect();
    assert!(results.iter().any(|r| r.is_err()));
    for r in results.iter().flatten() {
        assert!(!(12..24).contains(&r.index), "served sample {}", r.index);
    }
}

#[test]
fn verify_is_the_full_check_after_a_lazy_open() {
    for &(case, _) in INDEX_CASES {
        let r = lazy(case).verify();
        assert!(!r.is_ok(), "{case}");
        assert!(
            r.problems.iter().all(|p| p.shard == DAMAGED),
            "{case}: {r:?}"
        );
        let eager = shardpack::verify_dir(case_dir(case)).unwrap();
        let kinds = |r: &shardpack::VerifyReport| -> Vec<ProblemKind> {
            r.problems.iter().map(|p| p.kind).collect()
        };
        assert_eq!(kinds(&r), kinds(&eager), "{case}");
    }
    assert!(lazy("intact").verify().is_ok());
}

/// Damage that open sees from the header, the footer or the manifest is still refused at
/// open, even when the indexes are left for later.
#[test]
fn footer_and_manifest_damage_is_refused_at_open() {
    for case in [
        "truncated-shard",
        "truncated-footer",
        "bad-magic",
        "unknown-version",
        "unknown-version-footer",
        "missing-shard",
        "manifest-counts",
        "swapped-shard",
    ] {
        let lazy = Dataset::open_checked(
            case_dir(case),
            &OpenOptions::default(),
            IndexCheck::FirstUse,
        )
        .map(|_| ())
        .expect_err(case);
        let eager = Dataset::open(case_dir(case)).map(|_| ()).expect_err(case);
        // Same kind of error; the counts message may name fewer numbers without the index.
        assert_eq!(
            std::mem::discriminant(&lazy),
            std::mem::discriminant(&eager),
            "{case}: {lazy} / {eager}"
        );
        if case != "manifest-counts" {
            assert_eq!(lazy.to_string(), eager.to_string(), "{case}");
        }
    }
}

#[test]
fn at_open_and_auto_check_every_index_at_open() {
    for check in [IndexCheck::AtOpen, IndexCheck::Auto] {
        let ds = Dataset::open_checked(case_dir("intact"), &OpenOptions::default(), check).unwrap();
        assert!((0..3).all(|s| ds.index_checked(s)), "{check:?}");
        assert!(Dataset::open_checked(
            case_dir("flipped-index-bit"),
            &OpenOptions::default(),
            check
        )
        .is_err());
    }
}

#[test]
fn footers_are_read_at_open() {
    let ds = lazy("intact");
    for s in 0..3 {
        let f = ds.shard_footer(s).unwrap();
        assert_eq!(f.sample_count, ds.manifest().shards[s].samples);
    }
    assert!(ds.shard_footer(3).is_none());
    assert!((0..3).all(|s| !ds.index_checked(s)));
}

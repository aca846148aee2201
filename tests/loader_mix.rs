//! Loader v2: mixing datasets (issue 10 item 6) and `epoch_samples`. Proportions per epoch
//! and per batch, determinism, rank partition, exact resume, elastic resume, refused states.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use shardpack::loader::{
    epoch_order, mix_counts, mixed_epoch_order, DirectIo, ErrorPolicy, Loader, LoaderOptions,
    MixedLoader, Weight,
};
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::{Dataset, Error};

fn make(dir: &Path, n: u32, salt: u8) -> Arc<Dataset> {
    std::fs::create_dir_all(dir).unwrap();
    let opts = WriterOptions {
        shard_size: 16 << 10,
        ..WriterOptions::default()
    };
    let mut w = DatasetWriter::create(dir, vec![FieldSpec::raw("bin")], opts).unwrap();
    for i in 0..n {
        let mut data: Vec<u8> = (0..200u32).map(|k| (k + i) as u8 ^ salt).collect();
        data[..4].copy_from_slice(&i.to_le_bytes());
        w.append(format!("{salt}-{i:05}").as_bytes(), None, &[(0, &data)])
            .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

fn opts() -> LoaderOptions {
    LoaderOptions {
        seed: 5,
        epoch: 1,
        batch_size: 50,
        chunk_bytes: 2 << 10,
        window_chunks: 4,
        io_threads: 2,
        prefetch_bytes: 64 << 10,
        direct_io: DirectIo::Off,
        ..LoaderOptions::default()
    }
}

fn at(o: &LoaderOptions, rank: u32, world: u32) -> LoaderOptions {
    LoaderOptions {
        rank,
        world_size: world,
        ..o.clone()
    }
}

/// (source, index) pairs a mixed loader hands out, checking each sample's bytes.
fn drain(l: &mut MixedLoader, n: Option<usize>) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    while n.is_none_or(|n| out.len() < n) {
        let Some(s) = l.next() else { break };
        let s = s.unwrap();
        let data = s.sample.field(0).unwrap();
        assert_eq!(
            u32::from_le_bytes(data[..4].try_into().unwrap()) as u64,
            s.sample.index
        );
        let salt: u8 = String::from_utf8_lossy(&s.sample.key)[..1].parse().unwrap();
        assert_eq!(data[4], (4 + s.sample.index as u32) as u8 ^ salt);
        out.push((s.source, s.sample.index));
    }
    out
}

#[test]
fn counts_follow_weights_with_largest_remainder_rounding() {
    let f = |x| Weight::Fraction(x);
    // Default epoch: as long as possible without repeating a sample.
    assert_eq!(
        mix_counts(&[1000, 500], &[f(0.7), f(0.3)], None).unwrap(),
        vec![1000, 428]
    );
    assert_eq!(
        mix_counts(&[1000, 500], &[f(7.0), f(3.0)], None).unwrap(),
        vec![1000, 428]
    );
    // A given epoch size; each count is its exact share rounded down or up, summing exactly.
    let c = mix_counts(&[1000, 1000, 1000], &[f(1.0), f(1.0), f(1.0)], Some(1000)).unwrap();
    assert_eq!(c, vec![334, 333, 333]);
    // Fixed counts, and fractions sharing the rest.
    let c = mix_counts(
        &[100, 1000, 1000],
        &[Weight::Samples(40), f(3.0), f(1.0)],
        Some(440),
    );
    assert_eq!(c.unwrap(), vec![40, 300, 100]);
    assert_eq!(
        mix_counts(
            &[100, 50],
            &[Weight::Samples(10), Weight::Samples(50)],
            None
        )
        .unwrap(),
        vec![10, 50]
    );
    // Refused: a count above the dataset, a share above it, a bad fraction, sizes that do
    // not add up.
    for (sizes, w, e, words) in [
        (
            vec![10u64],
            vec![Weight::Samples(11)],
            None,
            "more than its 10",
        ),
        (
            vec![100, 10],
            vec![f(0.5), f(0.5)],
            Some(100),
            "source 1: its share",
        ),
        (vec![100], vec![f(-1.0)], None, "positive"),
        (vec![100], vec![f(f64::NAN)], None, "positive"),
        (vec![100], vec![Weight::Samples(5)], Some(6), "add up to 5"),
        (
            vec![100, 100],
            vec![Weight::Samples(50), f(1.0)],
            Some(20),
            "less than",
        ),
    ] {
        let err = mix_counts(&sizes, &w, e).unwrap_err();
        assert!(err.to_string().contains(words), "{err} lacks {words:?}");
    }
}

#[test]
fn an_epoch_serves_each_source_its_count_over_the_ranks_and_batches_keep_the_proportion() {
    let dir = common::tempdir();
    let a = make(&dir.path().join("a"), 600, 1);
    let b = make(&dir.path().join("b"), 300, 2);
    let sources = [
        (a.clone(), Weight::Fraction(0.7)),
        (b.clone(), Weight::Fraction(0.3)),
    ];
    let o = opts();
    // 600 / 0.7 = 857.1 -> 857 samples: 600 of a and 257 of b.
    let one = MixedLoader::new(&sources, None, o.clone()).unwrap();
    assert_eq!(one.counts(), vec![600, 257]);
    drop(one);
    for (world, drop_last) in [(1u32, false), (3, false), (4, true), (7, false)] {
        let o = LoaderOptions {
            drop_last,
            ..o.clone()
        };
        let mut per_source: Vec<BTreeMap<u64, u32>> = vec![BTreeMap::new(); 2];
        let mut lens = Vec::new();
        for r in 0..world {
            let mut l = MixedLoader::new(&sources, None, at(&o, r, world)).unwrap();
            let want = mixed_epoch_order(&sources, None, &at(&o, r, world), None).unwrap();
            lens.push(l.len());
            let got = drain(&mut l, None);
            assert_eq!(got, want, "rank {r} of {world}");
            for (s, i) in &got {
                *per_source[*s].entry(*i).or_default() += 1;
            }
            // Every batch of 50 holds each source in proportion, rounded down or up.
            for batch in got.chunks(50).filter(|b| b.len() == 50) {
                let na = batch.iter().filter(|s| s.0 == 0).count() as f64;
                let share = 600.0 / 857.0 * 50.0;
                assert!(
                    (na - share).abs() <= 1.0 + 1e-9,
                    "{na} of source 0 in a batch"
                );
            }
        }
        assert!(
            lens.iter().all(|&n| n == lens[0]),
            "equal counts per rank: {lens:?}"
        );
        for (s, count) in [(0usize, 600u64), (1, 257)] {
            let distinct = per_source[s].len() as u64;
            let served: u64 = per_source[s].values().map(|&c| c as u64).sum();
            let w = world as u64;
            if drop_last {
                assert_eq!(served, count / w * w, "source {s}");
                assert_eq!(distinct, served, "no repeats under drop_last");
            } else {
                assert_eq!(
                    distinct, count,
                    "source {s}: every chosen sample, world {world}"
                );
                assert_eq!(served, count.div_ceil(w) * w, "source {s}: padding only");
            }
        }
        // The chosen samples of a source are the first `count` of its own epoch sequence:
        // at world size 1, exactly the set its epoch_samples loader serves.
        if world == 1 {
            let sub = LoaderOptions {
                seed: shardpack::loader::mix::source_seed(o.seed, 1),
                epoch_samples: Some(257),
                ..o.clone()
            };
            let set: BTreeSet<u64> = epoch_order(&b, &sub).unwrap().into_iter().collect();
            assert_eq!(set, per_source[1].keys().copied().collect());
        }
    }
}

#[test]
fn orders_are_deterministic_and_depend_on_seed_and_epoch() {
    let dir = common::tempdir();
    let a = make(&dir.path().join("a"), 400, 1);
    let b = make(&dir.path().join("b"), 400, 2);
    let sources = [(a, Weight::Samples(300)), (b, Weight::Samples(100))];
    let o = at(&opts(), 1, 2);
    let run = |o: &LoaderOptions| {
        drain(
            &mut MixedLoader::new(&sources, None, o.clone()).unwrap(),
            None,
        )
    };
    let first = run(&o);
    assert_eq!(
        first,
        run(&LoaderOptions {
            io_threads: 1,
            batch_size: 7,
            ..o.clone()
        })
    );
    assert_ne!(
        first,
        run(&LoaderOptions {
            seed: 6,
            ..o.clone()
        })
    );
    assert_ne!(
        first,
        run(&LoaderOptions {
            epoch: 2,
            ..o.clone()
        })
    );
    // The same dataset given twice gets two different orders.
    let twice = [
        (sources[0].0.clone(), Weight::Samples(200)),
        (sources[0].0.clone(), Weight::Samples(200)),
    ];
    let got = drain(&mut MixedLoader::new(&twice, None, opts()).unwrap(), None);
    let s0: Vec<u64> = got.iter().filter(|s| s.0 == 0).map(|s| s.1).collect();
    let s1: Vec<u64> = got.iter().filter(|s| s.0 == 1).map(|s| s.1).collect();
    assert_ne!(s0, s1);
    // next_epoch gives the next epoch's order, also when read ahead.
    for read_next_epoch in [false, true] {
        let o = LoaderOptions {
            read_next_epoch,
            ..opts()
        };
        let mut l = MixedLoader::new(&sources, None, o.clone()).unwrap();
        drain(&mut l, None);
        let mut l = l.next_epoch().unwrap();
        assert_eq!(l.state().epoch, o.epoch + 1);
        let want = mixed_epoch_order(
            &sources,
            None,
            &LoaderOptions {
                epoch: o.epoch + 1,
                ..o.clone()
            },
            None,
        )
        .unwrap();
        assert_eq!(drain(&mut l, None), want);
    }
}

#[test]
fn resume_is_exact_at_the_same_world_size_and_elastic_at_another() {
    let dir = common::tempdir();
    let a = make(&dir.path().join("a"), 500, 1);
    let b = make(&dir.path().join("b"), 300, 2);
    let c = make(&dir.path().join("c"), 200, 3);
    let sources = [
        (a, Weight::Fraction(2.0)),
        (b, Weight::Fraction(1.0)),
        (c, Weight::Samples(150)),
    ];
    let e = Some(750);
    let o = opts();
    // Same world size: the rest is exactly the uninterrupted order, from JSON too.
    for stop in [0usize, 1, 49, 50, 333, 374] {
        let full = drain(
            &mut MixedLoader::new(&sources, e, at(&o, 1, 2)).unwrap(),
            None,
        );
        assert_eq!(full.len(), 375);
        let mut l = MixedLoader::new(&sources, e, at(&o, 1, 2)).unwrap();
        let mut head = drain(&mut l, Some(stop));
        let state = l.state();
        assert_eq!(state.samples_consumed(), stop as u64);
        drop(l);
        let json = serde_json::to_string(&state).unwrap();
        let back = serde_json::from_str(&json).unwrap();
        let mut r = MixedLoader::resume(&sources, e, at(&o, 1, 2), &back).unwrap();
        head.extend(drain(&mut r, None));
        assert_eq!(head, full, "stop at {stop}");
    }
    // Stop at world size 4 after 60 samples per rank, resume at 1, 3 and 8: over all new
    // ranks exactly the samples not yet served (plus each source's padding).
    let mut served: Vec<BTreeMap<u64, u32>> = vec![BTreeMap::new(); 3];
    let mut state = None;
    for r in 0..4 {
        let mut l = MixedLoader::new(&sources, e, at(&o, r, 4)).unwrap();
        for (s, i) in drain(&mut l, Some(60)) {
            *served[s].entry(i).or_default() += 1;
        }
        let st = l.state();
        if let Some(prev) = &state {
            let mut a = st.clone();
            for s in &mut a.sources {
                s.state.rank = 0;
            }
            let mut b: shardpack::loader::MixedState = Clone::clone(prev);
            for s in &mut b.sources {
                s.state.rank = 0;
            }
            assert_eq!(a, b, "one global state at a global step");
        }
        state = Some(st);
    }
    let state = state.unwrap();
    let counts = [400u64, 200, 150];
    for world in [1u32, 3, 8] {
        let mut all = served.clone();
        let mut lens = Vec::new();
        for r in 0..world {
            let mut l = MixedLoader::resume(&sources, e, at(&o, r, world), &state).unwrap();
            lens.push(l.len());
            let want = mixed_epoch_order(&sources, e, &at(&o, r, world), Some(&state)).unwrap();
            let got = drain(&mut l, None);
            assert_eq!(got, want);
            for (s, i) in got {
                *all[s].entry(i).or_default() += 1;
            }
        }
        assert!(lens.iter().all(|&n| n == lens[0]), "{lens:?}");
        for (s, &count) in counts.iter().enumerate() {
            assert_eq!(
                all[s].len() as u64,
                count,
                "source {s}, world {world}: every sample"
            );
            let extra: u32 = all[s].values().map(|&c| c - 1).sum();
            // Padding: at most 3 repeats at world size 4, and world - 1 after.
            assert!(extra < 3 + world, "source {s}: {extra} repeats");
        }
    }
}

#[test]
fn a_state_that_does_not_fit_is_refused_naming_what_differs() {
    let dir = common::tempdir();
    let a = make(&dir.path().join("a"), 300, 1);
    let b = make(&dir.path().join("b"), 300, 2);
    let sources = [
        (a.clone(), Weight::Fraction(0.5)),
        (b.clone(), Weight::Fraction(0.5)),
    ];
    let mut l = MixedLoader::new(&sources, None, opts()).unwrap();
    drain(&mut l, Some(40));
    let st = l.state();
    drop(l);
    let refused =
        |srcs: &[(Arc<Dataset>, Weight)], e: Option<u64>, o: LoaderOptions, words: &[&str]| {
            match MixedLoader::resume(srcs, e, o, &st) {
                Ok(_) => panic!("accepted; wanted {words:?}"),
                Err(err) => {
                    assert!(matches!(err, Error::State(_)), "{err:?}");
                    for w in words {
                        assert!(err.to_string().contains(w), "{err} lacks {w:?}");
                    }
                }
            }
        };
    refused(&sources[..1], None, opts(), &["2 sources", "given 1"]);
    refused(
        &[
            (a.clone(), Weight::Fraction(0.6)),
            (b.clone(), Weight::Fraction(0.5)),
        ],
        None,
        opts(),
        &["source 0", "weight"],
    );
    refused(
        &[
            (b.clone(), Weight::Fraction(0.5)),
            (a.clone(), Weight::Fraction(0.5)),
        ],
        None,
        opts(),
        &["source 0", "another dataset"],
    );
    refused(&sources, Some(500), opts(), &["epoch_samples"]);
    refused(
        &sources,
        None,
        LoaderOptions { seed: 9, ..opts() },
        &["seed=5", "seed=9"],
    );
    refused(
        &sources,
        None,
        LoaderOptions {
            window_chunks: 8,
            ..opts()
        },
        &["source 0", "window_chunks=4"],
    );
    // What may change: rank, world size, batch size, threads, budget, errors.
    let ok = LoaderOptions {
        rank: 1,
        world_size: 3,
        batch_size: 9,
        io_threads: 1,
        on_error: ErrorPolicy::Skip,
        ..opts()
    };
    assert!(MixedLoader::resume(&sources, None, ok, &st).is_ok());
    // Options a mix sets itself.
    let err = MixedLoader::new(
        &sources,
        None,
        LoaderOptions {
            epoch_samples: Some(5),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("epoch_samples"), "{err}");
    let _ = Loader::mix(&sources, opts()).unwrap();
}

#[test]
fn epoch_samples_serves_a_prefix_of_the_epoch_sequence_partitioned_by_rank() {
    let dir = common::tempdir();
    let a = make(&dir.path().join("a"), 700, 1);
    let o = LoaderOptions {
        epoch_samples: Some(333),
        ..opts()
    };
    let whole: BTreeSet<u64> = epoch_order(&a, &o).unwrap().into_iter().collect();
    assert_eq!(whole.len(), 333);
    // Another part of the dataset in another epoch.
    let next: BTreeSet<u64> = epoch_order(
        &a,
        &LoaderOptions {
            epoch: 2,
            ..o.clone()
        },
    )
    .unwrap()
    .into_iter()
    .collect();
    assert_ne!(whole, next);
    let mut union = BTreeSet::new();
    for r in 0..4 {
        let l = Loader::new(a.clone(), at(&o, r, 4)).unwrap();
        assert_eq!(l.len(), 84);
        for s in l {
            union.insert(s.unwrap().index);
        }
    }
    assert_eq!(union, whole);
    let err = Loader::new(
        a.clone(),
        LoaderOptions {
            epoch_samples: Some(701),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("epoch_samples=701"), "{err}");
}

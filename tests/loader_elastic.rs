//! Loader v2: elastic resumption (a global state resumed at any world size serves exactly the
//! samples not yet consumed, equal counts per rank), drop_last and subsets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use shardpack::loader::{
    epoch_order, epoch_order_from, DirectIo, Loader, LoaderOptions, LoaderState, Shuffle, Subset,
};
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

fn payload(i: u32) -> Vec<u8> {
    (0..(i * 53 % 700) as usize)
        .map(|k| (k as u32 ^ i).wrapping_mul(2_654_435_761) as u8)
        .collect()
}

/// `n` samples over several 32 KiB shards; the field holds the sample number and bytes.
fn make(dir: &Path, n: u32) -> Arc<Dataset> {
    let opts = WriterOptions {
        shard_size: 32 << 10,
        ..WriterOptions::default()
    };
    let mut w = DatasetWriter::create(dir, vec![FieldSpec::raw("bin")], opts).unwrap();
    for i in 0..n {
        let mut data = i.to_le_bytes().to_vec();
        data.extend(payload(i));
        w.append(format!("s{i:05}").as_bytes(), Some(i % 5), &[(0, &data)])
            .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

fn base() -> LoaderOptions {
    LoaderOptions {
        seed: 3,
        epoch: 1,
        batch_size: 8,
        chunk_bytes: 4 << 10,
        window_chunks: 3,
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

/// Reads `take` samples on each rank of `world` (from `state`, or from the epoch's start),
/// checking each sample's bytes; returns what each rank got and rank 0's state after it.
fn run_ranks(
    ds: &Arc<Dataset>,
    o: &LoaderOptions,
    world: u32,
    state: Option<&LoaderState>,
    take: Option<u64>,
) -> (Vec<Vec<u64>>, LoaderState) {
    let mut got = Vec::new();
    let mut states = Vec::new();
    for r in 0..world {
        let ro = at(o, r, world);
        let mut l = match state {
            Some(s) => Loader::resume(ds.clone(), ro.clone(), s).unwrap(),
            None => Loader::new(ds.clone(), ro.clone()).unwrap(),
        };
        let mut ids = Vec::new();
        let limit = take.unwrap_or(u64::MAX);
        while (ids.len() as u64) < limit {
            let Some(s) = l.next() else { break };
            let s = s.unwrap();
            let i = s.index as u32;
            assert_eq!(&s.field(0).unwrap()[..4], &i.to_le_bytes(), "sample {i}");
            assert_eq!(&s.field(0).unwrap()[4..], payload(i).as_slice());
            ids.push(s.index);
        }
        // The loader hands out what the I/O-free order says.
        let planned = match state {
            Some(s) => epoch_order_from(ds, &ro, s).unwrap(),
            None => epoch_order(ds, &ro).unwrap(),
        };
        assert_eq!(ids, planned[..ids.len()], "rank {r} of {world}");
        states.push(l.state());
        got.push(ids);
    }
    for (r, s) in states.iter().enumerate() {
        assert_eq!(s.rank, r as u32);
        let same = LoaderState {
            rank: 0,
            ..s.clone()
        };
        assert_eq!(same, states[0], "one global state, the same on every rank");
    }
    (got, states.swap_remove(0))
}

/// Checks that `ranks` (what each new rank served to the end) is exactly `remaining` plus at
/// most `ranks.len() - 1` padding repeats, with equal counts.
fn assert_serves_exactly(
    ranks: &[Vec<u64>],
    remaining: &BTreeSet<u64>,
    drop_last: bool,
    what: &str,
) {
    let w = ranks.len() as u64;
    let n = ranks[0].len() as u64;
    assert!(
        ranks.iter().all(|r| r.len() as u64 == n),
        "{what}: equal counts per rank"
    );
    let mut count: BTreeMap<u64, u64> = BTreeMap::new();
    for r in ranks {
        for &i in r {
            *count.entry(i).or_default() += 1;
        }
    }
    let served: BTreeSet<u64> = count.keys().copied().collect();
    let m = remaining.len() as u64;
    if drop_last {
        assert_eq!(n, m / w, "{what}");
        assert!(
            served.is_subset(remaining),
            "{what}: only unconsumed samples"
        );
        assert!(count.values().all(|&c| c == 1), "{what}: no repeats");
    } else {
        assert_eq!(n, m.div_ceil(w), "{what}");
        assert_eq!(&served, remaining, "{what}: exactly the unconsumed samples");
        let repeats: u64 = count.values().map(|c| c - 1).sum();
        assert_eq!(repeats, n * w - m, "{what}: only the padding repeats");
        assert!(repeats < w, "{what}");
    }
}

#[test]
fn stop_at_world_4_resume_at_1_2_3_8_serves_exactly_the_rest() {
    let dir = common::tempdir();
    let n = 1003u32;
    let ds = make(dir.path(), n);
    assert!(ds.shards().len() >= 4, "the test wants several shards");
    for (shuffle, drop_last) in [
        (Shuffle::Chunked, false),
        (Shuffle::Chunked, true),
        (Shuffle::None, false),
        (Shuffle::Full, false),
    ] {
        let o = LoaderOptions {
            shuffle,
            drop_last,
            ..base()
        };
        let per4 = if drop_last {
            n as u64 / 4
        } else {
            (n as u64).div_ceil(4)
        };
        for stop in [0, 1, 37, per4 / 2, per4 - 1, per4] {
            let (head, state) = run_ranks(&ds, &o, 4, None, Some(stop));
            assert_eq!(state.samples_consumed, stop);
            let seen: BTreeSet<u64> = head.iter().flatten().copied().collect();
            let remaining: BTreeSet<u64> = (0..n as u64).filter(|i| !seen.contains(i)).collect();
            // The state is JSON in a checkpoint.
            let json = serde_json::to_string(&state).unwrap();
            let state: LoaderState = serde_json::from_str(&json).unwrap();
            for world in [1u32, 2, 3, 4, 8] {
                let (rest, _) = run_ranks(&ds, &o, world, Some(&state), None);
                let what = format!("{shuffle:?} drop_last={drop_last}, stop {stop}, 4 -> {world}");
                if world == 4 {
                    // The same world size continues the uninterrupted order.
                    for (r, tail) in rest.iter().enumerate() {
                        let full = epoch_order(&ds, &at(&o, r as u32, 4)).unwrap();
                        let mut all = head[r].clone();
                        all.extend(tail);
                        assert_eq!(all, full, "{what} rank {r}");
                    }
                    continue;
                }
                assert_serves_exactly(&rest, &remaining, drop_last, &what);
            }
        }
    }
}

#[test]
fn several_changes_of_world_size_in_one_epoch() {
    let dir = common::tempdir();
    let n = 777u32;
    let ds = make(dir.path(), n);
    for drop_last in [false, true] {
        let o = LoaderOptions {
            drop_last,
            ..base()
        };
        let mut seen = BTreeSet::new();
        let mut state: Option<LoaderState> = None;
        // 4 ranks take 50, then 3 take 40, then 8 take 10, then 2 finish the epoch.
        for (world, take) in [(4u32, 50u64), (3, 40), (8, 10)] {
            let (got, st) = run_ranks(&ds, &o, world, state.as_ref(), Some(take));
            for r in &got {
                assert_eq!(r.len() as u64, take);
            }
            seen.extend(got.into_iter().flatten());
            state = Some(st);
        }
        let st = state.unwrap();
        assert_eq!(st.segments.len(), 2, "{st:?}");
        assert_eq!((st.world_size, st.samples_consumed), (8, 10));
        let remaining: BTreeSet<u64> = (0..n as u64).filter(|i| !seen.contains(i)).collect();
        for world in [1, 2, 5] {
            let (rest, _) = run_ranks(&ds, &o, world, Some(&st), None);
            assert_serves_exactly(&rest, &remaining, drop_last, &format!("-> {world}"));
        }
    }
}

#[test]
fn drop_last_gives_equal_disjoint_shares_without_padding() {
    let dir = common::tempdir();
    let n = 103u64;
    let ds = make(dir.path(), n as u32);
    for world in 1..=6u32 {
        let o = LoaderOptions {
            drop_last: true,
            ..base()
        };
        let mut all = Vec::new();
        for r in 0..world {
            let l = Loader::new(ds.clone(), at(&o, r, world)).unwrap();
            assert_eq!(l.len(), n / world as u64);
            let ids: Vec<u64> = l.map(|s| s.unwrap().index).collect();
            assert_eq!(ids.len() as u64, n / world as u64);
            all.extend(ids);
        }
        let set: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(set.len(), all.len(), "world {world}: no sample twice");
        assert_eq!(all.len() as u64, n / world as u64 * world as u64);
    }
}

#[test]
fn a_subset_serves_exactly_its_samples_and_resumes_elastically() {
    let dir = common::tempdir();
    let n = 1200u32;
    let ds = make(dir.path(), n);
    // A dense block, a sparse scatter and single samples at the ends.
    let mut ids: Vec<u64> = (100..400).collect();
    ids.extend((400..1200).step_by(37));
    ids.extend([0, 1199]);
    let subset = Subset::new(ids.iter().rev().copied().chain([150, 150]));
    assert_eq!(subset.len(), ids.len());
    let want: BTreeSet<u64> = ids.iter().copied().collect();
    for shuffle in [Shuffle::Chunked, Shuffle::None, Shuffle::Full] {
        let o = LoaderOptions {
            shuffle,
            subset: Some(subset.clone()),
            ..base()
        };
        let (full, _) = run_ranks(&ds, &o, 1, None, None);
        assert_eq!(full[0].len(), want.len(), "{shuffle:?}");
        assert_eq!(full[0].iter().copied().collect::<BTreeSet<_>>(), want);
        if shuffle == Shuffle::None {
            assert_eq!(
                full[0],
                want.iter().copied().collect::<Vec<_>>(),
                "stored order"
            );
        }
        // Stop at 3 ranks, resume at 2.
        let (head, st) = run_ranks(&ds, &o, 3, None, Some(40));
        let seen: BTreeSet<u64> = head.iter().flatten().copied().collect();
        assert!(seen.is_subset(&want));
        let remaining: BTreeSet<u64> = want.difference(&seen).copied().collect();
        let (rest, _) = run_ranks(&ds, &o, 2, Some(&st), None);
        assert_serves_exactly(&rest, &remaining, false, &format!("subset {shuffle:?}"));
        // The state names the subset: another subset (or none) is refused.
        let other = LoaderOptions {
            subset: Some(Subset::new(0..10)),
            ..at(&o, 0, 2)
        };
        let e = Loader::resume(ds.clone(), other, &st)
            .unwrap_err()
            .to_string();
        assert!(e.contains("subset="), "{e}");
        let none = LoaderOptions {
            subset: None,
            ..at(&o, 0, 2)
        };
        assert!(Loader::resume(ds.clone(), none, &st).is_err());
    }
    let past = LoaderOptions {
        subset: Some(Subset::new([5, n as u64])),
        ..base()
    };
    let e = Loader::new(ds.clone(), past).unwrap_err().to_string();
    assert!(
        e.contains(&format!("subset index {n} is out of range")),
        "{e}"
    );
}

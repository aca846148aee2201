//! Loader v2: a checked state. Resuming with another dataset or with options that shape the
//! order differently is an error naming the field, the saved and the current value.

mod common;

use std::path::Path;
use std::sync::Arc;

use shardpack::loader::{
    fingerprint, DirectIo, ErrorPolicy, Loader, LoaderOptions, LoaderState, Shuffle, Subset,
    STATE_VERSION,
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
        let data: Vec<u8> = (0..300u32).map(|k| (k + i) as u8 ^ salt).collect();
        w.append(format!("s{i:05}").as_bytes(), None, &[(0, &data)])
            .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

fn base() -> LoaderOptions {
    LoaderOptions {
        seed: 11,
        epoch: 2,
        batch_size: 8,
        chunk_bytes: 4 << 10,
        window_chunks: 4,
        io_threads: 2,
        direct_io: DirectIo::Off,
        ..LoaderOptions::default()
    }
}

/// A state after 50 samples at rank 1 of 2.
fn saved(ds: &Arc<Dataset>) -> LoaderState {
    let o = LoaderOptions {
        rank: 1,
        world_size: 2,
        ..base()
    };
    let mut l = Loader::new(ds.clone(), o).unwrap();
    for _ in 0..50 {
        l.next().unwrap().unwrap();
    }
    l.state()
}

#[track_caller]
fn refused(ds: &Arc<Dataset>, opts: LoaderOptions, state: &LoaderState, words: &[&str]) {
    match Loader::resume(ds.clone(), opts, state) {
        Ok(_) => panic!("resume accepted a state that does not fit; wanted {words:?}"),
        Err(e) => {
            assert!(matches!(e, Error::State(_)), "{e:?}");
            let msg = e.to_string();
            for w in words {
                assert!(msg.contains(w), "{msg:?} lacks {w:?}");
            }
        }
    }
}

#[test]
fn the_state_records_what_shapes_the_order() {
    let dir = common::tempdir();
    let ds = make(dir.path(), 500, 0);
    let st = saved(&ds);
    assert_eq!(st.version, STATE_VERSION);
    assert_eq!(st.dataset, fingerprint(&ds));
    assert_eq!((st.seed, st.epoch, st.rank, st.world_size), (11, 2, 1, 2));
    assert_eq!(st.samples_consumed, 50);
    assert_eq!(
        (st.shuffle, st.chunk_bytes, st.window_chunks),
        (Shuffle::Interleaved, 4 << 10, 4)
    );
    assert!(!st.drop_last && st.subset.is_none() && st.segments.is_empty());
    // The JSON layout documented in the loader module.
    let v: serde_json::Value = serde_json::to_value(&st).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    let mut want = [
        "version",
        "dataset",
        "seed",
        "epoch",
        "rank",
        "world_size",
        "samples_consumed",
        "shuffle",
        "chunk_bytes",
        "window_chunks",
        "drop_last",
        "segments",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(v["shuffle"], "interleaved");
}

#[test]
fn each_mismatch_is_refused_naming_the_field_and_both_values() {
    let dir = common::tempdir();
    let ds = make(dir.path(), 500, 0);
    let st = saved(&ds);
    let o = LoaderOptions {
        rank: 1,
        world_size: 2,
        ..base()
    };
    let cases: Vec<(LoaderOptions, Vec<&str>)> = vec![
        (
            LoaderOptions {
                chunk_bytes: 1 << 10,
                ..o.clone()
            },
            vec!["chunk_bytes=4096", "chunk_bytes=1024"],
        ),
        (
            LoaderOptions {
                window_chunks: 5,
                ..o.clone()
            },
            vec!["window_chunks=4", "window_chunks=5"],
        ),
        (
            LoaderOptions {
                seed: 12,
                ..o.clone()
            },
            vec!["seed=11", "seed=12"],
        ),
        (
            LoaderOptions {
                epoch: 3,
                ..o.clone()
            },
            vec!["epoch=2", "epoch=3"],
        ),
        (
            LoaderOptions {
                shuffle: Shuffle::None,
                ..o.clone()
            },
            vec!["shuffle=interleaved", "shuffle=none"],
        ),
        (
            LoaderOptions {
                shuffle: Shuffle::Full,
                ..o.clone()
            },
            vec!["shuffle=interleaved", "shuffle=full"],
        ),
        (
            LoaderOptions {
                shuffle: Shuffle::Chunked,
                ..o.clone()
            },
            vec!["shuffle=interleaved", "shuffle=chunked"],
        ),
        (
            LoaderOptions {
                epoch_samples: Some(400),
                ..o.clone()
            },
            vec!["epoch_samples=none", "epoch_samples=400"],
        ),
        (
            LoaderOptions {
                drop_last: true,
                ..o.clone()
            },
            vec!["drop_last=false", "drop_last=true"],
        ),
        (
            LoaderOptions {
                subset: Some(Subset::new(0..100)),
                ..o.clone()
            },
            vec!["subset=none", "subset=100:"],
        ),
    ];
    for (opts, words) in cases {
        refused(&ds, opts, &st, &words);
    }
    // What may change: rank, world size, batch size, threads, budget, direct I/O, errors.
    let ok = LoaderOptions {
        rank: 0,
        world_size: 3,
        batch_size: 3,
        io_threads: 1,
        prefetch_bytes: 1,
        direct_io: DirectIo::On,
        on_error: ErrorPolicy::Skip,
        ..o.clone()
    };
    assert!(Loader::resume(ds.clone(), ok, &st).is_ok());
    // A position past this rank's part of the epoch.
    let past = LoaderState {
        samples_consumed: 251,
        ..st.clone()
    };
    refused(
        &ds,
        o.clone(),
        &past,
        &["samples_consumed=251", "250 samples"],
    );
    let bad_history = LoaderState {
        segments: vec![shardpack::loader::Segment {
            world_size: 4,
            samples_consumed: 126,
        }],
        ..st.clone()
    };
    refused(
        &ds,
        o.clone(),
        &bad_history,
        &["samples_consumed=126", "125 per rank"],
    );
}

#[test]
fn a_state_of_another_dataset_of_the_same_size_is_refused() {
    let dir = common::tempdir();
    let a = make(&dir.path().join("a"), 500, 0);
    let b = make(&dir.path().join("b"), 500, 1);
    assert_eq!(a.len(), b.len());
    assert_eq!(a.shards().len(), b.shards().len());
    let st = saved(&a);
    let o = LoaderOptions {
        rank: 1,
        world_size: 2,
        ..base()
    };
    refused(
        &b,
        o.clone(),
        &st,
        &["another dataset", &fingerprint(&a), &fingerprint(&b)],
    );
    assert!(Loader::resume(a.clone(), o, &st).is_ok());
}

#[test]
fn states_of_older_versions_are_refused_clearly() {
    let dir = common::tempdir();
    let ds = make(dir.path(), 100, 0);
    // A state as shardpack 0.2.0 serialized it.
    let old = r#"{"seed":11,"epoch":2,"rank":0,"world_size":1,"samples_consumed":5}"#;
    let st: LoaderState = serde_json::from_str(old).unwrap();
    refused(&ds, base(), &st, &["0.2.0", "start the epoch again"]);
    let newer = LoaderState {
        version: STATE_VERSION + 1,
        ..Loader::new(ds.clone(), base()).unwrap().state()
    };
    refused(&ds, base(), &newer, &["version 3"]);
}

//! The Loader: epoch order, partitioning across ranks, resume, data integrity, errors.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use shardpack::format::Codec;
use shardpack::loader::{epoch_order, DirectIo, Loader, LoaderOptions, LoaderState, Shuffle};
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

/// Deterministic sample content: a raw field, a zstd field, sizes varying with `i`.
fn content(i: u32) -> (Vec<u8>, Vec<u8>) {
    let raw: Vec<u8> = (0..(i * 37 % 900) as usize)
        .map(|k| (k as u32 ^ i).wrapping_mul(2_654_435_761) as u8)
        .collect();
    let text = format!("sample {i} says hello {}", "la ".repeat((i % 50) as usize)).into_bytes();
    (raw, text)
}

/// Writes `n` samples over several shards (labels i % 7).
fn make_dataset(dir: &Path, n: u32) -> Arc<Dataset> {
    let fields = vec![FieldSpec::raw("bin"), FieldSpec::zstd("txt")];
    let opts = WriterOptions {
        shard_size: 64 << 10,
        ..WriterOptions::default()
    };
    let mut w = DatasetWriter::create(dir, fields, opts).unwrap();
    for i in 0..n {
        let (raw, text) = content(i);
        w.append(
            format!("k{i:05}").as_bytes(),
            Some(i % 7),
            &[(0, &raw), (1, &text)],
        )
        .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

fn small(seed: u64, epoch: u64) -> LoaderOptions {
    LoaderOptions {
        seed,
        epoch,
        batch_size: 16,
        chunk_bytes: 8 << 10,
        window_chunks: 3,
        io_threads: 2,
        prefetch_bytes: 64 << 10,
        direct_io: DirectIo::Off,
        ..LoaderOptions::default()
    }
}

fn ids(loader: Loader) -> Vec<u64> {
    loader.map(|s| s.unwrap().index).collect()
}

#[test]
fn loader_hands_out_the_epoch_order_with_intact_data() {
    let dir = tempfile::tempdir().unwrap();
    let ds = make_dataset(dir.path(), 500);
    assert!(ds.shards().len() > 2, "the test wants several shards");
    for (threads, direct) in [(1, DirectIo::Off), (3, DirectIo::On), (4, DirectIo::Auto)] {
        let opts = LoaderOptions {
            io_threads: threads,
            direct_io: direct,
            ..small(9, 0)
        };
        let expected = epoch_order(&ds, &opts).unwrap();
        let mut got = Vec::new();
        for s in Loader::new(ds.clone(), opts).unwrap() {
            let s = s.unwrap();
            let i = s.index as u32;
            let (raw, text) = content(i);
            assert_eq!(s.key, format!("k{i:05}").into_bytes());
            assert_eq!(s.label, Some(i % 7));
            assert_eq!(s.field(0).unwrap(), raw.as_slice());
            assert_eq!(s.field(1).unwrap(), text.as_slice());
            got.push(s.index);
        }
        assert_eq!(got, expected, "threads {threads}");
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..500).collect::<Vec<_>>(),
            "one epoch is a permutation"
        );
        assert_ne!(got, (0..500).collect::<Vec<_>>(), "and it is shuffled");
    }
}

#[test]
fn order_is_a_pure_function_of_seed_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let ds = make_dataset(dir.path(), 300);
    let a = epoch_order(&ds, &small(1, 0)).unwrap();
    assert_eq!(a, epoch_order(&ds, &small(1, 0)).unwrap());
    assert_ne!(a, epoch_order(&ds, &small(1, 1)).unwrap(), "epochs differ");
    assert_ne!(a, epoch_order(&ds, &small(2, 0)).unwrap(), "seeds differ");
    let batch = LoaderOptions {
        batch_size: 7,
        io_threads: 3,
        prefetch_bytes: 1,
        ..small(1, 0)
    };
    assert_eq!(
        a,
        epoch_order(&ds, &batch).unwrap(),
        "batching and I/O do not change order"
    );
}

#[test]
fn ranks_get_equal_disjoint_shares_that_cover_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let n = 103u64;
    let ds = make_dataset(dir.path(), n as u32);
    for world in 1..=6u32 {
        let per = n.div_ceil(world as u64);
        let mut count: HashMap<u64, u64> = HashMap::new();
        for rank in 0..world {
            let opts = LoaderOptions {
                rank,
                world_size: world,
                ..small(5, 2)
            };
            let loader = Loader::new(ds.clone(), opts.clone()).unwrap();
            assert_eq!(loader.len(), per);
            let got = ids(loader);
            assert_eq!(got.len() as u64, per, "world {world} rank {rank}");
            assert_eq!(got, epoch_order(&ds, &opts).unwrap());
            for id in got {
                *count.entry(id).or_default() += 1;
            }
        }
        assert_eq!(
            count.len() as u64,
            n,
            "union covers the dataset (world {world})"
        );
        let repeats: u64 = count.values().map(|c| c - 1).sum();
        assert_eq!(repeats, per * world as u64 - n, "only the padding repeats");
    }
}

#[test]
fn resume_continues_with_exactly_the_remaining_samples() {
    let dir = tempfile::tempdir().unwrap();
    let ds = make_dataset(dir.path(), 400);
    for world in [1u32, 3] {
        let opts = LoaderOptions {
            world_size: world,
            rank: world - 1,
            ..small(11, 4)
        };
        let full = ids(Loader::new(ds.clone(), opts.clone()).unwrap());
        let len = full.len() as u64;
        for stop in [0, 1, 17, 48, len / 2, len - 1, len] {
            let mut first = Loader::new(ds.clone(), opts.clone()).unwrap();
            let mut head = Vec::new();
            for _ in 0..stop {
                head.push(first.next().unwrap().unwrap().index);
            }
            let state = first.state();
            assert_eq!(state.samples_consumed, stop);
            drop(first);
            // The state survives serialization.
            let json = serde_json::to_string(&state).unwrap();
            let state: LoaderState = serde_json::from_str(&json).unwrap();
            // Other options (threads, batch) may differ on resume; the seed may not.
            let other = LoaderOptions {
                io_threads: 1,
                batch_size: 5,
                ..opts.clone()
            };
            let reseeded = LoaderOptions {
                seed: 999,
                ..other.clone()
            };
            assert!(Loader::resume(ds.clone(), reseeded, &state).is_err());
            let resumed = Loader::resume(ds.clone(), other, &state).unwrap();
            assert_eq!(resumed.consumed(), stop);
            let tail = ids(resumed);
            head.extend(tail);
            assert_eq!(head, full, "stop at {stop} of {len}, world {world}");
        }
        let past = LoaderState {
            samples_consumed: len + 1,
            ..Loader::new(ds.clone(), opts.clone()).unwrap().state()
        };
        assert!(Loader::resume(ds.clone(), opts.clone(), &past).is_err());
    }
}

#[test]
fn shuffle_modes() {
    let dir = tempfile::tempdir().unwrap();
    let ds = make_dataset(dir.path(), 250);
    let none = LoaderOptions {
        shuffle: Shuffle::None,
        ..small(3, 0)
    };
    assert_eq!(
        ids(Loader::new(ds.clone(), none).unwrap()),
        (0..250).collect::<Vec<_>>()
    );
    let full = LoaderOptions {
        shuffle: Shuffle::Full,
        ..small(3, 0)
    };
    let got = ids(Loader::new(ds.clone(), full.clone()).unwrap());
    assert_eq!(got, epoch_order(&ds, &full).unwrap());
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..250).collect::<Vec<_>>());
}

#[test]
fn batches_and_a_budget_smaller_than_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let ds = make_dataset(dir.path(), 200);
    let opts = LoaderOptions {
        prefetch_bytes: 1,
        batch_size: 64,
        io_threads: 4,
        ..small(8, 1)
    };
    let mut l = Loader::new(ds.clone(), opts.clone()).unwrap();
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    while let Some(b) = l.next_batch() {
        let b = b.unwrap();
        sizes.push(b.len());
        all.extend(b.into_iter().map(|s| s.index));
    }
    assert_eq!(sizes, vec![64, 64, 64, 8]);
    assert_eq!(all, epoch_order(&ds, &opts).unwrap());
}

#[test]
fn samples_outlive_the_loader_and_raw_fields_share_the_read_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let ds = make_dataset(dir.path(), 300);
    // Hold every sample of the epoch (far more than the prefetch budget) past the loader.
    let loader = Loader::new(ds.clone(), small(4, 2)).unwrap();
    let held: Vec<_> = loader.map(|s| s.unwrap()).collect();
    assert_eq!(Arc::strong_count(&ds), 1, "the loader is gone");
    assert_eq!(held.len(), 300);
    let mut compressed = 0;
    for s in &held {
        let (raw, text) = content(s.index as u32);
        assert_eq!(&*s.fields[0].data, raw.as_slice());
        assert_eq!(&*s.fields[1].data, text.as_slice());
        assert_eq!(
            s.fields[0].data.is_view(),
            !raw.is_empty(),
            "a raw record is not copied"
        );
        let stored = ds.get(s.index).unwrap();
        let txt = stored.fields().nth(1).unwrap().unwrap();
        assert_eq!(
            s.fields[1].data.is_view(),
            txt.codec() == Codec::Raw,
            "a compressed record owns its output"
        );
        compressed += usize::from(txt.codec() != Codec::Raw);
    }
    assert!(compressed > 100, "the test wants compressed records");
    // A clone is the same view; dropping the originals keeps it valid.
    let keep = held[17].fields[0].data.clone();
    let want = content(held[17].index as u32).0;
    drop(held);
    assert_eq!(&*keep, want.as_slice());
}

#[test]
fn chunks_of_empty_records_load() {
    // Every record empty: a chunk with no stored bytes is read with no I/O at all.
    let dir = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(
        dir.path(),
        vec![FieldSpec::raw("x"), FieldSpec::zstd("y")],
        WriterOptions::default(),
    )
    .unwrap();
    for i in 0..40u32 {
        w.append(format!("e{i:02}").as_bytes(), None, &[(0, b""), (1, b"")])
            .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    let opts = LoaderOptions {
        chunk_bytes: 1,
        ..small(3, 0)
    };
    let got: Vec<_> = Loader::new(ds.clone(), opts.clone())
        .unwrap()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(
        got.iter().map(|s| s.index).collect::<Vec<_>>(),
        epoch_order(&ds, &opts).unwrap()
    );
    assert!(got
        .iter()
        .all(|s| s.fields.len() == 2 && s.fields.iter().all(|f| f.data.is_empty())));
}

#[test]
fn a_dropped_loader_stops_its_threads() {
    let dir = tempfile::tempdir().unwrap();
    let ds = make_dataset(dir.path(), 300);
    let mut l = Loader::new(ds.clone(), small(1, 0)).unwrap();
    l.next().unwrap().unwrap();
    drop(l); // must not hang
    assert_eq!(Arc::strong_count(&ds), 1, "threads released the dataset");
}

#[test]
fn empty_dataset_gives_an_empty_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let w = DatasetWriter::create(
        dir.path(),
        vec![FieldSpec::raw("x")],
        WriterOptions::default(),
    )
    .unwrap();
    w.finish(DatasetInfo::default()).unwrap();
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    let mut l = Loader::new(ds, small(0, 0)).unwrap();
    assert_eq!(l.len(), 0);
    assert!(l.next().is_none());
}

#[test]
fn bad_options_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ds = make_dataset(dir.path(), 10);
    for bad in [
        LoaderOptions {
            rank: 2,
            world_size: 2,
            ..small(0, 0)
        },
        LoaderOptions {
            world_size: 0,
            ..small(0, 0)
        },
        LoaderOptions {
            batch_size: 0,
            ..small(0, 0)
        },
        LoaderOptions {
            chunk_bytes: 0,
            ..small(0, 0)
        },
    ] {
        assert!(Loader::new(ds.clone(), bad).is_err());
    }
    // io_threads 0 is not an error: it is automatic (8 here, a local dataset).
    let auto = LoaderOptions {
        io_threads: 0,
        ..small(0, 0)
    };
    assert_eq!(
        auto.io_threads_for(&ds),
        shardpack::loader::DEFAULT_IO_THREADS
    );
    assert_eq!(
        Loader::new(ds.clone(), auto).unwrap().count(),
        ds.len() as usize
    );
}

#[test]
fn a_corrupt_record_reaches_the_consumer_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ds = make_dataset(dir.path(), 120);
    // Corrupt the first stored byte of sample 5's raw field on disk.
    let s = ds.get(5).unwrap();
    let f = s.fields().next().unwrap().unwrap();
    assert!(f.raw_len() > 0);
    let (path, offset) = (s.shard().path().to_path_buf(), f.offset());
    drop(ds);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    let mut errors = 0;
    let mut ok = 0;
    for s in Loader::new(ds, small(2, 0)).unwrap() {
        match s {
            Ok(s) => {
                assert_ne!(s.index, 5, "the corrupt sample is never handed out");
                ok += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("checksum mismatch"), "{msg}");
                assert!(msg.contains("k00005"), "{msg}");
                errors += 1;
            }
        }
    }
    assert_eq!((errors, ok), (1, 119));
}

/// Packs 40 classes x 40 samples of ~1 KiB with the default pack-time shuffle or without it.
fn packed_classes(src: &Path, out: &Path, shuffle: bool) -> Arc<Dataset> {
    if !src.exists() {
        for c in 0..40 {
            let d = src.join(format!("class{c:02}"));
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..40u32 {
                let bytes: Vec<u8> = (0..1000u32).map(|k| (k * 31 + i * 7 + c) as u8).collect();
                std::fs::write(d.join(format!("{i:04}.bin")), bytes).unwrap();
            }
        }
    }
    let opts = shardpack::compile::PackOptions {
        shuffle_seed: if shuffle {
            Some(shardpack::compile::DEFAULT_SHUFFLE_SEED)
        } else {
            None
        },
        compress: shardpack::codec::Policy::None,
        ..Default::default()
    };
    shardpack::compile::pack(src, out, &opts, &shardpack::compile::NoProgress).unwrap();
    Arc::new(Dataset::open(out).unwrap())
}

#[test]
fn chunked_shuffle_matches_a_full_shuffle_on_a_shuffled_pack_and_not_on_a_sorted_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let opts = LoaderOptions {
        batch_size: 32,
        // Small chunks relative to the dataset, so chunking matters as it does at scale
        // (4 MiB chunks of a multi-GB dataset).
        chunk_bytes: 16 << 10,
        window_chunks: 16,
        // The uniform in-window shuffle (the default before the interleaved order).
        shuffle: Shuffle::Chunked,
        ..LoaderOptions::default()
    };
    for (shuffled, out) in [(true, "shuffled"), (false, "sorted")] {
        let ds = packed_classes(&src, &dir.path().join(out), shuffled);
        let labels: Vec<Option<u32>> = (0..ds.len()).map(|i| ds.get(i).unwrap().label()).collect();
        let chunked = shardpack::quality::score(&epoch_order(&ds, &opts).unwrap(), &labels, 32);
        let full_opts = LoaderOptions {
            shuffle: Shuffle::Full,
            ..opts.clone()
        };
        let full = shardpack::quality::score(&epoch_order(&ds, &full_opts).unwrap(), &labels, 32);
        // A sampled full shuffle agrees with the exact expectation.
        assert!((full.diversity_ratio - 1.0).abs() < 0.05, "{full:?}");
        let rel = chunked.labels_per_batch / full.labels_per_batch;
        eprintln!(
            "{out}: chunked {:.2}, full {:.2}, rel {rel:.3}",
            chunked.labels_per_batch, full.labels_per_batch
        );
        if shuffled {
            assert!(
                (rel - 1.0).abs() <= 0.05,
                "shuffled pack: chunked {chunked:?} vs full {full:?}"
            );
        } else {
            assert!(
                rel < 0.7,
                "class-sorted pack must score poorly: {chunked:?} vs {full:?}"
            );
        }
    }
}

//! Shuffle quality of the chunked order on class-sorted storage (issue 10 item 5), measured
//! from the plan alone (no I/O): labels per batch against a full shuffle's, for chunk sizes
//! and windows. `cargo test -p shardpack --test loader_quality -- --nocapture` prints the
//! table; the assertions hold the trends the docs rely on.

mod common;

use std::sync::Arc;

use shardpack::loader::{epoch_order, LoaderOptions, Shuffle};
use shardpack::quality::score;
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

/// 100 classes x 200 samples of 1 KiB stored class after class (as `pack --no-shuffle` or a
/// sorted source gives), 4 MiB shards.
fn sorted_dataset(dir: &std::path::Path) -> Arc<Dataset> {
    sorted(dir, 100, 200, 1000)
}

/// `classes` x `per_class` samples of `bytes` bytes stored class after class, 4 MiB shards.
fn sorted(dir: &std::path::Path, classes: u32, per_class: u32, bytes: usize) -> Arc<Dataset> {
    let opts = WriterOptions {
        shard_size: 4 << 20,
        ..WriterOptions::default()
    };
    let mut w = DatasetWriter::create(dir, vec![FieldSpec::raw("bin")], opts).unwrap();
    let data = vec![0u8; bytes];
    for c in 0..classes {
        for i in 0..per_class {
            w.append(format!("c{c:03}/{i:04}").as_bytes(), Some(c), &[(0, &data)])
                .unwrap();
        }
    }
    w.finish(DatasetInfo::default()).unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

#[test]
fn label_diversity_on_sorted_storage_grows_with_chunks_per_window() {
    let dir = common::tempdir();
    let ds = sorted_dataset(dir.path());
    let labels: Vec<Option<u32>> = (0..ds.len()).map(|i| ds.get(i).unwrap().label()).collect();
    let batch = 256;
    // Samples per chunk here ~ chunk_bytes / 1 KiB: 256 KiB is the shape of a 4 MiB chunk of
    // 16 KiB images.
    println!("chunk_bytes window_chunks ~samples/chunk ~window_samples labels/batch ratio");
    let mut ratios = Vec::new();
    for (chunk, window) in [
        (256 << 10, 16),
        (64 << 10, 64),
        (16 << 10, 256),
        (256 << 10, 64),
        (64 << 10, 256),
    ] {
        let o = LoaderOptions {
            chunk_bytes: chunk,
            window_chunks: window,
            batch_size: batch,
            shuffle: Shuffle::Chunked,
            ..LoaderOptions::default()
        };
        let q = shardpack::quality::score(&epoch_order(&ds, &o).unwrap(), &labels, batch as u64);
        let per_chunk = chunk / 1024;
        println!(
            "{chunk:>11} {window:>13} {per_chunk:>14} {:>15} {:>12.1} {:>5.2}",
            per_chunk * window as u64,
            q.labels_per_batch,
            q.diversity_ratio
        );
        ratios.push(q.diversity_ratio);
    }
    let full = LoaderOptions {
        shuffle: Shuffle::Full,
        ..LoaderOptions::default()
    };
    let q = shardpack::quality::score(&epoch_order(&ds, &full).unwrap(), &labels, batch as u64);
    println!(
        "full shuffle: {:.1} labels per batch ({:.2})",
        q.labels_per_batch, q.diversity_ratio
    );
    // The same window bytes spread over more, smaller chunks mix more classes.
    assert!(ratios[0] < ratios[1] && ratios[1] < ratios[2], "{ratios:?}");
    assert!(
        ratios[0] < 0.5,
        "the default shape on sorted storage is poor: {ratios:?}"
    );
    assert!(
        ratios[2] > 0.85,
        "256 chunks of a few samples per window: {ratios:?}"
    );
}

/// A shard's stored bytes per sample, as the plan computes it (file size over samples).
fn avg_bytes(ds: &Dataset) -> u64 {
    let m = &ds.manifest().shards[0];
    m.bytes / m.samples
}

/// Labels per batch of `o`'s order, as a share of a full shuffle's.
fn ratio(ds: &Dataset, labels: &[Option<u32>], o: &LoaderOptions) -> f64 {
    score(&epoch_order(ds, o).unwrap(), labels, o.batch_size as u64).diversity_ratio
}

#[test]
fn the_default_interleaved_order_mixes_sorted_storage_like_a_full_shuffle() {
    // 100 classes x 400 samples stored class after class. Chunk sizes are given in samples
    // per chunk (chunk_bytes = samples x the stored bytes per sample), so that 1 KiB samples
    // stand for larger ones: 16 per chunk is the default 256 KiB chunk of 16 KiB images.
    let dir = common::tempdir();
    let ds = sorted(dir.path(), 100, 400, 1000);
    let labels: Vec<Option<u32>> = (0..ds.len()).map(|i| Some((i / 400) as u32)).collect();
    let avg = avg_bytes(&ds);
    let d = LoaderOptions::default();
    assert_eq!(d.shuffle, Shuffle::Interleaved);
    println!("samples/chunk window_chunks shuffle ratio (world 1) ratio (rank 3 of 8)");
    let mut got = Vec::new();
    for (per_chunk, window) in [(16, 256), (16, 64), (64, 256), (4, 256)] {
        for shuffle in [Shuffle::Chunked, Shuffle::Interleaved] {
            let o = LoaderOptions {
                chunk_bytes: per_chunk * avg,
                window_chunks: window,
                shuffle,
                ..d.clone()
            };
            let r1 = ratio(&ds, &labels, &o);
            let r8 = ratio(
                &ds,
                &labels,
                &LoaderOptions {
                    rank: 3,
                    world_size: 8,
                    ..o.clone()
                },
            );
            println!(
                "{per_chunk:>13} {window:>13} {:>11} {r1:>14.3} {r8:>18.3}",
                format!("{shuffle:?}")
            );
            got.push((per_chunk, window, shuffle, r1, r8));
        }
    }
    let find = |c, w, s| {
        let g = got.iter().find(|g| (g.0, g.1, g.2) == (c, w, s)).unwrap();
        (g.3, g.4)
    };
    // The defaults' shape (256 chunks of 16 samples per window): >= 90% of a full shuffle,
    // on one rank and on a rank of 8.
    let (r1, r8) = find(16, 256, Shuffle::Interleaved);
    assert!(r1 >= 0.9 && r8 >= 0.9, "{got:?}");
    // The same chunks shuffled uniformly in the window do worse.
    let (u1, _) = find(16, 256, Shuffle::Chunked);
    assert!(u1 < r1 - 0.03, "{got:?}");
    // With fewer chunks per window than samples per batch, no order can mix more classes
    // than the window holds.
    let (f1, _) = find(16, 64, Shuffle::Interleaved);
    assert!(f1 < 0.8, "{got:?}");
    // The literal defaults on this dataset of 1 KiB samples (one window holds it all).
    let r = ratio(&ds, &labels, &d);
    assert!(r >= 0.9, "defaults: {r}");
}

/// ImageNet's shape, 1,000 classes x 1,300 samples stored class after class, with chunks of
/// the samples a 1 MiB chunk holds of ~110 KiB images (9): 256 chunks per window (256 MiB of
/// such chunks) give >= 90% of a full shuffle's labels per batch of 256 with the default
/// interleaved order. Ignored by default (1.3 million samples take a while in a debug build):
/// `cargo test -p shardpack --test loader_quality -- --ignored --nocapture`.
#[test]
#[ignore]
fn imagenet_shape_setting_reaches_ninety_percent() {
    let dir = common::tempdir();
    let ds = sorted(dir.path(), 1000, 1300, 16);
    let labels: Vec<Option<u32>> = (0..ds.len()).map(|i| Some((i / 1300) as u32)).collect();
    let avg = avg_bytes(&ds);
    println!("samples/chunk window_chunks shuffle ratio");
    for (per_chunk, window, shuffle, at_least) in [
        (9, 256, Shuffle::Interleaved, Some(0.9)),
        (9, 256, Shuffle::Chunked, None),
        (36, 64, Shuffle::Interleaved, None),
        (2, 256, Shuffle::Interleaved, Some(0.9)),
    ] {
        let o = LoaderOptions {
            chunk_bytes: per_chunk * avg,
            window_chunks: window,
            shuffle,
            ..LoaderOptions::default()
        };
        let r = ratio(&ds, &labels, &o);
        println!(
            "{per_chunk:>13} {window:>13} {:>11} {r:.3}",
            format!("{shuffle:?}")
        );
        if let Some(min) = at_least {
            assert!(r >= min, "{per_chunk} x {window} {shuffle:?}: {r}");
        }
    }
}

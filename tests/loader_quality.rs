//! Shuffle quality of the chunked order on class-sorted storage (issue 10 item 5), measured
//! from the plan alone (no I/O): labels per batch against a full shuffle's, for chunk sizes
//! and windows. `cargo test -p shardpack --test loader_quality -- --nocapture` prints the
//! table; the assertions hold the trends the docs rely on.

mod common;

use std::sync::Arc;

use shardpack::loader::{epoch_order, LoaderOptions, Shuffle};
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

/// 100 classes x 200 samples of 1 KiB stored class after class (as `pack --no-shuffle` or a
/// sorted source gives), 4 MiB shards.
fn sorted_dataset(dir: &std::path::Path) -> Arc<Dataset> {
    let opts = WriterOptions {
        shard_size: 4 << 20,
        ..WriterOptions::default()
    };
    let mut w = DatasetWriter::create(dir, vec![FieldSpec::raw("bin")], opts).unwrap();
    let data = vec![0u8; 1000];
    for c in 0..100u32 {
        for i in 0..200u32 {
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

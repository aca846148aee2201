//! Loader v2: back-to-back epochs. With `read_next_epoch` the next epoch's loader starts
//! reading before the current epoch ends, and `next_epoch` hands it over.

mod common;

use std::sync::Arc;

use shardpack::loader::{epoch_order, DirectIo, Loader, LoaderOptions};
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

fn make(dir: &std::path::Path, n: u32) -> Arc<Dataset> {
    let opts = WriterOptions {
        shard_size: 16 << 10,
        ..WriterOptions::default()
    };
    let mut w = DatasetWriter::create(dir, vec![FieldSpec::raw("bin")], opts).unwrap();
    for i in 0..n {
        let data: Vec<u8> = (0..200u32).map(|k| (k ^ i) as u8).collect();
        w.append(format!("s{i:05}").as_bytes(), None, &[(0, &data)])
            .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

#[test]
fn next_epoch_starts_reading_before_the_current_one_ends() {
    let dir = common::tempdir();
    let ds = make(dir.path(), 600);
    // A window of 1000 chunks holds a whole epoch: its last window is taken with the first
    // sample, so the next epoch must be reading when one sample is left. With windows of 2
    // chunks it starts when the last piece is claimed (timing), at the latest with the last
    // window; checked at the end of the epoch.
    for (read_next, rank, world, window) in [
        (true, 0, 1, 1000),
        (true, 2, 3, 1000),
        (true, 1, 2, 2),
        (false, 1, 2, 1000),
        (false, 0, 1, 2),
    ] {
        let opts = LoaderOptions {
            seed: 4,
            epoch: 5,
            rank,
            world_size: world,
            batch_size: 10,
            chunk_bytes: 2 << 10,
            window_chunks: window,
            io_threads: 2,
            prefetch_bytes: 16 << 10,
            direct_io: DirectIo::Off,
            read_next_epoch: read_next,
            ..LoaderOptions::default()
        };
        let mut loader = Loader::new(ds.clone(), opts.clone()).unwrap();
        for e in 5..9u64 {
            let want = epoch_order(
                &ds,
                &LoaderOptions {
                    epoch: e,
                    ..opts.clone()
                },
            )
            .unwrap();
            let mut got = Vec::new();
            while got.len() + 1 < want.len() {
                got.push(loader.next().unwrap().unwrap().index);
            }
            // One sample left: with read_next_epoch the next epoch is already reading.
            if window == 1000 || !read_next {
                assert_eq!(loader.next_epoch_started(), read_next, "epoch {e}");
            }
            got.extend(loader.by_ref().map(|s| s.unwrap().index));
            assert_eq!(loader.next_epoch_started(), read_next, "epoch {e}");
            assert_eq!(got, want, "epoch {e}, read_next {read_next}");
            assert_eq!(loader.state().epoch, e);
            loader = loader.next_epoch().unwrap();
        }
        assert_eq!(loader.state().epoch, 9);
        assert_eq!(loader.consumed(), 0);
    }
}

#[test]
fn dropping_a_loader_with_a_started_next_epoch_does_not_hang() {
    let dir = common::tempdir();
    let ds = make(dir.path(), 300);
    let opts = LoaderOptions {
        chunk_bytes: 2 << 10,
        window_chunks: 2,
        io_threads: 2,
        direct_io: DirectIo::Off,
        read_next_epoch: true,
        ..LoaderOptions::default()
    };
    let mut l = Loader::new(ds.clone(), opts).unwrap();
    let n = l.len();
    for _ in 0..n {
        l.next().unwrap().unwrap();
    }
    assert!(l.next().is_none());
    assert!(l.next_epoch_started());
    drop(l);
    assert_eq!(
        Arc::strong_count(&ds),
        1,
        "both loaders released the dataset"
    );
}

//! The defaults changed (interleaved windows of 256 chunks of 256 KiB): a state saved with the
//! old defaults (uniform in-window shuffle, 16 chunks of 4 MiB) still resumes exactly with the
//! options it records, and is refused, naming the field, with the new defaults.

mod common;

use std::sync::Arc;

use shardpack::loader::{
    epoch_order, epoch_order_from, Loader, LoaderOptions, LoaderState, Shuffle,
};
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

#[test]
fn old_default_states_resume_with_their_options_or_are_refused_clearly() {
    let dir = common::tempdir();
    let mut w = DatasetWriter::create(
        dir.path(),
        vec![FieldSpec::raw("bin")],
        WriterOptions {
            shard_size: 1 << 20,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for i in 0..3000u32 {
        w.append(format!("{i:05}").as_bytes(), None, &[(0, &[i as u8; 3000])])
            .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    let d = LoaderOptions::default();
    assert_eq!(
        (d.shuffle, d.chunk_bytes, d.window_chunks),
        (Shuffle::Interleaved, 256 << 10, 256)
    );
    let old = LoaderOptions {
        shuffle: Shuffle::Chunked,
        chunk_bytes: 4 << 20,
        window_chunks: 16,
        batch_size: 100,
        ..d.clone()
    };
    let fp = shardpack::loader::fingerprint(&ds);
    // The JSON a loader with the old defaults saved after 1,000 samples.
    let json = format!(
        r#"{{"version":2,"dataset":"{fp}","seed":0,"epoch":0,"rank":0,"world_size":1,
            "samples_consumed":1000,"shuffle":"chunked","chunk_bytes":4194304,
            "window_chunks":16,"drop_last":false,"segments":[]}}"#
    );
    let st: LoaderState = serde_json::from_str(&json).unwrap();
    let full = epoch_order(&ds, &old).unwrap();
    let rest: Vec<u64> = Loader::resume(ds.clone(), old.clone(), &st)
        .unwrap()
        .map(|s| s.unwrap().index)
        .collect();
    assert_eq!(rest, full[1000..]);
    assert_eq!(epoch_order_from(&ds, &old, &st).unwrap(), full[1000..]);
    let err = Loader::resume(ds.clone(), d.clone(), &st)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shuffle=chunked") && err.contains("shuffle=interleaved"),
        "{err}"
    );
    // The new default order is another order of the same samples.
    let new = epoch_order(&ds, &d).unwrap();
    assert_ne!(new, full);
    let (mut a, mut b) = (new, full);
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
}

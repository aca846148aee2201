//! The synthetic-dataset generator of `benches/open_large.rs` (small N here): what it writes
//! passes `verify`, and a lazy open serves every sample through `get` and `locate` with the
//! right bytes, checking only the indexes of the shards it touches.

#[path = "../benches/synth/mod.rs"]
mod synth;

use shardpack::reader::{IndexCheck, OpenOptions};
use shardpack::{verify_dir, Dataset};

#[test]
fn generated_dataset_verifies_and_reads_lazily() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synth.spk");
    let (n, shards) = (20_011u64, 41u64); // over 32 shards: footers read on threads
    let m = synth::generate(&dir, n, shards, 2).unwrap();
    assert_eq!((m.samples, m.shards.len() as u64), (n, shards));
    let r = verify_dir(&dir).unwrap();
    assert!(r.is_ok(), "{:?}", &r.problems[..r.problems.len().min(3)]);
    assert_eq!(r.samples, n);

    let ds = Dataset::open_checked(&dir, &OpenOptions::default(), IndexCheck::FirstUse).unwrap();
    assert!((0..shards as usize).all(|s| !ds.index_checked(s)));
    let s = ds.get(n - 1).unwrap();
    assert_eq!(s.key(), synth::expected_key(n - 1).as_slice());
    // Only the last shard's index was read.
    assert!(ds.index_checked(shards as usize - 1));
    assert!((0..shards as usize - 1).all(|s| !ds.index_checked(s)));
    for i in (0..n).step_by(97) {
        let (shard, local) = ds.locate(i).unwrap();
        assert_eq!(ds.manifest().shards[shard].first_sample + local, i);
        let s = ds.get(i).unwrap();
        assert_eq!(s.key(), synth::expected_key(i).as_slice());
        let f = s.field(b"bin").unwrap().unwrap();
        assert_eq!(&*f.data().unwrap(), &synth::expected_record(i)[..]);
    }
    let key = synth::expected_key(12_345);
    assert_eq!(ds.get_by_key(&key).unwrap().unwrap().index(), 12_345);
    assert!(ds.get(n).is_err() && ds.locate(n).is_err());
}

//! Arbitrary bytes as `manifest.json` of a directory holding valid shards (the `Main` dataset
//! of `support/src/build.rs`, built once per process): `Manifest::parse`, a serialization
//! round trip, then `Dataset::open`, every read path, `Dataset::verify` and `verify_dir`.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shardpack::manifest::MANIFEST_FILE;
use shardpack::Manifest;
use shardpack_fuzz_support::build::{build_dataset, Kind};
use shardpack_fuzz_support::{read, scratch};

fn dataset_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch::subdir("dataset");
        build_dataset(&dir, Kind::Main).expect("build the fuzz dataset");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dataset_dir();
    let path = dir.join(MANIFEST_FILE);
    let Ok(m) = Manifest::parse(data, &path) else {
        // Dataset::open and verify_dir read the manifest through this same function and would
        // stop at the same error.
        return;
    };
    let back = Manifest::parse(&m.to_json(), &path).expect("a parsed manifest re-parses");
    assert_eq!(back, m, "manifest serialization does not round-trip");
    std::fs::write(&path, data).expect("write manifest.json");
    read::dataset(dir);
});

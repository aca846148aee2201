//! Structure-aware: a valid shard (built once per process with the real writer) edited by a
//! program the fuzz input encodes (bit flips, truncation, extension, 4096-block swaps, header,
//! footer and index fields set or nudged, byte writes, inserts, deletes), with the checksums
//! optionally recomputed so the edit reaches the checks behind them (`support/src/mutate.rs`).
//!
//! The result gets the same full read as `shard_bytes`. When `ShardBytes::new` accepts it, it
//! also replaces its shard in a copy of its dataset (with the manifest entry updated to match
//! if the program asks for it) and is read through the reader: `Shard::open` (memory map,
//! `Field::data`, `read_into`), then `Dataset::open`, every read path, `Dataset::verify` and
//! `verify_dir`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shardpack::format::ShardBytes;
use shardpack::manifest::{Hash64, Manifest, MANIFEST_FILE};
use shardpack_fuzz_support::build::all_datasets;
use shardpack_fuzz_support::mutate::{Base, Fixups, Program};
use shardpack_fuzz_support::{read, scratch};
use xxhash_rust::xxh3::xxh3_64;

/// One base shard and the dataset directory it is replaced in. Each base has a directory of
/// its own holding its dataset, so the other shards there are always the valid originals.
struct Slot {
    base: Base,
    dir: PathBuf,
    shard: usize,
    manifest: Manifest,
}

fn slots() -> &'static [Slot] {
    static SLOTS: OnceLock<Vec<Slot>> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let mut slots = Vec::new();
        for built in all_datasets() {
            for (k, bytes) in built.shards.iter().enumerate() {
                let dir = scratch::subdir(&format!("{}-{k}", built.kind.name()));
                for (meta, b) in built.manifest.shards.iter().zip(&built.shards) {
                    std::fs::write(dir.join(&meta.file), b).expect("write shard");
                }
                std::fs::write(dir.join(MANIFEST_FILE), built.manifest.to_json())
                    .expect("write manifest");
                slots.push(Slot {
                    base: Base::new(bytes.clone()),
                    dir,
                    shard: k,
                    manifest: built.manifest.clone(),
                });
            }
        }
        slots
    })
}

fuzz_target!(|data: &[u8]| {
    let slots = slots();
    let program = Program::parse(data);
    let slot = &slots[program.base as usize % slots.len()];
    let bytes = slot.base.apply(&program);
    let Ok(sb) = ShardBytes::new(&bytes[..]) else {
        return;
    };
    read::read_shard_bytes(&sb);

    let mut manifest = slot.manifest.clone();
    if program.fixups.has(Fixups::MANIFEST) {
        let meta = &mut manifest.shards[slot.shard];
        meta.bytes = bytes.len() as u64;
        meta.xxh3 = Hash64(xxh3_64(&bytes));
        meta.index_xxh3 = Hash64(sb.footer().index_checksum);
    }
    let path = slot.dir.join(&manifest.shards[slot.shard].file);
    // A new file rather than an overwrite: truncating a file in place is slow.
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, &bytes).expect("write the mutated shard");
    std::fs::write(slot.dir.join(MANIFEST_FILE), manifest.to_json()).expect("write manifest");
    read::shard_file(&path);
    read::dataset(&slot.dir);
});

//! Arbitrary bytes as a shard file: `ShardBytes::new`, then, if it accepts them, every sample,
//! key, record, decode, key lookup and the structure check (see `support/src/read.rs` for the
//! invariants asserted).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardpack_fuzz_support::read::shard_bytes(data);
});

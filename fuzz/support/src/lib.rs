//! Code shared by the shardpack fuzz targets (`fuzz/fuzz_targets/`) and the corpus seeder
//! (`src/bin/seed.rs`).
//!
//! - [`build`]: small, deterministic datasets made with the real writer, the valid starting
//!   points of the `manifest` and `shard_mutate` targets.
//! - [`read`]: "read everything" drivers that exercise every reader entry point on untrusted
//!   bytes and assert the invariants that must hold whatever the bytes are.
//! - [`mutate`]: the structure-aware mutation language of `shard_mutate`.
//! - [`record_input`]: the byte encoding of a `record_decode` input.
//! - [`scratch`]: a per-process scratch directory removed at exit.

pub mod build;
pub mod mutate;
pub mod read;
pub mod record_input;
pub mod scratch;

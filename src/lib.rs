//! shardpack: a packed, indexed, memory-mappable shard format for deep-learning datasets.
//!
//! Training reads millions of small files in a fresh random order every epoch; storage answers
//! that slowly. shardpack compiles a file tree once into a few large shard files (aligned
//! records, per-record xxh3 checksums, optional zstd with trained dictionaries, a fixed-width
//! index used in place from a memory map) and reads them back with large sequential reads.
//!
//! - [`format`](mod@format): the byte layout (no I/O), mirroring `format-spec/`.
//! - [`writer`]: samples in, shards and a manifest out, atomically.
//! - [`reader`]: [`Dataset::open`], [`Dataset::get`], [`Dataset::get_by_key`],
//!   [`Dataset::verify`].
//! - [`loader`]: [`Loader`], shuffled, partitioned, resumable epochs with large sequential
//!   reads on background threads; [`quality`] scores an order's shuffle.
//! - [`compile`] (feature `compile`, on by default): walks a folder tree and packs it.
//! - `table` (feature `arrow`): the sample index as an Arrow table (`shardpack index`).
//! - [`compile`] (feature `compile`, on by default): packs a folder tree, WebDataset tar
//!   shards or an MDS dataset; [`source`] holds those sources.
//!
//! A data loader that only reads can depend on `shardpack` with `default-features = false`:
//! it then links no directory-walking or thread-pool crate.
//!
//! ```
//! use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
//! use shardpack::Dataset;
//!
//! # fn main() -> shardpack::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let fields = vec![FieldSpec::raw("jpg"), FieldSpec::zstd("txt")];
//! let mut w = DatasetWriter::create(dir.path(), fields, WriterOptions::default())?;
//! w.append(b"cat/0001", Some(0), &[(0, b"\xff\xd8 jpeg bytes"), (1, b"a cat")])?;
//! w.append(b"dog/0001", Some(1), &[(1, b"a dog")])?;
//! w.finish(DatasetInfo::default())?;
//!
//! let ds = Dataset::open(dir.path())?;
//! assert_eq!(ds.len(), 2);
//! let s = ds.get_by_key(b"dog/0001")?.expect("present");
//! assert_eq!(s.label(), Some(1));
//! assert_eq!(&*s.field(b"txt")?.unwrap().data()?, b"a dog");
//! assert!(ds.verify().is_ok());
//! # Ok(())
//! # }
//! ```

pub mod codec;
#[cfg(feature = "compile")]
pub mod compile;
pub mod error;
pub mod format;
mod hash;
pub mod loader;
pub mod manifest;
pub mod metadata;
mod pool;
pub mod quality;
pub mod reader;
pub mod rng;
#[cfg(feature = "compile")]
pub mod source;
pub mod storage;
pub mod sys;
#[cfg(feature = "arrow")]
pub mod table;
pub mod writer;

pub use error::{Error, Result};
pub use loader::{Loader, LoaderOptions, LoaderState};
pub use manifest::Manifest;
pub use reader::{verify_dir, Dataset, Field, Sample, VerifyReport};

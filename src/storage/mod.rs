//! Where shard bytes come from: the "read this byte range" seam of the design (DESIGN.md,
//! *Storage*). A local file (positioned reads, `O_DIRECT` when asked) and, later, an object in
//! a store (ranged GETs behind a local cache) both answer [`ReadAt::read_at`]; the reader's
//! open (each shard's header and footer) and the Loader's piece reads (one large aligned read
//! per piece) ask for ranges through it, so a remote backend reuses every check, the order and
//! the memory budget of the local path.
//!
//! The memory-mapped access of [`crate::Dataset::get`] and of the index checks is the local
//! backend's fast path and stays outside this trait; a remote backend would serve a shard's
//! index as one range read at its first use (the reader already reads it only then, see
//! [`crate::reader::IndexCheck`]).
//!
//! No new dependencies: the local backend is [`std::fs::File`] itself. Datasets given as URLs
//! (`s3://bucket/prefix`, `http(s)://host/path`) are read by `storage::remote` (cargo feature
//! `remote`: object_store and tokio), which answers the reader through its `DatasetSource` trait.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

#[cfg(feature = "remote")]
pub mod remote;
#[cfg(feature = "remote")]
pub mod upload;

/// The URL in `dir` when it names a dataset by URL (`s3://`, `http://`, `https://`,
/// `file://`), `None` for a plain path.
pub fn url_of(dir: &Path) -> Option<&str> {
    let s = dir.to_str()?;
    ["s3://", "http://", "https://", "file://"]
        .iter()
        .any(|p| s.len() > p.len() && s[..p.len()].eq_ignore_ascii_case(p))
        .then_some(s)
}

/// A dataset that is not a local directory, as the reader sees it (implemented by
/// [`remote`]): the shards' headers and footers fetched at open, a local file per shard
/// that memory maps (a cached copy, or a sparse file holding the header and index), and
/// range readers for the Loader.
pub(crate) trait DatasetSource: Send + Sync + fmt::Debug {
    /// Shard `i`'s first and last bytes (header and footer), fetched at open.
    fn footer_object(&self, i: usize) -> io::Result<Box<dyn ReadAt>>;
    /// A local file of shard `i`'s full length to map, and the filler that fetches record
    /// bytes into it when it is sparse (streaming).
    fn local_shard(&self, i: usize) -> crate::Result<(File, Option<Arc<dyn Fill>>)>;
    /// The Loader's reader of shard `i`'s ranges.
    fn range_reader(&self, i: usize) -> crate::Result<Box<dyn ReadAt>>;
    /// Requests made so far.
    fn requests(&self) -> u64;
    /// The read mode, for people.
    fn describe(&self) -> String;
    /// Whether the Loader's reads are requests over the link (stream mode), not local reads.
    fn streams(&self) -> bool;
    /// Makes `shards` ready before they are opened one after another (cache mode: downloads
    /// those not cached yet, several at a time). A failure is left to that open, which
    /// reports it.
    fn prepare(&self, shards: &[usize]) {
        let _ = shards;
    }
    /// The options it was opened with, the cache directory resolved (what a copy reopened in
    /// another process needs to read it the same way).
    #[cfg(feature = "remote")]
    fn options(&self) -> remote::RemoteOptions;
}

/// Fetches a byte range of a shard into its sparse local copy before it is read.
pub(crate) trait Fill: Send + Sync + fmt::Debug {
    /// Makes bytes `start..end` of the local copy hold the shard's bytes.
    fn fill(&self, start: u64, end: u64) -> io::Result<()>;
}

/// A shared reader is a reader.
impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
}

/// An immutable object whose byte ranges can be read: a shard file, or a shard in a store.
/// Implementations must be safe to share between threads (the Loader's I/O threads read
/// ranges of the same shard concurrently).
pub trait ReadAt: Send + Sync + fmt::Debug {
    /// The object's length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// `true` for an empty object.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fills `buf` with the bytes from `offset`, looping over short reads; returns how many
    /// were read, fewer than `buf.len()` only where the object ends. For a local file opened
    /// for direct I/O, `offset`, `buf.len()` and `buf`'s address must be multiples of
    /// [`crate::sys::DIRECT_ALIGN`].
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Fills `buf` exactly from `offset`; an object that ends first is an `UnexpectedEof`
    /// error saying where.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.read_at(buf, offset)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the object ends at byte {} before the end of the range {}..{}",
                    offset + n as u64,
                    offset,
                    offset + buf.len() as u64
                ),
            ));
        }
        Ok(())
    }
}

/// The local backend: positioned reads (`pread`) of a file, which may have been opened for
/// direct I/O ([`open_local`]).
impl ReadAt for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        crate::sys::read_full_at(self, buf, offset)
    }
}

/// Opens a local shard file for range reads, bypassing the page cache when `direct` is set
/// and the filesystem allows it; returns the file and whether direct I/O is in effect
/// ([`crate::sys::open_read`]).
pub fn open_local(path: &Path, direct: bool) -> io::Result<(File, bool)> {
    crate::sys::open_read(path, direct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_serves_ranges_and_says_where_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (f, _) = open_local(&p, false).unwrap();
        let obj: &dyn ReadAt = &f;
        assert_eq!(obj.len().unwrap(), 10_000);
        assert!(!obj.is_empty().unwrap());
        let mut buf = [0u8; 100];
        obj.read_exact_at(&mut buf, 9_000).unwrap();
        assert_eq!(&buf[..], &data[9_000..9_100]);
        assert_eq!(obj.read_at(&mut buf, 9_950).unwrap(), 50);
        let e = obj.read_exact_at(&mut buf, 9_950).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("ends at byte 10000"), "{e}");
    }
}

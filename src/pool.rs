//! Recycled read buffers and the zero-copy byte views the loader hands out.
//!
//! The loader reads each chunk with one large aligned read into a [`PooledBuf`]. A raw
//! (uncompressed) record is handed to the consumer as a [`SampleBytes`] view into that buffer,
//! so the bytes read from the device are never copied. When the last view into a buffer is
//! dropped, the buffer goes back to its [`BufPool`] and the next chunk is read into memory that
//! is already mapped: on the machines shardpack targets, touching fresh memory (page faults)
//! costs more than reading it from the device.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use crate::sys::AlignedBuf;

/// Free aligned buffers, kept for reuse up to a count.
#[derive(Debug)]
pub(crate) struct BufPool {
    free: Mutex<Free>,
    keep: usize,
}

#[derive(Debug, Default)]
struct Free {
    bufs: Vec<AlignedBuf>,
    /// Set when the owner is gone: buffers coming back are freed, not kept.
    closed: bool,
}

impl BufPool {
    /// A pool that keeps at most `keep` free buffers.
    pub(crate) fn new(keep: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            free: Mutex::new(Free::default()),
            keep,
        })
    }

    /// Frees the idle buffers and stops keeping returned ones, so samples that outlive their
    /// loader hold only their own buffers.
    pub(crate) fn close(&self) {
        let mut free = self.free.lock().expect("buffer pool lock");
        free.closed = true;
        free.bufs = Vec::new();
    }

    /// An empty buffer that holds no memory (for a piece with nothing stored).
    pub(crate) fn empty(self: &Arc<Self>) -> PooledBuf {
        PooledBuf {
            buf: AlignedBuf::new(),
            pool: self.clone(),
        }
    }

    /// A buffer of at least `len` bytes of capacity if one is free (the smallest such), else
    /// any free buffer (it grows on use), else a new one.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let buf = {
            let free = &mut self.free.lock().expect("buffer pool lock").bufs;
            let fit = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            match fit {
                Some(i) => free.swap_remove(i),
                None => free.pop().unwrap_or_default(),
            }
        };
        PooledBuf {
            buf,
            pool: self.clone(),
        }
    }

    fn give_back(&self, buf: AlignedBuf) {
        if buf.capacity() == 0 {
            return;
        }
        let mut free = self.free.lock().expect("buffer pool lock");
        if free.closed {
            return;
        }
        let free = &mut free.bufs;
        if free.len() < self.keep {
            free.push(buf);
        } else if let Some(small) = free.iter_mut().min_by_key(|b| b.capacity()) {
            // Full: keep the larger of the two, so the pool drifts towards buffers that fit.
            if small.capacity() < buf.capacity() {
                *small = buf;
            }
        }
    }

    #[cfg(test)]
    fn free_count(&self) -> usize {
        self.free.lock().unwrap().bufs.len()
    }
}

/// An aligned buffer borrowed from a [`BufPool`]; it returns there when dropped.
#[derive(Debug)]
pub(crate) struct PooledBuf {
    buf: AlignedBuf,
    pool: Arc<BufPool>,
}

impl PooledBuf {
    pub(crate) fn buf(&self) -> &AlignedBuf {
        &self.buf
    }

    pub(crate) fn buf_mut(&mut self) -> &mut AlignedBuf {
        &mut self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

/// The bytes of one field of a loaded sample. Dereferences to `[u8]`.
///
/// A raw record is a view into the buffer its chunk was read into (no copy); a compressed
/// record owns its decompressed bytes. Cloning a view is cheap (a reference count).
///
/// A view keeps its whole chunk buffer (a few MiB) alive and out of the loader's reuse until
/// it is dropped. Drop samples once a step is done with them, or copy out (`to_vec()`) the
/// few that must be kept longer.
#[derive(Clone)]
pub struct SampleBytes(Repr);

#[derive(Clone)]
enum Repr {
    View {
        buf: Arc<PooledBuf>,
        start: usize,
        len: usize,
    },
    Owned(Vec<u8>),
}

impl SampleBytes {
    /// A view of `buf.as_slice()[start..start + len]`; the caller has checked the range.
    pub(crate) fn view(buf: Arc<PooledBuf>, start: usize, len: usize) -> SampleBytes {
        debug_assert!(start + len <= buf.buf().as_slice().len());
        SampleBytes(Repr::View { buf, start, len })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::View { buf, start, len } => &buf.buf().as_slice()[*start..*start + *len],
            Repr::Owned(v) => v,
        }
    }

    /// Whether these bytes share the loader's read buffer (`true` for raw records).
    pub fn is_view(&self) -> bool {
        matches!(self.0, Repr::View { .. })
    }
}

impl From<Vec<u8>> for SampleBytes {
    fn from(v: Vec<u8>) -> SampleBytes {
        SampleBytes(Repr::Owned(v))
    }
}

impl Deref for SampleBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for SampleBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for SampleBytes {
    fn eq(&self, other: &SampleBytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SampleBytes {}

impl PartialEq<[u8]> for SampleBytes {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<&[u8]> for SampleBytes {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_slice() == *other
    }
}

impl Hash for SampleBytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl From<SampleBytes> for Vec<u8> {
    fn from(b: SampleBytes) -> Vec<u8> {
        match b.0 {
            Repr::Owned(v) => v,
            Repr::View { .. } => b.as_slice().to_vec(),
        }
    }
}

impl fmt::Debug for SampleBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.as_slice();
        write!(f, "SampleBytes({} bytes", b.len())?;
        if !b.is_empty() {
            write!(f, ": ")?;
            for x in b.iter().take(16) {
                write!(f, "{x:02x}")?;
            }
            if b.len() > 16 {
                write!(f, "..")?;
            }
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_share_and_return_the_buffer() {
        let pool = BufPool::new(4);
        let mut pb = pool.take(8192);
        pb.buf_mut().resize(8192).copy_from_slice(&[7u8; 8192]);
        let ptr = pb.buf().as_slice().as_ptr();
        let pb = Arc::new(pb);
        let a = SampleBytes::view(pb.clone(), 10, 5);
        let b = a.clone();
        drop(pb);
        assert_eq!(&*a, &[7u8; 5]);
        assert!(a.is_view());
        assert_eq!(pool.free_count(), 0, "held by the views");
        drop(a);
        assert_eq!(pool.free_count(), 0);
        drop(b);
        assert_eq!(pool.free_count(), 1, "back in the pool after the last view");
        let mut again = pool.take(4096);
        assert_eq!(
            again.buf_mut().resize(4096).as_ptr(),
            ptr,
            "the allocation is reused"
        );
    }

    #[test]
    fn pool_keeps_at_most_its_count_and_prefers_large_buffers() {
        let pool = BufPool::new(1);
        let mut small = pool.take(0);
        small.buf_mut().resize(4096);
        let mut large = pool.take(0);
        large.buf_mut().resize(64 << 10);
        drop(small);
        drop(large);
        assert_eq!(pool.free_count(), 1);
        assert!(pool.take(16 << 10).buf().capacity() >= 64 << 10);
    }

    #[test]
    fn a_closed_pool_frees_what_comes_back() {
        let pool = BufPool::new(4);
        let mut a = pool.take(0);
        a.buf_mut().resize(4096);
        let mut b = pool.take(0);
        b.buf_mut().resize(4096);
        drop(a);
        assert_eq!(pool.free_count(), 1);
        pool.close();
        assert_eq!(pool.free_count(), 0, "idle buffers freed");
        drop(b);
        assert_eq!(pool.free_count(), 0, "returned buffers freed");
        assert_eq!(pool.empty().buf().capacity(), 0);
    }

    #[test]
    fn owned_bytes_compare_by_content() {
        let v = SampleBytes::from(b"abc".to_vec());
        assert!(!v.is_view());
        assert_eq!(v, SampleBytes::from(b"abc".to_vec()));
        assert_eq!(v, b"abc"[..]);
        assert_eq!(Vec::from(v.clone()), b"abc".to_vec());
        assert_eq!(format!("{v:?}"), "SampleBytes(3 bytes: 616263)");
    }
}

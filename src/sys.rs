//! Operating-system specifics: memory maps, direct I/O, page-cache eviction, and for the
//! compiler an atomic directory swap and an advisory lock. All of the crate's
//! `unsafe` code is in this module.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Alignment of direct-I/O buffers, offsets and lengths.
pub const DIRECT_ALIGN: usize = 4096;

/// Maps `file` (opened from `path`) read-only.
///
/// # Hazards
///
/// A memory map's contents can change under the program if another process writes the file.
/// shardpack never writes a shard after it has been renamed into place, and datasets are
/// documented as immutable once written; a file truncated or rewritten by someone else while
/// mapped can make reads fault (SIGBUS) or return changed bytes. Changed bytes are caught by the
/// record checksums; the fault cannot be caught, which is the accepted cost of zero-copy reads,
/// as for every memory-mapping reader.
pub(crate) fn map_file(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: the map is read-only and shardpack never modifies a committed shard; the hazard
    // of another process modifying the file is documented above and on `Dataset::open`.
    let map = unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, "memory-map", e))?;
    #[cfg(unix)]
    {
        // Random access is the common pattern for `get(i)`; the loader reads with its own I/O.
        let _ = map.advise(memmap2::Advice::Random);
    }
    Ok(map)
}

/// Asks the kernel to read `len` bytes of `map` from `offset` ahead (`MADV_WILLNEED`): a map
/// advised for random access (as [`map_file`] does) would otherwise read a region that is about
/// to be scanned whole (a shard's index, checksummed on first use) one page fault, and one
/// synchronous 4 KiB device read, at a time. Best effort: errors are ignored.
///
/// Linux reads ahead at most one readahead window per call (`force_page_cache_ra` caps a
/// request at the larger of the device's `read_ahead_kb` and `max_sectors_kb`, 128 KiB on many
/// systems), so one call for a 160 MiB index read its first 8 MiB here and the rest faulted in
/// 4 KiB at a time: 37,098 major faults and 12-17 s for an index `cat` reads in 0.7 s. The
/// range is advised in [`WILL_NEED_PIECE`]s instead, which queues every read at once (each
/// call only submits them; about a microsecond each).
pub(crate) fn will_need(map: &Mmap, offset: u64, len: u64) {
    #[cfg(unix)]
    if let (Ok(off), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) {
        if let Some(end) = off
            .checked_add(len)
            .filter(|&end| end <= map.len() && len > 0)
        {
            let mut at = off;
            while at < end {
                let n = WILL_NEED_PIECE.min(end - at);
                let _ = map.advise_range(memmap2::Advice::WillNeed, at, n);
                at += n;
            }
        }
    }
    let _ = (map, offset, len);
}

/// The range one `MADV_WILLNEED` call of [`will_need`] covers: the smallest readahead cap
/// common kernels apply (128 KiB).
#[cfg(unix)]
const WILL_NEED_PIECE: usize = 128 << 10;

/// Advises the [`HUGE_PAGE`]-aligned part of `buf` for transparent huge pages. Best effort.
/// Not under miri, which cannot run `madvise` (the buffer code around it is tested there).
fn advise_huge_pages(buf: &[u8]) {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        let off = buf.as_ptr().align_offset(HUGE_PAGE);
        if off >= buf.len() {
            return;
        }
        let len = (buf.len() - off) / HUGE_PAGE * HUGE_PAGE;
        if len == 0 {
            return;
        }
        // SAFETY: the range `off..off + len` lies inside `buf`, which this process owns and
        // which stays allocated for the call; its start is page-aligned as madvise requires.
        // MADV_HUGEPAGE only changes how the kernel backs the pages, never their contents.
        let _ = unsafe {
            libc::madvise(
                buf.as_ptr().add(off) as *mut libc::c_void,
                len,
                libc::MADV_HUGEPAGE,
            )
        };
    }
    #[cfg(any(not(target_os = "linux"), miri))]
    let _ = buf;
}

/// Opens `path` for reading, bypassing the page cache (`O_DIRECT`) when `direct` is set.
/// Returns the file and whether direct I/O is in effect: filesystems that refuse `O_DIRECT`
/// (tmpfs, some FUSE and network filesystems) get a buffered file instead.
pub fn open_read(path: &Path, direct: bool) -> io::Result<(File, bool)> {
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    let _ = direct;
    Ok((File::open(path)?, false))
}

/// A reusable byte buffer whose usable part starts at a [`DIRECT_ALIGN`]-aligned address, as
/// `O_DIRECT` reads require. Built on a `Vec` with slack, so it needs no `unsafe` beyond one
/// `madvise`.
///
/// Buffers of [`HUGE_PAGE`] bytes or more start on a [`HUGE_PAGE`] boundary and are advised
/// for transparent huge pages (`MADV_HUGEPAGE`, Linux): a fresh buffer then costs one page
/// fault per 2 MiB instead of one per 4 KiB (measured here: about 9 us each, 0.45 GB/s of
/// first touch), and pinning it for a direct read walks 512 times fewer pages. The slack
/// before the aligned start and after the end is never touched, so it takes address space,
/// not memory.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
    /// Bytes of the allocation beyond the capacity (and the alignment of the start).
    slack: usize,
}

/// The transparent huge page size large buffers are aligned to (2 MiB on x86-64 and arm64
/// with 4 KiB pages).
pub const HUGE_PAGE: usize = 2 << 20;

impl AlignedBuf {
    /// An empty buffer.
    pub fn new() -> AlignedBuf {
        AlignedBuf::default()
    }

    /// The start alignment (and slack) of a new allocation of capacity `cap`.
    fn slack_for(cap: usize) -> usize {
        if cap >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            DIRECT_ALIGN
        }
    }

    /// Makes the buffer `len` bytes long (contents unspecified), reusing the allocation when
    /// it is large enough. Returns the aligned slice.
    ///
    /// A new allocation above 1 MiB is rounded up to a multiple of 256 KiB, so buffers recycled
    /// for chunks of slightly different sizes rarely need to grow.
    pub fn resize(&mut self, len: usize) -> &mut [u8] {
        if self.capacity() < len {
            self.vec = Vec::new(); // free the old allocation first
            let cap = Self::rounded(len);
            self.slack = Self::slack_for(cap);
            // Zeroed through `calloc`: fresh pages are not touched here, so the advice below
            // comes before their first fault.
            self.vec = vec![0; cap + self.slack];
            if self.slack == HUGE_PAGE {
                advise_huge_pages(&self.vec);
            }
        }
        // An empty Vec's dangling pointer is not aligned; there is nothing to align then.
        self.start = match self.vec.is_empty() {
            true => 0,
            false => self.vec.as_ptr().align_offset(self.slack),
        };
        self.len = len;
        &mut self.vec[self.start..self.start + len]
    }

    /// The largest length [`AlignedBuf::resize`] can give without allocating.
    pub fn capacity(&self) -> usize {
        self.vec.len().saturating_sub(self.slack)
    }

    /// The bytes of memory the buffer will hold after `resize(len)` (its capacity and one page:
    /// the untouched slack of a huge-page buffer holds no memory).
    pub(crate) fn footprint_after(&self, len: usize) -> usize {
        if self.capacity() >= len {
            self.capacity() + DIRECT_ALIGN
        } else {
            Self::rounded(len) + DIRECT_ALIGN
        }
    }

    fn rounded(len: usize) -> usize {
        const GRAIN: usize = 256 << 10;
        if len > 1 << 20 {
            len.next_multiple_of(GRAIN)
        } else {
            len
        }
    }

    /// The current contents.
    pub fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }
}

/// Reads `buf.len()` bytes at `offset`, looping over short reads; returns how many bytes were
/// read (less than asked only at end of file). With direct I/O the offset, the length and the
/// buffer address must be multiples of [`DIRECT_ALIGN`].
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = read_at(file, &mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::windows::fs::FileExt;
    file.seek_read(buf, offset)
}

/// Asks the kernel to drop the pages of every file in `paths` from the page cache
/// (`posix_fadvise` with `POSIX_FADV_DONTNEED`), so the next reads come from the device. Dirty
/// pages cannot be dropped, so everything is written back first (one `sync` for all files).
/// Returns the first error (with how many other files failed); where the platform cannot
/// evict, an `Unsupported` error.
pub fn evict_from_cache<'a>(paths: impl IntoIterator<Item = &'a Path>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: `sync` takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let (mut first_err, mut others) = (None, 0usize);
        for path in paths {
            let res = File::open(path).and_then(|file| {
                // SAFETY: `posix_fadvise` only reads its integer arguments; the descriptor is
                // valid for the duration of the call because `file` is alive.
                let rc = unsafe {
                    libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(rc))
                }
            });
            if let Err(e) = res {
                match first_err {
                    None => first_err = Some((e.kind(), format!("{}: {e}", path.display()))),
                    Some(_) => others += 1,
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some((kind, msg)) if others > 0 => Err(io::Error::new(
                kind,
                format!("{msg} (and {others} more files)"),
            )),
            Some((kind, msg)) => Err(io::Error::new(kind, msg)),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = paths.into_iter().count();
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "page-cache eviction is only implemented on Linux",
        ))
    }
}

/// Swaps two directory entries atomically (`renameat2` with `RENAME_EXCHANGE`): afterwards `a`
/// names what `b` named and the other way round, and no observer ever sees either path
/// missing. Returns `Ok(false)` where the platform or the file system cannot do it (not Linux,
/// a kernel before 3.15, or a file system that refuses the flag), so the caller can fall back
/// to two renames.
#[cfg(feature = "compile")]
pub(crate) fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let ca = CString::new(a.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        let cb = CString::new(b.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        // SAFETY: both pointers are NUL-terminated strings that outlive the call; the raw
        // syscall (rather than glibc's `renameat2` wrapper, absent from older glibc and from
        // musl's libc crate bindings) only reads them and its integer arguments.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(false),
            _ => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Takes an exclusive advisory lock (`flock`) on `file` without waiting. `Ok(false)`: another
/// open file description holds it (a live process). The lock goes with the open file: it is
/// released when the file is closed, also when its process is killed. Where the platform has
/// no `flock`, always `Ok(true)`.
#[cfg(feature = "compile")]
pub(crate) fn try_lock(file: &File) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: `flock` only reads its integer arguments; the descriptor is valid for the
        // duration of the call because `file` is borrowed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_file_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"hello shard").unwrap();
        drop(f);
        let f = File::open(&p).unwrap();
        let m = map_file(&f, &p).unwrap();
        assert_eq!(&m[..], b"hello shard");
    }

    /// Advising ranges (in pieces) leaves the map's contents as they are, whatever the range:
    /// empty, unaligned, several pieces long, past the end (ignored).
    #[test]
    fn will_need_takes_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i * 7) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let m = map_file(&f, &p).unwrap();
        let n = data.len() as u64;
        for (off, len) in [
            (0, n),
            (1, n - 1),
            (4095, 300_001),
            (n - 1, 1),
            (0, 0),
            (n, 1),
            (0, n + 1),
        ] {
            will_need(&m, off, len);
        }
        will_need(&m, u64::MAX, 2);
        assert_eq!(&m[..], &data[..]);
    }

    #[test]
    fn aligned_buffer_is_aligned_and_reused() {
        let mut b = AlignedBuf::new();
        let p = b.resize(10_000).as_ptr();
        assert_eq!(p as usize % DIRECT_ALIGN, 0);
        assert_eq!(b.as_slice().len(), 10_000);
        let q = b.resize(5_000).as_ptr();
        assert_eq!(p, q, "a smaller size reuses the allocation");
        assert_eq!(q as usize % DIRECT_ALIGN, 0);
        assert_eq!(b.footprint_after(10_000), 10_000 + DIRECT_ALIGN);
        assert_eq!(
            AlignedBuf::new().resize(0).len(),
            0,
            "an empty buffer needs no memory"
        );
        let mut big = AlignedBuf::new();
        assert_eq!(
            big.footprint_after((4 << 20) + 1),
            (17 << 18) + DIRECT_ALIGN
        );
        big.resize((4 << 20) + 1);
        assert_eq!(big.capacity(), 17 << 18, "rounded up to 256 KiB");
    }

    #[test]
    fn direct_read_or_fallback_reads_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3 * DIRECT_ALIGN + 100).map(|i| i as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (f, _direct) = open_read(&p, true).unwrap();
        let mut b = AlignedBuf::new();
        let n = read_full_at(&f, b.resize(4 * DIRECT_ALIGN), 0).unwrap();
        assert_eq!(n, data.len());
        assert_eq!(&b.as_slice()[..n], &data[..]);
        evict_from_cache([p.as_path()]).unwrap();
    }

    #[cfg(all(target_os = "linux", feature = "compile"))]
    #[test]
    fn exchange_swaps_two_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("in-a"), b"").unwrap();
        // tmpfs, ext4, xfs and btrfs support the exchange; a file system that does not gives
        // `Ok(false)` and leaves both in place.
        if exchange(&a, &b).unwrap() {
            assert!(b.join("in-a").exists() && !a.join("in-a").exists());
        } else {
            assert!(a.join("in-a").exists());
        }
        let e = exchange(&a, &dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[cfg(all(unix, feature = "compile"))]
    #[test]
    fn a_lock_is_held_until_its_file_closes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let first = File::create(&p).unwrap();
        assert!(try_lock(&first).unwrap());
        let second = File::open(&p).unwrap();
        assert!(!try_lock(&second).unwrap(), "held by the first open file");
        drop(first);
        assert!(try_lock(&second).unwrap(), "released when the first closes");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn eviction_names_the_first_failure_and_counts_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("gone-a"), dir.path().join("gone-b"));
        let e = evict_from_cache([a.as_path(), b.as_path()]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("gone-a") && msg.contains("and 1 more files"),
            "{msg}"
        );
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}

/// CPU time this process has used so far (all threads): user and system, from
/// `getrusage(RUSAGE_SELF)`. `None` where the platform has no `getrusage`.
pub fn cpu_time() -> Option<(std::time::Duration, std::time::Duration)> {
    #[cfg(unix)]
    {
        // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `getrusage` writes only into the struct it is given, which lives for the
        // call; RUSAGE_SELF is a valid `who`.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        if rc != 0 {
            return None;
        }
        let tv = |t: libc::timeval| {
            std::time::Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000)
        };
        Some((tv(ru.ru_utime), tv(ru.ru_stime)))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod huge_page_tests {
    use super::*;

    /// Buffers of 2 MiB or more start on a 2 MiB boundary (so the kernel can back them with
    /// huge pages), keep their capacity, are reused, and read correctly.
    #[test]
    fn large_buffers_are_huge_page_aligned() {
        let mut b = AlignedBuf::new();
        let p = b.resize(4 << 20).as_ptr();
        assert_eq!(p as usize % HUGE_PAGE, 0);
        assert_eq!(b.capacity(), 4 << 20);
        assert_eq!(b.footprint_after(4 << 20), (4 << 20) + DIRECT_ALIGN);
        b.resize(4 << 20).fill(7);
        let q = b.resize(3 << 20).as_ptr();
        assert_eq!(p, q, "a smaller size reuses the allocation");
        assert!(b.as_slice().iter().all(|&x| x == 7));
        let mut small = AlignedBuf::new();
        assert_eq!(small.resize(1 << 20).as_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(small.capacity(), 1 << 20);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn direct_reads_into_huge_page_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(5 << 20) + 300).map(|i| (i * 7) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (f, _) = open_read(&p, true).unwrap();
        let mut b = AlignedBuf::new();
        let n = read_full_at(&f, b.resize(6 << 20), 0).unwrap();
        assert_eq!(&b.as_slice()[..n], &data[..]);
    }
}

#[cfg(test)]
mod cpu_tests {
    /// CPU time grows with work and never goes backwards.
    #[test]
    fn cpu_time_counts_work() {
        let Some((u0, s0)) = super::cpu_time() else {
            return;
        };
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let (u1, s1) = super::cpu_time().unwrap();
        assert!(u1 >= u0 && s1 >= s0);
        assert!((u1 + s1) - (u0 + s0) >= std::time::Duration::from_millis(5));
    }
}

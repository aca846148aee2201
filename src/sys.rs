//! The crate's only `unsafe` code: memory-mapping shard files.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Maps `file` (opened from `path`) read-only.
///
/// # Safety (for callers of the safe wrapper)
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
}

//! A scratch directory for one fuzzing process (in `/dev/shm` where it exists), removed when
//! the process exits normally.
//!
//! libFuzzer ends a run with `exit()`, which runs `atexit` handlers but not Rust destructors of
//! statics, so a `TempDir` kept in a static would be left behind in the temp folder after every
//! run. The directory is registered with `atexit` instead. After a crash (abort) it stays, which
//! is what one wants when looking at a crash anyway.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_scratch() {
    if let Some(d) = DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The process's scratch directory, created on first use.
pub fn dir() -> &'static Path {
    DIR.get_or_init(|| {
        // A memory file system when there is one: rewriting a shard file on disk for every
        // input costs milliseconds, on tmpfs microseconds.
        let mut b = tempfile::Builder::new();
        b.prefix("shardpack-fuzz-");
        let d = b
            .tempdir_in("/dev/shm")
            .or_else(|_| b.tempdir())
            .expect("create a scratch directory")
            .keep();
        // SAFETY: `remove_scratch` is an `extern "C" fn()` that neither unwinds nor touches
        // state that is gone at exit (the OnceLock is a static).
        unsafe {
            libc::atexit(remove_scratch);
        }
        d
    })
}

/// A fresh subdirectory `name` of the scratch directory (emptied if it exists).
pub fn subdir(name: &str) -> PathBuf {
    let d = dir().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch subdirectory");
    d
}

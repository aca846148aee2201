//! `shardpack.open(url, cache_dir=..., cache_limit=..., mode=...)`: datasets at URLs
//! (`s3://bucket/prefix`, `http(s)://host/path`) with explicit read options (the library's
//! feature `remote`; see the README's "Remote datasets"). A plain path or a URL without options
//! goes through `Dataset(path)` as before (options then come from `SHARDPACK_*` variables).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use shardpack::reader::{IndexCheck, OpenOptions};
use shardpack::storage::remote::{ReadMode, RemoteOptions};

use super::{names_of, open_error, Dataset};

/// Opens the dataset at `url` (or a local path) reading it in `mode` (`"cache"`: shards
/// downloaded on first use into `cache_dir`, evicted least recently used above `cache_limit`
/// bytes; `"stream"`: ranged GETs, only indexes kept locally). Releases the GIL while it
/// fetches.
#[pyfunction]
#[pyo3(signature = (url, mode = "cache", cache_dir = None, cache_limit = None))]
pub fn _open_remote(
    py: Python<'_>,
    url: String,
    mode: &str,
    cache_dir: Option<PathBuf>,
    cache_limit: Option<u64>,
) -> PyResult<Dataset> {
    let mut ro = RemoteOptions::from_env();
    ro.mode = ReadMode::parse(mode).ok_or_else(|| {
        PyValueError::new_err(format!(
            "mode must be \"cache\" or \"stream\", not {mode:?}"
        ))
    })?;
    if cache_dir.is_some() {
        ro.cache_dir = cache_dir;
    }
    if cache_limit.is_some() {
        ro.cache_limit = cache_limit;
    }
    let ds = py
        .detach(|| {
            shardpack::Dataset::open_remote(&url, &ro, &OpenOptions::default(), IndexCheck::Auto)
        })
        .map_err(|e| open_error(Path::new(&url), e))?;
    Ok(Dataset {
        names: names_of(py, &ds),
        inner: Arc::new(ds),
    })
}

/// Requests made to the store by a dataset opened from a URL (`None` for a local one).
#[pyfunction]
pub fn _remote_requests(ds: &Dataset) -> Option<u64> {
    ds.inner.remote_requests()
}

/// What a `Dataset` pickles as: `shardpack.open(url, cache_dir, cache_limit, mode)` for one
/// opened from a URL (the unpickled copy reads the same way: same mode, same cache and limit),
/// else `shardpack.open(path)`.
pub fn reduce<'py>(py: Python<'py>, ds: &Arc<shardpack::Dataset>) -> PyResult<Bound<'py, PyTuple>> {
    let open = py.import("shardpack")?.getattr("open")?;
    let dir = ds.dir().to_path_buf();
    match ds.remote_options() {
        Some(ro) => {
            let mode = ro.mode.as_str();
            // A str, not a path: pyo3 turns a PathBuf into a pathlib.Path, which folds the
            // URL's "//" into "/".
            let url = dir.to_string_lossy().into_owned();
            (open, (url, ro.cache_dir, ro.cache_limit, mode)).into_pyobject(py)
        }
        None => (open, (dir,)).into_pyobject(py),
    }
}

/// Adds this module's functions to `_native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_open_remote, m)?)?;
    m.add_function(wrap_pyfunction!(_remote_requests, m)?)?;
    Ok(())
}

//! Planned packs from Python: `_plan`, `_pack_part`, `_merge`, `_plan_parts` (used by
//! `shardpack.ray.pack`, which runs the parts as Ray tasks). Each runs with the GIL released
//! and returns its summary as JSON text (the keys of the CLI's `--json`).

use std::path::PathBuf;

use pyo3::prelude::*;
use shardpack::compile::{self, MergeOptions, NoProgress, PackOptions};

use crate::to_py;

/// Plans a pack of `src` into `out` over `parts` parts; the options are those of `_pack`
/// (already normalised by the Python side).
#[pyfunction]
#[pyo3(signature = (src, out, parts, *, shard_size, max_samples_per_shard, compress,
                    field_compress, align, shuffle_seed, threads, io_threads, labels, key,
                    symlinks, max_skipped_share, unlabeled, skip_errors,
                    dict_trainer = "fastcover"))]
#[allow(clippy::too_many_arguments)]
fn _plan(
    py: Python<'_>,
    src: PathBuf,
    out: PathBuf,
    parts: u64,
    shard_size: u64,
    max_samples_per_shard: Option<u64>,
    compress: &str,
    field_compress: Vec<(String, String)>,
    align: u64,
    shuffle_seed: Option<u64>,
    threads: usize,
    io_threads: usize,
    labels: &str,
    key: &str,
    symlinks: &str,
    max_skipped_share: f64,
    unlabeled: &str,
    skip_errors: bool,
    dict_trainer: &str,
) -> PyResult<String> {
    let mut opts = crate::pack_options(
        py,
        shard_size,
        max_samples_per_shard,
        compress,
        &field_compress,
        align,
        shuffle_seed,
        threads,
        io_threads,
        labels,
        key,
        symlinks,
        max_skipped_share,
        unlabeled,
        skip_errors,
    )?;
    opts.dict_trainer = crate::parse_trainer(py, dict_trainer)?;
    py.detach(|| compile::plan(&src, &out, parts, &opts, &NoProgress))
        .map(|s| serde_json::to_string(&s).expect("a summary serializes"))
        .map_err(to_py)
}

/// Runs part `part` of the plan in `out` (threads 0: one per core).
#[pyfunction]
#[pyo3(signature = (out, part, *, threads=0, io_threads=0))]
fn _pack_part(
    py: Python<'_>,
    out: PathBuf,
    part: u64,
    threads: usize,
    io_threads: usize,
) -> PyResult<String> {
    let local = PackOptions {
        threads,
        io_threads,
        ..PackOptions::default()
    };
    py.detach(|| compile::pack_part(&out, part, &local, &NoProgress))
        .map(|s| serde_json::to_string(&s).expect("a summary serializes"))
        .map_err(to_py)
}

/// Merges the parts of the plan in `out` into the dataset.
#[pyfunction]
#[pyo3(signature = (out, *, verify=false))]
fn _merge(py: Python<'_>, out: PathBuf, verify: bool) -> PyResult<String> {
    py.detach(|| compile::merge(&out, &MergeOptions { verify }))
        .map(|s| serde_json::to_string(&s).expect("a summary serializes"))
        .map_err(to_py)
}

/// The number of parts of the plan in `out`.
#[pyfunction]
fn _plan_parts(py: Python<'_>, out: PathBuf) -> PyResult<u64> {
    py.detach(|| compile::plan_parts(&out)).map_err(to_py)
}

/// Adds this module's functions to the native module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_plan, m)?)?;
    m.add_function(wrap_pyfunction!(_pack_part, m)?)?;
    m.add_function(wrap_pyfunction!(_merge, m)?)?;
    m.add_function(wrap_pyfunction!(_plan_parts, m)?)?;
    Ok(())
}

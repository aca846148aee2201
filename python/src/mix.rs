//! `shardpack._native._MixedLoader`: the library's `MixedLoader` (several datasets mixed by
//! weight in one epoch) for `shardpack.MixedLoader`. Like `_Loader`, construction starts no
//! thread (the sources' loaders start at the first batch) and waiting releases the GIL.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use shardpack::loader::{MixedLoader, MixedState, Weight};
use shardpack::{Error, LoaderOptions};

use super::{loaded_sample, loader_options, to_py, value_error, Dataset, Names};

struct MixInner {
    loader: Option<MixedLoader>,
    /// Where to (re)start when `loader` is None: a state, or the epoch's start.
    state: Option<MixedState>,
    epoch: u64,
    /// The process that started the sources' threads.
    pid: u32,
}

/// The native mixed loader behind `shardpack.MixedLoader`.
#[pyclass(frozen, module = "shardpack._native", name = "_MixedLoader")]
pub(crate) struct NativeMixedLoader {
    sources: Vec<(Arc<shardpack::Dataset>, Weight)>,
    names: Vec<Names>,
    epoch_samples: Option<u64>,
    opts: LoaderOptions,
    inner: Mutex<MixInner>,
}

impl NativeMixedLoader {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, MixInner>> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("the mixed loader's lock is poisoned"))
    }

    fn opts(&self, epoch: u64) -> LoaderOptions {
        LoaderOptions {
            epoch,
            ..self.opts.clone()
        }
    }

    /// Drops a running loader (its threads joined with the GIL released; forgotten after a
    /// fork, where they did not survive).
    fn stop(py: Python<'_>, inner: &mut MixInner) {
        if let Some(l) = inner.loader.take() {
            if inner.pid == std::process::id() {
                py.detach(move || drop(l));
            } else {
                std::mem::forget(l);
            }
        }
    }
}

#[pymethods]
impl NativeMixedLoader {
    #[new]
    #[pyo3(signature = (datasets, weights, *, epoch_samples, batch_size, seed, epoch, rank,
                        world_size, shuffle, drop_last, chunk_bytes, window_chunks, io_threads,
                        prefetch_bytes, direct_io, on_error))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        datasets: Vec<Bound<'_, Dataset>>,
        weights: Vec<(String, f64)>,
        epoch_samples: Option<u64>,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        rank: u32,
        world_size: u32,
        shuffle: &str,
        drop_last: bool,
        chunk_bytes: u64,
        window_chunks: usize,
        io_threads: usize,
        prefetch_bytes: u64,
        direct_io: &str,
        on_error: &str,
    ) -> PyResult<NativeMixedLoader> {
        if datasets.len() != weights.len() {
            return Err(value_error(py, "one weight per dataset".into()));
        }
        let mut sources = Vec::with_capacity(datasets.len());
        let mut names = Vec::with_capacity(datasets.len());
        for (d, (kind, v)) in datasets.iter().zip(weights) {
            let w = match kind.as_str() {
                "fraction" => Weight::Fraction(v),
                "samples" if v >= 0.0 && v.fract() == 0.0 => Weight::Samples(v as u64),
                _ => {
                    return Err(value_error(
                        py,
                        format!(
                        "a weight is (\"fraction\", f) or (\"samples\", n), not ({kind:?}, {v})"
                    ),
                    ))
                }
            };
            sources.push((d.get().inner.clone(), w));
            names.push(d.get().names.clone());
        }
        let opts = loader_options(
            py,
            seed,
            epoch,
            rank,
            world_size,
            batch_size,
            shuffle,
            chunk_bytes,
            window_chunks,
            io_threads,
            prefetch_bytes,
            direct_io,
            drop_last,
            on_error,
        )?;
        // Checks the weights and options now (no thread, no I/O).
        shardpack::loader::mixed_epoch_order(&sources, epoch_samples, &opts, None)
            .map_err(to_py)?;
        Ok(NativeMixedLoader {
            sources,
            names,
            epoch_samples,
            opts,
            inner: Mutex::new(MixInner {
                loader: None,
                state: None,
                epoch,
                pid: std::process::id(),
            }),
        })
    }

    /// The next batch as a list of `(source, Sample)`, or None at the end of the epoch.
    fn next_batch<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let mut inner = self.lock()?;
        if inner.loader.is_some() && inner.pid != std::process::id() {
            Self::stop(py, &mut inner);
            return Err(PyRuntimeError::new_err(
                "this shardpack MixedLoader was started in another process (before a fork); \
                 call set_epoch() or load_state_dict() here to start it again",
            ));
        }
        if inner.loader.is_none() {
            let opts = self.opts(inner.epoch);
            let state = inner.state.clone();
            let l = py
                .detach(|| match &state {
                    Some(s) => MixedLoader::resume(&self.sources, self.epoch_samples, opts, s),
                    None => MixedLoader::new(&self.sources, self.epoch_samples, opts),
                })
                .map_err(to_py)?;
            inner.loader = Some(l);
            inner.pid = std::process::id();
        }
        let l = inner.loader.as_mut().expect("started above");
        let got = py.detach(|| l.next_batch());
        let batch = match got {
            None => return Ok(None),
            Some(b) => b.map_err(to_py)?,
        };
        inner.state = Some(l.state());
        let list = PyList::empty(py);
        for s in batch {
            let sample = loaded_sample(&self.sources[s.source].0, &self.names[s.source], s.sample);
            let pair = PyTuple::new(
                py,
                [
                    s.source.into_pyobject(py)?.into_any(),
                    Py::new(py, sample)?.into_bound(py).into_any(),
                ],
            )?;
            list.append(pair)?;
        }
        Ok(Some(list))
    }

    /// Starts epoch `epoch` from its beginning.
    fn set_epoch(&self, py: Python<'_>, epoch: u64) -> PyResult<()> {
        let mut inner = self.lock()?;
        Self::stop(py, &mut inner);
        inner.epoch = epoch;
        inner.state = None;
        Ok(())
    }

    /// The library's `MixedState` as JSON (None before the first batch of an epoch: its
    /// start).
    fn state_json(&self) -> PyResult<String> {
        let inner = self.lock()?;
        let st = match &inner.state {
            Some(s) => s.clone(),
            None => {
                // The epoch's start, without starting threads.
                let opts = self.opts(inner.epoch);
                MixedLoader::start_state(&self.sources, self.epoch_samples, &opts).map_err(to_py)?
            }
        };
        serde_json::to_string(&st).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Continues from a `MixedState` given as JSON (checked against the sources and options
    /// at the next batch, and here).
    fn load_state(&self, py: Python<'_>, json: &str) -> PyResult<()> {
        let st: MixedState = serde_json::from_str(json).map_err(|e| {
            to_py(Error::State(format!(
                "not a shardpack mixed loader state ({e}); pass a dict from \
                 MixedLoader.state_dict()"
            )))
        })?;
        let opts = self.opts(st.epoch);
        shardpack::loader::mixed_epoch_order(&self.sources, self.epoch_samples, &opts, Some(&st))
            .map_err(to_py)?;
        let mut inner = self.lock()?;
        Self::stop(py, &mut inner);
        inner.epoch = st.epoch;
        inner.state = Some(st);
        Ok(())
    }

    /// Each source's samples per epoch over all ranks.
    #[getter]
    fn counts(&self) -> PyResult<Vec<u64>> {
        let sizes: Vec<u64> = self.sources.iter().map(|(d, _)| d.len()).collect();
        let weights: Vec<Weight> = self.sources.iter().map(|(_, w)| *w).collect();
        shardpack::loader::mix_counts(&sizes, &weights, self.epoch_samples).map_err(to_py)
    }

    /// Stops the reading threads (they start again at the next batch, where this left off).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let mut inner = self.lock()?;
        Self::stop(py, &mut inner);
        Ok(())
    }
}

impl Drop for NativeMixedLoader {
    fn drop(&mut self) {
        if let Ok(inner) = self.inner.get_mut() {
            if inner.pid != std::process::id() {
                std::mem::forget(inner.loader.take());
            }
        }
    }
}

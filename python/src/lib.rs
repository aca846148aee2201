//! The native module `shardpack._native`: thin pyo3 classes over the shardpack library.
//!
//! The pure-Python package `shardpack` (beside this crate, in `python/shardpack/`) re-exports
//! these classes and adds what is naturally Python: the exception classes, option parsing,
//! `torch.distributed` detection, pickling helpers and the torch datasets.
//!
//! Rules kept here:
//! - Nothing starts a thread at import or construction; a Loader's reading threads start at
//!   its first batch.
//! - Every call that can block (open, verify, a loader batch, pack) releases the GIL.
//! - Field bytes reach Python without copies: a `Blob` holds what keeps its bytes alive (the
//!   dataset's memory map, the loader's pooled read buffer, or the decoded `Vec`) and exports
//!   them through the buffer protocol.

mod remote;

use std::os::raw::c_int;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyIndexError, PyKeyError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use shardpack::codec::{DictTrainer, Policy};
use shardpack::compile::{
    self, KeyMode, LabelMode, PackOptions, Progress, SymlinkPolicy, UnlabeledPolicy,
};
use shardpack::format::Codec;
use shardpack::loader::{
    DirectIo, ErrorPolicy, LoadedField, LoadedSample, SampleBytes, Shuffle, SkippedSample,
};
use shardpack::storage::remote::{Location, RemoteOptions};
use shardpack::storage::upload::{
    check_destination, upload_dataset, Staging, UploadOptions, UploadProgress,
};
use shardpack::writer::WriterOptions;
use shardpack::{Error, Loader, LoaderOptions, LoaderState};

mod mix;
mod plan;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The exception classes live in `shardpack/_errors.py` (an I/O error must subclass both
/// `ShardpackError` and `OSError`, which needs two bases); they are looked up once.
fn error_class(py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let m = MODULE.get_or_try_init(py, || py.import("shardpack._errors").map(|m| m.unbind()))?;
    Ok(m.bind(py).getattr(name)?.unbind())
}

/// Maps a library error to its Python exception; the message is the library's Display (the
/// CLI's message: path, shard, sample, what to do).
fn to_py(e: Error) -> PyErr {
    Python::attach(|py| {
        let msg = e.to_string();
        let (class, errno) = match &e {
            Error::Io { source, .. } => ("ShardpackIOError", source.raw_os_error()),
            Error::Corrupt { .. } | Error::BadRecord { .. } => ("CorruptError", None),
            Error::Options(_) => ("ShardpackValueError", None),
            Error::OutOfRange { .. } => {
                return PyIndexError::new_err(msg);
            }
            Error::Cancelled => {
                return pyo3::exceptions::PyKeyboardInterrupt::new_err(msg);
            }
            _ => ("ShardpackError", None),
        };
        match error_class(py, class).and_then(|c| c.bind(py).call1((msg.clone(),))) {
            Ok(exc) => {
                if let Some(n) = errno {
                    let _ = exc.setattr("errno", n);
                }
                PyErr::from_value(exc)
            }
            Err(lookup) => lookup,
        }
    })
}

/// A missing dataset directory is reported by the library as a manifest problem; Python users
/// expect `FileNotFoundError`-like handling, so it becomes a `ShardpackIOError` (an `OSError`)
/// with `errno = ENOENT`, keeping the library's message.
fn open_error(path: &std::path::Path, e: Error) -> PyErr {
    if matches!(e, Error::Manifest { .. }) && !path.exists() {
        return Python::attach(|py| {
            let msg = e.to_string();
            match error_class(py, "ShardpackIOError").and_then(|c| c.bind(py).call1((msg,))) {
                Ok(exc) => {
                    let _ = exc.setattr("errno", libc::ENOENT);
                    PyErr::from_value(exc)
                }
                Err(lookup) => lookup,
            }
        });
    }
    to_py(e)
}

fn value_error(py: Python<'_>, msg: String) -> PyErr {
    match error_class(py, "ShardpackValueError").and_then(|c| c.bind(py).call1((msg,))) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Blob: read-only bytes exported through the buffer protocol
// ---------------------------------------------------------------------------------------------

enum BlobData {
    /// A raw record inside a shard's memory map: `shard.bytes()[start..start + len]`. The
    /// shard (a cheap clone sharing the map) keeps the map alive as long as the blob (and any
    /// view of it) lives.
    Mapped {
        shard: shardpack::reader::Shard,
        start: usize,
        len: usize,
    },
    /// Loader bytes: a view into a pooled read buffer (raw) or decoded bytes.
    Loaded(SampleBytes),
    /// Decoded bytes (a compressed record read through a Dataset, or unpickled data).
    Owned(Vec<u8>),
}

/// The bytes of one field of a sample: read-only, exported through the buffer protocol, so
/// `memoryview(b)`, `bytes(b)`, `numpy.frombuffer(b, numpy.uint8)` and
/// `PIL.Image.open(io.BytesIO(b))` work. A raw record is not copied (the blob keeps the
/// memory map or the loader's read buffer alive while it, or any view of it, lives); a
/// compressed one was decoded once into the blob's own memory. `bytes(b)` makes an
/// independent copy (keep that rather than the blob when caching many samples: a loader blob
/// keeps its whole read buffer, a few MiB, out of the loader's reuse). Pickles as `bytes`.
#[pyclass(frozen, module = "shardpack._native", name = "Blob")]
struct Blob {
    data: BlobData,
}

impl Blob {
    fn as_slice(&self) -> &[u8] {
        match &self.data {
            BlobData::Mapped { shard, start, len } => &shard.bytes().bytes()[*start..*start + *len],
            BlobData::Loaded(b) => b.as_slice(),
            BlobData::Owned(v) => v,
        }
    }
}

#[pymethods]
impl Blob {
    /// Exports the bytes read-only (1-D, unsigned bytes).
    ///
    /// # Safety
    /// Called by CPython with a valid `view`. The pointer handed out stays valid while the
    /// exporter lives: `PyBuffer_FillInfo` stores a new reference to `slf` in `view.obj`, the
    /// class is frozen (the bytes never change or move), and each variant's bytes are owned by
    /// the blob (a map kept alive by its `Shard`, which shares it, a pooled buffer kept alive by its
    /// `Arc`, or a `Vec` that is never resized).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "shardpack field bytes are read-only; copy them (bytearray(b)) to modify",
            ));
        }
        let bytes = slf.get().as_slice();
        // SAFETY: see the method's safety comment; `view` is valid (CPython's contract),
        // readonly = 1 matches the flags checked above, and the length fits an isize because
        // it is the length of a live Rust slice.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut std::ffi::c_void,
                bytes.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.as_slice().len()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.as_slice())
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        if let Ok(b) = other.cast::<Blob>() {
            return b.get().as_slice() == self.as_slice();
        }
        if let Ok(b) = other.cast::<PyBytes>() {
            return b.as_bytes() == self.as_slice();
        }
        false
    }

    fn __repr__(&self) -> String {
        let s = self.as_slice();
        let head: String = s
            .iter()
            .take(16)
            .flat_map(|b| std::ascii::escape_default(*b))
            .map(char::from)
            .collect();
        let more = if s.len() > 16 { "..." } else { "" };
        let kind = match &self.data {
            BlobData::Mapped { .. } => "mapped",
            BlobData::Loaded(b) if b.is_view() => "view",
            _ => "owned",
        };
        format!(
            "<shardpack.Blob {} bytes, {kind}: b'{head}'{more}>",
            s.len()
        )
    }

    /// `True` when the bytes are shared with a memory map or a loader read buffer (not
    /// copied), `False` when the blob owns decoded bytes.
    #[getter]
    fn zero_copy(&self) -> bool {
        match &self.data {
            BlobData::Mapped { .. } => true,
            BlobData::Loaded(b) => b.is_view(),
            BlobData::Owned(_) => false,
        }
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let bytes_type = py.get_type::<PyBytes>();
        (bytes_type, (PyBytes::new(py, self.as_slice()),)).into_pyobject(py)
    }
}

fn blob(py: Python<'_>, data: BlobData) -> PyResult<Py<Blob>> {
    Py::new(py, Blob { data })
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// A field name from Python: `str` (UTF-8) or `bytes`.
fn name_arg(name: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = name.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes().to_vec());
    }
    if let Ok(b) = name.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "a field name or key is str or bytes, not {}",
        name.get_type().name()?
    )))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Dataset
// ---------------------------------------------------------------------------------------------

/// An open dataset (a directory with `manifest.json` and shard files), memory-mapped.
///
/// `len(ds)`, `ds[i]` (negative indices count from the end), `ds.get(key)`, iteration in
/// stored order, `ds.fields`, `ds.classes`, `ds.manifest`, `ds.verify()`. Opening costs
/// O(shards); samples are read when their fields are asked for. Pickles as its path.
#[pyclass(frozen, module = "shardpack._native", name = "Dataset")]
struct Dataset {
    inner: Arc<shardpack::Dataset>,
    /// The field names as Python strings, made once (every `sample.fields()` reuses them).
    names: Names,
}

/// A dataset's field names as Python `str` (lossy where a name is not UTF-8), in field order:
/// made once per `Dataset` or loader and shared by its samples, so `sample.fields()` builds
/// no string.
type Names = Arc<[Py<PyString>]>;

fn names_of(py: Python<'_>, ds: &shardpack::Dataset) -> Names {
    ds.field_names()
        .iter()
        .map(|n| PyString::new(py, &lossy(n)).unbind())
        .collect()
}

impl Dataset {
    fn sample(&self, py: Python<'_>, i: u64) -> PyResult<Py<Sample>> {
        let s = self.inner.get(i).map_err(to_py)?;
        Py::new(
            py,
            Sample {
                index: s.index(),
                key: s.key().to_vec(),
                label: s.label(),
                ds: self.inner.clone(),
                names: self.names.clone(),
                fields: Fields::Stored,
            },
        )
    }
}

#[pymethods]
impl Dataset {
    /// Opens the dataset in `path` (releases the GIL while it maps and checks the shards).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Dataset> {
        let ds = py
            .detach(|| shardpack::Dataset::open(&path))
            .map_err(|e| open_error(&path, e))?;
        Ok(Dataset {
            names: names_of(py, &ds),
            inner: Arc::new(ds),
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len() as usize
    }

    /// Sample `i` in stored order; negative `i` counts from the end.
    fn __getitem__(&self, py: Python<'_>, i: i64) -> PyResult<Py<Sample>> {
        let n = self.inner.len() as i64;
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(PyIndexError::new_err(format!(
                "sample index {i} is out of range (the dataset has {n} samples)"
            )));
        }
        self.sample(py, j as u64)
    }

    /// The sample with key `key` (`bytes` or `str`), or `None` when there is none.
    fn get(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<Py<Sample>>> {
        let key = name_arg(key)?;
        match self.inner.get_by_key(&key).map_err(to_py)? {
            None => Ok(None),
            Some(s) => self.sample(py, s.index()).map(Some),
        }
    }

    fn __iter__(slf: Bound<'_, Self>) -> DatasetIter {
        DatasetIter {
            ds: slf.unbind(),
            next: AtomicU64::new(0),
        }
    }

    /// The dataset directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.dir().to_path_buf()
    }

    /// Field names in field order (`str`; names that are not UTF-8 are shown lossily, use
    /// `field_names_bytes` for the exact bytes).
    #[getter]
    fn fields(&self) -> Vec<String> {
        self.inner.field_names().iter().map(|n| lossy(n)).collect()
    }

    /// Field names as the exact bytes stored.
    #[getter]
    fn field_names_bytes<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.inner
            .field_names()
            .iter()
            .map(|n| PyBytes::new(py, n))
            .collect()
    }

    /// Class names (label `i` is `classes[i]`); empty when the dataset has no labels.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner
            .manifest()
            .classes
            .iter()
            .map(|c| lossy(c.as_bytes()))
            .collect()
    }

    /// The manifest as a dict (what `manifest.json` holds).
    #[getter]
    fn manifest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = self.inner.manifest().to_json();
        py.import("json")?
            .call_method1("loads", (PyBytes::new(py, &json),))
    }

    /// A hex digest identifying the dataset's contents (the xxh3-64 of its manifest, which
    /// lists every shard's checksum). Loader states carry it so a state from another dataset
    /// is refused.
    #[getter]
    fn fingerprint(&self) -> String {
        shardpack::loader::fingerprint(&self.inner)
    }

    /// Checks every byte (each shard's checksum, every record's checksum, every compressed
    /// record decodes). Returns a dict: `ok`, `shards`, `samples`, `records`, `bytes`, and
    /// `problems` (a list of dicts with `shard`, `kind` (the stable name of the check, as in
    /// `shardpack verify --json`), `sample`, `key`, `field`, `detail`). Releases
    /// the GIL while it reads.
    /// The sample index as a `pyarrow.Table` (the columns of format-spec/index-table.md:
    /// index, key, key_utf8, label, class, shard, and per field `<name>_size`,
    /// `<name>_stored`, `<name>_codec`), handed over through the Arrow C stream interface
    /// (no Parquet or IPC round trip). Reads only the indexes, with the GIL released. Needs
    /// pyarrow.
    fn index<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let pa = py.import("pyarrow").map_err(|e| {
            pyo3::exceptions::PyImportError::new_err(format!(
                "Dataset.index() returns a pyarrow.Table and needs pyarrow \
                 (pip install pyarrow): {e}"
            ))
        })?;
        let ds = self.inner.clone();
        let (schema, batches) = py
            .detach(move || {
                let t = shardpack::table::IndexTable::new(&ds);
                let batches = t
                    .batches(64 * 1024)
                    .collect::<shardpack::Result<Vec<_>>>()?;
                Ok::<_, Error>((t.schema(), batches))
            })
            .map_err(to_py)?;
        let reader = arrow_array::RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        let stream = ArrowStream {
            stream: Mutex::new(Some(arrow_array::ffi_stream::FFI_ArrowArrayStream::new(
                Box::new(reader),
            ))),
        };
        pa.call_method1("table", (Py::new(py, stream)?,))
    }

    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let ds = self.inner.clone();
        let r = py.detach(move || ds.verify());
        let d = PyDict::new(py);
        d.set_item("ok", r.is_ok())?;
        d.set_item("shards", r.shards)?;
        d.set_item("samples", r.samples)?;
        d.set_item("records", r.records)?;
        d.set_item("bytes", r.bytes)?;
        let problems = PyList::empty(py);
        for p in &r.problems {
            let pd = PyDict::new(py);
            pd.set_item("shard", &p.shard)?;
            pd.set_item("kind", p.kind.name())?;
            pd.set_item("sample", p.sample)?;
            pd.set_item("key", &p.key)?;
            pd.set_item("field", &p.field)?;
            pd.set_item("detail", &p.detail)?;
            problems.append(pd)?;
        }
        d.set_item("problems", problems)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "<shardpack.Dataset {:?}: {} samples, {} shards, fields {:?}>",
            self.inner.dir().display().to_string(),
            self.inner.len(),
            self.inner.shard_count(),
            self.fields()
        )
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        remote::reduce(py, &self.inner)
    }
}

/// Iterator over a dataset's samples in stored order.
#[pyclass(frozen, module = "shardpack._native")]
struct DatasetIter {
    ds: Py<Dataset>,
    next: AtomicU64,
}

/// An Arrow C stream handed to pyarrow once, through the PyCapsule interface
/// (`__arrow_c_stream__`).
#[pyclass(module = "shardpack._native")]
struct ArrowStream {
    // A Mutex makes the (Send, not Sync) stream shareable, as a pyclass must be.
    stream: Mutex<Option<arrow_array::ffi_stream::FFI_ArrowArrayStream>>,
}

#[pymethods]
impl ArrowStream {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, pyo3::types::PyCapsule>> {
        // The table has one schema; a consumer that wants another casts it itself.
        let _ = requested_schema;
        let stream = self
            .stream
            .lock()
            .map_err(|_| PyRuntimeError::new_err("the Arrow stream's lock is poisoned"))?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this Arrow stream was already consumed"))?;
        // The consumer moves the stream out of the capsule (and marks it released); a capsule
        // dropped unconsumed releases it through FFI_ArrowArrayStream's Drop.
        pyo3::types::PyCapsule::new_with_value(py, stream, c"arrow_array_stream")
    }
}

#[pymethods]
impl DatasetIter {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<Sample>>> {
        let ds = self.ds.get();
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= ds.inner.len() {
            return Ok(None);
        }
        ds.sample(py, i).map(Some)
    }
}

// ---------------------------------------------------------------------------------------------
// Sample
// ---------------------------------------------------------------------------------------------

enum Fields {
    /// Read on access from the dataset's shards (a sample from `Dataset`).
    Stored,
    /// Already read and checked (a sample from the `Loader`, or unpickled): field index and
    /// bytes, in field order.
    Loaded(Vec<LoadedField>),
}

/// One sample: `.index`, `.key` (bytes), `.key_str` (str or None), `.label` (int or None),
/// `sample[field]` (field name as str or bytes) -> `Blob`, `sample.fields()` -> dict of name
/// -> `Blob`, `name in sample`. Field bytes are checksum-verified when read. Pickles as plain
/// bytes (DataLoader workers send copies across the process boundary).
#[pyclass(frozen, module = "shardpack._native", name = "Sample")]
struct Sample {
    index: u64,
    key: Vec<u8>,
    label: Option<u32>,
    ds: Arc<shardpack::Dataset>,
    names: Names,
    fields: Fields,
}

impl Sample {
    fn field_index(&self, name: &[u8]) -> Option<u32> {
        self.ds.field_id(name)
    }

    /// The blob of field `fi`, if the sample has it.
    fn blob_of(&self, py: Python<'_>, fi: u32) -> PyResult<Option<Py<Blob>>> {
        match &self.fields {
            Fields::Loaded(v) => match v.iter().find(|f| f.field == fi) {
                Some(f) => Self::loaded_blob(py, &f.data).map(Some),
                None => Ok(None),
            },
            Fields::Stored => {
                let s = self.ds.get(self.index).map_err(to_py)?;
                for f in s.fields() {
                    let f = f.map_err(to_py)?;
                    if f.field_index() != fi {
                        continue;
                    }
                    if f.codec() == Codec::Raw {
                        f.check().map_err(to_py)?;
                        return blob(
                            py,
                            BlobData::Mapped {
                                shard: s.shard().clone(),
                                start: f.offset() as usize,
                                len: f.stored().len(),
                            },
                        )
                        .map(Some);
                    }
                    let mut out = Vec::new();
                    f.read_into(&mut out).map_err(to_py)?;
                    return blob(py, BlobData::Owned(out)).map(Some);
                }
                Ok(None)
            }
        }
    }

    /// Field indices present, in field order.
    fn present(&self) -> PyResult<Vec<u32>> {
        match &self.fields {
            Fields::Loaded(v) => Ok(v.iter().map(|f| f.field).collect()),
            Fields::Stored => {
                let s = self.ds.get(self.index).map_err(to_py)?;
                s.fields()
                    .map(|f| f.map(|f| f.field_index()).map_err(to_py))
                    .collect()
            }
        }
    }

    fn field_name(&self, fi: u32) -> String {
        lossy(self.ds.manifest().fields[fi as usize].name.as_bytes())
    }

    fn loaded_blob(py: Python<'_>, b: &SampleBytes) -> PyResult<Py<Blob>> {
        blob(py, BlobData::Loaded(b.clone()))
    }
}

#[pymethods]
impl Sample {
    /// Global index of the sample in the dataset (stored order).
    #[getter]
    fn index(&self) -> u64 {
        self.index
    }

    /// The key as bytes (the source path up to the key dot).
    #[getter]
    fn key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.key)
    }

    /// The key as str, or None when it is not valid UTF-8.
    #[getter]
    fn key_str(&self) -> Option<String> {
        std::str::from_utf8(&self.key).ok().map(str::to_owned)
    }

    /// The class label, or None.
    #[getter]
    fn label(&self) -> Option<u32> {
        self.label
    }

    /// The bytes of field `name` (str or bytes). `KeyError` when the sample lacks it.
    fn __getitem__(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Py<Blob>> {
        let n = name_arg(name)?;
        let found = match self.field_index(&n) {
            Some(fi) => self.blob_of(py, fi)?,
            None => None,
        };
        found.ok_or_else(|| {
            PyKeyError::new_err(format!(
                "sample {:?} has no field {:?} (it has {:?})",
                lossy(&self.key),
                lossy(&n),
                self.present()
                    .map(|v| v.iter().map(|&f| self.field_name(f)).collect::<Vec<_>>())
                    .unwrap_or_default()
            ))
        })
    }

    fn __contains__(&self, name: &Bound<'_, PyAny>) -> PyResult<bool> {
        let n = name_arg(name)?;
        Ok(match self.field_index(&n) {
            Some(fi) => self.present()?.contains(&fi),
            None => false,
        })
    }

    /// All fields as a dict of name (str) -> `Blob`, in field order.
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        if let Fields::Loaded(v) = &self.fields {
            // The loader's path: no lookup, no name built (the names are shared strings).
            for f in v {
                d.set_item(
                    self.names[f.field as usize].bind(py),
                    Self::loaded_blob(py, &f.data)?,
                )?;
            }
            return Ok(d);
        }
        for fi in self.present()? {
            if let Some(b) = self.blob_of(py, fi)? {
                d.set_item(self.field_name(fi), b)?;
            }
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let names: Vec<String> = self
            .present()
            .map(|v| v.iter().map(|&f| self.field_name(f)).collect())
            .unwrap_or_default();
        format!(
            "<shardpack.Sample {} key={:?} label={} fields={:?}>",
            self.index,
            lossy(&self.key),
            self.label.map_or("None".to_string(), |l| l.to_string()),
            names
        )
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let fields = PyList::empty(py);
        for fi in self.present()? {
            if let Some(b) = self.blob_of(py, fi)? {
                let name = PyBytes::new(py, self.ds.manifest().fields[fi as usize].name.as_bytes());
                let data = PyBytes::new(py, b.get().as_slice());
                fields.append((name, data))?;
            }
        }
        let restore = py.import("shardpack._pickle")?.getattr("restore_sample")?;
        let args = (
            self.ds.dir().to_path_buf(),
            self.index,
            PyBytes::new(py, &self.key),
            self.label,
            fields,
        );
        (restore, args).into_pyobject(py)
    }
}

/// Rebuilds a pickled sample from its dataset (for the field table) and its copied bytes.
#[pyfunction]
fn _sample_from_parts(
    py: Python<'_>,
    ds: &Bound<'_, Dataset>,
    index: u64,
    key: Vec<u8>,
    label: Option<u32>,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
) -> PyResult<Py<Sample>> {
    let inner = ds.get().inner.clone();
    let names = ds.get().names.clone();
    let mut loaded = Vec::with_capacity(fields.len());
    for (name, data) in fields {
        let fi = inner
            .manifest()
            .fields
            .iter()
            .position(|f| f.name.as_bytes() == name.as_slice())
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "the dataset {} has no field {:?}",
                    inner.dir().display(),
                    lossy(&name)
                ))
            })?;
        loaded.push(LoadedField {
            field: fi as u32,
            data: SampleBytes::from(data),
        });
    }
    Py::new(
        py,
        Sample {
            index,
            key,
            label,
            ds: inner,
            names,
            fields: Fields::Loaded(loaded),
        },
    )
}

fn loaded_sample(ds: &Arc<shardpack::Dataset>, names: &Names, s: LoadedSample) -> Sample {
    Sample {
        index: s.index,
        key: s.key,
        label: s.label,
        ds: ds.clone(),
        names: names.clone(),
        fields: Fields::Loaded(s.fields),
    }
}

// ---------------------------------------------------------------------------------------------
// Loader
// ---------------------------------------------------------------------------------------------

/// One message from the feeder: a batch (or the error that ended it), where the loader stands
/// after it, and the samples it left out under `on_error="skip"` while making it. `None`: the
/// range is done.
struct Fed {
    batch: shardpack::Result<Vec<LoadedSample>>,
    /// The loader's position after this batch (planned samples: skipped ones count).
    consumed: u64,
    skipped: Vec<SkippedSample>,
}

type BatchResult = Option<Fed>;

/// A started loader: a feeder thread owns the Rust `Loader`, cuts its samples into batches
/// that stop exactly at the end of the range asked for, and sends them, two ahead, through a
/// channel, so the Python thread usually finds its next batch ready (no wait, no GIL
/// hand-off) and otherwise waits in short slices and sees Ctrl-C.
struct Running {
    rx: Mutex<mpsc::Receiver<BatchResult>>,
    feeder: Option<std::thread::JoinHandle<()>>,
    /// The next epoch's loader, already reading (`read_next_epoch`), left by the feeder when
    /// it finished the epoch.
    next: Arc<Mutex<Option<Loader>>>,
    /// The process that started the loader's threads.
    pid: u32,
}

/// Batches the feeder keeps ready ahead of Python (each holds its read buffers, which the
/// prefetch budget already counts).
const FEED_AHEAD: usize = 2;

impl Running {
    fn start(loader: Loader, batch_size: usize, end: u64) -> PyResult<Running> {
        let (tx, rx) = mpsc::sync_channel::<BatchResult>(FEED_AHEAD);
        let next = Arc::new(Mutex::new(None));
        let next_slot = next.clone();
        let feeder = std::thread::Builder::new()
            .name("shardpack-feeder".into())
            .spawn(move || {
                let mut loader = loader;
                loop {
                    let mut batch = Vec::with_capacity(batch_size);
                    let mut failed = None;
                    while batch.len() < batch_size && loader.consumed() < end {
                        match loader.next_sample() {
                            Some(Ok(s)) => batch.push(s),
                            Some(Err(e)) => {
                                failed = Some(e);
                                break;
                            }
                            None => break,
                        }
                    }
                    let skipped = loader.take_skipped();
                    let msg = match failed {
                        Some(e) => Some(Fed {
                            batch: Err(e),
                            consumed: loader.consumed(),
                            skipped,
                        }),
                        None if batch.is_empty() && skipped.is_empty() => None,
                        None => Some(Fed {
                            batch: Ok(batch),
                            consumed: loader.consumed(),
                            skipped,
                        }),
                    };
                    let last = msg.is_none();
                    if last && loader.next_epoch_started() {
                        // Handed to the next epoch (kept before the end message is sent, so
                        // that whoever joins this thread after it finds it).
                        if let (Ok(n), Ok(mut slot)) = (loader.next_epoch(), next_slot.lock()) {
                            *slot = Some(n);
                        }
                        let _ = tx.send(None);
                        return;
                    }
                    if tx.send(msg).is_err() || last {
                        break;
                    }
                }
                // Dropping the loader stops and joins its reading threads.
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start a loader thread: {e}")))?;
        Ok(Running {
            rx: Mutex::new(rx),
            feeder: Some(feeder),
            next,
            pid: std::process::id(),
        })
    }

    /// The next batch: taken at once when the feeder has one ready (the usual case: no GIL
    /// hand-off), else waited for in slices of 100 ms with the GIL released, checking for
    /// signals between them (a `KeyboardInterrupt` leaves the batch in the channel for the
    /// next call).
    fn recv(&self, py: Python<'_>) -> PyResult<BatchResult> {
        if let Ok(rx) = self.rx.try_lock() {
            match rx.try_recv() {
                Ok(b) => return Ok(b),
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(PyRuntimeError::new_err(
                        "the loader's feeder thread stopped unexpectedly",
                    ))
                }
            }
        }
        loop {
            let got = py.detach(|| match self.rx.lock() {
                Ok(rx) => rx.recv_timeout(Duration::from_millis(100)),
                Err(_) => Err(mpsc::RecvTimeoutError::Disconnected),
            });
            match got {
                Ok(b) => return Ok(b),
                Err(mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PyRuntimeError::new_err(
                        "the loader's feeder thread stopped unexpectedly",
                    ))
                }
            }
        }
    }

    /// Stops the feeder (its pending send fails once the channel is gone) and waits for it
    /// and the loader's threads: at most the batch being read.
    fn join(mut self) -> Option<Loader> {
        let (tx_gone, feeder) = (self.rx, self.feeder.take());
        drop(tx_gone);
        if let Some(f) = feeder {
            let _ = f.join();
        }
        self.next.lock().ok().and_then(|mut n| n.take())
    }
}

/// A sample left out under `on_error="skip"`, with its key when the index still gives it.
struct Skipped {
    sample: SkippedSample,
    key: Option<Vec<u8>>,
}

struct LoaderInner {
    running: Option<Running>,
    /// Where the next batch starts (kept current after every batch), expressed for this
    /// loader's rank and world size.
    state: LoaderState,
    /// Samples this rank gets in the current segment of the epoch (the whole epoch unless a
    /// state saved at another world size was loaded).
    len: u64,
    /// Stop after this many samples of the epoch (a sub-range of the epoch's order, for
    /// `shardpack.torch`'s `drop_last`); `None`: the whole epoch.
    end: Option<u64>,
    /// Samples left out under `on_error="skip"` since the loader was made, in the order met.
    skipped: Vec<Skipped>,
    /// Under `read_next_epoch`: the next epoch's loader, already reading, with the process
    /// that started it; used when the next start is exactly its start, else dropped.
    prepared: Option<(u32, Loader)>,
}

/// The native loader behind `shardpack.Loader` (which adds the rank defaults, drop_last
/// semantics in Python terms, state dicts and pickling). Construction starts no thread; the
/// reading threads start at the first batch.
#[pyclass(frozen, module = "shardpack._native", name = "_Loader")]
struct NativeLoader {
    ds: Arc<shardpack::Dataset>,
    opts: LoaderOptions,
    drop_last: bool,
    names: Names,
    inner: Mutex<LoaderInner>,
}

fn parse_shuffle(s: &str) -> Result<Shuffle, String> {
    match s {
        "chunked" => Ok(Shuffle::Chunked),
        "interleaved" => Ok(Shuffle::Interleaved),
        "none" => Ok(Shuffle::None),
        "full" => Ok(Shuffle::Full),
        _ => Err(format!(
            "shuffle must be \"interleaved\", \"chunked\", \"none\" or \"full\", not {s:?}"
        )),
    }
}

fn parse_direct(s: &str) -> Result<DirectIo, String> {
    match s {
        "auto" => Ok(DirectIo::Auto),
        "on" => Ok(DirectIo::On),
        "off" => Ok(DirectIo::Off),
        _ => Err(format!(
            "direct_io must be \"auto\", \"on\" or \"off\", not {s:?}"
        )),
    }
}

impl NativeLoader {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, LoaderInner>> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("the loader's lock is poisoned"))
    }

    /// Refuses a loader whose threads were started in another process (before a `fork`): they
    /// did not survive it. The loader is leaked, never joined, so no lock of theirs is touched.
    fn check_fork(inner: &mut LoaderInner) -> PyResult<()> {
        if inner
            .prepared
            .as_ref()
            .is_some_and(|p| p.0 != std::process::id())
        {
            // Its threads did not survive the fork: never joined, only forgotten.
            std::mem::forget(inner.prepared.take());
        }
        if let Some(r) = &inner.running {
            if r.pid != std::process::id() {
                let started = r.pid;
                let r = inner.running.take().expect("checked above");
                // SAFETY of leaking (no unsafe code): the threads are gone in this process;
                // leaking the loader never touches their locks or joins them.
                std::mem::forget(r);
                return Err(PyRuntimeError::new_err(format!(
                    "this shardpack Loader was started in process {started} and is used in \
                     process {} after a fork; its reading threads did not survive the fork. \
                     Create the Loader in the child (DataLoader workers: build it inside \
                     __iter__, as shardpack.torch.ShardIterableDataset does), or call \
                     set_epoch()/load_state_dict() here to start it again",
                    std::process::id()
                )));
            }
        }
        Ok(())
    }

    /// The running loader, started from the saved position if it is not running.
    fn started<'a>(&self, py: Python<'_>, inner: &'a mut LoaderInner) -> PyResult<&'a Running> {
        if inner.running.is_none() {
            let ds = self.ds.clone();
            let opts = LoaderOptions {
                epoch: inner.state.epoch,
                ..self.opts.clone()
            };
            let state = inner.state.clone();
            let end = self.end(inner);
            let loader = match inner.prepared.take() {
                // The next epoch read ahead, when this start is its start.
                Some((pid, l)) if pid == std::process::id() && l.state() == state => l,
                other => {
                    py.detach(move || {
                        drop(other); // stops and joins its threads
                        Loader::resume(ds, opts, &state)
                    })
                    .map_err(to_py)?
                }
            };
            inner.running = Some(Running::start(loader, self.opts.batch_size, end)?);
        }
        Ok(inner.running.as_ref().expect("started above"))
    }

    /// Stops and joins a running loader (the GIL released while its threads finish).
    fn stop(py: Python<'_>, inner: &mut LoaderInner) {
        if let Some(r) = inner.running.take() {
            if r.pid == std::process::id() {
                let pid = r.pid;
                if let Some(next) = py.detach(move || r.join()) {
                    inner.prepared = Some((pid, next));
                }
            } else {
                // Its threads did not survive the fork: joining them would wait forever.
                std::mem::forget(r);
            }
        }
    }

    /// The position this loader hands out samples up to: the epoch's end, the last full
    /// batch's under `drop_last`, or the sub-range's end set by `seek`.
    fn end(&self, inner: &LoaderInner) -> u64 {
        self.usable_len(inner.len)
            .min(inner.end.unwrap_or(u64::MAX))
    }

    /// Records what the feeder left out, with each sample's key where the index gives it.
    fn note_skipped(&self, inner: &mut LoaderInner, skipped: Vec<SkippedSample>) {
        for sample in skipped {
            let key = self.ds.get(sample.index).ok().map(|s| s.key().to_vec());
            inner.skipped.push(Skipped { sample, key });
        }
    }

    /// Samples per batch position at the end of the epoch when `drop_last` stops early.
    fn usable_len(&self, samples: u64) -> u64 {
        if self.drop_last {
            samples / self.opts.batch_size as u64 * self.opts.batch_size as u64
        } else {
            samples
        }
    }
}

#[pymethods]
impl NativeLoader {
    #[new]
    #[pyo3(signature = (dataset, *, batch_size, seed, epoch, rank, world_size, shuffle,
                        drop_last, chunk_bytes, window_chunks, io_threads, prefetch_bytes,
                        direct_io, on_error, indices=None, read_next_epoch=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dataset: &Bound<'_, Dataset>,
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
        indices: Option<Vec<u64>>,
        read_next_epoch: bool,
    ) -> PyResult<NativeLoader> {
        let opts = LoaderOptions {
            subset: indices.map(shardpack::loader::Subset::new),
            read_next_epoch,
            ..loader_options(
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
            )?
        };
        let ds = dataset.get().inner.clone();
        // Validates the options and computes the epoch's length without starting threads.
        let (state, len) =
            shardpack::loader::resume_point(&ds, &opts, &LoaderState::start(&ds, &opts))
                .map_err(to_py)?;
        Ok(NativeLoader {
            names: dataset.get().names.clone(),
            ds,
            opts,
            drop_last,
            inner: Mutex::new(LoaderInner {
                running: None,
                state,
                len,
                end: None,
                skipped: Vec::new(),
                prepared: None,
            }),
        })
    }

    /// The next batch (a list of `Sample`), or None at the end of the epoch. Starts the
    /// reading threads on the first call; releases the GIL while it waits (a batch that is
    /// already waiting is taken without releasing it).
    fn next_batch<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let mut inner = self.lock()?;
        Self::check_fork(&mut inner)?;
        let end = self.end(&inner);
        loop {
            if inner.state.samples_consumed >= end {
                // Done: the feeder has nothing more to give (under read_next_epoch it leaves
                // the next epoch's loader, kept for set_epoch).
                Self::stop(py, &mut inner);
                return Ok(None);
            }
            let got = self.started(py, &mut inner)?.recv(py)?;
            let Some(fed) = got else {
                // The feeder stops only at `end` (or the epoch's end, which `end` never
                // passes).
                inner.state.samples_consumed = inner.state.samples_consumed.max(end);
                Self::stop(py, &mut inner);
                return Ok(None);
            };
            inner.state.samples_consumed = fed.consumed;
            self.note_skipped(&mut inner, fed.skipped);
            let batch = fed.batch.map_err(to_py)?;
            if inner.end.is_some_and(|e| inner.state.samples_consumed >= e) {
                // A sub-range that ends before the epoch does: stop reading ahead now.
                Self::stop(py, &mut inner);
            }
            if batch.is_empty() {
                continue; // every sample of the rest was skipped; the next message ends it
            }
            if self.drop_last && batch.len() < self.opts.batch_size {
                return Ok(None);
            }
            let list = PyList::empty(py);
            for s in batch {
                list.append(Py::new(py, loaded_sample(&self.ds, &self.names, s))?)?;
            }
            return Ok(Some(list));
        }
    }

    /// Benchmark helper: takes the rest of the epoch's samples inside Rust (reading the first
    /// byte of every field, as a consumer would), creating no Python object; returns how many
    /// samples it took. Gives the Rust loader's own rate in the same process, through the
    /// same feeder thread and channel as `next_batch`, so that `python/bench/` can tell the
    /// Python path's per-sample overhead apart.
    fn _drain(&self, py: Python<'_>) -> PyResult<u64> {
        let mut inner = self.lock()?;
        Self::check_fork(&mut inner)?;
        let r = self.started(py, &mut inner)?;
        // The position and the skipped samples are recorded, and the feeder stopped, whether
        // the drain ends or fails.
        let (n, consumed, skipped, failed) = py.detach(|| {
            let mut n = 0u64;
            let mut touched = 0u64;
            let mut consumed = None;
            let mut skipped = Vec::new();
            let mut failed = None;
            match r.rx.lock() {
                Err(_) => failed = Some(Error::Options("the loader's lock is poisoned".into())),
                Ok(rx) => {
                    while let Ok(Some(fed)) = rx.recv() {
                        consumed = Some(fed.consumed);
                        skipped.extend(fed.skipped);
                        match fed.batch {
                            Ok(batch) => {
                                for s in batch {
                                    for f in &s.fields {
                                        let first = f.data.first().copied().unwrap_or(0);
                                        touched = touched.wrapping_add(first as u64);
                                    }
                                    n += 1;
                                }
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
            std::hint::black_box(touched);
            (n, consumed, skipped, failed)
        });
        if let Some(c) = consumed {
            inner.state.samples_consumed = c;
        }
        self.note_skipped(&mut inner, skipped);
        Self::stop(py, &mut inner);
        match failed {
            Some(e) => Err(to_py(e)),
            None => Ok(n),
        }
    }

    /// The samples left out under `on_error="skip"` since the loader was made, in the order
    /// met: dicts with `position` (in this rank's epoch, counting skipped samples), `index`
    /// (the global sample index), `key` (bytes, or None when the index cannot give it) and
    /// `reason` (the error's message: shard file, sample, key, field).
    #[getter]
    fn skipped<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let inner = self.lock()?;
        let list = PyList::empty(py);
        for s in &inner.skipped {
            let d = PyDict::new(py);
            d.set_item("position", s.sample.position)?;
            d.set_item("index", s.sample.index)?;
            d.set_item("key", s.key.as_deref().map(|k| PyBytes::new(py, k)))?;
            d.set_item("reason", &s.sample.reason)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// Restarts at `samples_consumed` of `epoch` (the loader's own seed, rank and world
    /// size), handing out samples up to position `end` of the epoch (default: its end).
    /// Stops the running threads; new ones start at the next batch.
    #[pyo3(signature = (epoch, samples_consumed, end=None))]
    fn seek(
        &self,
        py: Python<'_>,
        epoch: u64,
        samples_consumed: u64,
        end: Option<u64>,
    ) -> PyResult<()> {
        let opts = LoaderOptions {
            epoch,
            ..self.opts.clone()
        };
        let start = LoaderState::start(&self.ds, &opts);
        let (mut state, len) = py
            .detach(|| shardpack::loader::resume_point(&self.ds, &opts, &start))
            .map_err(to_py)?;
        if samples_consumed > len {
            return Err(value_error(
                py,
                format!(
                    "cannot resume at sample {samples_consumed}: this rank's epoch has \
                     {len} samples"
                ),
            ));
        }
        state.samples_consumed = samples_consumed;
        let mut inner = self.lock()?;
        Self::stop(py, &mut inner);
        inner.state = state;
        inner.len = len;
        inner.end = end;
        Ok(())
    }

    /// The position as the JSON of the library's `LoaderState` (the layout documented in the
    /// `shardpack::loader` module: a contract for checkpoints).
    fn state_json(&self) -> PyResult<String> {
        let state = self.lock()?.state.clone();
        serde_json::to_string(&state).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Continues from a `LoaderState` given as JSON (perhaps saved at another rank or world
    /// size): the library checks that it fits this dataset and these options (raising
    /// `ShardpackError` naming the field, the saved and the current value) and adopts its
    /// epoch. Stops the running threads; new ones start at the next batch.
    fn load_state(&self, py: Python<'_>, json: &str) -> PyResult<()> {
        let saved: LoaderState = serde_json::from_str(json).map_err(|e| {
            to_py(Error::State(format!(
                "not a shardpack loader state ({e}); pass a dict from Loader.state_dict()"
            )))
        })?;
        let opts = LoaderOptions {
            epoch: saved.epoch,
            ..self.opts.clone()
        };
        let (state, len) = py
            .detach(|| shardpack::loader::resume_point(&self.ds, &opts, &saved))
            .map_err(to_py)?;
        let mut inner = self.lock()?;
        Self::stop(py, &mut inner);
        inner.state = state;
        inner.len = len;
        inner.end = None;
        Ok(())
    }

    /// Stops the reading threads (they start again at the next batch, where this left off).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let mut inner = self.lock()?;
        Self::stop(py, &mut inner);
        if let Some((_, l)) = inner.prepared.take() {
            py.detach(move || drop(l));
        }
        Ok(())
    }

    /// Whether the next epoch's loader is read ahead and waiting (`read_next_epoch`).
    #[getter]
    fn next_epoch_ready(&self) -> PyResult<bool> {
        Ok(self.lock()?.prepared.is_some())
    }

    /// Whether reading threads are running (for tests: none before the first batch).
    #[getter]
    fn running(&self) -> PyResult<bool> {
        Ok(self.lock()?.running.is_some())
    }

    /// Samples this rank gets per epoch (the same on every rank: padded, or cut under
    /// drop_last); after loading a state saved at another world size, in the rest of the
    /// epoch.
    #[getter]
    fn samples_per_epoch(&self) -> PyResult<u64> {
        Ok(self.lock()?.len)
    }

    /// `(seed, epoch, rank, world_size, samples_consumed)`.
    #[getter]
    fn position(&self) -> PyResult<(u64, u64, u32, u32, u64)> {
        let s = &self.lock()?.state;
        Ok((s.seed, s.epoch, s.rank, s.world_size, s.samples_consumed))
    }
}

impl Drop for NativeLoader {
    fn drop(&mut self) {
        if let Ok(inner) = self.inner.get_mut() {
            if inner
                .prepared
                .as_ref()
                .is_some_and(|p| p.0 != std::process::id())
            {
                std::mem::forget(inner.prepared.take());
            }
            if let Some(r) = inner.running.take() {
                if r.pid != std::process::id() {
                    std::mem::forget(r);
                } else {
                    // Joining takes at most the batch being read; the GIL may be held here
                    // (drop from Python), which the threads never need.
                    r.join();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pack
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Counters {
    cancel: AtomicBool,
    walked: AtomicU64,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl UploadProgress for Counters {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

impl Progress for Counters {
    fn walking(&self, files: u64) {
        self.walked.store(files, Ordering::Relaxed);
    }
    fn start(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
    }
    fn advance(&self, files: u64, bytes: u64) {
        self.files_done.fetch_add(files, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }
    fn note(&self, msg: &str) {
        if let Ok(mut n) = self.notes.lock() {
            n.push(msg.to_string());
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

fn progress_dict<'py>(py: Python<'py>, c: &Counters) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("walked_files", c.walked.load(Ordering::Relaxed))?;
    d.set_item("files_total", c.files_total.load(Ordering::Relaxed))?;
    d.set_item("bytes_total", c.bytes_total.load(Ordering::Relaxed))?;
    d.set_item("files_done", c.files_done.load(Ordering::Relaxed))?;
    d.set_item("bytes_done", c.bytes_done.load(Ordering::Relaxed))?;
    let notes: Vec<String> = c
        .notes
        .lock()
        .map(|mut n| std::mem::take(&mut *n))
        .unwrap_or_default();
    d.set_item("notes", notes)?;
    Ok(d)
}

/// The Loader options `NativeLoader` and `NativeMixedLoader` take, checked and converted.
#[allow(clippy::too_many_arguments)]
pub(crate) fn loader_options(
    py: Python<'_>,
    seed: u64,
    epoch: u64,
    rank: u32,
    world_size: u32,
    batch_size: usize,
    shuffle: &str,
    chunk_bytes: u64,
    window_chunks: usize,
    io_threads: usize,
    prefetch_bytes: u64,
    direct_io: &str,
    drop_last: bool,
    on_error: &str,
) -> PyResult<LoaderOptions> {
    Ok(LoaderOptions {
        seed,
        epoch,
        rank,
        world_size,
        batch_size,
        shuffle: parse_shuffle(shuffle).map_err(|e| value_error(py, e))?,
        chunk_bytes,
        window_chunks,
        io_threads,
        prefetch_bytes,
        direct_io: parse_direct(direct_io).map_err(|e| value_error(py, e))?,
        drop_last,
        on_error: match on_error {
            "fail" => ErrorPolicy::Fail,
            "skip" => ErrorPolicy::Skip,
            _ => {
                return Err(value_error(
                    py,
                    format!("on_error must be \"fail\" or \"skip\", not {on_error:?}"),
                ))
            }
        },
        ..LoaderOptions::default()
    })
}

fn parse_policy(py: Python<'_>, s: &str) -> PyResult<Policy> {
    s.parse::<Policy>().map_err(|e| value_error(py, e))
}

/// The pack options `_pack` and `_plan` take, checked and converted (the Python side has
/// normalised sizes and shares already).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_options(
    py: Python<'_>,
    shard_size: u64,
    max_samples_per_shard: Option<u64>,
    compress: &str,
    field_compress: &[(String, String)],
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
) -> PyResult<PackOptions> {
    let mut fc = std::collections::BTreeMap::new();
    for (ext, pol) in field_compress {
        let ext = ext.trim_start_matches('.');
        if fc
            .insert(ext.as_bytes().to_vec(), parse_policy(py, pol)?)
            .is_some()
        {
            return Err(value_error(
                py,
                format!("field_compress names field {ext:?} twice"),
            ));
        }
    }
    Ok(PackOptions {
        writer: WriterOptions {
            shard_size,
            max_samples_per_shard,
            record_align: align,
        },
        compress: parse_policy(py, compress)?,
        field_compress: fc,
        shuffle_seed,
        threads,
        io_threads,
        labels: match labels {
            "imagefolder" => LabelMode::ImageFolder,
            "none" => LabelMode::None,
            _ => {
                return Err(value_error(
                    py,
                    format!("labels must be \"imagefolder\" or \"none\", not {labels:?}"),
                ))
            }
        },
        key: key.parse::<KeyMode>().map_err(|e| value_error(py, e))?,
        symlinks: symlinks
            .parse::<SymlinkPolicy>()
            .map_err(|e| value_error(py, e))?,
        max_skipped_share: if (0.0..=1.0).contains(&max_skipped_share) {
            max_skipped_share
        } else {
            return Err(value_error(
                py,
                format!("max_skipped_share must be a share from 0 to 1, not {max_skipped_share}"),
            ));
        },
        unlabeled: unlabeled
            .parse::<UnlabeledPolicy>()
            .map_err(|e| value_error(py, e))?,
        skip_errors,
        ..PackOptions::default()
    })
}

/// `dict_trainer` as `pack --dict-trainer` takes it (`fastcover` or `zdict`).
pub(crate) fn parse_trainer(py: Python<'_>, name: &str) -> PyResult<DictTrainer> {
    name.parse::<DictTrainer>()
        .map_err(|e| value_error(py, format!("invalid option: dict_trainer: {e}")))
}

/// Packs `src` (a folder tree, or any source `shardpack pack` takes: WebDataset tars, an MDS
/// dataset, Parquet files) into a dataset at `out` and returns the summary as JSON text
/// (the keys of `shardpack pack --json`). Runs on a Rust thread with the GIL released; every
/// ~100 ms the calling thread checks for Ctrl-C (which cancels the pack: what it wrote is
/// removed, then `KeyboardInterrupt` is raised) and calls `progress(dict)` when given.
#[pyfunction]
#[pyo3(signature = (src, out, *, shard_size, max_samples_per_shard, compress, field_compress,
                    align, shuffle_seed, threads, io_threads, labels, key, symlinks,
                    max_skipped_share, unlabeled, skip_errors, force, progress,
                    key_column = None, label_column = None, field_columns = Vec::new(),
                    dict_trainer = "fastcover", refs = true))]
#[allow(clippy::too_many_arguments)]
fn _pack(
    py: Python<'_>,
    src: PathBuf,
    out: PathBuf,
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
    force: bool,
    progress: Option<Py<PyAny>>,
    key_column: Option<String>,
    label_column: Option<String>,
    field_columns: Vec<String>,
    dict_trainer: &str,
    refs: bool,
) -> PyResult<String> {
    let mut opts = PackOptions {
        force,
        ..pack_options(
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
        )?
    };
    // MDS and Parquet sources (`shardpack pack --key-column/--label-column/--field-column`).
    opts.source.key_column = key_column;
    opts.source.label_column = label_column;
    opts.source.field_columns = field_columns;
    opts.dict_trainer = parse_trainer(py, dict_trainer)?;
    opts.refs = refs;
    // An s3:// OUT, as `shardpack pack SRC s3://...` takes it: the destination is checked
    // before packing, the dataset packed in a staging folder (removed at the end), then
    // uploaded with the manifest last (`shardpack::storage::upload`).
    let remote = match shardpack::storage::url_of(&out).map(Location::parse) {
        Some(Ok(dest @ (Location::S3 { .. } | Location::Http(_)))) => {
            let ropts = RemoteOptions::from_env();
            py.detach(|| check_destination(&dest, &ropts, force))
                .map_err(to_py)?;
            let stage = Staging::new(&std::env::temp_dir()).map_err(to_py)?;
            opts.force = false; // the staging folder is new
            Some((dest, ropts, stage))
        }
        Some(Err(e)) => return Err(value_error(py, e)),
        _ => None,
    };
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel();
    let rx = Mutex::new(rx); // `detach` needs Sync captures
    let c2 = counters.clone();
    let worker = std::thread::Builder::new()
        .name("shardpack-pack".into())
        .spawn(move || {
            let json = |s: &compile::PackSummary| serde_json::to_value(s).expect("serializes");
            let r = match remote {
                None => compile::pack(&src, &out, &opts, &*c2).map(|s| json(&s)),
                Some((dest, ropts, stage)) => {
                    let local = stage.path().join("dataset");
                    compile::pack(&src, &local, &opts, &*c2).and_then(|mut s| {
                        let uopts = UploadOptions {
                            force,
                            ..UploadOptions::default()
                        };
                        let up = upload_dataset(&local, &dest, &ropts, &uopts, &*c2)?;
                        s.out = PathBuf::from(dest.url());
                        let mut v = json(&s);
                        v["upload"] = serde_json::to_value(&up).expect("serializes");
                        Ok(v)
                    })
                    // `stage` is dropped here: the staging folder goes.
                }
            };
            let _ = tx.send(r.map(|v| v.to_string()));
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the pack thread: {e}")))?;
    let finish = |py: Python<'_>| {
        let _ = py.detach(|| worker.join());
    };
    loop {
        let got = py.detach(|| match rx.lock() {
            Ok(rx) => rx.recv_timeout(Duration::from_millis(100)),
            Err(_) => Err(mpsc::RecvTimeoutError::Disconnected),
        });
        let interrupt = py.check_signals().err();
        let cb_err = match (&progress, &interrupt) {
            (Some(cb), None) => progress_dict(py, &counters)
                .and_then(|d| cb.bind(py).call1((d,)))
                .err(),
            _ => None,
        };
        if let Some(e) = interrupt.or(cb_err) {
            counters.cancel.store(true, Ordering::Relaxed);
            // Wait for the pack to remove what it wrote before raising.
            py.detach(|| {
                if let Ok(rx) = rx.lock() {
                    let _ = rx.recv();
                }
            });
            finish(py);
            return Err(e);
        }
        match got {
            Ok(r) => {
                finish(py);
                return r.map_err(to_py);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                finish(py);
                return Err(PyRuntimeError::new_err(
                    "the pack thread stopped unexpectedly",
                ));
            }
        }
    }
}

/// The library's version.
#[pyfunction]
fn _version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Dataset>()?;
    m.add_class::<DatasetIter>()?;
    m.add_class::<Sample>()?;
    m.add_class::<Blob>()?;
    m.add_class::<ArrowStream>()?;
    m.add_class::<NativeLoader>()?;
    m.add_class::<mix::NativeMixedLoader>()?;
    m.add_function(wrap_pyfunction!(_pack, m)?)?;
    m.add_function(wrap_pyfunction!(_sample_from_parts, m)?)?;
    m.add_function(wrap_pyfunction!(_version, m)?)?;
    plan::register(m)?;
    remote::register(m)?; // shardpack.open(url, mode=..., cache_dir=..., cache_limit=...)
    Ok(())
}

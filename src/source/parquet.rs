//! Parquet files (what pyarrow, pandas, Spark, DuckDB and Hugging Face `datasets` write) as a
//! source (feature `parquet`; parquet 60 needs Rust 1.88).
//!
//! - **Inputs.** One `.parquet` file, several, or a folder of them (sorted by name; hidden and
//!   `_`-prefixed files such as Spark's `_SUCCESS` are ignored). Every file must have the same
//!   Arrow schema as the first. Rows are samples, in file order then row order.
//! - **Fields.** Every binary column (`binary`, `large_binary`, `binary_view`,
//!   `fixed_size_binary`) becomes a field of the column's name, its values the records' bytes
//!   exactly (compressed by the field's policy like files of a tree). A Hugging Face image
//!   column (`struct<bytes: binary, path: string>`, what `datasets.Image()` writes) becomes a
//!   field named after the column holding the `bytes` (the `path` is not kept).
//!   `--field-column` (repeatable) picks the field columns instead; naming a column that is
//!   neither is an error. A **null** value means the sample lacks that field (as a tree sample
//!   lacks a file); a row with no value at all is an error.
//! - **Key.** `--key-column` (a string, binary or integer column; integers in decimal), or
//!   else the row's number over all files, zero-padded to at least six digits. A null key or
//!   two equal keys are errors naming the file, row group and row.
//! - **Label.** `--label-column`: a string column's distinct values, sorted by bytes, are the
//!   classes and each sample's label is its class id (the manifest's `labels` is then
//!   `"imagefolder"`: class ids of sorted class names); an integer column's values are the
//!   labels as they are (`labels` `"none"`, no class names); null (and `-1`, Hugging Face's
//!   "no label") gives no label; other negative values, and values from 2^32 - 1 up, are
//!   errors. Without it, labels follow `--labels` as for MDS (`imagefolder` takes the key's
//!   first folder).
//! - **Metadata.** Every other column of a scalar type (booleans, integers, floats, strings,
//!   dictionary-encoded strings, dates and timestamps as their integer value) is kept as
//!   per-sample metadata: the field `__meta__.json` of each sample (see [`crate::metadata`]);
//!   columns of other types (lists, structs, decimals, ...) and binary columns left out by
//!   `--field-column` are left out, and a note names them.
//! - **Reading.** The scan decodes each row group once, in batches of bounded size (a quarter
//!   of the pack window), to learn every value's size; the pack reads the files again as one
//!   stream ([`Access::Sequential`]): one row group at a time, a batch at a time, so each
//!   value is decoded once and memory stays bounded by the pack budget whatever the file
//!   size. The samples therefore keep the Parquet row order (the pack-time shuffle is off and
//!   a note says so). Codecs: uncompressed, snappy, gzip, lz4 (raw and Hadoop framing), zstd.
//! - **Errors.** A file that is not Parquet (or is damaged), a missing column, a column of
//!   the wrong type, a null key, duplicate keys: an error naming the file, and the row group
//!   and row where there is one. The pipeline removes what it wrote.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Int8Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field as ArrowField, TimeUnit};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::ProjectionMask;
use serde_json::{json, Map, Value};

use crate::compile::{Cancel, LabelMode, PackOptions, Progress};
use crate::error::{Error, Result};
use crate::metadata::{float_value, MetaType, METADATA_FIELD};

use super::{lossy, Access, Catalog, CatalogBuilder, Labels, Member, MemberRef, Source};

/// How a field column's values are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    /// A binary column.
    Binary,
    /// A `struct<bytes, path>`: the `bytes` child.
    Image,
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

fn field_kind(t: &DataType) -> Option<FieldKind> {
    if is_binary(t) {
        return Some(FieldKind::Binary);
    }
    if let DataType::Struct(children) = t {
        let bytes = children.iter().find(|c| c.name() == "bytes");
        if bytes.is_some_and(|c| is_binary(c.data_type()))
            && children
                .iter()
                .all(|c| c.name() == "bytes" || c.name() == "path")
        {
            return Some(FieldKind::Image);
        }
    }
    None
}

fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

fn is_int(t: &DataType) -> bool {
    t.is_integer()
}

/// The metadata type of a column, if it is kept as metadata.
fn meta_type(t: &DataType) -> Option<MetaType> {
    Some(match t {
        DataType::Boolean => MetaType::Bool,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Date32
        | DataType::Date64
        | DataType::Timestamp(..) => MetaType::Int64,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            MetaType::UInt64
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => MetaType::Float64,
        t if is_string(t) => MetaType::String,
        _ => return None,
    })
}

/// The bytes of a binary (or image struct) value; `None` for null.
fn bytes_at(a: &dyn Array, kind: FieldKind, row: usize) -> Option<&[u8]> {
    if a.is_null(row) {
        return None;
    }
    let a = match kind {
        FieldKind::Binary => a,
        FieldKind::Image => a.as_struct().column_by_name("bytes")?.as_ref(),
    };
    if a.is_null(row) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Binary => a.as_binary::<i32>().value(row),
        DataType::LargeBinary => a.as_binary::<i64>().value(row),
        DataType::BinaryView => a.as_binary_view().value(row),
        DataType::FixedSizeBinary(_) => a.as_fixed_size_binary().value(row),
        _ => return None,
    })
}

/// The text of a string value; `None` for null.
fn str_at(a: &dyn Array, row: usize) -> Option<&str> {
    if a.is_null(row) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(row)),
        DataType::Utf8View => Some(a.as_string_view().value(row)),
        DataType::Dictionary(..) => {
            let d = a.as_any_dictionary();
            let k = usize::try_from(int_at(d.keys(), row)?).ok()?;
            str_at(d.values().as_ref(), k)
        }
        _ => None,
    }
}

/// A signed integer value (dates and timestamps as their integer); `None` for null.
fn int_at(a: &dyn Array, row: usize) -> Option<i128> {
    if a.is_null(row) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Int8 => a.as_primitive::<Int8Type>().value(row) as i128,
        DataType::Int16 => a.as_primitive::<Int16Type>().value(row) as i128,
        DataType::Int32 => a.as_primitive::<Int32Type>().value(row) as i128,
        DataType::Int64 => a.as_primitive::<Int64Type>().value(row) as i128,
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(row) as i128,
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(row) as i128,
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(row) as i128,
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(row) as i128,
        DataType::Date32 => a.as_primitive::<Date32Type>().value(row) as i128,
        DataType::Date64 => a.as_primitive::<Date64Type>().value(row) as i128,
        DataType::Timestamp(unit, _) => {
            (match unit {
                TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(row),
                TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(row),
                TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().value(row),
                TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().value(row),
            }) as i128
        }
        _ => return None,
    })
}

/// A metadata value as JSON.
fn meta_at(a: &dyn Array, ty: MetaType, row: usize) -> Value {
    if a.is_null(row) {
        return Value::Null;
    }
    match ty {
        MetaType::Bool => Value::Bool(a.as_boolean().value(row)),
        MetaType::Int64 | MetaType::UInt64 => match int_at(a, row) {
            Some(v) if v < 0 => json!(v as i64),
            Some(v) => json!(v as u64),
            None => Value::Null,
        },
        MetaType::Float64 => float_value(match a.data_type() {
            DataType::Float16 => a.as_primitive::<Float16Type>().value(row).to_f64(),
            DataType::Float32 => a.as_primitive::<Float32Type>().value(row) as f64,
            _ => a.as_primitive::<Float64Type>().value(row),
        }),
        MetaType::String => str_at(a, row).map_or(Value::Null, Value::from),
    }
}

/// One input file: its footer, read once.
struct PqFile {
    path: PathBuf,
    meta: ArrowReaderMetadata,
    /// First row (in the file) of each row group, then the file's row count.
    starts: Vec<u64>,
}

impl PqFile {
    /// The row group holding file row `row`.
    fn row_group(&self, row: u64) -> usize {
        self.starts.partition_point(|&s| s <= row) - 1
    }
}

/// Rows per decoded batch of row group `rg`: about `budget` bytes of it (uncompressed).
fn batch_rows(f: &PqFile, rg: usize, budget: u64) -> usize {
    let g = f.meta.metadata().row_group(rg);
    let rows = g.num_rows().max(1) as u64;
    let avg = (g.total_byte_size().max(1) as u64).div_ceil(rows).max(1);
    (budget / avg).clamp(1, 8192) as usize
}

/// The decoder of one row group, and its current batch.
struct Cursor {
    file: u32,
    /// One past the row group's last file row.
    end: u64,
    reader: ParquetRecordBatchReader,
    batch: RecordBatch,
    /// The file row of the batch's first row.
    start: u64,
}

/// Parquet files being packed (see the module docs).
pub struct ParquetSource {
    root: PathBuf,
    files: Vec<PqFile>,
    /// Field name -> (root column index, kind).
    fields: HashMap<Vec<u8>, (usize, FieldKind)>,
    /// The field columns, sorted (the read projection).
    projection: Vec<usize>,
    budget: u64,
    cursor: Mutex<Option<Cursor>>,
}

impl std::fmt::Debug for ParquetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSource")
            .field("root", &self.root)
            .field("files", &self.files.len())
            .finish()
    }
}

/// The message for a decode error at `rows` of row group `rg`.
fn decode_error(rg: usize, rows: std::ops::Range<u64>, e: impl std::fmt::Display) -> String {
    format!(
        "row group {rg}, rows {}..{}: cannot decode: {e}; the file is damaged or not \
         Parquet: write it again",
        rows.start, rows.end
    )
}

/// A reader of row group `rg` of `f` from file row `from`, with `projection`'s columns.
fn open_reader(
    f: &PqFile,
    rg: usize,
    from: u64,
    projection: &[usize],
    budget: u64,
) -> std::result::Result<ParquetRecordBatchReader, String> {
    let file = File::open(&f.path).map_err(|e| format!("cannot open: {e}"))?;
    let mask = ProjectionMask::roots(f.meta.parquet_schema(), projection.iter().copied());
    let (first, end) = (f.starts[rg], f.starts[rg + 1]);
    let mut b = ParquetRecordBatchReaderBuilder::new_with_metadata(file, f.meta.clone())
        .with_projection(mask)
        .with_row_groups(vec![rg])
        .with_batch_size(batch_rows(f, rg, budget));
    if from > first {
        b = b.with_row_selection(RowSelection::from(vec![
            RowSelector::skip((from - first) as usize),
            RowSelector::select((end - from) as usize),
        ]));
    }
    b.build().map_err(|e| decode_error(rg, from..end, e))
}

impl ParquetSource {
    fn value(&self, m: &MemberRef<'_>) -> std::result::Result<Vec<u8>, String> {
        let &(col, kind) = self
            .fields
            .get(m.field)
            .ok_or("not a field column of the files")?;
        let (fi, row) = (m.member.file, m.member.offset);
        let f = &self.files[fi as usize];
        let mut cur = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = match cur.as_ref() {
            Some(c) => c.file != fi || row < c.start || row >= c.end,
            None => true,
        };
        if fresh {
            *cur = None;
            let rg = f.row_group(row);
            let mut reader = open_reader(f, rg, row, &self.projection, self.budget)?;
            let end = f.starts[rg + 1];
            let batch = match reader.next() {
                Some(Ok(b)) => b,
                Some(Err(e)) => return Err(decode_error(rg, row..end, e)),
                None => return Err(decode_error(rg, row..end, "no rows")),
            };
            *cur = Some(Cursor {
                file: fi,
                end,
                reader,
                batch,
                start: row,
            });
        }
        let c = cur.as_mut().expect("set above");
        while row >= c.start + c.batch.num_rows() as u64 {
            let next = c.start + c.batch.num_rows() as u64;
            let rg = f.row_group(next);
            match c.reader.next() {
                Some(Ok(b)) => {
                    c.batch = b;
                    c.start = next;
                }
                Some(Err(e)) => {
                    let e = decode_error(rg, next..c.end, e);
                    *cur = None;
                    return Err(e);
                }
                None => {
                    *cur = None;
                    return Err(decode_error(rg, next..row + 1, "the row group ended early"));
                }
            }
        }
        let pos = self
            .projection
            .iter()
            .position(|&p| p == col)
            .expect("field columns are projected");
        let a = c.batch.column(pos);
        let local = (row - c.start) as usize;
        let v = bytes_at(a.as_ref(), kind, local)
            .ok_or_else(|| format!("row {row} is null, and was not when scanned"))?;
        if v.len() as u64 != m.member.size {
            return Err(format!(
                "row {row} holds {} bytes, {} when scanned: the file changed during the pack",
                v.len(),
                m.member.size
            ));
        }
        Ok(v.to_vec())
    }
}

impl Source for ParquetSource {
    fn access(&self) -> Access {
        Access::Sequential
    }

    fn read(&self, m: &MemberRef<'_>) -> std::result::Result<Vec<u8>, String> {
        self.value(m)
    }

    fn open(
        &self,
        m: &MemberRef<'_>,
    ) -> std::result::Result<Box<dyn std::io::Read + Send + '_>, String> {
        Ok(Box::new(std::io::Cursor::new(self.value(m)?)))
    }

    fn path(&self, m: &MemberRef<'_>) -> PathBuf {
        self.files[m.member.file as usize].path.clone()
    }

    fn error(&self, m: &MemberRef<'_>, reason: String) -> Error {
        let f = &self.files[m.member.file as usize];
        let rg = f.row_group(m.member.offset);
        Error::input(
            &f.path,
            format!(
                "row group {rg}, row {} (sample {}), column {}: {reason}",
                m.member.offset,
                lossy(m.key),
                lossy(m.field)
            ),
        )
    }

    fn skip_name(&self, m: &MemberRef<'_>) -> Vec<u8> {
        let p = self.path(m);
        let rel = p.strip_prefix(&self.root).unwrap_or(&p);
        let rel = if rel.as_os_str().is_empty() {
            p.file_name().map(Path::new).unwrap_or(&p)
        } else {
            rel
        };
        format!("{}:{}.{}", rel.display(), m.member.offset, lossy(m.field)).into_bytes()
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn sequential_note(&self) -> String {
        "Parquet files are read as one stream, row group by row group (each decoded once), so \
         the samples keep the row order instead of being shuffled at pack time; the Loader \
         shuffles samples when training"
            .into()
    }
}

/// Where a row is, for messages.
fn at(f: &PqFile, row: u64) -> String {
    format!("row group {}, row {row}", f.row_group(row))
}

/// What each column of the schema is for.
struct Plan {
    fields: Vec<(String, usize, FieldKind)>,
    key: Option<(usize, DataType)>,
    label: Option<(usize, bool)>,
    meta: Vec<(String, usize, MetaType)>,
    left_out: Vec<String>,
}

fn plan(path: &Path, schema: &[std::sync::Arc<ArrowField>], opts: &PackOptions) -> Result<Plan> {
    let names: Vec<&str> = schema.iter().map(|f| f.name().as_str()).collect();
    let find = |flag: &str, name: &str| -> Result<usize> {
        names.iter().position(|n| *n == name).ok_or_else(|| {
            Error::input(
                path,
                format!(
                    "has no column {name:?} (from {flag}); its columns are: {}",
                    names.join(", ")
                ),
            )
        })
    };
    let key = match &opts.source.key_column {
        Some(k) => {
            let i = find("--key-column", k)?;
            let t = schema[i].data_type();
            if !(is_string(t) || is_binary(t) || is_int(t)) {
                return Err(Error::input(
                    path,
                    format!(
                        "column {k:?} (from --key-column) is {t}, not a string, binary or \
                         integer column"
                    ),
                ));
            }
            Some((i, t.clone()))
        }
        None => None,
    };
    let label = match &opts.source.label_column {
        Some(l) => {
            let i = find("--label-column", l)?;
            let t = schema[i].data_type();
            if !(is_string(t) || is_int(t)) {
                return Err(Error::input(
                    path,
                    format!(
                        "column {l:?} (from --label-column) is {t}, not a string or integer \
                         column"
                    ),
                ));
            }
            Some((i, is_string(t)))
        }
        None => None,
    };
    let mut chosen: Vec<usize> = Vec::new();
    for c in &opts.source.field_columns {
        let i = find("--field-column", c)?;
        let t = schema[i].data_type();
        if field_kind(t).is_none() {
            return Err(Error::input(
                path,
                format!(
                    "column {c:?} (from --field-column) is {t}: a field column must be binary \
                     or a Hugging Face image struct<bytes: binary, path: string>"
                ),
            ));
        }
        chosen.push(i);
    }
    let mut p = Plan {
        fields: Vec::new(),
        key,
        label,
        meta: Vec::new(),
        left_out: Vec::new(),
    };
    for (i, f) in schema.iter().enumerate() {
        let used = p.key.as_ref().is_some_and(|k| k.0 == i) || p.label.is_some_and(|l| l.0 == i);
        if used && !chosen.contains(&i) {
            continue;
        }
        let name = f.name().clone();
        let fk = field_kind(f.data_type());
        if let Some(kind) = fk.filter(|_| chosen.is_empty() || chosen.contains(&i)) {
            if name.as_bytes() == METADATA_FIELD {
                return Err(Error::input(
                    path,
                    format!(
                        "has a binary column named {name:?}, the name shardpack keeps each \
                         sample's metadata under; rename the column"
                    ),
                ));
            }
            p.fields.push((name, i, kind));
        } else if let Some(ty) = meta_type(f.data_type()).filter(|_| fk.is_none()) {
            p.meta.push((name, i, ty));
        } else {
            p.left_out.push(format!("{name} ({})", f.data_type()));
        }
    }
    Ok(p)
}

/// Scans Parquet files into a catalog (see the module docs).
pub(crate) fn scan(
    root: &Path,
    paths: &[PathBuf],
    opts: &PackOptions,
    progress: &dyn Progress,
    cancel: &Cancel<'_>,
) -> Result<(ParquetSource, Catalog)> {
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        cancel.stop()?;
        if paths.len() > u32::MAX as usize - 1 {
            return Err(Error::Options("more than 4 billion Parquet files".into()));
        }
        let f = File::open(p).map_err(|e| Error::io(p, "open", e))?;
        let meta = ArrowReaderMetadata::load(&f, Default::default()).map_err(|e| {
            Error::input(
                p,
                format!(
                    "is not a readable Parquet file ({e}); it may be damaged or truncated: \
                     write it again"
                ),
            )
        })?;
        let mut starts = vec![0u64];
        for g in meta.metadata().row_groups() {
            starts.push(starts.last().expect("one") + g.num_rows().max(0) as u64);
        }
        files.push(PqFile {
            path: p.clone(),
            meta,
            starts,
        });
    }
    let schema = files[0].meta.schema().clone();
    for f in &files[1..] {
        if f.meta.schema().fields() != schema.fields() {
            return Err(Error::input(
                &f.path,
                format!(
                    "has another schema than {} (every file of a Parquet source must have the \
                     same columns and types); pack them separately",
                    files[0].path.display()
                ),
            ));
        }
    }
    let plan = plan(&files[0].path, schema.fields(), opts)?;
    let labels = match (plan.label, opts.labels) {
        (Some(_), _) | (None, LabelMode::None) => Labels::Given,
        (None, LabelMode::ImageFolder) => Labels::ImageFolder,
    };
    let total: u64 = files.iter().map(|f| *f.starts.last().expect("one")).sum();
    let width = total.saturating_sub(1).to_string().len().max(6);
    let budget = (opts.window_bytes / 4).max(1 << 20);
    let mut projection: Vec<usize> = plan.fields.iter().map(|f| f.1).collect();
    projection.extend(plan.key.as_ref().map(|k| k.0));
    projection.extend(plan.label.map(|l| l.0));
    projection.extend(plan.meta.iter().map(|m| m.1));
    projection.sort_unstable();
    projection.dedup();
    let pos = |col: usize| projection.binary_search(&col).expect("projected");

    let mut b = CatalogBuilder::new(labels);
    let mut where_: Vec<(u32, u64)> = Vec::new();
    let mut classes: Vec<Vec<u8>> = Vec::new();
    let mut class_ids: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut number = 0u64;
    let mut key_buf = Vec::new();
    let mut meta_buf = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        for rg in 0..f.starts.len() - 1 {
            cancel.stop()?;
            let (first, end) = (f.starts[rg], f.starts[rg + 1]);
            if first == end {
                continue;
            }
            let reader = open_reader(f, rg, first, &projection, budget)
                .map_err(|e| Error::input(&f.path, e))?;
            let mut row = first;
            for batch in reader {
                cancel.stop()?;
                let batch =
                    batch.map_err(|e| Error::input(&f.path, decode_error(rg, row..end, e)))?;
                let col = |c: usize| batch.column(pos(c));
                for local in 0..batch.num_rows() {
                    let r = row + local as u64;
                    key_buf.clear();
                    match &plan.key {
                        None => key_buf.extend_from_slice(format!("{number:0width$}").as_bytes()),
                        Some((c, t)) => {
                            let a = col(*c).as_ref();
                            let ok = if is_string(t) {
                                str_at(a, local).map(|s| key_buf.extend_from_slice(s.as_bytes()))
                            } else if is_binary(t) {
                                bytes_at(a, FieldKind::Binary, local)
                                    .map(|s| key_buf.extend_from_slice(s))
                            } else {
                                int_at(a, local)
                                    .map(|v| key_buf.extend_from_slice(v.to_string().as_bytes()))
                            };
                            if ok.is_none() {
                                return Err(Error::input(
                                    &f.path,
                                    format!(
                                        "{}: the key (column {:?}) is null; every sample needs a \
                                         key: fill it, or pack without --key-column (keys are \
                                         then row numbers)",
                                        at(f, r),
                                        schema.field(*c).name()
                                    ),
                                ));
                            }
                        }
                    }
                    let label = match plan.label {
                        None => None,
                        Some((c, true)) => str_at(col(c).as_ref(), local).map(|s| {
                            let next = classes.len() as u32;
                            *class_ids.entry(s.as_bytes().to_vec()).or_insert_with(|| {
                                classes.push(s.as_bytes().to_vec());
                                next
                            })
                        }),
                        Some((c, false)) => match int_at(col(c).as_ref(), local) {
                            None | Some(-1) => None,
                            Some(v) if (0..u32::MAX as i128).contains(&v) => Some(v as u32),
                            Some(v) => {
                                return Err(Error::input(
                                    &f.path,
                                    format!(
                                        "{}: label {v} (column {:?}) is not a class id from 0 \
                                         to 4294967294 (null or -1 mean no label)",
                                        at(f, r),
                                        schema.field(c).name()
                                    ),
                                ))
                            }
                        },
                    };
                    let members: Vec<(&[u8], Member)> = plan
                        .fields
                        .iter()
                        .filter_map(|(name, c, kind)| {
                            bytes_at(col(*c).as_ref(), *kind, local).map(|v| {
                                (
                                    name.as_bytes(),
                                    Member {
                                        field: 0,
                                        file: fi as u32,
                                        size: v.len() as u64,
                                        offset: r,
                                    },
                                )
                            })
                        })
                        .collect();
                    let meta = if plan.meta.is_empty() {
                        None
                    } else {
                        let m: Map<String, Value> = plan
                            .meta
                            .iter()
                            .map(|(name, c, ty)| {
                                (name.clone(), meta_at(col(*c).as_ref(), *ty, local))
                            })
                            .collect();
                        meta_buf.clear();
                        serde_json::to_writer(&mut meta_buf, &Value::Object(m))
                            .expect("JSON serializes");
                        Some(meta_buf.as_slice())
                    };
                    if members.is_empty() && meta.is_none() {
                        return Err(Error::input(
                            &f.path,
                            format!(
                                "{}: every field column is null, so the sample would be empty; \
                                 drop the row or fill a value",
                                at(f, r)
                            ),
                        ));
                    }
                    b.push_with_metadata(&key_buf, label, members, meta)?;
                    where_.push((fi as u32, r));
                    number += 1;
                }
                row += batch.num_rows() as u64;
                progress.walking(number);
            }
            if row != end {
                return Err(Error::input(
                    &f.path,
                    decode_error(rg, row..end, format!("{} rows decoded", row - first)),
                ));
            }
        }
    }
    if number == 0 {
        return Err(Error::input(root, "holds no rows; nothing to pack"));
    }
    let mut cat = match plan.label {
        Some((_, true)) => b.finish_with_classes(classes),
        _ => b.finish(),
    };
    if let Some((a, z)) = cat.duplicate_key() {
        let (fa, ra) = where_[a];
        let (fz, rz) = where_[z];
        let (pa, pz) = (&files[fa as usize], &files[fz as usize]);
        return Err(Error::input(
            &pz.path,
            format!(
                "{} has the key {:?} (from --key-column), as has {} {}; shardpack keys must be \
                 unique: choose a column with unique values, or no --key-column (row numbers)",
                at(pz, rz),
                lossy(cat.key(z)),
                pa.path.display(),
                at(pa, ra)
            ),
        ));
    }
    if !plan.left_out.is_empty() {
        cat.notes.push(format!(
            "Parquet columns left out (neither a field nor scalar metadata): {}",
            plan.left_out.join(", ")
        ));
    }
    let cols: BTreeMap<String, Value> = plan
        .fields
        .iter()
        .map(|(n, _, k)| {
            let kind = match k {
                FieldKind::Binary => "binary",
                FieldKind::Image => "image",
            };
            (n.clone(), json!(kind))
        })
        .collect();
    let mut src = Map::new();
    src.insert("format".into(), json!("parquet"));
    src.insert("files".into(), json!(files.len()));
    src.insert("rows".into(), json!(total));
    src.insert("fields".into(), json!(cols));
    src.insert("key_column".into(), json!(opts.source.key_column));
    src.insert("label_column".into(), json!(opts.source.label_column));
    cat.options.insert("source".into(), Value::Object(src));
    if !plan.meta.is_empty() {
        let columns: Vec<Value> = plan
            .meta
            .iter()
            .map(|(n, c, t)| {
                json!({"name": n, "type": t.name(), "arrow": schema.field(*c).data_type().to_string()})
            })
            .collect();
        cat.options.insert(
            "metadata".into(),
            json!({"field": lossy(METADATA_FIELD), "columns": columns}),
        );
    }
    let fields = plan
        .fields
        .iter()
        .map(|(n, c, k)| (n.as_bytes().to_vec(), (*c, *k)))
        .collect();
    let mut projection: Vec<usize> = plan.fields.iter().map(|f| f.1).collect();
    projection.sort_unstable();
    Ok((
        ParquetSource {
            root: root.to_path_buf(),
            files,
            fields,
            projection,
            budget,
            cursor: Mutex::new(None),
        },
        cat,
    ))
}

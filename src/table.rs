//! The sample index as an Arrow table (feature `arrow`): one row per sample with its index,
//! key, label, class, shard, for each field its decoded size, stored size and codec, and for
//! each per-sample metadata column ([`crate::metadata`]) a typed `meta.<name>` column.
//! The schema is a contract, specified in `format-spec/index-table.md`; `shardpack index`
//! writes it as Parquet or Arrow IPC, and Python's `Dataset.index()` hands it to pyarrow.
//!
//! Only the index is read (no record is touched, except each sample's metadata record when
//! the dataset has metadata columns), in storage order, shard by shard, in batches of bounded
//! size, so the memory of an export does not grow with the dataset.
//!
//! ```
//! # fn main() -> shardpack::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
//! # let mut w = DatasetWriter::create(dir.path(), vec![FieldSpec::raw("jpg")], WriterOptions::default())?;
//! # w.append(b"cat/0001", Some(0), &[(0, b"\xff\xd8 jpeg bytes")])?;
//! # w.finish(DatasetInfo::default())?;
//! let ds = shardpack::Dataset::open(dir.path())?;
//! let table = shardpack::table::IndexTable::new(&ds);
//! let mut rows = 0;
//! for batch in table.batches(65_536) {
//!     rows += batch?.num_rows();
//! }
//! assert_eq!(rows as u64, ds.len());
//! assert_eq!(table.schema().field(0).name(), "index");
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, Int8Builder, StringBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::types::Int8Type;
use arrow_array::{ArrayRef, DictionaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::metadata::{MetaColumn, MetaType};
use crate::reader::Dataset;

/// The version of the table's schema, in its metadata under `shardpack.index_table_version`.
/// It changes when a column changes meaning or type; new columns may be added without it.
pub const INDEX_TABLE_VERSION: &str = "1";

/// The name of field `name`'s columns, without their `_size`/`_stored`/`_codec` suffix: the
/// name itself when it is UTF-8, `hex:` and its lowercase hex otherwise (as the manifest
/// spells such names).
pub fn field_column_stem(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) => s.to_string(),
        Err(_) => format!("hex:{}", crate::manifest::to_hex(name)),
    }
}

/// The index of a dataset as Arrow record batches (see the module docs).
#[derive(Debug)]
pub struct IndexTable<'a> {
    ds: &'a Dataset,
    schema: SchemaRef,
    codecs: ArrayRef,
    meta: Arc<Vec<MetaColumn>>,
}

/// The dictionary of every `_codec` column: codec number `i` (format-spec/shard.md) is entry
/// `i`. One array shared by all batches, so an Arrow IPC file carries it once.
fn codec_names() -> ArrayRef {
    let names: Vec<&str> = (0..)
        .map_while(|i| crate::format::Codec::from_u32(i).map(|c| c.name()))
        .collect();
    Arc::new(StringArray::from(names))
}

impl<'a> IndexTable<'a> {
    /// The table of `ds`.
    pub fn new(ds: &'a Dataset) -> IndexTable<'a> {
        let m = ds.manifest();
        let mut cols = vec![
            Field::new("index", DataType::UInt64, false),
            Field::new("key", DataType::Binary, false),
            Field::new("key_utf8", DataType::Utf8, true),
            Field::new("label", DataType::UInt32, true),
            Field::new("class", DataType::Utf8, true),
            Field::new("shard", DataType::UInt32, false),
        ];
        let codec = DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8));
        for (i, f) in m.fields.iter().enumerate() {
            let stem = field_column_stem(f.name.as_bytes());
            let meta: HashMap<String, String> = [
                ("shardpack.field".to_string(), stem.clone()),
                ("shardpack.field_index".to_string(), i.to_string()),
            ]
            .into();
            cols.push(
                Field::new(format!("{stem}_size"), DataType::UInt64, true)
                    .with_metadata(meta.clone()),
            );
            cols.push(
                Field::new(format!("{stem}_stored"), DataType::UInt64, true)
                    .with_metadata(meta.clone()),
            );
            cols.push(Field::new(format!("{stem}_codec"), codec.clone(), true).with_metadata(meta));
        }
        let metacols = crate::metadata::columns(m);
        for c in &metacols {
            let ty = match c.ty {
                MetaType::Bool => DataType::Boolean,
                MetaType::Int64 => DataType::Int64,
                MetaType::UInt64 => DataType::UInt64,
                MetaType::Float64 => DataType::Float64,
                MetaType::String => DataType::Utf8,
            };
            let meta: HashMap<String, String> =
                [("shardpack.metadata".to_string(), c.name.clone())].into();
            cols.push(Field::new(format!("meta.{}", c.name), ty, true).with_metadata(meta));
        }
        let meta: HashMap<String, String> = [
            (
                "shardpack.index_table_version".to_string(),
                INDEX_TABLE_VERSION.to_string(),
            ),
            (
                "shardpack.format_version".to_string(),
                m.format_version.to_string(),
            ),
            (
                "shardpack.dataset_fingerprint".to_string(),
                crate::loader::fingerprint(ds),
            ),
            ("shardpack.samples".to_string(), m.samples.to_string()),
        ]
        .into();
        IndexTable {
            ds,
            schema: Arc::new(Schema::new_with_metadata(cols, meta)),
            codecs: codec_names(),
            meta: Arc::new(metacols),
        }
    }

    /// The schema: `index`, `key`, `key_utf8`, `label`, `class`, `shard`, then for each field
    /// in field order `<name>_size`, `<name>_stored`, `<name>_codec`, then for each metadata
    /// column (manifest order) `meta.<name>`.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The rows in storage order, at most `rows` (at least 1) per batch; a batch never spans
    /// two shards. A damaged index is an error naming the shard.
    pub fn batches(&self, rows: usize) -> Batches<'a> {
        Batches {
            ds: self.ds,
            schema: self.schema.clone(),
            codecs: self.codecs.clone(),
            meta: self.meta.clone(),
            rows: rows.max(1),
            shard: 0,
            local: 0,
        }
    }
}

/// The iterator of [`IndexTable::batches`].
#[derive(Debug)]
pub struct Batches<'a> {
    ds: &'a Dataset,
    schema: SchemaRef,
    codecs: ArrayRef,
    meta: Arc<Vec<MetaColumn>>,
    rows: usize,
    shard: usize,
    local: u64,
}

impl Iterator for Batches<'_> {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if self.shard >= self.ds.shard_count() {
                return None;
            }
            let shard = match self.ds.shard(self.shard) {
                Ok(s) => s,
                Err(e) => {
                    self.shard = usize::MAX; // one error, then the end
                    return Some(Err(e));
                }
            };
            if self.local >= shard.len() {
                self.shard += 1;
                self.local = 0;
                continue;
            }
            let end = (self.local + self.rows as u64).min(shard.len());
            let first_global = self.ds.manifest().shards[self.shard].first_sample;
            let r = build(
                self.ds,
                (&self.schema, &self.codecs, &self.meta),
                self.shard,
                first_global,
                self.local..end,
            );
            self.local = end;
            if r.is_err() {
                self.shard = usize::MAX;
            }
            return Some(r);
        }
    }
}

/// One batch: samples `locals` of shard `s`.
fn build(
    ds: &Dataset,
    (schema, codecs, metacols): (&SchemaRef, &ArrayRef, &[MetaColumn]),
    s: usize,
    first_global: u64,
    locals: std::ops::Range<u64>,
) -> Result<RecordBatch> {
    let shard = ds.shard(s)?;
    let n = (locals.end - locals.start) as usize;
    let m = ds.manifest();
    let nf = m.fields.len();
    let mut index = UInt64Builder::with_capacity(n);
    let mut key = BinaryBuilder::with_capacity(n, n * 16);
    let mut key_utf8 = StringBuilder::with_capacity(n, n * 16);
    let mut label = UInt32Builder::with_capacity(n);
    let mut class = StringBuilder::with_capacity(n, n * 8);
    let mut shard_col = UInt32Builder::with_capacity(n);
    let mut size: Vec<UInt64Builder> = (0..nf).map(|_| UInt64Builder::with_capacity(n)).collect();
    let mut stored: Vec<UInt64Builder> = (0..nf).map(|_| UInt64Builder::with_capacity(n)).collect();
    let mut codec: Vec<Int8Builder> = (0..nf).map(|_| Int8Builder::with_capacity(n)).collect();
    let mut meta: Vec<MetaBuilder> = metacols.iter().map(|c| MetaBuilder::new(c.ty, n)).collect();
    // Which fields the current sample has: the others get nulls.
    let mut seen = vec![false; nf];
    let classes: Vec<Option<&str>> = m
        .classes
        .iter()
        .map(|c| std::str::from_utf8(c.as_bytes()).ok())
        .collect();
    for local in locals {
        // The index alone unless metadata columns need the `__meta__.json` records: on a
        // dataset streamed from a URL, `sample` fetches a sample's records first.
        let sample = if metacols.is_empty() {
            shard.sample_index(local, first_global + local)?
        } else {
            shard.sample(local, first_global + local)?
        };
        index.append_value(sample.index());
        key.append_value(sample.key());
        key_utf8.append_option(std::str::from_utf8(sample.key()).ok());
        label.append_option(sample.label());
        class.append_option(
            sample
                .label()
                .and_then(|l| classes.get(l as usize).copied().flatten()),
        );
        shard_col.append_value(s as u32);
        seen.iter_mut().for_each(|x| *x = false);
        for f in sample.fields() {
            let f = f?;
            let i = f.field_index() as usize;
            if i >= nf || seen[i] {
                // The index was validated when the shard was opened; this is a bug guard.
                return Err(Error::manifest(
                    shard.path(),
                    format!(
                        "sample {}: field index {i} out of place (run `shardpack verify`)",
                        sample.index()
                    ),
                ));
            }
            seen[i] = true;
            size[i].append_value(f.raw_len());
            stored[i].append_value(f.stored().len() as u64);
            codec[i].append_value(f.codec().as_u32() as i8);
        }
        for (i, present) in seen.iter().enumerate() {
            if !present {
                size[i].append_null();
                stored[i].append_null();
                codec[i].append_null();
            }
        }
        if !metacols.is_empty() {
            let values = crate::metadata::sample_metadata(&sample)?;
            for (c, b) in metacols.iter().zip(&mut meta) {
                b.append(values.as_ref().and_then(|v| v.get(&c.name)));
            }
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(index.finish()),
        Arc::new(key.finish()),
        Arc::new(key_utf8.finish()),
        Arc::new(label.finish()),
        Arc::new(class.finish()),
        Arc::new(shard_col.finish()),
    ];
    for i in 0..nf {
        cols.push(Arc::new(size[i].finish()));
        cols.push(Arc::new(stored[i].finish()));
        let keys = codec[i].finish();
        let dict = DictionaryArray::<Int8Type>::try_new(keys, codecs.clone())
            .map_err(|e| Error::manifest(shard.path(), format!("building the index table: {e}")))?;
        cols.push(Arc::new(dict));
    }
    for b in meta {
        cols.push(b.finish());
    }
    RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| Error::manifest(shard.path(), format!("building the index table: {e}")))
}

/// A `meta.<name>` column being built. A value of another JSON type than the column's
/// (which shardpack never writes) is null.
enum MetaBuilder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    UInt(UInt64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
}

impl MetaBuilder {
    fn new(ty: MetaType, n: usize) -> MetaBuilder {
        match ty {
            MetaType::Bool => MetaBuilder::Bool(BooleanBuilder::with_capacity(n)),
            MetaType::Int64 => MetaBuilder::Int(Int64Builder::with_capacity(n)),
            MetaType::UInt64 => MetaBuilder::UInt(UInt64Builder::with_capacity(n)),
            MetaType::Float64 => MetaBuilder::Float(Float64Builder::with_capacity(n)),
            MetaType::String => MetaBuilder::Str(StringBuilder::with_capacity(n, n * 16)),
        }
    }

    fn append(&mut self, v: Option<&serde_json::Value>) {
        use serde_json::Value;
        match self {
            MetaBuilder::Bool(b) => b.append_option(v.and_then(Value::as_bool)),
            MetaBuilder::Int(b) => b.append_option(v.and_then(Value::as_i64)),
            MetaBuilder::UInt(b) => b.append_option(v.and_then(Value::as_u64)),
            MetaBuilder::Float(b) => b.append_option(v.and_then(crate::metadata::value_float)),
            MetaBuilder::Str(b) => match v {
                None | Some(Value::Null) => b.append_null(),
                Some(Value::String(s)) => b.append_value(s),
                Some(other) => b.append_value(other.to_string()),
            },
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            MetaBuilder::Bool(mut b) => Arc::new(b.finish()),
            MetaBuilder::Int(mut b) => Arc::new(b.finish()),
            MetaBuilder::UInt(mut b) => Arc::new(b.finish()),
            MetaBuilder::Float(mut b) => Arc::new(b.finish()),
            MetaBuilder::Str(mut b) => Arc::new(b.finish()),
        }
    }
}

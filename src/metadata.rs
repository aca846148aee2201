//! Per-sample metadata: scalar values kept with each sample (from a Parquet source's scalar
//! columns), readable per sample and exported as typed columns of the index table.
//!
//! There is no new structure in the format: a sample's metadata is one more **field** of the
//! sample, named [`METADATA_FIELD`] (`__meta__.json`), whose record is a compact JSON object
//! (UTF-8, keys sorted by bytes, one key per metadata column, `null` for a null value). The
//! record is stored and compressed like any other (the field's policy applies). The
//! manifest's `options.metadata` describes it:
//!
//! ```json
//! "metadata": {"field": "__meta__.json",
//!              "columns": [{"name": "caption", "type": "string"},
//!                          {"name": "width", "type": "int64"}]}
//! ```
//!
//! Types: `bool`, `int64`, `uint64`, `float64` (JSON numbers; NaN and the infinities, which
//! JSON lacks, are the strings `"NaN"`, `"inf"`, `"-inf"`) and `string`. See
//! `format-spec/metadata.md`.
//!
//! ```no_run
//! # fn main() -> shardpack::Result<()> {
//! let ds = shardpack::Dataset::open("out")?;
//! let sample = ds.get(0)?;
//! if let Some(meta) = shardpack::metadata::sample_metadata(&sample)? {
//!     println!("{:?}", meta.get("caption"));
//! }
//! # Ok(())
//! # }
//! ```

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::reader::Sample;

/// The name of the field that holds each sample's metadata record.
pub const METADATA_FIELD: &[u8] = b"__meta__.json";

/// The type of a metadata column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaType {
    /// `true` / `false`.
    Bool,
    /// A signed integer.
    Int64,
    /// An unsigned integer.
    UInt64,
    /// A floating-point number.
    Float64,
    /// UTF-8 text.
    String,
}

impl MetaType {
    /// The name the manifest uses.
    pub fn name(self) -> &'static str {
        match self {
            MetaType::Bool => "bool",
            MetaType::Int64 => "int64",
            MetaType::UInt64 => "uint64",
            MetaType::Float64 => "float64",
            MetaType::String => "string",
        }
    }

    /// The type of a manifest name.
    pub fn from_name(s: &str) -> Option<MetaType> {
        Some(match s {
            "bool" => MetaType::Bool,
            "int64" => MetaType::Int64,
            "uint64" => MetaType::UInt64,
            "float64" => MetaType::Float64,
            "string" => MetaType::String,
            _ => return None,
        })
    }
}

/// A metadata column as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaColumn {
    /// The column's name (the JSON key).
    pub name: String,
    /// Its type.
    pub ty: MetaType,
}

/// The metadata columns the manifest's `options.metadata` describes (empty when the dataset
/// has no metadata). A column of a type this build does not know is typed `string` here
/// (its values are then read as JSON text).
pub fn columns(m: &Manifest) -> Vec<MetaColumn> {
    let Some(cols) = m
        .options
        .get("metadata")
        .and_then(|v| v.get("columns"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    cols.iter()
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?.to_string();
            let ty = c
                .get("type")
                .and_then(Value::as_str)
                .and_then(MetaType::from_name)
                .unwrap_or(MetaType::String);
            Some(MetaColumn { name, ty })
        })
        .collect()
}

/// The metadata of `sample`: its [`METADATA_FIELD`] record parsed, or `None` when it has none.
/// A record that is not a JSON object is an error naming the sample.
pub fn sample_metadata(sample: &Sample<'_>) -> Result<Option<Map<String, Value>>> {
    let Some(f) = sample.field(METADATA_FIELD)? else {
        return Ok(None);
    };
    let data = f.data()?;
    match serde_json::from_slice::<Value>(&data) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        _ => Err(Error::manifest(
            sample.shard().path(),
            format!(
                "sample {}: its {} record is not a JSON object (run `shardpack verify`)",
                sample.index(),
                String::from_utf8_lossy(METADATA_FIELD)
            ),
        )),
    }
}

/// A float as metadata JSON: a number, or `"NaN"`, `"inf"`, `"-inf"`.
pub fn float_value(x: f64) -> Value {
    if x.is_nan() {
        Value::from("NaN")
    } else if x.is_infinite() {
        Value::from(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// The float of a metadata JSON value (see [`float_value`]).
pub fn value_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

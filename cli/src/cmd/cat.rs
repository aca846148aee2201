//! `shardpack cat DATASET KEY [FIELD]`: one record's bytes to stdout.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use shardpack::Dataset;

use crate::util::arg_bytes;

/// Write a record's original bytes to stdout (checksum-verified, decompressed).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// The sample key, e.g. `cat/000123` (see `shardpack ls`).
    pub key: OsString,
    /// The field, e.g. `jpg`; may be left out when the sample has one field.
    pub field: Option<OsString>,
}

/// Runs `cat`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let ds = Dataset::open(&a.dataset)?;
    let key = arg_bytes(&a.key);
    let sample = ds.get_by_key(&key)?.ok_or_else(|| {
        anyhow!(
            "no sample with key {:?} in {} (list keys with `shardpack ls`)",
            a.key,
            a.dataset.display()
        )
    })?;
    let fields: Vec<_> = sample.fields().collect::<Result<_, _>>()?;
    let names = || {
        fields
            .iter()
            .map(|f| String::from_utf8_lossy(f.name()).into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let field = match &a.field {
        Some(name) => {
            let name = arg_bytes(name);
            let name = name.strip_prefix(b".").unwrap_or(&name).to_vec();
            match fields.iter().find(|f| f.name() == name.as_slice()) {
                Some(f) => *f,
                None => bail!(
                    "sample {:?} has no field {:?}; it has: {}",
                    a.key,
                    String::from_utf8_lossy(&name),
                    names()
                ),
            }
        }
        None if fields.len() == 1 => fields[0],
        None => bail!(
            "sample {:?} has {} fields ({}); name one",
            a.key,
            fields.len(),
            names()
        ),
    };
    out.write_all(&field.data()?)?;
    Ok(ExitCode::SUCCESS)
}

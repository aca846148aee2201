//! `shardpack cat DATASET KEY [FIELD]`: one record's bytes to stdout.

use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use shardpack::reader::OpenOptions;
use shardpack::Dataset;

use crate::cmd::extract::read_error;
use crate::util::arg_bytes;

/// Write a record's original bytes to stdout (checksum-verified before the first byte is
/// written, decompressed, copied in bounded memory however large). Works on a dataset with
/// damaged shards as long as the sample is in an intact one.
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
    // Damaged shards are marked, not refused: a key in an intact shard is served, and one in
    // none of them is an error naming the damaged shard (it may hold the key).
    let ds = Dataset::open_with(&a.dataset, &OpenOptions::mark_damaged())?;
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
    let mut reader = field.reader()?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        out.write_all(&buf[..n])?;
    }
    Ok(ExitCode::SUCCESS)
}

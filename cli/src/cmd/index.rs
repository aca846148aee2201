//! `shardpack index DATASET -o TABLE`: the sample index as a Parquet or Arrow IPC table.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use shardpack::table::IndexTable;
use shardpack::Dataset;

use crate::util::human_bytes;

/// Write the sample index as a table: one row per sample with index, key (binary, and a UTF-8
/// copy that is null for other keys), label, class, shard, and per field `<name>_size`
/// (decoded bytes), `<name>_stored` (bytes in the shard) and `<name>_codec` (null where the
/// sample lacks the field), then `meta.<name>` per metadata column of a dataset packed from
/// Parquet (typed: bool, int64, uint64, float64 or string). Only the index is read, and the
/// metadata records when there are such columns, not the other records. The schema is specified in
/// format-spec/index-table.md; pandas, Polars, DuckDB and pyarrow read the file directly, e.g.
/// `duckdb -c "SELECT index FROM 'index.parquet' WHERE class = 'cat'"`.
///
/// The file is written beside OUT under a temporary name and renamed into place when
/// complete, so OUT is never half-written.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// The table file to write (replaced if it exists).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// parquet (zstd-compressed columns) or arrow (an Arrow IPC file, also called Feather v2).
    #[arg(long, default_value = "parquet", value_parser = ["parquet", "arrow"])]
    pub format: String,
    /// Print the summary as one JSON object: output, format, rows, columns, bytes, seconds.
    #[arg(long)]
    pub json: bool,
}

/// Rows per Arrow batch (and a Parquet row group holds up to 1 Mi rows, the default).
const BATCH_ROWS: usize = 64 * 1024;

/// Runs `index`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let t0 = Instant::now();
    let ds = Dataset::open(&a.dataset)?;
    let table = IndexTable::new(&ds);
    let tmp = temp_name(&a.output)?;
    let r = write(&table, &tmp, &a.format);
    let rows = match r {
        Ok(rows) => rows,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e.context(format!("writing {}", a.output.display())));
        }
    };
    if let Err(e) = fs::rename(&tmp, &a.output) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming {} into place", tmp.display()));
    }
    let bytes = fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    let seconds = t0.elapsed().as_secs_f64();
    let columns = table.schema().fields().len();
    if a.json {
        let v = serde_json::json!({
            "output": a.output,
            "format": a.format,
            "rows": rows,
            "columns": columns,
            "bytes": bytes,
            "seconds": seconds,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "wrote {rows} rows ({columns} columns, {}) to {} in {seconds:.2} s",
            human_bytes(bytes),
            a.output.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A temporary file name beside `out` (same directory, so the final rename is atomic).
fn temp_name(out: &Path) -> Result<PathBuf> {
    let Some(name) = out.file_name() else {
        bail!("{} is not a file name", out.display());
    };
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "{}: the folder {} does not exist (create it first)",
            out.display(),
            dir.display()
        );
    }
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".shardpack-tmp.{}", std::process::id()));
    Ok(dir.join(tmp))
}

/// Writes every row of `table` to `path`; returns the row count.
fn write(table: &IndexTable<'_>, path: &Path, format: &str) -> Result<u64> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut rows = 0u64;
    match format {
        "parquet" => {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
                .build();
            let mut w = ArrowWriter::try_new(file, table.schema(), Some(props))?;
            for batch in table.batches(BATCH_ROWS) {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.close()?;
            fs::File::open(path)?.sync_all()?;
        }
        _ => {
            let mut w = arrow_ipc::writer::FileWriter::try_new(
                BufWriter::with_capacity(1 << 20, file),
                &table.schema(),
            )?;
            for batch in table.batches(BATCH_ROWS) {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.finish()?;
            let file = w.into_inner()?.into_inner()?;
            file.sync_all()?;
        }
    }
    Ok(rows)
}

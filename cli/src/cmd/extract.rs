//! `shardpack extract DATASET DIR`: write the original tree back.
//!
//! Nothing half-written ever looks complete: each file is written under a temporary name in
//! DIR (`.shardpack-extract.part`) and renamed into a staging folder
//! (`DIR/.shardpack-extract.tmp/`) once all of it is written; the staging folder's entries
//! move into DIR only at the end. On any error the staging folder and the partial file are
//! removed (and DIR too, if extract created it), so DIR is left as it was. After an extract
//! that was killed, DIR holds only those two names; the next extract into DIR removes them.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use shardpack::compile::join_bytes;
use shardpack::format::{check_extraction_path, extraction_path};
use shardpack::reader::OpenOptions as DatasetOptions;
use shardpack::{Dataset, Field};

/// Write every record back as a file at its original relative path (key + "." + field),
/// its contents byte-identical to what was packed. Regular files' paths and contents
/// round-trip, and so do the permission bits of executable files (pack records the mode of
/// every file with an execute bit; extract restores it, without setuid/setgid/sticky bits);
/// other files get the default mode (0644 under umask 022); mtimes are not kept (files get
/// the time of the extract); empty directories (pack notes them) and symbolic links that were
/// not followed are not in the dataset (pack follows links by default, storing the target's
/// contents as a file).
/// DIR must be new or empty; existing files are never
/// overwritten. The tree appears in DIR only when it is complete: on an error nothing is kept
/// and DIR is left as it was. Records are checked (checksums) before they are written and
/// copied in bounded memory, however large.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// Where to write the tree (created if missing; must be empty).
    pub dir: PathBuf,
    /// Salvage a damaged dataset: extract every intact sample, leave out the samples of
    /// damaged shards and every sample with a record that fails its checksum or does not
    /// decode, list what was left out on stderr, and exit 1 when anything was.
    #[arg(long)]
    pub skip_errors: bool,
    /// What to write: tree (the original files) or wds (WebDataset tar shards
    /// shard-NNNNNN.tar: samples in dataset order, members KEY.FIELD, mtime 0, uid/gid 0,
    /// mode 0444, so the same dataset always gives the same bytes).
    #[arg(long, default_value = "tree", value_parser = ["tree", "wds"])]
    pub format: String,
    /// With --format wds: start a new tar before a sample that would take it past this size,
    /// e.g. 512MiB, 1GiB.
    #[arg(long, value_parser = crate::util::parse_size, default_value = "1GiB")]
    pub shard_size: u64,
}

mod wds;

/// The temporary file each record is written to before it is renamed into place.
const PART: &str = ".shardpack-extract.part";
/// The folder the tree is built in before its entries move into DIR.
const STAGING: &str = ".shardpack-extract.tmp";
/// Names beginning with this are extract's own and cannot come from a dataset.
const RESERVED: &[u8] = b".shardpack-extract.";
/// Bytes copied at a time.
const PIECE: usize = 1 << 20;

/// The library error inside an `io::Error` from a [`shardpack::reader::FieldReader`], or the
/// `io::Error` itself.
pub(crate) fn read_error(e: io::Error) -> anyhow::Error {
    if e.get_ref().is_some_and(|r| r.is::<shardpack::Error>()) {
        let inner = e.into_inner().expect("checked");
        match inner.downcast::<shardpack::Error>() {
            Ok(lib) => return anyhow::Error::new(*lib),
            Err(other) => return anyhow!(other),
        }
    }
    anyhow::Error::new(e)
}

/// Removes what an unfinished extract wrote, unless disarmed.
struct Cleanup {
    dir: PathBuf,
    created_dir: bool,
    armed: bool,
}

impl Cleanup {
    fn remove(&self) {
        let _ = fs::remove_file(self.dir.join(PART));
        let _ = fs::remove_dir_all(self.dir.join(STAGING));
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            self.remove();
        }
    }
}

/// What went wrong with one sample: its data (skippable) or the output (never).
enum Failure {
    Data(anyhow::Error),
    Write(anyhow::Error),
}

/// Runs `extract`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let ds = open(&a)?;
    let mut guard = prepare_dir(&a.dir)?;
    let staging = a.dir.join(STAGING);
    let part = a.dir.join(PART);
    let mut buf = vec![0u8; PIECE];
    let (mut files, mut bytes, mut samples) = (0u64, 0u64, 0u64);
    let mut left_out: Vec<String> = Vec::new();
    let mut left_out_samples = 0u64;
    let stop = |e: anyhow::Error, at: String| -> anyhow::Error {
        e.context(format!(
            "extract stopped at {at}; nothing was kept in {}. `shardpack extract --skip-errors` \
             extracts every intact sample and lists the rest",
            a.dir.display()
        ))
    };
    if a.format == "wds" {
        let w = wds::write(&ds, &staging, &part, a.shard_size, a.skip_errors)
            .with_context(|| format!("extract failed; nothing was kept in {}", a.dir.display()))?;
        finish(&a.dir, &staging).context("extract failed")?;
        guard.armed = false;
        writeln!(
            out,
            "extracted {} of {} samples ({} members, {} bytes) into {} WebDataset shard{} in {}",
            w.samples,
            ds.len(),
            w.members,
            w.bytes,
            w.shards,
            if w.shards == 1 { "" } else { "s" },
            a.dir.display()
        )?;
        left_out = w.left_out;
        left_out_samples = w.left_out_samples;
        return report_left_out(&a.dir, &left_out, left_out_samples, out);
    }
    // The permission bits pack recorded for executable files (options.file_modes), without
    // setuid, setgid and sticky bits: a dataset from elsewhere should not install those.
    let modes: HashMap<Vec<u8>, u32> = ds
        .manifest()
        .file_modes()
        .map_err(|e| anyhow!("{}: {e}", a.dataset.display()))?
        .into_iter()
        .map(|(p, m)| (p, m & 0o777))
        .collect();
    let mut with_mode = 0u64;
    let mut written: Vec<PathBuf> = Vec::new();
    for s in 0..ds.shard_count() {
        // The first touch checks the shard's index (datasets with large indexes defer that
        // from open to first use, so a strict open does not refuse every damaged shard).
        if let Err(e) = ds.shard(s) {
            if !a.skip_errors {
                return Err(stop(e.into(), format!("shard {s}")));
            }
        }
        if let Some(d) = ds.damaged().iter().find(|d| d.index == s) {
            // Only under --skip-errors (above).
            left_out_samples += d.samples;
            left_out.push(format!(
                "samples {}..{} ({} samples) of damaged shard {}: {}",
                d.first_sample,
                d.first_sample + d.samples,
                d.samples,
                d.index,
                d.reason
            ));
            continue;
        }
        for sample in ds.shard_samples(s) {
            let sample = match sample {
                Ok(x) => x,
                Err(e) if a.skip_errors => {
                    left_out_samples += 1;
                    left_out.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(stop(e.into(), "a sample that cannot be read".into())),
            };
            written.clear();
            let mut sample_with_mode = 0u64;
            let mut result = Ok(0u64);
            for f in sample.fields() {
                let f = match f {
                    Ok(f) => f,
                    Err(e) => {
                        result = Err(Failure::Data(e.into()));
                        break;
                    }
                };
                // The spec's rules for an extraction path (format-spec/manifest.md section 3),
                // plus extract's own reserved names.
                let rel = extraction_path(sample.key(), f.name());
                let refused = check_extraction_path(&rel).err().or_else(|| {
                    rel.starts_with(RESERVED)
                        .then_some("is reserved for extract's temporary files")
                });
                if let Some(why) = refused {
                    result = Err(Failure::Data(anyhow!(
                        "sample {} has the path {:?}, which {why}: it would escape {} or \
                         clash with extract's own files; refusing to write it",
                        sample.index(),
                        String::from_utf8_lossy(&rel),
                        a.dir.display()
                    )));
                    break;
                }
                let path = join_bytes(&staging, &rel);
                let mode = modes.get(rel.as_slice()).copied();
                match write_field(&f, &part, &path, mode, &mut buf) {
                    Ok(n) => {
                        written.push(path);
                        sample_with_mode += u64::from(mode.is_some());
                        result = result.map(|t| t + n);
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            match result {
                Ok(n) => {
                    files += written.len() as u64;
                    with_mode += sample_with_mode;
                    bytes += n;
                    samples += 1;
                }
                Err(Failure::Data(e)) if a.skip_errors => {
                    for p in &written {
                        let _ = fs::remove_file(p);
                    }
                    // And the folders only this sample needed (a non-empty one stays).
                    let mut dir = join_bytes(&staging, sample.key());
                    while dir.pop() && dir.starts_with(&staging) && dir != staging {
                        if fs::remove_dir(&dir).is_err() {
                            break;
                        }
                    }
                    left_out_samples += 1;
                    left_out.push(format!("{e:#}"));
                }
                Err(Failure::Data(e)) => {
                    let key = String::from_utf8_lossy(sample.key()).into_owned();
                    return Err(stop(e, format!("sample {} (key {key:?})", sample.index())));
                }
                Err(Failure::Write(e)) => {
                    return Err(e.context(format!(
                        "extract failed; nothing was kept in {}",
                        a.dir.display()
                    )))
                }
            }
        }
    }
    finish(&a.dir, &staging).context("extract failed")?;
    guard.armed = false;
    writeln!(
        out,
        "extracted {files} files ({bytes} bytes) from {samples} of {} samples into {}",
        ds.len(),
        a.dir.display()
    )?;
    if with_mode > 0 {
        writeln!(
            out,
            "gave {with_mode} executable file{} the permission bits recorded when packed",
            if with_mode == 1 { "" } else { "s" }
        )?;
    }
    report_left_out(&a.dir, &left_out, left_out_samples, out)
}

/// Lists what `--skip-errors` left out; exit 1 when anything was.
fn report_left_out(
    dir: &Path,
    left_out: &[String],
    left_out_samples: u64,
    out: &mut impl Write,
) -> Result<ExitCode> {
    if left_out.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    out.flush()?;
    for l in left_out {
        eprintln!("shardpack: left out: {l}");
    }
    eprintln!(
        "shardpack: error: left out {left_out_samples} sample{} that could not be read (listed \
         above); what {} holds is incomplete",
        if left_out_samples == 1 { "" } else { "s" },
        dir.display()
    );
    Ok(ExitCode::from(1))
}

/// Opens the dataset: strictly, or with damaged shards marked under `--skip-errors`.
fn open(a: &Args) -> Result<Dataset> {
    if a.skip_errors {
        return Ok(Dataset::open_with(
            &a.dataset,
            &DatasetOptions::mark_damaged(),
        )?);
    }
    match Dataset::open(&a.dataset) {
        Ok(ds) => Ok(ds),
        Err(e) => {
            let salvageable = Dataset::open_with(&a.dataset, &DatasetOptions::mark_damaged())
                .is_ok_and(|d| d.shards().iter().any(|s| !s.is_empty()));
            let e = anyhow::Error::new(e);
            Err(match salvageable {
                true => e.context(
                    "nothing was extracted; `shardpack extract --skip-errors` extracts the \
                     samples of the intact shards and lists the rest",
                ),
                false => e,
            })
        }
    }
}

/// Makes sure `dir` exists and is empty (removing what an interrupted extract left: only its
/// own two names), creates the staging folder, and returns the guard that undoes it all.
fn prepare_dir(dir: &Path) -> Result<Cleanup> {
    let created_dir = match fs::read_dir(dir) {
        Ok(rd) => {
            let mut stale = Vec::new();
            for e in rd {
                let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
                let name = e.file_name();
                if name != STAGING && name != PART {
                    bail!(
                        "{} exists and is not empty; extract into a new or empty directory",
                        dir.display()
                    );
                }
                stale.push(e.path());
            }
            for p in stale {
                let res = match p.is_dir() {
                    true => fs::remove_dir_all(&p),
                    false => fs::remove_file(&p),
                };
                res.with_context(|| {
                    format!(
                        "cannot remove {} left by an interrupted extract",
                        p.display()
                    )
                })?;
            }
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            true
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let guard = Cleanup {
        dir: dir.to_path_buf(),
        created_dir,
        armed: true,
    };
    let staging = dir.join(STAGING);
    fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    Ok(guard)
}

/// Writes one record to `part` and renames it to `path`; returns the bytes written.
/// Writes `f` to `path` (through `part`); `mode`: the permission bits to give the file (the
/// ones pack recorded), instead of the default.
fn write_field(
    f: &Field<'_>,
    part: &Path,
    path: &Path,
    mode: Option<u32>,
    buf: &mut [u8],
) -> Result<u64, Failure> {
    // Where the file will be, for messages: under DIR, not in the staging folder.
    let staging = part.with_file_name(STAGING);
    let shown = match path.strip_prefix(&staging) {
        Ok(rel) => part.with_file_name(rel),
        Err(_) => path.to_path_buf(),
    };
    let write_err = |what: &str, e: io::Error| {
        Failure::Write(anyhow::Error::new(e).context(format!("cannot {what} {}", shown.display())))
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| write_err("create the directory for", e))?;
    }
    match fs::symlink_metadata(path) {
        Ok(_) => {
            return Err(Failure::Data(anyhow!(
                "two records of the dataset would both be written to {}: two samples share a \
                 key, or one key is another's key plus \".FIELD\" (`shardpack verify` names \
                 duplicate keys; `shardpack cat` reads each record)",
                shown.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err("inspect", e)),
    }
    let mut reader = f.reader().map_err(|e| Failure::Data(e.into()))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .map_err(|e| write_err("create", e))?;
    let mut n = 0u64;
    let res = loop {
        let k = match reader.read(buf) {
            Ok(0) => break Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(Failure::Data(read_error(e))),
        };
        if let Err(e) = file.write_all(&buf[..k]) {
            break Err(write_err("write", e));
        }
        n += k as u64;
    };
    #[cfg(unix)]
    if let (Ok(_), Some(bits)) = (&res, mode) {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = file.set_permissions(fs::Permissions::from_mode(bits)) {
            drop(file);
            let _ = fs::remove_file(part);
            return Err(write_err("set the permissions of", e));
        }
    }
    #[cfg(not(unix))]
    let _ = mode;
    drop(file);
    let res = res.and_then(|n| match n == f.raw_len() {
        true => fs::rename(part, path)
            .map(|()| n)
            .map_err(|e| write_err("write", e)),
        false => Err(Failure::Data(anyhow!(
            "{}: {n} bytes read, the index says {}",
            shown.display(),
            f.raw_len()
        ))),
    });
    if res.is_err() {
        let _ = fs::remove_file(part);
    }
    res
}

/// Moves the staging folder's entries into `dir` and removes it.
fn finish(dir: &Path, staging: &Path) -> Result<()> {
    let rd = fs::read_dir(staging).with_context(|| format!("cannot read {}", staging.display()))?;
    for e in rd {
        let e = e.with_context(|| format!("cannot read {}", staging.display()))?;
        let to = dir.join(e.file_name());
        fs::rename(e.path(), &to)
            .with_context(|| format!("cannot move the tree into {}", to.display()))?;
    }
    fs::remove_dir(staging).with_context(|| format!("cannot remove {}", staging.display()))
}

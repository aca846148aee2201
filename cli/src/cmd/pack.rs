//! `shardpack pack SRC... OUT`: compile a folder tree, WebDataset shards or an MDS dataset into
//! a dataset.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use shardpack::codec::{DictTrainer, Policy};
use shardpack::compile::{
    pack_inputs, KeyMode, LabelMode, PackOptions, PackSummary, Progress, SourceOptions,
};
use shardpack::storage::remote::{Location, RemoteOptions};
use shardpack::storage::upload::{
    check_destination, upload_dataset, Staging, UploadOptions, UploadProgress,
};
use shardpack::writer::WriterOptions;

use crate::cmd::info::FIELDS_SHOWN;
use crate::notes::Notes;
use crate::util::{human_bytes, parse_size};

/// Pack a folder tree (images, texts, any files), WebDataset tar shards or an MDS dataset into
/// shards.
///
/// Files in one folder that share a name up to the first dot form one sample: `0001.jpg` and
/// `0001.json` become sample `<folder>/0001` with fields `jpg` and `json`. With ImageFolder
/// labels (the default) the first folder level is the class. Samples are shuffled with a fixed
/// seed so a class-sorted tree does not give class-sorted shards. The output is byte-identical
/// for the same tree and options, whatever the thread count.
///
/// WebDataset: SRC is one or more .tar, .tar.gz or .tgz files, a folder holding only such
/// files, or a brace pattern (shards-{000000..000099}.tar, quoted). Members are grouped as
/// webdataset groups them (key = the name up to the first dot of its base name, a sample = a
/// run of consecutive members with one key, fields lower-cased); a key seen twice is an
/// error. Plain tars are shuffled like trees; .tar.gz keeps the shards' order. MDS: SRC is
/// the folder with index.json; each column becomes a field holding its MDS bytes. Parquet:
/// SRC is one or more .parquet files or a folder of them; binary and Hugging Face image
/// columns become fields, --key-column / --label-column pick the key and label, other scalar
/// columns become per-sample metadata (field __meta__.json); rows keep their order.
///
/// Ctrl-C (SIGINT) or SIGTERM stops the pack and removes what it wrote (exit 130 or 143); a
/// later pack into the same OUT removes what a killed one left.
///
/// OUT may be an object store URL, s3://bucket/prefix (credentials and endpoint from the AWS_*
/// environment): the dataset is packed into a local staging directory (a new folder under
/// $TMPDIR, or under --staging: it needs the dataset's size of free disk), then uploaded:
/// with --force the old manifest.json is deleted first, then the shards (multipart uploads,
/// several at a time), manifest.json last, and then the shards of the old dataset that the new
/// manifest does not name. An interrupted or failed upload leaves no manifest.json, so it never
/// looks like a dataset; a rerun replaces what it left. http(s):// URLs are read-only.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// What to pack (only read, never modified): a folder tree, WebDataset shards (files,
    /// folders of them, brace patterns; several may be given) or an MDS dataset folder.
    #[arg(required = true, num_args = 1.., value_name = "SRC")]
    pub src: Vec<PathBuf>,
    /// The dataset directory to create (must be new or empty, or hold a dataset with --force),
    /// or an object store URL to upload the dataset to: s3://bucket/prefix (no manifest.json
    /// there, or --force to replace the dataset there).
    #[arg(required = true)]
    pub out: Option<PathBuf>,
    /// With an s3:// OUT: the folder in which the dataset is packed before it is uploaded (a
    /// new folder is made inside it and removed at the end; it needs the dataset's size of
    /// free space). Default: $TMPDIR (or /tmp).
    #[arg(long, value_name = "DIR")]
    pub staging: Option<PathBuf>,
    /// Write one part of the plan in this directory (made by `shardpack plan`) instead of
    /// packing SRC: the part's shards under their final names, then its receipt. Safe to run
    /// again after a crash, or at the same time as other parts; the other options come from
    /// the plan (only --threads, --io-threads, --json and --quiet apply; any other option
    /// given is refused).
    #[arg(long, value_name = "OUT", conflicts_with_all = ["src", "out"])]
    pub plan: Option<PathBuf>,
    /// The part to write with --plan, from 0. Default: $SLURM_ARRAY_TASK_ID (minus
    /// $SLURM_ARRAY_TASK_MIN), or $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job).
    #[arg(long, value_name = "I", requires = "plan")]
    pub part: Option<u64>,
    /// What decides where a shard is cut: raw (the records' uncompressed sizes, so the cuts
    /// are known before compressing: the default, and what `shardpack plan` uses) or stored
    /// (compressed sizes: shards of compressed fields fill up to --shard-size; the rule of
    /// shardpack 0.2 and earlier, not possible in a plan).
    #[arg(long, value_name = "RULE", default_value = "raw", value_parser = ["raw", "stored"])]
    pub shard_cut: String,
    /// Target shard file size, e.g. 512MiB, 1GiB, 2GB.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub shard_size: u64,
    /// Close a shard after this many samples.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_samples_per_shard: Option<u64>,
    /// Compression for all fields: auto (trial per field: raw for JPEG/PNG-like data, zstd or a
    /// trained zstd dictionary for text), none, zstd[:LEVEL], zstd-dict[:LEVEL].
    #[arg(long, default_value = "auto", value_name = "POLICY")]
    pub compress: Policy,
    /// Per-field compression, e.g. --field-compress json=zstd-dict --field-compress jpg=none.
    #[arg(long, value_name = "EXT=POLICY", value_parser = parse_field_policy)]
    pub field_compress: Vec<(String, Policy)>,
    /// What trains the zstd dictionary of a field that gets one: fastcover (zstd's FASTCOVER
    /// with fixed parameters, one pass: the default) or zdict (zstd's ZDICT_trainFromBuffer,
    /// which tries four parameter sets: several times slower; what shardpack used before
    /// fastcover, so it reproduces a dataset whose manifest names it in writer.dict_trainer).
    #[arg(long, value_name = "TRAINER", default_value = "fastcover",
          value_parser = clap::builder::PossibleValuesParser::new(DictTrainer::ALL.map(DictTrainer::name)))]
    pub dict_trainer: String,
    /// Store a file of a compressed field that resembles an earlier one of the same field in
    /// its shard (an identical copy, a variant, a page of the same template) compressed
    /// against that file: codec zstd-ref, which readers built before it do not know
    /// (the manifest then requires feature zstd-ref). on (the default) or off (the output of
    /// earlier versions). Needs --shard-cut raw.
    #[arg(long, value_name = "ON|OFF", default_value = "on", value_parser = ["on", "off"])]
    pub refs: String,
    /// Record alignment in bytes: a power of two from 8 to 1048576 (e.g. 4096 for O_DIRECT
    /// reads of single records).
    #[arg(long, default_value_t = 8, value_parser = parse_align)]
    pub align: u64,
    /// Seed of the pack-time shuffle of sample order.
    #[arg(long, value_name = "S", conflicts_with = "no_shuffle")]
    pub shuffle_seed: Option<u64>,
    /// Keep the sorted walk order (class-sorted trees give class-sorted shards).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Compression threads (default: one per core). Output does not depend on it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Concurrent file reads (default: 16, at least --threads).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub io_threads: Option<u64>,
    /// How labels are derived: imagefolder (first folder level = class), none, or cls
    /// (WebDataset: the number in each sample's .cls member).
    #[arg(long, default_value = "imagefolder", value_parser = ["imagefolder", "none", "cls"])]
    pub labels: String,
    /// What SRC is: auto (.tar/.tar.gz/.tgz files, brace patterns and folders holding only
    /// such files are WebDataset; a folder with index.json and shard.*.mds files is MDS;
    /// .parquet files and folders holding only such files are Parquet; any other folder is a
    /// tree), tree, wds, mds or parquet.
    #[arg(long, value_name = "FORMAT", default_value = "auto", value_parser = ["auto", "tree", "wds", "mds", "parquet"])]
    pub from: String,
    /// MDS and Parquet: the column whose values are the sample keys (MDS: str, bytes or an
    /// integer column; Parquet: string, binary or integer); without it, the key is the sample
    /// number.
    #[arg(long, value_name = "COLUMN")]
    pub key_column: Option<String>,
    /// Parquet: the column whose values are the labels: string labels become class ids of
    /// the sorted class names, integer labels are kept (null or -1: no label).
    #[arg(long, value_name = "COLUMN")]
    pub label_column: Option<String>,
    /// Parquet: a column that becomes a field (binary, or a Hugging Face image
    /// struct<bytes, path>); repeat it for several. Without it, every such column is a field.
    /// Other scalar columns are kept as per-sample metadata (the field __meta__.json).
    #[arg(long, value_name = "COLUMN")]
    pub field_column: Vec<String>,
    /// Where a file name splits into key and field: first-dot (`a.seg.png` -> key `a`, field
    /// `seg.png`, WebDataset's rule), last-dot (key `a.seg`, field `png`), whole (each file its
    /// own sample), or auto: first-dot unless that makes many fields that occur in one sample
    /// only (`struct.Foo.html`, `frame.00001`) or over 1024 fields, then last-dot, then whole;
    /// pack says which in one note. A tree may split into at most 4096 distinct fields.
    #[arg(long, default_value = "auto", value_parser = ["auto", "first-dot", "last-dot", "whole"])]
    pub key: String,
    /// Symbolic links: follow (the default: pack what they point to, as torchvision's
    /// ImageFolder does; loops and dangling links are errors), skip (leave them out, listed),
    /// or error (refuse a tree holding any).
    #[arg(long, value_name = "POLICY", default_value = "follow", value_parser = ["follow", "skip", "error"])]
    pub symlinks: String,
    /// Same as --symlinks follow (kept for compatibility).
    #[arg(long, conflicts_with = "symlinks")]
    pub follow_symlinks: bool,
    /// Fail when more than this share of the inputs is skipped (symbolic links under
    /// --symlinks skip, special files), e.g. 1% or 0.01; with --skip-errors the pack goes on
    /// and the summary warns instead.
    #[arg(long, value_name = "SHARE", default_value = "1%", value_parser = parse_share)]
    pub max_skipped_share: f64,
    /// Files at the top level of the tree get no label under --labels imagefolder: allow
    /// (counted and named in the summary) or error.
    #[arg(long, value_name = "POLICY", default_value = "allow", value_parser = ["allow", "error"])]
    pub unlabeled: String,
    /// Leave out unreadable files, link loops and dangling links instead of failing; each is
    /// listed in the manifest and the summary, which warns when more than
    /// --max-skipped-share of the inputs is left out.
    #[arg(long)]
    pub skip_errors: bool,
    /// Replace a dataset already in OUT. The new dataset is built beside it (in
    /// .OUT.shardpack-new.PID in OUT's parent) and swapped in only when complete, so a failure
    /// or an interrupt keeps the old one. With an s3:// OUT, the old manifest.json is deleted
    /// once the new dataset is packed, before its upload starts (a failed upload leaves no
    /// dataset there), and the old shards the new manifest does not name after it.
    #[arg(long)]
    pub force: bool,
    /// Print the summary as one JSON object (for CI), with the keys: out, samples, shards,
    /// files, input_bytes, output_bytes, ratio (output/input), seconds, files_per_s, mb_per_s
    /// (10^6 bytes/s), classes, fields (name, records, raw_bytes, stored_bytes, compression,
    /// level, ... as in manifest.json), skipped (path, reason), skipped_share, unlabeled,
    /// unlabeled_examples, warnings; with an s3:// OUT (out is the URL) also upload (url,
    /// shards, bytes, multipart, replaced, deleted, warnings, seconds). On failure:
    /// {"error": {"message", "causes", "exit_code"}}.
    #[arg(long)]
    pub json: bool,
    /// Quiet: no progress bar, no summary and no per-field compression notes. The other
    /// one-line notes on stderr stay (warnings, fallbacks, the key rule chosen, what was cleaned
    /// up from an earlier pack), as do errors; --json still prints its object.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_align(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    if !v.is_power_of_two() || !(8..=1 << 20).contains(&v) {
        return Err(format!(
            "{s:?} is not a power of two from 8 to 1048576 (1MiB)"
        ));
    }
    Ok(v)
}

fn parse_share(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a share (e.g. 1%, 0.5%, 0.01)"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{s:?} is not between 0% and 100%"));
    }
    Ok(v)
}

fn parse_field_policy(s: &str) -> Result<(String, Policy), String> {
    let (ext, pol) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not EXT=POLICY (e.g. txt=zstd-dict)"))?;
    let ext = ext.trim_start_matches('.');
    Ok((ext.to_string(), pol.parse()?))
}

struct Bar {
    bar: ProgressBar,
    /// Which notes are shown (the same rule as `plan`'s).
    notes: Notes,
}

impl Bar {
    /// A spinner until the pack knows its size (on a terminal, unless `quiet`), and the notes.
    fn new(quiet: bool) -> Bar {
        let show = !quiet && std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            Some(0),
            if show {
                ProgressDrawTarget::stderr_with_hz(10)
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar {
            bar,
            notes: Notes::new(quiet),
        }
    }
}

impl Progress for Bar {
    fn walking(&self, files: u64) {
        self.bar.set_message(format!("scanning: {files} files"));
    }
    fn choosing(&self, field: &[u8], index: usize, fields: usize) {
        self.bar.set_message(format!(
            "choosing compression: field {}/{fields} {:?}",
            index + 1,
            String::from_utf8_lossy(field)
        ));
    }
    fn start(&self, files: u64, bytes: u64) {
        self.bar.set_length(bytes);
        self.bar.set_position(0);
        self.bar.set_style(packing_style(Instant::now()));
        self.bar.set_message(format!("0/{files} files"));
        self.bar.set_length(bytes);
        FILES_TOTAL.store(files, std::sync::atomic::Ordering::Relaxed);
    }
    fn advance(&self, files: u64, bytes: u64) {
        let done = FILES_DONE.fetch_add(files, std::sync::atomic::Ordering::Relaxed) + files;
        self.bar.inc(bytes);
        if done % 256 < files || done == FILES_TOTAL.load(std::sync::atomic::Ordering::Relaxed) {
            self.bar.set_message(format!(
                "{done}/{} files",
                FILES_TOTAL.load(std::sync::atomic::Ordering::Relaxed),
            ));
        }
    }
    fn note(&self, msg: &str) {
        if self.notes.admit(msg) {
            self.bar.suspend(|| eprintln!("shardpack: {msg}"));
        }
    }
    fn cancelled(&self) -> bool {
        crate::signal::received().is_some()
    }
}

/// The bar while packing. It fits 80 columns with room for the bar itself (the summary gives
/// the exact sizes and rates).
fn packing_style(t0: Instant) -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {elapsed:>4} {wide_bar} {percent:>3}% {binary_bytes_per_sec:>11} ETA {steady_eta:>6} {msg}",
    )
    .expect("valid template")
    .with_key("steady_eta", move |st: &ProgressState, w: &mut dyn fmt::Write| {
        let _ = w.write_str(&steady_eta(t0.elapsed(), st.fraction() as f64));
    })
}

/// The time left, from the average rate since packing started: `--` for the first 2 seconds
/// and the first 1% (too little to go on; a rate measured over a few files is noise), then
/// e.g. `45s`, `3m05s`, `1h02m`.
fn steady_eta(elapsed: Duration, done: f64) -> String {
    if elapsed < Duration::from_secs(2) || done.is_nan() || done < 0.01 {
        return "--".into();
    }
    if done >= 1.0 {
        return "0s".into();
    }
    let left = (elapsed.as_secs_f64() * (1.0 - done) / done).round() as u64;
    match left {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

static FILES_DONE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static FILES_TOTAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The options of a part (`--plan`); every other one is the plan's.
const PART_OPTIONS: [&str; 6] = ["plan", "part", "threads", "io_threads", "json", "quiet"];

/// The options given on the command line (`m`: `pack`'s matches) that a part does not take,
/// as written (`--compress`), in `pack --help`'s order. A value equal to the default counts:
/// it was given.
fn fixed_by_the_plan(m: &clap::ArgMatches) -> Vec<String> {
    let cmd = <Args as clap::Args>::augment_args(clap::Command::new("pack"));
    cmd.get_arguments()
        .filter(|arg| !PART_OPTIONS.contains(&arg.get_id().as_str()))
        .filter(|arg| {
            m.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(|arg| match arg.get_long() {
            Some(l) => format!("--{l}"),
            None => arg.get_id().to_string(),
        })
        .collect()
}

/// "a", "a and b", "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Runs `pack`; `m` are its matches (which options the command line gave).
pub fn run(a: Args, m: &clap::ArgMatches, out: &mut impl Write) -> Result<ExitCode> {
    if let Some(plan) = a.plan.clone() {
        let fixed = fixed_by_the_plan(m);
        if !fixed.is_empty() {
            bail!(
                "{} cannot be given with --plan: the part takes its options from the plan in {}, \
                 which fixes them for every part (only --threads, --io-threads, --json and \
                 --quiet apply to a part); drop {}, or plan again with the options you want",
                and_list(&fixed),
                plan.display(),
                if fixed.len() == 1 { "it" } else { "them" }
            );
        }
        return crate::cmd::plan::run_part(&plan, &a, out);
    }
    let opts = options(&a)?;
    run_pack(a, opts, out)
}

/// The pack options that `a` asks for.
pub(crate) fn options(a: &Args) -> Result<PackOptions> {
    let mut field_compress = BTreeMap::new();
    for (ext, pol) in &a.field_compress {
        if field_compress
            .insert(ext.as_bytes().to_vec(), *pol)
            .is_some()
        {
            bail!("--field-compress names field {ext:?} twice");
        }
    }
    let opts = PackOptions {
        writer: WriterOptions {
            shard_size: a.shard_size,
            max_samples_per_shard: a.max_samples_per_shard,
            record_align: a.align,
        },
        compress: a.compress,
        field_compress,
        shuffle_seed: if a.no_shuffle {
            None
        } else {
            Some(
                a.shuffle_seed
                    .unwrap_or(shardpack::compile::DEFAULT_SHUFFLE_SEED),
            )
        },
        threads: a.threads.unwrap_or(0) as usize,
        io_threads: a.io_threads.unwrap_or(0) as usize,
        labels: if a.labels != "imagefolder" {
            LabelMode::None
        } else {
            LabelMode::ImageFolder
        },
        key: a.key.parse::<KeyMode>().map_err(anyhow::Error::msg)?,
        follow_symlinks: a.follow_symlinks,
        symlinks: a.symlinks.parse().map_err(anyhow::Error::msg)?,
        max_skipped_share: a.max_skipped_share,
        unlabeled: a.unlabeled.parse().map_err(anyhow::Error::msg)?,
        skip_errors: a.skip_errors,
        force: a.force,
        source: SourceOptions {
            format: a.from.parse().map_err(anyhow::Error::msg)?,
            cls_labels: a.labels == "cls",
            key_column: a.key_column.clone(),
            label_column: a.label_column.clone(),
            field_columns: a.field_column.clone(),
        },
        shard_cut: a.shard_cut.parse().map_err(anyhow::Error::msg)?,
        dict_trainer: a.dict_trainer.parse().map_err(anyhow::Error::msg)?,
        refs: a.refs == "on",
        ..PackOptions::default()
    };
    Ok(opts)
}

fn run_pack(a: Args, opts: PackOptions, out: &mut impl Write) -> Result<ExitCode> {
    let dst = a.out.clone().context("OUT is required")?;
    if let Some(url) = shardpack::storage::url_of(&dst) {
        if let Location::S3 { .. } | Location::Http(_) =
            Location::parse(url).map_err(anyhow::Error::msg)?
        {
            return run_remote_pack(&a, opts, url, out);
        }
    }
    if a.staging.is_some() {
        bail!("--staging is for an s3:// OUT only (a local pack writes into OUT directly)");
    }
    let progress = Bar::new(a.quiet);
    let summary = pack_inputs(&a.src, &dst, &opts, &progress).with_context(|| {
        let srcs: Vec<String> = a.src.iter().map(|p| p.display().to_string()).collect();
        format!("packing {} into {} failed", srcs.join(" "), dst.display())
    });
    progress.bar.finish_and_clear();
    if let Some(line) = progress.notes.summary(&format!(
        "`shardpack info --all-fields {}` lists every field's codec",
        dst.display()
    )) {
        eprintln!("shardpack: {line}");
    }
    let summary = summary?;
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &summary)?;
        writeln!(out)?;
    } else if a.quiet {
        // The warnings were notes on stderr already.
    } else {
        print_summary(&summary, out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The upload's progress: the bar counts bytes; Ctrl-C stops it (before the manifest).
struct UploadBar<'a> {
    bar: &'a ProgressBar,
    sent: std::sync::atomic::AtomicU64,
    /// Testing only ($SHARDPACK_TEST_SIGINT_UPLOAD_AFTER): raise SIGINT once this many bytes
    /// were uploaded.
    sigint_after: Option<u64>,
}

impl UploadProgress for UploadBar<'_> {
    fn uploaded(&self, bytes: u64) {
        self.bar.inc(bytes);
        let before = self
            .sent
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        #[cfg(unix)]
        if self
            .sigint_after
            .is_some_and(|n| before < n && before + bytes >= n)
        {
            // SAFETY: raising a signal in this process; the handler only stores a flag.
            unsafe {
                libc::raise(libc::SIGINT);
            }
        }
    }
    fn cancelled(&self) -> bool {
        crate::signal::received().is_some()
    }
}

/// `pack SRC s3://bucket/prefix`: checks the destination, packs into a staging folder, uploads.
fn run_remote_pack(
    a: &Args,
    mut opts: PackOptions,
    url: &str,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let dest = Location::parse(url).map_err(anyhow::Error::msg)?;
    let ropts = RemoteOptions::from_env();
    // Refused before packing: an http(s) URL, an unreachable store, a dataset there without
    // --force.
    let replacing = check_destination(&dest, &ropts, a.force)?;
    let parent = a.staging.clone().unwrap_or_else(std::env::temp_dir);
    let stage = Staging::new(&parent).context(
        "the dataset is packed in a staging folder before it is uploaded; --staging DIR \
         chooses another place for it",
    )?;
    let local = stage.path().join("dataset");
    opts.force = false; // the staging folder is new
    let progress = Bar::new(a.quiet);
    let summary = pack_inputs(&a.src, &local, &opts, &progress).with_context(|| {
        let srcs: Vec<String> = a.src.iter().map(|p| p.display().to_string()).collect();
        format!(
            "packing {} into {} (staged in {}) failed",
            srcs.join(" "),
            dest.url(),
            local.display()
        )
    });
    let mut summary = match summary {
        Ok(s) => s,
        Err(e) => {
            progress.bar.finish_and_clear();
            return Err(e);
        }
    };
    let mut uopts = UploadOptions {
        force: a.force,
        ..UploadOptions::default()
    };
    // Test hooks: a smaller part size (multipart uploads of small shards), a failed upload.
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    if let Some(p) = var("SHARDPACK_UPLOAD_PART_SIZE") {
        uopts.part_size = p;
    }
    uopts.fail_after = var("SHARDPACK_TEST_FAIL_UPLOAD_AFTER");
    progress.bar.set_length(summary.output_bytes);
    progress.bar.set_position(0);
    progress.bar.set_style(packing_style(Instant::now()));
    progress.bar.set_message(format!(
        "uploading {} shards to {}",
        summary.shards,
        dest.url()
    ));
    let up_bar = UploadBar {
        bar: &progress.bar,
        sent: 0.into(),
        sigint_after: var("SHARDPACK_TEST_SIGINT_UPLOAD_AFTER").map(|n| n as u64),
    };
    let up = upload_dataset(&local, &dest, &ropts, &uopts, &up_bar).with_context(|| {
        format!(
            "uploading the dataset to {} failed; no manifest.json was uploaded, so what was \
                 uploaded is not a dataset{} (packing again replaces it)",
            dest.url(),
            if replacing {
                " (the manifest of the dataset that was there was deleted first)"
            } else {
                ""
            }
        )
    });
    progress.bar.finish_and_clear();
    if let Some(line) = progress.notes.summary(&format!(
        "`shardpack info --all-fields {}` lists every field's codec",
        dest.url()
    )) {
        eprintln!("shardpack: {line}");
    }
    if up.as_ref().is_err_and(|e| {
        e.chain().any(|c| {
            c.downcast_ref::<shardpack::Error>()
                .is_some_and(|x| matches!(x, shardpack::Error::Cancelled))
        })
    }) {
        eprintln!(
            "shardpack: the upload to {} stopped before its manifest.json: what it uploaded is \
             not a dataset (packing again replaces it)",
            dest.url()
        );
    }
    let up = up?;
    drop(stage);
    for w in &up.warnings {
        eprintln!("shardpack: warning: {w}");
    }
    summary.out = PathBuf::from(dest.url());
    if a.json {
        let mut v = serde_json::to_value(&summary)?;
        v["upload"] = serde_json::to_value(&up)?;
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else if !a.quiet {
        print_summary(&summary, out)?;
        writeln!(
            out,
            "uploaded {} shard{} ({}) to {} in {:.2} s{}{}",
            up.shards,
            if up.shards == 1 { "" } else { "s" },
            human_bytes(up.bytes),
            up.url,
            up.seconds,
            if up.replaced {
                " (replacing the dataset there)"
            } else {
                ""
            },
            match up.deleted.len() {
                0 => String::new(),
                n => format!("; deleted {n} stale shard{}", if n == 1 { "" } else { "s" }),
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(s: &PackSummary, out: &mut impl Write) -> Result<()> {
    for w in &s.warnings {
        writeln!(out, "WARNING: {w}")?;
    }
    writeln!(
        out,
        "packed {} samples ({} files, {}) into {} shard{} ({}, {:.3}x) in {:.2} s: {:.0} files/s, {:.1} MB/s",
        s.samples,
        s.files,
        human_bytes(s.input_bytes),
        s.shards,
        if s.shards == 1 { "" } else { "s" },
        human_bytes(s.output_bytes),
        s.ratio,
        s.seconds,
        s.files_per_s,
        s.mb_per_s
    )?;
    let shown = s.fields.len().min(FIELDS_SHOWN);
    let mut fields: Vec<_> = s.fields.iter().collect();
    if fields.len() > shown {
        // The most used fields first (stable: ties keep the manifest's order).
        fields.sort_by_key(|f| std::cmp::Reverse(f.records));
    }
    for f in &fields[..shown] {
        let level = if f.compression == "none" {
            String::new()
        } else {
            format!(":{}", f.level)
        };
        writeln!(
            out,
            "  field {:<12} {:>10} records  {:>10} -> {:>10}  {}{}",
            format!("{:?}", f.name.display()),
            f.records,
            human_bytes(f.raw_bytes),
            human_bytes(f.stored_bytes),
            f.compression,
            level
        )?;
    }
    if fields.len() > shown {
        writeln!(
            out,
            "  ... and {} more fields (`shardpack info --all-fields {}` lists them)",
            fields.len() - shown,
            s.out.display()
        )?;
    }
    if s.classes > 0 {
        writeln!(out, "  classes: {}", s.classes)?;
    }
    if s.unlabeled > 0 {
        let names: Vec<String> = s.unlabeled_examples.iter().map(|n| n.display()).collect();
        writeln!(
            out,
            "  unlabeled: {} samples at the top level, outside any class folder (e.g. {}{}); \
             --unlabeled error refuses them",
            s.unlabeled,
            names.join(", "),
            if s.unlabeled as usize > names.len() {
                ", ..."
            } else {
                ""
            }
        )?;
    }
    if !s.skipped.is_empty() {
        writeln!(
            out,
            "  skipped {} inputs ({:.1}% of all, listed in manifest.json):",
            s.skipped.len(),
            100.0 * s.skipped_share
        )?;
        for k in s.skipped.iter().take(20) {
            writeln!(out, "    {}: {}", k.path.display(), k.reason)?;
        }
        if s.skipped.len() > 20 {
            writeln!(out, "    ... and {} more", s.skipped.len() - 20)?;
        }
    }
    writeln!(out, "  dataset: {}", s.out.display())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A terminal of 80 columns that keeps what is drawn.
    #[derive(Debug, Default, Clone)]
    struct Term80(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl indicatif::TermLike for Term80 {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_string());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.write_line(s)
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_bar_fits_80_columns_with_large_numbers() {
        let term = Term80::default();
        let bar = ProgressBar::with_draw_target(
            Some(3 << 40),
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        bar.set_style(packing_style(Instant::now() - Duration::from_secs(3600)));
        bar.set_position(1 << 40);
        bar.set_message("12345678/123456789 files");
        bar.tick();
        let drawn = term.0.lock().unwrap().clone();
        let line = drawn
            .iter()
            .rev()
            .find(|l| l.contains("ETA"))
            .unwrap_or_else(|| panic!("no bar drawn: {drawn:?}"));
        let width = line.chars().count();
        assert!(width <= 80, "{width} columns: {line:?}");
        assert!(line.contains("33%") && line.contains("files"), "{line:?}");
        assert!(line.contains("ETA  2h00m"), "a sane first ETA: {line:?}");
    }

    #[test]
    fn eta_waits_for_enough_progress_then_follows_the_average_rate() {
        let s = Duration::from_secs;
        assert_eq!(steady_eta(s(1), 0.5), "--", "too early");
        assert_eq!(steady_eta(s(10), 0.001), "--", "too little done");
        assert_eq!(steady_eta(s(10), f64::NAN), "--");
        assert_eq!(steady_eta(s(10), 0.5), "10s");
        assert_eq!(steady_eta(s(10), 0.1), "1m30s");
        assert_eq!(steady_eta(s(100), 0.02), "1h21m");
        assert_eq!(steady_eta(s(10), 1.0), "0s");
    }
}

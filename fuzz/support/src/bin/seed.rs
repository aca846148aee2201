//! Builds the seed corpora of the fuzz targets in `fuzz/corpus/<target>/` from
//!
//! - the datasets the fuzz targets themselves build (`support/src/build.rs`),
//! - every dataset under `fixtures/` (a directory holding `manifest.json`),
//! - with feature `compile`: every tree `fixtures/trees/<name>/` and `fixtures/example/`, packed
//!   here with two sets of options (the defaults at a small shard size, and raw records aligned
//!   to 4096).
//!
//! The output is a pure function of those inputs: the same files every run. Files the fuzzer
//! added to a corpus directory are left alone.
//!
//! Usage: `seed [FIXTURES_DIR [CORPUS_DIR]]` (defaults: `../fixtures` and `corpus` relative to
//! `fuzz/`).

use std::fs;
use std::path::{Path, PathBuf};

use shardpack::format::{Codec, ShardBytes};
use shardpack::manifest::MANIFEST_FILE;
use shardpack_fuzz_support::build::{all_shards, build_dataset, Kind};
use shardpack_fuzz_support::mutate::{Fixups, Op, Program};
use shardpack_fuzz_support::record_input::RecordInput;

/// Inputs larger than this are not written as `record_decode` seeds (the run's `-max_len`).
const MAX_RECORD_SEED: usize = 64 * 1024;
/// At most this many `record_decode` seeds per shard.
const MAX_RECORDS_PER_SHARD: usize = 24;

type BoxError = Box<dyn std::error::Error>;

struct Corpus {
    root: PathBuf,
    written: usize,
}

impl Corpus {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> Result<(), BoxError> {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir)?;
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        fs::write(dir.join(name), bytes)?;
        self.written += 1;
        Ok(())
    }

    /// Seeds from one dataset directory: its manifest, its shard files, and its records.
    fn dataset(&mut self, label: &str, dir: &Path) -> Result<(), BoxError> {
        let manifest = fs::read(dir.join(MANIFEST_FILE))?;
        self.put("manifest", &format!("{label}.json"), &manifest)?;
        let mut shards: Vec<PathBuf> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        shards.retain(|p| p.extension().is_some_and(|e| e == "spk"));
        shards.sort();
        for p in shards {
            let file = p
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            let bytes = fs::read(&p)?;
            self.put("shard_bytes", &format!("{label}-{file}"), &bytes)?;
            self.records(&format!("{label}-{file}"), &bytes)?;
        }
        Ok(())
    }

    /// One `record_decode` seed per record of a valid shard (up to a limit).
    fn records(&mut self, label: &str, shard: &[u8]) -> Result<(), BoxError> {
        let Ok(sb) = ShardBytes::new(shard) else {
            // A deliberately corrupt fixture: a seed for shard_bytes, but no records to take.
            return Ok(());
        };
        let mut n = 0;
        for r in 0..sb.index_header().record_count {
            let Ok(rec) = sb.record(r) else { continue };
            let input = RecordInput {
                codec: Codec::from_u32(rec.codec).expect("checked"),
                raw_len: rec.raw_len,
                dict: sb.field_dict(rec.field as usize),
                stored: sb.stored(&rec),
            }
            .encode();
            if input.len() <= MAX_RECORD_SEED && n < MAX_RECORDS_PER_SHARD {
                self.put("record_decode", &format!("{label}-r{r}"), &input)?;
                n += 1;
            }
        }
        Ok(())
    }
}

/// Directories under `root` (itself included) that hold a manifest, sorted.
fn find_datasets(root: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if root.join(MANIFEST_FILE).is_file() {
        out.push(root.to_path_buf());
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for d in dirs {
        find_datasets(&d, out)?;
    }
    Ok(())
}

/// The hand-written `shard_mutate` seeds: each base unmutated, and one example of each edit.
fn mutate_seeds(corpus: &mut Corpus, bases: usize) -> Result<(), BoxError> {
    // Slot numbers index each base's own field list (`mutate::Base::slots`); any slot is a
    // field, which is all a seed needs.
    let examples: Vec<(&str, Fixups, Vec<Op>)> = vec![
        ("none", Fixups::ALL, vec![]),
        (
            "flip-data",
            Fixups::ALL,
            vec![Op::FlipBit { at: 4100, bit: 3 }],
        ),
        (
            "flip-raw",
            Fixups::NONE,
            vec![Op::FlipBit { at: 4100, bit: 3 }],
        ),
        ("truncate", Fixups::ALL, vec![Op::Truncate { len: 8000 }]),
        (
            "extend",
            Fixups::ALL,
            vec![Op::ExtendFill { n: 4096, fill: 0 }],
        ),
        (
            "extend-bytes",
            Fixups::ALL,
            vec![Op::ExtendBytes {
                bytes: b"SHRDPACK".to_vec(),
            }],
        ),
        ("swap", Fixups::ALL, vec![Op::SwapBlocks { a: 1, b: 2 }]),
        (
            "set-field",
            Fixups::ALL,
            vec![Op::SetField {
                slot: 60,
                value: u64::MAX,
            }],
        ),
        (
            "nudge-field",
            Fixups::ALL,
            vec![Op::AddField { slot: 75, delta: 1 }],
        ),
        (
            "write",
            Fixups::ALL,
            vec![Op::WriteBytes {
                at: 4096,
                bytes: vec![0x28, 0xb5, 0x2f, 0xfd],
            }],
        ),
        (
            "insert",
            Fixups::ALL,
            vec![Op::Insert {
                at: 4096,
                bytes: vec![0; 8],
            }],
        ),
        ("delete", Fixups::ALL, vec![Op::Delete { at: 4096, n: 8 }]),
    ];
    for base in 0..bases {
        for (name, fixups, ops) in &examples {
            let p = Program {
                base: base as u8,
                fixups: *fixups,
                ops: ops.clone(),
            };
            corpus.put("shard_mutate", &format!("base{base}-{name}"), &p.encode())?;
        }
    }
    Ok(())
}

#[cfg(feature = "compile")]
fn pack_trees(fixtures: &Path, scratch: &Path, corpus: &mut Corpus) -> Result<(), BoxError> {
    use shardpack::codec::Policy;
    use shardpack::compile::{pack, NoProgress, PackOptions};
    use shardpack::writer::WriterOptions;

    let mut dirs: Vec<PathBuf> = fs::read_dir(fixtures.join("trees"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let example = fixtures.join("example");
    if example.is_dir() && !example.join(MANIFEST_FILE).exists() {
        dirs.push(example);
    }
    for src in dirs {
        let name = src
            .file_name()
            .expect("a dir")
            .to_string_lossy()
            .into_owned();
        let small = PackOptions {
            writer: WriterOptions {
                shard_size: 16 * 1024,
                ..WriterOptions::default()
            },
            threads: 1,
            ..PackOptions::default()
        };
        let aligned = PackOptions {
            writer: WriterOptions {
                record_align: 4096,
                max_samples_per_shard: Some(4),
                ..WriterOptions::default()
            },
            compress: Policy::None,
            threads: 1,
            shuffle_seed: None,
            ..PackOptions::default()
        };
        for (variant, opts) in [("small", small), ("raw4096", aligned)] {
            let out = scratch.join(format!("tree-{name}-{variant}"));
            match pack(&src, &out, &opts, &NoProgress) {
                Ok(_) => corpus.dataset(&format!("tree-{name}-{variant}"), &out)?,
                Err(e) => eprintln!("seed: cannot pack {}: {e}", src.display()),
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "compile"))]
fn pack_trees(_: &Path, _: &Path, _: &mut Corpus) -> Result<(), BoxError> {
    eprintln!("seed: built without feature `compile`; fixtures/trees/ not packed");
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("support/ is inside fuzz/")
        .to_path_buf();
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let fixtures = args
        .next()
        .unwrap_or_else(|| fuzz_dir.with_file_name("fixtures"));
    let root = args.next().unwrap_or_else(|| fuzz_dir.join("corpus"));
    let mut corpus = Corpus { root, written: 0 };
    let scratch = tempfile::tempdir()?;

    for kind in Kind::ALL {
        let dir = scratch.path().join(format!("built-{}", kind.name()));
        fs::create_dir_all(&dir)?;
        build_dataset(&dir, kind)?;
        corpus.dataset(&format!("built-{}", kind.name()), &dir)?;
    }
    let mut datasets = Vec::new();
    if fixtures.is_dir() {
        find_datasets(&fixtures, &mut datasets)?;
    } else {
        eprintln!(
            "seed: {} not found; seeding from built datasets only",
            fixtures.display()
        );
    }
    for d in &datasets {
        let rel = d.strip_prefix(&fixtures).unwrap_or(d);
        let label = format!("fixtures-{}", rel.to_string_lossy().replace('/', "-"));
        corpus.dataset(&label, d)?;
    }
    if fixtures.is_dir() {
        pack_trees(&fixtures, scratch.path(), &mut corpus)?;
    }
    mutate_seeds(&mut corpus, all_shards().len())?;
    println!(
        "seed: wrote {} files under {} ({} fixture datasets)",
        corpus.written,
        corpus.root.display(),
        datasets.len()
    );
    Ok(())
}

//! The dictionary trainers side by side on a real tree's files: a program (`harness = false`)
//! that reads the files of one field the way `pack --compress auto` samples them (every k-th
//! of the sorted files, at most 1,024 files and 16 MiB), trains on every other file with each
//! [`DictTrainer`], and reports the training time (median of `--rounds`) and the compressed
//! size of the other half (zstd level 3 with the dictionary) over its raw size.
//!
//! ```text
//! cargo bench --bench dict_trainer -- DIR EXT [EXT...] [--rounds 5]
//! cargo bench --bench dict_trainer -- /usr/lib/python3.11 py pyi rst json
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use shardpack::codec::{new_cctx, DictTrainer, FieldEncoder, DEFAULT_LEVEL};
use shardpack::format::Codec;

/// As `compile::trial_inputs` and `choose`: at most this many files and bytes per field, and
/// a dictionary of at most 112 KiB and an eighth of the training bytes.
const TRIAL_FILES: usize = 1024;
const TRIAL_BYTES: usize = 16 << 20;
const DICT_MAX: usize = 112 * 1024;

fn files_with(root: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => files_with(&e.path(), ext, out),
            Ok(t) if t.is_file() && e.path().extension().is_some_and(|x| x == ext) => {
                out.push(e.path())
            }
            _ => {}
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut rounds = 5;
    let mut dict_max = DICT_MAX;
    if let Some(i) = args.iter().position(|a| a == "--dict-max") {
        dict_max = args
            .get(i + 1)
            .and_then(|r| r.parse().ok())
            .unwrap_or(DICT_MAX)
            .max(1024);
        args.drain(i..(i + 2).min(args.len()));
    }
    if let Some(i) = args.iter().position(|a| a == "--rounds") {
        rounds = args
            .get(i + 1)
            .and_then(|r| r.parse().ok())
            .unwrap_or(5)
            .max(1);
        args.drain(i..(i + 2).min(args.len()));
    }
    if args.len() < 2 {
        eprintln!("usage: cargo bench --bench dict_trainer -- DIR EXT [EXT...] [--rounds N]");
        std::process::exit(2);
    }
    let root = PathBuf::from(&args[0]);
    println!(
        "{:<8} {:>6} {:>9} {:<10} {:>10} {:>9} {:>8}",
        "field", "files", "trial MB", "trainer", "train ms", "dict KiB", "ratio"
    );
    for ext in &args[1..] {
        let mut files = Vec::new();
        files_with(&root, ext, &mut files);
        files.sort();
        if files.is_empty() {
            println!("{ext:<8} no files");
            continue;
        }
        let step = files.len().div_ceil(TRIAL_FILES).max(1);
        let (mut inputs, mut total) = (Vec::new(), 0usize);
        for f in files.iter().step_by(step) {
            if total >= TRIAL_BYTES {
                break;
            }
            let mut b = std::fs::read(f).unwrap_or_default();
            b.truncate(TRIAL_BYTES);
            total += b.len();
            inputs.push(b);
        }
        let train: Vec<&[u8]> = inputs.iter().step_by(2).map(Vec::as_slice).collect();
        let test: Vec<&[u8]> = inputs
            .iter()
            .skip(1)
            .step_by(2)
            .map(Vec::as_slice)
            .collect();
        let train_bytes: usize = train.iter().map(|s| s.len()).sum();
        let test_bytes: usize = test.iter().map(|s| s.len()).sum();
        let cap = dict_max.min((train_bytes / 8).max(1024));
        for trainer in DictTrainer::ALL {
            let mut times = Vec::new();
            let mut dict = None;
            for _ in 0..rounds {
                let t = Instant::now();
                dict = trainer.train(&train, cap);
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let Some(d) = dict else {
                println!(
                    "{ext:<8} {:>6} {trainer:<10} trains no dictionary",
                    inputs.len()
                );
                continue;
            };
            let enc = FieldEncoder::new(Codec::ZstdDict, DEFAULT_LEVEL, Some(&d)).expect("loads");
            let (mut cctx, mut out, mut stored) = (new_cctx(), Vec::new(), 0usize);
            for s in &test {
                stored += match enc.encode(&mut cctx, s, &mut out) {
                    Codec::Raw => s.len(),
                    _ => out.len(),
                };
            }
            println!(
                "{ext:<8} {:>6} {:>9.1} {trainer:<10} {:>10.1} {:>9.1} {:>8.4}",
                inputs.len(),
                total as f64 / 1e6,
                median(times),
                d.len() as f64 / 1024.0,
                stored as f64 / test_bytes.max(1) as f64
            );
        }
    }
}

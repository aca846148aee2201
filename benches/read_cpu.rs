//! CPU per gigabyte of the Loader's read path (issue 16): generates a dataset with a fixed seed
//! (raw random records, or zstd / zstd-dict text), runs shuffled Loader epochs with O_DIRECT and
//! every checksum checked, and prints the process's CPU time per stored GB (user and system,
//! getrusage), per epoch and the median. For compressed records it also measures zstd's own
//! single-core decompression of the same stored records (one reused context and buffer), so
//! the loader's decode path can be compared with it. Unless `--no-compare`, it also times the
//! record checksums alone (the library's `record_checksum` against xxhash-rust as compiled).
//!
//! ```text
//! cargo bench --bench read_cpu -- [--codec raw|zstd|dict] [--samples N] [--size BYTES]
//!     [--epochs E] [--threads T] [--dir DIR] [--no-compare]
//! ```
//!
//! `scripts/callgrind-read.sh` runs it under `valgrind --tool=callgrind` for instruction
//! counts per byte (CPU time is noisy on a shared machine; instructions are not).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use shardpack::codec::{decode_into, new_dctx, train_dictionary};
use shardpack::format::{record_checksum, Codec};
use shardpack::loader::{DirectIo, Loader, LoaderOptions, Shuffle};
use shardpack::rng::SplitMix64;
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn text(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "the",
        "loader",
        "reads",
        "shards",
        "with",
        "large",
        "sequential",
        "reads",
        "and",
        "shuffles",
        "samples",
        "in",
        "memory",
        "while",
        "the",
        "trainer",
    ];
    let mut s = Vec::with_capacity(len + 16);
    while s.len() < len {
        s.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        s.push(if rng.below(9) == 0 { b'\n' } else { b' ' });
    }
    s.truncate(len);
    s
}

/// A record to decode: offset in the shard, stored length, raw length, field, codec.
type Rec = (usize, usize, u64, u32, Codec);

fn cpu() -> f64 {
    let (u, s) = shardpack::sys::cpu_time().expect("getrusage");
    (u + s).as_secs_f64()
}

fn split_cpu() -> (f64, f64) {
    let (u, s) = shardpack::sys::cpu_time().expect("getrusage");
    (u.as_secs_f64(), s.as_secs_f64())
}

/// The record checksums alone: every stored record of `ds` hashed warm on this thread, by the
/// library's [`record_checksum`] (src/hash.rs: AVX2 chosen at run time when the CPU has it)
/// and by xxhash-rust as compiled (SSE2 only in a default x86_64 build), alternately, 5 passes
/// each; prints the medians in GB/s.
fn checksum_rates(ds: &Dataset) {
    let mut recs: Vec<(&[u8], u64)> = Vec::new();
    for s in ds.shards() {
        for l in 0..s.len() {
            for f in s.sample(l, 0).expect("sample").fields() {
                let f = f.expect("field");
                recs.push((f.stored(), f.checksum()));
            }
        }
    }
    let total: usize = recs.iter().map(|r| r.0.len()).sum();
    // A small dataset (one that fits in the CPU caches) is hashed several times per pass, so a
    // pass hashes at least 256 MiB and lasts long enough to time.
    let reps = ((256usize << 20) / total.max(1)).max(1);
    let (mut lib, mut xr) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for pass in 0..2 {
            let t = Instant::now();
            for _ in 0..reps {
                for &(d, want) in &recs {
                    let got = if pass == 0 {
                        record_checksum(d)
                    } else {
                        xxhash_rust::xxh3::xxh3_64(d)
                    };
                    assert_eq!(got, want, "a record's checksum differs");
                }
            }
            let secs = t.elapsed().as_secs_f64();
            [&mut lib, &mut xr][pass].push((reps * total) as f64 / 1e9 / secs);
        }
    }
    let (a, b) = (median(lib), median(xr));
    println!(
        "checksums alone (warm, one core, median of 5): record_checksum {a:.1} GB/s, xxhash-rust {b:.1} GB/s ({:.2}x)",
        a / b
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let codec = arg::<String>(&args, "--codec").unwrap_or_else(|| "raw".into());
    let codec = match codec.as_str() {
        "raw" => Codec::Raw,
        "zstd" => Codec::Zstd,
        "dict" => Codec::ZstdDict,
        other => panic!("--codec raw|zstd|dict, not {other}"),
    };
    let default_size = if codec == Codec::Raw {
        16 << 10
    } else {
        2 << 10
    };
    let size: usize = arg(&args, "--size").unwrap_or(default_size);
    let n: u64 = arg(&args, "--samples").unwrap_or((256u64 << 20) / size as u64);
    let epochs: usize = arg(&args, "--epochs").unwrap_or(3);
    let threads: usize = arg(&args, "--threads").unwrap_or(LoaderOptions::default().io_threads);
    let tmp =
        tempfile::tempdir_in(arg::<PathBuf>(&args, "--dir").unwrap_or_else(std::env::temp_dir))
            .expect("temp dir");
    let dir = tmp.path().to_path_buf();

    let mut rng = SplitMix64::new(0x5EED);
    let spec = match codec {
        Codec::Raw => FieldSpec::raw("bin"),
        Codec::Zstd => FieldSpec::zstd("txt"),
        _ => {
            let mut r = SplitMix64::new(7);
            let train: Vec<Vec<u8>> = (0..2000).map(|_| text(&mut r, size)).collect();
            let refs: Vec<&[u8]> = train.iter().map(Vec::as_slice).collect();
            FieldSpec {
                dict: Some(train_dictionary(&refs, 64 << 10).expect("trainable")),
                codec: Codec::ZstdDict,
                ..FieldSpec::zstd("txt")
            }
        }
    };
    let mut w = DatasetWriter::create(&dir, vec![spec], WriterOptions::default()).expect("writer");
    let mut buf = vec![0u8; size];
    for i in 0..n {
        let data = match codec {
            Codec::Raw => {
                for c in buf.chunks_mut(8) {
                    let v = rng.next_u64().to_le_bytes();
                    c.copy_from_slice(&v[..c.len()]);
                }
                buf.clone()
            }
            _ => text(&mut rng, size),
        };
        w.append(format!("{i:09}").as_bytes(), None, &[(0, &data)])
            .expect("append");
    }
    w.finish(DatasetInfo::default()).expect("finish");
    let ds = Arc::new(Dataset::open(&dir).expect("open"));
    let stored: u64 = ds.manifest().fields.iter().map(|f| f.stored_bytes).sum();
    let raw: u64 = ds.manifest().fields.iter().map(|f| f.raw_bytes).sum();
    println!(
        "dataset: {n} samples of {size} bytes, codec {}, {:.1} MB stored, {:.1} MB decoded",
        codec.name(),
        stored as f64 / 1e6,
        raw as f64 / 1e6
    );

    if epochs == 0 {
        return; // generation and open only (the baseline of scripts/callgrind-read.sh)
    }
    let mut per_gb = Vec::new();
    let mut decode_rate = Vec::new();
    for e in 0..epochs {
        let opts = LoaderOptions {
            epoch: e as u64,
            shuffle: Shuffle::Chunked,
            direct_io: DirectIo::On,
            io_threads: threads,
            ..LoaderOptions::default()
        };
        let (u0, s0) = split_cpu();
        let t = Instant::now();
        let mut got = 0u64;
        {
            let loader = Loader::new(ds.clone(), opts).expect("loader");
            for s in loader {
                got += s.expect("sample").fields[0].data.len() as u64;
            }
        }
        let wall = t.elapsed().as_secs_f64();
        let (u1, s1) = split_cpu();
        assert_eq!(got, raw);
        let c = (u1 - u0) + (s1 - s0);
        per_gb.push(c / (stored as f64 / 1e9));
        decode_rate.push(raw as f64 / 1e9 / c);
        println!(
            "epoch {e}: {wall:.2} s wall, user {:.3} s + sys {:.3} s = {:.3} core-s per GB stored ({:.2} GB/s decoded per core-second)",
            u1 - u0,
            s1 - s0,
            c / (stored as f64 / 1e9),
            raw as f64 / 1e9 / c
        );
    }
    println!(
        "loader: median {:.3} core-s per GB stored, {:.2} GB decoded per core-second",
        median(per_gb),
        median(decode_rate.clone())
    );

    if !args.iter().any(|a| a == "--no-compare") {
        checksum_rates(&ds);
    }

    if codec != Codec::Raw && !args.iter().any(|a| a == "--no-compare") {
        // zstd's own speed on the same stored records: one context, one reused buffer, one core.
        let shard_records: Vec<(usize, Vec<Rec>)> = ds
            .shards()
            .iter()
            .enumerate()
            .map(|(si, s)| {
                let recs = (0..s.len())
                    .flat_map(|l| {
                        let sm = s.sample(l, 0).unwrap();
                        sm.fields()
                            .map(|f| {
                                let f = f.unwrap();
                                let at = f.offset() as usize;
                                (
                                    at,
                                    f.stored().len(),
                                    f.raw_len(),
                                    f.field_index(),
                                    f.codec(),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                (si, recs)
            })
            .collect();
        let mut dctx = new_dctx();
        let mut out = Vec::new();
        // `own`: zstd's one-shot decompression alone (into one reused buffer); `checked`: the
        // library's decode_into (frame rules and length checks) as the loader calls it.
        let (mut own, mut checked) = (Vec::new(), Vec::new());
        for _ in 0..epochs {
            for pass in 0..2 {
                let c0 = cpu();
                let mut total = 0u64;
                for (si, recs) in &shard_records {
                    let s = &ds.shards()[*si];
                    let bytes = s.bytes().bytes();
                    let ddict = s.bytes().field_dict(0).map(zstd::zstd_safe::DDict::create);
                    for &(at, len, raw_len, field, c) in recs {
                        let stored = &bytes[at..at + len];
                        if pass == 0 {
                            out.clear();
                            out.reserve(raw_len as usize);
                            match (c, ddict.as_ref()) {
                                (Codec::Raw, _) => out.extend_from_slice(stored),
                                (Codec::ZstdDict, Some(d)) => {
                                    dctx.decompress_using_ddict(&mut out, stored, d)
                                        .expect("zstd");
                                }
                                _ => {
                                    dctx.decompress(&mut out, stored).expect("zstd");
                                }
                            }
                        } else {
                            decode_into(&mut dctx, c, stored, raw_len, s.dict(field), &mut out)
                                .expect("decodes");
                        }
                        total += out.len() as u64;
                    }
                }
                let rate = total as f64 / 1e9 / (cpu() - c0);
                [&mut own, &mut checked][pass].push(rate);
            }
        }
        let (z, d) = (median(own), median(checked));
        let l = median(decode_rate);
        println!(
            "zstd alone on the same records (warm, one core): {z:.2} GB/s decoded; decode_into: {d:.2} GB/s; loader / zstd = {:.2}",
            l / z
        );
    }
}

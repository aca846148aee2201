//! Random access on a warm dataset: `Dataset::get(i)`, `Dataset::get_by_key(k)` and
//! `Field::data()` on raw, zstd and zstd-dict records.
//!
//! Run: `cargo bench --bench reader` (add e.g. `-- --measurement-time 3 --warm-up-time 1` for a
//! short run, or a filter such as `-- get`).
//!
//! Every dataset is generated with a fixed seed through `shardpack::writer::DatasetWriter` into a
//! temporary directory, then read once so its pages are in memory ("warm"). Indices and keys are
//! drawn from a fixed pseudo-random sequence. Throughput is reported as elements (samples or
//! records) per second.
//!
//! - `get/*`: 200,000 samples of one or two small raw fields (about 16-200 bytes), in 4 shards
//!   of 50,000 samples. `get/index` is `get(i)` alone (index lookup, bounds checks, key slice);
//!   `get/index+field` adds finding the field by name (its record entry, unchecked bytes);
//!   `get/index+field+data` adds the checksummed zero-copy bytes; `.../hot-4096` does the same
//!   on 4,096 samples that stay in the CPU caches. The goal is `get/index` over 2,000,000
//!   samples/s on one thread.
//! - `get_by_key/*`: the same dataset, lookups of existing keys in random order.
//! - `data/*`: 20,000 samples of one small JSON-like text field (about 100-1,000 bytes) stored
//!   raw, zstd:3 and zstd-dict:3 (a 32 KiB dictionary trained on the same data);
//!   `data()` allocates a fresh buffer per compressed record, `read_into` reuses one.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardpack::codec::train_dictionary;
use shardpack::format::Codec;
use shardpack::rng::SplitMix64;
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

const SEED: u64 = 0x005E_ED0F_5A3D;
const RAW_SAMPLES: u64 = 200_000;
const RAW_PER_SHARD: u64 = 50_000;
const TEXT_SAMPLES: u64 = 20_000;
/// Operations per criterion iteration (one batch of pre-drawn indices).
const BATCH: usize = 4096;

fn raw_dataset(dir: &Path) {
    let fields = vec![FieldSpec::raw("bin"), FieldSpec::raw("cls")];
    let opts = WriterOptions {
        max_samples_per_shard: Some(RAW_PER_SHARD),
        ..WriterOptions::default()
    };
    let mut w = DatasetWriter::create(dir, fields, opts).unwrap();
    let mut rng = SplitMix64::new(SEED);
    let mut buf = Vec::new();
    for i in 0..RAW_SAMPLES {
        let class = (i % 1000) as u32;
        let key = format!("n{class:08}/{i:08}");
        buf.clear();
        let n = 16 + rng.below(185) as usize;
        buf.extend((0..n).map(|_| rng.next_u64() as u8));
        let cls = class.to_string();
        if i % 2 == 0 {
            w.append(
                key.as_bytes(),
                Some(class),
                &[(0, &buf), (1, cls.as_bytes())],
            )
            .unwrap();
        } else {
            w.append(key.as_bytes(), Some(class), &[(0, &buf)]).unwrap();
        }
    }
    w.finish(DatasetInfo::default()).unwrap();
}

const WORDS: &[&str] = &[
    "a", "photo", "of", "the", "cat", "dog", "sitting", "on", "red", "blue", "green", "chair",
    "table", "in", "front", "house", "with", "small", "large", "man", "woman", "child", "holding",
    "umbrella", "street", "city", "beach", "sunset", "tree", "car", "bicycle", "playing", "ball",
    "grass", "field", "white", "black", "window", "kitchen", "bowl", "fruit", "orange", "banana",
    "near", "next", "to", "under", "over", "mountain", "lake", "river", "boat", "water", "sky",
    "cloudy", "bright", "dark", "old", "young", "standing", "walking", "running", "train", "bus",
];

fn text_record(rng: &mut SplitMix64, i: u64) -> Vec<u8> {
    let words = 12 + rng.below(150) as usize;
    let mut caption = String::new();
    for k in 0..words {
        if k > 0 {
            caption.push(' ');
        }
        caption.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    format!(
        "{{\"id\": {i}, \"url\": \"https://images.example.com/{:016x}.jpg\", \"width\": {}, \
         \"height\": {}, \"license\": \"cc-by-4.0\", \"caption\": \"{caption}\"}}",
        rng.next_u64(),
        256 + rng.below(1024),
        256 + rng.below(1024)
    )
    .into_bytes()
}

fn text_dataset(dir: &Path, codec: Codec) {
    let mut rng = SplitMix64::new(SEED ^ 0x7E47);
    let records: Vec<Vec<u8>> = (0..TEXT_SAMPLES)
        .map(|i| text_record(&mut rng, i))
        .collect();
    let spec = match codec {
        Codec::Raw => FieldSpec::raw("json"),
        Codec::Zstd => FieldSpec::zstd("json"),
        Codec::ZstdDict => {
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            FieldSpec {
                codec: Codec::ZstdDict,
                dict: Some(train_dictionary(&refs, 32 * 1024).expect("dictionary")),
                ..FieldSpec::zstd("json")
            }
        }
        other => panic!("no text dataset for codec {other:?}"),
    };
    let mut w = DatasetWriter::create(dir, vec![spec], WriterOptions::default()).unwrap();
    for (i, r) in records.iter().enumerate() {
        w.append(format!("{i:08}").as_bytes(), None, &[(0, r)])
            .unwrap();
    }
    let m = w.finish(DatasetInfo::default()).unwrap();
    let f = &m.fields[0];
    eprintln!(
        "text dataset {:>9}: {} records, {} -> {} bytes stored ({:.1}%), dictionary {} bytes",
        codec.name(),
        f.records,
        f.raw_bytes,
        f.stored_bytes,
        100.0 * f.stored_bytes as f64 / f.raw_bytes as f64,
        f.dict_bytes
    );
}

/// Reads every record once so the dataset's pages are resident.
fn warm(ds: &Dataset) -> u64 {
    let mut sum = 0u64;
    for s in ds.iter() {
        for f in s.unwrap().fields() {
            sum = sum.wrapping_add(f.unwrap().data().unwrap().len() as u64);
        }
    }
    sum
}

fn indices(n: u64, count: usize, seed: u64) -> Vec<u64> {
    let mut rng = SplitMix64::new(seed);
    (0..count).map(|_| rng.below(n)).collect()
}

fn bench_get(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    raw_dataset(dir.path());
    let ds = Dataset::open(dir.path()).unwrap();
    black_box(warm(&ds));
    let idx = indices(ds.len(), 1 << 16, SEED ^ 1);
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut at = 0usize;
    let mut next_batch = || {
        let b = &idx[at..at + BATCH];
        at = (at + BATCH) % idx.len();
        b
    };
    g.bench_function("index", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for &i in next_batch() {
                let s = ds.get(i).unwrap();
                acc = acc.wrapping_add(s.key().len() as u64 + s.label().unwrap_or(0) as u64);
            }
            black_box(acc)
        })
    });
    g.bench_function("index+field", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for &i in next_batch() {
                let s = ds.get(i).unwrap();
                let f = s.field(b"bin").unwrap().unwrap();
                acc = acc.wrapping_add(f.stored().len() as u64);
            }
            black_box(acc)
        })
    });
    g.bench_function("index+field+data", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for &i in next_batch() {
                let s = ds.get(i).unwrap();
                let f = s.field(b"bin").unwrap().unwrap();
                acc = acc.wrapping_add(f.data().unwrap().len() as u64);
            }
            black_box(acc)
        })
    });
    // The same on the first 4,096 samples only (their index and data fit in the CPU caches):
    // the gap to the line above is memory latency, not instructions.
    let hot = indices(4096, 1 << 16, SEED ^ 4);
    let mut at = 0usize;
    g.bench_function("index+field+data/hot-4096", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for &i in &hot[at..at + BATCH] {
                let s = ds.get(i).unwrap();
                let f = s.field(b"bin").unwrap().unwrap();
                acc = acc.wrapping_add(f.data().unwrap().len() as u64);
            }
            at = (at + BATCH) % hot.len();
            black_box(acc)
        })
    });
    g.finish();

    // Keys of existing samples in a fixed random order.
    let keys: Vec<Vec<u8>> = indices(ds.len(), 1 << 16, SEED ^ 2)
        .into_iter()
        .map(|i| ds.get(i).unwrap().key().to_vec())
        .collect();
    let mut g = c.benchmark_group("get_by_key");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut at = 0usize;
    g.bench_function("hit", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for k in &keys[at..at + BATCH] {
                acc = acc.wrapping_add(ds.get_by_key(k).unwrap().unwrap().index());
            }
            at = (at + BATCH) % keys.len();
            black_box(acc)
        })
    });
    g.finish();
}

fn bench_data(c: &mut Criterion) {
    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Elements(BATCH as u64));
    for codec in [Codec::Raw, Codec::Zstd, Codec::ZstdDict] {
        let dir = tempfile::tempdir().unwrap();
        text_dataset(dir.path(), codec);
        let ds = Dataset::open(dir.path()).unwrap();
        black_box(warm(&ds));
        let idx = indices(ds.len(), 1 << 16, SEED ^ 3);
        // Resolve the fields up front: this group measures decoding, not lookup.
        let fields: Vec<_> = idx
            .iter()
            .map(|&i| ds.get(i).unwrap().fields().next().unwrap().unwrap())
            .collect();
        assert!(fields
            .iter()
            .all(|f| f.codec() == codec || f.codec() == Codec::Raw));
        let mut at = 0usize;
        g.bench_function(format!("{}/data", codec.name()), |b| {
            b.iter(|| {
                let mut acc = 0u64;
                for f in &fields[at..at + BATCH] {
                    acc = acc.wrapping_add(f.data().unwrap().len() as u64);
                }
                at = (at + BATCH) % fields.len();
                black_box(acc)
            })
        });
        let mut at = 0usize;
        g.bench_function(format!("{}/read_into", codec.name()), |b| {
            b.iter_batched_ref(
                || Vec::with_capacity(4096),
                |buf| {
                    let mut acc = 0u64;
                    for f in &fields[at..at + BATCH] {
                        f.read_into(buf).unwrap();
                        acc = acc.wrapping_add(buf.len() as u64);
                    }
                    at = (at + BATCH) % fields.len();
                    black_box(acc)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_get, bench_data
}
criterion_main!(benches);

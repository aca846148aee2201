//! Criterion: the Loader's warm throughput (page cache, buffered reads) on generated data with
//! a fixed seed, for raw records and for zstd / zstd-dict compressed text records.
//!
//! `cargo bench --bench loader`. Cold-cache figures come from `shardpack bench`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardpack::codec::train_dictionary;
use shardpack::format::Codec;
use shardpack::loader::{DirectIo, Loader, LoaderOptions};
use shardpack::rng::SplitMix64;
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Dataset;

const SEED: u64 = 0x5EED;

fn text(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
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
        "in memory",
    ];
    let mut s = Vec::with_capacity(len + 16);
    while s.len() < len {
        s.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        s.push(b' ');
    }
    s.truncate(len);
    s
}

/// `n` samples of `size` bytes: random bytes for raw, words for the text codecs.
fn dataset(dir: &std::path::Path, n: u64, size: usize, codec: Codec) -> (Arc<Dataset>, u64) {
    let mut rng = SplitMix64::new(SEED);
    let samples: Vec<Vec<u8>> = (0..n)
        .map(|_| match codec {
            Codec::Raw => (0..size).map(|_| rng.next_u64() as u8).collect(),
            _ => text(&mut rng, size),
        })
        .collect();
    let spec = match codec {
        Codec::Raw => FieldSpec::raw("bin"),
        Codec::Zstd => FieldSpec::zstd("txt"),
        _ => {
            let refs: Vec<&[u8]> = samples.iter().take(2000).map(Vec::as_slice).collect();
            FieldSpec {
                dict: Some(train_dictionary(&refs, 64 << 10).expect("trainable")),
                codec: Codec::ZstdDict,
                ..FieldSpec::zstd("txt")
            }
        }
    };
    let mut w = DatasetWriter::create(dir, vec![spec], WriterOptions::default()).unwrap();
    for (i, s) in samples.iter().enumerate() {
        w.append(
            format!("{i:08}").as_bytes(),
            Some((i % 100) as u32),
            &[(0, s)],
        )
        .unwrap();
    }
    w.finish(DatasetInfo::default()).unwrap();
    let bytes = n * size as u64;
    (Arc::new(Dataset::open(dir).unwrap()), bytes)
}

fn epoch(ds: &Arc<Dataset>) -> u64 {
    let opts = LoaderOptions {
        direct_io: DirectIo::Off,
        ..LoaderOptions::default()
    };
    let mut n = 0;
    for s in Loader::new(ds.clone(), opts).unwrap() {
        n += s.unwrap().fields[0].data.len() as u64;
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("loader_warm_epoch");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for (name, codec, n, size) in [
        ("raw_16KiB", Codec::Raw, 20_000u64, 16 << 10),
        ("zstd_text_2KiB", Codec::Zstd, 50_000, 2 << 10),
        ("zstd_dict_text_2KiB", Codec::ZstdDict, 50_000, 2 << 10),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (ds, bytes) = dataset(dir.path(), n, size, codec);
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(name, |b| b.iter(|| epoch(&ds)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Writes a dataset of many small ImageFolder-style samples through the public writer, for
//! benchmarks of what is proportional to the sample count (the index table export,
//! `scripts/bench-index.sh`): each sample has a raw `jpg` of 48-112 bytes, a zstd `txt` caption
//! of 20-80 bytes and, every third sample, a raw `json`; 1,000 classes; 1 GiB shards. The
//! output is the same on every run.
//!
//! ```text
//! cargo run --release --example many-samples -- OUT [SAMPLES]   # default 1,000,000
//! ```

use shardpack::manifest::Name;
use shardpack::rng::SplitMix64;
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};

fn main() -> shardpack::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().expect("usage: many-samples OUT [SAMPLES]");
    let samples: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("SAMPLES"));
    let classes = 1000u32;
    let fields = vec![
        FieldSpec::raw("jpg"),
        FieldSpec::raw("json"),
        FieldSpec::zstd("txt"),
    ];
    let t0 = std::time::Instant::now();
    let mut w =
        DatasetWriter::create(std::path::Path::new(&out), fields, WriterOptions::default())?;
    let mut rng = SplitMix64::new(7);
    let mut jpg = [0u8; 112];
    let words = [
        "a", "photo", "of", "the", "small", "red", "cat", "on", "a", "mat",
    ];
    for i in 0..samples {
        let label = (i % classes as u64) as u32;
        let key = format!("n{label:08}/{i:09}");
        let n = 48 + (rng.next_u64() % 64) as usize;
        for b in jpg[..n].iter_mut() {
            *b = rng.next_u64() as u8;
        }
        let mut txt = String::new();
        while txt.len() < 20 + (i % 60) as usize {
            txt.push_str(words[(rng.next_u64() % words.len() as u64) as usize]);
            txt.push(' ');
        }
        let json = format!("{{\"id\":{i}}}");
        let mut f: Vec<(u32, &[u8])> = vec![(0, &jpg[..n]), (2, txt.as_bytes())];
        if i % 3 == 0 {
            f.insert(1, (1, json.as_bytes()));
        }
        w.append(key.as_bytes(), Some(label), &f)?;
    }
    let info = DatasetInfo {
        imagefolder_labels: true,
        classes: (0..classes)
            .map(|c| Name::from(format!("n{c:08}").as_str()))
            .collect(),
        ..DatasetInfo::default()
    };
    w.finish(info)?;
    eprintln!(
        "many-samples: {samples} samples in {out} in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

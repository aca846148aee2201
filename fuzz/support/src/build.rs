//! Small datasets written with the real writer. They are deterministic (the writer's output
//! depends only on its input), so the seeder and the fuzz targets build byte-identical files
//! and a seeded manifest matches the shards the `manifest` target opens.

use std::path::Path;

use shardpack::format::Codec;
use shardpack::manifest::Name;
use shardpack::rng::SplitMix64;
use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
use shardpack::Manifest;

/// The `json` record of sample `i` of class `class`.
fn json_record(class: &str, i: u32) -> String {
    format!(
        r#"{{"class": "{class}", "id": {i}, "width": 64, "height": 48, "source": "synthetic", "tags": ["a", "b"], "caption": "a photo of a {class}"}}"#
    )
}

/// A trained zstd dictionary for the zstd-dict field (the format requires the dictionary
/// magic, so a raw-content dictionary is refused by the writer). Trained on records like the
/// field's; the trainer is deterministic, so every build gets the same bytes.
fn json_dict() -> Vec<u8> {
    let classes = ["bird", "cat", "dog", "fish"];
    let samples: Vec<String> = (0..512u32)
        .map(|i| json_record(classes[(i % 4) as usize], i * 7919 % 100_000))
        .collect();
    let refs: Vec<&[u8]> = samples.iter().map(|s| s.as_bytes()).collect();
    shardpack::codec::train_dictionary(&refs, 2048).expect("train the json dictionary")
}

/// Which dataset to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Three shards (4 + 4 + 2 samples), record alignment 8, ImageFolder labels, four fields
    /// covering every codec: `""` (zstd), `img` (raw), `json` (zstd-dict), `txt` (zstd). Has a
    /// sample without `img`, an empty record, and one sample with the empty-named field.
    Main,
    /// One shard, record alignment 64, no labels, fields `bin` (raw) and `z` (zstd), an empty
    /// key and an empty raw record.
    Aligned,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 2] = [Kind::Main, Kind::Aligned];

    /// A short name for file names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Aligned => "aligned",
        }
    }
}

fn noise(rng: &mut SplitMix64, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// Writes dataset `kind` into the empty directory `dir`.
pub fn build_dataset(dir: &Path, kind: Kind) -> shardpack::Result<Manifest> {
    match kind {
        Kind::Main => build_main(dir),
        Kind::Aligned => build_aligned(dir),
    }
}

fn build_main(dir: &Path) -> shardpack::Result<Manifest> {
    let fields = vec![
        FieldSpec::zstd(""),
        FieldSpec::raw("img"),
        FieldSpec {
            name: b"json".to_vec(),
            codec: Codec::ZstdDict,
            level: 3,
            dict: Some(json_dict()),
        },
        FieldSpec::zstd("txt"),
    ];
    let opts = WriterOptions {
        max_samples_per_shard: Some(4),
        ..WriterOptions::default()
    };
    let mut w = DatasetWriter::create(dir, fields, opts)?;
    let mut rng = SplitMix64::new(0x5EED);
    let classes = ["bird", "cat"];
    for i in 0..10u32 {
        let class = classes[(i % 2) as usize];
        let key = format!("{class}/{i:04}");
        let img = noise(&mut rng, 40 + 16 * i as usize);
        let json = json_record(class, i);
        let txt = if i == 5 {
            String::new()
        } else {
            format!("a photo of a {class}, number {i}. ").repeat(4)
        };
        let readme = "This sample has a file without a dot: the empty field. ".repeat(3);
        let mut recs: Vec<(u32, &[u8])> = Vec::new();
        if i == 0 {
            recs.push((0, readme.as_bytes()));
        }
        if i != 3 {
            recs.push((1, &img));
        }
        recs.push((2, json.as_bytes()));
        recs.push((3, txt.as_bytes()));
        w.append(key.as_bytes(), Some(i % 2), &recs)?;
    }
    w.finish(DatasetInfo {
        imagefolder_labels: true,
        classes: classes.iter().map(|c| Name::from(*c)).collect(),
        ..DatasetInfo::default()
    })
}

fn build_aligned(dir: &Path) -> shardpack::Result<Manifest> {
    let fields = vec![FieldSpec::raw("bin"), FieldSpec::zstd("z")];
    let opts = WriterOptions {
        record_align: 64,
        ..WriterOptions::default()
    };
    let mut w = DatasetWriter::create(dir, fields, opts)?;
    let mut rng = SplitMix64::new(0xA11);
    let z = b"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz".repeat(5);
    let bin = noise(&mut rng, 100);
    w.append(b"", None, &[(0, &bin), (1, &z)])?;
    w.append(b"k1", None, &[(0, b"")])?;
    w.append(b"k2", None, &[(1, &z[..77])])?;
    w.finish(DatasetInfo::default())
}

/// A built dataset held in memory: its manifest and its shard files.
#[derive(Debug, Clone)]
pub struct Built {
    /// Which dataset.
    pub kind: Kind,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its shard files, in shard order.
    pub shards: Vec<Vec<u8>>,
}

/// Every [`Kind`] of dataset, built in a temporary directory and read into memory.
pub fn all_datasets() -> Vec<Built> {
    Kind::ALL
        .iter()
        .map(|&kind| {
            let tmp = tempfile::tempdir().expect("temp dir");
            let manifest = build_dataset(tmp.path(), kind).expect("build dataset");
            let shards = manifest
                .shards
                .iter()
                .map(|s| std::fs::read(tmp.path().join(&s.file)).expect("read shard"))
                .collect();
            Built {
                kind,
                manifest,
                shards,
            }
        })
        .collect()
}

/// The shard files of every [`Kind`], in kind then shard order.
pub fn all_shards() -> Vec<Vec<u8>> {
    all_datasets().into_iter().flat_map(|b| b.shards).collect()
}

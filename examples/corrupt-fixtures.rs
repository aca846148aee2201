//! Writes the corrupt-dataset fixtures whose damage is a rule of the format broken *inside* a
//! consistent file (fixtures/corrupt/README.md, second table): a duplicate key, an empty
//! sample, two zstd frames in one record, ... Each one needs checksums recomputed after the
//! edit (the index checksum, the footer checksum, the manifest's hashes), which Python's
//! standard library cannot do (no xxh3), so this program makes them, from the committed
//! `intact/` dataset:
//!
//! ```sh
//! cargo run --example corrupt-fixtures -- fixtures/corrupt/intact fixtures/corrupt
//! ```
//!
//! It decomposes each shard of INTACT into its parts (fields, dictionaries, samples, records),
//! checks that laying those parts out again the way the writer does reproduces the shard byte
//! for byte, then for each case applies one edit to shard 1 (or to the manifest) and lays the
//! shard out again with fresh checksums; the manifest's shard entries, totals and per-field
//! statistics are recomputed (so the edit is the only defect), then the case's manifest edit,
//! if any, is applied. `scripts/make-corrupt-fixtures.sh` runs it after the Python cases.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use shardpack::format::{
    align_up, key_hash, record_checksum, Codec, FieldEntry, Footer, Header, IndexHeader,
    KeyHashEntry, RecordEntry, SampleEntry, ShardBytes, Version, REGION_ALIGN,
};
use shardpack::manifest::{Features, Hash64, Manifest, WriterId, MANIFEST_FILE};
use xxhash_rust::xxh3::xxh3_64;

/// The shard every shard-level edit damages (as in the Python cases).
const SHARD: usize = 1;

#[derive(Clone)]
struct Rec {
    field: u32,
    codec: u32,
    stored: Vec<u8>,
    raw_len: u64,
}

#[derive(Clone)]
struct Smp {
    key: Vec<u8>,
    label: u32,
    recs: Vec<Rec>,
}

#[derive(Clone)]
struct Fld {
    name: Vec<u8>,
    codec: Codec,
    level: i32,
    dict: Option<Vec<u8>>,
}

/// One shard as parts.
#[derive(Clone)]
struct Model {
    shard_index: u64,
    record_align: u64,
    first_sample: u64,
    fields: Vec<Fld>,
    samples: Vec<Smp>,
    /// The key-hash table as stored; `None`: computed from the keys and sorted, as a writer
    /// does.
    key_hashes: Option<Vec<KeyHashEntry>>,
}

fn decompose(bytes: &[u8]) -> Model {
    let sb = ShardBytes::new(bytes).expect("the input shard is valid");
    let fields = (0..sb.fields().len())
        .map(|i| {
            let f = sb.fields()[i];
            Fld {
                name: sb.field_name(i).to_vec(),
                codec: f.codec,
                level: f.level,
                dict: sb.field_dict(i).map(<[u8]>::to_vec),
            }
        })
        .collect();
    let samples = (0..sb.sample_count())
        .map(|i| {
            let e = sb.sample(i).unwrap();
            let recs = (e.first_record..e.first_record + e.record_count as u64)
                .map(|r| {
                    let r = sb.record(r).unwrap();
                    Rec {
                        field: r.field,
                        codec: r.codec,
                        stored: sb.stored(&r).to_vec(),
                        raw_len: r.raw_len,
                    }
                })
                .collect();
            Smp {
                key: sb.key(&e).to_vec(),
                label: e.label,
                recs,
            }
        })
        .collect();
    Model {
        shard_index: sb.header().shard_index,
        record_align: sb.header().record_align,
        first_sample: sb.index_header().first_sample,
        fields,
        samples,
        key_hashes: None,
    }
}

fn pad(f: &mut Vec<u8>, to: u64) {
    f.resize(to as usize, 0);
}

/// Lays the parts out as `src/writer.rs` does (format-spec/shard.md sections 1-7).
fn encode(m: &Model) -> Vec<u8> {
    let mut f = Header {
        version: Version::V1,
        shard_index: m.shard_index,
        record_align: m.record_align,
        data_offset: REGION_ALIGN,
    }
    .encode()
    .to_vec();
    pad(&mut f, REGION_ALIGN);
    let (mut samples, mut records, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    let mut record_count = 0u64;
    for s in &m.samples {
        SampleEntry {
            key_offset: keys.len() as u64,
            key_len: s.key.len() as u64,
            first_record: record_count,
            record_count: s.recs.len() as u32,
            label: s.label,
        }
        .encode_into(&mut samples);
        keys.extend_from_slice(&s.key);
        for r in &s.recs {
            let offset = align_up(f.len() as u64, m.record_align).unwrap();
            pad(&mut f, offset);
            f.extend_from_slice(&r.stored);
            RecordEntry {
                offset,
                stored_len: r.stored.len() as u64,
                raw_len: r.raw_len,
                checksum: record_checksum(&r.stored),
                field: r.field,
                codec: r.codec,
            }
            .encode_into(&mut records);
            record_count += 1;
        }
    }
    let data_len = f.len() as u64 - REGION_ALIGN;
    let dict_offset = align_up(f.len() as u64, REGION_ALIGN).unwrap();
    pad(&mut f, dict_offset);
    let (mut entries, mut names) = (Vec::new(), Vec::new());
    for fl in &m.fields {
        let (mut d_off, mut d_len, mut d_sum) = (0, 0, 0);
        if let Some(d) = &fl.dict {
            let at = align_up(f.len() as u64, 8).unwrap();
            pad(&mut f, at);
            f.extend_from_slice(d);
            (d_off, d_len, d_sum) = (at, d.len() as u64, xxh3_64(d));
        }
        FieldEntry {
            name_offset: names.len() as u64,
            name_len: fl.name.len() as u64,
            codec: fl.codec,
            level: fl.level,
            dict_offset: d_off,
            dict_len: d_len,
            dict_checksum: d_sum,
        }
        .encode_into(&mut entries);
        names.extend_from_slice(&fl.name);
    }
    let dict_len = f.len() as u64 - dict_offset;
    let index_offset = align_up(f.len() as u64, REGION_ALIGN).unwrap();
    pad(&mut f, index_offset);
    let ih = IndexHeader {
        sample_count: m.samples.len() as u64,
        record_count,
        field_count: m.fields.len() as u64,
        key_bytes_len: keys.len() as u64,
        name_bytes_len: names.len() as u64,
        first_sample: m.first_sample,
    };
    let layout = ih.layout().unwrap();
    let mut idx = ih.encode().to_vec();
    idx.extend_from_slice(&entries);
    idx.extend_from_slice(&samples);
    idx.extend_from_slice(&records);
    let kh = m.key_hashes.clone().unwrap_or_else(|| {
        let mut kh: Vec<KeyHashEntry> = m
            .samples
            .iter()
            .enumerate()
            .map(|(i, s)| KeyHashEntry {
                hash: key_hash(&s.key),
                sample: i as u64,
            })
            .collect();
        kh.sort_unstable();
        kh
    });
    for e in kh {
        e.encode_into(&mut idx);
    }
    idx.extend_from_slice(&keys);
    pad(&mut idx, layout.names);
    idx.extend_from_slice(&names);
    pad(&mut idx, layout.end);
    let index_checksum = xxh3_64(&idx);
    f.extend_from_slice(&idx);
    f.extend_from_slice(
        &Footer {
            data_offset: REGION_ALIGN,
            data_len,
            dict_offset,
            dict_len,
            index_offset,
            index_len: idx.len() as u64,
            index_checksum,
            sample_count: m.samples.len() as u64,
            record_count,
            version: Version::V1,
        }
        .encode(),
    );
    f
}

/// One zstd frame of `raw` (level 3, content size in the header), as the writer makes them.
fn zstd_frame(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, 3).unwrap()
}

/// A hand-made zstd frame holding `raw` in one raw block, whose header declares a window of
/// 2^30 bytes (1 GiB): frame header descriptor 0x00 (no content size, not single-segment),
/// window descriptor 0xa0 (exponent 20: 2^(10+20)). One-shot zstd decodes it.
fn huge_window_frame(raw: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa0];
    let block = ((raw.len() as u32) << 3) | 1; // raw block (type 0), last block
    f.extend_from_slice(&block.to_le_bytes()[..3]);
    f.extend_from_slice(raw);
    f
}

fn field_index(m: &Model, name: &[u8]) -> usize {
    m.fields.iter().position(|f| f.name == name).unwrap()
}

/// The record of field `name` in sample `s`.
fn rec_mut<'a>(m: &'a mut Model, s: usize, name: &[u8]) -> &'a mut Rec {
    let f = field_index(m, name) as u32;
    m.samples[s].recs.iter_mut().find(|r| r.field == f).unwrap()
}

fn raw_of(m: &Model, r: &Rec) -> Vec<u8> {
    assert_eq!(r.codec, Codec::Zstd.as_u32(), "a zstd record");
    let _ = m;
    zstd::bulk::decompress(&r.stored, r.raw_len as usize).unwrap()
}

type ShardEdit = fn(&mut [Model]);
type ManifestEdit = fn(&mut Manifest);

/// The cases: name, what it does (printed), the shard edit, the manifest edit.
fn cases() -> Vec<(&'static str, &'static str, ShardEdit, ManifestEdit)> {
    fn none(_: &mut Manifest) {}
    fn keep(_: &mut [Model]) {}
    vec![
        (
            "duplicate-key",
            "sample 3 of shard 1 takes the key of sample 2",
            |ms| ms[SHARD].samples[3].key = ms[SHARD].samples[2].key.clone(),
            none,
        ),
        (
            "duplicate-key-across-shards",
            "sample 0 of shard 1 takes the key of sample 0 of shard 0",
            |ms| ms[SHARD].samples[0].key = ms[0].samples[0].key.clone(),
            none,
        ),
        (
            "empty-sample",
            "sample 4 of shard 1 loses its three records",
            |ms| ms[SHARD].samples[4].recs.clear(),
            none,
        ),
        (
            "label-out-of-range",
            "sample 5 of shard 1 gets label 2 (the dataset has 2 classes)",
            |ms| ms[SHARD].samples[5].label = 2,
            none,
        ),
        (
            "slash-in-field-name",
            "field `bin` of shard 1 is renamed `b/n` (the manifest keeps `bin`)",
            |ms| {
                let f = field_index(&ms[SHARD], b"bin");
                ms[SHARD].fields[f].name = b"b/n".to_vec();
            },
            none,
        ),
        (
            "two-zstd-frames",
            "the zstd `json` record of sample 1 of shard 1 holds its frame twice (raw_len doubled)",
            |ms| {
                let r = rec_mut(&mut ms[SHARD], 1, b"json");
                assert_eq!(r.codec, Codec::Zstd.as_u32());
                r.stored = [r.stored.clone(), r.stored.clone()].concat();
                r.raw_len *= 2;
            },
            none,
        ),
        (
            "skippable-frame",
            "the zstd `json` record of sample 1 of shard 1 starts with a 12-byte skippable frame",
            |ms| {
                let r = rec_mut(&mut ms[SHARD], 1, b"json");
                assert_eq!(r.codec, Codec::Zstd.as_u32());
                let mut s = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0];
                s.extend_from_slice(b"skip");
                s.extend_from_slice(&r.stored);
                r.stored = s;
            },
            none,
        ),
        (
            "huge-window",
            "the zstd `json` record of sample 10 of shard 1 is one raw block in a frame declaring \
             a 1 GiB window",
            |ms| {
                let m = ms[SHARD].clone();
                let r = rec_mut(&mut ms[SHARD], 10, b"json");
                r.stored = huge_window_frame(&raw_of(&m, r));
            },
            none,
        ),
        (
            "dict-without-magic",
            "the `txt` dictionary of shard 1 is replaced by raw text (a zstd raw-content \
             dictionary, without the magic 37 a4 30 ec)",
            |ms| {
                let f = field_index(&ms[SHARD], b"txt");
                let text = b"the shape with edges corners sides of and is drawn in red blue. ";
                ms[SHARD].fields[f].dict = Some(text.repeat(16));
            },
            none,
        ),
        (
            "dict-on-zstd-field",
            "the plain-zstd `json` field of shard 1 gets a copy of the `txt` dictionary",
            |ms| {
                let t = field_index(&ms[SHARD], b"txt");
                let j = field_index(&ms[SHARD], b"json");
                ms[SHARD].fields[j].dict = ms[SHARD].fields[t].dict.clone();
            },
            none,
        ),
        (
            "record-codec-mismatch",
            "the raw `bin` record of sample 11 of shard 1 (field codec none) is stored as a zstd \
             frame with codec zstd",
            |ms| {
                let r = rec_mut(&mut ms[SHARD], 11, b"bin");
                assert_eq!(r.codec, Codec::Raw.as_u32());
                r.stored = zstd_frame(&r.stored);
                r.codec = Codec::Zstd.as_u32();
            },
            none,
        ),
        (
            "key-hash-order",
            "the first and last entries of shard 1's key-hash table are swapped",
            |ms| {
                let mut kh: Vec<KeyHashEntry> = ms[SHARD]
                    .samples
                    .iter()
                    .enumerate()
                    .map(|(i, s)| KeyHashEntry {
                        hash: key_hash(&s.key),
                        sample: i as u64,
                    })
                    .collect();
                kh.sort_unstable();
                let n = kh.len();
                kh.swap(0, n - 1);
                ms[SHARD].key_hashes = Some(kh);
            },
            none,
        ),
        (
            "field-stats",
            "manifest.json: fields[1] (json) raw_bytes + 1000 and records + 1",
            keep,
            |m| {
                m.fields[1].raw_bytes += 1000;
                m.fields[1].records += 1;
            },
        ),
        (
            "unknown-required-feature",
            "manifest.json: format version 2 with features {required: [x-example-required], \
             optional: [x-example-optional]}",
            keep,
            |m| {
                m.format_version = 2;
                m.writer = Some(WriterId {
                    name: "shardpack".into(),
                    version: "0.1.0".into(),
                    zstd: "1.5.7".into(),
                    dict_trainer: "zdict 1.5.7".into(),
                });
                m.features = Some(Features {
                    required: vec!["x-example-required".into()],
                    optional: vec!["x-example-optional".into()],
                });
            },
        ),
    ]
}

fn run(intact: &Path, out: &Path) -> Result<(), String> {
    let mbytes = fs::read(intact.join(MANIFEST_FILE)).map_err(|e| e.to_string())?;
    let manifest =
        Manifest::parse(&mbytes, &intact.join(MANIFEST_FILE)).map_err(|e| e.to_string())?;
    if manifest.to_json() != mbytes {
        return Err("the intact manifest does not round-trip through Manifest::to_json".into());
    }
    let mut models = Vec::new();
    for s in &manifest.shards {
        let b = fs::read(intact.join(&s.file)).map_err(|e| e.to_string())?;
        let m = decompose(&b);
        if encode(&m) != b {
            return Err(format!("{}: laying its parts out again changes it", s.file));
        }
        models.push(m);
    }
    for (case, what, shard_edit, manifest_edit) in cases() {
        let dir = out.join(case);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut ms = models.clone();
        shard_edit(&mut ms);
        let mut m = manifest.clone();
        let mut stats = vec![(0u64, 0u64, 0u64); m.fields.len()];
        for (i, model) in ms.iter().enumerate() {
            let bytes = encode(model);
            let sb = ShardBytes::new(&bytes[..]);
            let index_checksum = match &sb {
                Ok(sb) => sb.footer().index_checksum,
                // The edit makes the shard fail on open; its footer is still intact.
                Err(_) => u64::from_le_bytes(
                    bytes[bytes.len() - 96 + 48..bytes.len() - 96 + 56]
                        .try_into()
                        .unwrap(),
                ),
            };
            let meta = &mut m.shards[i];
            meta.bytes = bytes.len() as u64;
            meta.xxh3 = Hash64(xxh3_64(&bytes));
            meta.index_xxh3 = Hash64(index_checksum);
            meta.samples = model.samples.len() as u64;
            meta.records = model.samples.iter().map(|s| s.recs.len() as u64).sum();
            for s in &model.samples {
                for r in &s.recs {
                    let st = &mut stats[r.field as usize];
                    st.0 += 1;
                    st.1 += r.raw_len;
                    st.2 += r.stored.len() as u64;
                }
            }
            fs::write(dir.join(&meta.file), &bytes).map_err(|e| e.to_string())?;
        }
        let mut first = 0;
        for s in &mut m.shards {
            s.first_sample = first;
            first += s.samples;
        }
        m.samples = first;
        m.records = m.shards.iter().map(|s| s.records).sum();
        for (f, st) in m.fields.iter_mut().zip(stats) {
            (f.records, f.raw_bytes, f.stored_bytes) = st;
        }
        // Field names stay as the intact manifest has them (slash-in-field-name edits the
        // shard only).
        manifest_edit(&mut m);
        fs::write(dir.join(MANIFEST_FILE), m.to_json()).map_err(|e| e.to_string())?;
        println!("{case}: {what}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [intact, out] = args.as_slice() else {
        eprintln!("usage: corrupt-fixtures INTACT_DATASET OUT_DIR");
        return ExitCode::from(2);
    };
    match run(intact, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corrupt-fixtures: {e}");
            ExitCode::FAILURE
        }
    }
}

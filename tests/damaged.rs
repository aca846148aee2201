//! One damaged shard must not lock out the dataset, and one bad record must not discard the
//! good samples around it (issue 8, items 4 and 5; library side).
//!
//! - `Dataset::open_with` with `DamagedShards::Mark` opens a dataset with a damaged shard,
//!   lists it with its reason, keeps the manifest's sample numbering, serves the intact shards
//!   and gives `Error::DamagedShard` (naming the file) for samples of the damaged one.
//! - The Loader's `ErrorPolicy::Skip` leaves out only the bad samples, says which, and keeps
//!   the order a pure function (resume included); `ErrorPolicy::Fail` (the default) names
//!   shard, sample, key and field.
//!
//! Works on copies of fixtures/corrupt/ (see its README.md): 3 shards of 12, 12 and 6
//! samples; every shard-level edit is to shard 1 (global samples 12..24).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardpack::loader::{
    epoch_order, DirectIo, ErrorPolicy, Loader, LoaderOptions, LoaderState, Shuffle,
};
use shardpack::reader::{DamagedShards, OpenOptions};
use shardpack::{Dataset, Error};

const DAMAGED: &str = "shard-000001.spk";
const SAMPLES: u64 = 30;
/// Global samples of shard 1.
const SHARD1: std::ops::Range<u64> = 12..24;
/// flipped-record-bit: the damaged sample.
const BAD_KEY: &str = "square/0010";
const BAD_GLOBAL: u64 = 18;

/// Cases where shard 1 cannot be opened, with words its reason must hold.
const UNOPENABLE: &[(&str, &[&str])] = &[
    ("truncated-shard", &["truncated"]),
    ("truncated-footer", &["truncated"]),
    ("bad-magic", &["bad magic"]),
    ("unknown-version", &["version 2"]),
    ("unknown-version-footer", &["version 2"]),
    ("flipped-index-bit", &["index", "checksum mismatch"]),
    ("flipped-dict-bit", &["dictionary", "checksum mismatch"]),
    ("missing-shard", &["missing"]),
    ("swapped-shard", &["index checksum"]),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A private copy of fixtures/corrupt/`case`.
fn copy_case(case: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = repo().join("fixtures/corrupt").join(case);
    for e in fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn source(key: &[u8], field: &[u8]) -> Vec<u8> {
    let mut rel = key.to_vec();
    rel.push(b'.');
    rel.extend_from_slice(field);
    let rel = String::from_utf8(rel).unwrap();
    fs::read(repo().join("fixtures/trees/corrupt-base").join(rel)).unwrap()
}

fn tolerant(dir: &Path) -> Dataset {
    let opts = OpenOptions {
        damaged: DamagedShards::Mark,
    };
    Dataset::open_with(dir, &opts).unwrap_or_else(|e| panic!("tolerant open failed: {e}"))
}

fn opts(policy: ErrorPolicy) -> LoaderOptions {
    LoaderOptions {
        seed: 5,
        batch_size: 32,
        chunk_bytes: 2048,
        window_chunks: 2,
        io_threads: 2,
        direct_io: DirectIo::Off,
        on_error: policy,
        ..LoaderOptions::default()
    }
}

#[track_caller]
fn assert_names_damaged(e: &Error, sample: Option<u64>, words: &[&str]) {
    let msg = e.to_string();
    match e {
        Error::DamagedShard {
            path,
            shard,
            sample: s,
            ..
        } => {
            assert!(path.ends_with(DAMAGED), "{msg}");
            assert_eq!(*shard, 1, "{msg}");
            assert_eq!(*s, sample, "{msg}");
        }
        other => panic!("expected Error::DamagedShard, got {other:?}"),
    }
    assert!(msg.contains(DAMAGED), "{msg}");
    for w in words {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
}

/// Every kind of shard damage: strict open refuses, tolerant open marks shard 1 and serves
/// shards 0 and 2 byte-exactly with the manifest's numbering.
#[test]
fn a_damaged_shard_is_marked_and_the_rest_is_served() {
    for &(case, words) in UNOPENABLE {
        let tmp = copy_case(case);
        let dir = tmp.path();
        let strict = Dataset::open(dir).expect_err(case);
        assert!(strict.to_string().contains(DAMAGED), "{case}: {strict}");

        let ds = tolerant(dir);
        assert_eq!(ds.len(), SAMPLES, "{case}");
        assert_eq!(ds.shard_count(), 3, "{case}");
        assert_eq!(ds.shards().len(), 2, "{case}");
        let d = ds.damaged();
        assert_eq!(d.len(), 1, "{case}: {d:?}");
        assert_eq!(d[0].index, 1);
        assert_eq!(d[0].path, dir.join(DAMAGED));
        assert_eq!((d[0].first_sample, d[0].samples), (12, 12), "{case}");
        assert_eq!(
            d[0].reason,
            strict.to_string(),
            "{case}: the same reason as open"
        );
        for w in words {
            assert!(
                d[0].reason.contains(w),
                "{case}: {:?} lacks {w:?}",
                d[0].reason
            );
        }
        assert!(ds.shard(0).is_ok() && ds.shard(2).is_ok(), "{case}");
        assert_names_damaged(&ds.shard(1).unwrap_err(), None, words);

        let mut ok = 0;
        for i in 0..SAMPLES {
            match ds.get(i) {
                Ok(s) => {
                    assert!(!SHARD1.contains(&i), "{case}: sample {i} served");
                    assert_eq!(s.index(), i);
                    for f in s.fields() {
                        let f = f.unwrap();
                        assert_eq!(&*f.data().unwrap(), source(s.key(), f.name()), "{case} {i}");
                    }
                    // The key index of the intact shards works too.
                    let by_key = ds.get_by_key(s.key()).unwrap().expect("found");
                    assert_eq!(by_key.index(), i);
                    ok += 1;
                }
                Err(e) => {
                    assert!(SHARD1.contains(&i), "{case}: sample {i}: {e}");
                    assert_names_damaged(&e, Some(i), words);
                }
            }
        }
        assert_eq!(ok, 18, "{case}");

        // A key in none of the intact shards is not "absent": it may be in the damaged one.
        let e = ds.get_by_key(BAD_KEY.as_bytes()).unwrap_err();
        assert_names_damaged(
            &e,
            None,
            &[
                BAD_KEY,
                "may be in this one",
                "restore that file from a copy or pack the dataset again",
            ],
        );

        // iter: 18 samples and one error per sample of shard 1, in order.
        let items: Vec<_> = ds.iter().collect();
        assert_eq!(items.len() as u64, SAMPLES);
        for (i, it) in items.iter().enumerate() {
            assert_eq!(it.is_err(), SHARD1.contains(&(i as u64)), "{case} {i}");
        }
        assert_eq!(ds.shard_samples(1).count(), 12);

        // verify reports it.
        let r = ds.verify();
        assert!(
            r.problems.iter().any(|p| p.shard == DAMAGED),
            "{case}: {:?}",
            r.problems
        );
    }
}

/// A damaged manifest is still an error: there is nothing to number samples by.
#[test]
fn a_damaged_manifest_is_still_refused() {
    let tmp = copy_case("truncated-manifest");
    let e = Dataset::open_with(tmp.path(), &OpenOptions::mark_damaged()).unwrap_err();
    assert!(matches!(e, Error::Manifest { .. }), "{e:?}");
}

/// An intact dataset opened tolerantly is the same as opened strictly.
#[test]
fn tolerant_open_of_an_intact_dataset_marks_nothing() {
    let tmp = copy_case("intact");
    let ds = tolerant(tmp.path());
    assert!(ds.damaged().is_empty());
    assert_eq!(ds.shards().len(), 3);
    assert!(ds.verify().is_ok());
    let a = epoch_order(&ds, &opts(ErrorPolicy::Fail)).unwrap();
    let b = epoch_order(
        &Dataset::open(tmp.path()).unwrap(),
        &opts(ErrorPolicy::Fail),
    )
    .unwrap();
    assert_eq!(a, b);
}

/// Runs a loader to the end by batches; returns delivered ids, errors and the loader.
fn drain(mut l: Loader) -> (Vec<u64>, Vec<Error>, Vec<usize>, Loader) {
    let (mut ids, mut errs, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(b) = l.next_batch() {
        match b {
            Ok(b) => {
                sizes.push(b.len());
                ids.extend(b.iter().map(|s| s.index));
            }
            Err(e) => errs.push(e),
        }
    }
    (ids, errs, sizes, l)
}

/// Item 5: one corrupt record no longer discards the good samples of its batch.
#[test]
fn skip_policy_leaves_out_only_the_bad_record_and_reports_it() {
    let tmp = copy_case("flipped-record-bit");
    let ds = Arc::new(Dataset::open(tmp.path()).unwrap());
    let order = epoch_order(&ds, &opts(ErrorPolicy::Skip)).unwrap();

    // The default fails; the error names shard, sample, key and field, and the batch it is
    // in is the error (the samples after it come in the next batch).
    let bad_pos = order.iter().position(|&i| i == BAD_GLOBAL).unwrap();
    let l = Loader::new(ds.clone(), opts(ErrorPolicy::default())).unwrap();
    let (ids, errs, _, l) = drain(l);
    assert_eq!(
        ids,
        order[bad_pos + 1..],
        "under Fail the batch is the error"
    );
    assert_eq!(errs.len(), 1);
    let msg = errs[0].to_string();
    for w in [DAMAGED, "sample 6", BAD_KEY, "\"bin\"", "checksum mismatch"] {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
    assert!(l.skipped().is_empty() && l.skipped_count() == 0);

    // Skip: the 29 good samples in one batch, in the planned order minus the bad one.
    let l = Loader::new(ds.clone(), opts(ErrorPolicy::Skip)).unwrap();
    let (ids, errs, sizes, mut l) = drain(l);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(sizes, vec![29]);
    let expected: Vec<u64> = order.iter().copied().filter(|&i| i != BAD_GLOBAL).collect();
    assert_eq!(ids, expected);
    assert_eq!(l.consumed(), SAMPLES, "positions count the skipped sample");
    assert_eq!(l.skipped_count(), 1);
    let sk = l.skipped().to_vec();
    assert_eq!(sk.len(), 1);
    assert_eq!(sk[0].index, BAD_GLOBAL);
    assert_eq!(sk[0].position, bad_pos as u64);
    for w in [DAMAGED, BAD_KEY, "\"bin\"", "checksum mismatch"] {
        assert!(sk[0].reason.contains(w), "{:?} lacks {w:?}", sk[0].reason);
    }
    assert_eq!(l.take_skipped(), sk);
    assert!(l.skipped().is_empty());
    assert_eq!(l.skipped_count(), 1, "the count survives take_skipped");
}

/// Resume under Skip: positions include skipped samples, so a resumed loader continues with
/// exactly the samples an uninterrupted one would have delivered.
#[test]
fn skip_policy_resumes_exactly() {
    let tmp = copy_case("flipped-record-bit");
    let ds = Arc::new(Dataset::open(tmp.path()).unwrap());
    for shuffle in [Shuffle::Chunked, Shuffle::None, Shuffle::Full] {
        let o = LoaderOptions {
            shuffle,
            batch_size: 4,
            ..opts(ErrorPolicy::Skip)
        };
        let (all, _, _, _) = drain(Loader::new(ds.clone(), o.clone()).unwrap());
        assert_eq!(all.len(), 29, "{shuffle:?}");
        for stop in 1..8 {
            let mut l = Loader::new(ds.clone(), o.clone()).unwrap();
            let mut got = Vec::new();
            for _ in 0..stop {
                if let Some(b) = l.next_batch() {
                    got.extend(b.unwrap().iter().map(|s| s.index));
                }
            }
            let state: LoaderState = l.state();
            drop(l);
            let (rest, errs, _, _) = drain(Loader::resume(ds.clone(), o.clone(), &state).unwrap());
            assert!(errs.is_empty());
            got.extend(rest);
            assert_eq!(got, all, "{shuffle:?}, stopped after {stop} batches");
        }
    }
}

/// Ranks: every rank plans the same count; the bad sample is left out on the one rank that
/// has it, and the union of deliveries is every good sample.
#[test]
fn skip_policy_with_ranks() {
    let tmp = copy_case("flipped-record-bit");
    let ds = Arc::new(Dataset::open(tmp.path()).unwrap());
    let mut union = BTreeSet::new();
    let mut skipped = 0;
    // The bad sample is skipped wherever it is planned: once, or twice when the padding
    // (the first 2 samples of the epoch's sequence, repeated on the last rank) holds it.
    let mut planned = 0;
    for rank in 0..4 {
        let o = LoaderOptions {
            rank,
            world_size: 4,
            ..opts(ErrorPolicy::Skip)
        };
        planned += epoch_order(&ds, &o)
            .unwrap()
            .iter()
            .filter(|&&i| i == BAD_GLOBAL)
            .count() as u64;
        let l = Loader::new(ds.clone(), o).unwrap();
        assert_eq!(l.len(), 8, "ceil(30 / 4) planned on every rank");
        let (ids, errs, _, l) = drain(l);
        assert!(errs.is_empty());
        assert_eq!(ids.len() as u64, 8 - l.skipped_count());
        skipped += l.skipped_count();
        union.extend(ids);
    }
    assert!(planned >= 1);
    assert_eq!(skipped, planned);
    let expected: BTreeSet<u64> = (0..SAMPLES).filter(|&i| i != BAD_GLOBAL).collect();
    assert_eq!(union, expected);
}

/// The Loader on a tolerantly opened dataset: the damaged shard's samples fail in their
/// places (Fail) or are skipped (Skip); the intact shards' samples all arrive.
#[test]
fn loader_over_a_damaged_shard() {
    let tmp = copy_case("truncated-shard");
    let ds = Arc::new(tolerant(tmp.path()));
    for shuffle in [Shuffle::Chunked, Shuffle::None, Shuffle::Full] {
        let o = LoaderOptions {
            shuffle,
            ..opts(ErrorPolicy::Skip)
        };
        let order = epoch_order(&ds, &o).unwrap();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..SAMPLES).collect::<Vec<_>>(), "{shuffle:?}");
        // Pure: the same order twice.
        assert_eq!(order, epoch_order(&ds, &o).unwrap());

        let (ids, errs, _, l) = drain(Loader::new(ds.clone(), o.clone()).unwrap());
        assert!(errs.is_empty(), "{errs:?}");
        let expected: Vec<u64> = order
            .iter()
            .copied()
            .filter(|i| !SHARD1.contains(i))
            .collect();
        assert_eq!(ids, expected, "{shuffle:?}");
        let skipped: BTreeSet<u64> = l.skipped().iter().map(|s| s.index).collect();
        assert_eq!(skipped, SHARD1.collect(), "{shuffle:?}");
        for s in l.skipped() {
            assert!(
                s.reason.contains(DAMAGED) && s.reason.contains("truncated"),
                "{s:?}"
            );
            assert!(s.reason.contains(&format!("sample {}", s.index)), "{s:?}");
        }

        // Fail: one error per damaged sample, in its place, naming the shard and the sample.
        let fail = LoaderOptions {
            on_error: ErrorPolicy::Fail,
            ..o
        };
        let l = Loader::new(ds.clone(), fail).unwrap();
        let mut good = Vec::new();
        for (pos, item) in l.enumerate() {
            match item {
                Ok(s) => good.push(s.index),
                Err(e) => assert_names_damaged(&e, Some(order[pos]), &["truncated"]),
            }
        }
        assert_eq!(good, expected);
    }
}

/// `LoaderOptions` serialized before `on_error` existed still deserializes, to `Fail`.
#[test]
fn loader_options_from_older_json() {
    let mut v = serde_json::to_value(LoaderOptions::default()).unwrap();
    assert_eq!(v["on_error"], "fail");
    v.as_object_mut().unwrap().remove("on_error");
    let o: LoaderOptions = serde_json::from_value(v).unwrap();
    assert_eq!(o, LoaderOptions::default());
    let o: LoaderOptions = serde_json::from_value(
        serde_json::to_value(LoaderOptions {
            on_error: ErrorPolicy::Skip,
            ..LoaderOptions::default()
        })
        .unwrap(),
    )
    .unwrap();
    assert_eq!(o.on_error, ErrorPolicy::Skip);
}

// ---------------------------------------------------------------------------------------------
// Field::reader: large records in bounded memory (issue 8, item 9, read side)
// ---------------------------------------------------------------------------------------------

mod stream {
    use std::io::Read;

    use shardpack::codec::train_dictionary;
    use shardpack::format::Codec;
    use shardpack::reader::STREAM_ABOVE;
    use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
    use shardpack::{Dataset, Error};

    /// Text-like bytes that zstd compresses but not to nothing.
    fn big_text(len: usize, seed: u64) -> Vec<u8> {
        let words = [
            &b"alpha "[..],
            b"beta ",
            b"gamma ",
            b"delta ",
            b"epsilon\n",
            b"zeta ",
        ];
        let mut x = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(words[(x >> 60) as usize % words.len()]);
            out.extend_from_slice(&(x >> 40).to_le_bytes()[..1]);
        }
        out.truncate(len);
        out
    }

    /// Fields: raw `a_raw`, zstd `b_zstd`, zstd-dict `c_dict`; sample 0 large in every field, sample
    /// 1 small.
    fn dataset(dir: &std::path::Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let small: Vec<Vec<u8>> = (0..3).map(|k| big_text(3000, 10 + k)).collect();
        let many: Vec<Vec<u8>> = (0..300).map(|k| big_text(500, 100 + k)).collect();
        let refs: Vec<&[u8]> = many.iter().map(|v| &v[..]).collect();
        let dict = train_dictionary(&refs, 4096);
        let dict = dict.expect("a dictionary trains on text");
        let fields = vec![
            FieldSpec::raw("a_raw"),
            FieldSpec::zstd("b_zstd"),
            FieldSpec {
                name: b"c_dict".to_vec(),
                codec: Codec::ZstdDict,
                level: 3,
                dict: Some(dict),
            },
        ];
        let big: Vec<Vec<u8>> = (0..3)
            .map(|k| big_text(STREAM_ABOVE as usize * 2 + 12345, k))
            .collect();
        let mut w = DatasetWriter::create(dir, fields, WriterOptions::default()).unwrap();
        w.append(b"big", None, &[(0, &big[0]), (1, &big[1]), (2, &big[2])])
            .unwrap();
        w.append(
            b"small",
            None,
            &[(0, &small[0]), (1, &small[1]), (2, &small[2])],
        )
        .unwrap();
        w.finish(DatasetInfo::default()).unwrap();
        (big, small)
    }

    fn read_all(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 100_000]; // odd size: pieces do not line up with anything
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn reader_streams_every_codec_byte_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let (big, small) = dataset(tmp.path());
        let ds = Dataset::open(tmp.path()).unwrap();
        for (i, want) in [(0u64, &big), (1, &small)] {
            let s = ds.get(i).unwrap();
            let fields: Vec<_> = s.fields().map(|f| f.unwrap()).collect();
            assert_eq!(fields.len(), 3);
            let codecs: Vec<Codec> = fields.iter().map(|f| f.codec()).collect();
            assert_eq!(
                codecs,
                [Codec::Raw, Codec::Zstd, Codec::ZstdDict],
                "sample {i}"
            );
            for (f, want) in fields.iter().zip(want.iter()) {
                let got = read_all(&mut f.reader().unwrap()).unwrap();
                assert!(got == *want, "sample {i} field {:?}", f.name());
            }
        }
    }

    /// Flips one byte of each large record in turn: the reader refuses before handing out a
    /// byte, with the record's error.
    #[test]
    fn reader_checks_before_the_first_byte() {
        let tmp = tempfile::tempdir().unwrap();
        dataset(tmp.path());
        let shard = tmp.path().join("shard-000000.spk");
        let offsets: Vec<(u64, u64)> = {
            let ds = Dataset::open(tmp.path()).unwrap();
            let s = ds.get(0).unwrap();
            s.fields()
                .map(|f| {
                    let f = f.unwrap();
                    (f.offset(), f.stored().len() as u64)
                })
                .collect()
        };
        for (k, (off, len)) in offsets.into_iter().enumerate() {
            let orig = std::fs::read(&shard).unwrap();
            let mut bad = orig.clone();
            bad[(off + len / 2) as usize] ^= 0x10;
            std::fs::write(&shard, &bad).unwrap();
            {
                let ds = Dataset::open(tmp.path()).unwrap();
                let f = ds.get(0).unwrap().fields().nth(k).unwrap().unwrap();
                match f.reader() {
                    Err(Error::BadRecord { detail, field, .. }) => {
                        assert!(detail.contains("checksum mismatch"), "{detail}");
                        assert_eq!(field.as_bytes(), f.name());
                    }
                    other => panic!("field {k}: expected BadRecord, got {other:?}"),
                }
            }
            std::fs::write(&shard, &orig).unwrap();
        }
    }

    /// Stored bytes whose checksum is right but whose zstd frame is wrong (as a faulty writer
    /// could make): the streaming reader fails with the record's error, never a short or long
    /// success.
    #[test]
    fn reader_rejects_a_bad_frame_while_streaming() {
        use shardpack::codec::{new_cctx, FieldEncoder};
        use shardpack::writer::EncodedRecord;
        let raw = big_text(STREAM_ABOVE as usize * 2, 7);
        let enc = FieldEncoder::new(Codec::Zstd, 3, None).unwrap();
        let mut frame = Vec::new();
        assert_eq!(enc.encode(&mut new_cctx(), &raw, &mut frame), Codec::Zstd);
        let n = raw.len() as u64;
        let cases: [(&str, &[u8], u64, &str); 3] = [
            ("cut", &frame[..frame.len() / 2], n, "ends early"),
            ("short", &frame, n + 1, "decoded to"),
            ("long", &frame, n - 1, "the index says"),
        ];
        for (name, stored, raw_len, words) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let mut w = DatasetWriter::create(
                tmp.path(),
                vec![FieldSpec::zstd("z")],
                WriterOptions::default(),
            )
            .unwrap();
            let rec = EncodedRecord {
                field: 0,
                codec: Codec::Zstd,
                stored,
                raw_len,
            };
            w.append_encoded(b"k", None, &[rec]).unwrap();
            w.finish(DatasetInfo::default()).unwrap();
            let ds = Dataset::open(tmp.path()).unwrap();
            let f = ds.get(0).unwrap().fields().next().unwrap().unwrap();
            // A frame cut short is found before the first byte (by walking its blocks), a
            // wrong length while reading.
            let inner = match f.reader() {
                Err(e) => {
                    assert_eq!(name, "cut", "{e}");
                    Box::new(e)
                }
                Ok(mut r) => {
                    let e = read_all(&mut r).expect_err(name);
                    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{name}");
                    e.into_inner().unwrap().downcast::<Error>().unwrap()
                }
            };
            match *inner {
                Error::BadRecord { ref detail, .. } => {
                    assert!(detail.contains(words), "{name}: {detail}")
                }
                ref other => panic!("{name}: {other:?}"),
            }
        }
    }
}

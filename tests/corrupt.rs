//! Corrupt datasets (fixtures/corrupt/, made by scripts/make-corrupt-fixtures.sh and described
//! in fixtures/corrupt/README.md): each kind of damage gives its own clear error from
//! `Dataset::open` or `get`, the `Loader` hands it to its consumer, `verify_dir` names it, and
//! nothing panics or returns a wrong sample.
//!
//! Every case is a copy of `intact/` (a 3-shard dataset of 30 samples packed from
//! fixtures/trees/corrupt-base/) with one small edit, always to shard 1 or to the manifest.

use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardpack::format::{Codec, FormatError, FormatErrorKind, ShardBytes};
use shardpack::loader::{DirectIo, Loader, LoaderOptions, Shuffle};
use shardpack::{verify_dir, Dataset, Error, VerifyReport};

/// The shard every shard-level edit damages.
const DAMAGED: &str = "shard-000001.spk";
/// flipped-record-bit: the sample whose raw `bin` record has a flipped bit.
const BAD_KEY: &str = "square/0010";
/// Its global index, and its index within shard 1.
const BAD_GLOBAL: u64 = 18;
const BAD_LOCAL: u64 = 6;
/// Samples in the dataset.
const SAMPLES: u64 = 30;

/// Every case, in the order of the README's table.
const CASES: &[&str] = &[
    "truncated-shard",
    "truncated-footer",
    "bad-magic",
    "unknown-version",
    "unknown-version-footer",
    "flipped-record-bit",
    "flipped-index-bit",
    "flipped-dict-bit",
    "missing-shard",
    "manifest-counts",
    "swapped-shard",
    "truncated-manifest",
];

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/corrupt")
        .join(case)
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// Runs library code that must not panic, whatever the bytes; a panic fails the test, naming
/// `what`.
#[track_caller]
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => panic!("{what} panicked: {}", panic_text(&*p)),
    }
}

/// `Dataset::open` on the case, which must fail.
#[track_caller]
fn open_err(case: &str) -> Error {
    let dir = case_dir(case);
    match no_panic(&format!("Dataset::open({case})"), || Dataset::open(&dir)) {
        Ok(_) => panic!("Dataset::open({case}) succeeded on a corrupt dataset"),
        Err(e) => e,
    }
}

/// `verify_dir` on the case, which must return a report with problems.
#[track_caller]
fn verify_report(case: &str) -> VerifyReport {
    let dir = case_dir(case);
    let r = no_panic(&format!("verify_dir({case})"), || verify_dir(&dir))
        .unwrap_or_else(|e| panic!("verify_dir({case}) failed instead of reporting: {e}"));
    assert!(!r.is_ok(), "verify_dir({case}) found nothing wrong: {r:?}");
    r
}

/// The message with the case's directory replaced, so messages of different cases compare on
/// what they say rather than where the fixture lives.
fn normalized(case: &str, msg: &str) -> String {
    msg.replace(&case_dir(case).display().to_string(), "<dataset>")
}

/// The structural error inside an `Error::Corrupt` about the damaged shard.
#[track_caller]
fn corrupt_source(case: &str, e: &Error) -> FormatError {
    match e {
        Error::Corrupt { path, source } => {
            assert_eq!(
                path,
                &case_dir(case).join(DAMAGED),
                "{case}: error names the wrong shard: {e}"
            );
            source.clone()
        }
        other => panic!("{case}: expected Error::Corrupt, got {other:?} ({other})"),
    }
}

/// The detail of an `Error::Manifest`.
#[track_caller]
fn manifest_detail(case: &str, e: &Error) -> (PathBuf, String) {
    match e {
        Error::Manifest { path, detail } => (path.clone(), detail.clone()),
        other => panic!("{case}: expected Error::Manifest, got {other:?} ({other})"),
    }
}

/// Asserts the verify report's problems concern the damaged shard only (or also `extra`), and
/// that one of them about the damaged shard holds every needle; returns that problem's text.
#[track_caller]
fn assert_verify_names(case: &str, needles: &[&str], extra: &[&str]) -> String {
    let r = verify_report(case);
    assert_eq!(r.shards, 3, "{case}: verify checked {} shards", r.shards);
    for p in &r.problems {
        assert!(
            p.shard == DAMAGED || extra.contains(&p.shard.as_str()),
            "{case}: verify blames an intact shard: {p:?}"
        );
    }
    let hit = r
        .problems
        .iter()
        .filter(|p| p.shard == DAMAGED)
        .find(|p| needles.iter().all(|n| p.detail.contains(n)));
    match hit {
        Some(p) => p.detail.clone(),
        None => panic!(
            "{case}: no problem about {DAMAGED} names {needles:?}; problems: {:#?}",
            r.problems
        ),
    }
}

fn shard_file(case: &str, name: &str) -> Vec<u8> {
    let p = case_dir(case).join(name);
    fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Shard 1 of the intact dataset, validated.
fn intact_shard() -> ShardBytes<Vec<u8>> {
    ShardBytes::new(shard_file("intact", DAMAGED)).expect("the intact shard is valid")
}

fn loader_opts() -> LoaderOptions {
    LoaderOptions {
        batch_size: 4,
        shuffle: Shuffle::None,
        chunk_bytes: 2048,
        window_chunks: 2,
        io_threads: 2,
        direct_io: DirectIo::Off,
        ..LoaderOptions::default()
    }
}

/// The control: the dataset every case starts from opens, verifies, and loads in full.
#[test]
fn intact_opens_verifies_and_loads() {
    let dir = case_dir("intact");
    let ds = Arc::new(no_panic("open intact", || Dataset::open(&dir)).expect("intact opens"));
    assert_eq!(ds.len(), SAMPLES);
    assert_eq!(ds.shards().len(), 3);
    let report = no_panic("verify intact", || ds.verify());
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(verify_dir(&dir).unwrap().is_ok());
    let bad = ds.get(BAD_GLOBAL).unwrap();
    assert_eq!(bad.key(), BAD_KEY.as_bytes());
    let bin = bad.field(b"bin").unwrap().expect("has bin");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/trees/corrupt-base")
        .join(format!("{BAD_KEY}.bin"));
    assert_eq!(&*bin.data().unwrap(), fs::read(src).unwrap().as_slice());
    let loaded: Vec<_> = Loader::new(ds, loader_opts())
        .unwrap()
        .collect::<Result<_, _>>()
        .expect("every sample loads");
    assert_eq!(loaded.len() as u64, SAMPLES);
}

#[test]
fn truncated_shard() {
    let case = "truncated-shard";
    let e = open_err(case);
    let src = corrupt_source(case, &e);
    let len = shard_file(case, DAMAGED).len() as u64;
    assert!(
        matches!(src.kind, FormatErrorKind::Truncated { available, needed } if available == len && needed > len),
        "{case}: expected a truncation of the {len}-byte file, got {e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");
    assert_verify_names(case, &["truncated"], &[]);
}

#[test]
fn truncated_footer() {
    let case = "truncated-footer";
    let e = open_err(case);
    let src = corrupt_source(case, &e);
    let len = shard_file(case, DAMAGED).len() as u64;
    assert!(
        matches!(src.kind, FormatErrorKind::Truncated { available, needed } if available == len && needed == len + 10),
        "{case}: expected a truncation of the {len}-byte file, got {e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");
    assert_verify_names(case, &["truncated"], &[]);
}

#[test]
fn bad_magic() {
    let case = "bad-magic";
    let e = open_err(case);
    let src = corrupt_source(case, &e);
    assert_eq!((src.region, src.offset), ("header", 0), "{e}");
    assert_eq!(src.kind, FormatErrorKind::BadMagic, "{e}");
    assert!(e.to_string().contains("bad magic"), "{e}");
    assert_verify_names(case, &["header", "bad magic"], &[]);
}

#[test]
fn unknown_version() {
    let case = "unknown-version";
    let e = open_err(case);
    let src = corrupt_source(case, &e);
    // The version is checked before the (now stale) header checksum.
    assert_eq!((src.region, src.offset), ("header", 8), "{e}");
    assert_eq!(src.kind, FormatErrorKind::UnsupportedVersion(2), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("version 2") && msg.contains("1..=1"), "{msg}");
    assert_verify_names(case, &["header", "version 2", "1..=1"], &[]);
}

#[test]
fn unknown_version_footer() {
    let case = "unknown-version-footer";
    let e = open_err(case);
    let src = corrupt_source(case, &e);
    let len = shard_file(case, DAMAGED).len() as u64;
    assert_eq!((src.region, src.offset), ("footer", len - 96 + 72), "{e}");
    assert_eq!(src.kind, FormatErrorKind::UnsupportedVersion(2), "{e}");
    assert_verify_names(case, &["footer", "version 2", "1..=1"], &[]);
}

/// The one sample of the case whose record is damaged: `get` works (records are read lazily),
/// but the field's data is refused, by the memory-mapped reader and by the Loader alike.
#[test]
fn flipped_record_bit() {
    let case = "flipped-record-bit";
    let dir = case_dir(case);
    let ds = no_panic("open", || Dataset::open(&dir))
        .expect("damage inside one record does not stop the dataset from opening");
    let ds = Arc::new(ds);

    // get(i) and Field::data().
    let s = no_panic("get", || ds.get(BAD_GLOBAL)).expect("the sample entry is intact");
    assert_eq!(s.key(), BAD_KEY.as_bytes());
    let bin = s.field(b"bin").unwrap().expect("has bin");
    assert_eq!(bin.codec(), Codec::Raw);
    let e = no_panic("data", || bin.data()).expect_err("a flipped bit must not be handed out");
    let msg = e.to_string();
    match &e {
        Error::BadRecord {
            path,
            sample,
            key,
            field,
            detail,
            ..
        } => {
            assert_eq!(path, &dir.join(DAMAGED));
            assert_eq!(*sample, BAD_LOCAL);
            assert_eq!(key, BAD_KEY);
            assert_eq!(field, "bin");
            assert!(detail.contains("checksum mismatch"), "{msg}");
        }
        other => panic!("expected Error::BadRecord, got {other:?}"),
    }
    let mut buf = Vec::new();
    assert!(matches!(
        no_panic("read_into", || bin.read_into(&mut buf)),
        Err(Error::BadRecord { .. })
    ));
    // The same sample through the key index.
    let by_key = ds.get_by_key(BAD_KEY.as_bytes()).unwrap().expect("found");
    assert!(matches!(
        by_key.field(b"bin").unwrap().unwrap().data(),
        Err(Error::BadRecord { .. })
    ));
    // Every other record of the dataset still reads.
    for i in 0..SAMPLES {
        let s = ds.get(i).unwrap();
        for f in s.fields() {
            let f = f.unwrap();
            let r = no_panic("data", || f.data().map(|d| d.len()));
            if i == BAD_GLOBAL && f.name() == b"bin" {
                assert!(r.is_err());
            } else {
                r.unwrap_or_else(|e| panic!("sample {i} field {:?}: {e}", f.name()));
            }
        }
    }

    // The Loader hands the error to its consumer, in the damaged sample's place, and still
    // serves every other sample.
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    let loader = no_panic("Loader::new", || Loader::new(ds.clone(), loader_opts())).unwrap();
    for item in loader {
        match item {
            Ok(s) => ok.push(s.index),
            Err(e) => errors.push(e),
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    match &errors[0] {
        Error::BadRecord { key, field, .. } => {
            assert_eq!((key.as_str(), field.as_str()), (BAD_KEY, "bin"));
        }
        other => panic!("the Loader gave {other:?}, expected Error::BadRecord"),
    }
    ok.sort_unstable();
    let expected: Vec<u64> = (0..SAMPLES).filter(|&i| i != BAD_GLOBAL).collect();
    assert_eq!(
        ok, expected,
        "the Loader must serve every intact sample once"
    );

    // With the default (chunked) shuffle and batches: one batch is the error, later batches
    // keep coming.
    let opts = LoaderOptions {
        shuffle: Shuffle::Chunked,
        seed: 3,
        ..loader_opts()
    };
    let mut batches = Loader::new(ds.clone(), opts).unwrap();
    let mut err_batches = 0;
    while let Some(b) = no_panic("next_batch", || batches.next_batch()) {
        match b {
            Err(Error::BadRecord { .. }) => err_batches += 1,
            Err(e) => panic!("unexpected loader error {e}"),
            Ok(_) => {}
        }
    }
    assert_eq!(err_batches, 1);
    assert_eq!(batches.consumed(), SAMPLES, "the epoch runs to its end");

    // verify: the whole-file hash and the record checksum both fail.
    let report = no_panic("Dataset::verify", || ds.verify());
    assert!(report
        .problems
        .iter()
        .any(|p| p.key.as_deref() == Some(BAD_KEY)
            && p.field.as_deref() == Some("bin")
            && p.sample == Some(BAD_LOCAL)
            && p.detail.contains("checksum mismatch")));
    assert_verify_names(case, &["checksum mismatch", BAD_KEY, "bin"], &[]);
    assert_verify_names(case, &["xxh3", "the manifest says"], &[]);
}

#[test]
fn flipped_index_bit() {
    let case = "flipped-index-bit";
    let e = open_err(case);
    let src = corrupt_source(case, &e);
    let index_at = intact_shard().footer().index_offset;
    assert_eq!((src.region, src.offset), ("index", index_at), "{e}");
    assert!(
        matches!(src.kind, FormatErrorKind::ChecksumMismatch { .. }),
        "{e}"
    );
    assert_verify_names(case, &["index", "checksum mismatch"], &[]);
}

#[test]
fn flipped_dict_bit() {
    let case = "flipped-dict-bit";
    let e = open_err(case);
    let src = corrupt_source(case, &e);
    let intact = intact_shard();
    let txt = (0..intact.fields().len())
        .find(|&i| intact.field_name(i) == b"txt")
        .unwrap();
    let dict_at = intact.fields()[txt].dict_offset;
    assert!(dict_at > 0);
    assert_eq!((src.region, src.offset), ("dictionary", dict_at), "{e}");
    assert!(
        matches!(src.kind, FormatErrorKind::ChecksumMismatch { .. }),
        "{e}"
    );
    assert_verify_names(case, &["dictionary", "checksum mismatch"], &[]);
}

#[test]
fn missing_shard() {
    let case = "missing-shard";
    let e = open_err(case);
    let (path, detail) = manifest_detail(case, &e);
    assert_eq!(path, case_dir(case).join(DAMAGED));
    assert!(
        detail.contains("shard 1") && detail.contains("missing"),
        "{e}"
    );
    assert_verify_names(case, &["missing"], &[]);
}

#[test]
fn manifest_counts() {
    let case = "manifest-counts";
    let e = open_err(case);
    let (path, detail) = manifest_detail(case, &e);
    assert_eq!(path, case_dir(case).join(DAMAGED));
    assert!(
        detail.contains("holds 12 samples") && detail.contains("the manifest says 11"),
        "{e}"
    );
    // Shard 2's first_sample was moved along with the count, so verify flags it too.
    assert_verify_names(
        case,
        &["holds 12 samples", "the manifest says 11"],
        &["shard-000002.spk"],
    );
}

#[test]
fn swapped_shard() {
    let case = "swapped-shard";
    let e = open_err(case);
    let (path, detail) = manifest_detail(case, &e);
    assert_eq!(path, case_dir(case).join(DAMAGED));
    // Same position, sample and record counts: only the index checksum tells it apart.
    assert!(
        detail.contains("index checksum") && detail.contains("disagree"),
        "{e}"
    );
    assert_verify_names(case, &["index checksum", "disagree"], &[]);
}

/// An unusable manifest: open and verify_dir both refuse it (verify cannot report per shard).
#[test]
fn truncated_manifest() {
    let case = "truncated-manifest";
    let e = open_err(case);
    let (path, detail) = manifest_detail(case, &e);
    assert_eq!(path, case_dir(case).join("manifest.json"));
    assert!(detail.contains("not a valid shardpack manifest"), "{e}");
    let dir = case_dir(case);
    let v = no_panic("verify_dir", || verify_dir(&dir));
    assert!(
        matches!(v, Err(Error::Manifest { .. })),
        "verify_dir must refuse an unusable manifest: {v:?}"
    );
}

/// The error a consumer sees first for each case: open's error, or for record damage the
/// error of reading the damaged field.
fn first_error(case: &str) -> String {
    let dir = case_dir(case);
    let msg = match no_panic(case, || Dataset::open(&dir)) {
        Err(e) => e.to_string(),
        Ok(ds) => {
            let s = ds.get(BAD_GLOBAL).unwrap();
            let f = s.field(b"bin").unwrap().unwrap();
            no_panic(case, || f.data())
                .expect_err("a damaged record")
                .to_string()
        }
    };
    normalized(case, &msg)
}

/// Each case has its own message; none is another's (paths aside).
#[test]
fn every_case_gives_its_own_error() {
    let msgs: BTreeMap<&str, String> = CASES.iter().map(|&c| (c, first_error(c))).collect();
    for (i, a) in CASES.iter().enumerate() {
        for b in &CASES[i + 1..] {
            assert_ne!(
                msgs[a], msgs[b],
                "cases {a} and {b} give the same error: {}",
                msgs[a]
            );
        }
    }
}

/// The fixtures are the edits the README documents, applied to `intact/`.
#[test]
fn fixtures_are_the_documented_edits() {
    let intact = shard_file("intact", DAMAGED);
    let n = intact.len();
    let sb = intact_shard();
    let footer = *sb.footer();
    let diff = |case: &str| -> Vec<(usize, u8, u8)> {
        let d = shard_file(case, DAMAGED);
        assert_eq!(d.len(), n, "{case}: size changed");
        (0..n)
            .filter(|&i| d[i] != intact[i])
            .map(|i| (i, intact[i], d[i]))
            .collect()
    };
    let one_bit = |case: &str| -> usize {
        let d = diff(case);
        assert_eq!(d.len(), 1, "{case}: {d:?}");
        assert_eq!((d[0].1 ^ d[0].2).count_ones(), 1, "{case}: {d:?}");
        d[0].0
    };
    // Every case leaves the other shards alone.
    for &case in CASES {
        for other in ["shard-000000.spk", "shard-000002.spk"] {
            assert_eq!(
                shard_file(case, other),
                shard_file("intact", other),
                "{case}: {other} changed"
            );
        }
    }

    let cut = shard_file("truncated-shard", DAMAGED);
    let data_end = (footer.data_offset + footer.data_len) as usize;
    assert!(cut.len() > footer.data_offset as usize && cut.len() < data_end);
    assert_eq!(cut.as_slice(), &intact[..cut.len()]);
    assert_eq!(shard_file("truncated-footer", DAMAGED), &intact[..n - 10]);

    assert_eq!(diff("bad-magic"), vec![(0, b'S', b's')]);
    assert_eq!(diff("unknown-version"), vec![(8, 1, 2)]);
    assert_eq!(diff("unknown-version-footer"), vec![(n - 96 + 72, 1, 2)]);

    // flipped-record-bit: inside the raw `bin` record of sample BAD_LOCAL.
    let at = one_bit("flipped-record-bit") as u64;
    let e = sb.sample(BAD_LOCAL).unwrap();
    assert_eq!(sb.key(&e), BAD_KEY.as_bytes());
    let hit = (e.first_record..e.first_record + e.record_count as u64)
        .map(|r| sb.record(r).unwrap())
        .find(|r| (r.offset..r.offset + r.stored_len).contains(&at))
        .expect("the flipped bit lies in one of the sample's records");
    assert_eq!(sb.field_name(hit.field as usize), b"bin");
    assert_eq!(hit.codec, Codec::Raw.as_u32());

    let at = one_bit("flipped-index-bit") as u64;
    assert!((footer.index_offset..footer.index_offset + footer.index_len).contains(&at));
    let at = one_bit("flipped-dict-bit") as u64;
    assert!((footer.dict_offset..footer.dict_offset + footer.dict_len).contains(&at));

    assert!(!case_dir("missing-shard").join(DAMAGED).exists());
    let swapped = shard_file("swapped-shard", DAMAGED);
    let other = ShardBytes::new(swapped).expect("the swapped-in shard is itself valid");
    assert_eq!(other.header().shard_index, 1);
    assert_eq!(other.sample_count(), sb.sample_count());
    assert_eq!(other.footer().record_count, footer.record_count);
    assert_ne!(other.footer().index_checksum, footer.index_checksum);
    assert_eq!(shard_file("manifest-counts", DAMAGED), intact);
    assert_eq!(shard_file("truncated-manifest", DAMAGED), intact);
}

// ---------------------------------------------------------------------------------------------
// Broken rules inside consistent files (made by `cargo run --example corrupt-fixtures`, the
// README's second table): every checksum matches, so only the rule's own check can catch
// each one, and `verify` names it with its own `ProblemKind`.
// ---------------------------------------------------------------------------------------------

use shardpack::reader::ProblemKind;

/// Each rule case, the kind `verify` reports for it, and whether `Dataset::open` refuses it.
const RULE_CASES: &[(&str, ProblemKind, bool)] = &[
    ("duplicate-key", ProblemKind::DuplicateKey, false),
    (
        "duplicate-key-across-shards",
        ProblemKind::DuplicateKey,
        false,
    ),
    ("empty-sample", ProblemKind::EmptySample, false),
    ("label-out-of-range", ProblemKind::LabelOutOfRange, false),
    ("slash-in-field-name", ProblemKind::UnsafeName, true),
    ("two-zstd-frames", ProblemKind::TrailingFrame, false),
    ("skippable-frame", ProblemKind::SkippableFrame, false),
    ("huge-window", ProblemKind::WindowTooLarge, false),
    ("dict-without-magic", ProblemKind::DictionaryMagic, true),
    (
        "dict-on-zstd-field",
        ProblemKind::DictionaryOnPlainField,
        true,
    ),
    (
        "record-codec-mismatch",
        ProblemKind::RecordCodecMismatch,
        false,
    ),
    ("key-hash-order", ProblemKind::KeyHashOrder, false),
    ("field-stats", ProblemKind::FieldStats, false),
];

/// `verify_dir` reports each rule case with its kind, about shard 1 (or the manifest for the
/// per-field statistics) and nothing else of another kind; `Dataset::verify` agrees for the
/// cases that open.
#[test]
fn verify_names_each_broken_rule() {
    for &(case, kind, refused) in RULE_CASES {
        let r = verify_report(case);
        assert_eq!(r.shards, 3, "{case}");
        let expected_shard = if kind == ProblemKind::FieldStats {
            "manifest.json"
        } else {
            DAMAGED
        };
        assert!(
            r.problems
                .iter()
                .any(|p| p.kind == kind && p.shard == expected_shard),
            "{case}: no {kind} problem about {expected_shard}: {:#?}",
            r.problems
        );
        for p in &r.problems {
            assert_eq!(
                p.kind, kind,
                "{case}: another problem besides {kind}: {p:#?}"
            );
        }
        let dir = case_dir(case);
        match no_panic(case, || Dataset::open(&dir)) {
            Ok(ds) => {
                assert!(!refused, "{case}: Dataset::open should refuse it");
                let r2 = no_panic(case, || ds.verify());
                assert!(
                    r2.has(kind),
                    "{case}: Dataset::verify misses {kind}: {r2:?}"
                );
            }
            Err(e) => {
                assert!(refused, "{case}: Dataset::open refused it: {e}");
                assert_eq!(
                    ProblemKind::of_error(&e, ProblemKind::Shard),
                    kind,
                    "{case}: {e}"
                );
            }
        }
    }
}

/// Each kind's message names the rule, so a person reading `verify` output sees which.
#[test]
fn broken_rule_messages_say_what_is_wrong() {
    let expect = [
        ("duplicate-key", "duplicate key: samples 2 and 3"),
        (
            "duplicate-key-across-shards",
            "same key as sample 0 of shard-000000.spk",
        ),
        ("empty-sample", "sample 4 has no records"),
        (
            "label-out-of-range",
            "sample 5 has label 2, the manifest names 2 classes",
        ),
        ("slash-in-field-name", "contains '/'"),
        ("two-zstd-frames", "exactly one zstd frame"),
        ("skippable-frame", "skippable frame"),
        ("huge-window", "1073741824-byte window"),
        ("dict-without-magic", "zstd dictionary magic"),
        (
            "dict-on-zstd-field",
            "has a dictionary but its codec is zstd",
        ),
        (
            "record-codec-mismatch",
            "stored as zstd but its field's codec is none",
        ),
        ("key-hash-order", "key-hash table out of order"),
        ("field-stats", "the manifest says 31, 3563"),
    ];
    for (case, needle) in expect {
        let r = verify_report(case);
        assert!(
            r.problems.iter().any(|p| p.detail.contains(needle)),
            "{case}: no problem says {needle:?}: {:#?}",
            r.problems
        );
    }
}

/// The record-level cases open (records are checked when read), and reading the damaged
/// record fails, through the map and through the Loader, while its sample's other records
/// read.
#[test]
fn broken_records_fail_when_read() {
    for (case, key, field, needle) in [
        (
            "two-zstd-frames",
            "square/0005",
            "json",
            "exactly one zstd frame",
        ),
        ("skippable-frame", "square/0005", "json", "skippable frame"),
        ("huge-window", "circle/0012", "json", "window"),
        (
            "record-codec-mismatch",
            "square/0013",
            "bin",
            "field's codec is none",
        ),
    ] {
        let ds = Arc::new(Dataset::open(case_dir(case)).unwrap());
        let s = ds.get_by_key(key.as_bytes()).unwrap().expect("present");
        let mut failed = 0;
        for f in s.fields() {
            match f.and_then(|f| f.data().map(|d| (f.name().to_vec(), d.len()))) {
                Ok((name, _)) => assert_ne!(name, field.as_bytes(), "{case}: read"),
                Err(e) => {
                    assert!(e.to_string().contains(needle), "{case}: {e}");
                    failed += 1;
                }
            }
        }
        assert!(failed >= 1, "{case}: nothing failed");
        // The Loader plans its reads from the record entries, so a bad entry may stop it
        // from starting; a bad record's bytes are one error in the sample's place.
        match Loader::new(ds, loader_opts()) {
            Ok(l) => assert_eq!(l.filter(Result::is_err).count(), 1, "{case}: one error"),
            Err(e) => assert!(e.to_string().contains(needle), "{case}: {e}"),
        }
    }
}

/// A key-hash table out of order never answers "absent" for a key that is there: the lookup
/// that finds nothing checks the table and reports it.
#[test]
fn damaged_key_table_is_an_error_not_absent() {
    let ds = Dataset::open(case_dir("key-hash-order")).unwrap();
    let intact = Dataset::open(case_dir("intact")).unwrap();
    let mut errors = 0;
    for i in 0..SAMPLES {
        let key = intact.get(i).unwrap().key().to_vec();
        match ds.get_by_key(&key) {
            Ok(Some(s)) => assert_eq!(s.key(), &key[..]),
            Ok(None) => panic!("key {:?} is there but was answered absent", key),
            Err(e) => {
                assert!(
                    matches!(
                        &e,
                        Error::Corrupt { source, .. }
                            if matches!(source.kind, FormatErrorKind::KeyHashOrder { .. })
                    ),
                    "{e}"
                );
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "the swapped entries' keys cannot all be found");
    assert!(matches!(
        ds.get_by_key(b"no/such/key"),
        Err(Error::Corrupt { .. })
    ));
    assert!(intact.get_by_key(b"no/such/key").unwrap().is_none());
}

/// Format version 2's feature flags: an unknown required feature is refused with its name,
/// an unknown optional one is ignored.
#[test]
fn unknown_required_features_are_refused_and_optional_ones_ignored() {
    let case = "unknown-required-feature";
    let e = open_err(case);
    match &e {
        Error::UnsupportedFeatures { path, features } => {
            assert_eq!(path, &case_dir(case).join("manifest.json"));
            assert_eq!(features, &["x-example-required".to_string()]);
        }
        other => panic!("expected Error::UnsupportedFeatures, got {other:?}"),
    }
    assert!(e.to_string().contains("x-example-required"), "{e}");
    assert!(!e.to_string().contains("x-example-optional"), "{e}");
    assert!(matches!(
        verify_dir(case_dir(case)),
        Err(Error::UnsupportedFeatures { .. })
    ));

    // The same dataset with the required feature dropped: opens, verifies, and reports the
    // optional feature as unknown.
    let tmp = tempfile::tempdir().unwrap();
    for f in fs::read_dir(case_dir(case)).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), tmp.path().join(f.file_name())).unwrap();
    }
    let mpath = tmp.path().join("manifest.json");
    let mut m: shardpack::Manifest = serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();
    m.features.as_mut().unwrap().required.clear();
    fs::write(&mpath, m.to_json()).unwrap();
    let ds = Dataset::open(tmp.path()).expect("unknown optional features are ignored");
    assert_eq!(ds.manifest().format_version, 2);
    assert_eq!(
        ds.manifest().unknown_optional_features(),
        vec!["x-example-optional".to_string()]
    );
    assert!(ds.verify().is_ok());
}

/// The rule cases are the edits the README documents: the other shards as in `intact/`, and
/// shard 1 (or the manifest) still passing every checksum.
#[test]
fn rule_fixtures_keep_their_checksums() {
    for &(case, kind, _) in RULE_CASES {
        for other in ["shard-000000.spk", "shard-000002.spk"] {
            assert_eq!(
                shard_file(case, other),
                shard_file("intact", other),
                "{case}: {other} changed"
            );
        }
        let r = verify_report(case);
        assert!(
            !r.problems
                .iter()
                .any(|p| p.kind == ProblemKind::FileHash || p.kind == ProblemKind::RecordChecksum),
            "{case}: a checksum fails, so the fixture does not isolate {kind}: {:#?}",
            r.problems
        );
    }
    assert_eq!(
        shard_file("field-stats", DAMAGED),
        shard_file("intact", DAMAGED)
    );
}

// ---------------------------------------------------------------------------------------------
// The writer refuses to write what verify rejects.
// ---------------------------------------------------------------------------------------------

use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};

#[test]
fn the_writer_refuses_unsafe_field_names() {
    for name in [&b"a/b"[..], b"a\0b"] {
        let tmp = tempfile::tempdir().unwrap();
        let e = DatasetWriter::create(
            tmp.path(),
            vec![FieldSpec::raw(name)],
            WriterOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Options(_)), "{e:?}");
        assert!(e.to_string().contains("'/' or a NUL byte"), "{e}");
    }
    // The empty name (files without a suffix) and names with dots are fine.
    let tmp = tempfile::tempdir().unwrap();
    let fields = vec![
        FieldSpec::raw(""),
        FieldSpec::raw(".."),
        FieldSpec::raw("tar.gz"),
    ];
    let mut w = DatasetWriter::create(tmp.path(), fields, WriterOptions::default()).unwrap();
    w.append(b"k", None, &[(0, b"x"), (1, b"y"), (2, b"z")])
        .unwrap();
    w.finish(DatasetInfo::default()).unwrap();
    assert!(verify_dir(tmp.path()).unwrap().is_ok());
}

#[test]
fn the_writer_refuses_dictionaries_the_format_does_not_allow() {
    let tmp = tempfile::tempdir().unwrap();
    let with_dict = |codec, dict: &[u8]| FieldSpec {
        name: b"txt".to_vec(),
        codec,
        level: 3,
        dict: Some(dict.to_vec()),
    };
    let samples: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("caption {i}: a small grey cat, number {}", i * 7).into_bytes())
        .collect();
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    let trained = shardpack::codec::train_dictionary(&refs, 1024).unwrap();
    for (spec, needle) in [
        (
            with_dict(Codec::ZstdDict, b"raw text, no magic"),
            "dictionary magic",
        ),
        (with_dict(Codec::Zstd, &trained), "only a zstd-dict field"),
        (with_dict(Codec::Raw, &trained), "only a zstd-dict field"),
    ] {
        let e =
            DatasetWriter::create(tmp.path(), vec![spec], WriterOptions::default()).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn the_writer_refuses_imagefolder_labels_past_the_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(
        tmp.path(),
        vec![FieldSpec::raw("bin")],
        WriterOptions::default(),
    )
    .unwrap();
    w.append(b"cat/1", Some(0), &[(0, b"x")]).unwrap();
    w.append(b"dog/1", Some(1), &[(0, b"y")]).unwrap();
    let info = DatasetInfo {
        imagefolder_labels: true,
        classes: vec!["cat".into()],
        ..DatasetInfo::default()
    };
    let e = w.finish(info).unwrap_err();
    assert!(e.to_string().contains("label 1 but only 1 classes"), "{e}");
    assert!(!tmp.path().join("manifest.json").exists());
    // Without ImageFolder labels, a caller's own label ids are stored as given.
    let tmp = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(
        tmp.path(),
        vec![FieldSpec::raw("bin")],
        WriterOptions::default(),
    )
    .unwrap();
    w.append(b"a", Some(41), &[(0, b"x")]).unwrap();
    w.finish(DatasetInfo::default()).unwrap();
    let ds = Dataset::open(tmp.path()).unwrap();
    assert_eq!(ds.get(0).unwrap().label(), Some(41));
    assert!(ds.verify().is_ok());
}

/// What today's writer records about itself (format version 2).
#[test]
fn the_writer_identifies_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(
        tmp.path(),
        vec![FieldSpec::raw("bin")],
        WriterOptions::default(),
    )
    .unwrap();
    w.append(b"a", None, &[(0, b"x")]).unwrap();
    let m = w.finish(DatasetInfo::default()).unwrap();
    assert_eq!(m.format_version, 2);
    let id = m.writer.expect("a writer identification");
    assert_eq!(id.name, "shardpack");
    assert_eq!(id.version, env!("CARGO_PKG_VERSION"));
    let v = zstd::zstd_safe::version_number();
    assert_eq!(
        id.zstd,
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    );
    assert_eq!(
        id.dict_trainer,
        format!("fastcover:k=1024,d=8,f=16,accel=4 {}", id.zstd)
    );
    assert_eq!(m.features, Some(Default::default()));
    let text = fs::read_to_string(tmp.path().join("manifest.json")).unwrap();
    let at = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
    assert!(at("format_version") < at("writer") && at("writer") < at("features"));
    assert!(at("features") < at("samples"));
}

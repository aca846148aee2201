//! Records large enough that `cat` and `extract` stream them (`Field::reader`, above
//! `STREAM_ABOVE`) obey the same zstd frame rules as `verify` and the in-memory decoder
//! (`format-spec/shard.md` section 6: exactly one zstd frame, no skippable frame, a window of
//! at most 2^27 bytes), and the frames the writer streams for files above 16 MiB pass those
//! rules in `verify` and read back byte-equal through `cat`. Also: what extract says when two
//! records map to one path.

#![cfg(unix)]

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use shardpack::codec::{new_cctx, FieldEncoder};
use shardpack::format::Codec;
use shardpack::writer::{DatasetInfo, DatasetWriter, EncodedRecord, FieldSpec, WriterOptions};
use util::*;

/// Above `shardpack::reader::STREAM_ABOVE` (8 MiB): streamed by `cat`.
const BIG: usize = 9 << 20;

fn zstd_frame(raw: &[u8]) -> Vec<u8> {
    let enc = FieldEncoder::new(Codec::Zstd, 3, None).unwrap();
    let mut out = Vec::new();
    assert_eq!(enc.encode(&mut new_cctx(), raw, &mut out), Codec::Zstd);
    out
}

/// A hand-made frame of `raw` in raw blocks whose header declares a 2^30-byte window (no
/// content size, not single-segment): zstd's one-shot decoder would accept it.
fn huge_window_frame(raw: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa0];
    let mut blocks = raw.chunks(128 << 10).peekable();
    while let Some(b) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        let header = ((b.len() as u32) << 3) | last; // raw block (type 0)
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.extend_from_slice(b);
    }
    f
}

/// A dataset of one sample `big/data` whose zstd record holds `stored` and claims `raw_len`
/// decoded bytes (the writer takes encoded records as given; checksums are right).
fn dataset(root: &Path, name: &str, stored: &[u8], raw_len: u64) -> PathBuf {
    let ds = root.join(name);
    fs::create_dir(&ds).unwrap();
    let mut w =
        DatasetWriter::create(&ds, vec![FieldSpec::zstd("bin")], WriterOptions::default()).unwrap();
    let rec = EncodedRecord {
        field: 0,
        codec: Codec::Zstd,
        stored,
        raw_len,
    };
    w.append_encoded(b"big/data", None, &[rec]).unwrap();
    w.finish(DatasetInfo::default()).unwrap();
    ds
}

#[test]
fn cat_of_a_large_record_enforces_the_frame_rules() {
    let t = tmp();
    let raw = text(1, BIG);
    let frame = zstd_frame(&raw);
    let n = raw.len() as u64;
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    skippable.extend_from_slice(&frame);
    // (case, stored, needle in cat's error, whether nothing may be written first: every
    // frame rule is checked before the first byte)
    let cases: [(&str, Vec<u8>, &str, bool); 3] = [
        (
            "two-frames",
            [frame.clone(), zstd_frame(&text(3, 4096))].concat(),
            "a record is exactly one zstd frame",
            true,
        ),
        ("skippable", skippable, "skippable frame", true),
        (
            "huge-window",
            huge_window_frame(&raw),
            "above the format's maximum",
            true,
        ),
    ];
    let good = dataset(t.path(), "good", &frame, n);
    let r = sp(&[&"cat", &good, &"big/data"]).ok();
    assert!(r.stdout == raw, "cat of the intact record differs");
    for (case, stored, needle, before_output) in cases {
        let ds = dataset(t.path(), case, &stored, n);
        let r = sp(&[&"cat", &ds, &"big/data"]).code(1).stderr_has(&[
            needle,
            "big/data",
            "shard-000000.spk",
        ]);
        if before_output {
            assert!(
                r.stdout.is_empty(),
                "{case}: cat wrote {} bytes",
                r.stdout.len()
            );
        }
        // verify names the same defect.
        sp(&[&"verify", &ds]).code(3).stdout_has(needle);
        let out = t.path().join(format!("{case}-out"));
        sp(&[&"extract", &ds, &out]).code(1).stderr_has(&[needle]);
        assert!(
            !out.join("big/data.bin").exists(),
            "{case}: extract left the file"
        );
    }
}

/// Files above 16 MiB are compressed through zstd's streaming API by the writer; their frames
/// must pass `verify` and read back exactly through the streaming `cat`.
#[test]
fn streamed_frames_of_large_files_verify_and_cat_back_exactly() {
    let t = tmp();
    let src = t.path().join("src");
    let data = text(2, (16 << 20) + 4321);
    put(&src, b"a/big.txt", &data);
    put(&src, b"a/small.txt", b"a small neighbour\n");
    let out = t.path().join("ds");
    sp(&[&"pack", &src, &out, &"--compress", &"zstd"]).ok();
    let m = manifest(&out);
    assert!(
        m["fields"][0]["stored_bytes"].as_u64().unwrap() < data.len() as u64 / 2,
        "the big file was not compressed: {m:#}"
    );
    sp(&[&"verify", &out]).ok();
    let r = sp(&[&"cat", &out, &"a/big"]).ok();
    assert!(
        r.stdout == data,
        "cat gives {} bytes, not the file",
        r.stdout.len()
    );
}

/// Two records that map to one path (here a key repeated across shards) stop extract with a
/// message that says which path, why it can happen and what to run.
#[test]
fn extract_of_colliding_paths_says_why_and_what_to_do() {
    let t = tmp();
    let ds = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/corrupt/duplicate-key-across-shards");
    let out = t.path().join("out");
    sp(&[&"extract", &ds, &out]).code(1).stderr_has(&[
        "circle/0005.bin",
        "two samples share a key",
        "`shardpack verify`",
        "nothing was kept",
    ]);
    assert!(!out.exists());
}

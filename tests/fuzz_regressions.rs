//! Regression tests for what the fuzz targets in `fuzz/` found. Each test reads its saved
//! input from `fuzz/regressions/<target>/` and runs the code path of that target, asserting
//! an error and no panic (see `fuzz/README.md`). Tests for findings not fixed yet carry
//! `#[ignore = "fuzz crash: ... until fixed"]`; run them with `cargo test --test
//! fuzz_regressions -- --include-ignored`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use shardpack::codec::{decode_into, max_decoded_len, new_dctx, DecodeDict};
use shardpack::format::{record_checksum, Codec, ShardBytes};
use shardpack::writer::{DatasetInfo, DatasetWriter, EncodedRecord, FieldSpec, WriterOptions};
use shardpack::{verify_dir, Dataset};

// ---------------------------------------------------------------------------------------------
// Measuring allocations
// ---------------------------------------------------------------------------------------------

/// The system allocator, noting the largest single request made on each thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator can run while the thread's locals are being torn down.
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; noting the
// size touches only a const-initialized thread-local `Cell` and never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` and `layout` come from this allocator, that is from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, that is from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it made (on this thread;
/// zstd's own C allocations are not seen).
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|m| m.set(0));
    let r = f();
    (r, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// Saved inputs and the code paths of the fuzz targets
// ---------------------------------------------------------------------------------------------

fn regressions(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
}

/// The saved inputs of `target`, sorted; none if the folder does not exist.
fn saved(target: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(regressions(target))
        .into_iter()
        .flatten()
        .map(|e| e.expect("read fuzz/regressions").path())
        .collect();
    v.sort();
    v
}

/// The `record_decode` input format, shared with the fuzz target (that file depends only on
/// `shardpack`).
#[allow(dead_code)]
#[path = "../fuzz/support/src/record_input.rs"]
mod record_input;
use record_input::RecordInput;

impl RecordInput<'_> {
    /// The `record_decode` target's path: `decode_into`, which must succeed with exactly
    /// `raw_len` bytes or fail.
    fn decode(&self) -> Result<Vec<u8>, String> {
        let dict = self.dict.and_then(DecodeDict::new);
        let mut out = Vec::new();
        decode_into(
            &mut new_dctx(),
            self.codec,
            self.stored,
            self.raw_len,
            dict.as_ref(),
            &mut out,
        )?;
        assert_eq!(out.len() as u64, self.raw_len);
        Ok(out)
    }
}

/// The `shard_bytes` target's path: validate, then read every sample, key and record, decode
/// the records whose checksum matches, look every key up, check the structure.
fn read_shard(bytes: &[u8]) {
    let Ok(sb) = ShardBytes::new(bytes) else {
        return;
    };
    let dicts: Vec<Option<DecodeDict>> = (0..sb.fields().len())
        .map(|i| {
            let _ = sb.field_name(i);
            sb.field_dict(i).and_then(DecodeDict::new)
        })
        .collect();
    let mut dctx = new_dctx();
    let mut out = Vec::new();
    for i in 0..sb.sample_count() {
        let Ok(e) = sb.sample(i) else { continue };
        let key = sb.key(&e);
        if let Ok(Some(j)) = sb.find_key(key) {
            assert_eq!(sb.key(&sb.sample(j).unwrap()), key);
        }
        for r in e.first_record..e.first_record + u64::from(e.record_count) {
            let Ok(rec) = sb.record(r) else { continue };
            let stored = sb.stored(&rec);
            if record_checksum(stored) != rec.checksum {
                continue;
            }
            let codec = Codec::from_u32(rec.codec).unwrap();
            let dict = dicts[rec.field as usize].as_ref();
            if decode_into(&mut dctx, codec, stored, rec.raw_len, dict, &mut out).is_ok() {
                assert_eq!(out.len() as u64, rec.raw_len);
            }
        }
    }
    let _ = sb.check_structure();
}

/// The `manifest` target's path on a saved dataset directory.
fn read_dataset(dir: &Path) {
    if let Ok(ds) = Dataset::open(dir) {
        for s in ds.iter().flatten() {
            for f in s.fields().flatten() {
                let _ = f.data();
            }
        }
        let _ = ds.verify();
    }
    let _ = verify_dir(dir);
}

/// Every saved input goes through its target's code path without a panic. Inputs whose
/// finding is not fixed yet are left to their own (ignored) tests when running them would
/// take the process down.
#[test]
fn every_saved_input_runs_without_panic() {
    for p in saved("shard_bytes") {
        read_shard(&fs::read(&p).unwrap());
    }
    for p in saved("shard_mutate") {
        if p.extension().is_some_and(|e| e == "spk") {
            read_shard(&fs::read(&p).unwrap());
        }
    }
    for p in saved("record_decode") {
        let data = fs::read(&p).unwrap();
        if let Some(r) = RecordInput::parse(&data) {
            let _ = r.decode();
        }
    }
    for p in saved("manifest") {
        if p.is_dir() {
            read_dataset(&p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 1: decode_into reserves the raw_len a record claims before decoding anything
// ---------------------------------------------------------------------------------------------
//
// `codec::decode_into` (src/codec.rs, `out.reserve_exact(n + 1)`) reserves `raw_len + 1` bytes
// up front. `raw_len` comes from the shard's record table; the only bound is
// `max_decoded_len(stored_len)` = 32768 x stored + 128 KiB. So an 8 KiB record of zeros, or a
// zstd frame whose header claims that size and holds 3 bytes, costs a 256 MiB allocation before
// failing, and a record of a few MiB claims more than the machine has: the allocation fails
// and the process aborts ("memory allocation of N bytes failed"), which no caller can catch.

/// The saved inputs of finding 1.
fn claimed_len_inputs() -> Vec<(PathBuf, Vec<u8>)> {
    let v: Vec<(PathBuf, Vec<u8>)> = saved("record_decode")
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("claimed-len-")
        })
        .map(|p| {
            let d = fs::read(&p).unwrap();
            (p, d)
        })
        .collect();
    assert_eq!(
        v.len(),
        2,
        "fuzz/regressions/record_decode/claimed-len-* are missing"
    );
    v
}

/// Most the decoder may allocate for a record that decodes to (almost) nothing.
const SMALL: usize = 8 << 20;

#[test]
fn decode_does_not_reserve_what_a_record_only_claims() {
    for (path, data) in claimed_len_inputs() {
        let r = RecordInput::parse(&data).unwrap();
        assert_eq!(r.raw_len, max_decoded_len(r.stored.len() as u64));
        let (res, largest) = largest_allocation(|| r.decode());
        assert!(res.is_err(), "{}: decoded", path.display());
        assert!(
            largest < SMALL,
            "{}: a {}-byte record claiming {} bytes made a {largest}-byte allocation",
            path.display(),
            r.stored.len(),
            r.raw_len
        );
    }
}

/// The same records in a shard written by the real writer (which trusts the encoded records it
/// is given), read through the public reader: `Field::data` and `Dataset::verify`.
#[test]
fn reader_does_not_reserve_what_a_record_only_claims() {
    for (path, data) in claimed_len_inputs() {
        let r = RecordInput::parse(&data).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut w = DatasetWriter::create(
            dir.path(),
            vec![FieldSpec::zstd("bin")],
            WriterOptions::default(),
        )
        .unwrap();
        let rec = EncodedRecord {
            field: 0,
            codec: Codec::Zstd,
            stored: r.stored,
            raw_len: r.raw_len,
        };
        w.append_encoded(b"k", None, &[rec]).unwrap();
        w.finish(DatasetInfo::default()).unwrap();

        let ds = Dataset::open(dir.path()).unwrap();
        let s = ds.get(0).unwrap();
        let f = s.field(b"bin").unwrap().unwrap();
        let (res, largest) = largest_allocation(|| f.data().map(|d| d.len()));
        assert!(res.is_err(), "{}: Field::data succeeded", path.display());
        assert!(
            largest < SMALL,
            "{}: Field::data allocated {largest} bytes",
            path.display()
        );
        let (report, largest) = largest_allocation(|| ds.verify());
        assert!(!report.is_ok(), "{}: verify found nothing", path.display());
        assert!(
            largest < SMALL,
            "{}: verify allocated {largest} bytes",
            path.display()
        );
    }
}

/// Set in the child process of [`a_huge_claim_is_an_error_not_an_abort`].
const CHILD: &str = "SHARDPACK_FUZZ_REGRESSION_CHILD";

/// The junk record of finding 1 tiled to 32 MiB claims 1 TiB: more than the allocator gives on
/// a machine that does not overcommit without limit, so `reserve_exact` aborts the process. The
/// decode runs in a child process (this test binary, running only this test) so the abort is
/// seen as a failure rather than killing the test run.
#[test]
fn a_huge_claim_is_an_error_not_an_abort() {
    if std::env::var_os(CHILD).is_some() {
        let data = fs::read(regressions("record_decode").join("claimed-len-junk")).unwrap();
        let r = RecordInput::parse(&data).unwrap();
        let stored = r.stored.repeat((32 << 20) / r.stored.len());
        let raw_len = max_decoded_len(stored.len() as u64);
        let mut out = Vec::new();
        let res = decode_into(&mut new_dctx(), r.codec, &stored, raw_len, None, &mut out);
        assert!(res.is_err());
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_huge_claim_is_an_error_not_an_abort",
            "--exact",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the decode took the process down ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `verify`'s streaming check of large records (`codec::StreamCheck`, fed in pieces) accepts
/// exactly what the one-shot decoder accepts, on the saved inputs and on frames that break
/// the format's frame rules (what the `record_decode` target also asserts).
#[test]
fn streaming_check_agrees_with_one_shot_decoding() {
    let raw = b"the streaming check and the one-shot decoder agree. ".repeat(200);
    let frame = zstd::bulk::compress(&raw, 3).unwrap();
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9];
    skippable.extend_from_slice(&frame);
    let mut huge_window = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa0];
    huge_window.extend_from_slice(&((3u32 << 3) | 1).to_le_bytes()[..3]);
    huge_window.extend_from_slice(b"abc");
    let n = raw.len() as u64;
    let made: Vec<(Vec<u8>, u64)> = vec![
        (frame.clone(), n),
        (frame.clone(), n - 1),
        (frame.clone(), n + 1),
        ([frame.clone(), frame.clone()].concat(), 2 * n),
        (frame[..frame.len() / 2].to_vec(), n),
        (skippable, n),
        (huge_window, 3),
        (b"not a frame at all, just bytes".to_vec(), 5),
    ];
    let mut inputs: Vec<Vec<u8>> = saved("record_decode")
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for (stored, raw_len) in &made {
        inputs.push(
            RecordInput {
                codec: Codec::Zstd,
                raw_len: *raw_len,
                dict: None,
                stored,
            }
            .encode(),
        );
    }
    for data in &inputs {
        let Some(r) = RecordInput::parse(data) else {
            continue;
        };
        if r.codec == Codec::Raw {
            continue;
        }
        let one_shot = r.decode();
        let dict = r.dict.and_then(DecodeDict::new);
        for piece in [1, 7, 4096] {
            let streamed = r.streamed(dict.as_ref(), piece);
            assert_eq!(
                one_shot.is_ok(),
                streamed.is_ok(),
                "piece {piece}: one-shot {one_shot:?}, streamed {streamed:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 3: the one-shot and streaming zstd decoders disagree on a frame's block limits
// ---------------------------------------------------------------------------------------------
//
// Found by `record_decode` in CI ("the streaming check disagrees with the one-shot decoder").
// RFC 8878 limits every block to Block_Maximum_Size = min(window, 128 KiB). zstd's streaming
// decoder (`verify`'s `StreamCheck`, `cat`/`extract`'s `Field::reader`) refuses a larger block
// and skips an empty compressed block; its one-shot decoder (every other read) decodes a raw or
// RLE block of any size and refuses an empty compressed block. So `verify` could refuse a
// record that reads fine, and pass one that fails to read. `codec::block_header`, applied by
// every path, refuses all three.

/// A zstd frame with no content size and a 1 KiB window, then `blocks`.
fn frame_1k_window(blocks: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00];
    f.extend_from_slice(blocks);
    f
}

/// A block header: `size`, `kind` (0 raw, 1 RLE, 2 compressed), `last`.
fn block(size: u32, kind: u32, last: bool) -> [u8; 3] {
    let v = (size << 3) | (kind << 1) | u32::from(last);
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

#[test]
fn one_shot_and_streaming_decoders_agree_on_block_limits() {
    let names = [
        "raw-block-over-window",
        "rle-block-over-window",
        "empty-compressed-block",
    ];
    for name in names {
        let data = fs::read(regressions("record_decode").join(name)).unwrap();
        let r = RecordInput::parse(&data).unwrap();
        let one_shot = r.decode();
        assert!(
            one_shot.is_err(),
            "{name}: the one-shot decoder accepted it"
        );
        for piece in [1, 7, 18, 4096] {
            let streamed = r.streamed(None, piece);
            assert!(
                streamed.is_err(),
                "{name}, piece {piece}: streamed {streamed:?}"
            );
        }
    }
    // At the limit: a raw block as large as the window, and an RLE block as large, read.
    let body: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut raw_blocks = block(1024, 0, true).to_vec();
    raw_blocks.extend_from_slice(&body);
    let mut rle_blocks = block(1024, 1, false).to_vec();
    rle_blocks.push(b'x');
    rle_blocks.extend_from_slice(&block(0, 0, true));
    for (stored, expect) in [
        (frame_1k_window(&raw_blocks), body.clone()),
        (frame_1k_window(&rle_blocks), vec![b'x'; 1024]),
    ] {
        let r = RecordInput {
            codec: Codec::Zstd,
            raw_len: expect.len() as u64,
            dict: None,
            stored: &stored,
        };
        assert_eq!(r.decode().unwrap(), expect);
        for piece in [1, 7, 18, 4096] {
            r.streamed(None, piece).unwrap();
        }
    }
}

//! One record as the reader decodes it: arbitrary codec, claimed raw length, stored bytes and
//! field dictionary (format: `support/src/record_input.rs`) into `codec::decode_into`. It
//! must not panic or allocate without bound; a success yields exactly `raw_len` bytes (the
//! stored bytes themselves for raw); and a decompression context reused across records (as
//! the reader's thread-local one is) gives the same result as a fresh one; and for compressed
//! records the streaming check of `verify` (`codec::StreamCheck`, fed in pieces) accepts
//! exactly what the one-shot decoder accepts.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use shardpack::codec::{decode_into, new_dctx, DecodeDict};
use shardpack::format::Codec;
use shardpack_fuzz_support::record_input::RecordInput;
use zstd::zstd_safe::DCtx;

thread_local! {
    static REUSED: RefCell<DCtx<'static>> = RefCell::new(new_dctx());
}

fuzz_target!(|data: &[u8]| {
    let Some(r) = RecordInput::parse(data) else {
        return;
    };
    let dict = r.dict.and_then(DecodeDict::new);
    let mut out = Vec::new();
    let res = REUSED.with(|d| {
        decode_into(
            &mut d.borrow_mut(),
            r.codec,
            r.stored,
            r.raw_len,
            dict.as_ref(),
            &mut out,
        )
    });
    if res.is_ok() {
        assert_eq!(
            out.len() as u64,
            r.raw_len,
            "decoded length differs from raw_len"
        );
        if r.codec == Codec::Raw {
            assert_eq!(out, r.stored, "raw data differs from the stored bytes");
        }
    }
    let mut fresh_out = Vec::new();
    let fresh = decode_into(
        &mut new_dctx(),
        r.codec,
        r.stored,
        r.raw_len,
        dict.as_ref(),
        &mut fresh_out,
    );
    assert_eq!(
        res.is_ok(),
        fresh.is_ok(),
        "a reused context decodes differently"
    );
    if res.is_ok() {
        assert_eq!(out, fresh_out, "a reused context decodes differently");
    }
    if r.codec != Codec::Raw {
        let piece = 1 + data.len() % 97;
        let streamed = r.streamed(dict.as_ref(), piece);
        assert_eq!(
            res.is_ok(),
            streamed.is_ok(),
            "the streaming check disagrees with the one-shot decoder: {res:?} vs {streamed:?}"
        );
    }
});

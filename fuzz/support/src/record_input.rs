//! The byte encoding of a `record_decode` fuzz input: one record as a reader would decode it.
//!
//! ```text
//! byte 0        codec selector: low bits modulo 3 (0 raw, 1 zstd, 2 zstd-dict);
//!               bit 7 set: a dictionary follows
//! bytes 1..9    raw_len, u64 little-endian (the length the index claims)
//! bytes 9..11   dictionary length, u16 little-endian (present only with bit 7)
//! then          the dictionary bytes, then the stored bytes (the rest of the input)
//! ```

use shardpack::codec::{DecodeDict, DecodeError, StreamCheck};
use shardpack::format::Codec;

/// One record to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInput<'a> {
    /// How the stored bytes decode.
    pub codec: Codec,
    /// The decoded length the index claims.
    pub raw_len: u64,
    /// The field's dictionary, if any.
    pub dict: Option<&'a [u8]>,
    /// The stored bytes.
    pub stored: &'a [u8],
}

const HAS_DICT: u8 = 0x80;

impl<'a> RecordInput<'a> {
    /// Parses a fuzz input; `None` when it is too short.
    pub fn parse(data: &'a [u8]) -> Option<RecordInput<'a>> {
        let (&sel, rest) = data.split_first()?;
        let codec = match (sel & !HAS_DICT) % 3 {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            _ => Codec::ZstdDict,
        };
        let raw_len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let rest = &rest[8..];
        let (dict, stored) = if sel & HAS_DICT != 0 {
            let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let rest = &rest[2..];
            let n = n.min(rest.len());
            (Some(&rest[..n]), &rest[n..])
        } else {
            (None, rest)
        };
        Some(RecordInput {
            codec,
            raw_len,
            dict,
            stored,
        })
    }

    /// Encodes the record as a fuzz input (dictionaries longer than 65535 bytes are cut).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + self.stored.len());
        let sel = self.codec.as_u32() as u8 | if self.dict.is_some() { HAS_DICT } else { 0 };
        out.push(sel);
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        if let Some(d) = self.dict {
            let d = &d[..d.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(d.len() as u16).to_le_bytes());
            out.extend_from_slice(d);
        }
        out.extend_from_slice(self.stored);
        out
    }

    /// The record through `codec::StreamCheck` (the bounded-memory check `verify` uses for large
    /// records), fed in pieces of `piece` bytes (the first at least 18, a whole frame header).
    /// For a compressed record it must agree with the one-shot decoder.
    pub fn streamed(&self, dict: Option<&DecodeDict>, piece: usize) -> Result<(), DecodeError> {
        let mut c = StreamCheck::new(self.codec, self.stored.len() as u64, self.raw_len, dict)?;
        let first = piece.max(18).min(self.stored.len());
        c.feed(&self.stored[..first])?;
        for p in self.stored[first..].chunks(piece.max(1)) {
            c.feed(p)?;
        }
        c.finish()
    }
}

//! The mutation language of the `shard_mutate` target: the fuzz input is a small program that
//! edits a valid shard, so the fuzzer spends its time on shards that get past the magic bytes
//! and checksums instead of on random bytes that never do.
//!
//! Input layout:
//!
//! ```text
//! byte 0      which base shard (modulo the number of bases)
//! byte 1      fix-up flags (Fixups), applied after the edits
//! bytes 2..   edits, each an opcode byte (modulo the opcode count) and its arguments,
//!             little-endian; the program ends where the input or an argument runs out,
//!             or after MAX_OPS edits
//! ```
//!
//! The fix-ups recompute checksums over the edited bytes wherever the (possibly edited) footer
//! and index still locate them, so an edit can reach the checks behind a checksum: record and
//! dictionary checksums and key hashes inside the index first, then the index checksum in the
//! footer, then the header and footer checksums. A last flag asks a target that puts the shard
//! in a dataset to update the shard's manifest entry to match it.

use shardpack::format::{
    key_hash, record_checksum, FieldEntry, Footer, Header, IndexHeader, IndexLayout, KeyHashEntry,
    RecordEntry, SampleEntry, ShardBytes, REGION_ALIGN,
};
use xxhash_rust::xxh3::xxh3_64;

/// Most edits applied from one input.
pub const MAX_OPS: usize = 32;
/// Most bytes the edits may add to a base shard.
pub const MAX_GROWTH: usize = 256 * 1024;

/// Which checksums to recompute after the edits (bit flags of input byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixups(pub u8);

impl Fixups {
    /// Record checksums in the record table.
    pub const RECORDS: u8 = 1;
    /// Dictionary checksums in the field table.
    pub const DICTS: u8 = 2;
    /// Hashes in the key-hash table.
    pub const KEY_HASHES: u8 = 4;
    /// The index checksum in the footer.
    pub const INDEX: u8 = 8;
    /// The header checksum.
    pub const HEADER: u8 = 16;
    /// The footer checksum.
    pub const FOOTER: u8 = 32;
    /// The shard's entry in the manifest (`bytes`, `xxh3`, `index_xxh3`), where a target puts
    /// the shard in a dataset.
    pub const MANIFEST: u8 = 64;
    /// Every fix-up.
    pub const ALL: Fixups = Fixups(127);
    /// None: the edits stand as they are.
    pub const NONE: Fixups = Fixups(0);

    /// Whether fix-up `bit` is asked for.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// One edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Flip bit `bit % 8` of byte `at % len`.
    FlipBit { at: u32, bit: u8 },
    /// Cut the file to `len % (len + 1)` bytes.
    Truncate { len: u32 },
    /// Append `n` copies of `fill`.
    ExtendFill { n: u16, fill: u8 },
    /// Append `bytes` (at most 255).
    ExtendBytes { bytes: Vec<u8> },
    /// Swap the 4096-byte blocks `a` and `b` (modulo the number of whole blocks).
    SwapBlocks { a: u16, b: u16 },
    /// Set a header, footer or index field (`slot` modulo the base's field count) to `value`
    /// (its low 32 bits for a 32-bit field).
    SetField { slot: u16, value: u64 },
    /// Add `delta` to a field (wrapping): off-by-one and off-by-alignment edits.
    AddField { slot: u16, delta: i16 },
    /// Overwrite bytes at `at % (len + 1)` (clipped at the end of the file).
    WriteBytes { at: u32, bytes: Vec<u8> },
    /// Insert bytes at `at % (len + 1)`, shifting the rest.
    Insert { at: u32, bytes: Vec<u8> },
    /// Remove up to `n` bytes at `at % (len + 1)`.
    Delete { at: u32, n: u16 },
}

const OPCODES: u8 = 10;

impl Op {
    /// Appends the encoding of the edit to `out` (the inverse of the parser; used to seed).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let short = |b: &[u8]| -> Vec<u8> { b[..b.len().min(255)].to_vec() };
        match self {
            Op::FlipBit { at, bit } => {
                out.push(0);
                out.extend_from_slice(&at.to_le_bytes());
                out.push(*bit);
            }
            Op::Truncate { len } => {
                out.push(1);
                out.extend_from_slice(&len.to_le_bytes());
            }
            Op::ExtendFill { n, fill } => {
                out.push(2);
                out.extend_from_slice(&n.to_le_bytes());
                out.push(*fill);
            }
            Op::ExtendBytes { bytes } => {
                let b = short(bytes);
                out.push(3);
                out.push(b.len() as u8);
                out.extend_from_slice(&b);
            }
            Op::SwapBlocks { a, b } => {
                out.push(4);
                out.extend_from_slice(&a.to_le_bytes());
                out.extend_from_slice(&b.to_le_bytes());
            }
            Op::SetField { slot, value } => {
                out.push(5);
                out.extend_from_slice(&slot.to_le_bytes());
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::AddField { slot, delta } => {
                out.push(6);
                out.extend_from_slice(&slot.to_le_bytes());
                out.extend_from_slice(&delta.to_le_bytes());
            }
            Op::WriteBytes { at, bytes } | Op::Insert { at, bytes } => {
                let b = short(bytes);
                out.push(if matches!(self, Op::WriteBytes { .. }) {
                    7
                } else {
                    8
                });
                out.extend_from_slice(&at.to_le_bytes());
                out.push(b.len() as u8);
                out.extend_from_slice(&b);
            }
            Op::Delete { at, n } => {
                out.push(9);
                out.extend_from_slice(&at.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn short_bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u8()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
}

/// A parsed mutation program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Base shard selector.
    pub base: u8,
    /// Fix-ups to apply after the edits.
    pub fixups: Fixups,
    /// The edits, in order.
    pub ops: Vec<Op>,
}

impl Program {
    /// Parses a fuzz input. Never fails: missing bytes end the program early.
    pub fn parse(data: &[u8]) -> Program {
        let mut c = Cursor(data);
        let base = c.u8().unwrap_or(0);
        let fixups = Fixups(c.u8().unwrap_or(0));
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS {
            let Some(op) = Self::parse_op(&mut c) else {
                break;
            };
            ops.push(op);
        }
        Program { base, fixups, ops }
    }

    fn parse_op(c: &mut Cursor<'_>) -> Option<Op> {
        Some(match c.u8()? % OPCODES {
            0 => Op::FlipBit {
                at: c.u32()?,
                bit: c.u8()?,
            },
            1 => Op::Truncate { len: c.u32()? },
            2 => Op::ExtendFill {
                n: c.u16()?,
                fill: c.u8()?,
            },
            3 => Op::ExtendBytes {
                bytes: c.short_bytes()?,
            },
            4 => Op::SwapBlocks {
                a: c.u16()?,
                b: c.u16()?,
            },
            5 => Op::SetField {
                slot: c.u16()?,
                value: c.u64()?,
            },
            6 => Op::AddField {
                slot: c.u16()?,
                delta: c.u16()? as i16,
            },
            7 => Op::WriteBytes {
                at: c.u32()?,
                bytes: c.short_bytes()?,
            },
            8 => Op::Insert {
                at: c.u32()?,
                bytes: c.short_bytes()?,
            },
            _ => Op::Delete {
                at: c.u32()?,
                n: c.u16()?,
            },
        })
    }

    /// Encodes the program as a fuzz input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.base, self.fixups.0];
        for op in &self.ops {
            op.encode(&mut out);
        }
        out
    }
}

/// A fixed-width integer field of a shard: its absolute offset and width (4 or 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Absolute offset in the file.
    pub at: usize,
    /// 4 or 8.
    pub width: usize,
}

/// A valid shard and the location of every integer field in it.
#[derive(Debug, Clone)]
pub struct Base {
    /// The shard file.
    pub bytes: Vec<u8>,
    /// Every header, footer and index field.
    pub slots: Vec<Slot>,
}

impl Base {
    /// Locates the fields of the valid shard `bytes`. Panics if `bytes` is not a valid shard.
    pub fn new(bytes: Vec<u8>) -> Base {
        let sb = ShardBytes::new(&bytes[..]).expect("a base shard is valid");
        let mut slots = Vec::new();
        let mut add = |base: usize, fields: &[(usize, usize)]| {
            for &(at, width) in fields {
                slots.push(Slot {
                    at: base + at,
                    width,
                });
            }
        };
        add(
            0,
            &[
                (Header::VERSION_AT, 4),
                (Header::FLAGS_AT, 4),
                (Header::SHARD_INDEX_AT, 8),
                (Header::ALIGN_AT, 8),
                (Header::DATA_OFFSET_AT, 8),
                (Header::RESERVED_AT, 8),
                (Header::RESERVED_AT + 8, 8),
                (Header::CHECKSUM_AT, 8),
            ],
        );
        add(
            bytes.len() - Footer::SIZE,
            &[
                (Footer::DATA_OFFSET_AT, 8),
                (Footer::DATA_LEN_AT, 8),
                (Footer::DICT_OFFSET_AT, 8),
                (Footer::DICT_LEN_AT, 8),
                (Footer::INDEX_OFFSET_AT, 8),
                (Footer::INDEX_LEN_AT, 8),
                (Footer::INDEX_CHECKSUM_AT, 8),
                (Footer::SAMPLE_COUNT_AT, 8),
                (Footer::RECORD_COUNT_AT, 8),
                (Footer::VERSION_AT, 4),
                (Footer::FLAGS_AT, 4),
                (Footer::CHECKSUM_AT, 8),
            ],
        );
        let io = sb.footer().index_offset as usize;
        add(
            io,
            &[
                (IndexHeader::SAMPLE_COUNT_AT, 8),
                (IndexHeader::RECORD_COUNT_AT, 8),
                (IndexHeader::FIELD_COUNT_AT, 8),
                (IndexHeader::KEY_BYTES_AT, 8),
                (IndexHeader::NAME_BYTES_AT, 8),
                (IndexHeader::FIRST_SAMPLE_AT, 8),
                (IndexHeader::RESERVED_AT, 8),
                (IndexHeader::RESERVED_AT + 8, 8),
            ],
        );
        let ih = *sb.index_header();
        let l = ih.layout().expect("valid layout");
        for i in 0..ih.field_count as usize {
            add(
                io + l.fields as usize + i * FieldEntry::SIZE,
                &[
                    (FieldEntry::NAME_OFFSET_AT, 8),
                    (FieldEntry::NAME_LEN_AT, 8),
                    (FieldEntry::CODEC_AT, 4),
                    (FieldEntry::LEVEL_AT, 4),
                    (FieldEntry::DICT_OFFSET_AT, 8),
                    (FieldEntry::DICT_LEN_AT, 8),
                    (FieldEntry::DICT_CHECKSUM_AT, 8),
                ],
            );
        }
        for i in 0..ih.sample_count as usize {
            add(
                io + l.samples as usize + i * SampleEntry::SIZE,
                &[
                    (SampleEntry::KEY_OFFSET_AT, 8),
                    (SampleEntry::KEY_LEN_AT, 8),
                    (SampleEntry::FIRST_RECORD_AT, 8),
                    (SampleEntry::RECORD_COUNT_AT, 4),
                    (SampleEntry::LABEL_AT, 4),
                ],
            );
            add(
                io + l.key_hashes as usize + i * KeyHashEntry::SIZE,
                &[(KeyHashEntry::HASH_AT, 8), (KeyHashEntry::SAMPLE_AT, 8)],
            );
        }
        for i in 0..ih.record_count as usize {
            add(
                io + l.records as usize + i * RecordEntry::SIZE,
                &[
                    (RecordEntry::OFFSET_AT, 8),
                    (RecordEntry::STORED_LEN_AT, 8),
                    (RecordEntry::RAW_LEN_AT, 8),
                    (RecordEntry::CHECKSUM_AT, 8),
                    (RecordEntry::FIELD_AT, 4),
                    (RecordEntry::CODEC_AT, 4),
                ],
            );
        }
        Base { bytes, slots }
    }

    /// Applies `program`'s edits and fix-ups to a copy of the base shard.
    pub fn apply(&self, program: &Program) -> Vec<u8> {
        let mut b = self.bytes.clone();
        let max_len = self.bytes.len() + MAX_GROWTH;
        for op in &program.ops {
            self.apply_op(&mut b, op, max_len);
        }
        fix(&mut b, program.fixups);
        b
    }

    fn apply_op(&self, b: &mut Vec<u8>, op: &Op, max_len: usize) {
        let room = max_len.saturating_sub(b.len());
        match op {
            Op::FlipBit { at, bit } => {
                if !b.is_empty() {
                    let i = *at as usize % b.len();
                    b[i] ^= 1 << (bit % 8);
                }
            }
            Op::Truncate { len } => {
                let n = *len as usize % (b.len() + 1);
                b.truncate(n);
            }
            Op::ExtendFill { n, fill } => {
                let n = (*n as usize).min(room);
                b.resize(b.len() + n, *fill);
            }
            Op::ExtendBytes { bytes } => {
                b.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Op::SwapBlocks { a, b: c } => {
                let blocks = b.len() / REGION_ALIGN as usize;
                if blocks >= 2 {
                    let (x, y) = (*a as usize % blocks, *c as usize % blocks);
                    let (lo, hi) = (x.min(y), x.max(y));
                    if lo != hi {
                        let n = REGION_ALIGN as usize;
                        let (first, second) = b.split_at_mut(hi * n);
                        first[lo * n..(lo + 1) * n].swap_with_slice(&mut second[..n]);
                    }
                }
            }
            Op::SetField { slot, value } => {
                let s = self.slots[*slot as usize % self.slots.len()];
                write_slot(b, s, *value);
            }
            Op::AddField { slot, delta } => {
                let s = self.slots[*slot as usize % self.slots.len()];
                if let Some(v) = read_slot(b, s) {
                    write_slot(b, s, v.wrapping_add(*delta as i64 as u64));
                }
            }
            Op::WriteBytes { at, bytes } => {
                let at = *at as usize % (b.len() + 1);
                let n = bytes.len().min(b.len() - at);
                b[at..at + n].copy_from_slice(&bytes[..n]);
            }
            Op::Insert { at, bytes } => {
                let at = *at as usize % (b.len() + 1);
                let n = bytes.len().min(room);
                b.splice(at..at, bytes[..n].iter().copied());
            }
            Op::Delete { at, n } => {
                let at = *at as usize % (b.len() + 1);
                let end = at.saturating_add(*n as usize).min(b.len());
                b.drain(at..end);
            }
        }
    }
}

fn read_slot(b: &[u8], s: Slot) -> Option<u64> {
    let bytes = b.get(s.at..s.at + s.width)?;
    let mut a = [0u8; 8];
    a[..s.width].copy_from_slice(bytes);
    Some(u64::from_le_bytes(a))
}

fn write_slot(b: &mut [u8], s: Slot, v: u64) {
    if let Some(dst) = b.get_mut(s.at..s.at + s.width) {
        dst.copy_from_slice(&v.to_le_bytes()[..s.width]);
    }
}

fn rd(b: &[u8], at: u64, width: usize) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    read_slot(b, Slot { at, width })
}

fn wr(b: &mut [u8], at: u64, width: usize, v: u64) {
    if let Ok(at) = usize::try_from(at) {
        write_slot(b, Slot { at, width }, v);
    }
}

/// `b[at..at + len]`, if it is inside `b`.
fn region(b: &[u8], at: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(at).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    b.get(start..end)
}

/// Where the footer says the index is, if that lies inside the file before the footer.
fn index_region(b: &[u8]) -> Option<(u64, u64)> {
    let f = b.len().checked_sub(Footer::SIZE)? as u64;
    let io = rd(b, f + Footer::INDEX_OFFSET_AT as u64, 8)?;
    let il = rd(b, f + Footer::INDEX_LEN_AT as u64, 8)?;
    (io.checked_add(il)? <= f).then_some((io, il))
}

/// The index header and layout the index claims, without validating them.
fn index_layout(b: &[u8], io: u64, il: u64) -> Option<(IndexHeader, IndexLayout)> {
    if il < IndexHeader::SIZE as u64 {
        return None;
    }
    let g = |at: usize| rd(b, io + at as u64, 8);
    let ih = IndexHeader {
        sample_count: g(IndexHeader::SAMPLE_COUNT_AT)?,
        record_count: g(IndexHeader::RECORD_COUNT_AT)?,
        field_count: g(IndexHeader::FIELD_COUNT_AT)?,
        key_bytes_len: g(IndexHeader::KEY_BYTES_AT)?,
        name_bytes_len: g(IndexHeader::NAME_BYTES_AT)?,
        first_sample: g(IndexHeader::FIRST_SAMPLE_AT)?,
    };
    Some((ih, ih.layout()?))
}

/// How many entries of `size` bytes starting at `table` fit in an index of `il` bytes, at most
/// `count`.
fn fitting(count: u64, table: u64, size: usize, il: u64) -> u64 {
    count.min(il.saturating_sub(table) / size as u64)
}

/// Recomputes the checksums `fixups` names, wherever the bytes still locate them.
pub fn fix(b: &mut [u8], fixups: Fixups) {
    if let Some((io, il)) = index_region(b) {
        if let Some((ih, l)) = index_layout(b, io, il) {
            if fixups.has(Fixups::RECORDS) {
                for r in 0..fitting(ih.record_count, l.records, RecordEntry::SIZE, il) {
                    let e = io + l.records + r * RecordEntry::SIZE as u64;
                    let (Some(off), Some(len)) = (
                        rd(b, e + RecordEntry::OFFSET_AT as u64, 8),
                        rd(b, e + RecordEntry::STORED_LEN_AT as u64, 8),
                    ) else {
                        continue;
                    };
                    if let Some(stored) = region(b, off, len) {
                        let sum = record_checksum(stored);
                        wr(b, e + RecordEntry::CHECKSUM_AT as u64, 8, sum);
                    }
                }
            }
            if fixups.has(Fixups::DICTS) {
                for i in 0..fitting(ih.field_count, l.fields, FieldEntry::SIZE, il) {
                    let e = io + l.fields + i * FieldEntry::SIZE as u64;
                    let (Some(off), Some(len)) = (
                        rd(b, e + FieldEntry::DICT_OFFSET_AT as u64, 8),
                        rd(b, e + FieldEntry::DICT_LEN_AT as u64, 8),
                    ) else {
                        continue;
                    };
                    if len > 0 {
                        if let Some(d) = region(b, off, len) {
                            let sum = xxh3_64(d);
                            wr(b, e + FieldEntry::DICT_CHECKSUM_AT as u64, 8, sum);
                        }
                    }
                }
            }
            if fixups.has(Fixups::KEY_HASHES) {
                for i in 0..fitting(ih.sample_count, l.key_hashes, KeyHashEntry::SIZE, il) {
                    let e = io + l.key_hashes + i * KeyHashEntry::SIZE as u64;
                    let Some(s) = rd(b, e + KeyHashEntry::SAMPLE_AT as u64, 8) else {
                        continue;
                    };
                    if s >= fitting(ih.sample_count, l.samples, SampleEntry::SIZE, il) {
                        continue;
                    }
                    let se = io + l.samples + s * SampleEntry::SIZE as u64;
                    let (Some(ko), Some(kl)) = (
                        rd(b, se + SampleEntry::KEY_OFFSET_AT as u64, 8),
                        rd(b, se + SampleEntry::KEY_LEN_AT as u64, 8),
                    ) else {
                        continue;
                    };
                    let key_at = io.checked_add(l.keys).and_then(|k| k.checked_add(ko));
                    if let Some(key) = key_at.and_then(|at| region(b, at, kl)) {
                        let h = key_hash(key);
                        wr(b, e + KeyHashEntry::HASH_AT as u64, 8, h);
                    }
                }
            }
        }
        if fixups.has(Fixups::INDEX) {
            if let Some(idx) = region(b, io, il) {
                let sum = xxh3_64(idx);
                let f = (b.len() - Footer::SIZE) as u64;
                wr(b, f + Footer::INDEX_CHECKSUM_AT as u64, 8, sum);
            }
        }
    }
    if fixups.has(Fixups::HEADER) && b.len() >= Header::SIZE {
        let sum = xxh3_64(&b[..Header::CHECKSUM_AT]);
        wr(b, Header::CHECKSUM_AT as u64, 8, sum);
    }
    if fixups.has(Fixups::FOOTER) && b.len() >= Footer::SIZE {
        let f = b.len() - Footer::SIZE;
        let sum = xxh3_64(&b[f..f + Footer::CHECKSUM_AT]);
        wr(b, (f + Footer::CHECKSUM_AT) as u64, 8, sum);
    }
}

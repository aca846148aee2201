//! Record encoding and decoding: raw, zstd, and zstd with a trained dictionary.
//!
//! The compression unit is the record: every compressed record is one zstd frame, so random
//! access touches exactly one record.

use std::fmt;
use std::str::FromStr;

use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

use crate::format::{Codec, REF_HEADER_LEN, REF_MAX_LEN};

/// The zstd level used when a policy names none.
pub const DEFAULT_LEVEL: i32 = 3;

/// Largest output a single zstd frame can produce from `stored_len` input bytes, used to bound
/// allocations driven by a length read from a file (a zstd block of at most 128 KiB costs at
/// least 4 bytes).
pub fn max_decoded_len(stored_len: u64) -> u64 {
    stored_len
        .saturating_mul(32 * 1024)
        .saturating_add(128 * 1024)
}

/// How a field's records are compressed, as the user asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Decide per field by trial compression of a sample of its records.
    Auto,
    /// Store raw.
    None,
    /// zstd at a level.
    Zstd(i32),
    /// zstd with a dictionary trained at pack time, at a level.
    ZstdDict(i32),
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        let level = |l: Option<&str>| -> Result<i32, String> {
            match l {
                None => Ok(DEFAULT_LEVEL),
                Some(l) => {
                    let v: i32 = l
                        .parse()
                        .map_err(|_| format!("zstd level {l:?} is not a number"))?;
                    let range = zstd_safe::min_c_level()..=zstd_safe::max_c_level();
                    if v == 0 || !range.contains(&v) {
                        return Err(format!(
                            "zstd level {v} is out of range ({}..=-1 or 1..={})",
                            range.start(),
                            range.end()
                        ));
                    }
                    Ok(v)
                }
            }
        };
        let (name, lvl) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        match (name, lvl) {
            ("auto", None) => Ok(Policy::Auto),
            ("none" | "raw", None) => Ok(Policy::None),
            ("zstd", l) => Ok(Policy::Zstd(level(l)?)),
            ("zstd-dict", l) => Ok(Policy::ZstdDict(level(l)?)),
            _ => Err(format!(
                "unknown compression policy {s:?}: use auto, none, zstd[:LEVEL] or zstd-dict[:LEVEL]"
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Auto => f.write_str("auto"),
            Policy::None => f.write_str("none"),
            Policy::Zstd(l) => write!(f, "zstd:{l}"),
            Policy::ZstdDict(l) => write!(f, "zstd-dict:{l}"),
        }
    }
}

/// Records larger than this many bytes are encoded and written in pieces
/// ([`FieldEncoder::encode_stream`], `DatasetWriter::append_inputs`), never held whole in
/// memory by the tree compiler.
pub const STREAM_THRESHOLD: u64 = 16 << 20;

/// The piece size of streamed records.
pub const STREAM_PIECE: usize = 1 << 20;

/// A field's resolved encoding: codec, level and (for zstd-dict) the prepared dictionary.
pub struct FieldEncoder {
    codec: Codec,
    level: i32,
    cdict: Option<CDict<'static>>,
}

impl fmt::Debug for FieldEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldEncoder")
            .field("codec", &self.codec)
            .field("level", &self.level)
            .field("dict", &self.cdict.is_some())
            .finish()
    }
}

impl FieldEncoder {
    /// An encoder for `codec` at `level`; `dict` is required for [`Codec::ZstdDict`].
    pub fn new(codec: Codec, level: i32, dict: Option<&[u8]>) -> Result<FieldEncoder, String> {
        let cdict = match (codec, dict) {
            (Codec::ZstdDict, Some(d)) if !has_dict_magic(d) => {
                return Err(
                    "the dictionary does not start with the zstd dictionary magic \
                            (37 a4 30 ec); train it with codec::train_dictionary"
                        .into(),
                )
            }
            (Codec::ZstdDict, Some(d)) => {
                Some(CDict::try_create(d, level).ok_or("zstd could not load the dictionary")?)
            }
            (Codec::ZstdDict, None) => return Err("zstd-dict needs a dictionary".into()),
            (_, Some(_)) => {
                return Err(format!(
                    "only a zstd-dict field has a dictionary, this one is {}",
                    codec.name()
                ))
            }
            _ => None,
        };
        Ok(FieldEncoder {
            codec,
            level,
            cdict,
        })
    }

    /// The field's codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Encodes `raw` into `out` (cleared first) and returns the codec of the stored bytes:
    /// [`Codec::Raw`] (with `out` left empty, meaning "store `raw` itself") when the field is raw
    /// or compression would not make the record smaller.
    ///
    /// A record above [`STREAM_THRESHOLD`] bytes is compressed as [`FieldEncoder::encode_stream`]
    /// does (zstd's streaming API, in pieces), so that the same bytes come out whether the
    /// record is in memory or streamed from a file: zstd's one-shot and streaming frames of a
    /// large input can differ.
    pub fn encode(&self, cctx: &mut CCtx<'_>, raw: &[u8], out: &mut Vec<u8>) -> Codec {
        out.clear();
        if self.codec == Codec::Raw || raw.is_empty() {
            return Codec::Raw;
        }
        if raw.len() as u64 > STREAM_THRESHOLD {
            return match self.encode_stream(&mut &raw[..], raw.len() as u64, STREAM_PIECE, out) {
                Ok((c, _)) if c != Codec::Raw => c,
                _ => {
                    out.clear();
                    Codec::Raw
                }
            };
        }
        out.reserve(zstd_safe::compress_bound(raw.len()));
        let res = match &self.cdict {
            Some(d) => cctx.compress_using_cdict(out, raw, d),
            None => cctx.compress(out, raw, self.level),
        };
        match res {
            Ok(n) if n < raw.len() => self.codec,
            _ => {
                out.clear();
                Codec::Raw
            }
        }
    }
}

impl FieldEncoder {
    /// Encodes `raw` against `base` for a [`Codec::ZstdRef`] record: one zstd frame at the
    /// field's level with `base` as a raw-content prefix (`format-spec/shard.md` 6.1), written
    /// to `out` (cleared first) without the base's record index, which the writer puts in
    /// front. `false` (with `out` empty) when the field is raw, when either is empty or above
    /// [`REF_MAX_LEN`], when `base` starts with the dictionary magic (a decoder would take it
    /// for a dictionary), or when the record would not be smaller than `raw`.
    pub fn encode_ref(
        &self,
        cctx: &mut CCtx<'_>,
        raw: &[u8],
        base: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        let fits = |b: &[u8]| !b.is_empty() && b.len() as u64 <= REF_MAX_LEN;
        if self.codec == Codec::Raw || !fits(raw) || !fits(base) || has_dict_magic(base) {
            return false;
        }
        out.reserve(zstd_safe::compress_bound(raw.len()));
        match cctx.compress_using_dict(out, raw, base, self.level) {
            Ok(n) if n + REF_HEADER_LEN < raw.len() => true,
            _ => {
                out.clear();
                false
            }
        }
    }
}

impl FieldEncoder {
    /// Encodes `raw_len` bytes read from `input` into `out` with bounded memory (pieces of
    /// `piece` bytes and zstd's streaming API), giving the same frame as
    /// [`FieldEncoder::encode`] on the whole input: the same parameters, the pledged size in the
    /// frame header. Returns the codec of the stored bytes and their length: [`Codec::Raw`]
    /// (whatever was written to `out` is then to be discarded) when the field is raw or
    /// compression would not make the record smaller. An `input` that yields fewer or more than
    /// `raw_len` bytes is an `InvalidData` error.
    pub fn encode_stream(
        &self,
        input: &mut dyn std::io::Read,
        raw_len: u64,
        piece: usize,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<(Codec, u64)> {
        use std::io::{Error as IoError, ErrorKind};
        use zstd_safe::zstd_sys::ZSTD_EndDirective::{ZSTD_e_continue, ZSTD_e_end};
        use zstd_safe::{CParameter, InBuffer, OutBuffer};
        if self.codec == Codec::Raw || raw_len == 0 {
            return Ok((Codec::Raw, raw_len));
        }
        let zerr = |c: usize| IoError::other(format!("zstd: {}", zstd_safe::get_error_name(c)));
        let mut cctx = new_cctx();
        match &self.cdict {
            Some(d) => cctx.ref_cdict(d).map_err(zerr)?,
            None => cctx
                .set_parameter(CParameter::CompressionLevel(self.level))
                .map_err(zerr)?,
        };
        cctx.set_pledged_src_size(Some(raw_len)).map_err(zerr)?;
        let mut inbuf = vec![0u8; piece.max(1)];
        let mut outbuf: Vec<u8> = Vec::with_capacity(CCtx::out_size());
        let (mut read, mut written) = (0u64, 0u64);
        loop {
            let want = (raw_len - read).min(inbuf.len() as u64) as usize;
            let mut got = 0;
            while got < want {
                match input.read(&mut inbuf[got..want]) {
                    Ok(0) => {
                        return Err(IoError::new(
                            ErrorKind::InvalidData,
                            format!(
                                "changed size: {} bytes expected, {} read",
                                raw_len,
                                read + got as u64
                            ),
                        ))
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            read += got as u64;
            let last = read == raw_len;
            let mut ib = InBuffer::around(&inbuf[..got]);
            loop {
                outbuf.clear();
                let mut ob = OutBuffer::around(&mut outbuf);
                let left = cctx
                    .compress_stream2(
                        &mut ob,
                        &mut ib,
                        if last { ZSTD_e_end } else { ZSTD_e_continue },
                    )
                    .map_err(zerr)?;
                let n = ob.pos();
                out.write_all(&outbuf[..n])?;
                written += n as u64;
                if (last && left == 0) || (!last && ib.pos() == got) {
                    break;
                }
            }
            if last {
                break;
            }
        }
        let mut probe = [0u8; 1];
        if input.read(&mut probe)? != 0 {
            return Err(IoError::new(
                ErrorKind::InvalidData,
                format!("changed size: more than the {raw_len} bytes expected"),
            ));
        }
        if written < raw_len {
            Ok((self.codec, written))
        } else {
            Ok((Codec::Raw, raw_len))
        }
    }
}

/// A dictionary prepared for decoding.
pub struct DecodeDict(DDict<'static>);

impl fmt::Debug for DecodeDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecodeDict")
    }
}

impl DecodeDict {
    /// Prepares `dict`; `None` if zstd rejects it.
    pub fn new(dict: &[u8]) -> Option<DecodeDict> {
        DDict::try_create(dict).map(DecodeDict)
    }
}

/// The four bytes every zstd dictionary starts with (`37 a4 30 ec`, RFC 8878 section 5). zstd
/// itself takes bytes without them as a "raw content" dictionary; the format does not.
pub use crate::format::DICT_MAGIC;

/// `true` when `dict` starts with [`DICT_MAGIC`].
pub fn has_dict_magic(dict: &[u8]) -> bool {
    dict.starts_with(&DICT_MAGIC)
}

/// The four bytes a zstd frame starts with (`28 b5 2f fd`).
pub const FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The largest window a record's zstd frame may declare: 2^27 bytes (128 MiB), zstd's default
/// decoder limit (`ZSTD_WINDOWLOG_LIMIT_DEFAULT`). No zstd level shardpack can use needs more.
pub const MAX_WINDOW_LOG: u32 = 27;

/// [`MAX_WINDOW_LOG`] as a size in bytes.
pub const MAX_WINDOW: u64 = 1 << MAX_WINDOW_LOG;

/// What the header of a zstd frame declares (RFC 8878 section 3.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The window size: from the window descriptor, or the content size for a single-segment
    /// frame.
    pub window: u64,
    /// The content size, when the header states it.
    pub content_size: Option<u64>,
    /// The dictionary id, 0 when absent.
    pub dict_id: u32,
}

/// The largest block any zstd frame may hold (RFC 8878 section 3.1.1.2.4: 128 KiB).
const BLOCK_SIZE_MAX: u64 = 128 << 10;

impl FrameHeader {
    /// The largest block this frame may hold: its window, at most 128 KiB (RFC 8878
    /// `Block_Maximum_Size`). zstd's streaming decoder refuses a larger block; its one-shot
    /// decoder does not check raw and RLE blocks. The format requires it of both (checked by
    /// [`check_frame`], [`walk_frame`] and [`FrameDecoder`]), so a record `verify` accepts is
    /// a record every read path accepts.
    pub fn block_max(&self) -> u64 {
        self.window.min(BLOCK_SIZE_MAX)
    }
}

/// The length of the frame header whose descriptor byte (the fifth byte of the frame) is
/// `fhd`: magic, descriptor, window descriptor, dictionary id and content size fields.
fn header_len(fhd: u8) -> u64 {
    let single_segment = fhd & 0x20 != 0;
    let did_len = [0u64, 1, 2, 4][(fhd & 3) as usize];
    let fcs_len = match fhd >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    5 + u64::from(!single_segment) + did_len + fcs_len
}

/// The length of the content checksum that ends a frame whose descriptor byte is `fhd`.
fn checksum_len(fhd: u8) -> u64 {
    if fhd & 0x04 != 0 {
        4
    } else {
        0
    }
}

/// One block header (RFC 8878 section 3.1.1.2): the bytes the block's body takes in the frame,
/// and whether it is the frame's last block. Refuses what either of zstd's decoders refuses
/// without decoding: a reserved block type, a block larger than `block_max` (an RLE block's
/// regenerated size and its one body byte both count, as zstd's streaming decoder counts
/// them), and an empty compressed block (the one-shot decoder refuses it, the streaming one
/// skips it).
fn block_header(bh: [u8; 3], block_max: u64) -> Result<(u64, bool), DecodeError> {
    let bh = u32::from_le_bytes([bh[0], bh[1], bh[2], 0]);
    let size = u64::from(bh >> 3);
    let body = match (bh >> 1) & 3 {
        0 => size,
        1 => 1,
        2 if size == 0 => return Err(DecodeError::Zstd("an empty compressed block")),
        2 => size,
        _ => return Err(DecodeError::Zstd("reserved block type")),
    };
    if size.max(body) > block_max {
        return Err(DecodeError::Zstd(
            "a block larger than the frame's window allows (RFC 8878 Block_Maximum_Size)",
        ));
    }
    Ok((body, bh & 1 != 0))
}

/// The frame's block headers, checked as the stored bytes go by in order (one piece at a
/// time, in any piece size): what [`FrameDecoder`] needs to apply [`block_header`]'s rules
/// while it streams, and what [`check_frame`] runs over a record in memory.
#[derive(Debug, Clone)]
struct BlockWalk {
    block_max: u64,
    checksum_len: u64,
    /// Where the next block header starts (record offset).
    next: u64,
    /// The bytes of that header seen so far.
    hdr: [u8; 3],
    have: usize,
    /// Where the frame ends, once its last block header was seen.
    end: Option<u64>,
}

impl BlockWalk {
    fn new(header: &FrameHeader, fhd: u8) -> BlockWalk {
        BlockWalk {
            block_max: header.block_max(),
            checksum_len: checksum_len(fhd),
            next: header_len(fhd),
            hdr: [0; 3],
            have: 0,
            end: None,
        }
    }

    /// Takes the stored bytes `bytes`, which start at record offset `at`; bytes before the
    /// next header (block bodies, or bytes already seen) are skipped.
    fn feed(&mut self, at: u64, bytes: &[u8]) -> Result<(), DecodeError> {
        let end = at + bytes.len() as u64;
        while self.end.is_none() {
            let pos = self.next + self.have as u64;
            if pos < at || pos >= end {
                return Ok(());
            }
            let from = (pos - at) as usize;
            let take = (3 - self.have).min(bytes.len() - from);
            self.hdr[self.have..self.have + take].copy_from_slice(&bytes[from..from + take]);
            self.have += take;
            if self.have < 3 {
                return Ok(());
            }
            let (body, last) = block_header(self.hdr, self.block_max)?;
            self.next += 3 + body;
            self.have = 0;
            if last {
                self.end = Some(self.next + self.checksum_len);
            }
        }
        Ok(())
    }
}

/// Why a record's stored bytes do not decode. [`decode_into`] gives the same as text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// `raw_len` is more than any zstd frame of this size can produce.
    TooLarge {
        /// The claimed decoded length.
        raw_len: u64,
        /// The stored length.
        stored_len: u64,
    },
    /// The bytes do not start with a zstd frame header.
    NotAFrame,
    /// The record starts with a skippable frame (magic `0x184D2A5?`): the format allows
    /// exactly one zstd frame.
    SkippableFrame,
    /// The frame header is cut short or has its reserved bit set.
    BadFrameHeader,
    /// The frame declares a window above [`MAX_WINDOW`].
    WindowTooLarge {
        /// The declared window in bytes.
        window: u64,
    },
    /// Bytes follow the first frame (a second frame, or junk): the format allows exactly one.
    TrailingBytes {
        /// Where the first frame ends.
        frame_len: u64,
        /// The stored length.
        stored_len: u64,
    },
    /// zstd-dict record without a dictionary.
    DictionaryMissing,
    /// A zstd-ref record's base breaks a rule of `format-spec/shard.md` 6.1 (the detail says
    /// which), or was not given.
    Base(String),
    /// zstd refused the frame.
    Zstd(&'static str),
    /// A buffer could not be allocated.
    Alloc(u64),
    /// The frame decoded to another length than the index says.
    LengthMismatch {
        /// Bytes decoded.
        decoded: u64,
        /// `raw_len` from the index.
        expected: u64,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge {
                raw_len,
                stored_len,
            } => write!(
                f,
                "claims {raw_len} decoded bytes from {stored_len} stored bytes, more than zstd \
                 can produce"
            ),
            DecodeError::NotAFrame => f.write_str("the stored bytes are not a zstd frame"),
            DecodeError::SkippableFrame => f.write_str(
                "the record starts with a zstd skippable frame; a record is exactly one zstd frame",
            ),
            DecodeError::BadFrameHeader => f.write_str("the zstd frame header is malformed"),
            DecodeError::WindowTooLarge { window } => write!(
                f,
                "the zstd frame declares a {window}-byte window, above the format's maximum of \
                 {MAX_WINDOW} (2^{MAX_WINDOW_LOG})"
            ),
            DecodeError::TrailingBytes {
                frame_len,
                stored_len,
            } => write!(
                f,
                "the zstd frame ends at byte {frame_len} of {stored_len}: a record is exactly \
                 one zstd frame (a second frame or other bytes follow)"
            ),
            DecodeError::DictionaryMissing => f.write_str("dictionary missing"),
            DecodeError::Base(detail) => write!(f, "zstd-ref: {detail}"),
            DecodeError::Zstd(name) => write!(f, "zstd: {name}"),
            DecodeError::Alloc(n) => write!(f, "cannot allocate {n} bytes to decode the record"),
            DecodeError::LengthMismatch { decoded, expected } => {
                write!(f, "decoded to {decoded} bytes, the index says {expected}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Parses the header of the zstd frame at the start of `b` (pure Rust, no FFI) and checks what
/// the format requires of it: a zstd frame (not a skippable one), reserved bit clear, window at
/// most [`MAX_WINDOW`].
pub fn frame_header(b: &[u8]) -> Result<FrameHeader, DecodeError> {
    if b.len() >= 4 && b[..4] != FRAME_MAGIC {
        let m = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        return Err(if m & 0xffff_fff0 == 0x184d_2a50 {
            DecodeError::SkippableFrame
        } else {
            DecodeError::NotAFrame
        });
    }
    let fhd = *b.get(4).ok_or(DecodeError::NotAFrame)?;
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    if fhd & 0x08 != 0 {
        return Err(DecodeError::BadFrameHeader);
    }
    let did_len = [0usize, 1, 2, 4][(fhd & 3) as usize];
    let fcs_len = match fcs_flag {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut at = 5;
    let mut window = 0u64;
    if !single_segment {
        let wd = *b.get(at).ok_or(DecodeError::BadFrameHeader)?;
        at += 1;
        let log = 10 + u32::from(wd >> 3);
        let base = 1u64 << log;
        window = base + (base / 8) * u64::from(wd & 7);
    }
    let le = |s: &[u8]| s.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x));
    let did = b.get(at..at + did_len).ok_or(DecodeError::BadFrameHeader)?;
    at += did_len;
    let fcs = b.get(at..at + fcs_len).ok_or(DecodeError::BadFrameHeader)?;
    let content_size = match fcs_len {
        0 => None,
        2 => Some(le(fcs) + 256),
        _ => Some(le(fcs)),
    };
    if single_segment {
        window = content_size.unwrap_or(0);
    }
    if window > MAX_WINDOW {
        return Err(DecodeError::WindowTooLarge { window });
    }
    Ok(FrameHeader {
        window,
        content_size,
        dict_id: le(did) as u32,
    })
}

/// Checks that `stored` is exactly one zstd frame the format allows (see [`frame_header`]) with
/// nothing after it, without decoding it.
pub fn check_frame(stored: &[u8]) -> Result<FrameHeader, DecodeError> {
    let h = frame_header(stored)?;
    let mut walk = BlockWalk::new(&h, stored[4]);
    walk.feed(0, stored)?;
    match walk.end {
        Some(n) if n == stored.len() as u64 => Ok(h),
        Some(n) if n < stored.len() as u64 => Err(DecodeError::TrailingBytes {
            frame_len: n,
            stored_len: stored.len() as u64,
        }),
        _ => Err(DecodeError::Zstd("the frame ends early (truncated record)")),
    }
}

/// The length of the zstd frame that starts a record of `stored_len` bytes, found without
/// decoding by walking its block headers (RFC 8878 section 3.1.1.2) through `read_at(offset,
/// buf)`, which must fill `buf` from that offset of the record. What [`check_frame`] gives for
/// a record in memory, for a streaming reader that must refuse a second frame (or other bytes
/// after the frame) before it decodes: the record is exactly one frame when this returns
/// `stored_len`. The header is checked as by [`frame_header`]; a frame cut short is an error.
/// The record is read in pieces of 64 KiB, so a frame of many tiny blocks costs no more reads
/// than its size needs.
pub fn walk_frame(
    stored_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<Result<u64, DecodeError>> {
    const WIN: u64 = 64 << 10;
    let cut = DecodeError::Zstd("the frame ends early (truncated record)");
    let mut win = vec![0u8; WIN.min(stored_len) as usize];
    let mut win_start = 0u64;
    read_at(0, &mut win)?;
    let header = match frame_header(&win) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let fhd = win[4];
    let block_max = header.block_max();
    let mut pos = header_len(fhd);
    loop {
        if pos + 3 > stored_len {
            return Ok(Err(cut));
        }
        if pos < win_start || pos + 3 > win_start + win.len() as u64 {
            let n = WIN.min(stored_len - pos) as usize;
            win.resize(n, 0);
            read_at(pos, &mut win)?;
            win_start = pos;
        }
        let at = (pos - win_start) as usize;
        let (body, last) = match block_header([win[at], win[at + 1], win[at + 2]], block_max) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        pos += 3 + body;
        if last {
            break;
        }
    }
    pos += checksum_len(fhd);
    if pos > stored_len {
        return Ok(Err(cut));
    }
    Ok(Ok(pos))
}

/// Decodes a compressed record into `out` (cleared first), checking that it yields exactly
/// `raw_len` bytes. `dict` must be given for [`Codec::ZstdDict`]. The error as text; see
/// [`decode_record`] for the typed error.
pub fn decode_into(
    dctx: &mut DCtx<'_>,
    codec: Codec,
    stored: &[u8],
    raw_len: u64,
    dict: Option<&DecodeDict>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    decode_record(dctx, codec, stored, raw_len, dict, out).map_err(|e| e.to_string())
}

/// Decodes a record into `out` (cleared first): checks the `raw_len` bound, that a compressed
/// record is exactly one zstd frame with a window of at most [`MAX_WINDOW`], and that it
/// yields exactly `raw_len` bytes. A [`Codec::ZstdRef`] record needs its base's data:
/// [`decode_record_with_base`].
pub fn decode_record(
    dctx: &mut DCtx<'_>,
    codec: Codec,
    stored: &[u8],
    raw_len: u64,
    dict: Option<&DecodeDict>,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    decode_record_with_base(dctx, codec, stored, raw_len, dict, None, out)
}

/// [`decode_record`] for any codec: `base` is the decoded data of a [`Codec::ZstdRef`]
/// record's base (checked by the caller with [`check_ref_base`]), used as the frame's
/// raw-content prefix (`format-spec/shard.md` section 6.1).
pub fn decode_record_with_base(
    dctx: &mut DCtx<'_>,
    codec: Codec,
    stored: &[u8],
    raw_len: u64,
    dict: Option<&DecodeDict>,
    base: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    out.clear();
    let frame = match codec {
        Codec::ZstdRef => ref_parts(stored)?.1,
        _ => stored,
    };
    if raw_len > max_decoded_len(frame.len() as u64) {
        return Err(DecodeError::TooLarge {
            raw_len,
            stored_len: stored.len() as u64,
        });
    }
    let n = usize::try_from(raw_len).map_err(|_| DecodeError::Alloc(raw_len))?;
    match codec {
        Codec::Raw => {
            out.try_reserve_exact(stored.len())
                .map_err(|_| DecodeError::Alloc(stored.len() as u64))?;
            out.extend_from_slice(stored);
        }
        Codec::Zstd | Codec::ZstdDict | Codec::ZstdRef => {
            if codec == Codec::ZstdDict && dict.is_none() {
                return Err(DecodeError::DictionaryMissing);
            }
            if codec == Codec::ZstdRef && base.is_none() {
                return Err(DecodeError::Base("the record's base was not given".into()));
            }
            // zstd's one-shot decoder accepts concatenated and skippable frames and ignores
            // its window limit (that limit is for streaming); the format allows neither.
            let header = check_frame(frame)?;
            // Memory follows the real output, not the claimed length. When the frame header
            // states the same size as the index (as every frame shardpack writes does), and it
            // is not huge, decode in one pass into raw_len + 1 bytes (the extra byte lets a
            // frame that decodes to more be noticed). Otherwise start from a size typical data
            // fits in and double while zstd says the buffer is too small: a corrupt record
            // claiming a huge length fails at the first try.
            const TRUST_HEADER_UP_TO: u64 = 64 << 20;
            let header_agrees =
                raw_len <= TRUST_HEADER_UP_TO && header.content_size == Some(raw_len);
            let mut cap = if header_agrees {
                n + 1
            } else {
                n.saturating_add(1)
                    .min(frame.len().saturating_mul(8).saturating_add(64 << 10))
            };
            loop {
                out.clear();
                out.try_reserve_exact(cap)
                    .map_err(|_| DecodeError::Alloc(cap as u64))?;
                let res = match (codec, dict, base) {
                    (Codec::ZstdDict, Some(d), _) => dctx.decompress_using_ddict(out, frame, &d.0),
                    // A base never starts with the dictionary magic (`check_ref_base`), so zstd
                    // takes it as raw content, the prefix the format names.
                    (Codec::ZstdRef, _, Some(b)) => dctx.decompress_using_dict(out, frame, b),
                    _ => dctx.decompress(out, frame),
                };
                match res {
                    Ok(_) => break,
                    Err(code) if cap <= n && is_dst_too_small(code) => {
                        cap = cap.saturating_mul(2).min(n + 1);
                    }
                    Err(code) => return Err(DecodeError::Zstd(zstd_safe::get_error_name(code))),
                }
            }
        }
    }
    if out.len() as u64 != raw_len {
        return Err(DecodeError::LengthMismatch {
            decoded: out.len() as u64,
            expected: raw_len,
        });
    }
    Ok(())
}

/// A [`Codec::ZstdRef`] record's stored bytes split into the record index of its base (the
/// first [`REF_HEADER_LEN`] bytes, little-endian) and its zstd frame.
pub fn ref_parts(stored: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    if stored.len() < REF_HEADER_LEN {
        return Err(DecodeError::Base(format!(
            "a zstd-ref record starts with its base's 8-byte record index; it has {} bytes",
            stored.len()
        )));
    }
    let (head, frame) = stored.split_at(REF_HEADER_LEN);
    let mut b = [0u8; REF_HEADER_LEN];
    b.copy_from_slice(head);
    Ok((u64::from_le_bytes(b), frame))
}

/// The rules a zstd-ref record `record` of field `field` and the entry of its base (record
/// `base` of the same shard) must meet before the base is read (`format-spec/shard.md` 6.1):
/// the base comes earlier, is of the same field, is not itself zstd-ref and has at most
/// [`REF_MAX_LEN`] bytes of data. Once decoded, its data must not start with the dictionary
/// magic ([`check_ref_base_data`]).
pub fn check_ref_base(
    record: u64,
    field: u32,
    base: u64,
    entry: &crate::format::RecordEntry,
) -> Result<(), DecodeError> {
    let problem = if base >= record {
        format!("names record {base} as its base, which is not an earlier record")
    } else if entry.field != field {
        format!(
            "names record {base} of field {} as its base, not one of its own field {field}",
            entry.field
        )
    } else if entry.codec == Codec::ZstdRef.as_u32() {
        format!("names record {base} as its base, which is itself zstd-ref")
    } else if entry.raw_len > REF_MAX_LEN {
        format!(
            "names record {base} of {} bytes as its base, above the {REF_MAX_LEN}-byte limit",
            entry.raw_len
        )
    } else {
        return Ok(());
    };
    Err(DecodeError::Base(problem))
}

/// The rule on a base's decoded data (`format-spec/shard.md` 6.1): it does not start with the
/// dictionary magic, so that every zstd API takes it as raw content.
pub fn check_ref_base_data(base: u64, data: &[u8]) -> Result<(), DecodeError> {
    if has_dict_magic(data) {
        return Err(DecodeError::Base(format!(
            "names record {base} as its base, whose data starts with the zstd dictionary magic"
        )));
    }
    Ok(())
}

/// zstd's streaming decoder under the format's frame rules (`format-spec/shard.md` section 6),
/// in bounded memory: the record's stored bytes go in piece by piece, decoded bytes come out
/// into the caller's buffer. Checks what [`decode_record`] checks: the frame header on the
/// first piece (a zstd frame, not skippable, window at most [`MAX_WINDOW`]), that nothing
/// follows the frame, and that it yields exactly `raw_len` bytes. Used by [`StreamCheck`]
/// (`verify`) and by the reader's `Field::reader` (`cat`, `extract`).
pub struct FrameDecoder<'d> {
    /// Refers to the dictionary of `'d` (`ZSTD_DCtx_refDDict`) until dropped.
    dctx: DCtx<'static>,
    _dict: std::marker::PhantomData<&'d DecodeDict>,
    stored_len: u64,
    raw_len: u64,
    /// Stored bytes consumed so far.
    fed: u64,
    decoded: u64,
    /// Where the frame ended, once it has.
    frame_end: Option<u64>,
    /// The block headers checked as the stored bytes go by (from the first piece on).
    blocks: Option<BlockWalk>,
}

impl fmt::Debug for FrameDecoder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("fed", &self.fed)
            .field("decoded", &self.decoded)
            .field("frame_end", &self.frame_end)
            .finish()
    }
}

impl<'d> FrameDecoder<'d> {
    /// A decoder of a `codec` record of `stored_len` bytes that must decode to `raw_len`;
    /// `dict` must be given for [`Codec::ZstdDict`].
    pub fn new(
        codec: Codec,
        stored_len: u64,
        raw_len: u64,
        dict: Option<&'d DecodeDict>,
    ) -> Result<FrameDecoder<'d>, DecodeError> {
        if raw_len > max_decoded_len(stored_len) {
            return Err(DecodeError::TooLarge {
                raw_len,
                stored_len,
            });
        }
        let mut dctx = new_dctx();
        match (codec, dict) {
            (Codec::ZstdDict, Some(d)) => {
                dctx.ref_ddict(&d.0)
                    .map_err(|c| DecodeError::Zstd(zstd_safe::get_error_name(c)))?;
            }
            (Codec::ZstdDict, None) => return Err(DecodeError::DictionaryMissing),
            _ => {}
        }
        Ok(FrameDecoder {
            dctx,
            _dict: std::marker::PhantomData,
            stored_len,
            raw_len,
            fed: 0,
            decoded: 0,
            frame_end: None,
            blocks: None,
        })
    }

    /// Decodes from the front of `input` (the stored bytes that follow those consumed so far)
    /// into `out`; returns `(consumed, written)`. The first call's `input` must hold the whole
    /// frame header (18 bytes are always enough, or the whole record). With an empty `input`
    /// it flushes what zstd still holds. `written` is 0 with input left only when `out` is
    /// empty.
    pub fn decode(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        if self.blocks.is_none() && !input.is_empty() {
            let header = frame_header(input)?;
            self.blocks = Some(BlockWalk::new(&header, input[4]));
        }
        if let Some(blocks) = &mut self.blocks {
            blocks.feed(self.fed, input)?;
        }
        if let Some(end) = self.frame_end {
            if !input.is_empty() {
                return Err(DecodeError::TrailingBytes {
                    frame_len: end,
                    stored_len: self.stored_len,
                });
            }
            return Ok((0, 0));
        }
        let mut inb = zstd_safe::InBuffer::around(input);
        let mut outb = zstd_safe::OutBuffer::around(out);
        let res = self.dctx.decompress_stream(&mut outb, &mut inb);
        let (consumed, written) = (inb.pos(), outb.pos());
        self.fed += consumed as u64;
        self.decoded += written as u64;
        match res {
            Ok(0) => {
                self.frame_end = Some(self.fed);
                if consumed < input.len() {
                    return Err(DecodeError::TrailingBytes {
                        frame_len: self.fed,
                        stored_len: self.stored_len,
                    });
                }
            }
            Ok(_) => {}
            Err(code) => return Err(DecodeError::Zstd(zstd_safe::get_error_name(code))),
        }
        if self.decoded > self.raw_len {
            return Err(DecodeError::LengthMismatch {
                decoded: self.decoded,
                expected: self.raw_len,
            });
        }
        Ok((consumed, written))
    }

    /// `true` once the frame has ended (and all its output was handed out).
    pub fn is_done(&self) -> bool {
        self.frame_end.is_some()
    }

    /// After the last piece: the frame ended at the end of the stored bytes, and it decoded to
    /// exactly `raw_len` bytes.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.frame_end {
            None => return Err(DecodeError::Zstd("the frame ends early (truncated record)")),
            Some(end) if end != self.stored_len => {
                return Err(DecodeError::TrailingBytes {
                    frame_len: end,
                    stored_len: self.stored_len,
                })
            }
            Some(_) => {}
        }
        if self.decoded != self.raw_len {
            return Err(DecodeError::LengthMismatch {
                decoded: self.decoded,
                expected: self.raw_len,
            });
        }
        Ok(())
    }
}

/// Checks a compressed record fed in pieces, in bounded memory: what [`decode_record`] checks
/// (one frame, window at most [`MAX_WINDOW`], exactly `raw_len` bytes out), through a
/// [`FrameDecoder`] into a fixed 1 MiB buffer whose contents are discarded. For records too
/// large to decode whole (`verify` of a multi-GiB record).
pub struct StreamCheck<'d> {
    dec: FrameDecoder<'d>,
    out: Vec<u8>,
}

impl fmt::Debug for StreamCheck<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCheck")
            .field("dec", &self.dec)
            .finish()
    }
}

impl<'d> StreamCheck<'d> {
    /// A check of a `codec` record of `stored_len` bytes that must decode to `raw_len`; `dict`
    /// must be given for [`Codec::ZstdDict`].
    pub fn new(
        codec: Codec,
        stored_len: u64,
        raw_len: u64,
        dict: Option<&'d DecodeDict>,
    ) -> Result<StreamCheck<'d>, DecodeError> {
        Ok(StreamCheck {
            dec: FrameDecoder::new(codec, stored_len, raw_len, dict)?,
            out: vec![0; 1 << 20],
        })
    }

    /// Feeds the next piece of the stored bytes. The first piece must hold the whole frame
    /// header (18 bytes are always enough).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        let mut at = 0;
        while at < chunk.len() {
            let (consumed, _) = self.dec.decode(&chunk[at..], &mut self.out)?;
            at += consumed;
        }
        // Output zstd still holds once all input is consumed.
        while !self.dec.is_done() {
            let (_, written) = self.dec.decode(&[], &mut self.out)?;
            if written == 0 {
                break;
            }
        }
        Ok(())
    }

    /// After the last piece: the frame ended, and it decoded to exactly `raw_len` bytes.
    pub fn finish(self) -> Result<(), DecodeError> {
        self.dec.finish()
    }
}

fn is_dst_too_small(code: zstd_safe::ErrorCode) -> bool {
    // zstd returns an error as the negated value of its `ZSTD_ErrorCode`.
    code == (zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall as usize)
        .wrapping_neg()
}

/// A fresh compression context.
pub fn new_cctx() -> CCtx<'static> {
    CCtx::create()
}

/// A fresh decompression context, its window limited to [`MAX_WINDOW`] (which zstd applies
/// to streaming decodes; one-shot decodes are checked by [`check_frame`]).
pub fn new_dctx() -> DCtx<'static> {
    let mut d = DCtx::create();
    d.set_parameter(zstd_safe::DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .expect("zstd accepts its default window limit");
    d
}

/// Samples totalling fewer bytes than this are not given to zstd's trainer: zstd 1.5's
/// FASTCOVER crashes (SIGSEGV or SIGFPE) on totals of 8 to 14 bytes (found by packing a tree
/// of one-byte files), and a dictionary trained on a few dozen bytes is worth nothing anyway.
pub const MIN_TRAINING_BYTES: usize = 64;

/// What trains a field's zstd dictionary at pack time. The choice decides the dictionary's
/// bytes, so a dataset records it (manifest `writer.dict_trainer`, [`DictTrainer::id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum DictTrainer {
    /// zstd's FASTCOVER with fixed parameters (segment k = 1024 bytes, d = 8, a 2^16-entry
    /// frequency table, accel = 4): one pass over the samples. On the Python library's fields
    /// it trains 8 to 11 times faster than [`DictTrainer::Zdict`] and compresses as well
    /// (within 1%; `cargo bench --bench dict_trainer -- DIR py pyi rst json pyc`). The default.
    #[default]
    FastCover,
    /// zstd's `ZDICT_trainFromBuffer` (FASTCOVER trying four segment sizes, each judged by
    /// compressing a quarter of the samples, with a 2^20-entry table), what shardpack used
    /// before `fastcover`: it reproduces datasets whose `writer.dict_trainer` says `zdict`
    /// byte for byte.
    Zdict,
}

/// The FASTCOVER parameters of [`DictTrainer::FastCover`].
const FASTCOVER_K: u32 = 1024;
const FASTCOVER_D: u32 = 8;
const FASTCOVER_F: u32 = 16;
const FASTCOVER_ACCEL: u32 = 4;

impl DictTrainer {
    /// Every trainer, the default first.
    pub const ALL: [DictTrainer; 2] = [DictTrainer::FastCover, DictTrainer::Zdict];

    /// The name the CLI takes (`--dict-trainer`).
    pub fn name(self) -> &'static str {
        match self {
            DictTrainer::FastCover => "fastcover",
            DictTrainer::Zdict => "zdict",
        }
    }

    /// What the manifest records in `writer.dict_trainer` for this trainer in zstd version
    /// `zstd` (`"1.5.7"`): `"zdict 1.5.7"` or `"fastcover:k=1024,d=8,f=16,accel=4 1.5.7"`.
    pub fn id(self, zstd: &str) -> String {
        match self {
            DictTrainer::Zdict => format!("zdict {zstd}"),
            DictTrainer::FastCover => format!(
                "fastcover:k={FASTCOVER_K},d={FASTCOVER_D},f={FASTCOVER_F},\
                 accel={FASTCOVER_ACCEL} {zstd}"
            ),
        }
    }

    /// Trains a dictionary of at most `max_size` bytes on `samples`. `None` when zstd cannot
    /// train one (too few or too small samples: under [`MIN_TRAINING_BYTES`] in all).
    /// Deterministic: the same samples and size give the same bytes.
    pub fn train(self, samples: &[&[u8]], max_size: usize) -> Option<Vec<u8>> {
        let total: usize = samples.iter().map(|s| s.len()).sum();
        if total < MIN_TRAINING_BYTES {
            return None;
        }
        let mut data = Vec::with_capacity(total);
        let mut sizes = Vec::with_capacity(samples.len());
        for s in samples {
            data.extend_from_slice(s);
            sizes.push(s.len());
        }
        let mut dict = Vec::with_capacity(max_size);
        match self {
            DictTrainer::Zdict => {
                zstd_safe::train_from_buffer(&mut dict, &data, &sizes).ok()?;
            }
            DictTrainer::FastCover => {
                let nb = u32::try_from(sizes.len()).ok()?;
                // SAFETY: zstd's parameter struct is plain data (integers and a float), for
                // which all zeroes means "the default" field by field.
                let mut params: zstd_sys::ZDICT_fastCover_params_t = unsafe { std::mem::zeroed() };
                // k may not exceed the dictionary's size (zstd refuses the parameters then).
                params.k = FASTCOVER_K.min(u32::try_from(max_size).unwrap_or(u32::MAX));
                params.d = FASTCOVER_D;
                params.f = FASTCOVER_F;
                params.accel = FASTCOVER_ACCEL;
                params.zParams.compressionLevel = DEFAULT_LEVEL;
                // SAFETY: `dict` has `max_size` bytes of capacity, which zstd writes at most
                // (it returns the length written, or an error code checked below); `data`
                // holds exactly the sum of `sizes`, and `sizes` holds `nb` entries. zstd keeps
                // none of the pointers after the call.
                let n = unsafe {
                    zstd_sys::ZDICT_trainFromBuffer_fastCover(
                        dict.as_mut_ptr().cast(),
                        max_size,
                        data.as_ptr().cast(),
                        sizes.as_ptr(),
                        nb,
                        params,
                    )
                };
                // SAFETY: a pure function of the returned code.
                if unsafe { zstd_sys::ZDICT_isError(n) } != 0 || n > max_size {
                    return None;
                }
                // SAFETY: zstd initialised the first `n` bytes (checked: `n <= max_size`).
                unsafe { dict.set_len(n) };
            }
        }
        Some(dict)
    }
}

impl fmt::Display for DictTrainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for DictTrainer {
    type Err = String;
    fn from_str(s: &str) -> Result<DictTrainer, String> {
        DictTrainer::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown dictionary trainer {s:?}: use fastcover (the default) or zdict \
                     (to reproduce a dataset whose manifest names it)"
                )
            })
    }
}

/// Trains a dictionary of at most `max_size` bytes on `samples` with the default trainer
/// ([`DictTrainer::FastCover`]). `None` when zstd cannot train one (too few or too small
/// samples: under [`MIN_TRAINING_BYTES`] in all).
pub fn train_dictionary(samples: &[&[u8]], max_size: usize) -> Option<Vec<u8>> {
    DictTrainer::default().train(samples, max_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `raw` with or without the content size in its header.
    fn frame(raw: &[u8], content_size: bool) -> Vec<u8> {
        let mut cctx = new_cctx();
        cctx.set_parameter(zstd_safe::CParameter::ContentSizeFlag(content_size))
            .unwrap();
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(raw.len()));
        cctx.compress2(&mut out, raw).unwrap();
        out
    }

    #[test]
    fn training_on_a_few_bytes_gives_no_dictionary_and_no_crash() {
        // 8 to 14 bytes in all crashed zstd's trainer (one-byte files of a real tree).
        for trainer in DictTrainer::ALL {
            for n in 1..MIN_TRAINING_BYTES {
                let samples: Vec<&[u8]> = (0..n).map(|_| &b"x"[..]).collect();
                assert_eq!(
                    trainer.train(&samples, 1024),
                    None,
                    "{trainer}: {n} samples"
                );
            }
        }
        // Just above the floor: zdict trains one; FASTCOVER may or may not (its choice), and
        // neither crashes.
        let samples: Vec<&[u8]> = (0..MIN_TRAINING_BYTES + 2).map(|_| &b"x"[..]).collect();
        assert!(DictTrainer::Zdict.train(&samples, 1024).is_some());
        let _ = DictTrainer::FastCover.train(&samples, 1024);
    }

    /// Small and odd inputs (few samples, tiny ones, one large one, a size below k) never
    /// crash FASTCOVER, and what it trains is a dictionary zstd loads.
    #[test]
    fn fastcover_takes_odd_inputs_and_is_deterministic() {
        let mut rng = crate::rng::SplitMix64::new(7);
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| {
                b"the quick brown fox jumps over a lazy dog\n"[(i % 42) as usize]
                    ^ ((rng.next_u64() % 13 == 0) as u8)
            })
            .collect();
        let cases: Vec<Vec<&[u8]>> = vec![
            text.chunks(7).take(20).collect(),
            text.chunks(100).take(3).collect(),
            text.chunks(100).take(5).collect(),
            vec![&text[..]],
            text.chunks(1000).collect(),
            text.chunks(3).take(1000).collect(),
        ];
        for (i, samples) in cases.iter().enumerate() {
            for max in [256, 1000, 1024, 4096, 112 * 1024] {
                let a = DictTrainer::FastCover.train(samples, max);
                assert_eq!(a, DictTrainer::FastCover.train(samples, max), "case {i}");
                if let Some(d) = a {
                    assert!(d.len() <= max, "case {i}: {} > {max}", d.len());
                    let enc = FieldEncoder::new(Codec::ZstdDict, DEFAULT_LEVEL, Some(&d))
                        .expect("zstd loads the dictionary");
                    let mut out = Vec::new();
                    let mut cctx = new_cctx();
                    enc.encode(&mut cctx, samples[0], &mut out);
                }
            }
        }
        // A real dictionary where there is enough text, and it helps.
        let samples: Vec<&[u8]> = text.chunks(1000).collect();
        let d = DictTrainer::FastCover.train(&samples, 16 << 10).unwrap();
        assert!(d.len() > 1024 && d.len() <= 16 << 10, "{}", d.len());
    }

    #[test]
    fn trainers_parse_their_names_and_identify_themselves() {
        for t in DictTrainer::ALL {
            assert_eq!(t.name().parse::<DictTrainer>(), Ok(t));
        }
        assert!("cover"
            .parse::<DictTrainer>()
            .unwrap_err()
            .contains("fastcover"));
        assert_eq!(DictTrainer::Zdict.id("1.5.7"), "zdict 1.5.7");
        assert_eq!(
            DictTrainer::FastCover.id("1.5.7"),
            "fastcover:k=1024,d=8,f=16,accel=4 1.5.7"
        );
    }

    #[test]
    fn highly_compressed_records_decode_with_or_without_a_size_in_the_header() {
        // 4 MiB of one byte: far above the 8x first guess, so without the header's size the
        // buffer must grow, and that growth depends on recognizing zstd's error.
        let raw = vec![7u8; 4 << 20];
        let mut dctx = new_dctx();
        for with_size in [true, false] {
            let stored = frame(&raw, with_size);
            assert!(stored.len() * 8 + (64 << 10) < raw.len());
            let mut out = Vec::new();
            decode_into(
                &mut dctx,
                Codec::Zstd,
                &stored,
                raw.len() as u64,
                None,
                &mut out,
            )
            .unwrap();
            assert!(out == raw, "content size in header: {with_size}");
            let err = decode_into(&mut dctx, Codec::Zstd, &stored, 1000, None, &mut out);
            assert!(err.is_err(), "a wrong length is refused ({with_size})");
        }
    }

    #[test]
    fn recognizes_a_destination_that_is_too_small() {
        let stored = frame(&[1u8; 100_000], true);
        let mut small = Vec::with_capacity(10);
        let code = new_dctx().decompress(&mut small, &stored).unwrap_err();
        assert!(
            is_dst_too_small(code),
            "{}",
            zstd_safe::get_error_name(code)
        );
        assert!(!is_dst_too_small(
            new_dctx().decompress(&mut small, b"not zstd").unwrap_err()
        ));
    }

    #[test]
    fn frame_rules_one_frame_no_skippable_window_at_most_2_27() {
        let raw = b"frame rules frame rules frame rules frame rules".repeat(20);
        let f = frame(&raw, true);
        let h = check_frame(&f).unwrap();
        assert_eq!(h.content_size, Some(raw.len() as u64));
        assert!(h.window <= MAX_WINDOW);
        let mut dctx = new_dctx();
        let mut out = Vec::new();
        let n = raw.len() as u64;
        decode_record(&mut dctx, Codec::Zstd, &f, n, None, &mut out).unwrap();
        // Two frames: zstd alone would decode both, to twice the length.
        let two = [f.clone(), f.clone()].concat();
        assert!(matches!(
            decode_record(&mut dctx, Codec::Zstd, &two, 2 * n, None, &mut out),
            Err(DecodeError::TrailingBytes { frame_len, .. }) if frame_len == f.len() as u64
        ));
        // A leading skippable frame.
        let mut skip = vec![0x5f, 0x2a, 0x4d, 0x18, 1, 0, 0, 0, 0];
        skip.extend_from_slice(&f);
        assert_eq!(
            decode_record(&mut dctx, Codec::Zstd, &skip, n, None, &mut out),
            Err(DecodeError::SkippableFrame)
        );
        // Window descriptors: exponent 17 (2^27) passes, 2^27 + 1/8 and 2^30 do not.
        let with_wd = |wd: u8| {
            let mut b = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, wd];
            b.extend_from_slice(&((3u32 << 3) | 1).to_le_bytes()[..3]);
            b.extend_from_slice(b"abc");
            b
        };
        assert_eq!(check_frame(&with_wd(17 << 3)).unwrap().window, 1 << 27);
        decode_record(&mut dctx, Codec::Zstd, &with_wd(17 << 3), 3, None, &mut out).unwrap();
        assert_eq!(out, b"abc");
        for (wd, window) in [
            ((17 << 3) | 1, (1u64 << 27) + (1 << 24)),
            (20 << 3, 1 << 30),
        ] {
            assert_eq!(
                decode_record(&mut dctx, Codec::Zstd, &with_wd(wd), 3, None, &mut out),
                Err(DecodeError::WindowTooLarge { window })
            );
        }
        // Single-segment frames: the window is the content size.
        let mut ss = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        ss.extend_from_slice(&(1u64 << 28).to_le_bytes());
        assert_eq!(
            frame_header(&ss),
            Err(DecodeError::WindowTooLarge { window: 1 << 28 })
        );
        assert_eq!(frame_header(b"\x28\xb5\x2f"), Err(DecodeError::NotAFrame));
        assert_eq!(frame_header(b"not zstd"), Err(DecodeError::NotAFrame));
        assert_eq!(
            frame_header(&[0x28, 0xb5, 0x2f, 0xfd, 0x08, 0]),
            Err(DecodeError::BadFrameHeader)
        );
    }

    #[test]
    fn dictionaries_need_the_magic_and_a_dict_field() {
        assert!(FieldEncoder::new(Codec::ZstdDict, 3, Some(b"raw content, no magic")).is_err());
        assert!(FieldEncoder::new(Codec::Zstd, 3, Some(&DICT_MAGIC)).is_err());
        let samples: Vec<Vec<u8>> = (0..100)
            .map(|i| {
                format!("{{\"id\": {i}, \"name\": \"sample {i}\", \"tags\": [\"a\", \"b\"]}}")
                    .into_bytes()
            })
            .collect();
        let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
        let d = train_dictionary(&refs, 1024).unwrap();
        assert!(has_dict_magic(&d));
        assert!(FieldEncoder::new(Codec::ZstdDict, 3, Some(&d)).is_ok());
    }

    #[test]
    fn policies_parse() {
        assert_eq!("auto".parse::<Policy>(), Ok(Policy::Auto));
        assert_eq!("none".parse::<Policy>(), Ok(Policy::None));
        assert_eq!("zstd".parse::<Policy>(), Ok(Policy::Zstd(3)));
        assert_eq!("zstd:19".parse::<Policy>(), Ok(Policy::Zstd(19)));
        assert_eq!("zstd-dict:5".parse::<Policy>(), Ok(Policy::ZstdDict(5)));
        assert!("zstd:0".parse::<Policy>().is_err());
        assert!("zstd:99".parse::<Policy>().is_err());
        assert!("gzip".parse::<Policy>().is_err());
        assert!("auto:3".parse::<Policy>().is_err());
    }

    #[test]
    fn zstd_round_trip_and_raw_fallback() {
        let enc = FieldEncoder::new(Codec::Zstd, 3, None).unwrap();
        let mut cctx = new_cctx();
        let mut dctx = new_dctx();
        let text = b"hello hello hello hello hello hello hello hello".repeat(10);
        let mut out = Vec::new();
        assert_eq!(enc.encode(&mut cctx, &text, &mut out), Codec::Zstd);
        assert!(out.len() < text.len());
        let mut back = Vec::new();
        decode_into(
            &mut dctx,
            Codec::Zstd,
            &out,
            text.len() as u64,
            None,
            &mut back,
        )
        .unwrap();
        assert_eq!(back, text);
        // Wrong raw length is caught.
        assert!(decode_into(&mut dctx, Codec::Zstd, &out, 5, None, &mut back).is_err());
        // Incompressible input is stored raw.
        let noise: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(enc.encode(&mut cctx, &noise, &mut out), Codec::Raw);
        assert!(out.is_empty());
    }

    #[test]
    fn absurd_raw_len_is_rejected_before_allocating() {
        let mut dctx = new_dctx();
        let mut out = Vec::new();
        let e = decode_into(&mut dctx, Codec::Zstd, b"xx", u64::MAX, None, &mut out).unwrap_err();
        assert!(e.contains("more than zstd can produce"), "{e}");
    }

    /// walk_frame finds the same frame end as zstd's `ZSTD_findFrameCompressedSize` on frames
    /// of every block type, with and without content checksum, read in any piece size, and
    /// reports trailing bytes, a skippable frame and a cut frame.
    #[test]
    fn walk_frame_agrees_with_zstd() {
        let text = b"walk the frame, walk the frame ".repeat(20_000);
        let zeros = vec![0u8; 300_000]; // RLE blocks
        let mut noise = vec![0u8; 200_000]; // raw blocks
        let mut x = 1u64;
        for b in noise.iter_mut() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
        let walk = |stored: &[u8]| {
            walk_frame(stored.len() as u64, &mut |off, b| {
                let off = off as usize;
                b.copy_from_slice(&stored[off..off + b.len()]);
                Ok(())
            })
            .unwrap()
        };
        for raw in [&text[..], &zeros, &noise, b"x"] {
            for checksum in [false, true] {
                let mut c = zstd::bulk::Compressor::new(3).unwrap();
                c.include_checksum(checksum).unwrap();
                let f = c.compress(raw).unwrap();
                let n = zstd_safe::find_frame_compressed_size(&f).unwrap() as u64;
                assert_eq!(walk(&f), Ok(n), "{} bytes, checksum {checksum}", raw.len());
                let two = [f.clone(), f.clone()].concat();
                assert_eq!(walk(&two), Ok(n));
                assert!(walk(&f[..f.len() - 1]).is_err());
                let mut skip = vec![0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
                skip.extend_from_slice(&f);
                assert_eq!(walk(&skip), Err(DecodeError::SkippableFrame));
                // Damaged headers: never a panic, and never a frame end other than zstd's
                // where zstd accepts the bytes as one frame.
                for at in 0..f.len().min(64) {
                    for bit in 0..8 {
                        let mut m = f.clone();
                        m[at] ^= 1 << bit;
                        let w = walk(&m);
                        if check_frame(&m).is_ok() {
                            assert_eq!(w, Ok(m.len() as u64), "byte {at} bit {bit}");
                        }
                    }
                }
            }
        }
    }
}

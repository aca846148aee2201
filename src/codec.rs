//! Record encoding and decoding: raw, zstd, and zstd with a trained dictionary.
//!
//! The compression unit is the record: every compressed record is one zstd frame, so random
//! access touches exactly one record.

use std::fmt;
use std::str::FromStr;

use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

use crate::format::Codec;

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
            (Codec::ZstdDict, Some(d)) => {
                Some(CDict::try_create(d, level).ok_or("zstd could not load the dictionary")?)
            }
            (Codec::ZstdDict, None) => return Err("zstd-dict needs a dictionary".into()),
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

/// Decodes a compressed record into `out` (cleared first), checking that it yields exactly
/// `raw_len` bytes. `dict` must be given for [`Codec::ZstdDict`].
pub fn decode_into(
    dctx: &mut DCtx<'_>,
    codec: Codec,
    stored: &[u8],
    raw_len: u64,
    dict: Option<&DecodeDict>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.clear();
    if raw_len > max_decoded_len(stored.len() as u64) {
        return Err(format!(
            "claims {raw_len} decoded bytes from {} stored bytes, more than zstd can produce",
            stored.len()
        ));
    }
    let n = usize::try_from(raw_len).map_err(|_| "record too large for this platform")?;
    match codec {
        Codec::Raw => {
            out.try_reserve_exact(stored.len())
                .map_err(|_| format!("cannot allocate {} bytes", stored.len()))?;
            out.extend_from_slice(stored);
        }
        Codec::Zstd | Codec::ZstdDict => {
            if codec == Codec::ZstdDict && dict.is_none() {
                return Err("dictionary missing".into());
            }
            // Memory follows the real output, not the claimed length. When the frame header
            // states the same size as the index (as every frame shardpack writes does), and it
            // is not huge, decode in one pass into raw_len + 1 bytes (the extra byte lets a
            // frame that decodes to more be noticed). Otherwise start from a size typical data
            // fits in and double while zstd says the buffer is too small: a corrupt record
            // claiming a huge length fails at the first try.
            const TRUST_HEADER_UP_TO: u64 = 64 << 20;
            let header_agrees = raw_len <= TRUST_HEADER_UP_TO
                && zstd_safe::get_frame_content_size(stored).ok().flatten() == Some(raw_len);
            let mut cap = if header_agrees {
                n + 1
            } else {
                n.saturating_add(1)
                    .min(stored.len().saturating_mul(8).saturating_add(64 << 10))
            };
            loop {
                out.clear();
                out.try_reserve_exact(cap)
                    .map_err(|_| format!("cannot allocate {cap} bytes to decode the record"))?;
                let res = match dict {
                    Some(d) if codec == Codec::ZstdDict => {
                        dctx.decompress_using_ddict(out, stored, &d.0)
                    }
                    _ => dctx.decompress(out, stored),
                };
                match res {
                    Ok(_) => break,
                    Err(code) if cap <= n && is_dst_too_small(code) => {
                        cap = cap.saturating_mul(2).min(n + 1);
                    }
                    Err(code) => {
                        return Err(format!("zstd: {}", zstd_safe::get_error_name(code)));
                    }
                }
            }
        }
    }
    if out.len() as u64 != raw_len {
        return Err(format!(
            "decoded to {} bytes, the index says {raw_len}",
            out.len()
        ));
    }
    Ok(())
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

/// A fresh decompression context.
pub fn new_dctx() -> DCtx<'static> {
    DCtx::create()
}

/// Trains a zstd dictionary of at most `max_size` bytes on `samples`. `None` when zstd cannot
/// train one (too few or too small samples).
pub fn train_dictionary(samples: &[&[u8]], max_size: usize) -> Option<Vec<u8>> {
    let total: usize = samples.iter().map(|s| s.len()).sum();
    let mut data = Vec::with_capacity(total);
    let mut sizes = Vec::with_capacity(samples.len());
    for s in samples {
        data.extend_from_slice(s);
        sizes.push(s.len());
    }
    let mut dict = Vec::with_capacity(max_size);
    zstd_safe::train_from_buffer(&mut dict, &data, &sizes).ok()?;
    Some(dict)
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
}

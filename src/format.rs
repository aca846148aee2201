//! The byte layout of a shard file, mirroring `format-spec/shard.md`.
//!
//! This module does no I/O. It knows where every field sits, encodes the fixed-width
//! structures into bytes and decodes them back, validating bounds, alignment, counts and
//! checksums before anything is trusted. All integers are little-endian.
//!
//! ```text
//! 0            4096                                              file_len - 96
//! | header | pad | data region (records) | pad | dicts | pad | index | footer |
//! ```
//!
//! Every offset below is derived from the previous field plus its size; the constants are the
//! only place the numbers live.

use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use crate::hash::xxh3_64;

/// The 8 bytes that start every shard file and end its footer.
pub const MAGIC: [u8; 8] = *b"SHRDPACK";

/// Regions (data, dictionaries, index) start on multiples of this, so any of them can be read
/// with `O_DIRECT`.
pub const REGION_ALIGN: u64 = 4096;

/// The smallest record alignment a writer may use, and the default.
pub const MIN_RECORD_ALIGN: u64 = 8;

/// The largest record alignment a writer may use (1 MiB).
pub const MAX_RECORD_ALIGN: u64 = 1 << 20;

/// The smallest possible shard file: the header's 4096-byte block, the 64-byte index header
/// (the index of a shard with no fields and no samples) and the footer.
pub const MIN_SHARD_LEN: u64 = REGION_ALIGN + 64 + 96;

/// The four bytes every zstd dictionary in a shard starts with (RFC 8878 section 5).
pub const DICT_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

/// The label value stored for a sample without a label.
pub const NO_LABEL: u32 = u32::MAX;

/// Format versions this code knows. Decoding is exhaustive: any other number is an error that
/// names the supported range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Version {
    /// Format version 1 (`format-spec/`).
    V1,
}

impl Version {
    /// The version a writer produces.
    pub const CURRENT: Version = Version::V1;
    /// Lowest and highest version number this build reads.
    pub const SUPPORTED: (u32, u32) = (1, 1);

    /// Decodes a version number; `None` for a number this build does not know.
    pub fn from_u32(v: u32) -> Option<Version> {
        match v {
            1 => Some(Version::V1),
            _ => None,
        }
    }

    /// The number stored on disk.
    pub fn as_u32(self) -> u32 {
        match self {
            Version::V1 => 1,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u32())
    }
}

/// How a record's stored bytes turn into its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// Stored as is; readers hand out a slice of the file.
    Raw,
    /// One zstd frame.
    Zstd,
    /// One zstd frame compressed with the field's dictionary.
    ZstdDict,
    /// An 8-byte reference to an earlier record of the same field in the shard (its *base*),
    /// then one zstd frame compressed with the base's data as a raw-content prefix
    /// (`format-spec/shard.md` section 6.1; manifest feature [`ZSTD_REF_FEATURE`]). Only a
    /// record's codec, never a field's.
    ZstdRef,
}

/// The manifest feature (`features.required`) of a dataset with [`Codec::ZstdRef`] records.
pub const ZSTD_REF_FEATURE: &str = "zstd-ref";

/// The largest data a [`Codec::ZstdRef`] record and its base may each have: 16 MiB.
pub const REF_MAX_LEN: u64 = 16 << 20;

/// Bytes before the frame in a [`Codec::ZstdRef`] record: the base's record index (u64).
pub const REF_HEADER_LEN: usize = 8;

impl Codec {
    /// Decodes a codec number.
    pub fn from_u32(v: u32) -> Option<Codec> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::ZstdDict),
            3 => Some(Codec::ZstdRef),
            _ => None,
        }
    }

    /// The number stored on disk.
    pub fn as_u32(self) -> u32 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
            Codec::ZstdDict => 2,
            Codec::ZstdRef => 3,
        }
    }

    /// The name used in manifests and reports.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "none",
            Codec::Zstd => "zstd",
            Codec::ZstdDict => "zstd-dict",
            Codec::ZstdRef => "zstd-ref",
        }
    }
}

/// A structural problem found while decoding bytes: which region, at which file offset, and
/// what was wrong. The reader adds the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// The region of the shard (e.g. `"footer"`, `"index/records"`).
    pub region: &'static str,
    /// Absolute byte offset in the shard file where the problem is.
    pub offset: u64,
    /// What is wrong.
    pub kind: FormatErrorKind,
}

/// The kinds of [`FormatError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatErrorKind {
    /// The file is shorter than the structure that should be there.
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The magic bytes are wrong: not a shard file.
    BadMagic,
    /// A version number this build does not read.
    UnsupportedVersion(u32),
    /// A checksum does not match the bytes it covers.
    ChecksumMismatch {
        /// The stored checksum.
        stored: u64,
        /// The checksum of the bytes as they are.
        actual: u64,
    },
    /// Any other inconsistency (bounds, alignment, counts, reserved bits).
    Invalid(String),
    /// Two samples of the shard have the same key (`verify`).
    DuplicateKey {
        /// The earlier sample (index within the shard).
        first: u64,
        /// The later sample.
        second: u64,
    },
    /// A sample has no records (`verify`).
    EmptySample {
        /// The sample (index within the shard).
        sample: u64,
    },
    /// A field name contains `/` or a NUL byte (open).
    UnsafeFieldName {
        /// The field index.
        field: u64,
    },
    /// The key-hash table is not sorted by `(hash, sample)` (`verify`, and lookups that meet
    /// the inversion).
    KeyHashOrder {
        /// The first entry out of order.
        entry: u64,
    },
    /// A dictionary does not start with the zstd dictionary magic `37 a4 30 ec` (open).
    DictionaryMagic {
        /// The field index.
        field: u64,
    },
    /// A field whose codec is not zstd-dict has a dictionary (open).
    DictionaryOnPlainField {
        /// The field index.
        field: u64,
        /// The field's codec.
        codec: Codec,
    },
    /// A record's codec is neither raw nor its field's codec (on access).
    RecordCodecMismatch {
        /// The record index.
        record: u64,
        /// The record's codec.
        record_codec: Codec,
        /// The field's codec.
        field_codec: Codec,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}: ", self.region, self.offset)?;
        match &self.kind {
            FormatErrorKind::Truncated { needed, available } => write!(
                f,
                "truncated: needs {needed} bytes, only {available} present (file cut short?)"
            ),
            FormatErrorKind::BadMagic => {
                write!(f, "bad magic bytes: this is not a shardpack shard")
            }
            FormatErrorKind::UnsupportedVersion(v) => write!(
                f,
                "shard format version {v} is not supported by this reader (it reads shard \
                 versions {}..={}); upgrade shardpack",
                Version::SUPPORTED.0,
                Version::SUPPORTED.1
            ),
            FormatErrorKind::ChecksumMismatch { stored, actual } => write!(
                f,
                "checksum mismatch (stored {stored:016x}, computed {actual:016x}): the bytes are corrupt"
            ),
            FormatErrorKind::Invalid(s) => f.write_str(s),
            FormatErrorKind::DuplicateKey { first, second } => write!(
                f,
                "duplicate key: samples {first} and {second} have the same key; keys must be \
                 unique"
            ),
            FormatErrorKind::EmptySample { sample } => {
                write!(f, "sample {sample} has no records; every sample has at least one")
            }
            FormatErrorKind::UnsafeFieldName { field } => write!(
                f,
                "field {field}'s name contains '/' or a NUL byte; extracting it would write \
                 outside the sample's name"
            ),
            FormatErrorKind::KeyHashOrder { entry } => write!(
                f,
                "key-hash table out of order at entry {entry}: lookups by key cannot be trusted"
            ),
            FormatErrorKind::DictionaryMagic { field } => write!(
                f,
                "the dictionary of field {field} does not start with the zstd dictionary magic \
                 37 a4 30 ec"
            ),
            FormatErrorKind::DictionaryOnPlainField { field, codec } => write!(
                f,
                "field {field} has a dictionary but its codec is {}; only zstd-dict fields have \
                 one",
                codec.name()
            ),
            FormatErrorKind::RecordCodecMismatch {
                record,
                record_codec,
                field_codec,
            } => write!(
                f,
                "record {record} is stored as {} but its field's codec is {}; a record is raw, \
                 its field's codec, or zstd-ref in a compressed field",
                record_codec.name(),
                field_codec.name()
            ),
        }
    }
}

impl std::error::Error for FormatError {}

fn err(region: &'static str, offset: u64, kind: FormatErrorKind) -> FormatError {
    FormatError {
        region,
        offset,
        kind,
    }
}

fn invalid(region: &'static str, offset: u64, msg: impl Into<String>) -> FormatError {
    err(region, offset, FormatErrorKind::Invalid(msg.into()))
}

/// Rounds `v` up to a multiple of `align` (a power of two). `None` on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(v.checked_add(align - 1)? & !(align - 1))
}

#[inline]
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[inline]
fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

#[inline]
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[inline]
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

/// The shard header: the first [`Header::SIZE`] bytes of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: Version,
    /// Position of this shard in its dataset (0-based).
    pub shard_index: u64,
    /// Record alignment the writer used (power of two, 8..=1 MiB).
    pub record_align: u64,
    /// Where the data region starts (always [`REGION_ALIGN`] in version 1).
    pub data_offset: u64,
}

impl Header {
    /// Bytes 0..8: magic.
    pub const MAGIC_AT: usize = 0;
    /// Bytes 8..12: version (u32).
    pub const VERSION_AT: usize = Self::MAGIC_AT + 8;
    /// Bytes 12..16: flags (u32), must be 0.
    pub const FLAGS_AT: usize = Self::VERSION_AT + 4;
    /// Bytes 16..24: shard index (u64).
    pub const SHARD_INDEX_AT: usize = Self::FLAGS_AT + 4;
    /// Bytes 24..32: record alignment (u64).
    pub const ALIGN_AT: usize = Self::SHARD_INDEX_AT + 8;
    /// Bytes 32..40: data region offset (u64).
    pub const DATA_OFFSET_AT: usize = Self::ALIGN_AT + 8;
    /// Bytes 40..56: reserved, zero.
    pub const RESERVED_AT: usize = Self::DATA_OFFSET_AT + 8;
    /// Bytes 56..64: xxh3-64 of bytes 0..56.
    pub const CHECKSUM_AT: usize = Self::RESERVED_AT + 16;
    /// Size of the header.
    pub const SIZE: usize = Self::CHECKSUM_AT + 8;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[Self::MAGIC_AT..Self::MAGIC_AT + 8].copy_from_slice(&MAGIC);
        put_u32(&mut b, Self::VERSION_AT, self.version.as_u32());
        put_u32(&mut b, Self::FLAGS_AT, 0);
        put_u64(&mut b, Self::SHARD_INDEX_AT, self.shard_index);
        put_u64(&mut b, Self::ALIGN_AT, self.record_align);
        put_u64(&mut b, Self::DATA_OFFSET_AT, self.data_offset);
        let sum = xxh3_64(&b[..Self::CHECKSUM_AT]);
        put_u64(&mut b, Self::CHECKSUM_AT, sum);
        b
    }

    /// Decodes and validates the header at the start of `file`.
    pub fn decode(file: &[u8]) -> Result<Header, FormatError> {
        const R: &str = "header";
        if file.len() < Self::SIZE {
            return Err(err(
                R,
                0,
                FormatErrorKind::Truncated {
                    needed: Self::SIZE as u64,
                    available: file.len() as u64,
                },
            ));
        }
        let b = &file[..Self::SIZE];
        if b[..8] != MAGIC {
            return Err(err(R, 0, FormatErrorKind::BadMagic));
        }
        // The version is checked before the checksum: a future version may lay the header out
        // differently, and "unsupported version" is the useful message then.
        let v = get_u32(b, Self::VERSION_AT);
        let version = Version::from_u32(v).ok_or(err(
            R,
            Self::VERSION_AT as u64,
            FormatErrorKind::UnsupportedVersion(v),
        ))?;
        let stored = get_u64(b, Self::CHECKSUM_AT);
        let actual = xxh3_64(&b[..Self::CHECKSUM_AT]);
        if stored != actual {
            return Err(err(
                R,
                Self::CHECKSUM_AT as u64,
                FormatErrorKind::ChecksumMismatch { stored, actual },
            ));
        }
        if get_u32(b, Self::FLAGS_AT) != 0 {
            return Err(invalid(
                R,
                Self::FLAGS_AT as u64,
                "unknown header flags set",
            ));
        }
        if b[Self::RESERVED_AT..Self::CHECKSUM_AT]
            .iter()
            .any(|&x| x != 0)
        {
            return Err(invalid(
                R,
                Self::RESERVED_AT as u64,
                "reserved bytes are not zero",
            ));
        }
        let record_align = get_u64(b, Self::ALIGN_AT);
        if !record_align.is_power_of_two()
            || !(MIN_RECORD_ALIGN..=MAX_RECORD_ALIGN).contains(&record_align)
        {
            return Err(invalid(
                R,
                Self::ALIGN_AT as u64,
                format!("record alignment {record_align} is not a power of two in 8..=1048576"),
            ));
        }
        let data_offset = get_u64(b, Self::DATA_OFFSET_AT);
        if data_offset != REGION_ALIGN {
            return Err(invalid(
                R,
                Self::DATA_OFFSET_AT as u64,
                format!("data offset {data_offset} is not {REGION_ALIGN}"),
            ));
        }
        Ok(Header {
            version,
            shard_index: get_u64(b, Self::SHARD_INDEX_AT),
            record_align,
            data_offset,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Footer
// ---------------------------------------------------------------------------------------------

/// The shard footer: the last [`Footer::SIZE`] bytes of the file. It locates every region and
/// carries the index checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Start of the data region.
    pub data_offset: u64,
    /// Bytes from the data offset to the end of the last record.
    pub data_len: u64,
    /// Start of the dictionary region (4096-aligned).
    pub dict_offset: u64,
    /// Length of the dictionary region.
    pub dict_len: u64,
    /// Start of the index region (4096-aligned).
    pub index_offset: u64,
    /// Length of the index region; the footer follows it directly.
    pub index_len: u64,
    /// xxh3-64 of the index region's bytes.
    pub index_checksum: u64,
    /// Number of samples in the shard.
    pub sample_count: u64,
    /// Number of records in the shard.
    pub record_count: u64,
    /// Format version (repeated from the header).
    pub version: Version,
}

impl Footer {
    /// Bytes 0..8: data offset.
    pub const DATA_OFFSET_AT: usize = 0;
    /// Bytes 8..16: data length.
    pub const DATA_LEN_AT: usize = Self::DATA_OFFSET_AT + 8;
    /// Bytes 16..24: dictionary region offset.
    pub const DICT_OFFSET_AT: usize = Self::DATA_LEN_AT + 8;
    /// Bytes 24..32: dictionary region length.
    pub const DICT_LEN_AT: usize = Self::DICT_OFFSET_AT + 8;
    /// Bytes 32..40: index region offset.
    pub const INDEX_OFFSET_AT: usize = Self::DICT_LEN_AT + 8;
    /// Bytes 40..48: index region length.
    pub const INDEX_LEN_AT: usize = Self::INDEX_OFFSET_AT + 8;
    /// Bytes 48..56: xxh3-64 of the index region.
    pub const INDEX_CHECKSUM_AT: usize = Self::INDEX_LEN_AT + 8;
    /// Bytes 56..64: sample count.
    pub const SAMPLE_COUNT_AT: usize = Self::INDEX_CHECKSUM_AT + 8;
    /// Bytes 64..72: record count.
    pub const RECORD_COUNT_AT: usize = Self::SAMPLE_COUNT_AT + 8;
    /// Bytes 72..76: version (u32).
    pub const VERSION_AT: usize = Self::RECORD_COUNT_AT + 8;
    /// Bytes 76..80: flags (u32), must be 0.
    pub const FLAGS_AT: usize = Self::VERSION_AT + 4;
    /// Bytes 80..88: xxh3-64 of footer bytes 0..80.
    pub const CHECKSUM_AT: usize = Self::FLAGS_AT + 4;
    /// Bytes 88..96: magic.
    pub const MAGIC_AT: usize = Self::CHECKSUM_AT + 8;
    /// Size of the footer.
    pub const SIZE: usize = Self::MAGIC_AT + 8;

    /// Encodes the footer.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, Self::DATA_OFFSET_AT, self.data_offset);
        put_u64(&mut b, Self::DATA_LEN_AT, self.data_len);
        put_u64(&mut b, Self::DICT_OFFSET_AT, self.dict_offset);
        put_u64(&mut b, Self::DICT_LEN_AT, self.dict_len);
        put_u64(&mut b, Self::INDEX_OFFSET_AT, self.index_offset);
        put_u64(&mut b, Self::INDEX_LEN_AT, self.index_len);
        put_u64(&mut b, Self::INDEX_CHECKSUM_AT, self.index_checksum);
        put_u64(&mut b, Self::SAMPLE_COUNT_AT, self.sample_count);
        put_u64(&mut b, Self::RECORD_COUNT_AT, self.record_count);
        put_u32(&mut b, Self::VERSION_AT, self.version.as_u32());
        put_u32(&mut b, Self::FLAGS_AT, 0);
        let sum = xxh3_64(&b[..Self::CHECKSUM_AT]);
        put_u64(&mut b, Self::CHECKSUM_AT, sum);
        b[Self::MAGIC_AT..].copy_from_slice(&MAGIC);
        b
    }

    /// Decodes the footer at the end of `file` and checks that the regions it names fit the
    /// file, in order, with the required alignment. Does not checksum the index.
    pub fn decode(file: &[u8]) -> Result<Footer, FormatError> {
        const R: &str = "footer";
        let len = file.len() as u64;
        let min = MIN_SHARD_LEN;
        if len < min {
            return Err(err(
                R,
                len.saturating_sub(Self::SIZE as u64),
                FormatErrorKind::Truncated {
                    needed: min,
                    available: len,
                },
            ));
        }
        Footer::decode_tail(&file[file.len() - Self::SIZE..], len)
    }

    /// [`Footer::decode`] from the file's last [`Footer::SIZE`] bytes `tail` and its length
    /// `len` (at least [`MIN_SHARD_LEN`]), so a reader can check a footer without mapping or
    /// reading the rest of the file. Same checks, same errors.
    pub fn decode_tail(tail: &[u8], len: u64) -> Result<Footer, FormatError> {
        const R: &str = "footer";
        if len < MIN_SHARD_LEN {
            return Err(err(
                R,
                len.saturating_sub(Self::SIZE as u64),
                FormatErrorKind::Truncated {
                    needed: MIN_SHARD_LEN,
                    available: len,
                },
            ));
        }
        if tail.len() != Self::SIZE {
            return Err(err(
                R,
                len - Self::SIZE as u64,
                FormatErrorKind::Truncated {
                    needed: Self::SIZE as u64,
                    available: tail.len() as u64,
                },
            ));
        }
        let b = tail;
        let at = len - Self::SIZE as u64;
        if b[Self::MAGIC_AT..] != MAGIC {
            return Err(err(
                R,
                at + Self::MAGIC_AT as u64,
                FormatErrorKind::BadMagic,
            ));
        }
        let v = get_u32(b, Self::VERSION_AT);
        let version = Version::from_u32(v).ok_or(err(
            R,
            at + Self::VERSION_AT as u64,
            FormatErrorKind::UnsupportedVersion(v),
        ))?;
        let stored = get_u64(b, Self::CHECKSUM_AT);
        let actual = xxh3_64(&b[..Self::CHECKSUM_AT]);
        if stored != actual {
            return Err(err(
                R,
                at + Self::CHECKSUM_AT as u64,
                FormatErrorKind::ChecksumMismatch { stored, actual },
            ));
        }
        if get_u32(b, Self::FLAGS_AT) != 0 {
            return Err(invalid(
                R,
                at + Self::FLAGS_AT as u64,
                "unknown footer flags set",
            ));
        }
        let f = Footer {
            data_offset: get_u64(b, Self::DATA_OFFSET_AT),
            data_len: get_u64(b, Self::DATA_LEN_AT),
            dict_offset: get_u64(b, Self::DICT_OFFSET_AT),
            dict_len: get_u64(b, Self::DICT_LEN_AT),
            index_offset: get_u64(b, Self::INDEX_OFFSET_AT),
            index_len: get_u64(b, Self::INDEX_LEN_AT),
            index_checksum: get_u64(b, Self::INDEX_CHECKSUM_AT),
            sample_count: get_u64(b, Self::SAMPLE_COUNT_AT),
            record_count: get_u64(b, Self::RECORD_COUNT_AT),
            version,
        };
        f.validate_layout(len)
            .map_err(|msg| invalid(R, at, format!("{msg} (file is {len} bytes)")))?;
        Ok(f)
    }

    /// Checks that the regions are in order, aligned and end exactly where the footer starts.
    fn validate_layout(&self, file_len: u64) -> Result<(), String> {
        let footer_at = file_len - Self::SIZE as u64;
        if self.data_offset != REGION_ALIGN {
            return Err(format!(
                "data offset {} is not {REGION_ALIGN}",
                self.data_offset
            ));
        }
        let data_end = self
            .data_offset
            .checked_add(self.data_len)
            .ok_or("data region overflows")?;
        if self.dict_offset % REGION_ALIGN != 0 || self.index_offset % REGION_ALIGN != 0 {
            return Err("dictionary or index region is not 4096-aligned".into());
        }
        if self.dict_offset < data_end {
            return Err("dictionary region overlaps the data region".into());
        }
        let dict_end = self
            .dict_offset
            .checked_add(self.dict_len)
            .ok_or("dictionary region overflows")?;
        if self.index_offset < dict_end {
            return Err("index region overlaps the dictionary region".into());
        }
        let index_end = self
            .index_offset
            .checked_add(self.index_len)
            .ok_or("index region overflows")?;
        if index_end != footer_at {
            return Err(format!(
                "index ends at {index_end} but the footer starts at {footer_at}"
            ));
        }
        if self.index_len % 8 != 0 {
            return Err("index length is not a multiple of 8".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Index
// ---------------------------------------------------------------------------------------------

/// The fixed part at the start of the index region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    /// Number of samples (entries in the sample and key-hash tables).
    pub sample_count: u64,
    /// Number of records.
    pub record_count: u64,
    /// Number of fields.
    pub field_count: u64,
    /// Length of the key bytes table.
    pub key_bytes_len: u64,
    /// Length of the field-name bytes table.
    pub name_bytes_len: u64,
    /// Global id (across the dataset) of this shard's first sample.
    pub first_sample: u64,
}

impl IndexHeader {
    /// Bytes 0..8: sample count.
    pub const SAMPLE_COUNT_AT: usize = 0;
    /// Bytes 8..16: record count.
    pub const RECORD_COUNT_AT: usize = Self::SAMPLE_COUNT_AT + 8;
    /// Bytes 16..24: field count.
    pub const FIELD_COUNT_AT: usize = Self::RECORD_COUNT_AT + 8;
    /// Bytes 24..32: key bytes length.
    pub const KEY_BYTES_AT: usize = Self::FIELD_COUNT_AT + 8;
    /// Bytes 32..40: name bytes length.
    pub const NAME_BYTES_AT: usize = Self::KEY_BYTES_AT + 8;
    /// Bytes 40..48: global id of the first sample.
    pub const FIRST_SAMPLE_AT: usize = Self::NAME_BYTES_AT + 8;
    /// Bytes 48..64: reserved, zero.
    pub const RESERVED_AT: usize = Self::FIRST_SAMPLE_AT + 8;
    /// Size of the index header.
    pub const SIZE: usize = Self::RESERVED_AT + 16;

    /// Encodes the index header.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, Self::SAMPLE_COUNT_AT, self.sample_count);
        put_u64(&mut b, Self::RECORD_COUNT_AT, self.record_count);
        put_u64(&mut b, Self::FIELD_COUNT_AT, self.field_count);
        put_u64(&mut b, Self::KEY_BYTES_AT, self.key_bytes_len);
        put_u64(&mut b, Self::NAME_BYTES_AT, self.name_bytes_len);
        put_u64(&mut b, Self::FIRST_SAMPLE_AT, self.first_sample);
        b
    }

    /// Where each table starts inside the index region, derived from the counts. `None` on
    /// arithmetic overflow.
    pub fn layout(&self) -> Option<IndexLayout> {
        let fields = Self::SIZE as u64;
        let samples = fields.checked_add(self.field_count.checked_mul(FieldEntry::SIZE as u64)?)?;
        let records =
            samples.checked_add(self.sample_count.checked_mul(SampleEntry::SIZE as u64)?)?;
        let key_hashes =
            records.checked_add(self.record_count.checked_mul(RecordEntry::SIZE as u64)?)?;
        let keys =
            key_hashes.checked_add(self.sample_count.checked_mul(KeyHashEntry::SIZE as u64)?)?;
        let names = align_up(keys.checked_add(self.key_bytes_len)?, 8)?;
        let end = align_up(names.checked_add(self.name_bytes_len)?, 8)?;
        Some(IndexLayout {
            fields,
            samples,
            records,
            key_hashes,
            keys,
            names,
            end,
        })
    }
}

/// Offsets of the index tables, relative to the start of the index region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLayout {
    /// Field table.
    pub fields: u64,
    /// Sample table.
    pub samples: u64,
    /// Record table.
    pub records: u64,
    /// Key-hash table.
    pub key_hashes: u64,
    /// Key bytes.
    pub keys: u64,
    /// Field-name bytes (8-aligned).
    pub names: u64,
    /// End of the index (8-aligned); equals the index length.
    pub end: u64,
}

/// One entry of the field table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldEntry {
    /// Offset of the name in the name table.
    pub name_offset: u64,
    /// Length of the name.
    pub name_len: u64,
    /// The codec the writer chose for this field (records carry their own).
    pub codec: Codec,
    /// zstd level used (0 for raw).
    pub level: i32,
    /// Absolute file offset of the field's zstd dictionary (0 if none).
    pub dict_offset: u64,
    /// Length of the dictionary (0 if none).
    pub dict_len: u64,
    /// xxh3-64 of the dictionary bytes (0 if none).
    pub dict_checksum: u64,
}

impl FieldEntry {
    /// Bytes 0..8: name offset.
    pub const NAME_OFFSET_AT: usize = 0;
    /// Bytes 8..16: name length.
    pub const NAME_LEN_AT: usize = Self::NAME_OFFSET_AT + 8;
    /// Bytes 16..20: codec (u32).
    pub const CODEC_AT: usize = Self::NAME_LEN_AT + 8;
    /// Bytes 20..24: zstd level (i32).
    pub const LEVEL_AT: usize = Self::CODEC_AT + 4;
    /// Bytes 24..32: dictionary offset.
    pub const DICT_OFFSET_AT: usize = Self::LEVEL_AT + 4;
    /// Bytes 32..40: dictionary length.
    pub const DICT_LEN_AT: usize = Self::DICT_OFFSET_AT + 8;
    /// Bytes 40..48: dictionary checksum.
    pub const DICT_CHECKSUM_AT: usize = Self::DICT_LEN_AT + 8;
    /// Size of one entry.
    pub const SIZE: usize = Self::DICT_CHECKSUM_AT + 8;

    /// Appends the encoded entry to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, Self::NAME_OFFSET_AT, self.name_offset);
        put_u64(&mut b, Self::NAME_LEN_AT, self.name_len);
        put_u32(&mut b, Self::CODEC_AT, self.codec.as_u32());
        b[Self::LEVEL_AT..Self::LEVEL_AT + 4].copy_from_slice(&self.level.to_le_bytes());
        put_u64(&mut b, Self::DICT_OFFSET_AT, self.dict_offset);
        put_u64(&mut b, Self::DICT_LEN_AT, self.dict_len);
        put_u64(&mut b, Self::DICT_CHECKSUM_AT, self.dict_checksum);
        out.extend_from_slice(&b);
    }

    /// Decodes one entry (bounds are the caller's; `b` is exactly [`FieldEntry::SIZE`] bytes).
    pub fn decode(b: &[u8], at: u64) -> Result<FieldEntry, FormatError> {
        let c = get_u32(b, Self::CODEC_AT);
        // zstd-ref is a record's codec only: a field's codec is 0, 1 or 2.
        let codec = Codec::from_u32(c)
            .filter(|c| *c != Codec::ZstdRef)
            .ok_or_else(|| {
                invalid(
                    "index/fields",
                    at + Self::CODEC_AT as u64,
                    format!("unknown codec {c}"),
                )
            })?;
        let mut l = [0u8; 4];
        l.copy_from_slice(&b[Self::LEVEL_AT..Self::LEVEL_AT + 4]);
        Ok(FieldEntry {
            name_offset: get_u64(b, Self::NAME_OFFSET_AT),
            name_len: get_u64(b, Self::NAME_LEN_AT),
            codec,
            level: i32::from_le_bytes(l),
            dict_offset: get_u64(b, Self::DICT_OFFSET_AT),
            dict_len: get_u64(b, Self::DICT_LEN_AT),
            dict_checksum: get_u64(b, Self::DICT_CHECKSUM_AT),
        })
    }
}

/// One entry of the sample table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleEntry {
    /// Offset of the key in the key table.
    pub key_offset: u64,
    /// Length of the key.
    pub key_len: u64,
    /// Index of the sample's first record in the record table.
    pub first_record: u64,
    /// Number of records (one per field present).
    pub record_count: u32,
    /// Class label, or [`NO_LABEL`].
    pub label: u32,
}

impl SampleEntry {
    /// Bytes 0..8: key offset.
    pub const KEY_OFFSET_AT: usize = 0;
    /// Bytes 8..16: key length.
    pub const KEY_LEN_AT: usize = Self::KEY_OFFSET_AT + 8;
    /// Bytes 16..24: first record.
    pub const FIRST_RECORD_AT: usize = Self::KEY_LEN_AT + 8;
    /// Bytes 24..28: record count (u32).
    pub const RECORD_COUNT_AT: usize = Self::FIRST_RECORD_AT + 8;
    /// Bytes 28..32: label (u32).
    pub const LABEL_AT: usize = Self::RECORD_COUNT_AT + 4;
    /// Size of one entry.
    pub const SIZE: usize = Self::LABEL_AT + 4;

    /// Appends the encoded entry to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, Self::KEY_OFFSET_AT, self.key_offset);
        put_u64(&mut b, Self::KEY_LEN_AT, self.key_len);
        put_u64(&mut b, Self::FIRST_RECORD_AT, self.first_record);
        put_u32(&mut b, Self::RECORD_COUNT_AT, self.record_count);
        put_u32(&mut b, Self::LABEL_AT, self.label);
        out.extend_from_slice(&b);
    }

    /// Decodes one entry from exactly [`SampleEntry::SIZE`] bytes.
    #[inline]
    pub fn decode(b: &[u8]) -> SampleEntry {
        SampleEntry {
            key_offset: get_u64(b, Self::KEY_OFFSET_AT),
            key_len: get_u64(b, Self::KEY_LEN_AT),
            first_record: get_u64(b, Self::FIRST_RECORD_AT),
            record_count: get_u32(b, Self::RECORD_COUNT_AT),
            label: get_u32(b, Self::LABEL_AT),
        }
    }
}

/// One entry of the record table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordEntry {
    /// Absolute file offset of the stored bytes (a multiple of the record alignment).
    pub offset: u64,
    /// Length of the stored bytes.
    pub stored_len: u64,
    /// Length of the data after decoding.
    pub raw_len: u64,
    /// xxh3-64 of the stored bytes.
    pub checksum: u64,
    /// Index into the field table.
    pub field: u32,
    /// How the stored bytes decode (a [`Codec`] number).
    pub codec: u32,
}

impl RecordEntry {
    /// Bytes 0..8: offset.
    pub const OFFSET_AT: usize = 0;
    /// Bytes 8..16: stored length.
    pub const STORED_LEN_AT: usize = Self::OFFSET_AT + 8;
    /// Bytes 16..24: raw length.
    pub const RAW_LEN_AT: usize = Self::STORED_LEN_AT + 8;
    /// Bytes 24..32: checksum.
    pub const CHECKSUM_AT: usize = Self::RAW_LEN_AT + 8;
    /// Bytes 32..36: field index (u32).
    pub const FIELD_AT: usize = Self::CHECKSUM_AT + 8;
    /// Bytes 36..40: codec (u32).
    pub const CODEC_AT: usize = Self::FIELD_AT + 4;
    /// Size of one entry.
    pub const SIZE: usize = Self::CODEC_AT + 4;

    /// Appends the encoded entry to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, Self::OFFSET_AT, self.offset);
        put_u64(&mut b, Self::STORED_LEN_AT, self.stored_len);
        put_u64(&mut b, Self::RAW_LEN_AT, self.raw_len);
        put_u64(&mut b, Self::CHECKSUM_AT, self.checksum);
        put_u32(&mut b, Self::FIELD_AT, self.field);
        put_u32(&mut b, Self::CODEC_AT, self.codec);
        out.extend_from_slice(&b);
    }

    /// Decodes one entry from exactly [`RecordEntry::SIZE`] bytes.
    #[inline]
    pub fn decode(b: &[u8]) -> RecordEntry {
        RecordEntry {
            offset: get_u64(b, Self::OFFSET_AT),
            stored_len: get_u64(b, Self::STORED_LEN_AT),
            raw_len: get_u64(b, Self::RAW_LEN_AT),
            checksum: get_u64(b, Self::CHECKSUM_AT),
            field: get_u32(b, Self::FIELD_AT),
            codec: get_u32(b, Self::CODEC_AT),
        }
    }
}

/// One entry of the key-hash table, sorted by `(hash, sample)`: binary search finds a key
/// without scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyHashEntry {
    /// xxh3-64 of the key bytes.
    pub hash: u64,
    /// Sample index within the shard.
    pub sample: u64,
}

impl KeyHashEntry {
    /// Bytes 0..8: hash.
    pub const HASH_AT: usize = 0;
    /// Bytes 8..16: sample index.
    pub const SAMPLE_AT: usize = Self::HASH_AT + 8;
    /// Size of one entry.
    pub const SIZE: usize = Self::SAMPLE_AT + 8;

    /// Appends the encoded entry to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hash.to_le_bytes());
        out.extend_from_slice(&self.sample.to_le_bytes());
    }

    /// Decodes one entry from exactly [`KeyHashEntry::SIZE`] bytes.
    #[inline]
    pub fn decode(b: &[u8]) -> KeyHashEntry {
        KeyHashEntry {
            hash: get_u64(b, Self::HASH_AT),
            sample: get_u64(b, Self::SAMPLE_AT),
        }
    }
}

/// The hash used for keys in the key-hash table.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The checksum of a record's stored bytes.
#[inline]
pub fn record_checksum(stored: &[u8]) -> u64 {
    xxh3_64(stored)
}

/// Check 18 of `format-spec/shard.md` 9.1: the header and footer versions of a file of
/// `file_len` bytes are equal.
pub fn check_versions(header: &Header, footer: &Footer, file_len: u64) -> Result<(), FormatError> {
    if footer.version != header.version {
        return Err(invalid(
            "footer",
            file_len - Footer::SIZE as u64 + Footer::VERSION_AT as u64,
            format!(
                "footer version {} differs from header version {}",
                footer.version, header.version
            ),
        ));
    }
    Ok(())
}

/// A validated view of a whole shard file held in `B` (a memory map, a `Vec`, a slice).
///
/// Construction checks the header, the footer, the index checksum and that every table fits
/// the index region. Per-entry checks (record bounds, key bounds, field ids) happen when an
/// entry is read, in O(1), so opening does no per-sample work beyond the checksum.
#[derive(Debug)]
pub struct ShardBytes<B> {
    bytes: B,
    header: Header,
    footer: Footer,
    index: IndexHeader,
    layout: IndexLayout,
    fields: Vec<FieldEntry>,
    /// The outcome of [`ShardBytes::check_key_hashes`], once a lookup has needed it.
    key_table_checked: OnceLock<Result<(), FormatError>>,
}

impl<B: AsRef<[u8]>> ShardBytes<B> {
    /// Validates `bytes` as a shard file: header, footer, region layout, index checksum,
    /// table sizes against the index length, the field table and dictionary checksums.
    pub fn new(bytes: B) -> Result<Self, FormatError> {
        let b = bytes.as_ref();
        let header = Header::decode(b)?;
        let footer = Footer::decode(b)?;
        check_versions(&header, &footer, b.len() as u64)?;
        let ir = footer.index_offset as usize..(footer.index_offset + footer.index_len) as usize;
        let idx = &b[ir.clone()];
        let actual = xxh3_64(idx);
        if actual != footer.index_checksum {
            return Err(err(
                "index",
                footer.index_offset,
                FormatErrorKind::ChecksumMismatch {
                    stored: footer.index_checksum,
                    actual,
                },
            ));
        }
        let base = footer.index_offset;
        if idx.len() < IndexHeader::SIZE {
            return Err(err(
                "index/header",
                base,
                FormatErrorKind::Truncated {
                    needed: IndexHeader::SIZE as u64,
                    available: idx.len() as u64,
                },
            ));
        }
        if idx[IndexHeader::RESERVED_AT..IndexHeader::SIZE]
            .iter()
            .any(|&x| x != 0)
        {
            return Err(invalid(
                "index/header",
                base + IndexHeader::RESERVED_AT as u64,
                "reserved bytes are not zero",
            ));
        }
        let index = IndexHeader {
            sample_count: get_u64(idx, IndexHeader::SAMPLE_COUNT_AT),
            record_count: get_u64(idx, IndexHeader::RECORD_COUNT_AT),
            field_count: get_u64(idx, IndexHeader::FIELD_COUNT_AT),
            key_bytes_len: get_u64(idx, IndexHeader::KEY_BYTES_AT),
            name_bytes_len: get_u64(idx, IndexHeader::NAME_BYTES_AT),
            first_sample: get_u64(idx, IndexHeader::FIRST_SAMPLE_AT),
        };
        if index.sample_count != footer.sample_count || index.record_count != footer.record_count {
            return Err(invalid(
                "index/header",
                base,
                format!(
                    "counts ({} samples, {} records) disagree with the footer ({}, {})",
                    index.sample_count,
                    index.record_count,
                    footer.sample_count,
                    footer.record_count
                ),
            ));
        }
        if index.field_count > u32::MAX as u64 {
            return Err(invalid("index/header", base, "too many fields"));
        }
        let layout = index
            .layout()
            .filter(|l| l.end == footer.index_len)
            .ok_or_else(|| {
                invalid(
                    "index/header",
                    base,
                    format!(
                        "table sizes from the counts do not add up to the index length {}",
                        footer.index_len
                    ),
                )
            })?;
        let mut fields = Vec::with_capacity(index.field_count as usize);
        for i in 0..index.field_count as usize {
            let at = layout.fields as usize + i * FieldEntry::SIZE;
            let f = FieldEntry::decode(&idx[at..at + FieldEntry::SIZE], base + at as u64)?;
            let name_end = f.name_offset.checked_add(f.name_len);
            if name_end.is_none_or(|e| e > index.name_bytes_len) {
                return Err(invalid(
                    "index/fields",
                    base + at as u64,
                    format!("field {i} name is out of the name table"),
                ));
            }
            let name_at = (layout.names + f.name_offset) as usize;
            if !is_safe_field_name(&idx[name_at..name_at + f.name_len as usize]) {
                return Err(err(
                    "index/fields",
                    base + at as u64,
                    FormatErrorKind::UnsafeFieldName { field: i as u64 },
                ));
            }
            if f.dict_len > 0 {
                let end = f.dict_offset.checked_add(f.dict_len);
                if f.dict_offset < footer.dict_offset
                    || end.is_none_or(|e| e > footer.dict_offset + footer.dict_len)
                {
                    return Err(invalid(
                        "index/fields",
                        base + at as u64,
                        format!("field {i} dictionary is outside the dictionary region"),
                    ));
                }
                let d = &b[f.dict_offset as usize..(f.dict_offset + f.dict_len) as usize];
                let actual = xxh3_64(d);
                if actual != f.dict_checksum {
                    return Err(err(
                        "dictionary",
                        f.dict_offset,
                        FormatErrorKind::ChecksumMismatch {
                            stored: f.dict_checksum,
                            actual,
                        },
                    ));
                }
                if f.dict_offset % 8 != 0 {
                    return Err(invalid(
                        "index/fields",
                        base + at as u64,
                        format!("field {i} dictionary is not 8-aligned"),
                    ));
                }
                if f.codec != Codec::ZstdDict {
                    return Err(err(
                        "index/fields",
                        base + at as u64,
                        FormatErrorKind::DictionaryOnPlainField {
                            field: i as u64,
                            codec: f.codec,
                        },
                    ));
                }
                if !d.starts_with(&DICT_MAGIC) {
                    return Err(err(
                        "dictionary",
                        f.dict_offset,
                        FormatErrorKind::DictionaryMagic { field: i as u64 },
                    ));
                }
            } else if f.codec == Codec::ZstdDict {
                return Err(invalid(
                    "index/fields",
                    base + at as u64,
                    format!("field {i} uses zstd-dict but has no dictionary"),
                ));
            } else if f.dict_offset != 0 || f.dict_checksum != 0 {
                return Err(invalid(
                    "index/fields",
                    base + at as u64,
                    format!("field {i} has no dictionary but non-zero dictionary fields"),
                ));
            }
            fields.push(f);
        }
        Ok(ShardBytes {
            bytes,
            header,
            footer,
            index,
            layout,
            fields,
            key_table_checked: OnceLock::new(),
        })
    }

    /// The whole file.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The decoded footer.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The decoded index header.
    pub fn index_header(&self) -> &IndexHeader {
        &self.index
    }

    /// Number of samples.
    #[inline]
    pub fn sample_count(&self) -> u64 {
        self.index.sample_count
    }

    /// The field table.
    pub fn fields(&self) -> &[FieldEntry] {
        &self.fields
    }

    /// The name bytes of field `i`.
    pub fn field_name(&self, i: usize) -> &[u8] {
        let f = &self.fields[i];
        let start = self.footer.index_offset + self.layout.names + f.name_offset;
        &self.bytes()[start as usize..(start + f.name_len) as usize]
    }

    /// The dictionary of field `i`, if any.
    pub fn field_dict(&self, i: usize) -> Option<&[u8]> {
        let f = &self.fields[i];
        (f.dict_len > 0)
            .then(|| &self.bytes()[f.dict_offset as usize..(f.dict_offset + f.dict_len) as usize])
    }

    #[inline]
    fn index_abs(&self, rel: u64) -> usize {
        (self.footer.index_offset + rel) as usize
    }

    /// The sample entry `i` with its bounds checked (key inside the key table, records inside
    /// the record table). An error if `i >= sample_count`.
    #[inline]
    pub fn sample(&self, i: u64) -> Result<SampleEntry, FormatError> {
        if i >= self.index.sample_count {
            return Err(invalid(
                "index/samples",
                self.footer.index_offset,
                format!(
                    "sample {i} asked for, the shard has {}",
                    self.index.sample_count
                ),
            ));
        }
        let at = self.index_abs(self.layout.samples + i * SampleEntry::SIZE as u64);
        let e = SampleEntry::decode(&self.bytes()[at..at + SampleEntry::SIZE]);
        let key_ok = e
            .key_offset
            .checked_add(e.key_len)
            .is_some_and(|end| end <= self.index.key_bytes_len);
        let rec_ok = e
            .first_record
            .checked_add(e.record_count as u64)
            .is_some_and(|end| end <= self.index.record_count);
        if !key_ok || !rec_ok {
            return Err(invalid(
                "index/samples",
                at as u64,
                format!("sample {i} points outside the key or record table"),
            ));
        }
        Ok(e)
    }

    /// The key bytes of a (checked) sample entry.
    #[inline]
    pub fn key(&self, e: &SampleEntry) -> &[u8] {
        let start = self.index_abs(self.layout.keys + e.key_offset);
        &self.bytes()[start..start + e.key_len as usize]
    }

    /// Record entry `r` with its bounds checked: stored bytes inside the data region and
    /// aligned, field id and codec known. An error if `r >= record_count`.
    #[inline]
    pub fn record(&self, r: u64) -> Result<RecordEntry, FormatError> {
        if r >= self.index.record_count {
            return Err(invalid(
                "index/records",
                self.footer.index_offset,
                format!(
                    "record {r} asked for, the shard has {}",
                    self.index.record_count
                ),
            ));
        }
        let at = self.index_abs(self.layout.records + r * RecordEntry::SIZE as u64);
        let e = RecordEntry::decode(&self.bytes()[at..at + RecordEntry::SIZE]);
        let data_end = self.footer.data_offset + self.footer.data_len;
        let in_data = e.offset >= self.footer.data_offset
            && e.offset
                .checked_add(e.stored_len)
                .is_some_and(|end| end <= data_end);
        if !in_data {
            return Err(invalid(
                "index/records",
                at as u64,
                format!(
                    "record {r} ({} bytes at {}) lies outside the data region",
                    e.stored_len, e.offset
                ),
            ));
        }
        if e.offset % self.header.record_align != 0 {
            return Err(invalid(
                "index/records",
                at as u64,
                format!("record {r} at {} is not aligned", e.offset),
            ));
        }
        if e.field as u64 >= self.index.field_count {
            return Err(invalid(
                "index/records",
                at as u64,
                format!(
                    "record {r} names field {} of {}",
                    e.field, self.index.field_count
                ),
            ));
        }
        match Codec::from_u32(e.codec) {
            None => {
                return Err(invalid(
                    "index/records",
                    at as u64,
                    format!("record {r} has unknown codec {}", e.codec),
                ))
            }
            Some(Codec::Raw) if e.raw_len != e.stored_len => {
                return Err(invalid(
                    "index/records",
                    at as u64,
                    format!("raw record {r} has differing stored and raw lengths"),
                ))
            }
            Some(Codec::ZstdDict) if self.fields[e.field as usize].dict_len == 0 => {
                return Err(invalid(
                    "index/records",
                    at as u64,
                    format!("record {r} uses a dictionary its field does not have"),
                ))
            }
            Some(Codec::ZstdRef)
                if self.fields[e.field as usize].codec != Codec::Raw
                    && e.stored_len >= REF_HEADER_LEN as u64
                    && e.raw_len <= REF_MAX_LEN => {}
            Some(Codec::ZstdRef) if self.fields[e.field as usize].codec == Codec::Raw => {
                return Err(err(
                    "index/records",
                    at as u64,
                    FormatErrorKind::RecordCodecMismatch {
                        record: r,
                        record_codec: Codec::ZstdRef,
                        field_codec: Codec::Raw,
                    },
                ))
            }
            Some(Codec::ZstdRef) => {
                return Err(invalid(
                    "index/records",
                    at as u64,
                    format!(
                        "zstd-ref record {r} has {} stored bytes for {} of data (at least {} \
                         stored, at most {} of data)",
                        e.stored_len, e.raw_len, REF_HEADER_LEN, REF_MAX_LEN
                    ),
                ))
            }
            Some(c) if c != Codec::Raw && c != self.fields[e.field as usize].codec => {
                return Err(err(
                    "index/records",
                    at as u64,
                    FormatErrorKind::RecordCodecMismatch {
                        record: r,
                        record_codec: c,
                        field_codec: self.fields[e.field as usize].codec,
                    },
                ))
            }
            _ => {}
        }
        Ok(e)
    }

    /// The stored bytes of a (checked) record.
    #[inline]
    pub fn stored(&self, e: &RecordEntry) -> &[u8] {
        &self.bytes()[e.offset as usize..(e.offset + e.stored_len) as usize]
    }

    /// The file range of a (checked) record's stored bytes.
    pub fn stored_range(e: &RecordEntry) -> Range<u64> {
        e.offset..e.offset + e.stored_len
    }

    /// Checks the index tables as a whole, in O(samples + records): samples cover the record
    /// table in order without gaps, every sample has records, each sample's fields are strictly
    /// increasing, and the key-hash table is sorted, matches
    /// every key, names each sample exactly once and holds no key twice. Open does not do this
    /// (it would be per-sample work); `verify` does.
    pub fn check_structure(&self) -> Result<(), FormatError> {
        self.check_samples()?;
        self.check_key_hashes()
    }

    /// The sample and record half of [`ShardBytes::check_structure`] (with the field table's
    /// order, and the records' placement in table order without overlap).
    pub fn check_samples(&self) -> Result<(), FormatError> {
        for i in 1..self.fields.len() {
            if self.field_name(i - 1) >= self.field_name(i) {
                return Err(invalid(
                    "index/fields",
                    self.index_abs(self.layout.fields + (i * FieldEntry::SIZE) as u64) as u64,
                    format!("field {i}'s name does not sort after field {}'s", i - 1),
                ));
            }
        }
        let n = self.index.sample_count;
        let mut next_record = 0u64;
        let mut data_end = self.footer.data_offset;
        for i in 0..n {
            let e = self.sample(i)?;
            let at = self.index_abs(self.layout.samples + i * SampleEntry::SIZE as u64) as u64;
            if e.first_record != next_record {
                return Err(invalid(
                    "index/samples",
                    at,
                    format!(
                        "sample {i} starts at record {}, expected {next_record}",
                        e.first_record
                    ),
                ));
            }
            if e.record_count == 0 {
                return Err(err(
                    "index/samples",
                    at,
                    FormatErrorKind::EmptySample { sample: i },
                ));
            }
            let mut last_field = None;
            for r in e.first_record..e.first_record + e.record_count as u64 {
                let rec = self.record(r)?;
                let rat = self.index_abs(self.layout.records + r * RecordEntry::SIZE as u64) as u64;
                if last_field.is_some_and(|l| rec.field <= l) {
                    return Err(invalid(
                        "index/records",
                        rat,
                        format!("record {r}: fields of sample {i} are not strictly increasing"),
                    ));
                }
                last_field = Some(rec.field);
                if rec.offset < data_end {
                    return Err(invalid(
                        "index/records",
                        rat,
                        format!(
                            "record {r} at {} overlaps or precedes the record before it (which \
                             ends at {data_end})",
                            rec.offset
                        ),
                    ));
                }
                data_end = rec.offset + rec.stored_len;
            }
            next_record += e.record_count as u64;
        }
        if next_record != self.index.record_count {
            return Err(invalid(
                "index/samples",
                self.index_abs(self.layout.samples) as u64,
                format!(
                    "samples cover {next_record} records, the table has {}",
                    self.index.record_count
                ),
            ));
        }
        Ok(())
    }

    /// The key-hash half of [`ShardBytes::check_structure`]: sorted by `(hash, sample)`, every
    /// sample named once with the hash of its key, no key twice. O(samples); the first lookup
    /// that finds nothing runs it once (see [`ShardBytes::find_key`]).
    pub fn check_key_hashes(&self) -> Result<(), FormatError> {
        let n = self.index.sample_count;
        let base = self.index_abs(self.layout.key_hashes);
        let mut seen = vec![false; n as usize];
        let mut prev: Option<KeyHashEntry> = None;
        let mut run_start = 0usize;
        for i in 0..n as usize {
            let at = base + i * KeyHashEntry::SIZE;
            let e = KeyHashEntry::decode(&self.bytes()[at..at + KeyHashEntry::SIZE]);
            if prev.is_some_and(|p| p >= e) {
                return Err(err(
                    "index/key-hashes",
                    at as u64,
                    FormatErrorKind::KeyHashOrder { entry: i as u64 },
                ));
            }
            if e.sample >= n || seen[e.sample as usize] {
                return Err(invalid(
                    "index/key-hashes",
                    at as u64,
                    format!("entry {i} names sample {} twice or out of range", e.sample),
                ));
            }
            seen[e.sample as usize] = true;
            let s = self.sample(e.sample)?;
            let key = self.key(&s);
            if key_hash(key) != e.hash {
                return Err(invalid(
                    "index/key-hashes",
                    at as u64,
                    format!(
                        "entry {i} hash does not match the key of sample {}",
                        e.sample
                    ),
                ));
            }
            if prev.is_none_or(|p| p.hash != e.hash) {
                run_start = i;
            }
            // Equal keys have equal hashes: compare with the earlier entries of this run
            // (almost always none; a run longer than one is a hash collision or a duplicate).
            for j in run_start..i {
                let o = KeyHashEntry::decode(
                    &self.bytes()[base + j * KeyHashEntry::SIZE..][..KeyHashEntry::SIZE],
                );
                if self.key(&self.sample(o.sample)?) == key {
                    let (first, second) = (o.sample.min(e.sample), o.sample.max(e.sample));
                    return Err(err(
                        "index/key-hashes",
                        at as u64,
                        FormatErrorKind::DuplicateKey { first, second },
                    ));
                }
            }
            prev = Some(e);
        }
        Ok(())
    }

    /// Finds the sample whose key is `key`, by binary search in the key-hash table.
    ///
    /// An answer "absent" is never wrong: before the first one, the shard's whole key-hash
    /// table is checked once ([`ShardBytes::check_key_hashes`], O(samples), remembered), so a
    /// damaged table gives an error instead.
    pub fn find_key(&self, key: &[u8]) -> Result<Option<u64>, FormatError> {
        let h = key_hash(key);
        let n = self.index.sample_count;
        let base = self.index_abs(self.layout.key_hashes);
        let mut i = self.first_key_hash_at_least(h);
        while i < n {
            let e = self.key_hash_entry(i);
            if e.hash != h {
                break;
            }
            if e.sample >= n {
                return Err(invalid(
                    "index/key-hashes",
                    (base + i as usize * KeyHashEntry::SIZE) as u64,
                    format!("entry {i} names sample {} of {n}", e.sample),
                ));
            }
            let s = self.sample(e.sample)?;
            if self.key(&s) == key {
                return Ok(Some(e.sample));
            }
            i += 1;
        }
        self.key_table_checked
            .get_or_init(|| self.check_key_hashes())
            .clone()?;
        Ok(None)
    }
}

impl<B: AsRef<[u8]>> ShardBytes<B> {
    /// The samples whose key-hash entry holds `hash` (binary search; assumes a sorted table,
    /// which `verify` checks separately).
    pub fn samples_with_hash(&self, hash: u64) -> Vec<u64> {
        let n = self.index.sample_count;
        (self.first_key_hash_at_least(hash)..n)
            .map(|i| self.key_hash_entry(i))
            .take_while(|e| e.hash == hash)
            .filter(|e| e.sample < n)
            .map(|e| e.sample)
            .collect()
    }

    /// Entry `i` of the key-hash table (`i` below the sample count).
    fn key_hash_entry(&self, i: u64) -> KeyHashEntry {
        let at = self.index_abs(self.layout.key_hashes) + (i as usize) * KeyHashEntry::SIZE;
        KeyHashEntry::decode(&self.bytes()[at..at + KeyHashEntry::SIZE])
    }

    /// The first entry of the key-hash table whose hash is at least `h` (binary search over
    /// a table assumed sorted), or the sample count when none is.
    fn first_key_hash_at_least(&self, h: u64) -> u64 {
        let (mut lo, mut hi) = (0u64, self.index.sample_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key_hash_entry(mid).hash < h {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// The relative path a record is extracted to: `key + "." + field`, or `key` alone for the
/// empty field name (`format-spec/manifest.md` section 3).
pub fn extraction_path(key: &[u8], field: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(key.len() + 1 + field.len());
    p.extend_from_slice(key);
    if !field.is_empty() {
        p.push(b'.');
        p.extend_from_slice(field);
    }
    p
}

/// Checks an extraction path the way an extractor must before creating a file: not empty,
/// not absolute, no NUL byte, no empty, `.` or `..` component. The error says which rule.
/// Keys are raw bytes, so a valid dataset may hold a key that fails this: the format does not
/// forbid it, extracting it must (`format-spec/manifest.md` section 3).
pub fn check_extraction_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path[0] == b'/' {
        return Err("is absolute (starts with '/')");
    }
    if path.contains(&0) {
        return Err("contains a NUL byte");
    }
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" => return Err("has an empty component"),
            b"." | b".." => return Err("has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// `true` when a field name may be stored: no `/` and no NUL byte (the empty name is allowed).
pub fn is_safe_field_name(name: &[u8]) -> bool {
    !name.iter().any(|&b| b == b'/' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-sample, one-field raw shard built by hand from the spec's structures, in memory
    /// (no I/O, no FFI: this test also runs under miri).
    fn tiny_shard() -> Vec<u8> {
        let mut f = Header {
            version: Version::V1,
            shard_index: 0,
            record_align: 8,
            data_offset: REGION_ALIGN,
        }
        .encode()
        .to_vec();
        f.resize(REGION_ALIGN as usize, 0);
        let recs = [b"hello".as_slice(), b"shard!".as_slice()];
        let mut records = Vec::new();
        for r in recs {
            let offset = align_up(f.len() as u64, 8).unwrap();
            f.resize(offset as usize, 0);
            f.extend_from_slice(r);
            RecordEntry {
                offset,
                stored_len: r.len() as u64,
                raw_len: r.len() as u64,
                checksum: record_checksum(r),
                field: 0,
                codec: Codec::Raw.as_u32(),
            }
            .encode_into(&mut records);
        }
        let data_len = f.len() as u64 - REGION_ALIGN;
        let dict_offset = align_up(f.len() as u64, REGION_ALIGN).unwrap();
        f.resize(dict_offset as usize, 0);
        let index_offset = dict_offset;
        let keys = b"ab";
        let ih = IndexHeader {
            sample_count: 2,
            record_count: 2,
            field_count: 1,
            key_bytes_len: keys.len() as u64,
            name_bytes_len: 3,
            first_sample: 0,
        };
        let layout = ih.layout().unwrap();
        let mut idx = ih.encode().to_vec();
        FieldEntry {
            name_offset: 0,
            name_len: 3,
            codec: Codec::Raw,
            level: 0,
            dict_offset: 0,
            dict_len: 0,
            dict_checksum: 0,
        }
        .encode_into(&mut idx);
        for i in 0..2u64 {
            SampleEntry {
                key_offset: i,
                key_len: 1,
                first_record: i,
                record_count: 1,
                label: i as u32,
            }
            .encode_into(&mut idx);
        }
        idx.extend_from_slice(&records);
        let mut kh: Vec<KeyHashEntry> = (0..2u64)
            .map(|i| KeyHashEntry {
                hash: key_hash(&keys[i as usize..i as usize + 1]),
                sample: i,
            })
            .collect();
        kh.sort();
        for e in kh {
            e.encode_into(&mut idx);
        }
        idx.extend_from_slice(keys);
        idx.resize(layout.names as usize, 0);
        idx.extend_from_slice(b"bin");
        idx.resize(layout.end as usize, 0);
        let index_checksum = xxh3_64(&idx);
        f.extend_from_slice(&idx);
        f.extend_from_slice(
            &Footer {
                data_offset: REGION_ALIGN,
                data_len,
                dict_offset,
                dict_len: 0,
                index_offset,
                index_len: idx.len() as u64,
                index_checksum,
                sample_count: 2,
                record_count: 2,
                version: Version::V1,
            }
            .encode(),
        );
        f
    }

    #[test]
    fn a_hand_built_shard_reads_back() {
        let s = ShardBytes::new(tiny_shard()).unwrap();
        assert_eq!(s.sample_count(), 2);
        assert_eq!(s.field_name(0), b"bin");
        let e = s.sample(1).unwrap();
        assert_eq!(s.key(&e), b"b");
        assert_eq!(e.label, 1);
        let r = s.record(e.first_record).unwrap();
        assert_eq!(s.stored(&r), b"shard!");
        assert_eq!(s.find_key(b"a").unwrap(), Some(0));
        assert_eq!(s.find_key(b"zz").unwrap(), None);
        s.check_structure().unwrap();
        assert!(s.sample(2).is_err());
        assert!(s.record(2).is_err());
    }

    #[test]
    fn every_truncation_and_bit_flip_of_the_index_and_footer_is_an_error_not_a_panic() {
        let good = tiny_shard();
        // Truncations (from the end: the footer goes first).
        for cut in [1, 10, Footer::SIZE, good.len() / 2, good.len() - 1] {
            assert!(
                ShardBytes::new(&good[..good.len() - cut]).is_err(),
                "cut {cut}"
            );
        }
        // Every bit of the index and footer (under miri, every 7th byte to stay quick).
        let start = ShardBytes::new(&good[..]).unwrap().footer().index_offset as usize;
        let step = if cfg!(miri) { 7 } else { 1 };
        for at in (start..good.len()).step_by(step) {
            for bit in 0..8 {
                let mut b = good.clone();
                b[at] ^= 1 << bit;
                assert!(ShardBytes::new(&b[..]).is_err(), "flip at {at} bit {bit}");
            }
        }
    }

    #[test]
    fn offsets_follow_sizes() {
        assert_eq!(Header::SIZE, 64);
        assert_eq!(Footer::SIZE, 96);
        assert_eq!(IndexHeader::SIZE, 64);
        assert_eq!(FieldEntry::SIZE, 48);
        assert_eq!(SampleEntry::SIZE, 32);
        assert_eq!(RecordEntry::SIZE, 40);
        assert_eq!(KeyHashEntry::SIZE, 16);
        assert_eq!(
            MIN_SHARD_LEN,
            REGION_ALIGN + (IndexHeader::SIZE + Footer::SIZE) as u64
        );
        assert_eq!(MIN_SHARD_LEN, 4256);
    }

    #[test]
    fn header_round_trip_and_rejections() {
        let h = Header {
            version: Version::V1,
            shard_index: 7,
            record_align: 64,
            data_offset: REGION_ALIGN,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);

        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(
            Header::decode(&bad).unwrap_err().kind,
            FormatErrorKind::BadMagic
        );

        let mut bad = b;
        bad[Header::VERSION_AT] = 9;
        assert_eq!(
            Header::decode(&bad).unwrap_err().kind,
            FormatErrorKind::UnsupportedVersion(9)
        );

        let mut bad = b;
        bad[Header::SHARD_INDEX_AT] ^= 1;
        assert!(matches!(
            Header::decode(&bad).unwrap_err().kind,
            FormatErrorKind::ChecksumMismatch { .. }
        ));

        assert!(matches!(
            Header::decode(&b[..10]).unwrap_err().kind,
            FormatErrorKind::Truncated { .. }
        ));
    }

    #[test]
    fn unsupported_version_message_names_both() {
        let e = err("header", 8, FormatErrorKind::UnsupportedVersion(2));
        let s = e.to_string();
        assert!(s.contains("version 2"), "{s}");
        assert!(s.contains("1..=1"), "{s}");
    }

    #[test]
    fn a_file_below_the_smallest_shard_is_truncated() {
        let mut f = tiny_shard()[..Header::SIZE].to_vec();
        f.resize(4200, 0);
        let e = ShardBytes::new(&f[..]).unwrap_err();
        assert_eq!(
            e.kind,
            FormatErrorKind::Truncated {
                needed: 4256,
                available: 4200
            }
        );
        assert_eq!((e.region, e.offset), ("footer", 4200 - 96));
    }

    #[test]
    fn extraction_paths_and_field_names() {
        assert_eq!(extraction_path(b"cat/0001", b"jpg"), b"cat/0001.jpg");
        assert_eq!(extraction_path(b"README", b""), b"README");
        assert_eq!(extraction_path(b"d/", b"env"), b"d/.env");
        assert!(check_extraction_path(b"cat/0001.jpg").is_ok());
        assert!(check_extraction_path(b"d/.env").is_ok());
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"a/../b",
            b"./a",
            b"a//b",
            b"d/",
            b"a\0b",
        ] {
            assert!(check_extraction_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_extraction_path(b"a\x00b").is_err());
        assert!(
            is_safe_field_name(b"tar.gz") && is_safe_field_name(b"") && is_safe_field_name(b"..")
        );
        assert!(!is_safe_field_name(b"a/b") && !is_safe_field_name(b"a\x00"));
    }

    #[test]
    fn align_up_works() {
        assert_eq!(align_up(0, 8), Some(0));
        assert_eq!(align_up(1, 8), Some(8));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(u64::MAX, 8), None);
    }

    #[test]
    fn layout_overflow_is_none() {
        let h = IndexHeader {
            sample_count: u64::MAX / 2,
            record_count: 1,
            field_count: 1,
            key_bytes_len: 0,
            name_bytes_len: 0,
            first_sample: 0,
        };
        assert!(h.layout().is_none());
    }
}

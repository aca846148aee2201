//! The library's error type.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::format::FormatError;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in shardpack. Each variant carries the path it concerns and,
/// for corrupt shards, the region and byte offset; its message says what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a path.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("open", "read", "write", ...).
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A shard's bytes are malformed: bad magic, unknown version, failed checksum, bounds.
    Corrupt {
        /// The shard file.
        path: PathBuf,
        /// Where and what.
        source: FormatError,
    },
    /// A record's stored bytes do not match their checksum, or do not decode.
    BadRecord {
        /// The shard file.
        path: PathBuf,
        /// Sample index within the shard.
        sample: u64,
        /// The sample's key (lossy UTF-8 for display).
        key: String,
        /// The field name (lossy UTF-8).
        field: String,
        /// Absolute offset of the record in the shard.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A sample (or key) of a shard that a tolerant `Dataset::open_with` marked damaged: the
    /// shard could not be opened or does not match the manifest.
    DamagedShard {
        /// The shard file.
        path: PathBuf,
        /// The shard's position in the manifest.
        shard: usize,
        /// The global sample asked for, if one was.
        sample: Option<u64>,
        /// Why the shard could not be opened.
        detail: String,
    },
    /// The manifest is missing, unparsable, or disagrees with the shards.
    Manifest {
        /// The manifest (or dataset directory).
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The input to the writer or compiler is not acceptable (collision, changed file, empty
    /// tree, non-empty output...).
    Input {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The manifest lists required features (format version 2) that this build does not know;
    /// reading on could misread the dataset.
    UnsupportedFeatures {
        /// The manifest.
        path: PathBuf,
        /// The unknown required feature names, in manifest order.
        features: Vec<String>,
    },
    /// An option value is invalid.
    Options(String),
    /// A [`LoaderState`](crate::loader::LoaderState) does not fit the dataset or the options
    /// it is resumed with (the message names the field, the saved and the current value).
    State(String),
    /// The caller asked the operation to stop (see `compile::Progress::cancelled`); what it
    /// had written is removed.
    Cancelled,
    /// A sample index past the end.
    OutOfRange {
        /// Requested index.
        index: u64,
        /// Number of samples.
        len: u64,
    },
}

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>, op: &'static str, source: io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(path: impl AsRef<Path>, source: FormatError) -> Error {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn manifest(path: impl AsRef<Path>, detail: impl Into<String>) -> Error {
        Error::Manifest {
            path: path.as_ref().to_path_buf(),
            detail: detail.into(),
        }
    }

    pub(crate) fn input(path: impl AsRef<Path>, detail: impl Into<String>) -> Error {
        Error::Input {
            path: path.as_ref().to_path_buf(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            Error::Corrupt { path, source } => {
                write!(f, "corrupt shard {}: {source}", path.display())
            }
            Error::BadRecord {
                path,
                sample,
                key,
                field,
                offset,
                detail,
            } => write!(
                f,
                "corrupt record in {}: sample {sample} (key {key:?}), field {field:?}, at byte \
                 {offset}: {detail}",
                path.display()
            ),
            Error::DamagedShard {
                path,
                shard,
                sample,
                detail,
            } => {
                if let Some(i) = sample {
                    write!(
                        f,
                        "sample {i} is in damaged shard {shard} ({}), which could not be read: ",
                        path.display()
                    )?;
                } else {
                    write!(f, "damaged shard {shard} ({}): ", path.display())?;
                }
                write!(
                    f,
                    "{detail}; restore that file from a copy or pack the dataset again"
                )
            }
            Error::Manifest { path, detail } => write!(f, "{}: {detail}", path.display()),
            Error::Input { path, detail } => write!(f, "{}: {detail}", path.display()),
            Error::UnsupportedFeatures { path, features } => write!(
                f,
                "{}: the dataset requires features this reader does not know: {}; upgrade \
                 shardpack",
                path.display(),
                features.join(", ")
            ),
            Error::Options(s) => write!(f, "invalid option: {s}"),
            Error::State(s) => write!(f, "cannot resume from this loader state: {s}"),
            Error::Cancelled => write!(f, "cancelled; nothing this operation wrote was kept"),
            Error::OutOfRange { index, len } => {
                write!(
                    f,
                    "sample {index} is out of range (the dataset has {len} samples)"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    // The Display of every variant already includes its cause (so `{}` alone tells the whole
    // story); returning it again as `source()` would print it twice in error chains.
}

//! Input files above [`STREAM_THRESHOLD`](crate::codec::STREAM_THRESHOLD): streamed into the writer at their turn instead of
//! read whole (see the parent module's docs on memory).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::codec::{FieldEncoder, STREAM_PIECE};
use crate::error::Error;
use crate::format::Codec;

use super::Cancel;

/// A `Read` that fails once the pack is cancelled, so a long stream stops soon.
pub(super) struct CancelRead<'a, 'p, R> {
    pub(super) inner: R,
    pub(super) cancel: &'a Cancel<'p>,
}

impl<R: Read> Read for CancelRead<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.check() {
            return Err(std::io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}

/// A `Write` that remembers whether a write failed (to tell a full disk from a bad source).
pub(super) struct TagWrite<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Write for TagWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.failed |= r.is_err();
        r
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.failed |= r.is_err();
        r
    }
}

/// The temporary file a large compressed record is encoded into; removed on drop.
pub(super) struct TempRecord(PathBuf);

impl Drop for TempRecord {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A large input member ready to be streamed into the writer.
pub(super) struct Large<'s> {
    pub(super) file: Box<dyn Read + Send + 's>,
    /// What to name in errors (the member's file, or the tar holding it).
    pub(super) path: PathBuf,
    pub(super) codec: Codec,
    pub(super) stored_len: u64,
    _temp: Option<TempRecord>,
}

/// Why a large member could not be prepared: a problem of the source (skippable) or of the
/// output (fatal).
pub(super) enum LargeError {
    Source(String),
    Output(Error),
}

/// Opens a large input member for streaming (`open` gives its bytes): raw fields copy it as it
/// is; compressed fields encode it first, in pieces, into a temporary file in `dir` (the writer
/// needs the stored length before it writes).
pub(super) fn prepare_large<'s>(
    open: impl Fn() -> std::result::Result<Box<dyn Read + Send + 's>, String>,
    path: PathBuf,
    size: u64,
    enc: &FieldEncoder,
    dir: &Path,
    cancel: &Cancel<'_>,
) -> std::result::Result<Large<'s>, LargeError> {
    let open = || open().map_err(LargeError::Source);
    let raw = |file, path| Large {
        file,
        path,
        codec: Codec::Raw,
        stored_len: size,
        _temp: None,
    };
    if enc.codec() == Codec::Raw {
        return Ok(raw(open()?, path));
    }
    let temp = TempRecord(dir.join("shard-record.spk.tmp"));
    let created =
        File::create(&temp.0).map_err(|e| LargeError::Output(Error::io(&temp.0, "create", e)))?;
    let mut out = TagWrite {
        inner: std::io::BufWriter::with_capacity(STREAM_PIECE, created),
        failed: false,
    };
    let mut input = CancelRead {
        inner: open()?,
        cancel,
    };
    let encoded = enc.encode_stream(&mut input, size, STREAM_PIECE, &mut out);
    let encoded = encoded.and_then(|r| out.flush().map(|()| r));
    let (codec, stored_len) = match encoded {
        Ok(r) => r,
        Err(_) if cancel.check() => return Err(LargeError::Output(Error::Cancelled)),
        Err(e) if out.failed => return Err(LargeError::Output(Error::io(&temp.0, "write", e))),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(LargeError::Source(format!(
                "{e} (when the tree was scanned vs when read); make sure nothing writes to the \
                 source while packing"
            )))
        }
        Err(e) => return Err(LargeError::Source(format!("cannot read: {e}"))),
    };
    if codec == Codec::Raw {
        return Ok(raw(open()?, path));
    }
    let file =
        File::open(&temp.0).map_err(|e| LargeError::Output(Error::io(&temp.0, "open", e)))?;
    Ok(Large {
        file: Box::new(file),
        path,
        codec,
        stored_len,
        _temp: Some(temp),
    })
}

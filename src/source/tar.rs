//! A small streaming tar reader: POSIX ustar, GNU long names (`L`) and base-256 sizes, pax
//! extended headers (`x`, and global `g`) for `path` and `size`. It reads headers from any
//! [`TarInput`] and skips or hands out each member's data; it never writes anything.
//!
//! What counts follows Python's `tarfile` (which webdataset reads with): regular members are
//! types `0`, `\0` and `7` (an `\0` member whose name ends in `/` is a directory); ustar's
//! `prefix` is joined to the name with `/`; the archive ends at the first all-zero block.
//! Stricter than `tarfile`: an archive must end with that zero block (one cut at a member
//! boundary is reported as truncated, not taken as complete), and a header's checksum must
//! match.

use std::collections::HashMap;
use std::io::{self, Read};

const BLOCK: u64 = 512;

/// What a tar can be read from: bytes in order, and a way to pass over some.
pub(crate) trait TarInput: Read {
    /// Passes over `n` bytes; an error if fewer remain.
    fn skip(&mut self, n: u64) -> io::Result<()>;
}

/// An uncompressed tar file: skipping is a seek, and the length is known.
pub(crate) struct FileInput {
    pub(crate) inner: io::BufReader<std::fs::File>,
    pub(crate) pos: u64,
    pub(crate) len: u64,
}

impl Read for FileInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl TarInput for FileInput {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        if self.pos + n > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ends inside a member",
            ));
        }
        self.inner.seek_relative(n as i64)?;
        self.pos += n;
        Ok(())
    }
}

/// Any stream (a gzip decoder): skipping reads and discards.
#[cfg_attr(not(feature = "gzip"), allow(dead_code))]
pub(crate) struct StreamInput<R>(pub(crate) R);

impl<R: Read> Read for StreamInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> TarInput for StreamInput<R> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let got = io::copy(&mut (&mut self.0).take(n), &mut io::sink())?;
        if got < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ends inside a member",
            ));
        }
        Ok(())
    }
}

/// A member's type, as far as the converter cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Anything else: links, devices, FIFOs (the type flag byte).
    Other(u8),
}

/// One member's header.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) name: Vec<u8>,
    pub(crate) size: u64,
    pub(crate) kind: Kind,
    /// Where its data starts in the (uncompressed) tar stream.
    pub(crate) offset: u64,
}

/// Reads a tar's members in order.
pub(crate) struct TarReader<R> {
    input: R,
    /// Position in the tar stream (uncompressed).
    pos: u64,
    /// Data and padding of the current member not yet read or skipped.
    pending: u64,
    /// Data bytes of the current member not yet read.
    unread: u64,
    global: HashMap<Vec<u8>, Vec<u8>>,
    done: bool,
}

fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // GNU base-256: big-endian, the first byte's top bit set (negative values refused).
        if field[0] & 0x40 != 0 {
            return None;
        }
        let mut v: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

fn nts(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Parses pax records `LEN KEY=VALUE\n`.
fn pax_records(data: &[u8]) -> Result<HashMap<Vec<u8>, Vec<u8>>, String> {
    let mut out = HashMap::new();
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a pax record without its length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a pax record with a bad length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("a pax record with a bad length".into());
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a pax record without '='")?;
        out.insert(rec[..eq].to_vec(), rec[eq + 1..].to_vec());
        rest = &rest[len..];
    }
    Ok(out)
}

fn eof(e: io::Error, what: &str) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("truncated: the archive ends inside {what}")
    } else {
        format!("cannot read {what}: {e}")
    }
}

impl<R: TarInput> TarReader<R> {
    pub(crate) fn new(input: R) -> Self {
        TarReader {
            input,
            pos: 0,
            pending: 0,
            unread: 0,
            global: HashMap::new(),
            done: false,
        }
    }

    fn skip_pending(&mut self) -> Result<(), String> {
        if self.pending > 0 {
            let n = self.pending;
            self.input.skip(n).map_err(|e| eof(e, "a member"))?;
            self.pos += n;
            self.pending = 0;
            self.unread = 0;
        }
        Ok(())
    }

    /// Reads one 512-byte block; `Ok(None)` at a clean end of input.
    fn block(&mut self, at_header: bool) -> Result<Option<[u8; 512]>, String> {
        let mut b = [0u8; 512];
        let mut got = 0;
        while got < 512 {
            match self.input.read(&mut b[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read at offset {}: {e}", self.pos)),
            }
        }
        if got == 0 && at_header {
            return Ok(None);
        }
        if got < 512 {
            return Err(format!(
                "truncated: the archive ends inside a header at offset {}",
                self.pos
            ));
        }
        self.pos += BLOCK;
        Ok(Some(b))
    }

    /// Reads the data of a special member (a long name, pax records) whole.
    fn small_data(&mut self, size: u64) -> Result<Vec<u8>, String> {
        if size > 1 << 20 {
            return Err(format!(
                "a long-name or pax header of {size} bytes at offset {}",
                self.pos
            ));
        }
        let mut v = vec![0u8; size as usize];
        self.input
            .read_exact(&mut v)
            .map_err(|e| eof(e, "a header"))?;
        let pad = size.next_multiple_of(BLOCK) - size;
        self.input.skip(pad).map_err(|e| eof(e, "a header"))?;
        self.pos += size + pad;
        Ok(v)
    }

    /// The next member, positioned at its data (which [`TarReader::read_data`] reads, or the
    /// next call skips); `Ok(None)` at the end of the archive.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>, String> {
        if self.done {
            return Ok(None);
        }
        self.skip_pending()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        loop {
            let header_at = self.pos;
            let Some(h) = self.block(true)? else {
                return Err(format!(
                    "truncated: the archive ends at offset {header_at} without its end-of-archive \
                     blocks"
                ));
            };
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            let stored = octal(&h[148..156]).ok_or_else(|| {
                format!("not a tar header at offset {header_at} (bad checksum field)")
            })?;
            // The sum of the header's bytes with the checksum field as spaces, as unsigned and
            // (old writers) signed bytes.
            let (unsigned, signed) = h.iter().enumerate().fold((0u64, 0i64), |(u, s), (i, &b)| {
                if (148..156).contains(&i) {
                    (u + 32, s + 32)
                } else {
                    (u + b as u64, s + b as i8 as i64)
                }
            });
            if stored != unsigned && stored as i64 != signed {
                return Err(format!(
                    "not a tar header at offset {header_at} (checksum mismatch): damaged or not \
                     a tar file"
                ));
            }
            let mut size = octal(&h[124..136])
                .ok_or_else(|| format!("a header at offset {header_at} has a bad size field"))?;
            let flag = h[156];
            match flag {
                b'L' => {
                    let d = self.small_data(size)?;
                    long_name = Some(nts(&d).to_vec());
                    continue;
                }
                b'K' => {
                    self.small_data(size)?;
                    continue;
                }
                b'x' => {
                    let d = self.small_data(size)?;
                    pax = pax_records(&d).map_err(|e| format!("{e} at offset {header_at}"))?;
                    continue;
                }
                b'g' => {
                    let d = self.small_data(size)?;
                    let g = pax_records(&d).map_err(|e| format!("{e} at offset {header_at}"))?;
                    self.global.extend(g);
                    continue;
                }
                _ => {}
            }
            let mut name = nts(&h[0..100]).to_vec();
            let prefix = nts(&h[345..500]);
            if &h[257..263] == b"ustar\0" && !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&name);
                name = p;
            }
            if let Some(n) = long_name.take() {
                name = n;
            }
            let path = pax
                .get(&b"path"[..])
                .or_else(|| self.global.get(&b"path"[..]));
            if let Some(p) = path {
                name = p.clone();
            }
            if let Some(s) = pax
                .get(&b"size"[..])
                .or_else(|| self.global.get(&b"size"[..]))
            {
                size = std::str::from_utf8(s)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("a pax size that is not a number at {header_at}"))?;
            }
            let kind = match flag {
                b'0' | b'7' => Kind::File,
                0 if name.ends_with(b"/") => Kind::Dir,
                0 => Kind::File,
                b'5' => Kind::Dir,
                b'S' => {
                    return Err(format!(
                        "member {} at offset {header_at} is a GNU sparse file, which is not \
                         supported; write the tar without --sparse",
                        String::from_utf8_lossy(&name)
                    ))
                }
                f => Kind::Other(f),
            };
            // Links and directories carry no data in the stream.
            let data = match kind {
                Kind::File => size,
                _ if matches!(flag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') => 0,
                _ => size,
            };
            if kind == Kind::Dir {
                while name.len() > 1 && name.ends_with(b"/") {
                    name.pop();
                }
            }
            // A size near u64::MAX (a bad pax record, a damaged base-256 field) would overflow.
            self.pending = data.checked_next_multiple_of(BLOCK).ok_or_else(|| {
                format!(
                    "member {} at offset {}: size {data} is not possible",
                    String::from_utf8_lossy(&name),
                    self.pos
                )
            })?;
            self.unread = data;
            return Ok(Some(Entry {
                name,
                size: data,
                kind,
                offset: self.pos,
            }));
        }
    }

    /// Reads the current member's data whole (it must not have been read yet).
    pub(crate) fn read_data(&mut self) -> Result<Vec<u8>, String> {
        let n = self.unread;
        let cap = usize::try_from(n).map_err(|_| "member too large for this platform")?;
        let mut v = Vec::with_capacity(cap);
        (&mut self.input)
            .take(n)
            .read_to_end(&mut v)
            .map_err(|e| eof(e, "a member"))?;
        if (v.len() as u64) < n {
            return Err("truncated: the archive ends inside a member".into());
        }
        self.pos += n;
        self.pending -= n;
        self.unread = 0;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &[u8], size: u64, flag: u8, magic: &[u8; 8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = flag;
        h[257..265].copy_from_slice(magic);
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn data(d: &[u8]) -> Vec<u8> {
        let mut v = d.to_vec();
        v.resize(d.len().next_multiple_of(512), 0);
        v
    }

    type Listing = Vec<(Vec<u8>, Kind, Vec<u8>)>;

    fn entries(tar: Vec<u8>) -> Result<Listing, String> {
        let mut r = TarReader::new(StreamInput(&tar[..]));
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let d = if e.kind == Kind::File {
                r.read_data()?
            } else {
                Vec::new()
            };
            out.push((e.name, e.kind, d));
        }
        Ok(out)
    }

    #[test]
    fn gnu_long_names_pax_and_ustar_prefix() {
        let gnu = b"ustar  \0";
        let ustar = b"ustar\x0000";
        let long = vec![b'k'; 150];
        let mut long_name = long.clone();
        long_name.extend_from_slice(b".txt");
        let mut t = Vec::new();
        t.extend(header(
            b"././@LongLink",
            long_name.len() as u64 + 1,
            b'L',
            gnu,
        ));
        let mut ln = long_name.clone();
        ln.push(0);
        t.extend(data(&ln));
        t.extend(header(b"truncated", 3, b'0', gnu));
        t.extend(data(b"abc"));
        let rec = b"20 path=p/x.seg.png\n";
        t.extend(header(b"././@PaxHeader", rec.len() as u64, b'x', ustar));
        t.extend(data(rec));
        t.extend(header(b"ignored", 2, b'0', ustar));
        t.extend(data(b"xy"));
        let mut pre = header(b"c.bin", 1, b'0', ustar);
        pre[345..348].copy_from_slice(b"a/b");
        let sum: u64 = {
            pre[148..156].copy_from_slice(b"        ");
            pre.iter().map(|&b| b as u64).sum()
        };
        pre[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        t.extend(pre);
        t.extend(data(b"z"));
        t.extend(header(b"dir/", 0, 0, ustar));
        t.extend(header(b"link", 0, b'2', ustar));
        t.extend(vec![0u8; 1024]);
        let e = entries(t.clone()).unwrap();
        assert_eq!(e[0], (long_name, Kind::File, b"abc".to_vec()));
        assert_eq!(e[1], (b"p/x.seg.png".to_vec(), Kind::File, b"xy".to_vec()));
        assert_eq!(e[2], (b"a/b/c.bin".to_vec(), Kind::File, b"z".to_vec()));
        assert_eq!(e[3].0, b"dir");
        assert_eq!(e[3].1, Kind::Dir);
        assert_eq!(e[4].1, Kind::Other(b'2'));
        // Damage: a flipped header byte, a cut inside a member, no end blocks.
        let mut bad = t.clone();
        bad[5] ^= 1;
        assert!(entries(bad).unwrap_err().contains("checksum"));
        assert!(entries(t[..1024 + 512 + 100].to_vec())
            .unwrap_err()
            .contains("truncated"));
        assert!(entries(t[..t.len() - 1024].to_vec())
            .unwrap_err()
            .contains("end-of-archive"));
    }

    #[test]
    fn an_impossible_size_is_an_error_not_an_overflow() {
        let rec = format!("29 size={}\n", u64::MAX);
        assert_eq!(rec.len(), 29);
        let ustar = b"ustar\x0000";
        let mut t = header(b"././@PaxHeader", rec.len() as u64, b'x', ustar);
        t.extend(data(rec.as_bytes()));
        t.extend(header(b"big.bin", 0, b'0', ustar));
        t.extend(vec![0u8; 1024]);
        let e = entries(t).unwrap_err();
        assert!(e.contains("big.bin") && e.contains("not possible"), "{e}");
    }

    #[test]
    fn numbers() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"  12 \0"), Some(10));
        assert_eq!(octal(b"\0\0\0"), Some(0));
        assert_eq!(octal(b"9"), None);
        assert_eq!(octal(&[0x80, 0, 0, 1, 0]), Some(256));
        let r = pax_records(b"16 path=a/b.txt\n11 size=42\n").unwrap();
        assert_eq!(r[&b"path"[..]], b"a/b.txt");
        assert_eq!(r[&b"size"[..]], b"42");
        assert!(pax_records(b"99 path=x\n").is_err());
    }
}

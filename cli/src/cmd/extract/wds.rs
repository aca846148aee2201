//! `extract --format wds`: the dataset as WebDataset tar shards.
//!
//! Reproducible: the same dataset gives the same bytes. Samples are written in dataset order,
//! each sample's members `KEY.FIELD` in field order (sorted by name), each member a ustar
//! header with mode 0444, uid and gid 0, empty user and group names and mtime 0 (a pax `path`
//! record before it when the name is over 100 bytes, a pax `size` record for members of 8 GiB
//! or more); the archive ends with two zero blocks. A new shard `shard-NNNNNN.tar` starts
//! before a sample that would take the current one past `--shard-size` (a sample is never
//! split; a shard holds at least one).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use shardpack::{Dataset, Sample};

/// Records up to this size are read (and checked) whole before their sample's first member
/// is written, so a damaged one can be left out under `--skip-errors`; larger ones stream.
const IN_MEMORY: u64 = 16 << 20;
const BLOCK: usize = 512;

/// What `write` did.
pub(super) struct Written {
    pub(super) samples: u64,
    pub(super) members: u64,
    pub(super) bytes: u64,
    pub(super) shards: u64,
    pub(super) left_out: Vec<String>,
    pub(super) left_out_samples: u64,
}

fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "LEN KEY=VALUE\n", LEN counting itself.
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len.to_string().len() + body > len {
        len += 1;
    }
    let mut r = format!("{} {key}=", len).into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    debug_assert_eq!(r.len(), len);
    r
}

fn block(name: &[u8], size: u64, flag: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], 0o444);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size.min(0o77777777777));
    octal(&mut h[136..148], 0);
    h[156] = flag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The header blocks of a member.
fn header(name: &[u8], size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK);
    let mut pax = Vec::new();
    if name.len() > 100 {
        pax.extend(pax_record("path", name));
    }
    if size > 0o77777777777 {
        pax.extend(pax_record("size", size.to_string().as_bytes()));
    }
    if !pax.is_empty() {
        out.extend_from_slice(&block(b"././@PaxHeader", pax.len() as u64, b'x'));
        out.extend_from_slice(&pax);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }
    out.extend_from_slice(&block(name, size, b'0'));
    out
}

struct Shard {
    file: BufWriter<File>,
    bytes: u64,
    samples: u64,
}

/// A sample's members: name, field, and the checked bytes (`None`: streamed at write time).
type Members<'a> = Vec<(Vec<u8>, shardpack::Field<'a>, Option<Vec<u8>>)>;

/// The members of a sample ready to write, or why it cannot be.
fn prepare<'a>(s: &Sample<'a>) -> Result<Members<'a>> {
    let mut v = Vec::new();
    for f in s.fields() {
        let f = f?;
        if f.name().is_empty() {
            return Err(anyhow!(
                "sample {} has a field with an empty name (a file without a suffix, such as \
                 {:?}), which a WebDataset member cannot name: webdataset keys end at the first \
                 dot",
                s.index(),
                String::from_utf8_lossy(s.key())
            ));
        }
        let mut name = s.key().to_vec();
        name.push(b'.');
        name.extend_from_slice(f.name());
        let data = if f.raw_len() <= IN_MEMORY {
            Some(f.data()?.into_owned())
        } else {
            None
        };
        v.push((name, f, data));
    }
    Ok(v)
}

/// Writes the dataset's samples as tars into `staging` (each built at `part`, then renamed).
pub(super) fn write(
    ds: &Dataset,
    staging: &Path,
    part: &Path,
    shard_size: u64,
    skip_errors: bool,
) -> Result<Written> {
    let mut w = Written {
        samples: 0,
        members: 0,
        bytes: 0,
        shards: 0,
        left_out: Vec::new(),
        left_out_samples: 0,
    };
    let mut cur: Option<Shard> = None;
    let mut buf = vec![0u8; 1 << 20];
    let close = |sh: Shard, n: u64| -> Result<PathBuf> {
        let mut file = sh.file;
        file.write_all(&[0u8; 2 * BLOCK])?;
        let f = file.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        let to = staging.join(format!("shard-{n:06}.tar"));
        fs::rename(part, &to)?;
        Ok(to)
    };
    for s in 0..ds.shard_count() {
        // The first touch checks the shard's index (deferred from open for large indexes).
        if let Err(e) = ds.shard(s) {
            if !skip_errors {
                return Err(e.into());
            }
        }
        if let Some(d) = ds.damaged().iter().find(|d| d.index == s) {
            w.left_out_samples += d.samples;
            w.left_out.push(format!(
                "samples {}..{} of damaged shard {}: {}",
                d.first_sample,
                d.first_sample + d.samples,
                d.index,
                d.reason
            ));
            continue;
        }
        for sample in ds.shard_samples(s) {
            let prepared = sample.map_err(anyhow::Error::new).and_then(|x| {
                let p = prepare(&x)?;
                Ok((x, p))
            });
            let (sample, fields) = match prepared {
                Ok(x) => x,
                Err(e) if skip_errors => {
                    w.left_out_samples += 1;
                    w.left_out.push(format!("{e:#}"));
                    continue;
                }
                Err(e) => {
                    return Err(e.context(
                        "extract stopped; `shardpack extract --skip-errors` leaves out the \
                         samples that cannot be read",
                    ))
                }
            };
            let size: u64 = fields
                .iter()
                .map(|(n, f, _)| {
                    header(n, f.raw_len()).len() as u64 + f.raw_len().next_multiple_of(512)
                })
                .sum();
            if cur
                .as_ref()
                .is_some_and(|c| c.samples > 0 && c.bytes + size > shard_size)
            {
                let sh = cur.take().expect("checked");
                close(sh, w.shards).with_context(|| format!("cannot write {}", part.display()))?;
                w.shards += 1;
            }
            if cur.is_none() {
                let f = File::create(part)
                    .with_context(|| format!("cannot create {}", part.display()))?;
                cur = Some(Shard {
                    file: BufWriter::with_capacity(1 << 20, f),
                    bytes: 0,
                    samples: 0,
                });
            }
            let sh = cur.as_mut().expect("set above");
            for (name, f, data) in &fields {
                let n = f.raw_len();
                sh.file
                    .write_all(&header(name, n))
                    .with_context(|| format!("cannot write {}", part.display()))?;
                match data {
                    Some(d) => sh.file.write_all(d)?,
                    None => {
                        let mut r = f.reader()?;
                        let mut got = 0u64;
                        loop {
                            let k = match r.read(&mut buf) {
                                Ok(0) => break,
                                Ok(k) => k,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                                Err(e) => {
                                    return Err(super::read_error(e).context(format!(
                                        "sample {} (key {:?})",
                                        sample.index(),
                                        String::from_utf8_lossy(sample.key())
                                    )))
                                }
                            };
                            sh.file.write_all(&buf[..k])?;
                            got += k as u64;
                        }
                        if got != n {
                            return Err(anyhow!(
                                "sample {}: {got} bytes read, the index says {n}",
                                sample.index()
                            ));
                        }
                    }
                }
                let pad = (n.next_multiple_of(512) - n) as usize;
                sh.file.write_all(&[0u8; BLOCK][..pad])?;
                w.members += 1;
                w.bytes += n;
            }
            sh.bytes += size;
            sh.samples += 1;
            w.samples += 1;
        }
    }
    if let Some(sh) = cur.take() {
        close(sh, w.shards).with_context(|| format!("cannot write {}", part.display()))?;
        w.shards += 1;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_lengths_count_themselves() {
        for n in [1usize, 80, 93, 94, 95, 990, 995, 9990] {
            let r = pax_record("path", &vec![b'a'; n]);
            let len: usize = std::str::from_utf8(&r[..r.iter().position(|&b| b == b' ').unwrap()])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
        let h = block(b"a.txt", 5, b'0');
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        assert_eq!(&h[148..155], format!("{sum:06o}\0").as_bytes());
    }
}

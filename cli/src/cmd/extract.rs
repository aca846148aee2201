//! `shardpack extract DATASET DIR`: write the original tree back.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use shardpack::compile::join_bytes;
use shardpack::Dataset;

/// Write every record back as a file at its original relative path (key + "." + field),
/// byte-identical to what was packed. DIR must be new or empty; existing files are never
/// overwritten.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// Where to write the tree (created if missing; must be empty).
    pub dir: PathBuf,
}

/// Rejects relative paths that could escape the output directory.
fn safe_rel(rel: &[u8]) -> bool {
    !rel.is_empty()
        && !rel.starts_with(b"/")
        && rel
            .split(|&c| c == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0))
}

/// Runs `extract`.
pub fn run(a: Args, out: &mut impl Write) -> Result<ExitCode> {
    let ds = Dataset::open(&a.dataset)?;
    match fs::read_dir(&a.dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                bail!(
                    "{} exists and is not empty; extract into a new or empty directory",
                    a.dir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(&a.dir)
                .with_context(|| format!("cannot create {}", a.dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", a.dir.display())),
    }
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut rel = Vec::new();
    for s in ds.iter() {
        let s = s?;
        for f in s.fields() {
            let f = f?;
            rel.clear();
            rel.extend_from_slice(s.key());
            if !f.name().is_empty() {
                rel.push(b'.');
                rel.extend_from_slice(f.name());
            }
            if !safe_rel(&rel) {
                bail!(
                    "sample {} has the unsafe path {:?}; refusing to write outside {}",
                    s.index(),
                    String::from_utf8_lossy(&rel),
                    a.dir.display()
                );
            }
            let path = join_bytes(&a.dir, &rel);
            write_new(&path, &f.data()?)?;
            files += 1;
            bytes += f.raw_len();
        }
    }
    writeln!(
        out,
        "extracted {files} files ({bytes} bytes) from {} samples into {}",
        ds.len(),
        a.dir.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::safe_rel;

    #[test]
    fn unsafe_paths_are_rejected() {
        assert!(safe_rel(b"cat/0001.jpg"));
        assert!(safe_rel(b".bashrc"));
        assert!(!safe_rel(b"/etc/passwd"));
        assert!(!safe_rel(b"../x"));
        assert!(!safe_rel(b"a/../../x"));
        assert!(!safe_rel(b"a//b"));
        assert!(!safe_rel(b""));
    }
}

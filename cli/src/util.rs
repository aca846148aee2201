//! Helpers shared by the subcommands: size parsing and formatting, byte output, opening a
//! dataset for its indexes.

use std::io;
use std::path::Path;

use shardpack::reader::{IndexCheck, OpenOptions};
use shardpack::storage::remote::{ReadMode, RemoteOptions};
use shardpack::Dataset;

/// Opens a dataset for a command that needs only the manifest and the indexes (`info`, `ls`),
/// marking damaged shards. A URL is opened in stream mode whatever `SHARDPACK_REMOTE_MODE`
/// says: the headers, footers and indexes are ranged GETs, where cache mode would download
/// every shard whole to check its index.
pub fn open_for_index(dataset: &Path) -> anyhow::Result<Dataset> {
    let opts = OpenOptions::mark_damaged();
    if let Some(url) = shardpack::storage::url_of(dataset) {
        let ropts = RemoteOptions {
            mode: ReadMode::Stream,
            ..RemoteOptions::from_env()
        };
        return Ok(Dataset::open_remote(url, &ropts, &opts, IndexCheck::Auto)?);
    }
    Ok(Dataset::open_with(dataset, &opts)?)
}

/// `true` when the error is a write to a closed pipe (the reader went away: not an error).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Parses a size such as `1GiB`, `512M`, `64k`, `1000000`, `2GB` (K/M/G/T and KiB.. are
/// binary; KB/MB/GB/TB decimal).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use e.g. 512MiB, 1GiB, 2GB)"
            ))
        }
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (use e.g. 512MiB, 1GiB, 2GB)"))?;
    let bytes = v * mult as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Formats a byte count for people: `1.5 GiB`, `12.0 KiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Bytes of a command-line argument, exactly as given (non-UTF-8 allowed on Unix).
#[cfg(unix)]
pub fn arg_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
}

/// Bytes of a command-line argument.
#[cfg(not(unix))]
pub fn arg_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("0").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn bytes_format() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}

//! Pack benchmarks: a program (`harness = false`) that drives the release `shardpack` binary on
//! generated trees and reports every number it prints itself, so anyone can rerun it.
//!
//! ```text
//! cargo build --release -p shardpack-cli
//! cargo bench --bench pack -- throughput [--files 100000] [--rounds 3] [--evict both]
//! cargo bench --bench pack -- rss [--counts 100000,300000,1000000]
//! cargo bench --bench pack -- textsize [--policies auto,zstd-dict:19]
//! ```
//!
//! Common flags: `--dir D` (work directory, default `/tmp/shardpack-bench`; generated trees are
//! cached there), `--bin PATH` (the `shardpack` binary, default `target/release/shardpack`),
//! `--json` (one JSON object on stdout instead of tables), `--keep` (keep the big `rss` trees).
//! Unknown flags (cargo passes `--bench`) are ignored.
//!
//! Modes:
//!
//! - `throughput`: a tree of `--files` files (mean ~16 KiB, sizes 0.5-32 KiB, 100 class
//!   folders; 90% random "jpg" bytes, 10% text "txt" files that pair with the jpg before them
//!   into two-field samples), generated once with a fixed seed. For `--rounds` rounds, in an
//!   order rotated each round, it times `tar -cf OUT.tar -C TREE .` (also with an fsync of the
//!   archive, since pack syncs its shards), `shardpack pack --compress none` and
//!   `shardpack pack --compress auto`, each from a cold page cache: outputs are deleted, then
//!   `sync`, `posix_fadvise(DONTNEED)` on every file of the tree, a `mincore` check of how much
//!   of the tree is still resident, then (with `--evict both`, the default, or `drop`) `echo 3 >
//!   /proc/sys/vm/drop_caches`, which also drops cached directory entries and inodes. A first
//!   check tries each eviction method alone on a warm tree and reports which one worked.
//! - `rss`: trees of tiny files (1-200 bytes of text, 1,000 folders) for each count; peak RSS
//!   of `shardpack pack` from `wait4`'s `ru_maxrss`, and RSS growth per file.
//! - `textsize`: the Python standard library's `.py` files (without site-packages) copied into
//!   a tree; the size of `tar -cf - . | zstd -3`, of per-file `zstd -3` frames, and of the
//!   dataset (shards + manifest) for each `--policies` entry.
//!
//! `throughput --tree PATH` times an existing tree instead (a real one: the Python standard
//! library, a Rust toolchain, a folder of photos); `--tools tar,tarzstd,auto` adds
//! `tar -cf - | zstd -3` and prints the dataset's size over its archive's.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};
use shardpack::rng::SplitMix64;
use shardpack::Dataset;

const SEED: u64 = 0x5348_5244_4245_4E43; // "SHRDBENC"
/// Bump when the generated trees change, so cached trees are regenerated.
const TREE_VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evict {
    Fadvise,
    Drop,
    Both,
}

#[derive(Debug)]
struct Args {
    mode: Option<String>,
    files: u64,
    rounds: usize,
    dir: PathBuf,
    bin: Option<PathBuf>,
    json: bool,
    keep: bool,
    evict: Evict,
    counts: Vec<u64>,
    compress: String,
    policies: Vec<String>,
    /// A second `shardpack` binary timed against `bin` in the same rounds (throughput).
    candidates: Vec<PathBuf>,
    /// Which runs the throughput rounds include.
    tools: Vec<String>,
    /// An existing tree for the throughput rounds instead of the generated one.
    tree: Option<PathBuf>,
    /// Extra arguments for every `shardpack pack` run.
    pack_args: Vec<String>,
    /// `--shard-size` values for the rss runs (`default`: the binary's default).
    shard_sizes: Vec<String>,
}

const USAGE: &str = "usage: cargo bench --bench pack -- MODE [flags]
modes:
  throughput  cold-cache pack rate vs tar     [--files 100000] [--rounds 3] [--evict both|fadvise|drop]
                                              [--tools tar,tarzstd,none,auto] [--candidate PATH[,PATH..]]
                                              [--tree PATH (a real tree instead of the generated one)]
  rss         peak RSS of pack on tiny files  [--counts 100000,300000,1000000] [--compress auto]
                                              [--shard-sizes default,8MiB] [--keep]
  textsize    Python stdlib sizes vs tar|zstd [--policies auto,zstd:3,zstd:19,zstd-dict:3,zstd-dict:19]
  all         the three above with their defaults
flags: --dir D (default /tmp/shardpack-bench)  --bin PATH (default target/release/shardpack)  --json
       --pack-args \"ARGS\" (extra arguments for every shardpack pack run)";

fn parse_args() -> Args {
    let mut a = Args {
        mode: None,
        files: 100_000,
        rounds: 3,
        dir: PathBuf::from("/tmp/shardpack-bench"),
        bin: None,
        json: false,
        keep: false,
        evict: Evict::Both,
        counts: vec![100_000, 300_000, 1_000_000],
        compress: "auto".into(),
        candidates: Vec::new(),
        tools: vec!["tar".into(), "none".into(), "auto".into()],
        tree: None,
        pack_args: Vec::new(),
        shard_sizes: vec!["default".into(), "8MiB".into()],
        policies: ["auto", "zstd:3", "zstd:19", "zstd-dict:3", "zstd-dict:19"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let mut it = std::env::args().skip(1);
    let need = |it: &mut dyn Iterator<Item = String>, flag: &str| -> String {
        it.next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value\n{USAGE}")))
    };
    let num = |s: String, flag: &str| -> u64 {
        s.replace('_', "")
            .parse()
            .unwrap_or_else(|_| fail(&format!("{flag}: {s:?} is not a number")))
    };
    let list = |it: &mut dyn Iterator<Item = String>, flag: &str| -> Vec<String> {
        need(it, flag).split(',').map(str::to_string).collect()
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--files" => a.files = num(need(&mut it, "--files"), "--files"),
            "--rounds" => a.rounds = num(need(&mut it, "--rounds"), "--rounds") as usize,
            "--dir" => a.dir = PathBuf::from(need(&mut it, "--dir")),
            "--tree" => a.tree = Some(PathBuf::from(need(&mut it, "--tree"))),
            "--bin" => a.bin = Some(PathBuf::from(need(&mut it, "--bin"))),
            "--json" => a.json = true,
            "--keep" => a.keep = true,
            "--evict" => {
                a.evict = match need(&mut it, "--evict").as_str() {
                    "fadvise" => Evict::Fadvise,
                    "drop" => Evict::Drop,
                    "both" => Evict::Both,
                    o => fail(&format!("--evict {o:?}: use fadvise, drop or both")),
                }
            }
            "--counts" => {
                a.counts = list(&mut it, "--counts")
                    .into_iter()
                    .map(|s| num(s, "--counts"))
                    .collect()
            }
            "--compress" => a.compress = need(&mut it, "--compress"),
            "--candidate" => {
                a.candidates = list(&mut it, "--candidate")
                    .into_iter()
                    .map(PathBuf::from)
                    .collect()
            }
            "--tools" => {
                a.tools = list(&mut it, "--tools");
                if let Some(t) = a
                    .tools
                    .iter()
                    .find(|t| !["tar", "tarzstd", "none", "auto"].contains(&t.as_str()))
                {
                    fail(&format!(
                        "--tools: unknown {t:?}; use tar, tarzstd, none, auto"
                    ));
                }
            }
            "--pack-args" => {
                a.pack_args = need(&mut it, "--pack-args")
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            }
            "--shard-sizes" => a.shard_sizes = list(&mut it, "--shard-sizes"),
            "--policies" => a.policies = list(&mut it, "--policies"),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => eprintln!("pack bench: ignoring flag {s}"),
            s if a.mode.is_none() => a.mode = Some(s.to_string()),
            s => fail(&format!("unexpected argument {s:?}\n{USAGE}")),
        }
    }
    if a.files == 0 || a.rounds == 0 || a.counts.contains(&0) {
        fail("--files, --rounds and --counts must be above 0");
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("pack bench: {msg}");
    std::process::exit(2)
}

/// Logs progress to stderr (tables and JSON go to stdout).
macro_rules! note {
    ($($t:tt)*) => { eprintln!("[pack bench] {}", format!($($t)*)) };
}

fn main() {
    let a = parse_args();
    let Some(mode) = a.mode.clone() else {
        // `cargo bench` with no arguments runs every bench target; this one needs a mode and
        // minutes of I/O, so it only prints how to run it.
        println!("{USAGE}");
        return;
    };
    fs::create_dir_all(&a.dir).unwrap_or_else(|e| fail(&format!("{}: {e}", a.dir.display())));
    let bin = find_bin(&a);
    let mut out = serde_json::Map::new();
    let modes: Vec<&str> = match mode.as_str() {
        "all" => vec!["throughput", "rss", "textsize"],
        m @ ("throughput" | "rss" | "textsize") => vec![m],
        m => fail(&format!("unknown mode {m:?}\n{USAGE}")),
    };
    for m in modes {
        let v = match m {
            "throughput" => throughput(&a, &bin),
            "rss" => rss(&a, &bin),
            _ => textsize(&a, &bin),
        };
        out.insert(m.to_string(), v);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(out)).unwrap()
        );
    }
}

/// The `shardpack` binary: `--bin`, or the workspace's release build. Warns when a source file
/// is newer than the binary (a stale build measures old code).
fn find_bin(a: &Args) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = a.bin.clone().unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("release").join("shardpack")
    });
    let Ok(meta) = fs::metadata(&bin) else {
        fail(&format!(
            "{} not found: run `cargo build --release -p shardpack-cli` first, or pass --bin PATH",
            bin.display()
        ))
    };
    if a.bin.is_none() {
        let built = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mut newest = None;
        for d in ["src", "cli/src"] {
            for f in list_files(&root.join(d)) {
                if let Ok(m) = fs::metadata(&f).and_then(|m| m.modified()) {
                    if m > built && newest.as_ref().is_none_or(|(t, _)| m > *t) {
                        newest = Some((m, f));
                    }
                }
            }
        }
        if let Some((_, f)) = newest {
            note!(
                "WARNING: {} is newer than {}; rebuild with `cargo build --release -p shardpack-cli`",
                f.display(),
                bin.display()
            );
        }
    }
    note!("binary: {}", bin.display());
    bin
}

// ---------------------------------------------------------------------------------------------
// Files, children, page cache
// ---------------------------------------------------------------------------------------------

/// Every regular file under `root`, sorted.
fn list_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

fn dir_bytes(root: &Path) -> u64 {
    list_files(root)
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn remove_path(p: &Path) {
    let r = if p.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => fail(&format!("cannot remove {}: {e}", p.display())),
    }
}

/// The outcome of one child process.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall: f64,
    user: f64,
    sys: f64,
    /// Peak resident set of the child, bytes.
    maxrss: u64,
}

/// Runs `cmd` to completion with stdout and stderr in `log`, timing it and reading its
/// resource usage with `wait4`. Exits the bench if the command fails.
fn run_child(cmd: &mut Command, log: &Path) -> Run {
    let f = File::create(log).unwrap_or_else(|e| fail(&format!("{}: {e}", log.display())));
    let f2 = f.try_clone().unwrap();
    cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {cmd:?}: {e}")));
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value (plain integers and timevals).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: `pid` is our own child, not yet reaped (we never call `Child::wait`);
        // `status` and `ru` are valid, writable locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let wall = started.elapsed().as_secs_f64();
    drop(child);
    let ok = r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let text = fs::read_to_string(log).unwrap_or_default();
        fail(&format!(
            "{cmd:?} failed (wait4 {r}, status {status:#x}):\n{}",
            text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        ));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Run {
        wall,
        user: tv(ru.ru_utime),
        sys: tv(ru.ru_stime),
        maxrss: ru.ru_maxrss as u64 * 1024, // KiB on Linux
    }
}

fn sync_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// `sync`, then `posix_fadvise(DONTNEED)` on every file (the library's eviction); the error
/// names the first file that failed and how many others did.
fn fadvise_dontneed(files: &[PathBuf]) -> Option<String> {
    shardpack::sys::evict_from_cache(files.iter().map(PathBuf::as_path))
        .err()
        .map(|e| e.to_string())
}

/// `echo 3 > /proc/sys/vm/drop_caches` (page cache, dentries and inodes; needs root).
fn drop_caches() -> Result<(), String> {
    fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .and_then(|mut f| f.write_all(b"3\n"))
        .map_err(|e| format!("/proc/sys/vm/drop_caches: {e}"))
}

/// Bytes of `files` resident in the page cache, and their total size, from `mincore` (maps each
/// file without touching it).
fn resident(files: &[PathBuf]) -> (u64, u64) {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let (mut res, mut total) = (0u64, 0u64);
    let mut vec = Vec::new();
    for p in files {
        let Ok(f) = File::open(p) else { continue };
        let len = f.metadata().map_or(0, |m| m.len()) as usize;
        total += len as u64;
        if len == 0 {
            continue;
        }
        // SAFETY: a fresh shared read-only mapping of an open file; it is only passed to
        // mincore (never dereferenced) and unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            continue;
        }
        let pages = len.div_ceil(page);
        vec.clear();
        vec.resize(pages, 0u8);
        // SAFETY: `addr..addr+len` is the mapping made above; `vec` holds one byte per page.
        let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
        if rc == 0 {
            let n = vec.iter().filter(|&&b| b & 1 != 0).count();
            res += ((n * page) as u64).min(len as u64);
        }
        // SAFETY: unmaps exactly the mapping made above, which nothing references.
        unsafe { libc::munmap(addr, len) };
    }
    (res, total)
}

/// `Cached:` from /proc/meminfo, bytes.
fn meminfo_cached() -> u64 {
    let s = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Cached:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |k| k * 1024)
}

/// util-linux `fincore` over (up to) the first 1,000 files: resident bytes, as a cross-check of
/// `mincore`. `None` when fincore is missing or fails.
fn fincore(files: &[PathBuf]) -> Option<u64> {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .args(files.iter().take(1000))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .sum(),
    )
}

fn read_all(files: &[PathBuf]) -> u64 {
    let mut buf = Vec::new();
    let mut n = 0;
    for p in files {
        buf.clear();
        if let Ok(mut f) = File::open(p) {
            n += f.read_to_end(&mut buf).unwrap_or(0) as u64;
        }
    }
    n
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Generated content
// ---------------------------------------------------------------------------------------------

const WORDS: &[&str] = &[
    "the", "of", "and", "a", "to", "in", "is", "was", "that", "for", "on", "with", "as", "by",
    "photo", "image", "dog", "cat", "bird", "car", "tree", "house", "street", "river", "red",
    "green", "blue", "small", "large", "old", "young", "running", "sitting", "standing", "near",
    "under", "over", "next", "front", "behind", "water", "grass", "sky", "cloud", "mountain",
    "table", "chair", "window", "door", "light", "dark", "white", "black", "two", "three",
    "people", "man", "woman", "child", "holding", "playing", "ball", "field", "city", "road",
];

fn fill_random(rng: &mut SplitMix64, out: &mut Vec<u8>, n: usize) {
    out.clear();
    // A JPEG start-of-image and APP0 marker, then noise (as incompressible as a real JPEG).
    out.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
    while out.len() < n {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(n);
}

fn fill_text(rng: &mut SplitMix64, out: &mut Vec<u8>, n: usize) {
    out.clear();
    let mut line = 0;
    while out.len() < n {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        line += w.len() + 1;
        if line > 60 + rng.below(20) as usize {
            out.push(b'\n');
            line = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(n);
}

/// Writes `count` files with `make(i) -> (relative path, bytes)` on two threads.
fn write_files<F>(root: &Path, count: u64, make: F) -> u64
where
    F: Fn(u64, &mut Vec<u8>) -> PathBuf + Sync,
{
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4)) as u64;
    let total = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let make = &make;
            let total = &total;
            s.spawn(move || {
                let mut buf = Vec::new();
                let mut bytes = 0;
                let mut i = t;
                while i < count {
                    let rel = make(i, &mut buf);
                    let p = root.join(rel);
                    fs::write(&p, &buf).unwrap_or_else(|e| fail(&format!("{}: {e}", p.display())));
                    bytes += buf.len() as u64;
                    i += threads;
                }
                total.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    total.into_inner()
}

/// A cached generated tree: `dir/name`, valid when `dir/name.done` holds `stamp`.
fn cached_tree(dir: &Path, name: &str, stamp: &str, gen: impl FnOnce(&Path) -> u64) -> PathBuf {
    let tree = dir.join(name);
    let done = dir.join(format!("{name}.done"));
    if fs::read_to_string(&done).ok().as_deref() == Some(stamp) && tree.is_dir() {
        note!("reusing {} ({stamp})", tree.display());
        return tree;
    }
    remove_path(&done);
    remove_path(&tree);
    fs::create_dir_all(&tree).unwrap();
    note!("generating {} ({stamp}) ...", tree.display());
    let t = Instant::now();
    let bytes = gen(&tree);
    sync_all();
    note!(
        "generated {:.1} MB in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    fs::write(&done, stamp).unwrap();
    tree
}

/// The throughput tree: `n` files in 100 class folders. File `i` belongs to class
/// `i * 100 / n`; every tenth file is text and shares the key of the jpg before it.
fn gen_throughput_tree(root: &Path, n: u64) -> u64 {
    let classes = 100u64.min(n);
    for c in 0..classes {
        fs::create_dir_all(root.join(format!("class_{c:03}"))).unwrap();
    }
    write_files(root, n, |i, buf| {
        let mut rng = SplitMix64::new(SEED ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // 0.5 KiB + two uniforms of 0-16 KiB: mean ~16.5 KiB, triangular up to 32.5 KiB.
        let size = 512 + rng.below(16 << 10) as usize + rng.below(16 << 10) as usize;
        let text = i % 10 == 9;
        let key = if text { i - 1 } else { i };
        let class = key * classes / n;
        if text {
            fill_text(&mut rng, buf, size);
        } else {
            fill_random(&mut rng, buf, size);
        }
        PathBuf::from(format!(
            "class_{class:03}/{key:08}.{}",
            if text { "txt" } else { "jpg" }
        ))
    })
}

/// A tree of `n` tiny text files (1-200 bytes) in 1,000 folders.
fn gen_tiny_tree(root: &Path, n: u64) -> u64 {
    let folders = 1000u64.min(n);
    for d in 0..folders {
        fs::create_dir_all(root.join(format!("d{d:04}"))).unwrap();
    }
    write_files(root, n, |i, buf| {
        let mut rng = SplitMix64::new(SEED ^ 0x7141 ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let size = 1 + rng.below(200) as usize;
        fill_text(&mut rng, buf, size);
        PathBuf::from(format!("d{:04}/{i:08}.txt", i * folders / n))
    })
}

// ---------------------------------------------------------------------------------------------
// throughput
// ---------------------------------------------------------------------------------------------

/// One timed command of the throughput rounds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tool {
    Tar,
    /// `tar -cf - -C TREE . | zstd -3 -q -o OUT.tar.zst` (zstd's CLI, one thread).
    TarZstd,
    /// `shardpack pack --compress C` with `--bin` (`candidate` 0) or `--candidate` number
    /// `candidate` (1-based).
    Pack {
        compress: String,
        candidate: usize,
    },
}

impl Tool {
    fn name(&self) -> String {
        match self {
            Tool::Tar => "tar -cf".into(),
            Tool::TarZstd => "tar -cf - | zstd -3".into(),
            Tool::Pack {
                compress,
                candidate: 0,
            } => format!("shardpack --compress {compress}"),
            Tool::Pack {
                compress,
                candidate,
            } => format!("candidate{candidate} --compress {compress}"),
        }
    }
}

struct Eviction {
    /// Tree bytes still resident after sync + fadvise (before drop_caches).
    resident_after_fadvise: u64,
    fadvise_failed: bool,
    drop: Option<Result<(), String>>,
}

fn evict(files: &[PathBuf], how: Evict) -> Eviction {
    sync_all();
    let (mut failed, mut res) = (false, 0);
    if how != Evict::Drop {
        if let Some(e) = fadvise_dontneed(files) {
            note!("posix_fadvise failed: {e}");
            failed = true;
        }
        res = resident(files).0;
    }
    let drop = (how != Evict::Fadvise).then(drop_caches);
    if how == Evict::Drop {
        // Measured after the drop (mincore opens every file, which re-caches inodes).
        res = resident(files).0;
        let _ = drop_caches();
    }
    Eviction {
        resident_after_fadvise: res,
        fadvise_failed: failed,
        drop,
    }
}

fn throughput(a: &Args, bin: &Path) -> Value {
    let tree = match &a.tree {
        Some(t) => t.clone(),
        None => {
            let n = a.files;
            let stamp = format!("v{TREE_VERSION} throughput files={n} seed={SEED:#x}");
            cached_tree(&a.dir, &format!("tree-{n}"), &stamp, |t| {
                gen_throughput_tree(t, n)
            })
        }
    };
    let files = list_files(&tree);
    let n = match &a.tree {
        Some(_) => files.len() as u64,
        None => a.files,
    };
    let total: u64 = files
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    if files.len() as u64 != n {
        fail(&format!(
            "{} holds {} files, expected {n}; delete it and rerun",
            tree.display(),
            files.len()
        ));
    }
    note!(
        "tree: {} files, {:.1} MB ({:.1} KiB mean)",
        files.len(),
        total as f64 / 1e6,
        total as f64 / files.len() as f64 / 1024.0
    );
    fs::create_dir_all(&a.dir).unwrap_or_else(|e| fail(&format!("{}: {e}", a.dir.display())));
    let out_tar = a.dir.join("out.tar");
    let out_tzst = a.dir.join("out.tar.zst");
    let out_none = a.dir.join("out-none");
    let out_auto = a.dir.join("out-auto");
    let log = a.dir.join("child.log");

    // Which eviction method works: each alone on a warm tree.
    let sample: Vec<PathBuf> = files.iter().take(1000).cloned().collect();
    read_all(&files);
    let (warm_res, _) = resident(&files);
    let warm_fincore = fincore(&sample);
    let fadv_err = fadvise_dontneed(&files);
    let (fadv_res, _) = resident(&files);
    let fadv_fincore = fincore(&sample);
    read_all(&files);
    let (warm2_res, _) = resident(&files);
    sync_all();
    let cached_before_drop = meminfo_cached();
    let drop_res = drop_caches();
    let cached_after_drop = meminfo_cached();
    let (drop_resident, _) = resident(&files);
    let drop_fincore = fincore(&sample);
    let fadvise_works = fadv_err.is_none() && fadv_res * 100 < total;
    let drop_works = drop_res.is_ok() && drop_resident * 100 < total;
    let method = match a.evict {
        Evict::Both if !drop_works => {
            note!("drop_caches unavailable; evicting with posix_fadvise only");
            Evict::Fadvise
        }
        e => e,
    };
    if !fadvise_works && !drop_works {
        note!("WARNING: neither eviction method emptied the page cache; timings are WARM");
    }
    let fin = |v: Option<u64>| v.map_or("n/a".to_string(), |b| format!("{:.1} MiB", mib(b)));
    let check = json!({
        "warm_resident_bytes": warm_res,
        "after_fadvise_resident_bytes": fadv_res,
        "fadvise_ok": fadv_err.is_none(),
        "fadvise_error": fadv_err,
        "rewarmed_resident_bytes": warm2_res,
        "drop_caches": match &drop_res { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
        "after_drop_caches_resident_bytes": drop_resident,
        "meminfo_cached_before_drop": cached_before_drop,
        "meminfo_cached_after_drop": cached_after_drop,
        "fincore_first_1000_files": { "warm": warm_fincore, "after_fadvise": fadv_fincore,
                                       "after_drop_caches": drop_fincore },
        "fadvise_works": fadvise_works,
        "drop_caches_works": drop_works,
    });

    // Rounds, interleaved: the order rotates each round.
    let mut tools: Vec<Tool> = Vec::new();
    for t in &a.tools {
        match t.as_str() {
            "tar" => tools.push(Tool::Tar),
            "tarzstd" => tools.push(Tool::TarZstd),
            c => {
                tools.push(Tool::Pack {
                    compress: c.into(),
                    candidate: 0,
                });
                for k in 1..=a.candidates.len() {
                    tools.push(Tool::Pack {
                        compress: c.into(),
                        candidate: k,
                    });
                }
            }
        }
    }
    let n_tools = tools.len();
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); n_tools];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); n_tools];
    let mut rss: Vec<u64> = vec![0; n_tools];
    let mut out_bytes: Vec<u64> = vec![0; n_tools];
    let mut tar_sync: Vec<f64> = Vec::new();
    let mut residency = Vec::new();
    let mut rounds_json = Vec::new();
    for r in 0..a.rounds {
        let mut round = serde_json::Map::new();
        for k in 0..n_tools {
            let ti = (k + r) % n_tools;
            let tool = &tools[ti];
            for p in [&out_tar, &out_tzst, &out_none, &out_auto] {
                remove_path(p);
            }
            let ev = evict(&files, method);
            residency.push(ev.resident_after_fadvise);
            if let Some(Err(e)) = &ev.drop {
                note!("drop_caches failed: {e}");
            }
            let (run, extra) = match tool {
                Tool::Tar => {
                    let run = run_child(
                        Command::new("tar")
                            .arg("-cf")
                            .arg(&out_tar)
                            .arg("-C")
                            .arg(&tree)
                            .arg("."),
                        &log,
                    );
                    let t = Instant::now();
                    File::open(&out_tar).and_then(|f| f.sync_all()).unwrap();
                    let synced = run.wall + t.elapsed().as_secs_f64();
                    tar_sync.push(synced);
                    out_bytes[ti] = fs::metadata(&out_tar).map_or(0, |m| m.len());
                    (run, Some(synced))
                }
                Tool::TarZstd => {
                    let run = run_child(
                        // pipefail: a tar that fails midway (an unreadable file) fails the
                        // run instead of giving a short archive and a flattering size.
                        Command::new("bash")
                            .arg("-c")
                            .arg("set -euo pipefail; tar -cf - -C \"$1\" . | zstd -3 -q -o \"$2\"")
                            .arg("bash")
                            .arg(&tree)
                            .arg(&out_tzst),
                        &log,
                    );
                    out_bytes[ti] = fs::metadata(&out_tzst).map_or(0, |m| m.len());
                    (run, None)
                }
                Tool::Pack {
                    compress,
                    candidate,
                } => {
                    let out = if compress == "none" {
                        &out_none
                    } else {
                        &out_auto
                    };
                    let exe = match *candidate {
                        0 => bin,
                        k => a.candidates[k - 1].as_path(),
                    };
                    let run = run_child(
                        Command::new(exe)
                            .arg("pack")
                            .arg(&tree)
                            .arg(out)
                            .args(["--compress", compress, "--force", "-q"])
                            .args(&a.pack_args),
                        &log,
                    );
                    out_bytes[ti] = dir_bytes(out);
                    (run, None)
                }
            };
            note!(
                "round {} {:<30} {:>7.2} s{}  cpu {:.2}+{:.2} s  rss {:.0} MiB  (tree resident \
                 before: {:.2} MiB{})",
                r + 1,
                tool.name(),
                run.wall,
                extra.map_or(String::new(), |s| format!(" ({s:.2} s with fsync)")),
                run.user,
                run.sys,
                mib(run.maxrss),
                mib(ev.resident_after_fadvise),
                match &ev.drop {
                    Some(Ok(())) => " after fadvise, then drop_caches",
                    Some(Err(_)) => " after fadvise; drop_caches FAILED",
                    None => " after fadvise",
                }
            );
            walls[ti].push(run.wall);
            cpu[ti].push(run.user + run.sys);
            rss[ti] = rss[ti].max(run.maxrss);
            round.insert(
                tool.name(),
                json!({"wall_s": run.wall, "user_s": run.user, "sys_s": run.sys,
                       "maxrss_bytes": run.maxrss, "wall_with_fsync_s": extra,
                       "tree_resident_before_bytes": ev.resident_after_fadvise,
                       "fadvise_ok": !ev.fadvise_failed}),
            );
        }
        rounds_json.push(Value::Object(round));
    }
    for p in [&out_tar, &out_tzst, &out_none, &out_auto] {
        remove_path(p);
    }
    remove_path(&log);

    // Speed ratios: per round (both measured in the same round), then the median.
    let paired = |base: &[f64], w: &[f64]| -> f64 {
        median(&base.iter().zip(w).map(|(b, t)| b / t).collect::<Vec<_>>())
    };
    let tar_i = tools.iter().position(|t| *t == Tool::Tar);
    let tar = tar_i.map(|i| walls[i].clone());
    let mut rows = Vec::new();
    let mut table = Vec::new();
    let mut row = |name: String, w: &[f64], cpu_s: Option<f64>, rss_b: Option<u64>, ob: u64| {
        let m = median(w);
        let fps = n as f64 / m;
        let mbs = total as f64 / 1e6 / m;
        let vs_tar = tar.as_ref().map(|t| paired(t, w));
        let vs_tar_sync = tar.as_ref().map(|_| paired(&tar_sync, w));
        let fmt_ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
        table.push(format!(
            "{name:<32} {m:>8.2} {fps:>10.0} {mbs:>8.1} {:>9} {:>9} {:>7} {:>8} {:>10.1}",
            fmt_ratio(vs_tar),
            fmt_ratio(vs_tar_sync),
            cpu_s.map_or("-".into(), |c| format!("{c:.2}")),
            rss_b.map_or("-".into(), |r| format!("{:.0}", mib(r))),
            ob as f64 / 1e6
        ));
        rows.push(
            json!({"name": name, "median_s": m, "files_per_s": fps, "mb_per_s": mbs,
                         "rounds_s": w, "speed_vs_tar": vs_tar, "speed_vs_tar_fsync": vs_tar_sync,
                         "median_cpu_s": cpu_s, "maxrss_bytes": rss_b, "output_bytes": ob}),
        );
    };
    for (i, t) in tools.iter().enumerate() {
        row(
            t.name(),
            &walls[i],
            Some(median(&cpu[i])),
            Some(rss[i]),
            out_bytes[i],
        );
        if *t == Tool::Tar {
            row(
                "tar -cf + fsync(archive)".into(),
                &tar_sync,
                None,
                None,
                out_bytes[i],
            );
        }
    }
    let find = |c: &str, cand: usize| {
        tools.iter().position(|t| {
            *t == Tool::Pack {
                compress: c.into(),
                candidate: cand,
            }
        })
    };
    let mut ratios = serde_json::Map::new();
    let mut ratio_lines = Vec::new();
    for c in ["none", "auto"] {
        if let (Some(t), Some(i)) = (&tar, find(c, 0)) {
            let r = paired(t, &walls[i]);
            ratios.insert(format!("{c}_over_tar"), json!(r));
            ratio_lines.push(format!("shardpack-{c}/tar = {r:.2}"));
        }
        if let (Some(z), Some(i)) = (tools.iter().position(|t| *t == Tool::TarZstd), find(c, 0)) {
            let r = out_bytes[i] as f64 / out_bytes[z].max(1) as f64;
            ratios.insert(format!("{c}_size_over_tarzstd"), json!(r));
            ratio_lines.push(format!("size shardpack-{c}/(tar | zstd -3) = {r:.3}"));
        }
        for k in 1..=a.candidates.len() {
            if let (Some(b), Some(i)) = (find(c, 0), find(c, k)) {
                let r = paired(&walls[b], &walls[i]);
                ratios.insert(format!("candidate{k}_{c}_over_bin_{c}"), json!(r));
                ratio_lines.push(format!("candidate{k}-{c}/shardpack-{c} = {r:.2}"));
            }
        }
    }

    if !a.json {
        println!();
        println!(
            "== throughput: {}{} files, {:.1} MB, cold cache, {} rounds (medians) ==",
            a.tree
                .as_ref()
                .map_or(String::new(), |t| format!("{}: ", t.display())),
            n,
            total as f64 / 1e6,
            a.rounds
        );
        println!("binary: {}", bin.display());
        for (k, c) in a.candidates.iter().enumerate() {
            println!("candidate{}: {}", k + 1, c.display());
        }
        if !a.pack_args.is_empty() {
            println!("extra pack arguments: {}", a.pack_args.join(" "));
        }
        println!(
            "eviction check on the warm tree ({:.1} MiB): resident {:.1} MiB -> after sync + \
             posix_fadvise(DONTNEED): {:.1} MiB ({}) [fincore, 1000 files: {} -> {}]",
            mib(total),
            mib(warm_res),
            mib(fadv_res),
            fadv_err.as_deref().unwrap_or("no failures"),
            fin(warm_fincore),
            fin(fadv_fincore),
        );
        println!(
            "  re-read: {:.1} MiB -> after echo 3 > /proc/sys/vm/drop_caches: {} {:.1} MiB \
             (meminfo Cached {:.0} -> {:.0} MiB) [fincore: {}]",
            mib(warm2_res),
            match &drop_res {
                Ok(()) => "ok,".to_string(),
                Err(e) => format!("FAILED ({e}),"),
            },
            mib(drop_resident),
            mib(cached_before_drop),
            mib(cached_after_drop),
            fin(drop_fincore),
        );
        println!(
            "  => fadvise {}, drop_caches {}; rounds evict with: {}; tree resident before each \
             run (after fadvise): max {:.2} MiB",
            if fadvise_works { "WORKS" } else { "FAILED" },
            if drop_works { "WORKS" } else { "FAILED" },
            match method {
                Evict::Fadvise => "sync + fadvise",
                Evict::Drop => "sync + drop_caches",
                Evict::Both => "sync + fadvise + drop_caches (also drops dentries/inodes)",
            },
            mib(residency.iter().copied().max().unwrap_or(0))
        );
        println!(
            "{:<32} {:>8} {:>10} {:>8} {:>9} {:>9} {:>7} {:>8} {:>10}",
            "", "median s", "files/s", "MB/s", "vs tar", "vs tar+fs", "cpu s", "rss MiB", "out MB"
        );
        for l in &table {
            println!("{l}");
        }
        println!(
            "speed ratios (median of per-round ratios, >1: faster): {}",
            ratio_lines.join(", ")
        );
    }
    json!({
        "files": n, "bytes": total, "rounds": a.rounds, "tree": tree, "eviction_check": check,
        "evict": format!("{method:?}"), "results": rows, "per_round": rounds_json,
        "ratios": ratios, "binary": bin, "candidates": a.candidates, "pack_args": a.pack_args,
    })
}

// ---------------------------------------------------------------------------------------------
// rss
// ---------------------------------------------------------------------------------------------

/// Index bytes per sample of a dataset (the part of a shard that grows with samples).
fn index_bytes_per_sample(out: &Path) -> f64 {
    match Dataset::open(out) {
        Ok(ds) => {
            let idx: u64 = ds
                .shards()
                .iter()
                .map(|s| s.bytes().footer().index_len)
                .sum();
            idx as f64 / ds.len().max(1) as f64
        }
        Err(e) => {
            note!("cannot open {}: {e}", out.display());
            f64::NAN
        }
    }
}

fn rss(a: &Args, bin: &Path) -> Value {
    let out = a.dir.join("out-rss");
    let log = a.dir.join("child.log");
    let base = run_child(Command::new(bin).arg("--version"), &log);
    let mut counts = a.counts.clone();
    counts.sort_unstable();
    let mut rows = Vec::new();
    // Per shard-size series: the previous (count, peak) for the step growth.
    let mut prev: Vec<Option<(u64, u64)>> = vec![None; a.shard_sizes.len()];
    let mut table = Vec::new();
    for &n in &counts {
        let stamp = format!("v{TREE_VERSION} tiny files={n} seed={SEED:#x}");
        let name = format!("rss-{n}");
        let tree = cached_tree(&a.dir, &name, &stamp, |t| gen_tiny_tree(t, n));
        for (si, ss) in a.shard_sizes.iter().enumerate() {
            remove_path(&out);
            let mut cmd = Command::new(bin);
            cmd.arg("pack")
                .arg(&tree)
                .arg(&out)
                .args(["--compress", &a.compress, "--force", "-q"]);
            if ss != "default" {
                cmd.args(["--shard-size", ss]);
            }
            cmd.args(&a.pack_args);
            let run = run_child(&mut cmd, &log);
            let ibs = index_bytes_per_sample(&out);
            let shards = Dataset::open(&out).map_or(0, |d| d.shards().len());
            let outb = dir_bytes(&out);
            remove_path(&out);
            let per_file_base = (run.maxrss.saturating_sub(base.maxrss)) as f64 / n as f64;
            let per_file_step =
                prev[si].map(|(pn, pr)| (run.maxrss as f64 - pr as f64) / (n - pn) as f64);
            note!(
                "{n} files, shard size {ss}: peak RSS {:.1} MiB, {:.1} s, cpu {:.1}+{:.1} s, {} shards",
                mib(run.maxrss),
                run.wall,
                run.user,
                run.sys,
                shards
            );
            table.push(format!(
                "{n:>10} {ss:>10} {shards:>7} {:>10.1} {:>9.1} {:>8.1} {:>14.0} {:>14} {:>12.1} {:>9.1}",
                mib(run.maxrss),
                run.wall,
                run.user + run.sys,
                per_file_base,
                per_file_step.map_or("-".into(), |s| format!("{s:.0}")),
                ibs,
                outb as f64 / 1e6,
            ));
            rows.push(json!({"files": n, "shard_size": ss, "shards": shards,
                             "maxrss_bytes": run.maxrss, "wall_s": run.wall,
                             "user_s": run.user, "sys_s": run.sys,
                             "rss_per_file_over_base_bytes": per_file_base,
                             "rss_per_file_vs_previous_count_bytes": per_file_step,
                             "index_bytes_per_sample": ibs, "output_bytes": outb}));
            prev[si] = Some((n, run.maxrss));
        }
        if !a.keep {
            note!("removing {}", tree.display());
            remove_path(&a.dir.join(format!("{name}.done")));
            remove_path(&tree);
        }
    }
    remove_path(&log);
    let top = rows
        .iter()
        .filter(|r| r["files"].as_u64() == counts.last().copied())
        .filter_map(|r| r["maxrss_bytes"].as_u64())
        .max()
        .unwrap_or(0);
    if !a.json {
        println!();
        println!(
            "== rss: shardpack pack --compress {}{} on trees of tiny files (1-200 B text, 1000 \
             folders) ==",
            a.compress,
            if a.pack_args.is_empty() {
                String::new()
            } else {
                format!(" {}", a.pack_args.join(" "))
            }
        );
        println!(
            "base: `shardpack --version` peak RSS {:.1} MiB; B/file (base) = (peak - base) / files; \
             B/file (step) = growth per file from the previous count",
            mib(base.maxrss)
        );
        println!(
            "{:>10} {:>10} {:>7} {:>10} {:>9} {:>8} {:>14} {:>14} {:>12} {:>9}",
            "files",
            "shard size",
            "shards",
            "peak MiB",
            "wall s",
            "cpu s",
            "B/file (base)",
            "B/file (step)",
            "index B/smp",
            "out MB"
        );
        for l in &table {
            println!("{l}");
        }
        println!(
            "goal: < 512 MiB at {} files -> {:.1} MiB ({})",
            counts.last().copied().unwrap_or(0),
            mib(top),
            if top < 512 << 20 { "met" } else { "MISSED" }
        );
    }
    json!({"compress": a.compress, "pack_args": a.pack_args, "base_maxrss_bytes": base.maxrss,
           "results": rows})
}

// ---------------------------------------------------------------------------------------------
// textsize
// ---------------------------------------------------------------------------------------------

fn python_stdlib() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig;print(sysconfig.get_paths()[\"stdlib\"])",
        ])
        .output()
        .unwrap_or_else(|e| fail(&format!("python3: {e}")));
    if !out.status.success() {
        fail("python3 could not report its stdlib path");
    }
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Copies the stdlib's `.py` files (not site-packages) into `dst`, keeping relative paths.
fn copy_stdlib(src: &Path, dst: &Path) -> u64 {
    let mut bytes = 0;
    for p in list_files(src) {
        let rel = p.strip_prefix(src).unwrap();
        if p.extension().map(OsStrExt::as_bytes) != Some(b"py")
            || rel.components().any(|c| c.as_os_str() == "site-packages")
        {
            continue;
        }
        let to = dst.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        bytes += fs::copy(&p, &to).unwrap_or_else(|e| fail(&format!("{}: {e}", p.display())));
    }
    bytes
}

/// Bytes a child writes to stdout.
fn count_stdout(mut child: std::process::Child) -> u64 {
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut so = child.stdout.take().unwrap();
    loop {
        match so.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => fail(&format!("reading a pipe: {e}")),
        }
    }
    let st = child.wait().unwrap();
    if !st.success() {
        fail(&format!("a pipeline stage failed: {st}"));
    }
    n
}

fn textsize(a: &Args, bin: &Path) -> Value {
    let stdlib = python_stdlib();
    let stamp = format!("v{TREE_VERSION} stdlib={}", stdlib.display());
    let tree = cached_tree(&a.dir, "pystdlib", &stamp, |t| copy_stdlib(&stdlib, t));
    let files = list_files(&tree);
    let raw: u64 = files
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    note!(
        "{}: {} .py files, {:.1} MB",
        stdlib.display(),
        files.len(),
        raw as f64 / 1e6
    );

    // tar -cf - -C tree . | zstd -3 -c
    let mut tar = Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("tar: {e}")));
    let zstd = Command::new("zstd")
        .args(["-3", "-c", "-q"])
        .stdin(Stdio::from(tar.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("zstd: {e}")));
    let tar_zst = count_stdout(zstd);
    if !tar.wait().unwrap().success() {
        fail("tar failed");
    }
    // Per-file zstd -3 frames, concatenated (no frame checksum, like shardpack's records).
    let rels: Vec<&Path> = files
        .iter()
        .map(|p| p.strip_prefix(&tree).unwrap())
        .collect();
    let perfile = count_stdout(
        Command::new("zstd")
            .args(["-3", "-c", "-q", "--no-check"])
            .args(&rels)
            .current_dir(&tree)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("zstd: {e}"))),
    );

    let out = a.dir.join("out-text");
    let log = a.dir.join("child.log");
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for policy in &a.policies {
        remove_path(&out);
        let run = run_child(
            Command::new(bin)
                .arg("pack")
                .arg(&tree)
                .arg(&out)
                .args(["--compress", policy, "--force", "--json"])
                .args(&a.pack_args),
            &log,
        );
        let summary: Value = fs::read_to_string(&log)
            .ok()
            .and_then(|s| {
                let start = s.find('{')?;
                serde_json::from_str(&s[start..]).ok()
            })
            .unwrap_or(Value::Null);
        let total = dir_bytes(&out);
        let (mut data, mut dict, mut index) = (0u64, 0u64, 0u64);
        if let Ok(ds) = Dataset::open(&out) {
            for s in ds.shards() {
                let f = s.bytes().footer();
                data += f.data_len;
                dict += f.dict_len;
                index += f.index_len;
            }
        }
        let fields = summary["fields"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .map(|f| {
                        format!(
                            "{}:{}{}",
                            f["name"].as_str().unwrap_or("?"),
                            f["compression"].as_str().unwrap_or("?"),
                            match f["dict_bytes"].as_u64() {
                                Some(d) if d > 0 => format!("+{}KiB dict", d.div_ceil(1024)),
                                _ => String::new(),
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let r = total as f64 / tar_zst as f64;
        table.push(format!(
            "{:<28} {:>11} {:>7.3}x {:>7.1}% {:>10} {:>8} {:>8} {:>7.1}  {}",
            format!("shardpack {policy}"),
            total,
            r,
            pct(total, raw),
            data,
            dict,
            index,
            run.wall,
            fields
        ));
        rows.push(
            json!({"policy": policy, "output_bytes": total, "over_tar_zst": r,
                         "data_bytes": data, "dict_bytes": dict, "index_bytes": index,
                         "wall_s": run.wall, "fields": summary["fields"]}),
        );
    }
    remove_path(&out);
    remove_path(&log);
    let auto = rows
        .iter()
        .find(|r| r["policy"] == "auto")
        .and_then(|r| r["over_tar_zst"].as_f64());
    if !a.json {
        println!();
        println!(
            "== textsize: {} .py files of {} ({:.2} MB) ==",
            files.len(),
            stdlib.display(),
            raw as f64 / 1e6
        );
        println!(
            "{:<28} {:>11} {:>8} {:>8} {:>10} {:>8} {:>8} {:>7}  fields",
            "", "bytes", "/tar.zst", "of raw", "data", "dict", "index", "wall s"
        );
        println!(
            "{:<28} {:>11} {:>7.3}x {:>7.1}%",
            "tar | zstd -3",
            tar_zst,
            1.0,
            pct(tar_zst, raw)
        );
        println!(
            "{:<28} {:>11} {:>7.3}x {:>7.1}%",
            "per-file zstd -3",
            perfile,
            perfile as f64 / tar_zst as f64,
            pct(perfile, raw)
        );
        for l in &table {
            println!("{l}");
        }
        if let Some(r) = auto {
            println!(
                "goal: shards (auto) <= 1.15x tar|zstd-3 -> {r:.3}x ({})",
                if r <= 1.15 { "met" } else { "MISSED" }
            );
        }
    }
    json!({"stdlib": stdlib, "files": files.len(), "raw_bytes": raw, "tar_zstd3_bytes": tar_zst,
           "perfile_zstd3_bytes": perfile, "perfile_over_tar_zst": perfile as f64 / tar_zst as f64,
           "shardpack": rows, "auto_over_tar_zst": auto})
}

//! Helpers for the CLI tests: run the real `shardpack` binary, build small trees, read trees
//! and datasets back, and snapshot a tree to prove it was not modified.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shardpack");

/// A temporary directory named for these tests.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shardpack-cli-test-")
        .tempdir()
        .unwrap()
}

/// A path for a message or an assertion.
pub fn disp(p: &Path) -> String {
    p.display().to_string()
}

/// A prepared invocation of the binary (optionally through a wrapper such as `setpriv`).
pub struct Cmd {
    cmd: Command,
    desc: String,
}

/// `shardpack ARGS...`.
pub fn shardpack(args: &[&dyn AsRef<OsStr>]) -> Cmd {
    wrapped(&[], args)
}

/// `PREFIX... shardpack ARGS...`, e.g. a privilege-dropping wrapper. An empty prefix runs the
/// binary directly.
pub fn wrapped(prefix: &[OsString], args: &[&dyn AsRef<OsStr>]) -> Cmd {
    let mut argv: Vec<OsString> = prefix.to_vec();
    argv.push(BIN.into());
    argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
    let desc = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Cmd { cmd, desc }
}

impl Cmd {
    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: &Path) -> Cmd {
        self.cmd.current_dir(dir);
        self.desc = format!("(cd {} && {})", dir.display(), self.desc);
        self
    }

    /// The underlying command, for tests that manage the child themselves.
    pub fn into_command(self) -> Command {
        self.cmd
    }

    /// Runs to completion and captures everything.
    pub fn run(mut self) -> Run {
        let out = self
            .cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.desc));
        let r = Run {
            desc: self.desc,
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            !r.stderr.contains("panicked"),
            "{} panicked:\n{}",
            r.desc,
            r.stderr
        );
        r
    }
}

/// Runs `shardpack ARGS...`.
pub fn sp(args: &[&dyn AsRef<OsStr>]) -> Run {
    shardpack(args).run()
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub desc: String,
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Raw stdout.
    pub stdout: Vec<u8>,
    /// Stderr, lossy.
    pub stderr: String,
}

impl Run {
    fn context(&self) -> String {
        format!(
            "command: {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.desc,
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }

    /// Asserts the exit code.
    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "unexpected exit code\n{}", self.context());
        self
    }

    /// Asserts exit code 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        self.code(0)
    }

    /// Asserts that stderr contains every needle (case-sensitive).
    #[track_caller]
    pub fn stderr_has(self, needles: &[&str]) -> Run {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}\n{}",
                self.context()
            );
        }
        self
    }

    /// Asserts that stderr contains at least one of the needles.
    #[track_caller]
    pub fn stderr_has_any(self, needles: &[&str]) -> Run {
        assert!(
            needles.iter().any(|n| self.stderr.contains(n)),
            "stderr lacks all of {needles:?}\n{}",
            self.context()
        );
        self
    }

    /// Asserts that stdout contains the needle.
    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Run {
        assert!(
            self.out().contains(needle),
            "stdout lacks {needle:?}\n{}",
            self.context()
        );
        self
    }

    /// Stdout as (lossy) text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stdout parsed as one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.context()))
    }
}

/// Asserts that a failed `pack` left nothing that looks like a dataset: exit code 1, an error
/// line on stderr holding every one of `mentions` (the path, what to do), no manifest.json in
/// OUT, and `shardpack info OUT` failing.
#[track_caller]
pub fn assert_pack_failed(r: Run, out: &Path, mentions: &[&str]) -> Run {
    let r = r
        .code(1)
        .stderr_has(&["shardpack: error:"])
        .stderr_has(mentions);
    assert!(
        !out.join("manifest.json").exists(),
        "{} exists after a failed pack\n{}",
        out.join("manifest.json").display(),
        r.context()
    );
    sp(&[&"info", &out]).code(1);
    r
}

/// Asserts that JSON object `v` has every key in `keys`.
#[track_caller]
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {v}"));
    for k in keys {
        assert!(obj.contains_key(*k), "JSON lacks key {k:?}: {v:#}");
    }
}

// ---------------------------------------------------------------------------------------------
// Building trees
// ---------------------------------------------------------------------------------------------

/// `root/rel` for a `/`-separated byte path (non-UTF-8 allowed).
pub fn at(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

/// Writes `data` at `root/rel`, creating parent folders.
pub fn put(root: &Path, rel: &[u8], data: &[u8]) {
    let p = at(root, rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
}

/// Deterministic incompressible bytes (splitmix64), like JPEG data.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic compressible text of about `len` bytes.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "the", "cat", "sat", "on", "a", "warm", "mat", "while", "dogs", "barked", "loudly",
        "outside",
    ];
    let r = noise(seed, len);
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[r[i % r.len().max(1)] as usize % WORDS.len()].as_bytes());
        out.push(if i % 11 == 10 { b'\n' } else { b' ' });
        i += 1;
    }
    out.truncate(len);
    out
}

/// A small ImageFolder-style tree: class folders `bird`, `cat`, `dog`, each with samples made
/// of a `.jpg` (random bytes), a `.json` and sometimes a `.txt`; plus a few odd names (no dot,
/// a double suffix, a leading dot, an empty file) and a file at the root (no class).
pub fn sample_tree(root: &Path) {
    for (c, class) in ["bird", "cat", "dog"].iter().enumerate() {
        for i in 0..4u64 {
            let seed = c as u64 * 100 + i;
            let key = format!("{class}/{i:04}");
            put(
                root,
                format!("{key}.jpg").as_bytes(),
                &noise(seed, 500 + 700 * i as usize),
            );
            let json = format!(
                "{{\"id\": {seed}, \"class\": \"{class}\", \"caption\": \"{}\"}}\n",
                String::from_utf8(text(seed, 60))
                    .unwrap()
                    .replace('\n', " ")
            );
            put(root, format!("{key}.json").as_bytes(), json.as_bytes());
            if i % 2 == 0 {
                put(
                    root,
                    format!("{key}.txt").as_bytes(),
                    &text(seed + 7, 300 + 100 * i as usize),
                );
            }
        }
    }
    put(root, b"cat/README", b"cats, no suffix\n");
    put(root, b"cat/archive.tar.gz", &noise(9, 200));
    put(root, b"dog/.meta", b"hidden file\n");
    put(root, b"dog/empty.txt", b"");
    put(root, b"top-level.txt", b"no class\n");
}

/// Sets the Unix permission bits of `p`.
pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()));
}

// ---------------------------------------------------------------------------------------------
// Reading trees and datasets back
// ---------------------------------------------------------------------------------------------

fn rel_bytes(root: &Path, p: &Path) -> Vec<u8> {
    p.strip_prefix(root)
        .unwrap()
        .as_os_str()
        .as_bytes()
        .to_vec()
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let m = fs::symlink_metadata(&p).unwrap();
        f(&p, &m);
        if m.is_dir() {
            walk(&p, f);
        }
    }
}

/// Every regular file under `root`: relative path bytes (`/`-separated) to contents. Panics
/// on anything that is neither a file nor a directory.
pub fn read_tree(root: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    walk(root, &mut |p, m| {
        if m.is_file() {
            let data = fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            out.insert(rel_bytes(root, p), data);
        } else {
            assert!(m.is_dir(), "unexpected non-file {}", p.display());
        }
    });
    out
}

/// Asserts two trees hold the same relative paths with the same bytes, naming the first
/// difference.
#[track_caller]
pub fn assert_same_tree(
    got: &BTreeMap<Vec<u8>, Vec<u8>>,
    want: &BTreeMap<Vec<u8>, Vec<u8>>,
    what: &str,
) {
    let show = |m: &BTreeMap<Vec<u8>, Vec<u8>>| {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(show(got), show(want), "{what}: the sets of paths differ");
    for (k, v) in want {
        assert!(
            got[k] == *v,
            "{what}: {} differs ({} bytes, expected {})",
            String::from_utf8_lossy(k),
            got[k].len(),
            v.len()
        );
    }
}

/// What a snapshot records of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    kind: &'static str,
    mode: u32,
    size: u64,
    mtime: Option<SystemTime>,
    /// File contents (tiny trees), link target, or the read error for unreadable files.
    content: Vec<u8>,
}

/// Paths, kinds, modes, sizes, mtimes and contents of everything under `root` (links are not
/// followed). Unreadable files record the error instead of their contents.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Snap> {
    let mut out = BTreeMap::new();
    let mut add = |p: &Path, m: &fs::Metadata| {
        let (kind, content) = if m.is_symlink() {
            (
                "link",
                fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec(),
            )
        } else if m.is_dir() {
            ("dir", Vec::new())
        } else {
            let c = fs::read(p).unwrap_or_else(|e| format!("unreadable: {e}").into_bytes());
            ("file", c)
        };
        out.insert(
            rel_bytes(root, p),
            Snap {
                kind,
                mode: m.permissions().mode(),
                size: if m.is_dir() { 0 } else { m.len() },
                mtime: m.modified().ok(),
                content,
            },
        );
    };
    let rm = fs::symlink_metadata(root).unwrap();
    add(root, &rm);
    walk(root, &mut add);
    out
}

/// Asserts `root` still matches `before`.
#[track_caller]
pub fn assert_unchanged(root: &Path, before: &BTreeMap<Vec<u8>, Snap>, what: &str) {
    let after = snapshot(root);
    let names = |m: &BTreeMap<Vec<u8>, Snap>| {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&after),
        names(before),
        "{what}: paths under {} changed",
        root.display()
    );
    for (k, v) in before {
        assert_eq!(
            &after[k],
            v,
            "{what}: {} changed under {}",
            String::from_utf8_lossy(k),
            root.display()
        );
    }
}

/// The dataset's manifest.json.
pub fn manifest(out: &Path) -> Value {
    let p = out.join("manifest.json");
    let b = fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_slice(&b).unwrap()
}

/// `samples` of each shard listed in the manifest.
pub fn shard_samples(out: &Path) -> Vec<u64> {
    manifest(out)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["samples"].as_u64().unwrap())
        .collect()
}

/// One line of `shardpack ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsLine {
    pub index: u64,
    pub key: Vec<u8>,
    /// `-`, `N`, or `N:class` as printed.
    pub label: Vec<u8>,
    /// Field name and raw size.
    pub fields: Vec<(Vec<u8>, u64)>,
}

/// Runs `shardpack ls DATASET` and parses every line.
pub fn ls(out: &Path) -> Vec<LsLine> {
    let r = sp(&[&"ls", &out]).ok();
    parse_ls(&r.stdout)
}

/// Parses `ls` output.
pub fn parse_ls(stdout: &[u8]) -> Vec<LsLine> {
    assert!(
        stdout.is_empty() || stdout.ends_with(b"\n"),
        "ls output does not end with a newline"
    );
    stdout
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let cols: Vec<&[u8]> = line.split(|&c| c == b'\t').collect();
            assert!(
                cols.len() >= 4,
                "ls line has fewer than 4 columns: {:?}",
                String::from_utf8_lossy(line)
            );
            let fields = cols[3..]
                .iter()
                .map(|f| {
                    let eq = f.iter().rposition(|&c| c == b'=').unwrap_or_else(|| {
                        panic!("ls field without '=': {:?}", String::from_utf8_lossy(f))
                    });
                    let size = std::str::from_utf8(&f[eq + 1..]).unwrap().parse().unwrap();
                    (f[..eq].to_vec(), size)
                })
                .collect();
            LsLine {
                index: std::str::from_utf8(cols[0]).unwrap().parse().unwrap(),
                key: cols[1].to_vec(),
                label: cols[2].to_vec(),
                fields,
            }
        })
        .collect()
}

/// Splits a relative file path into (key, field) under the default rules: the key runs up to
/// the first dot of the file name; a name without a dot, or ending in its only dot, is all
/// key with the empty field.
pub fn split_rel(rel: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let name_start = rel.iter().rposition(|&c| c == b'/').map_or(0, |p| p + 1);
    let name = &rel[name_start..];
    let (k, f) = match name.iter().position(|&c| c == b'.') {
        Some(d) if d + 1 < name.len() => (d, d + 1),
        _ => (name.len(), name.len()),
    };
    (rel[..name_start + k].to_vec(), name[f..].to_vec())
}

/// The samples a tree should pack into under the default rules (see [`split_rel`]): key to
/// field to size.
pub fn expected_samples(
    tree: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, u64>> {
    let mut out: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, u64>> = BTreeMap::new();
    for (rel, data) in tree {
        let (key, field) = split_rel(rel);
        let prev = out.entry(key).or_default().insert(field, data.len() as u64);
        assert!(prev.is_none(), "test tree has a key/field collision");
    }
    out
}

/// Reports a test that cannot run here. Written straight to the process's stderr, past the
/// test harness's capture, so a skipped check is visible in `cargo test` output instead of
/// passing silently.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A command prefix that runs the binary as a user for whom `chmod 000` makes a file
/// unreadable: empty when not root; `setpriv` to nobody when root. `Err` says why that is
/// impossible here.
pub fn unprivileged_prefix() -> Result<Vec<OsString>, String> {
    if euid() != 0 {
        return Ok(Vec::new());
    }
    let works = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        return Err(
            "running as root, and `setpriv --reuid=65534` (util-linux) is unavailable \
                    or fails here; chmod 000 does not stop root's reads"
                .into(),
        );
    }
    Ok([
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]
    .iter()
    .map(OsString::from)
    .collect())
}

/// Checks that, through `prefix`, `file` really cannot be read (catches a kept
/// CAP_DAC_OVERRIDE or a filesystem that ignores modes).
pub fn really_unreadable(prefix: &[OsString], file: &Path) -> bool {
    let mut argv: Vec<OsString> = prefix.to_vec();
    argv.push("cat".into());
    argv.push(file.into());
    let st = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(st, Ok(s) if !s.success())
}

/// A tmpfs mounted for the test, unmounted on drop (also when the test fails).
pub struct Mount(pub PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Mounts a tmpfs of `size` (e.g. "2m") on the new folder `dir`; `Err` says why it cannot.
pub fn mount_tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
    if euid() != 0 {
        return Err("not root, so no tmpfs can be mounted".into());
    }
    fs::create_dir_all(dir).unwrap();
    let o = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "`mount -t tmpfs` fails here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(Mount(dir.to_path_buf()))
}

/// Free bytes on the filesystem holding `p`.
pub fn free_bytes(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs is plain old data, for which all-zero bytes are a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a valid statvfs to fill.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", p.display());
    s.f_bavail as u64 * s.f_frsize as u64
}

/// `bash -c 'trap "" XFSZ; ulimit -f KIB; exec shardpack ARGS...'`: files above KIB KiB cannot
/// grow, and with SIGXFSZ ignored the write fails with EFBIG instead of killing the process.
pub fn under_file_size_limit(kib: u64, cmd_args: &[&dyn AsRef<OsStr>]) -> Run {
    let prefix: Vec<OsString> = [
        "bash",
        "-c",
        &format!("trap '' XFSZ; ulimit -f {kib} && exec \"$0\" \"$@\""),
    ]
    .iter()
    .map(OsString::from)
    .collect();
    wrapped(&prefix, cmd_args).run()
}

//! The `shardpack` binary on damaged datasets and failing disks (issue 8, items 3, 4 and the
//! read side of 9): `extract` never leaves a file that looks complete and is not, a damaged
//! shard does not lock out `info`, `ls`, `cat` and `extract --skip-errors`, and `cat` and
//! `extract` copy a large record in bounded memory.
//!
//! The damaged datasets are copies of fixtures/corrupt/ (see its README.md): 3 shards of 12,
//! 12 and 6 samples packed from fixtures/trees/corrupt-base/; every edit is to shard 1
//! (global samples 12..24).

#![cfg(unix)]

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use util::*;

const DAMAGED: &str = "shard-000001.spk";
/// flipped-record-bit: the sample with the flipped bit (its `bin` record).
const BAD_KEY: &str = "square/0010";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of fixtures/corrupt/`case` at `dst`.
fn copy_case(case: &str, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(repo().join("fixtures/corrupt").join(case)).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn source_tree() -> BTreeMap<Vec<u8>, Vec<u8>> {
    read_tree(&repo().join("fixtures/trees/corrupt-base"))
}

/// The keys (`class/NNNN`) of the samples of shard 1, from the intact dataset's listing.
fn shard1_keys() -> Vec<String> {
    let r = sp(&[&"ls", &repo().join("fixtures/corrupt/intact")]).ok();
    r.out()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let i: u64 = parts.next()?.parse().ok()?;
            let key = parts.next()?;
            (12..24).contains(&i).then(|| key.to_string())
        })
        .collect()
}

/// `tree` without the files of the samples `keys`.
fn without(tree: &BTreeMap<Vec<u8>, Vec<u8>>, keys: &[String]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    tree.iter()
        .filter(|(p, _)| {
            let p = String::from_utf8_lossy(p);
            !keys.iter().any(|k| p.starts_with(&format!("{k}.")))
        })
        .map(|(p, d)| (p.clone(), d.clone()))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Item 3: extract never leaves a truncated file that looks normal
// ---------------------------------------------------------------------------------------------

/// Packs three incompressible 1,000,000-byte files.
fn pack_big_files(t: &Path) -> PathBuf {
    let tree = t.join("tree");
    for i in 0..3u64 {
        put(&tree, format!("f{i}.bin").as_bytes(), &noise(i, 1_000_000));
    }
    let ds = t.join("ds");
    sp(&[&"pack", &tree, &ds, &"--compress", &"none"]).ok();
    ds
}

/// A failed write (here: the file-size limit, `ulimit -f`, which needs no mount) leaves DIR as
/// it was, names the file, and exits 1.
#[test]
fn extract_that_cannot_write_keeps_nothing() {
    let t = tmp();
    let ds = pack_big_files(t.path());
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    // SIGXFSZ ignored (inherited through exec), so the write fails with EFBIG instead of
    // killing the process. 500 blocks are 256 or 512 KB depending on the shell.
    let script = format!(
        "trap '' XFSZ; ulimit -f 500 && exec {} extract {} {}",
        BIN,
        ds.display(),
        out.display()
    );
    let o = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    assert!(
        stderr.contains(&disp(&out.join("f0.bin"))),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("nothing was kept"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(entries(&out), Vec::<String>::new(), "DIR is left as it was");

    // The same extract without the limit works into the same (still empty) directory.
    sp(&[&"extract", &ds, &out]).ok();
    let got = read_tree(&out);
    assert_eq!(got.len(), 3);
    assert_eq!(got[&b"f1.bin".to_vec()], noise(1, 1_000_000));
}

/// Unmounts when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The case from the issue: a full disk (a 2 MiB tmpfs) during extract leaves no truncated
/// file that looks normal. Needs root to mount; skipped with the reason otherwise.
#[test]
fn extract_on_a_full_disk_keeps_nothing() {
    let t = tmp();
    let ds = pack_big_files(t.path());
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::piped())
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipped: cannot mount a tmpfs ({}); needs root",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: cannot run mount: {e}");
            return;
        }
    }
    let _m = Mount(mnt.clone());
    // Into a folder extract creates, and into the (empty) mount point itself.
    for out in [mnt.join("out"), mnt.clone()] {
        sp(&[&"extract", &ds, &out]).code(1).stderr_has(&[
            "No space left on device",
            "nothing was kept",
            &disp(&out),
        ]);
        assert_eq!(entries(&mnt), Vec::<String>::new(), "{}", disp(&out));
    }
}

/// An extract that was killed leaves only extract's own two names in DIR; the next extract
/// into DIR removes them. Any other file still makes DIR unacceptable.
#[test]
fn extract_removes_what_a_killed_extract_left() {
    let t = tmp();
    copy_case("intact", &t.path().join("ds"));
    let out = t.path().join("out");
    fs::create_dir_all(out.join(".shardpack-extract.tmp/circle")).unwrap();
    fs::write(
        out.join(".shardpack-extract.tmp/circle/0000.bin"),
        b"partial",
    )
    .unwrap();
    fs::write(out.join(".shardpack-extract.part"), b"partial").unwrap();
    sp(&[&"extract", &t.path().join("ds"), &out]).ok();
    assert_same_tree(&read_tree(&out), &source_tree(), "after a stale extract");

    let other = t.path().join("other");
    fs::create_dir_all(other.join(".shardpack-extract.tmp")).unwrap();
    fs::write(other.join("mine.txt"), b"keep me").unwrap();
    sp(&[&"extract", &t.path().join("ds"), &other])
        .code(1)
        .stderr_has(&["is not empty"]);
    assert_eq!(fs::read(other.join("mine.txt")).unwrap(), b"keep me");
}

// ---------------------------------------------------------------------------------------------
// Item 4: one damaged shard does not lock out the dataset
// ---------------------------------------------------------------------------------------------

/// Shard-level damage: `info` describes the dataset and reports the shard; `ls` lists the
/// intact shards; `cat` serves their samples; `extract --skip-errors` salvages them all; plain
/// `extract` fails and creates nothing.
#[test]
fn a_damaged_shard_does_not_lock_out_the_dataset() {
    let keys = shard1_keys();
    assert_eq!(keys.len(), 12);
    for (case, reason) in [
        ("truncated-shard", "truncated"),
        ("missing-shard", "missing"),
        ("bad-magic", "bad magic"),
        ("flipped-index-bit", "checksum mismatch"),
    ] {
        let t = tmp();
        let ds = t.path().join("ds");
        copy_case(case, &ds);

        // info: the whole description, the damaged shard, exit 1.
        let r = sp(&[&"info", &ds]).code(1).stderr_has(&[DAMAGED, reason]);
        let out = r.out();
        for want in [
            "samples:        30",
            "shards:         3",
            "fields:",
            "classes:",
        ] {
            assert!(out.contains(want), "{case}: info lacks {want:?}:\n{out}");
        }
        assert!(
            out.contains("damaged shards: 1 of 3 (12 samples unreadable)"),
            "{case}:\n{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.contains(DAMAGED) && l.contains("12..24") && l.contains(reason)),
            "{case}:\n{out}"
        );
        let j = sp(&[&"info", &"--json", &ds]).code(1).json();
        assert_eq!(j["samples"], 30, "{case}");
        let d = j["damaged"].as_array().expect("damaged is an array");
        assert_eq!(d.len(), 1, "{case}: {j}");
        assert_eq!(d[0]["shard"], 1);
        assert_eq!(d[0]["file"], DAMAGED);
        assert_eq!(d[0]["first_sample"], 12);
        assert_eq!(d[0]["samples"], 12);
        assert!(
            d[0]["reason"].as_str().unwrap().contains(reason),
            "{case}: {j}"
        );

        // ls: the 18 intact samples, an error for the damaged shard, exit 1.
        let r = sp(&[&"ls", &ds])
            .code(1)
            .stderr_has(&[DAMAGED, "samples 12..24", reason]);
        let listed: Vec<u64> = r
            .out()
            .lines()
            .map(|l| l.split('\t').next().unwrap().parse().unwrap())
            .collect();
        let want: Vec<u64> = (0..12).chain(24..30).collect();
        assert_eq!(listed, want, "{case}");

        // cat: intact samples are served exactly; a key of the damaged shard is an error that
        // names it (not "no such key").
        let tree = source_tree();
        let r = sp(&[&"cat", &ds, &"circle/0000", &"txt"]).ok();
        assert_eq!(r.stdout, tree[&b"circle/0000.txt".to_vec()], "{case}");
        let r = sp(&[&"cat", &ds, &keys[0].as_str(), &"bin"])
            .code(1)
            .stderr_has(&[DAMAGED, reason, "may be in this one"]);
        assert!(r.stdout.is_empty());

        // extract: plain fails, creates nothing, and points at --skip-errors.
        let plain = t.path().join("plain");
        sp(&[&"extract", &ds, &plain]).code(1).stderr_has(&[
            DAMAGED,
            "nothing was extracted",
            "--skip-errors",
        ]);
        assert!(
            !plain.exists(),
            "{case}: plain extract created {}",
            disp(&plain)
        );

        // extract --skip-errors: every intact sample, byte-exact; the damaged shard's samples
        // listed; exit 1.
        let salvage = t.path().join("salvage");
        let r = sp(&[&"extract", &"--skip-errors", &ds, &salvage])
            .code(1)
            .stderr_has(&[
                "left out: samples 12..24 (12 samples)",
                DAMAGED,
                reason,
                "left out 12 samples",
            ])
            .stdout_has("from 18 of 30 samples");
        let _ = r;
        assert_same_tree(&read_tree(&salvage), &without(&tree, &keys), case);
    }
}

/// One flipped byte inside a valid shard: plain `extract` stops without keeping a half tree;
/// `--skip-errors` salvages the 29 good samples and names the bad one.
#[test]
fn extract_skip_errors_salvages_around_a_bad_record() {
    let t = tmp();
    let ds = t.path().join("ds");
    copy_case("flipped-record-bit", &ds);

    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    sp(&[&"extract", &ds, &out]).code(1).stderr_has(&[
        "extract stopped at sample 18",
        BAD_KEY,
        "checksum mismatch",
        "nothing was kept",
        "--skip-errors",
    ]);
    assert_eq!(entries(&out), Vec::<String>::new(), "no half tree");

    sp(&[&"extract", &"--skip-errors", &ds, &out])
        .code(1)
        .stderr_has(&[
            "left out: corrupt record",
            DAMAGED,
            BAD_KEY,
            "\"bin\"",
            "left out 1 sample ",
        ])
        .stdout_has("extracted 87 files");
    let want = without(&source_tree(), &[BAD_KEY.to_string()]);
    assert_same_tree(&read_tree(&out), &want, "salvaged");

    // An intact dataset with --skip-errors: everything, exit 0.
    copy_case("intact", &t.path().join("intact"));
    let all = t.path().join("all");
    sp(&[&"extract", &"--skip-errors", &t.path().join("intact"), &all]).ok();
    assert_same_tree(&read_tree(&all), &source_tree(), "intact");
}

/// A record that fails only while it is being streamed (a cut zstd frame whose checksum is
/// right, as a faulty writer could store): the partial file is removed and nothing is kept;
/// with `--skip-errors` only that sample is left out.
#[test]
fn extract_removes_a_file_that_fails_midway() {
    use shardpack::codec::{new_cctx, FieldEncoder};
    use shardpack::format::Codec;
    use shardpack::reader::STREAM_ABOVE;
    use shardpack::writer::{DatasetInfo, DatasetWriter, EncodedRecord, FieldSpec, WriterOptions};
    let t = tmp();
    let ds = t.path().join("ds");
    fs::create_dir(&ds).unwrap();
    let raw = text(3, STREAM_ABOVE as usize * 2);
    let mut frame = Vec::new();
    let enc = FieldEncoder::new(Codec::Zstd, 3, None).unwrap();
    assert_eq!(enc.encode(&mut new_cctx(), &raw, &mut frame), Codec::Zstd);
    let mut w =
        DatasetWriter::create(&ds, vec![FieldSpec::zstd("txt")], WriterOptions::default()).unwrap();
    w.append(b"a/good", None, &[(0, b"fine")]).unwrap();
    let cut = EncodedRecord {
        field: 0,
        codec: Codec::Zstd,
        stored: &frame[..frame.len() * 3 / 4],
        raw_len: raw.len() as u64,
    };
    w.append_encoded(b"b/bad", None, &[cut]).unwrap();
    w.finish(DatasetInfo::default()).unwrap();

    let out = t.path().join("out");
    sp(&[&"extract", &ds, &out])
        .code(1)
        .stderr_has(&["b/bad", "ends early", "nothing was kept"]);
    assert!(!out.exists(), "extract created {}", disp(&out));

    sp(&[&"extract", &"--skip-errors", &ds, &out])
        .code(1)
        .stderr_has(&["left out: corrupt record", "b/bad", "left out 1 sample "]);
    let got = read_tree(&out);
    assert_eq!(got.keys().collect::<Vec<_>>(), [&b"a/good.txt".to_vec()]);
    assert_eq!(entries(&out), ["a"], "no temporary names are left");
}

/// Keys that would escape DIR or collide with extract's own temporary names are refused (and
/// with `--skip-errors`, left out and listed), and nothing escapes.
#[test]
fn extract_refuses_escaping_and_reserved_paths() {
    use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
    // Each refusal names the rule (format::check_extraction_path's, or extract's own).
    for (key, rule) in [
        (&b"../escaped"[..], "has a '.' or '..' component"),
        (
            b".shardpack-extract.tmp/x",
            "is reserved for extract's temporary files",
        ),
    ] {
        let t = tmp();
        let ds = t.path().join("ds");
        fs::create_dir(&ds).unwrap();
        let mut w =
            DatasetWriter::create(&ds, vec![FieldSpec::raw("bin")], WriterOptions::default())
                .unwrap();
        w.append(b"a/ok", None, &[(0, b"fine")]).unwrap();
        if w.append(key, None, &[(0, b"bad")]).is_err() {
            eprintln!("the writer refuses {key:?} itself");
            continue;
        }
        w.finish(DatasetInfo::default()).unwrap();
        let out = t.path().join("out");
        sp(&[&"extract", &ds, &out]).code(1).stderr_has(&[
            "would escape",
            rule,
            "nothing was kept",
        ]);
        assert!(!out.exists());
        sp(&[&"extract", &"--skip-errors", &ds, &out])
            .code(1)
            .stderr_has(&["left out", "would escape", "left out 1 sample "]);
        assert_eq!(entries(&out), ["a"]);
        assert!(!t.path().join("escaped.bin").exists());
    }
}

// ---------------------------------------------------------------------------------------------
// Item 9 (read side): cat and extract stream a large record in bounded memory
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` and returns its exit code, its peak resident memory in bytes (from `wait4`)
/// and how many bytes it wrote to its stdout if that is piped.
fn run_measured_counting(mut cmd: Command) -> (i32, u64, u64) {
    use std::io::Read;
    let mut child = cmd.spawn().unwrap();
    let counter = child.stdout.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k as u64,
                }
            }
        })
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for (`child` is never waited on); both
    // pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let written = counter.map_or(0, |t| t.join().unwrap());
    (code, ru.ru_maxrss as u64 * 1024, written)
}

fn run_measured(cmd: Command) -> (i32, u64) {
    let (code, rss, _) = run_measured_counting(cmd);
    (code, rss)
}

/// `cat` of a 1 GiB zstd record (zeros: the shard is tiny) and of a 256 MiB raw record, and
/// `extract` of the raw one, each stay far below the record's size in peak RSS (before
/// streaming, each held the whole record: the map's pages or the decoded buffer). The raw
/// record is smaller than the 1-2 GiB only to keep the test to a few seconds here:
/// the writer and extract write it to disk.
#[test]
fn cat_and_extract_stream_a_large_record_in_bounded_memory() {
    use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
    const ZST: usize = 1 << 30;
    const RAW: usize = 256 << 20;
    const LIMIT: u64 = 128 << 20;
    let t = tmp();
    let make = |name: &str, spec: FieldSpec, len: usize| {
        let ds = t.path().join(name);
        fs::create_dir(&ds).unwrap();
        // Zeroed memory that is only read is not resident: no RSS here either.
        let zeros = vec![0u8; len];
        let mut w = DatasetWriter::create(&ds, vec![spec], WriterOptions::default()).unwrap();
        w.append(b"big/data", None, &[(0, &zeros)]).unwrap();
        w.finish(DatasetInfo::default()).unwrap();
        ds
    };
    let zst = make("zst", FieldSpec::zstd("zst"), ZST);
    let raw = make("raw", FieldSpec::raw("raw"), RAW);
    for (ds, len) in [(&zst, ZST), (&raw, RAW)] {
        let mut cmd = Command::new(BIN);
        cmd.arg("cat")
            .arg(ds)
            .arg("big/data")
            .stdout(Stdio::piped());
        // Count what arrives (a thread drains the pipe), so a short output fails too.
        let (code, rss, got) = run_measured_counting(cmd);
        assert_eq!(code, 0, "cat {}", disp(ds));
        assert_eq!(got, len as u64, "cat {} wrote {got} bytes", disp(ds));
        assert!(rss < LIMIT, "cat {}: peak RSS {} MiB", disp(ds), rss >> 20);
    }
    let out = t.path().join("out");
    let mut cmd = Command::new(BIN);
    cmd.arg("extract").arg(&raw).arg(&out).stdout(Stdio::null());
    let (code, rss) = run_measured(cmd);
    assert_eq!(code, 0, "extract");
    assert!(rss < LIMIT, "extract: peak RSS {} MiB", rss >> 20);
    let f = out.join("big/data.raw");
    assert_eq!(fs::metadata(&f).unwrap().len(), RAW as u64);
}

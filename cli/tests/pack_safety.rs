//! `shardpack pack` never loses data on a failure path, end to end on the real binary:
//!
//! 1. `--force` builds the new dataset beside the old one and swaps only when it is complete:
//!    a full disk, a file size limit or a signal during `--force` leaves the old dataset
//!    complete (it passes `verify`); every intermediate state a crash can leave is handled by
//!    `open` and by the next `pack`, which removes only what it recognises as its own.
//! 2. SIGINT and SIGTERM stop the pack, remove what it wrote, and exit 130 and 143 with one
//!    line on stderr.

#![cfg(unix)]

mod util;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const MARKER: &str = ".shardpack-writing";

/// The names in `dir`, sorted (empty when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The staging directories of `out` in its parent.
fn stages(out: &Path) -> Vec<String> {
    let prefix = format!(".{}.shardpack-", out.file_name().unwrap().to_string_lossy());
    names(out.parent().unwrap())
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// `shardpack pack SRC OUT EXTRA...` (no -q: tests read the summary).
fn pack_cmd(src: &Path, out: &Path, extra: &[&str]) -> Cmd {
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"pack", &src, &out];
    args.extend(extra.iter().map(|a| a as &dyn AsRef<OsStr>));
    shardpack(&args)
}

/// `count` files of `size` bytes of noise (seeded by `seed`) in two classes.
fn noise_tree(src: &Path, count: u64, size: usize, seed: u64) {
    for i in 0..count {
        put(
            src,
            format!("c{}/{i:04}.jpg", i % 2).as_bytes(),
            &noise(seed * 100_000 + i, size),
        );
    }
}

/// Asserts OUT holds exactly the dataset `want` (read with `read_tree` before) and that it
/// verifies, and that no staging directory is left beside it.
#[track_caller]
fn assert_old_dataset_intact(out: &Path, want: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>) {
    assert_same_tree(&read_tree(out), want, "the previous dataset");
    sp(&[&"verify", &out]).ok().stdout_has("OK:");
    assert_eq!(
        stages(out),
        Vec::<String>::new(),
        "staging directories left"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. --force never loses the old dataset
// ---------------------------------------------------------------------------------------------

#[test]
fn force_on_a_full_disk_keeps_the_old_dataset() {
    let t = tmp();
    let disk = t.path().join("disk");
    let _mount = match mount_tmpfs(&disk, "20m") {
        Ok(m) => m,
        Err(why) => {
            skip("force_on_a_full_disk_keeps_the_old_dataset", &why);
            return;
        }
    };
    // 12 MiB of noise: the old dataset fits, the new one beside it does not.
    let src = t.path().join("src");
    noise_tree(&src, 48, 256 << 10, 1);
    let out = disk.join("ds");
    pack_cmd(&src, &out, &["--shard-size", "2MiB"]).run().ok();
    let old = read_tree(&out);
    // The tree changes; the new pack runs out of space part-way.
    fs::remove_dir_all(&src).unwrap();
    noise_tree(&src, 48, 256 << 10, 2);
    let r = pack_cmd(&src, &out, &["--shard-size", "2MiB", "--force"]).run();
    let r = r
        .code(1)
        .stderr_has(&[&disp(&out), "No space left on device", "cannot write"]);
    assert!(
        r.stderr.contains(".ds.shardpack-new."),
        "the error names the staging file: {}",
        r.stderr
    );
    assert_old_dataset_intact(&out, &old);
    assert_eq!(names(&disk), ["ds"]);
    // With room again (the old dataset removed by hand), the same command succeeds.
    fs::remove_dir_all(&out).unwrap();
    pack_cmd(&src, &out, &["--shard-size", "2MiB", "--force"])
        .run()
        .ok();
    sp(&[&"verify", &out]).ok();
}

#[test]
fn force_that_fails_late_keeps_the_old_dataset() {
    // No mount needed: a file size limit makes the new pack fail at its last, large shard,
    // after many small ones were written beside the old dataset.
    let t = tmp();
    let src = t.path().join("src");
    noise_tree(&src, 40, 20 << 10, 1);
    let out = t.path().join("ds");
    pack_cmd(&src, &out, &["--shard-size", "64KiB"]).run().ok();
    let old = read_tree(&out);
    put(&src, b"c1/zzzz-big.jpg", &noise(7, 600 << 10));
    let args: [&dyn AsRef<OsStr>; 9] = [
        &"pack",
        &"-q",
        &src,
        &out,
        &"--shard-size",
        &"64KiB",
        &"--no-shuffle",
        &"--force",
        &"--compress=none",
    ];
    let r = under_file_size_limit(256, &args);
    if r.code == 0 {
        skip(
            "force_that_fails_late_keeps_the_old_dataset",
            "`ulimit -f` with an ignored SIGXFSZ does not stop writes here",
        );
        return;
    }
    r.code(1)
        .stderr_has(&[&disp(&out), "File too large", ".ds.shardpack-new."]);
    assert_old_dataset_intact(&out, &old);
}

/// A fresh dataset of the small sample tree in `t/ds`; returns (src, out, its files).
fn packed(
    t: &tempfile::TempDir,
) -> (
    PathBuf,
    PathBuf,
    std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) {
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("ds");
    pack_cmd(&src, &out, &[]).run().ok();
    let files = read_tree(&out);
    (src, out, files)
}

#[test]
fn force_replaces_in_one_swap_and_leaves_no_staging_directory() {
    let t = tmp();
    let (src, out, _) = packed(&t);
    let fresh = t.path().join("fresh");
    pack_cmd(&src, &fresh, &["--shuffle-seed", "9"]).run().ok();
    pack_cmd(&src, &out, &["--shuffle-seed", "9", "--force"])
        .run()
        .ok();
    assert_same_tree(&read_tree(&out), &read_tree(&fresh), "--force vs fresh");
    assert_eq!(names(t.path()), ["ds", "fresh", "src"]);
}

#[test]
fn open_and_the_next_pack_handle_an_interrupted_two_rename_swap() {
    // Where RENAME_EXCHANGE is not available, --force moves OUT aside and then the new dataset
    // in; a crash between the two leaves OUT missing and the old dataset beside it.
    let t = tmp();
    let (src, out, files) = packed(&t);
    let old = t.path().join(".ds.shardpack-old.4194999");
    fs::rename(&out, &old).unwrap();
    for cmd in ["info", "verify"] {
        sp(&[&cmd, &out]).code(1).stderr_has(&[
            &disp(&out),
            "does not exist",
            "interrupted",
            &disp(&old),
            "run the same pack again",
        ]);
    }
    let Err(e) = shardpack::Dataset::open(&out) else {
        panic!("open accepts a missing OUT");
    };
    assert!(e.to_string().contains(&disp(&old)), "{e}");
    // The next pack moves the old dataset back first; without --force it then refuses to
    // replace it, with --force it replaces it.
    pack_cmd(&src, &out, &[]).run().code(1).stderr_has(&[
        "restored the previous dataset",
        "not empty",
        "--force",
    ]);
    assert_old_dataset_intact(&out, &files);
    pack_cmd(&src, &out, &["--force"]).run().ok();
    sp(&[&"verify", &out]).ok();
    assert_eq!(names(t.path()), ["ds", "src"]);
}

#[test]
fn the_next_pack_removes_stale_staging_directories_and_only_those() {
    let t = tmp();
    let (src, out, files) = packed(&t);
    let p = t.path();
    // Left by an interrupted --force before its swap: a partial new dataset and its marker.
    let partial = p.join(".ds.shardpack-new.4194301");
    put(&partial, b"shard-000000.spk", b"partial");
    put(&partial, b"shard-000001.spk.tmp", b"partial");
    put(&partial, MARKER.as_bytes(), b"pid");
    // Left after its swap: the old dataset under the staging name, no marker.
    let swapped = p.join(".ds.shardpack-new.4194302");
    for (k, v) in &files {
        put(&swapped, k, v);
    }
    // Named like a staging directory, but holding a file shardpack never writes.
    let foreign = p.join(".ds.shardpack-new.4194303");
    put(&foreign, b"shard-000000.spk", b"x");
    put(&foreign, b"notes.txt", b"mine");
    // Named almost like one.
    let almost = [
        ".ds.shardpack-new.12a",
        ".ds.shardpack-new.",
        ".dsx.shardpack-new.1",
        ".ds.shardpack-tmp.1",
    ];
    for a in almost {
        put(&p.join(a), b"shard-000000.spk", b"x");
    }
    // A running pack's: its marker is locked.
    let live = p.join(".ds.shardpack-new.4194304");
    put(&live, b"shard-000000.spk.tmp", b"x");
    put(&live, MARKER.as_bytes(), b"pid");
    let lock = fs::File::open(live.join(MARKER)).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only reads its integer arguments; the descriptor is open.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let r = pack_cmd(&src, &out, &["--force"]).run().ok();
    for gone in [&partial, &swapped] {
        assert!(!gone.exists(), "{} is left", disp(gone));
        assert!(
            r.stderr.contains(&disp(gone)),
            "no note for {}: {}",
            disp(gone),
            r.stderr
        );
    }
    assert!(r.stderr.contains("notes.txt"), "{}", r.stderr);
    assert_eq!(names(&foreign), ["notes.txt", "shard-000000.spk"]);
    for a in almost {
        assert_eq!(names(&p.join(a)), ["shard-000000.spk"], "{a}");
    }
    assert_eq!(names(&live), [MARKER, "shard-000000.spk.tmp"]);
    drop(lock);
    sp(&[&"verify", &out]).ok();
}

#[test]
fn an_interrupted_pack_in_out_is_removed_by_the_next_pack_unless_foreign_files_are_there() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let fresh = t.path().join("fresh");
    pack_cmd(&src, &fresh, &[]).run().ok();
    let out = t.path().join("ds");
    let leftovers = |out: &Path| {
        put(
            out,
            b"shard-000000.spk",
            b"committed shard of a killed pack",
        );
        put(out, b"shard-000001.spk.tmp", b"half a shard");
        put(out, MARKER.as_bytes(), b"shardpack pack (process 1)");
    };
    leftovers(&out);
    for cmd in ["info", "verify"] {
        sp(&[&cmd, &out])
            .code(1)
            .stderr_has(&["interrupted", "run the pack again"]);
    }
    // A file that is not shardpack's: refused, and nothing is removed.
    put(&out, b"thesis.tex", b"years of work");
    let before = snapshot(&out);
    pack_cmd(&src, &out, &[]).run().code(1).stderr_has(&[
        "interrupted pack",
        "thesis.tex",
        "move it away",
    ]);
    pack_cmd(&src, &out, &["--force"])
        .run()
        .code(1)
        .stderr_has(&["thesis.tex"]);
    assert_unchanged(&out, &before, "refused packs");
    // Without it, the next pack (no --force needed) removes the leftovers and packs.
    fs::remove_file(out.join("thesis.tex")).unwrap();
    let r = pack_cmd(&src, &out, &[]).run().ok();
    r.stderr_has(&["removed 3 files", "interrupted pack"]);
    assert_same_tree(&read_tree(&out), &read_tree(&fresh), "pack after leftovers");
    // A marker that a running pack holds: refused.
    let busy = t.path().join("busy");
    leftovers(&busy);
    let lock = fs::File::open(busy.join(MARKER)).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only reads its integer arguments; the descriptor is open.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    for extra in [&[][..], &["--force"][..]] {
        pack_cmd(&src, &busy, extra)
            .run()
            .code(1)
            .stderr_has(&["another pack is writing into it"]);
    }
    assert_eq!(names(&busy).len(), 3);
}

#[test]
fn a_committed_dataset_with_a_stale_marker_opens_and_is_replaced_with_force() {
    let t = tmp();
    let (src, out, files) = packed(&t);
    put(&out, MARKER.as_bytes(), b"shardpack pack (process 1)");
    sp(&[&"verify", &out]).ok();
    pack_cmd(&src, &out, &[])
        .run()
        .code(1)
        .stderr_has(&["not empty", "--force"]);
    assert!(!out.join(MARKER).exists(), "the stale marker is removed");
    assert_old_dataset_intact(&out, &files);
    pack_cmd(&src, &out, &["--force"]).run().ok();
    assert_eq!(names(&out).iter().filter(|n| *n == MARKER).count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 2. SIGINT and SIGTERM
// ---------------------------------------------------------------------------------------------

/// About 1,200 files of noise, packed into 128 KiB shards on one thread: long enough to be
/// interrupted part-way.
fn slow_tree(src: &Path) {
    noise_tree(src, 1200, 3000, 5);
}

fn slow_pack(src: &Path, out: &Path, force: bool) -> Child {
    let mut extra = vec![
        "--shard-size",
        "128KiB",
        "--threads",
        "1",
        "--compress",
        "none",
    ];
    if force {
        extra.push("--force");
    }
    let mut c: Command = pack_cmd(src, out, &extra).into_command();
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the pack has renamed its second shard into the directory it builds (OUT, or
/// the staging directory beside it), then sends `sig`; returns the exit status and stderr.
fn interrupt(mut child: Child, out: &Path, sig: i32) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    // With --force over a dataset, OUT holds the old shards: watch the staging directory.
    let force = out.join("manifest.json").exists();
    loop {
        let mut dirs: Vec<PathBuf> = stages(out)
            .iter()
            .map(|s| out.parent().unwrap().join(s))
            .collect();
        if !force {
            dirs.push(out.to_path_buf());
        }
        let written = dirs
            .iter()
            .any(|d| names(d).iter().any(|n| n == "shard-000001.spk"));
        if written {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pack ended before it could be interrupted"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no shard written"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill only reads its integer arguments; the child has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    let o = child.wait_with_output().unwrap();
    (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[track_caller]
fn assert_interrupted(status: std::process::ExitStatus, stderr: &str, code: i32, name: &str) {
    assert_eq!(
        status.code(),
        Some(code),
        "exit status {status:?} (signal {:?}); stderr:\n{stderr}",
        status.signal()
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{stderr}");
    assert!(
        lines[0].contains(&format!("interrupted by {name}")) && lines[0].contains("removed"),
        "{stderr}"
    );
}

#[test]
fn sigint_and_sigterm_stop_the_pack_and_remove_what_it_wrote() {
    let t = tmp();
    let src = t.path().join("src");
    slow_tree(&src);
    let before = snapshot(&src);

    // A new OUT: gone afterwards.
    let out = t.path().join("new");
    let (st, err) = interrupt(slow_pack(&src, &out, false), &out, libc::SIGINT);
    assert_interrupted(st, &err, 130, "SIGINT");
    assert!(!out.exists(), "left {:?}", names(&out));

    // An empty OUT that existed: stays, empty.
    let out = t.path().join("empty");
    fs::create_dir(&out).unwrap();
    let (st, err) = interrupt(slow_pack(&src, &out, false), &out, libc::SIGTERM);
    assert_interrupted(st, &err, 143, "SIGTERM");
    assert_eq!(names(&out), Vec::<String>::new());

    // --force over a dataset: the old dataset stays, the staging directory goes.
    let out = t.path().join("ds");
    pack_cmd(&src, &out, &["--shard-size", "1MiB"]).run().ok();
    let old = read_tree(&out);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let (st, err) = interrupt(slow_pack(&src, &out, true), &out, sig);
        let (code, name) = if sig == libc::SIGINT {
            (130, "SIGINT")
        } else {
            (143, "SIGTERM")
        };
        assert_interrupted(st, &err, code, name);
        assert_old_dataset_intact(&out, &old);
    }
    assert_eq!(names(t.path()), ["ds", "empty", "src"]);
    assert_unchanged(&src, &before, "interrupted packs");
}

#[test]
fn after_sigkill_the_next_pack_removes_the_leftovers() {
    let t = tmp();
    let src = t.path().join("src");
    slow_tree(&src);
    let fresh = t.path().join("fresh");
    slow_pack(&src, &fresh, false).wait().unwrap();
    // Killed while building in OUT, and while building beside a dataset with --force.
    let out = t.path().join("ds");
    let (st, _) = interrupt(slow_pack(&src, &out, false), &out, libc::SIGKILL);
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert!(names(&out).iter().any(|n| n == MARKER), "{:?}", names(&out));
    let o = slow_pack(&src, &out, false).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_tree(&read_tree(&out), &read_tree(&fresh), "after a kill in OUT");

    let (st, _) = interrupt(slow_pack(&src, &out, true), &out, libc::SIGKILL);
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert_eq!(stages(&out).len(), 1);
    assert_same_tree(
        &read_tree(&out),
        &read_tree(&fresh),
        "old dataset after a kill",
    );
    let o = slow_pack(&src, &out, true).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("left by an interrupted pack"), "{err}");
    assert_eq!(stages(&out), Vec::<String>::new());
    assert_same_tree(
        &read_tree(&out),
        &read_tree(&fresh),
        "after a kill with --force",
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Symbolic links, skipped inputs, empty classes
// ---------------------------------------------------------------------------------------------

/// A tree of links as DVC and git-annex make: every file of `src` (two classes of 50) is a
/// symbolic link into a cache folder outside the tree. Returns (src, the cache).
fn linked_tree(t: &tempfile::TempDir) -> (PathBuf, PathBuf) {
    let cache = t.path().join("cache");
    let src = t.path().join("src");
    for i in 0..100u64 {
        let obj = cache.join(format!("{i:02x}"));
        put(
            &cache,
            format!("{i:02x}").as_bytes(),
            &noise(i, 500 + i as usize),
        );
        let link = at(&src, format!("c{}/{i:03}.jpg", i % 2).as_bytes());
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&obj, &link).unwrap();
    }
    (src, cache)
}

#[test]
fn a_tree_of_symlinks_packs_what_they_point_to_by_default() {
    let t = tmp();
    let (src, cache) = linked_tree(&t);
    let out = t.path().join("ds");
    let r = pack_cmd(&src, &out, &["--json"]).run().ok();
    let v = r.json();
    assert_eq!(v["samples"], 100, "{v:#}");
    assert_eq!(v["files"], 100, "{v:#}");
    assert_eq!(v["classes"], 2, "{v:#}");
    assert_eq!(v["skipped"], serde_json::json!([]));
    assert_eq!(
        sp(&[&"cat", &out, &"c1/007", &"jpg"]).ok().stdout,
        fs::read(cache.join("07")).unwrap()
    );
    // The old flag still works and gives the same bytes.
    let alias = t.path().join("alias");
    // (before c0/real.jpg is added below)
    pack_cmd(&src, &alias, &["--follow-symlinks"]).run().ok();
    assert_same_tree(&read_tree(&alias), &read_tree(&out), "--follow-symlinks");
    pack_cmd(
        &src,
        &t.path().join("x"),
        &["--follow-symlinks", "--symlinks", "skip"],
    )
    .run()
    .code(2);

    // Skipped, they are almost all of the inputs: refused unless --skip-errors.
    put(&src, b"c0/real.jpg", b"a real file");
    let skipped = t.path().join("skipped");
    pack_cmd(&src, &skipped, &["--symlinks", "skip"])
        .run()
        .code(1)
        .stderr_has(&[
            "100 of 101 inputs (99.0%)",
            "more than the 1% allowed",
            "--symlinks follow",
            "--skip-errors",
        ]);
    assert!(!skipped.exists());

    // --symlinks error refuses the first link, naming it.
    pack_cmd(&src, &skipped, &["--symlinks", "error"])
        .run()
        .code(1)
        .stderr_has(&[&disp(&src.join("c0/000.jpg")), "symbolic link"]);
}

#[test]
fn more_skipped_than_allowed_fails_or_warns_loudly_with_skip_errors() {
    let t = tmp();
    let src = t.path().join("src");
    for i in 0..20u64 {
        put(
            &src,
            format!("c{}/{i:03}.jpg", i % 2).as_bytes(),
            &noise(i, 300),
        );
    }
    // 2 links in 22 inputs: 9.1% skipped under --symlinks skip.
    for i in 0..2 {
        std::os::unix::fs::symlink("000.jpg", src.join(format!("c0/link{i}.jpg"))).unwrap();
    }
    let out = t.path().join("ds");
    pack_cmd(&src, &out, &["--symlinks", "skip"])
        .run()
        .code(1)
        .stderr_has(&["2 of 22 inputs (9.1%)", "c0/link0.jpg"]);
    pack_cmd(
        &src,
        &out,
        &["--symlinks", "skip", "--max-skipped-share", "10%"],
    )
    .run()
    .ok();
    let out = t.path().join("ds2");
    let r = pack_cmd(&src, &out, &["--symlinks", "skip", "--skip-errors"])
        .run()
        .ok();
    assert!(
        r.out()
            .starts_with("WARNING: 2 of 22 inputs (9.1%) were skipped"),
        "{}",
        r.out()
    );
    assert!(r.stderr.contains("WARNING"), "{}", r.stderr);
    let out = t.path().join("ds3");
    let v = pack_cmd(
        &src,
        &out,
        &["--symlinks", "skip", "--skip-errors", "--json"],
    )
    .run()
    .ok()
    .json();
    let share = v["skipped_share"].as_f64().unwrap();
    assert!((share - 2.0 / 22.0).abs() < 1e-9, "{v:#}");
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1, "{v:#}");
    pack_cmd(&src, &out, &["--max-skipped-share", "2"])
        .run()
        .code(2);
}

#[test]
fn a_class_left_without_samples_is_an_error() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    fs::create_dir(src.join("empty")).unwrap();
    let out = t.path().join("ds");
    pack_cmd(&src, &out, &[]).run().code(1).stderr_has(&[
        "class folder empty is empty",
        "label ids",
        "--skip-errors",
    ]);
    let v = pack_cmd(&src, &out, &["--skip-errors", "--json"])
        .run()
        .ok()
        .json();
    assert!(
        v["warnings"][0].as_str().unwrap().contains("empty"),
        "{v:#}"
    );
    // A class whose only file is a dangling link: the link's own message first.
    fs::remove_dir(src.join("empty")).unwrap();
    let lost = src.join("lost");
    fs::create_dir(&lost).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x.jpg", lost.join("x.jpg")).unwrap();
    let out = t.path().join("ds2");
    let r = pack_cmd(&src, &out, &[]).run().code(1);
    assert!(r.stderr.contains("dangling symlink"), "{}", r.stderr);
    assert!(!r.stderr.contains("permissions"), "{}", r.stderr);
    let r = pack_cmd(&src, &out, &["--skip-errors", "--max-skipped-share", "50%"])
        .run()
        .ok();
    assert!(
        r.out().contains("class folder lost has no packable file"),
        "{}",
        r.out()
    );
    let m = manifest(&out);
    assert_eq!(m["skipped"][0]["path"], "lost/x.jpg", "{m:#}");
    assert!(
        m["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("dangling symlink"),
        "{m:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Files outside any class folder
// ---------------------------------------------------------------------------------------------

#[test]
fn top_level_files_are_counted_named_or_refused() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    for n in [
        "README", "setup.py", "LICENSE", "a.txt", "b.txt", "c.txt", "d.txt",
    ] {
        put(&src, n.as_bytes(), b"top level");
    }
    let out = t.path().join("ds");
    let r = pack_cmd(&src, &out, &[]).run().ok();
    assert!(
        r.out().contains("unlabeled: 8 samples at the top level")
            && r.out().contains("e.g. LICENSE, README, a, b, c, ...)"),
        "{}",
        r.out()
    );
    let v = pack_cmd(&src, &t.path().join("j"), &["--json"])
        .run()
        .ok()
        .json();
    assert_eq!(v["unlabeled"], 8, "{v:#}");
    assert_eq!(
        v["unlabeled_examples"],
        serde_json::json!(["LICENSE", "README", "a", "b", "c"]),
        "{v:#}"
    );
    let v = pack_cmd(&src, &t.path().join("n"), &["--json", "--labels", "none"])
        .run()
        .ok()
        .json();
    assert_eq!(v["unlabeled"], 0, "{v:#}");
    let refused = t.path().join("refused");
    pack_cmd(&src, &refused, &["--unlabeled", "error"])
        .run()
        .code(1)
        .stderr_has(&["8 samples are at the top level", "LICENSE", "--labels none"]);
    assert!(!refused.exists());
}

// ---------------------------------------------------------------------------------------------
// 5. Recorded paths are relative to the tree
// ---------------------------------------------------------------------------------------------

#[test]
fn the_same_tree_through_an_absolute_and_a_relative_path_gives_identical_bytes() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    std::os::unix::fs::symlink("..", src.join("dog/loop")).unwrap();
    std::os::unix::fs::symlink("gone.jpg", src.join("cat/dangling.jpg")).unwrap();
    let flags = ["--skip-errors", "--max-skipped-share", "100%"];
    let abs = t.path().join("abs");
    pack_cmd(&src, &abs, &flags).run().ok();
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"pack", &"-q", &"./src/", &"rel"];
    // (sample_tree also has a top-level file: packed without a label either way.)
    args.extend(flags.iter().map(|a| a as &dyn AsRef<OsStr>));
    shardpack(&args).current_dir(t.path()).run().ok();
    assert_same_tree(
        &read_tree(&t.path().join("rel")),
        &read_tree(&abs),
        "absolute vs relative source",
    );
    let text = fs::read_to_string(abs.join("manifest.json")).unwrap();
    assert!(!text.contains(&disp(t.path())), "{text}");
    let m = manifest(&abs);
    let skipped: Vec<(&str, &str)> = m["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["path"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(skipped.len(), 2, "{m:#}");
    assert_eq!(skipped[0].0, "cat/dangling.jpg");
    assert!(skipped[0].1.starts_with("dangling symlink"), "{m:#}");
    assert_eq!(skipped[1].0, "dog/loop");
    assert!(
        skipped[1].1.contains("leads back to the root of the tree"),
        "{m:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Large files are streamed, not held in memory
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` to its end, polling the child's peak resident set (VmHWM, which only grows)
/// every few milliseconds. Returns the run and the last peak read, in bytes.
fn run_measuring_peak_rss(cmd: Cmd) -> (std::process::Output, u64) {
    let mut c = cmd.into_command();
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let reader = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !reader.is_finished() {
        if let Ok(text) = fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb << 10);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (reader.join().unwrap(), peak)
}

#[test]
fn a_large_sparse_file_is_packed_in_bounded_memory() {
    let t = tmp();
    let src = t.path().join("src");
    put(&src, b"a/small.bin", b"a small file beside it");
    // (size, policy): compressed through zstd's streaming API, and copied raw.
    for (size, policy) in [(1u64 << 30, "zstd"), (384 << 20, "none")] {
        let big = src.join("a/big.bin");
        let f = fs::File::create(&big).unwrap();
        f.set_len(size).unwrap(); // sparse: no disk space, zeros when read
        drop(f);
        let out = t.path().join(format!("ds-{policy}"));
        let cmd = pack_cmd(&src, &out, &["--compress", policy, "--json"]);
        let (o, peak) = run_measuring_peak_rss(cmd);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["input_bytes"], size + 22, "{v:#}");
        eprintln!(
            "pack of a {} MiB sparse file, --compress {policy}: peak RSS {} MiB",
            size >> 20,
            peak >> 20
        );
        assert!(peak > 0, "VmHWM could not be read");
        assert!(
            peak < 160 << 20,
            "peak RSS {} MiB packing a {} MiB file",
            peak >> 20,
            size >> 20
        );
        let m = manifest(&out);
        assert_eq!(m["fields"][0]["raw_bytes"], size + 22, "{m:#}");
        if policy == "zstd" {
            assert!(
                m["fields"][0]["stored_bytes"].as_u64().unwrap() < 1 << 20,
                "{m:#}"
            );
        }
        // verify reads it back in bounded memory too: for zstd, a record of a few hundred KiB
        // that decodes to 1 GiB is decoded by streaming, not into one buffer.
        let (o, peak) = run_measuring_peak_rss(shardpack(&[&"verify", &out]));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        eprintln!(
            "verify of the {} MiB record, --compress {policy}: peak RSS {} MiB",
            size >> 20,
            peak >> 20
        );
        assert!(
            peak < 160 << 20,
            "peak RSS {} MiB verifying a {} MiB record",
            peak >> 20,
            size >> 20
        );
        fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn sigint_stops_the_pack_in_the_middle_of_a_large_file() {
    let t = tmp();
    let src = t.path().join("src");
    let f = fs::File::create(at(&src, b"a/big.bin")).unwrap_or_else(|_| {
        fs::create_dir_all(src.join("a")).unwrap();
        fs::File::create(src.join("a/big.bin")).unwrap()
    });
    f.set_len(2 << 30).unwrap();
    drop(f);
    let out = t.path().join("ds");
    let mut c = pack_cmd(&src, &out, &["--compress", "none"]).into_command();
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the shard holds 64 MiB of the 2 GiB record.
    let tmp_shard = out.join("shard-000000.spk.tmp");
    let started = Instant::now();
    while fs::metadata(&tmp_shard).map_or(0, |m| m.len()) < 64 << 20 {
        assert!(child.try_wait().unwrap().is_none(), "the pack ended first");
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(2));
    }
    let signalled = Instant::now();
    let at_signal = fs::metadata(&tmp_shard).map_or(64 << 20, |m| m.len());
    // At the rate so far, the rest of the copy would take this long.
    let rest = started
        .elapsed()
        .mul_f64(((2u64 << 30) - at_signal) as f64 / at_signal as f64);
    // SAFETY: kill only reads its integer arguments; the child has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let took = signalled.elapsed();
    assert_interrupted(o.status, &String::from_utf8_lossy(&o.stderr), 130, "SIGINT");
    assert!(!out.exists(), "left {:?}", names(&out));
    assert!(
        took < rest / 4,
        "took {took:?} to stop (the rest of the copy: about {rest:?}): the copy of the large \
         record did not notice the signal"
    );
}

// ---------------------------------------------------------------------------------------------
// 1b. Every rename and sync of a --force failing in turn (injected with strace)
// ---------------------------------------------------------------------------------------------

/// `strace -f -qq -o LOG -e trace=CALLS [-e inject=CALLS:error=EIO:when=K] shardpack ARGS`.
fn traced(calls: &str, inject: Option<usize>, log: &Path, args: &[&dyn AsRef<OsStr>]) -> Run {
    let mut prefix: Vec<OsString> = vec![
        "strace".into(),
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        log.into(),
        format!("-etrace={calls}").into(),
    ];
    if let Some(k) = inject {
        prefix.push(format!("-einject={calls}:error=EIO:when={k}").into());
    }
    wrapped(&prefix, args).run()
}

/// The most `calls` any one thread made in an strace log (`when=` counts per thread).
fn max_calls_per_thread(log: &Path, calls: &str) -> usize {
    let text = fs::read_to_string(log).unwrap();
    let mut per: std::collections::BTreeMap<&str, usize> = Default::default();
    for line in text.lines() {
        let (tid, rest) = line.split_once(' ').unwrap_or(("", line));
        if calls
            .split(',')
            .any(|c| rest.trim_start().starts_with(&format!("{c}(")))
        {
            *per.entry(tid).or_default() += 1;
        }
    }
    per.values().copied().max().unwrap_or(0)
}

#[test]
fn a_failing_rename_or_sync_during_force_keeps_the_old_dataset() {
    let ok = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            "a_failing_rename_or_sync_during_force_keeps_the_old_dataset",
            "strace is missing or cannot trace (ptrace not permitted) here",
        );
        return;
    }
    let t = tmp();
    let src = t.path().join("src");
    for i in 0..3u64 {
        put(&src, format!("a/{i}.jpg").as_bytes(), &noise(i, 3000));
    }
    let out = t.path().join("ds");
    let opts = ["--max-samples-per-shard", "1", "--compress", "none"];
    pack_cmd(&src, &out, &opts).run().ok();
    let old = read_tree(&out);
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"pack", &"-q", &src, &out, &"--force"];
    args.extend(opts.iter().map(|a| a as &dyn AsRef<OsStr>));
    // strace counts `when=` per system call and thread: one call at a time.
    let mut total = 0;
    for calls in ["rename", "renameat", "renameat2", "fsync", "fdatasync"] {
        let log = t.path().join("count.log");
        traced(calls, None, &log, &args).ok();
        let n = max_calls_per_thread(&log, calls);
        total += n;
        for k in 1..=n {
            let r = traced(calls, Some(k), &t.path().join("x.log"), &args);
            if r.code == 0 {
                // Only the sync of the parent after the swap may fail without failing the
                // pack (the swap is done; the pack says so): OUT holds the new dataset.
                assert!(calls.contains("sync"), "{calls} #{k} failed silently");
                assert!(r.stderr.contains("after the swap"), "#{k}: {}", r.stderr);
                sp(&[&"verify", &out]).ok();
            } else {
                assert_eq!(r.code, 1, "{calls} #{k}: {}", r.stderr);
                assert!(r.stderr.contains("Input/output error"), "{}", r.stderr);
                assert_old_dataset_intact(&out, &old);
            }
            assert_eq!(stages(&out), Vec::<String>::new(), "{calls} #{k}");
        }
    }
    // 3 shards and the manifest renamed, the exchange, and their syncs.
    assert!(total >= 10, "only {total} calls traced");
}

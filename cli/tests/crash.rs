//! Crash safety of `shardpack pack`, end to end on the real binary:
//!
//! 1. SIGKILL at many points (before OUT exists, during the walk and trial, while a shard is
//!    filled, while a finished shard is synced, between shards, while the manifest is written,
//!    after the commit, and at each stage of a `--force` that builds beside a previous dataset
//!    and swaps it in). After every kill OUT is either a complete dataset, byte for byte, or
//!    refused by `info`, `verify` and `Dataset::open`; the same command without `--force`
//!    removes an interrupted pack's files and packs, and rerunning with `--force` gives the
//!    same bytes as an uninterrupted run and leaves no staging directory.
//! 2. A full disk (a 2 MiB tmpfs, and `ulimit -f` with SIGXFSZ ignored): a clear error naming
//!    the file and the OS error, nothing left in OUT, SRC untouched. Also an EIO injected (with
//!    strace) into each fsync and each rename a pack makes.
//! 3. Read-only input: read-only files in read-only folders pack, and SRC is unchanged.

#![cfg(unix)]

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use util::*;

/// The names in `dir` (empty when it does not exist).
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

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL at many points
// ---------------------------------------------------------------------------------------------

/// About 1,600 files (1,200 samples: noise `.jpg`, and a `.txt` for every third) in four
/// classes. Packed with `txt` on the `auto` policy (a trial that trains a dictionary) and
/// `jpg` stored raw, into 128 KiB shards: about 25 of them.
fn kill_tree(src: &Path) {
    for c in 0..4u64 {
        for i in 0..300u64 {
            let seed = c * 1000 + i;
            let key = format!("class{c}/{i:05}");
            put(
                src,
                format!("{key}.jpg").as_bytes(),
                &noise(seed, 1000 + (seed * 7919 % 2000) as usize),
            );
            if i % 3 == 0 {
                put(
                    src,
                    format!("{key}.txt").as_bytes(),
                    &text(seed, 250 + (seed * 104_729 % 700) as usize),
                );
            }
        }
    }
}

/// The pack command under test; only `--force` varies.
fn kill_pack_cmd(src: &Path, out: &Path, force: bool) -> Command {
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![
        &"pack",
        &"-q",
        &src,
        &out,
        &"--shard-size",
        &"128KiB",
        &"--threads",
        &"1",
        &"--field-compress",
        &"jpg=none",
    ];
    if force {
        args.push(&"--force");
    }
    shardpack(&args).into_command()
}

/// Runs the pack command to completion; it must succeed. Returns its wall time.
fn pack_to_end(src: &Path, out: &Path, force: bool) -> Duration {
    let started = Instant::now();
    let o = kill_pack_cmd(src, out, force).output().unwrap();
    let took = started.elapsed();
    assert!(
        o.status.success(),
        "pack {} {} (force {force}) failed: {}\n{}",
        disp(src),
        disp(out),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    took
}

/// The modification time given to a previous dataset's files before a `--force` run, so the
/// files that run writes can be told from the ones it has not removed yet.
fn old_mark() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
}

fn mark_old(out: &Path) {
    for n in names(out) {
        fs::File::options()
            .write(true)
            .open(out.join(&n))
            .and_then(|f| f.set_modified(old_mark()))
            .unwrap_or_else(|e| panic!("cannot set the mtime of {n}: {e}"));
    }
}

/// The marker a running pack keeps in the directory it writes.
const MARKER: &str = ".shardpack-writing";

/// The staging directories beside OUT (`.<name>.shardpack-new.<pid>` and `-old.`).
fn stages(out: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.shardpack-", out.file_name().unwrap().to_string_lossy());
    let mut v: Vec<PathBuf> = names(out.parent().unwrap())
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|n| out.parent().unwrap().join(n))
        .collect();
    v.sort();
    v
}

/// A tree read back without the pack's marker (left beside a committed dataset when a pack is
/// killed right after its commit; readers ignore it).
fn read_dataset(out: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut t = read_tree(out);
    t.remove(MARKER.as_bytes());
    t
}

/// What OUT, and the staging directory beside it, hold at one instant.
#[derive(Debug, Default, Clone)]
struct View {
    exists: bool,
    /// `Some(true)`: OUT's manifest.json is the previous dataset's; `Some(false)`: a new one.
    manifest: Option<bool>,
    /// A staging directory exists beside OUT (`--force`).
    stage: bool,
    /// In the directory being built (the staging directory when there is one, else OUT):
    manifest_tmp: bool,
    /// The staging directory holds a complete new dataset (not swapped in yet).
    stage_manifest: bool,
    /// Shards still under their temporary name: (index, size).
    tmp_shards: Vec<(u64, u64)>,
    /// Shards renamed by this run.
    new_shards: BTreeSet<u64>,
    /// Files of the previous dataset (in OUT, or under the staging name after the swap).
    old_files: usize,
    /// Anything else (must stay empty).
    other: Vec<String>,
}

fn shard_index(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix("shard-")?;
    let (num, tmp) = if let Some(n) = rest.strip_suffix(".spk.tmp") {
        (n, true)
    } else {
        (rest.strip_suffix(".spk")?, false)
    };
    Some((num.parse().ok()?, tmp))
}

/// Adds what `dir` holds to `v`; `is_out` tells OUT from a staging directory.
fn view_dir(dir: &Path, is_out: bool, v: &mut View) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // A file renamed or removed between the listing and this call is simply not seen.
        let Ok(m) = e.metadata() else { continue };
        let old = m.modified().ok() == Some(old_mark());
        if old {
            v.old_files += 1;
        }
        if name == "manifest.json" {
            if is_out {
                v.manifest = Some(old);
            } else if !old {
                v.stage_manifest = true;
            }
        } else if old || name == MARKER {
            // left from the previous dataset, or the pack's marker
        } else if name == "manifest.json.tmp" {
            v.manifest_tmp = true;
        } else if let Some((i, tmp)) = shard_index(&name) {
            if tmp {
                v.tmp_shards.push((i, m.len()));
            } else {
                v.new_shards.insert(i);
            }
        } else {
            v.other.push(name);
        }
    }
    true
}

fn view(out: &Path) -> View {
    let mut v = View::default();
    for s in stages(out) {
        v.stage |= view_dir(&s, false, &mut v);
    }
    v.exists = view_dir(out, true, &mut v);
    v.tmp_shards.sort();
    v
}

/// When to send SIGKILL. Conditions on OUT fire on that stage or any later one, so a poll
/// that comes late still kills.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// This fraction of the fastest uninterrupted run's wall time after the spawn.
    After(f64),
    /// OUT exists.
    OutCreated,
    /// `--force` over a dataset: the staging directory beside OUT exists.
    StageCreated,
    /// Shard k is open (its .tmp exists).
    ShardStarted(u64),
    /// Shard k's .tmp holds its bytes (flushed, being synced).
    ShardFlushed(u64),
    /// k shards are renamed into place.
    ShardsRenamed(u64),
    /// manifest.json.tmp exists.
    ManifestTmp,
    /// `--force`: the new dataset is complete beside OUT, not yet swapped in.
    StageComplete,
    /// The new manifest.json is in OUT.
    Committed,
}

impl Trigger {
    fn fires(self, v: &View, elapsed: Duration, fastest: Duration) -> bool {
        let committed = v.manifest == Some(false);
        let manifest_stage = v.manifest_tmp || v.stage_manifest || committed;
        let max_new = v.new_shards.iter().next_back().copied();
        let max_tmp = v.tmp_shards.last().copied();
        match self {
            Trigger::After(f) => elapsed.as_secs_f64() >= f * fastest.as_secs_f64(),
            Trigger::OutCreated => v.exists,
            Trigger::StageCreated => v.stage || committed,
            Trigger::ShardStarted(k) => {
                manifest_stage
                    || max_new.is_some_and(|i| i >= k)
                    || max_tmp.is_some_and(|t| t.0 >= k)
            }
            Trigger::ShardFlushed(k) => {
                manifest_stage
                    || max_new.is_some_and(|i| i >= k)
                    || max_tmp.is_some_and(|(i, len)| i > k || (i == k && len > 0))
            }
            Trigger::ShardsRenamed(k) => manifest_stage || v.new_shards.len() as u64 >= k,
            Trigger::ManifestTmp => manifest_stage,
            Trigger::StageComplete => v.stage_manifest || committed,
            Trigger::Committed => committed,
        }
    }
}

const PHASE_NOT_STARTED: &str = "before OUT was created";
const PHASE_FORCE_NOT_STARTED: &str = "--force, before the staging directory (old dataset intact)";
const PHASE_FORCE_BUILDING: &str = "--force, building beside the old dataset (old dataset intact)";
const PHASE_FORCE_COMPLETE: &str = "--force, new dataset complete beside the old, not swapped";
const PHASE_FORCE_SWAPPED: &str = "--force, swapped, the old dataset not removed yet";
const PHASE_WALK: &str = "walk/trial/read (OUT empty)";
const PHASE_FILLING: &str = "filling a shard (.tmp open, records buffered)";
const PHASE_CLOSING: &str = "closing a shard (.tmp written, before the rename)";
const PHASE_BETWEEN: &str = "between shards (renamed, next not open)";
const PHASE_BEFORE_MANIFEST: &str = "all shards renamed, manifest not started";
const PHASE_MANIFEST: &str = "writing manifest.json.tmp";
const PHASE_COMMITTED: &str = "after the commit (new manifest.json)";

/// Which stage a pack killed with OUT in state `v` was in.
fn phase(v: &View, total_shards: u64) -> &'static str {
    if !v.exists {
        PHASE_NOT_STARTED
    } else if v.manifest == Some(false) && v.stage {
        PHASE_FORCE_SWAPPED
    } else if v.manifest == Some(false) {
        PHASE_COMMITTED
    } else if v.manifest == Some(true) && v.stage_manifest {
        PHASE_FORCE_COMPLETE
    } else if v.manifest == Some(true) && v.stage {
        PHASE_FORCE_BUILDING
    } else if v.manifest == Some(true) {
        PHASE_FORCE_NOT_STARTED
    } else if v.manifest_tmp {
        PHASE_MANIFEST
    } else if let Some(&(_, len)) = v.tmp_shards.last() {
        if len == 0 {
            PHASE_FILLING
        } else {
            PHASE_CLOSING
        }
    } else if v.new_shards.len() as u64 == total_shards {
        PHASE_BEFORE_MANIFEST
    } else if !v.new_shards.is_empty() {
        PHASE_BETWEEN
    } else {
        PHASE_WALK
    }
}

/// Spawns the pack and SIGKILLs it when `trigger` fires. Returns whether the kill landed
/// (`false`: the pack had already finished, successfully).
fn run_and_kill(mut cmd: Command, out: &Path, trigger: Trigger, fastest: Duration) -> bool {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let killed = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        let v = match trigger {
            Trigger::After(_) => View::default(),
            _ => view(out),
        };
        if trigger.fires(&v, started.elapsed(), fastest) {
            // SIGKILL; a child that has just exited is still a zombie, so this cannot fail.
            child.kill().unwrap();
            break true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{trigger:?} never fired; OUT holds {:?}",
            names(out)
        );
        // Finishing a shard (flush, fsync, rename) or writing the manifest takes milliseconds;
        // polling much faster would only take CPU from the pack.
        std::thread::sleep(Duration::from_micros(300));
    };
    let o = child.wait_with_output().unwrap();
    let by_signal = o.status.signal() == Some(libc::SIGKILL);
    assert!(
        by_signal || o.status.success(),
        "pack ({trigger:?}) failed on its own: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(killed || !by_signal);
    by_signal
}

/// After a kill, OUT must be the complete reference dataset or be refused as one; the next
/// pack without `--force` removes an interrupted pack's files and succeeds.
fn check_killed_out(src: &Path, out: &Path, v: &View, reference: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let what = format!(
        "OUT after a kill with OUT holding {:?} and staging directories {:?}",
        names(out),
        stages(out)
    );
    assert!(v.other.is_empty(), "{what}: unexpected files {:?}", v.other);
    if v.manifest.is_some() {
        // The kill came after the commit, or during a --force before the swap (the previous
        // dataset, packed by the same command) or after it: the dataset is complete and
        // exactly the reference.
        assert_same_tree(&read_dataset(out), reference, &what);
        shardpack::Dataset::open(out).unwrap_or_else(|e| panic!("{what}: open fails: {e}"));
        return;
    }
    assert!(!v.stage, "{what}: a staging directory without --force");
    let leftovers = names(out)
        .iter()
        .any(|n| n.starts_with("shard-") || n == MARKER || n == "manifest.json.tmp");
    let needles: &[&str] = if leftovers {
        &[
            "interrupted",
            "not a complete dataset",
            "run the pack again",
        ]
    } else if v.exists {
        &["no manifest.json", "not a shardpack dataset"]
    } else {
        &["does not exist"]
    };
    for cmd in ["info", "verify"] {
        sp(&[&cmd, &out])
            .code(1)
            .stderr_has(&[&disp(out)])
            .stderr_has(needles);
    }
    match shardpack::Dataset::open(out) {
        Ok(_) => panic!("{what}: Dataset::open accepts it"),
        Err(e) => {
            let msg = e.to_string();
            for n in needles {
                assert!(msg.contains(n), "{what}: open error lacks {n:?}: {msg}");
            }
        }
    }
    if leftovers {
        // The same command without --force recognises the interrupted pack's files (its
        // marker is not locked by any process), removes them and packs.
        let o = kill_pack_cmd(src, out, false).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{what}: pack without --force: {err}");
        assert!(err.contains("interrupted pack"), "{what}: no note: {err}");
        assert_same_tree(&read_tree(out), reference, &what);
    }
}

#[test]
fn sigkill_at_any_point_never_leaves_a_dataset_that_looks_complete() {
    let t = tmp();
    let src = t.path().join("src");
    kill_tree(&src);
    let src_before = snapshot(&src);

    // The reference: an uninterrupted run.
    let ref_out = t.path().join("ref");
    let mut fastest = pack_to_end(&src, &ref_out, false);
    let reference = read_tree(&ref_out);
    let total_shards = reference.len() as u64 - 1;
    assert!(total_shards >= 20, "only {total_shards} shards");
    let n = total_shards;

    use Trigger::*;
    // (trigger, --force over the previous complete dataset)
    let points: Vec<(Trigger, bool)> = vec![
        (After(0.0), false),
        (OutCreated, false),
        (After(0.1), false),
        (After(0.5), false),
        (After(0.8), false),
        (ShardStarted(0), false),
        (ShardFlushed(0), false),
        (ShardsRenamed(1), false),
        (ShardStarted(5), false),
        (ShardFlushed(12), false),
        (ShardsRenamed(n - 6), false),
        (ShardFlushed(n - 1), false),
        (ShardsRenamed(n), false),
        (ManifestTmp, false),
        (Committed, false),
        (After(0.0), true),
        (StageCreated, true),
        (After(0.5), true),
        (ShardStarted(3), true),
        (ShardFlushed(8), true),
        (ShardsRenamed(n - 1), true),
        (ManifestTmp, true),
        (StageComplete, true),
        (Committed, true),
    ];

    let out = t.path().join("out");
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kills = 0;
    let mut finished_first = Vec::new();
    for &(trigger, force) in &points {
        if force {
            // OUT holds the complete dataset of the previous rerun (checked after it).
            mark_old(&out);
        } else if out.exists() {
            fs::remove_dir_all(&out).unwrap();
        }
        if run_and_kill(kill_pack_cmd(&src, &out, force), &out, trigger, fastest) {
            kills += 1;
            let v = view(&out);
            *phases.entry(phase(&v, total_shards)).or_default() += 1;
            check_killed_out(&src, &out, &v, &reference);
        } else {
            finished_first.push(format!("{trigger:?}"));
            assert_same_tree(&read_tree(&out), &reference, "OUT of a pack not killed");
        }
        // Rerunning the same command with --force gives the reference bytes, and removes
        // any staging directory an interrupted --force left.
        fastest = fastest.min(pack_to_end(&src, &out, true));
        assert_same_tree(
            &read_tree(&out),
            &reference,
            &format!("rerun with --force after a kill at {trigger:?}"),
        );
        assert_eq!(stages(&out), Vec::<PathBuf>::new(), "after {trigger:?}");
    }
    assert_unchanged(&src, &src_before, "packs killed and rerun");

    // Straight to stderr, past the harness's capture, so the counts show in every run.
    let mut report = format!(
        "crash test: {} kill points, {kills} killed, {} finished before their trigger {:?}; \
         {total_shards} shards, fastest uninterrupted run {:.0} ms; kills by phase:\n",
        points.len(),
        finished_first.len(),
        finished_first,
        fastest.as_secs_f64() * 1e3
    );
    for (p, c) in &phases {
        report.push_str(&format!("  {c:>3}  {p}\n"));
    }
    let _ = std::io::stderr().write_all(report.as_bytes());
    assert!(kills >= 20, "only {kills} of {} kills landed", points.len());
    assert!(
        phases.len() >= 4,
        "kills landed in only {} phases: {phases:?}",
        phases.len()
    );
    assert!(phases.contains_key(PHASE_WALK), "{phases:?}");
    assert!(
        phases.contains_key(PHASE_FILLING) || phases.contains_key(PHASE_CLOSING),
        "no kill landed while a shard was being written: {phases:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A full disk
// ---------------------------------------------------------------------------------------------

/// 40 files of 100 KiB of noise (4 MiB) in two classes.
fn big_tree(src: &Path) {
    for i in 0..40u64 {
        put(
            src,
            format!("c{}/{i:03}.jpg", i % 2).as_bytes(),
            &noise(i, 100 << 10),
        );
    }
}

/// Asserts that a pack that ran out of space failed cleanly: exit code 1, the file being
/// written and `os_error` on stderr, nothing left in OUT (which is gone if `out_was_new`),
/// nothing taken for a dataset. Returns stderr.
#[track_caller]
fn assert_failed_cleanly(
    r: Run,
    out: &Path,
    file: &str,
    os_error: &str,
    out_was_new: bool,
) -> String {
    let r = assert_pack_failed(r, out, &["cannot write", file, os_error]);
    assert!(
        r.stderr.contains(&disp(out)),
        "stderr does not name OUT\n{}",
        r.stderr
    );
    if out_was_new {
        assert!(
            !out.exists(),
            "{} was created by the failed pack and is still there, holding {:?}",
            disp(out),
            names(out)
        );
    } else {
        assert_eq!(
            names(out),
            Vec::<String>::new(),
            "leftovers in {}",
            disp(out)
        );
    }
    r.stderr
}

#[test]
fn a_full_tmpfs_gives_a_clear_error_and_leaves_nothing() {
    let t = tmp();
    let src = t.path().join("src");
    big_tree(&src);
    let before = snapshot(&src);
    let disk = t.path().join("disk");
    let _mount = match mount_tmpfs(&disk, "2m") {
        Ok(m) => m,
        Err(why) => {
            skip("a_full_tmpfs_gives_a_clear_error_and_leaves_nothing", &why);
            return;
        }
    };
    let enospc = "No space left on device";

    // One big shard that does not fit; OUT is created by the pack, so it goes too.
    let out = disk.join("new");
    assert_failed_cleanly(
        sp(&[&"pack", &"-q", &src, &out]),
        &out,
        "shard-000000.spk.tmp",
        enospc,
        true,
    );
    assert_eq!(names(&disk), Vec::<String>::new());

    // Small shards: several are renamed into place before the disk fills; they must be
    // removed too. OUT existed (empty) before, so it stays, empty.
    let out = disk.join("existing");
    fs::create_dir(&out).unwrap();
    let err = assert_failed_cleanly(
        sp(&[&"pack", &"-q", &src, &out, &"--shard-size", &"256KiB"]),
        &out,
        ".spk.tmp",
        enospc,
        false,
    );
    assert!(
        !err.contains("shard-000000.spk.tmp"),
        "the first shard already fails, so no committed shard was cleaned up:\n{err}"
    );
    assert_eq!(names(&disk), ["existing"]);

    // The shards fit but the manifest does not: fill the disk so that exactly the shards'
    // pages are free.
    let small = t.path().join("small-src");
    for i in 0..8u64 {
        put(
            &small,
            format!("{i:03}.jpg").as_bytes(),
            &noise(100 + i, 60 << 10),
        );
    }
    let small_before = snapshot(&small);
    let ref_out = t.path().join("small-ref");
    sp(&[&"pack", &"-q", &small, &ref_out, &"--shard-size", &"128KiB"]).ok();
    let shard_pages: u64 = names(&ref_out)
        .iter()
        .filter(|n| n.starts_with("shard-"))
        .map(|n| fs::metadata(ref_out.join(n)).unwrap().len().div_ceil(4096))
        .sum();
    assert!(shard_pages > 1);
    let filler = disk.join("filler");
    // One more page for the pack's marker file.
    let fill = free_bytes(&disk) - (shard_pages + 1) * 4096;
    fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    assert_eq!(free_bytes(&disk), (shard_pages + 1) * 4096);
    let out = disk.join("manifest");
    assert_failed_cleanly(
        sp(&[&"pack", &"-q", &small, &out, &"--shard-size", &"128KiB"]),
        &out,
        "manifest.json.tmp",
        enospc,
        true,
    );
    fs::remove_file(&filler).unwrap();
    assert_eq!(names(&disk), ["existing"]);
    // With the space back the same command succeeds and matches the reference.
    sp(&[&"pack", &"-q", &small, &out, &"--shard-size", &"128KiB"]).ok();
    assert_same_tree(
        &read_tree(&out),
        &read_tree(&ref_out),
        "pack after space came back",
    );

    assert_unchanged(&src, &before, "packs into a full disk");
    assert_unchanged(&small, &small_before, "packs into a full disk");
}

#[test]
fn a_file_size_limit_gives_a_clear_error_and_leaves_nothing() {
    let ok = Command::new("bash")
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f 1 && head -c 4096 /dev/zero > \"$0\"; [ $? = 1 ]",
        ])
        .arg(std::env::temp_dir().join(format!("shardpack-ulimit-probe-{}", std::process::id())))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = fs::remove_file(
        std::env::temp_dir().join(format!("shardpack-ulimit-probe-{}", std::process::id())),
    );
    if !ok {
        skip(
            "a_file_size_limit_gives_a_clear_error_and_leaves_nothing",
            "bash with `ulimit -f` and an ignored SIGXFSZ does not give EFBIG here",
        );
        return;
    }
    let t = tmp();
    let efbig = "File too large";

    // A shard grows past the limit. With --no-shuffle the one 1.5 MiB file (sorted last)
    // comes last, in a shard of its own.
    let src = t.path().join("src");
    big_tree(&src);
    put(&src, b"c1/zzz-big.jpg", &noise(99, 1536 << 10));
    let before = snapshot(&src);
    let out = t.path().join("out");
    assert_failed_cleanly(
        under_file_size_limit(1024, &[&"pack", &"-q", &src, &out]),
        &out,
        "shard-000000.spk.tmp",
        efbig,
        true,
    );
    // Several shards of 500 KiB are committed before the big one fails.
    fs::create_dir(&out).unwrap();
    let err = assert_failed_cleanly(
        under_file_size_limit(
            1024,
            &[
                &"pack",
                &"-q",
                &src,
                &out,
                &"--shard-size",
                &"512KiB",
                &"--no-shuffle",
            ],
        ),
        &out,
        ".spk.tmp",
        efbig,
        false,
    );
    assert!(!err.contains("shard-000000.spk.tmp"), "{err}");
    assert_unchanged(&src, &before, "packs under a file size limit");

    // Every shard fits but the manifest does not: many skipped symbolic links with long names
    // make it large.
    let src = t.path().join("links");
    for i in 0..20u64 {
        put(&src, format!("{i:03}.jpg").as_bytes(), &noise(i, 8 << 10));
    }
    for i in 0..400 {
        symlink("000.jpg", src.join(format!("{i:03}-{}", "l".repeat(200)))).unwrap();
    }
    let before = snapshot(&src);
    let out = t.path().join("links-out");
    let args: [&dyn AsRef<OsStr>; 10] = [
        &"pack",
        &"-q",
        &src,
        &out,
        &"--shard-size",
        &"32KiB",
        &"--symlinks",
        &"skip",
        &"--max-skipped-share",
        &"100%",
    ];
    assert_failed_cleanly(
        under_file_size_limit(64, &args),
        &out,
        "manifest.json.tmp",
        efbig,
        true,
    );
    // Without the limit the same command works, and the manifest is indeed above it.
    sp(&args).ok();
    assert!(fs::metadata(out.join("manifest.json")).unwrap().len() > 64 << 10);
    assert!(names(&out)
        .iter()
        .filter(|n| n.starts_with("shard-"))
        .all(|n| fs::metadata(out.join(n)).unwrap().len() <= 64 << 10));
    assert_unchanged(&src, &before, "packs under a file size limit");
}

// ---------------------------------------------------------------------------------------------
// 2b. A failing fsync or rename, injected with strace
// ---------------------------------------------------------------------------------------------

/// The syscalls behind `File::sync_all` and `fs::rename`, in strace's names.
const SYNC_CALLS: &str = "fsync,fdatasync";
const RENAME_CALLS: &str = "rename,renameat,renameat2";

/// `Err` says why strace cannot trace and inject faults here.
fn strace_works() -> Result<(), String> {
    let ok = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync"])
        .args(["-e", "inject=fsync:error=EIO:when=1", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err("strace is missing or cannot trace (ptrace not permitted) here".into())
    }
}

/// The small tree and options of the fault-injection tests: 3 samples, one shard each.
fn fault_tree(t: &TempDir) -> PathBuf {
    let src = t.path().join("src");
    for i in 0..3u64 {
        put(&src, format!("a/{i}.jpg").as_bytes(), &noise(i, 3000));
    }
    src
}

const FAULT_OPTS: [&str; 4] = ["--max-samples-per-shard", "1", "--compress", "none"];

/// `pack -q SRC OUT FAULT_OPTS...`, for [`wrapped`].
fn with_fault_pack_args<R>(src: &Path, out: &Path, f: impl FnOnce(&[&dyn AsRef<OsStr>]) -> R) -> R {
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"pack", &"-q", &src, &out];
    args.extend(FAULT_OPTS.iter().map(|a| a as &dyn AsRef<OsStr>));
    f(&args)
}

/// How many of `calls` an uninterrupted pack makes (the most any one thread makes: strace
/// counts `when=` per thread).
fn count_calls(t: &TempDir, src: &Path, calls: &str) -> usize {
    let log = t
        .path()
        .join(format!("strace-{}.log", calls.replace(',', "-")));
    let out = t.path().join("counted");
    let prefix: Vec<OsString> = ["strace", "-f", "-qq", "-o"]
        .iter()
        .map(OsString::from)
        .chain([
            log.clone().into_os_string(),
            format!("-etrace={calls}").into(),
        ])
        .collect();
    with_fault_pack_args(src, &out, |a| wrapped(&prefix, a).run().ok());
    fs::remove_dir_all(&out).unwrap();
    let text = fs::read_to_string(&log).unwrap();
    let mut per_thread: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        let (tid, rest) = line.split_once(' ').unwrap_or(("", line));
        let rest = rest.trim_start();
        if calls.split(',').any(|c| rest.starts_with(&format!("{c}("))) {
            *per_thread.entry(tid).or_default() += 1;
        }
    }
    per_thread.values().copied().max().unwrap_or(0)
}

/// `strace ... -e inject=CALLS:error=EIO:when=K shardpack pack SRC OUT`.
fn pack_with_fault(src: &Path, out: &Path, calls: &str, k: usize) -> Run {
    let prefix: Vec<OsString> = [
        "strace".to_string(),
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        "/dev/null".into(),
        format!("-etrace={calls}"),
        format!("-einject={calls}:error=EIO:when={k}"),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    with_fault_pack_args(src, out, |a| wrapped(&prefix, a).run())
}

#[test]
fn a_failing_sync_or_rename_fails_cleanly_at_every_call() {
    if let Err(why) = strace_works() {
        skip("a_failing_sync_or_rename_fails_cleanly_at_every_call", &why);
        return;
    }
    let t = tmp();
    let src = fault_tree(&t);
    let before = snapshot(&src);
    let syncs = count_calls(&t, &src, SYNC_CALLS);
    let renames = count_calls(&t, &src, RENAME_CALLS);
    // 3 shards, the manifest, the folder before and after the manifest's rename.
    assert!(syncs >= 6, "{syncs} syncs");
    assert!(renames >= 4, "{renames} renames");
    let mut named = BTreeSet::new();
    // The last sync is the folder's, after manifest.json is renamed into place: see
    // `a_failing_sync_after_the_commit_leaves_no_manifest_without_shards`.
    let points = (1..syncs)
        .map(|k| (SYNC_CALLS, k))
        .chain((1..=renames).map(|k| (RENAME_CALLS, k)));
    for (calls, k) in points {
        let out = t.path().join(format!("out-{}-{k}", &calls[..5]));
        let r = pack_with_fault(&src, &out, calls, k);
        let err = assert_pack_failed(r, &out, &["Input/output error", &disp(&out)]).stderr;
        assert!(
            !out.exists(),
            "{calls} #{k} failed: {} is left, holding {:?}\n{err}",
            disp(&out),
            names(&out)
        );
        let line = err
            .lines()
            .find(|l| l.contains("Input/output error"))
            .unwrap();
        let what = line
            .split(&disp(&out))
            .nth(1)
            .and_then(|r| r.split(':').next())
            .unwrap_or("")
            .to_string();
        named.insert(what);
    }
    // Every kind of file hit: each shard's .tmp (sync) and final name (rename), the manifest's,
    // and the folder itself.
    let want: BTreeSet<String> = [
        "",
        "/manifest.json",
        "/manifest.json.tmp",
        "/shard-000000.spk",
        "/shard-000000.spk.tmp",
        "/shard-000001.spk",
        "/shard-000001.spk.tmp",
        "/shard-000002.spk",
        "/shard-000002.spk.tmp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(named, want, "the files the injected errors named");
    assert_unchanged(&src, &before, "packs with injected I/O errors");
}

#[test]
fn a_failing_sync_after_the_commit_leaves_no_manifest_without_shards() {
    if let Err(why) = strace_works() {
        skip(
            "a_failing_sync_after_the_commit_leaves_no_manifest_without_shards",
            &why,
        );
        return;
    }
    let t = tmp();
    let src = fault_tree(&t);
    let syncs = count_calls(&t, &src, SYNC_CALLS);
    let out = t.path().join("out");
    let r = pack_with_fault(&src, &out, SYNC_CALLS, syncs);
    // Either outcome is sound: the pack fails and leaves nothing, or it keeps (and reports) the
    // committed dataset. A manifest.json whose shards were removed is neither.
    if r.code == 0 || out.join("manifest.json").exists() {
        sp(&[&"verify", &out]).ok().stdout_has("OK:");
    } else {
        assert_pack_failed(r, &out, &["Input/output error"]);
        assert!(!out.exists(), "{} is left: {:?}", disp(&out), names(&out));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Read-only input
// ---------------------------------------------------------------------------------------------

/// Sets `file_mode` on every file and `dir_mode` on every folder under `root` (and `root`).
fn chmod_tree(root: &Path, file_mode: u32, dir_mode: u32) {
    for e in fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            chmod_tree(&p, file_mode, dir_mode);
        } else if m.is_file() {
            chmod(&p, file_mode);
        }
    }
    chmod(root, dir_mode);
}

/// Makes a tree writable again on drop, so the temporary folder can be removed.
struct Writable(PathBuf);

impl Drop for Writable {
    fn drop(&mut self) {
        if self.0.exists() {
            chmod_tree(&self.0, 0o644, 0o755);
        }
    }
}

#[test]
fn read_only_input_packs_and_is_left_untouched() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let want = read_tree(&src);
    let _restore = Writable(src.clone());
    chmod_tree(&src, 0o444, 0o555);
    let before = snapshot(&src);

    let out = t.path().join("out");
    sp(&[&"pack", &"-q", &src, &out]).ok();
    sp(&[&"verify", &out]).ok().stdout_has("OK:");
    let extracted = t.path().join("extracted");
    sp(&[&"extract", &out, &extracted]).ok();
    assert_same_tree(&read_tree(&extracted), &want, "extract of a read-only tree");
    assert_unchanged(&src, &before, "pack of a read-only tree");

    // As root the modes do not bite; as an unprivileged user they do: any open for writing,
    // or any file created in SRC, would fail.
    match unprivileged_prefix() {
        Ok(prefix) if !prefix.is_empty() => {
            chmod(t.path(), 0o755);
            let theirs = t.path().join("nobody");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let readable = Command::new(&prefix[0])
                .args(&prefix[1..])
                .arg("cat")
                .arg(src.join("cat/0000.jpg"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !readable {
                skip(
                    "read_only_input_packs_and_is_left_untouched (unprivileged part)",
                    "the unprivileged user cannot reach the temporary folder",
                );
            } else {
                let out2 = theirs.join("out");
                wrapped(&prefix, &[&"pack", &"-q", &src, &out2]).run().ok();
                assert_same_tree(&read_tree(&out2), &read_tree(&out), "pack as nobody");
                assert_unchanged(&src, &before, "pack of a read-only tree as nobody");
            }
        }
        Ok(_) => {} // not root: the first pack already ran with the modes in force
        Err(why) => skip(
            "read_only_input_packs_and_is_left_untouched (unprivileged part)",
            &why,
        ),
    }
}

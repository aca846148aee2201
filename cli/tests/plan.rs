//! `shardpack plan`, `pack --plan OUT --part I` and `merge` as real processes: the result is
//! the bytes of `shardpack pack`, parts take their number from Slurm or Kubernetes, a part
//! killed mid-way and run again, merge naming a missing part, and a plan opened too early.

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use util::*;

/// A compressible tree: three classes of text and JSON samples.
fn text_tree(root: &Path, samples: u64, len: usize) {
    for i in 0..samples {
        let class = ["a", "b", "c"][(i % 3) as usize];
        put(
            root,
            format!("{class}/{i:05}.txt").as_bytes(),
            &text(i, len + (i as usize * 31) % len),
        );
        put(
            root,
            format!("{class}/{i:05}.json").as_bytes(),
            format!("{{\"id\": {i}, \"class\": \"{class}\"}}").as_bytes(),
        );
    }
}

const OPTS: [&str; 4] = [
    "--shard-size",
    "48KiB",
    "--field-compress",
    "json=zstd-dict",
];

fn plan_json(src: &Path, out: &Path, parts: &str) -> serde_json::Value {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"plan", &src, &out, &"--parts", &parts];
    for o in &OPTS {
        args.push(o);
    }
    args.push(&"--json");
    sp(&args).ok().json()
}

#[test]
fn parts_as_processes_from_slurm_and_kubernetes_give_the_bytes_of_pack() {
    let t = tmp();
    let src = t.path().join("src");
    text_tree(&src, 120, 1500);
    // An executable file: its mode rides in the plan into the merged manifest.
    chmod(&at(&src, b"b/00004.txt"), 0o755);
    let reference = t.path().join("ref");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"pack", &src, &reference, &"-q"];
    for o in &OPTS {
        args.push(o);
    }
    sp(&args).ok();
    assert_eq!(
        manifest(&reference)["options"]["file_modes"],
        serde_json::json!({"0755": ["b/00004.txt"]})
    );
    for parts in ["1", "3", "7"] {
        let out = t.path().join(format!("out{parts}"));
        let p = plan_json(&src, &out, parts);
        assert_eq!(p["parts"].as_array().unwrap().len().to_string(), parts);
        // Before the merge, OUT is no dataset.
        sp(&[&"info", &out])
            .code(1)
            .stderr_has(&["not merged yet", "shardpack merge"]);
        let n: u64 = parts.parse().unwrap();
        // Last part first; even parts from a Slurm array (ids from 1), odd ones from an
        // Indexed Job.
        for i in (0..n).rev() {
            let mut c = shardpack(&[&"pack", &"--plan", &out, &"-q"]).into_command();
            if i % 2 == 0 {
                c.env("SLURM_ARRAY_TASK_ID", (i + 1).to_string())
                    .env("SLURM_ARRAY_TASK_MIN", "1")
                    .env("SLURM_ARRAY_TASK_COUNT", parts);
            } else {
                c.env("JOB_COMPLETION_INDEX", i.to_string());
            }
            let o = c.output().unwrap();
            assert!(
                o.status.success(),
                "part {i}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        sp(&[&"merge", &out]).ok().stdout_has("is a dataset");
        assert_same_tree(&read_tree(&out), &read_tree(&reference), "merged vs pack");
    }
}

/// A plan made with `--dict-trainer zdict` trains its dictionaries with zdict and its merged
/// manifest names it: the bytes of `pack --dict-trainer zdict`, not those of the default.
#[test]
fn a_plans_trainer_reaches_the_merged_manifest() {
    let t = tmp();
    let src = t.path().join("src");
    text_tree(&src, 40, 600);
    let (zdict, default) = (t.path().join("zdict"), t.path().join("default"));
    for (out, extra) in [
        (&zdict, &["--dict-trainer", "zdict"][..]),
        (&default, &[][..]),
    ] {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"pack", &src, out, &"-q"];
        for o in OPTS.iter().chain(extra) {
            args.push(o);
        }
        sp(&args).ok();
    }
    let trainer = |d: &Path| {
        manifest(d)["writer"]["dict_trainer"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(trainer(&zdict).starts_with("zdict "), "{}", trainer(&zdict));
    assert!(
        trainer(&default).starts_with("fastcover:"),
        "{}",
        trainer(&default)
    );
    sp(&[&"info", &zdict])
        .ok()
        .stdout_has("dictionaries:   trained by zdict ");
    let out = t.path().join("planned");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"plan",
        &src,
        &out,
        &"--parts",
        &"2",
        &"-q",
        &"--dict-trainer",
        &"zdict",
    ];
    for o in &OPTS {
        args.push(o);
    }
    sp(&args).ok();
    for i in ["0", "1"] {
        sp(&[&"pack", &"--plan", &out, &"--part", &i, &"-q"]).ok();
    }
    sp(&[&"merge", &out]).ok();
    assert_same_tree(
        &read_tree(&out),
        &read_tree(&zdict),
        "merged zdict plan vs pack",
    );
}

#[test]
fn a_part_killed_mid_way_and_run_again_gives_the_same_dataset() {
    let t = tmp();
    let src = t.path().join("src");
    text_tree(&src, 240, 12000);
    let out = t.path().join("out");
    let p = plan_json(&src, &out, "2");
    let first = p["parts"][1]["first_shard"].as_u64().unwrap();
    let shards = p["parts"][1]["shards"].as_u64().unwrap();
    assert!(shards >= 4, "{p}");
    sp(&[&"pack", &"--plan", &out, &"--part", &"0", &"-q"]).ok();
    let mut child = shardpack(&[
        &"pack",
        &"--plan",
        &out,
        &"--part",
        &"1",
        &"--threads",
        &"1",
    ])
    .into_command()
    .spawn()
    .unwrap();
    // Kill it once its first shard is in place (or give up waiting when it is done).
    let shard = out.join(format!("shard-{first:06}.spk"));
    let t0 = Instant::now();
    while !shard.exists() && t0.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    eprintln!("part 1 killed mid-way: {}", !status.success());
    if !status.success() {
        // Killed before its receipt: merge names it.
        sp(&[&"merge", &out])
            .code(1)
            .stderr_has(&["1 of 2 parts are missing", "--part I"]);
    }
    sp(&[&"pack", &"--plan", &out, &"--part", &"1", &"-q"]).ok();
    sp(&[&"pack", &"--plan", &out, &"--part", &"1"])
        .ok()
        .stdout_has("already done");
    sp(&[&"merge", &out, &"--verify", &"-q"]).ok();
    let reference = t.path().join("ref");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"pack", &src, &reference, &"-q"];
    for o in &OPTS {
        args.push(o);
    }
    sp(&args).ok();
    assert_same_tree(
        &read_tree(&out),
        &read_tree(&reference),
        "rerun part vs pack",
    );
}

#[test]
fn usage_errors_name_what_to_do() {
    let t = tmp();
    let src = t.path().join("src");
    text_tree(&src, 9, 100);
    let out = t.path().join("out");
    sp(&[&"plan", &src, &out])
        .code(1)
        .stderr_has(&["--parts N"]);
    sp(&[
        &"plan",
        &src,
        &out,
        &"--parts",
        &"2",
        &"--shard-cut",
        &"stored",
    ])
    .code(1)
    .stderr_has(&["raw sizes"]);
    sp(&[&"plan", &src, &out, &"--parts", &"2", &"-q"]).ok();
    sp(&[&"pack", &"--plan", &out])
        .code(1)
        .stderr_has(&["--part I"]);
    let mut c = shardpack(&[&"pack", &"--plan", &out]).into_command();
    c.env("SLURM_ARRAY_TASK_ID", "0")
        .env("SLURM_ARRAY_TASK_COUNT", "3");
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has 2 parts"));
    sp(&[&"merge", &out])
        .code(1)
        .stderr_has(&["2 of 2 parts are missing", "finished): 0, 1;"]);
    sp(&[&"merge", &t.path().join("nothing")])
        .code(1)
        .stderr_has(&["holds no plan"]);
}

#[test]
fn webdataset_tars_plan_into_the_bytes_of_pack() {
    let t = tmp();
    let src = t.path().join("src");
    text_tree(&src, 60, 1500);
    // Two tars, one per half of the classes' files (members sorted, so samples stay grouped).
    let mut tars = Vec::new();
    for (k, class) in [(0, "a"), (1, "b")] {
        let tar = t.path().join(format!("part-{k}.tar"));
        let st = std::process::Command::new("tar")
            .args(["--sort=name", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(class)
            .status()
            .unwrap();
        assert!(st.success());
        tars.push(tar);
    }
    let reference = t.path().join("ref");
    sp(&[
        &"pack",
        &tars[0],
        &tars[1],
        &reference,
        &"-q",
        &"--shard-size",
        &"16KiB",
    ])
    .ok();
    let out = t.path().join("out");
    sp(&[
        &"plan",
        &tars[0],
        &tars[1],
        &out,
        &"--parts",
        &"3",
        &"-q",
        &"--shard-size",
        &"16KiB",
    ])
    .ok();
    for i in ["2", "0", "1"] {
        sp(&[&"pack", &"--plan", &out, &"--part", &i, &"-q"]).ok();
    }
    sp(&[&"merge", &out, &"-q"]).ok();
    assert_same_tree(
        &read_tree(&out),
        &read_tree(&reference),
        "merged wds vs pack",
    );
    assert!(manifest(&out)["shards"].as_array().unwrap().len() >= 3);
}

/// Regression: `plan` printed every field's compression note (a tree may have thousands of
/// fields) and ignored `-q`; it now shares pack's notes: the first 20 field notes, then one
/// closing line counting the rest, and none under `-q`.
#[test]
fn plan_notes_are_capped_and_quieted_as_packs_are() {
    let t = tmp();
    let src = t.path().join("src");
    // 120 fields under --key first-dot (`struct.Struct7.html` -> field `Struct7.html`).
    for (kind, name) in [("struct", "Struct"), ("enum", "Enum"), ("fn", "Fn")] {
        for i in 0..40u64 {
            put(
                &src,
                format!("std/{kind}.{name}{i}.html").as_bytes(),
                &text(i, 64),
            );
        }
    }
    let field_lines = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter(|l| l.starts_with("shardpack: field "))
            .map(str::to_string)
            .collect()
    };
    let common = ["--labels", "none", "--key", "first-dot"];
    let ds = t.path().join("ds");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"pack", &src, &ds];
    for o in &common {
        args.push(o);
    }
    let packed = sp(&args).ok();
    let out = t.path().join("planned");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"plan", &src, &out, &"--parts", &"2"];
    for o in &common {
        args.push(o);
    }
    let planned = sp(&args).ok();
    let (p, q) = (field_lines(&packed.stderr), field_lines(&planned.stderr));
    assert_eq!(q.len(), 20, "{}", planned.stderr);
    assert_eq!(p, q, "plan and pack show the same field notes");
    for r in [&packed, &planned] {
        assert!(
            r.stderr.contains("... and 100 more field notes left out"),
            "{}",
            r.stderr
        );
    }
    // -q: no field notes at all.
    let out = t.path().join("quiet");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"plan", &src, &out, &"--parts", &"2", &"-q"];
    for o in &common {
        args.push(o);
    }
    let r = sp(&args).ok();
    assert!(!r.stderr.contains("field "), "{}", r.stderr);
}

/// Regression: `pack --plan OUT --part I` silently ignored every option the plan fixes
/// (compression, shard size, key rule, ...); it now refuses them by name and writes nothing.
#[test]
fn a_part_refuses_the_options_the_plan_fixes() {
    let t = tmp();
    let src = t.path().join("src");
    text_tree(&src, 12, 200);
    let out = t.path().join("out");
    sp(&[&"plan", &src, &out, &"--parts", &"2", &"-q"]).ok();
    let before = snapshot(&out);
    for given in [
        &["--compress", "zstd"][..],
        &["--shard-size", "1MiB"],
        &["--field-compress", "json=none"],
        &["--key", "whole"],
        &["--no-shuffle"],
        &["--align", "8"],
        &["--labels", "imagefolder"],
        &["--force"],
        &["--dict-trainer", "zdict"],
    ] {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"pack",
            &"--plan",
            &out,
            &"--part",
            &"0",
            &"--threads",
            &"1",
        ];
        for g in given {
            args.push(g);
        }
        // Even a value equal to the default (--align 8) was given, and is refused.
        sp(&args).code(1).stderr_has(&[
            &format!("{} cannot be given with --plan", given[0]),
            "the part takes its options from the plan",
            "--threads, --io-threads, --json and --quiet",
        ]);
        assert_unchanged(&out, &before, &format!("refused part with {given:?}"));
    }
    // Several at once are named together.
    sp(&[
        &"pack",
        &"--plan",
        &out,
        &"--part",
        &"1",
        &"--compress",
        &"none",
        &"--max-samples-per-shard",
        &"3",
    ])
    .code(1)
    .stderr_has(&["--max-samples-per-shard and --compress cannot be given with --plan"]);
    assert_unchanged(&out, &before, "refused part with two options");
    // What a part takes is still accepted.
    sp(&[
        &"pack",
        &"--plan",
        &out,
        &"--part",
        &"0",
        &"--threads",
        &"1",
        &"--io-threads",
        &"2",
        &"-q",
    ])
    .ok();
}

/// Holds an exclusive `flock` on `path` (flock(1) on a descriptor of a shell that then
/// becomes `sleep`, so the child holds it alone) until the child is killed; returns once the
/// lock is held.
fn hold_lock(path: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 9>>\"$1\" && flock -x 9 && echo locked && exec sleep 600")
        .arg("sh")
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flock(1) runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

/// Regression: `merge` removed the plan's directory whole, with the temporary directory of a
/// run of a part still going (a duplicate run, a straggler whose first run already finished),
/// and the temporary shard files in OUT that run was writing. A running part holds a lock on
/// `.shardpack-plan/tmp-<part>-<run>.lock`; while one is held, merge writes the dataset but
/// removes none of the plan's files, names the part, and a later merge removes them.
#[test]
fn merge_leaves_a_running_parts_files_and_cleans_up_once_it_ends() {
    let t = tmp();
    let src = t.path().join("src");
    text_tree(&src, 60, 1500);
    let out = t.path().join("out");
    plan_json(&src, &out, "2");
    for i in ["0", "1"] {
        sp(&[&"pack", &"--plan", &out, &"--part", &i, &"-q"]).ok();
    }
    // A second run of part 1, still going: its lock, its scratch dir, a shard it is writing.
    let plan_dir = out.join(".shardpack-plan");
    let lock = plan_dir.join("tmp-000001-777-abc.lock");
    std::fs::write(&lock, b"").unwrap();
    let scratch = plan_dir.join("tmp-000001-777-abc");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::write(scratch.join("record.tmp"), b"half a record").unwrap();
    let writing = out.join("shard-000003.spk.777-abc.tmp");
    std::fs::write(&writing, b"half a shard").unwrap();
    // A run that died (its lock is free): what it left goes.
    let dead = plan_dir.join("tmp-000000-555-def");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(plan_dir.join("tmp-000000-555-def.lock"), b"").unwrap();
    let mut holder = hold_lock(&lock);
    let r = sp(&[&"merge", &out]).ok().stdout_has("is a dataset");
    r.stderr_has(&[
        "part 1 is still running",
        "tmp-000001-777-abc",
        "merge again",
    ]);
    assert!(
        scratch.join("record.tmp").is_file(),
        "the running part's scratch dir went"
    );
    assert!(
        writing.is_file(),
        "the running part's shard in progress went"
    );
    assert!(
        plan_dir.join("plan.json").is_file(),
        "the plan went while a part runs"
    );
    // The dataset is complete already.
    sp(&[&"verify", &out]).ok();
    holder.kill().unwrap();
    holder.wait().unwrap();
    let r = sp(&[&"merge", &out]).ok().stdout_has("is a dataset");
    assert!(!r.stderr.contains("still running"), "{}", r.stderr);
    assert!(
        !plan_dir.exists(),
        "the plan's files are left after the last merge"
    );
    assert!(!writing.exists());
    let reference = t.path().join("ref");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"pack", &src, &reference, &"-q"];
    for o in &OPTS {
        args.push(o);
    }
    sp(&args).ok();
    assert_same_tree(
        &read_tree(&out),
        &read_tree(&reference),
        "merged in two runs vs pack",
    );
}

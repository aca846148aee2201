//! CLI polish (issue 15, item 4): `ls --json`/`ls -0` for keys that break TSV, a JSON error
//! object on stdout for failed `--json` commands, a quiet `pack -q`, long field lists summed
//! up, and a missing dataset named as missing.

mod util;

use serde_json::Value;
use util::*;

/// A tree whose keys hold a tab, a newline and a non-UTF-8 byte.
fn odd_tree(root: &std::path::Path) {
    put(root, b"a\tb.txt", b"tab");
    put(root, b"line\nbreak.txt", b"newline");
    put(root, b"bin\xffary.txt", b"not utf-8");
    put(root, b"plain.txt", b"plain");
}

fn packed(src: &std::path::Path, out: &std::path::Path) {
    sp(&[&"pack", &"--labels", &"none", &"-q", &src, &out]).ok();
}

#[test]
fn ls_null_gives_every_key_exactly() {
    let t = tmp();
    let (src, out) = (t.path().join("src"), t.path().join("ds"));
    odd_tree(&src);
    packed(&src, &out);
    let r = sp(&[&"ls", &"-0", &out]).ok();
    let mut keys: Vec<&[u8]> = r.stdout.split(|&b| b == 0).collect();
    assert_eq!(keys.pop(), Some(&b""[..]), "every key ends with a NUL");
    keys.sort();
    let want: Vec<&[u8]> = vec![b"a\tb", b"bin\xffary", b"line\nbreak", b"plain"];
    assert_eq!(keys, want);
    // The long name works too, and each key can be fed back to `cat`.
    let r2 = sp(&[&"ls", &"--null", &out]).ok();
    assert_eq!(r.stdout, r2.stdout);
}

#[test]
fn ls_json_is_one_object_per_sample_with_exact_keys() {
    let t = tmp();
    let (src, out) = (t.path().join("src"), t.path().join("ds"));
    odd_tree(&src);
    packed(&src, &out);
    let r = sp(&[&"ls", &"--json", &out]).ok();
    let lines: Vec<Value> = r
        .out()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 4);
    let mut keys = Vec::new();
    for (i, v) in lines.iter().enumerate() {
        assert_keys(v, &["index", "key", "label", "class", "fields"]);
        assert_eq!(v["index"], i as u64);
        assert_eq!(v["label"], Value::Null);
        assert_eq!(v["class"], Value::Null);
        assert_eq!(v["fields"][0]["name"], "txt");
        let key: Vec<u8> = match &v["key"] {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Object(o) => hex(o["hex"].as_str().unwrap()),
            k => panic!("key {k}"),
        };
        let size = v["fields"][0]["size"].as_u64().unwrap();
        keys.push((key, size));
    }
    keys.sort();
    assert_eq!(
        keys,
        vec![
            (b"a\tb".to_vec(), 3),
            (b"bin\xffary".to_vec(), 9),
            (b"line\nbreak".to_vec(), 7),
            (b"plain".to_vec(), 5),
        ]
    );
    // Labels and class names when the tree has classes.
    let (src2, out2) = (t.path().join("src2"), t.path().join("ds2"));
    sample_tree(&src2);
    sp(&[&"pack", &"-q", &src2, &out2]).ok();
    let r = sp(&[&"ls", &"--json", &out2]).ok();
    let classes: Vec<Value> = r
        .out()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["class"].clone())
        .collect();
    assert!(classes.contains(&Value::from("bird")));
    assert!(
        classes.contains(&Value::Null),
        "the top-level file has no class"
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The last line of stdout as the error object of a failed `--json` command.
#[track_caller]
fn error_object(r: &Run) -> Value {
    let last = r.out().lines().last().unwrap_or_default().to_string();
    let v: Value = serde_json::from_str(&last)
        .unwrap_or_else(|e| panic!("last stdout line {last:?} is not JSON: {e}\n{r:?}"));
    assert_keys(&v["error"], &["message", "causes", "exit_code"]);
    assert_eq!(v["error"]["exit_code"], 1);
    v
}

#[test]
fn failed_json_commands_print_an_error_object() {
    let t = tmp();
    let missing = t.path().join("no-such-dataset");
    for cmd in ["info", "verify", "ls"] {
        let r = sp(&[&cmd, &"--json", &missing]).code(1);
        let v = error_object(&r);
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&disp(&missing)) && msg.contains("does not exist"),
            "{msg}"
        );
        // Exactly one document: the whole stdout parses.
        if cmd != "ls" {
            r.json();
        }
        // Without --json, stdout stays empty and stderr has the same message.
        let plain = sp(&[&cmd, &missing])
            .code(1)
            .stderr_has(&["does not exist"]);
        assert!(plain.stdout.is_empty(), "{cmd}: {plain:?}");
    }
    // pack: the message and its causes.
    let out = t.path().join("ds");
    let r = sp(&[&"pack", &"--json", &missing, &out]).code(1);
    let v = error_object(&r);
    let all = format!("{} {}", v["error"]["message"], v["error"]["causes"]);
    assert!(all.contains("does not exist"), "{all}");
    r.json();
}

#[test]
fn info_json_on_a_damaged_dataset_stays_one_document() {
    let t = tmp();
    let (src, out) = (t.path().join("src"), t.path().join("ds"));
    sample_tree(&src);
    sp(&[&"pack", &"-q", &"--max-samples-per-shard", &"4", &src, &out]).ok();
    // Damage the first shard's footer.
    let shard = out.join("shard-000000.spk");
    let mut b = std::fs::read(&shard).unwrap();
    let n = b.len();
    b[n - 3] ^= 0xff;
    std::fs::write(&shard, b).unwrap();
    let r = sp(&[&"info", &"--json", &out]).code(1);
    let v = r.json();
    assert_eq!(v["damaged"].as_array().unwrap().len(), 1, "{v:#}");
}

#[test]
fn pack_quiet_prints_nothing() {
    let t = tmp();
    let (src, out) = (t.path().join("src"), t.path().join("ds"));
    sample_tree(&src);
    let r = sp(&[&"pack", &"-q", &src, &out]).ok();
    assert!(r.stdout.is_empty(), "{r:?}");
    // Only one-line notes on stderr, never the summary's per-field lines.
    assert!(
        r.stderr.lines().all(|l| l.starts_with("shardpack: ")),
        "{r:?}"
    );
    // --json still prints its object under -q.
    let r = sp(&[&"pack", &"-q", &"--json", &"--force", &src, &out]).ok();
    assert_keys(&r.json(), &["samples", "fields", "warnings"]);
    // Without -q: the summary.
    let r = sp(&[&"pack", &"--force", &src, &out]).ok();
    assert!(r.out().contains("packed "), "{r:?}");
}

#[test]
fn long_field_lists_are_summed_up() {
    let t = tmp();
    let (src, out) = (t.path().join("src"), t.path().join("ds"));
    // 30 fields: field fNN occurs in NN+1 samples, so the most used come first.
    for f in 0..30u32 {
        for s in 0..=f {
            put(&src, format!("s{s:03}.f{f:02}").as_bytes(), b"x");
        }
    }
    let r = sp(&[&"pack", &"--labels", &"none", &src, &out]).ok();
    let field_lines = r.out().lines().filter(|l| l.contains("  field ")).count();
    assert_eq!(field_lines, 20, "{}", r.out());
    r.stdout_has("and 10 more fields");

    let info = sp(&[&"info", &out]).ok();
    let text = info.out();
    assert!(
        text.contains("\"f29\""),
        "the most used field is shown: {text}"
    );
    assert!(
        !text.contains("\"f00\""),
        "a rare field is summed up: {text}"
    );
    assert!(text.contains("10 more"), "{text}");
    let all = sp(&[&"info", &"--all-fields", &out]).ok().out();
    for f in 0..30 {
        assert!(
            all.contains(&format!("\"f{f:02}\"")),
            "--all-fields lists f{f:02}"
        );
    }
    // JSON always lists every field.
    let v = sp(&[&"info", &"--json", &out]).ok().json();
    assert_eq!(v["fields"].as_array().unwrap().len(), 30);
}

#[test]
fn pack_help_lists_the_json_keys() {
    let mut r = sp(&[&"pack", &"--help"]).ok();
    for k in [
        "input_bytes",
        "output_bytes",
        "files_per_s",
        "skipped_share",
    ] {
        r = r.stdout_has(k);
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 15 item 3: what a round trip keeps (execute bits, empty folders said)
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Executable files come back executable, with the bits they had (setuid dropped); other files
/// get the default mode; the manifest lists only the executables, so a tree without one packs
/// to the bytes it always did.
#[cfg(unix)]
#[test]
fn extract_restores_the_modes_of_executable_files() {
    let t = tmp();
    let (src, out, back) = (
        t.path().join("src"),
        t.path().join("ds"),
        t.path().join("back"),
    );
    put(&src, b"bin/rustc", b"\x7fELF not really");
    put(&src, b"tools/run.sh", b"#!/bin/sh\necho hi\n");
    put(&src, b"tools/private.sh", b"#!/bin/sh\n");
    put(&src, b"tools/setuid", b"suid");
    put(&src, b"lib/a.py", b"print(1)\n");
    chmod(&at(&src, b"bin/rustc"), 0o755);
    chmod(&at(&src, b"tools/run.sh"), 0o755);
    chmod(&at(&src, b"tools/private.sh"), 0o700);
    chmod(&at(&src, b"tools/setuid"), 0o4755);
    chmod(&at(&src, b"lib/a.py"), 0o600);
    packed(&src, &out);
    let m = manifest(&out);
    assert_eq!(
        m["options"]["file_modes"],
        serde_json::json!({
            "0700": ["tools/private.sh"],
            "0755": ["bin/rustc", "tools/run.sh"],
            "4755": ["tools/setuid"],
        })
    );
    sp(&[&"info", &out]).ok().stdout_has(
        "file modes:     4 executable files keep their permission bits (extract restores them)",
    );
    sp(&[&"extract", &out, &back])
        .ok()
        .stdout_has("gave 4 executable files the permission bits recorded when packed");
    assert_eq!(mode_of(&at(&back, b"bin/rustc")), 0o755);
    assert_eq!(mode_of(&at(&back, b"tools/run.sh")), 0o755);
    assert_eq!(mode_of(&at(&back, b"tools/private.sh")), 0o700);
    assert_eq!(
        mode_of(&at(&back, b"tools/setuid")),
        0o755,
        "setuid is not restored"
    );
    // Not executable: not recorded, written with the default mode (not 0600).
    assert_eq!(mode_of(&at(&back, b"lib/a.py")) & 0o111, 0);
    assert_eq!(read_tree(&back), read_tree(&src));

    // The same tree without execute bits: no file_modes option at all.
    for p in [
        &b"bin/rustc"[..],
        b"tools/run.sh",
        b"tools/private.sh",
        b"tools/setuid",
    ] {
        chmod(&at(&src, p), 0o644);
    }
    let plain = t.path().join("plain");
    packed(&src, &plain);
    assert!(manifest(&plain)["options"].get("file_modes").is_none());
    let r = sp(&[&"info", &plain]).ok();
    assert!(!r.out().contains("file modes:"), "{}", r.out());
}

/// Empty folders cannot be stored (a dataset holds files); pack says which it left out.
#[test]
fn pack_names_the_empty_folders_it_leaves_out() {
    let t = tmp();
    let (src, out) = (t.path().join("src"), t.path().join("ds"));
    put(&src, b"a/x.txt", b"x");
    for d in ["empty1", "a/empty2", "b/c/empty3"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    // Exactly the empty ones, in walk order: not `a` (it holds a file), not `b` or `b/c` (they
    // hold a folder).
    sp(&[&"pack", &"--labels", &"none", &src, &out])
        .ok()
        .stderr_has(&[
            "left out 3 empty folders (a dataset holds files only; extract does \
                       not recreate them): a/empty2, b/c/empty3, empty1",
        ]);
}

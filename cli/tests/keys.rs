//! `--key`: the default `auto` keeps WebDataset's first-dot grouping where it fits and falls
//! back to the last dot, then whole names, where it does not (issue 15 item 2), saying so in
//! one note; a tree that splits into too many fields is an error naming `--key`; extraction
//! restores every path whatever the rule.

mod util;

use std::path::Path;

use util::*;

/// A documentation-like tree: `struct.StructN.html`, `enum.EnumN.html` and `fn.FnN.html`
/// (first dot: 3 samples with `n` fields each, every field in one sample; last dot: 3n samples
/// with the one field `html`).
fn doc_tree(root: &Path, n: usize) {
    for (kind, name) in [("struct", "Struct"), ("enum", "Enum"), ("fn", "Fn")] {
        for i in 0..n {
            put(
                root,
                format!("std/{kind}.{name}{i}.html").as_bytes(),
                &text(i as u64, 64),
            );
        }
    }
}

fn pack(src: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"pack", &src, &out, &"--labels", &"none"];
    for e in extra {
        args.push(e);
    }
    sp(&args)
}

#[test]
fn auto_keeps_the_first_dot_where_it_fits() {
    let d = tmp();
    let (src, out) = (d.path().join("src"), d.path().join("out"));
    sample_tree(&src);
    let r = pack(&src, &out, &[]).ok();
    assert!(
        !r.stderr.contains("key:"),
        "no key note expected\n{}",
        r.stderr
    );
    let m = manifest(&out);
    assert_eq!(m["options"]["key"], "first-dot");
    // Byte-identical to naming the rule.
    let out2 = d.path().join("out2");
    pack(&src, &out2, &["--key", "first-dot"]).ok();
    assert_eq!(
        std::fs::read(out.join("manifest.json")).unwrap(),
        std::fs::read(out2.join("manifest.json")).unwrap()
    );
}

#[test]
fn auto_uses_the_last_dot_for_a_documentation_tree() {
    let d = tmp();
    let (src, out) = (d.path().join("src"), d.path().join("out"));
    doc_tree(&src, 40);
    let r = pack(&src, &out, &[]).ok();
    r.stderr_has(&[
        "key: splitting names at the first dot made 3 samples with 120 distinct fields",
        "using the last dot instead (120 samples, 1 fields",
    ]);
    let m = manifest(&out);
    assert_eq!(m["options"]["key"], "last-dot");
    assert_eq!(m["samples"], 120);
    let ex = d.path().join("ex");
    sp(&[&"extract", &out, &ex]).ok();
    assert_same_tree(
        &read_tree(&ex),
        &read_tree(&src),
        "extract of a last-dot pack",
    );
}

/// A documentation tree whose first-dot fields recur (the same type name in several modules,
/// as in a Rust toolchain's docs): each field is in more than one sample, but there are far
/// more fields than a dataset has kinds of file.
#[test]
fn auto_uses_the_last_dot_when_recurring_fields_are_too_many() {
    let d = tmp();
    let (src, out) = (d.path().join("src"), d.path().join("out"));
    for m in ["a", "b"] {
        for i in 0..1100 {
            put(
                &src,
                format!("{m}/struct.Type{i}.html").as_bytes(),
                &text(i as u64, 16),
            );
        }
    }
    let r = pack(&src, &out, &[]).ok();
    r.stderr_has(&[
        "key: splitting names at the first dot made 2 samples with 1100 distinct fields, 0 of \
         them in a single sample (more fields than the 1024 auto accepts)",
        "using the last dot instead (2200 samples, 1 fields",
    ]);
    assert_eq!(manifest(&out)["options"]["key"], "last-dot");
}

#[test]
fn auto_uses_whole_names_for_numbered_frames() {
    let d = tmp();
    let (src, out) = (d.path().join("src"), d.path().join("out"));
    for i in 0..100 {
        put(&src, format!("clip/frame.{i:05}").as_bytes(), &noise(i, 32));
    }
    let r = pack(&src, &out, &[]).ok();
    r.stderr_has(&["the last dot fits no better (100 fields); using whole file names"]);
    let m = manifest(&out);
    assert_eq!(m["options"]["key"], "whole");
    assert_eq!(m["samples"], 100);
    let ex = d.path().join("ex");
    sp(&[&"extract", &out, &ex]).ok();
    assert_same_tree(
        &read_tree(&ex),
        &read_tree(&src),
        "extract of a whole-name pack",
    );
}

#[test]
fn an_explicit_rule_is_kept_even_when_it_does_not_fit() {
    let d = tmp();
    let (src, out) = (d.path().join("src"), d.path().join("out"));
    doc_tree(&src, 40);
    let r = pack(&src, &out, &["--key", "first-dot"]).ok();
    assert!(!r.stderr.contains("key:"), "{}", r.stderr);
    // 120 fields, one compression note each: the first 20 are shown, then one line.
    let field_notes = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("shardpack: field "))
        .count();
    assert_eq!(field_notes, 20, "{}", r.stderr);
    assert!(
        r.stderr.contains("more field notes left out"),
        "{}",
        r.stderr
    );
    let m = manifest(&out);
    assert_eq!(m["options"]["key"], "first-dot");
    assert_eq!(m["samples"], 3);
    let out2 = d.path().join("out2");
    pack(&src, &out2, &["--key", "whole"]).ok();
    assert_eq!(manifest(&out2)["samples"], 120);
    assert_eq!(manifest(&out2)["options"]["key"], "whole");
    // -q: no field notes at all.
    let out3 = d.path().join("out3");
    let r = pack(&src, &out3, &["--key", "first-dot", "-q"]).ok();
    assert!(!r.stderr.contains("field "), "{}", r.stderr);
}

#[test]
fn too_many_fields_is_an_error_naming_key() {
    let d = tmp();
    let (src, out) = (d.path().join("src"), d.path().join("out"));
    doc_tree(&src, 1400); // 4,200 distinct fields at the first dot
    let r = pack(&src, &out, &["--key", "first-dot"]);
    assert_pack_failed(
        r,
        &out,
        &[
            "4200 distinct fields with --key first-dot",
            "at most 4096",
            "--key last-dot",
        ],
    );
    // The default picks a rule that fits.
    let r = pack(&src, &out, &["-q"]).ok();
    assert!(r.stderr.contains("using the last dot"), "{}", r.stderr);
    assert_eq!(manifest(&out)["samples"], 4200);
}

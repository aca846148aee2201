//! WebDataset and MDS sources, and `extract --format wds`, against files the peers' own code
//! wrote (`fixtures/peers/`, see its README): every record shardpack packs is compared with
//! what webdataset's own reader gives (`samples.sha256.tsv`) or with the stamps manifest.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use shardpack::source::mds::sha256_hex;
use shardpack::Dataset;
use util::*;

fn peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peers")
}

/// (key, field) -> (sha256, label) of every record of a dataset; panics on a duplicate.
fn records(ds: &Path) -> BTreeMap<(String, String), (String, Option<u32>)> {
    let ds = Dataset::open(ds).unwrap();
    let mut m = BTreeMap::new();
    for i in 0..ds.len() {
        let s = ds.get(i).unwrap();
        for f in s.fields() {
            let f = f.unwrap();
            let k = (
                String::from_utf8_lossy(s.key()).into_owned(),
                String::from_utf8_lossy(f.name()).into_owned(),
            );
            let v = (sha256_hex(&f.data().unwrap()), s.label());
            assert!(m.insert(k.clone(), v).is_none(), "{k:?} twice");
        }
    }
    m
}

/// webdataset's own grouping of `tar`: (key, field) -> sha256.
fn webdataset_says(tar: &str) -> BTreeMap<(String, String), String> {
    let text = fs::read_to_string(peers().join("webdataset/samples.sha256.tsv")).unwrap();
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let c: Vec<&str> = line.split('\t').collect();
        if c[0] == tar {
            m.insert((c[1].to_string(), c[2].to_string()), c[4].to_string());
        }
    }
    assert!(!m.is_empty(), "no rows for {tar}");
    m
}

/// The stamps manifest: (key number, field) -> sha256, and key number -> stamp name.
fn stamps() -> (BTreeMap<(u32, String), String>, BTreeMap<u32, String>) {
    let text = fs::read_to_string(peers().join("stamps.manifest.tsv")).unwrap();
    let (mut m, mut names) = (BTreeMap::new(), BTreeMap::new());
    for line in text.lines() {
        let c: Vec<&str> = line.split('\t').collect();
        let k: u32 = c[0].parse().unwrap();
        m.insert((k, c[1].to_string()), c[4].to_string());
        names.insert(k, c[2].to_string());
    }
    (m, names)
}

fn without_labels(
    r: &BTreeMap<(String, String), (String, Option<u32>)>,
) -> BTreeMap<(String, String), String> {
    r.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

#[test]
fn every_webdataset_fixture_packs_exactly_as_webdataset_groups_it() {
    let t = tmp();
    for tar in [
        "compressed.tar",
        "mpdata.tar",
        "sample.tgz",
        "stamps-wds.tar",
        "tendata.tar",
        "testgz.tar",
    ] {
        let out = t.path().join(tar.replace('.', "_"));
        sp(&[&"pack", &"-q", &peers().join("webdataset").join(tar), &out]).ok();
        let got = without_labels(&records(&out));
        assert_eq!(got, webdataset_says(tar), "{tar}");
        shardpack::verify_dir(&out).unwrap();
    }
}

#[test]
fn webdataset_stamps_match_the_writers_manifest() {
    let t = tmp();
    let out = t.path().join("ds");
    sp(&[
        &"pack",
        &"-q",
        &peers().join("webdataset/stamps-wds.tar"),
        &out,
    ])
    .ok();
    let got = records(&out);
    let (want, names) = stamps();
    assert_eq!(got.len(), 48);
    for ((k, field), sha) in &want {
        let key = format!("{k:06}");
        assert_eq!(&got[&(key.clone(), field.clone())].0, sha, "{key}.{field}");
        // The multi-dot extension is one field, holding the stamp's name.
        assert_eq!(
            got[&(key.clone(), "name.txt".to_string())].0,
            sha256_hex(names[k].as_bytes())
        );
    }
}

#[test]
fn cls_members_give_labels() {
    let t = tmp();
    let out = t.path().join("ds");
    let r = sp(&[
        &"pack",
        &"--labels",
        &"cls",
        &"--json",
        &peers().join("webdataset/sample.tgz"),
        &out,
    ])
    .ok();
    // A gzip tar is one stream: its order is kept, and the manifest says so.
    assert!(r.stderr.contains("keep its order"), "{}", r.stderr);
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.len(), 90);
    assert_eq!(
        ds.manifest().options["shuffle_seed"],
        serde_json::Value::Null
    );
    let mut labels = std::collections::BTreeSet::new();
    for i in 0..ds.len() {
        let s = ds.get(i).unwrap();
        let cls = s
            .field(b"cls")
            .unwrap()
            .unwrap()
            .data()
            .unwrap()
            .into_owned();
        let want: u32 = String::from_utf8(cls).unwrap().trim().parse().unwrap();
        assert_eq!(s.label(), Some(want));
        labels.insert(want);
    }
    assert!(labels.len() > 1);
}

#[test]
fn mds_plain_and_zstd_match_the_writers_manifest() {
    let t = tmp();
    let (want, names) = stamps();
    for dir in ["mds-stamps", "mds-stamps-zstd"] {
        let out = t.path().join(dir);
        sp(&[
            &"pack",
            &"-q",
            &"--key-column",
            &"key",
            &peers().join("mosaicml-streaming").join(dir),
            &out,
        ])
        .ok();
        let got = records(&out);
        assert_eq!(got.len(), 60, "{dir}");
        for ((k, field), sha) in &want {
            let key = k.to_string();
            assert_eq!(
                &got[&(key.clone(), field.clone())].0,
                sha,
                "{dir} {key}.{field}"
            );
            // str columns are their UTF-8 bytes, int columns 8 little-endian bytes.
            assert_eq!(
                got[&(key.clone(), "name".to_string())].0,
                sha256_hex(names[k].as_bytes())
            );
            assert_eq!(
                got[&(key.clone(), "key".to_string())].0,
                sha256_hex(&(*k as i64).to_le_bytes())
            );
        }
        let m = Dataset::open(&out).unwrap().manifest().clone();
        assert_eq!(m.options["source"]["columns"]["key"], "int");
        assert_eq!(m.options["source"]["format"], "mds");
    }
    // Without --key-column, the key is the sample number.
    let out = t.path().join("numbered");
    sp(&[
        &"pack",
        &"-q",
        &"--no-shuffle",
        &peers().join("mosaicml-streaming/mds-stamps"),
        &out,
    ])
    .ok();
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.get(3).unwrap().key(), b"000003");
}

/// A copy of the MDS stamps with its index.json changed by `edit`.
fn mds_copy(t: &Path, name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let d = t.join(name);
    fs::create_dir(&d).unwrap();
    let src = peers().join("mosaicml-streaming/mds-stamps");
    fs::copy(src.join("shard.00000.mds"), d.join("shard.00000.mds")).unwrap();
    let mut idx: serde_json::Value =
        serde_json::from_slice(&fs::read(src.join("index.json")).unwrap()).unwrap();
    edit(&mut idx);
    fs::write(d.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    d
}

#[test]
fn mds_hashes_are_checked() {
    let t = tmp();
    let shard = fs::read(peers().join("mosaicml-streaming/mds-stamps/shard.00000.mds")).unwrap();
    let right = sha256_hex(&shard);
    let good = mds_copy(t.path(), "good", |i| {
        i["shards"][0]["raw_data"]["hashes"] = serde_json::json!({ "sha256": right });
    });
    sp(&[&"pack", &"-q", &good, &t.path().join("ok")]).ok();
    let bad = mds_copy(t.path(), "bad", |i| {
        i["shards"][0]["raw_data"]["hashes"] = serde_json::json!({ "sha256": "00".repeat(32) });
    });
    let out = t.path().join("no");
    sp(&[&"pack", &"-q", &bad, &out]).code(1).stderr_has(&[
        "shard.00000.mds",
        "sha256",
        "index.json says",
    ]);
    assert!(!out.exists(), "a failed pack leaves nothing");
}

#[test]
fn mds_bad_inputs_name_the_shard() {
    let t = tmp();
    let unknown = mds_copy(t.path(), "enc", |i| {
        i["shards"][0]["column_encodings"][1] = "avif".into();
    });
    sp(&[&"pack", &"-q", &unknown, &t.path().join("o1")])
        .code(1)
        .stderr_has(&["\"avif\"", "column \"name\""]);
    let brotli = mds_copy(t.path(), "br", |i| {
        i["shards"][0]["compression"] = "br".into();
        i["shards"][0]["zip_data"] = serde_json::json!({"basename": "shard.00000.mds.br"});
    });
    sp(&[&"pack", &"-q", &brotli, &t.path().join("o2")])
        .code(1)
        .stderr_has(&["shard.00000.mds.br", "\"br\""]);
    // A truncated shard.
    let cut = mds_copy(t.path(), "cut", |_| {});
    let p = cut.join("shard.00000.mds");
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..b.len() - 100]).unwrap();
    sp(&[&"pack", &"-q", &cut, &t.path().join("o3")])
        .code(1)
        .stderr_has(&["shard.00000.mds", "sample 11"]);
    for o in ["o1", "o2", "o3"] {
        assert!(!t.path().join(o).exists());
    }
}

#[test]
fn bad_tars_are_named_and_leave_nothing() {
    let t = tmp();
    let src = fs::read(peers().join("webdataset/stamps-wds.tar")).unwrap();
    // Cut inside a member.
    let cut = t.path().join("cut.tar");
    fs::write(&cut, &src[..300_000]).unwrap();
    let out = t.path().join("o1");
    sp(&[&"pack", &"-q", &cut, &out])
        .code(1)
        .stderr_has(&["cut.tar", "truncated"]);
    assert!(!out.exists());
    // Cut at a member boundary: no end-of-archive blocks.
    let first = 512 + 16usize.next_multiple_of(512);
    let cut2 = t.path().join("cut2.tar");
    fs::write(&cut2, &src[..first]).unwrap();
    sp(&[&"pack", &"-q", &cut2, &t.path().join("o2")])
        .code(1)
        .stderr_has(&["cut2.tar", "end-of-archive"]);
    // A damaged gzip stream.
    let mut gz = fs::read(peers().join("webdataset/sample.tgz")).unwrap();
    for b in &mut gz[2000..2100] {
        *b ^= 0x5a;
    }
    let bad = t.path().join("bad.tgz");
    fs::write(&bad, &gz).unwrap();
    sp(&[&"pack", &"-q", &bad, &t.path().join("o3")])
        .code(1)
        .stderr_has(&["bad.tgz", "gzip"]);
    // The same keys in two shards.
    let a = t.path().join("a.tar");
    let b = t.path().join("b.tar");
    fs::write(&a, &src).unwrap();
    fs::write(&b, &src).unwrap();
    sp(&[&"pack", &"-q", &a, &b, &t.path().join("o4")])
        .code(1)
        .stderr_has(&["b.tar", "a.tar", "\"000000\"", "appears again"]);
    // Not a tar at all.
    let junk = t.path().join("junk.tar");
    fs::write(&junk, vec![7u8; 4096]).unwrap();
    sp(&[&"pack", &"-q", &junk, &t.path().join("o5")])
        .code(1)
        .stderr_has(&["junk.tar", "not a tar header"]);
    for o in ["o2", "o3", "o4", "o5"] {
        assert!(!t.path().join(o).exists());
    }
}

#[test]
fn round_trip_to_webdataset_and_back_brace_and_folder() {
    let t = tmp();
    let ds = t.path().join("ds");
    sp(&[
        &"pack",
        &"-q",
        &peers().join("webdataset/stamps-wds.tar"),
        &ds,
    ])
    .ok();
    // Small shards: several tars.
    let w = t.path().join("w");
    sp(&[
        &"extract",
        &ds,
        &w,
        &"--format",
        &"wds",
        &"--shard-size",
        &"200KiB",
    ])
    .ok();
    let mut tars: Vec<_> = fs::read_dir(&w)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    tars.sort();
    assert!(tars.len() >= 3, "{tars:?}");
    assert_eq!(tars[0], "shard-000000.tar");
    // Reproducible bytes.
    let w2 = t.path().join("w2");
    sp(&[
        &"extract",
        &ds,
        &w2,
        &"--format",
        &"wds",
        &"--shard-size",
        &"200KiB",
    ])
    .ok();
    for n in &tars {
        assert_eq!(fs::read(w.join(n)).unwrap(), fs::read(w2.join(n)).unwrap());
    }
    // Back, from the folder and from a brace pattern: the same samples.
    let want = records(&ds);
    let back = t.path().join("back");
    sp(&[&"pack", &"-q", &w, &back]).ok();
    assert_eq!(records(&back), want);
    let pattern = format!(
        "{}/shard-{{000000..{:06}}}.tar",
        w.display(),
        tars.len() - 1
    );
    let back2 = t.path().join("back2");
    sp(&[&"pack", &"-q", &pattern, &back2]).ok();
    assert_eq!(records(&back2), want);
    // Same inputs, same options: the same dataset bytes.
    for f in fs::read_dir(&back).unwrap() {
        let n = f.unwrap().file_name();
        assert_eq!(
            fs::read(back.join(&n)).unwrap(),
            fs::read(back2.join(&n)).unwrap(),
            "{n:?}"
        );
    }
}

#[test]
fn extract_wds_refuses_a_field_without_a_name() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("README"), b"x").unwrap();
    let ds = t.path().join("ds");
    sp(&[&"pack", &"-q", &src, &ds]).ok();
    let w = t.path().join("w");
    sp(&[&"extract", &ds, &w, &"--format", &"wds"])
        .code(1)
        .stderr_has(&["empty name", "README"]);
    assert!(!w.exists());
}

#[test]
fn long_and_odd_names_survive_the_wds_round_trip() {
    let t = tmp();
    let src = t.path().join("src");
    let deep = src.join("class_a").join("d".repeat(120));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join(format!("{}.seg.png", "k".repeat(90))), b"long").unwrap();
    fs::write(src.join("class_a/0001.json"), b"{}").unwrap();
    fs::write(src.join("class_a/0001.txt"), b"caf\xc3\xa9").unwrap();
    fs::write(src.join("class_a/empty.bin"), b"").unwrap();
    let ds = t.path().join("ds");
    sp(&[&"pack", &"-q", &src, &ds]).ok();
    let w = t.path().join("w");
    sp(&[&"extract", &ds, &w, &"--format", &"wds"]).ok();
    let back = t.path().join("back");
    sp(&[&"pack", &"-q", &w, &back]).ok();
    assert_eq!(records(&back), records(&ds));
    let m = Dataset::open(&back).unwrap().manifest().clone();
    assert_eq!(
        m.classes.len(),
        1,
        "labels from the key's first folder, as for the tree"
    );
}

/// A plain ustar archive of regular members (for inputs no fixture has).
fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = Vec::new();
    for (name, data) in members {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        t.extend(h);
        t.extend_from_slice(data);
        t.resize(t.len().next_multiple_of(512), 0);
    }
    t.extend(vec![0u8; 1024]);
    t
}

#[test]
fn webdataset_rules_on_a_hand_made_tar() {
    let t = tmp();
    let tar = t.path().join("s.tar");
    fs::write(
        &tar,
        tar_of(&[
            ("__meta__", b"m"),
            ("a.JPG", b"1"),
            ("a.cls", b" 7\n"),
            ("README", b"no dot"),
            ("b.jpg", b"2"),
            ("b.cls", b"3"),
        ]),
    )
    .unwrap();
    // One of five candidate members has no field: 20% skipped, above the 1% default.
    let out = t.path().join("o");
    sp(&[&"pack", &"-q", &tar, &out])
        .code(1)
        .stderr_has(&["s.tar:README", "skipped"]);
    assert!(!out.exists());
    let r = sp(&[
        &"pack",
        &"--labels",
        &"cls",
        &"--max-skipped-share",
        &"50%",
        &"--json",
        &tar,
        &out,
    ])
    .ok();
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(summary["skipped"][0]["path"], "s.tar:README");
    let ds = Dataset::open(&out).unwrap();
    let a = ds.get_by_key(b"a").unwrap().unwrap();
    assert_eq!(a.label(), Some(7));
    // Fields are lower-cased, as webdataset does.
    assert_eq!(&*a.field(b"jpg").unwrap().unwrap().data().unwrap(), b"1");
    assert_eq!(ds.get_by_key(b"b").unwrap().unwrap().label(), Some(3));
    // A field twice in a sample (after lower-casing) is refused.
    let dup = t.path().join("dup.tar");
    fs::write(&dup, tar_of(&[("a.jpg", b"1"), ("a.JPG", b"2")])).unwrap();
    sp(&[&"pack", &"-q", &dup, &t.path().join("o2")])
        .code(1)
        .stderr_has(&["dup.tar", "twice"]);
    // A key that comes back later in the same shard.
    let back = t.path().join("back.tar");
    fs::write(
        &back,
        tar_of(&[("a.jpg", b"1"), ("b.jpg", b"2"), ("a.txt", b"3")]),
    )
    .unwrap();
    sp(&[&"pack", &"-q", &back, &t.path().join("o3")])
        .code(1)
        .stderr_has(&["back.tar", "\"a\"", "appears again"]);
    // Options that belong to other sources.
    sp(&[
        &"pack",
        &"-q",
        &"--key-column",
        &"x",
        &tar,
        &t.path().join("o4"),
    ])
    .code(1)
    .stderr_has(&["--key-column is for MDS"]);
    let tree = t.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a.txt"), b"x").unwrap();
    sp(&[
        &"pack",
        &"-q",
        &"--labels",
        &"cls",
        &tree,
        &t.path().join("o5"),
    ])
    .code(1)
    .stderr_has(&[".cls members are for WebDataset"]);
}

//! A pack spread over parts: `plan`, `pack_part` for each part in any order, `merge`, gives the
//! bytes of a one-machine `pack` with the same options, whatever the number of parts; a part
//! rerun after a crash, missing or damaged parts, and a plan opened before its merge.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::{random_bytes, snapshot, tempdir, text_bytes, write_tree, Tree};
use shardpack::codec::Policy;
use shardpack::compile::{
    merge, pack, pack_part, plan, MergeOptions, NoProgress, PackOptions, Progress, ShardCut,
};
use shardpack::manifest::{Manifest, MANIFEST_FILE};
use shardpack::rng::SplitMix64;
use shardpack::writer::{WriterOptions, PLAN_DIR};
use shardpack::Dataset;

/// Three classes of samples with a compressible text field, a JSON field (a dictionary) and
/// an incompressible one, of varying sizes, so that raw and stored sizes differ a lot.
fn tree() -> Tree {
    let mut t = Tree::new();
    for i in 0..150u64 {
        let class = ["cat", "dog", "eel"][(i % 3) as usize];
        let n = 500 + (i * 37 % 1500) as usize;
        t.insert(format!("{class}/{i:04}.txt").into_bytes(), text_bytes(i, n));
        t.insert(
            format!("{class}/{i:04}.json").into_bytes(),
            format!("{{\"id\": {i}, \"class\": \"{class}\", \"tags\": [\"a\", \"b\"]}}")
                .into_bytes(),
        );
        if i % 2 == 0 {
            t.insert(
                format!("{class}/{i:04}.bin").into_bytes(),
                random_bytes(i, 300 + (i * 13 % 700) as usize),
            );
        }
    }
    t
}

fn options() -> PackOptions {
    PackOptions {
        writer: WriterOptions {
            shard_size: 24 << 10,
            ..WriterOptions::default()
        },
        field_compress: BTreeMap::from([(b"json".to_vec(), Policy::ZstdDict(3))]),
        threads: 2,
        ..PackOptions::default()
    }
}

/// Plans `src` into `out` over `parts` parts, runs them in a shuffled order and merges.
fn planned(src: &Path, out: &Path, parts: u64, opts: &PackOptions, seed: u64) {
    let p = plan(src, out, parts, opts, &NoProgress).unwrap();
    assert_eq!(p.parts.len() as u64, parts);
    let mut order: Vec<u64> = (0..parts).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    for i in order {
        let s = pack_part(out, i, opts, &NoProgress).unwrap();
        assert!(!s.already_done);
    }
    merge(out, &MergeOptions::default()).unwrap();
}

#[test]
fn any_number_of_parts_gives_the_one_machine_bytes() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write_tree(&src, &tree());
    let opts = options();
    let reference = tmp.path().join("ref");
    pack(&src, &reference, &opts, &NoProgress).unwrap();
    let want = snapshot(&reference);
    let m = Manifest::parse(&want[MANIFEST_FILE.as_bytes()], Path::new("m")).unwrap();
    assert!(m.shards.len() >= 10, "{} shards", m.shards.len());
    assert!(m.fields.iter().any(|f| f.compression == "zstd-dict"));
    for (k, parts) in [1u64, 3, 7, 40].into_iter().enumerate() {
        let out = tmp.path().join(format!("out{parts}"));
        planned(&src, &out, parts, &opts, k as u64);
        let got = snapshot(&out);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{parts} parts: other files"
        );
        for (name, bytes) in &want {
            assert!(
                got[name] == *bytes,
                "{parts} parts: {} differs",
                String::from_utf8_lossy(name)
            );
        }
        assert!(!out.join(PLAN_DIR).exists());
        assert!(Dataset::open(&out).unwrap().verify().is_ok());
    }
}

#[test]
fn shards_cut_by_raw_sizes_stay_under_the_target() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write_tree(&src, &tree());
    let opts = options();
    let out = tmp.path().join("raw");
    pack(&src, &out, &opts, &NoProgress).unwrap();
    let m = Dataset::open(&out).unwrap();
    let raw: Vec<u64> = m.manifest().shards.iter().map(|s| s.bytes).collect();
    assert!(raw.iter().all(|&b| b <= opts.writer.shard_size), "{raw:?}");
    // The stored-size rule fills shards fuller, so it makes fewer.
    let stored = tmp.path().join("stored");
    let o = PackOptions {
        shard_cut: ShardCut::Stored,
        ..options()
    };
    pack(&src, &stored, &o, &NoProgress).unwrap();
    let s = Dataset::open(&stored).unwrap();
    assert!(s.manifest().shards.len() < raw.len());
    // And a plan refuses it.
    let e = plan(&src, &tmp.path().join("p"), 2, &o, &NoProgress).unwrap_err();
    assert!(e.to_string().contains("raw sizes"), "{e}");
}

#[test]
fn a_plan_is_no_dataset_until_merged_and_merge_names_missing_and_damaged_parts() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write_tree(&src, &tree());
    let opts = options();
    let out = tmp.path().join("out");
    let p = plan(&src, &out, 4, &opts, &NoProgress).unwrap();
    let e = Dataset::open(&out).unwrap_err().to_string();
    assert!(e.contains("not merged yet"), "{e}");
    for i in [0u64, 1, 3] {
        pack_part(&out, i, &opts, &NoProgress).unwrap();
    }
    let e = Dataset::open(&out).unwrap_err().to_string();
    assert!(e.contains("not merged yet"), "{e}");
    let e = merge(&out, &MergeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 of 4 parts are missing") && e.contains(": 2;"),
        "{e}"
    );
    assert!(!out.join(MANIFEST_FILE).exists());
    pack_part(&out, 2, &opts, &NoProgress).unwrap();

    // A truncated shard of part 1 is named; so is a flipped data byte with `verify`.
    let first1 = p.parts[1].first_shard;
    let shard = out.join(format!("shard-{first1:06}.spk"));
    let good = fs::read(&shard).unwrap();
    fs::write(&shard, &good[..good.len() - 1]).unwrap();
    let e = merge(&out, &MergeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("part 1:") && e.contains("receipt says"), "{e}");
    fs::write(&shard, &good).unwrap();
    merge(&out, &MergeOptions::default()).unwrap();
    Dataset::open(&out).unwrap();
    // A flipped data byte: only `verify` (every byte hashed) sees it.
    let out2 = tmp.path().join("out2");
    let p2 = plan(&src, &out2, 2, &opts, &NoProgress).unwrap();
    for i in 0..2 {
        pack_part(&out2, i, &opts, &NoProgress).unwrap();
    }
    let s = out2.join(format!("shard-{:06}.spk", p2.parts[1].first_shard));
    let mut b = fs::read(&s).unwrap();
    b[4096 + 10] ^= 1;
    fs::write(&s, &b).unwrap();
    let e = merge(&out2, &MergeOptions { verify: true })
        .unwrap_err()
        .to_string();
    assert!(e.contains("part 1:") && e.contains("do not hash"), "{e}");
}

#[test]
fn a_part_rerun_after_a_crash_gives_the_same_bytes() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write_tree(&src, &tree());
    let opts = options();
    let reference = tmp.path().join("ref");
    pack(&src, &reference, &opts, &NoProgress).unwrap();
    let out = tmp.path().join("out");
    let p = plan(&src, &out, 3, &opts, &NoProgress).unwrap();
    for i in 0..3 {
        pack_part(&out, i, &opts, &NoProgress).unwrap();
    }
    // What a part killed half-way leaves: no receipt, a shard cut short, a temporary file.
    fs::remove_file(out.join(PLAN_DIR).join("part-000001.json")).unwrap();
    let first = p.parts[1].first_shard;
    let shard = out.join(format!("shard-{:06}.spk", first + 1));
    let b = fs::read(&shard).unwrap();
    fs::write(&shard, &b[..b.len() / 2]).unwrap();
    fs::write(
        out.join(format!("shard-{:06}.spk.1-2.tmp", first + 2)),
        b"half",
    )
    .unwrap();
    let e = merge(&out, &MergeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing") && e.contains(": 1"), "{e}");
    // A rerun of a finished part does nothing; of the crashed one, writes it again.
    assert!(pack_part(&out, 0, &opts, &NoProgress).unwrap().already_done);
    assert!(!pack_part(&out, 1, &opts, &NoProgress).unwrap().already_done);
    merge(&out, &MergeOptions::default()).unwrap();
    assert_eq!(snapshot(&out), snapshot(&reference));
}

#[test]
fn bad_part_numbers_and_plans_into_used_directories_are_refused() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write_tree(&src, &tree());
    let opts = options();
    let out = tmp.path().join("out");
    plan(&src, &out, 2, &opts, &NoProgress).unwrap();
    let e = pack_part(&out, 2, &opts, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("parts 0 to 1"), "{e}");
    let e = plan(&src, &out, 2, &opts, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
    let e = plan(&src, &tmp.path().join("z"), 0, &opts, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("between 1 and"), "{e}");
}

/// A [`Progress`] that stops the run at its start until released: a part still going (a
/// straggler) while another run of it finishes and the plan is merged.
struct Held {
    started: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Progress for Held {
    fn start(&self, _files: u64, _bytes: u64) {
        self.started.lock().unwrap().send(()).unwrap();
        self.release.lock().unwrap().recv().unwrap();
    }
}

/// Regression: `merge` removed the plan's directory whole while a second run of a part was
/// still going, deleting that run's scratch directory (and its temporary shards, and then
/// failing it when it wrote its receipt). Now merge writes the dataset, names the running
/// part and leaves the plan's files; the run then ends well, and a second merge removes them.
#[test]
fn merge_leaves_the_files_of_a_part_still_running_to_it() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write_tree(&src, &tree());
    let opts = options();
    let out = tmp.path().join("out");
    plan(&src, &out, 2, &opts, &NoProgress).unwrap();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let held = Held {
        started: std::sync::Mutex::new(started_tx),
        release: std::sync::Mutex::new(release_rx),
    };
    std::thread::scope(|s| {
        let straggler = s.spawn(|| pack_part(&out, 1, &opts, &held));
        started.recv().unwrap();
        for i in [0, 1] {
            assert!(!pack_part(&out, i, &opts, &NoProgress).unwrap().already_done);
        }
        let m = merge(&out, &MergeOptions::default()).unwrap();
        assert_eq!(m.running.len(), 1, "{m:?}");
        assert_eq!(m.running[0].part, 1);
        assert!(m.running[0].scratch.is_dir(), "{m:?}");
        assert!(out.join(PLAN_DIR).join("plan.json").is_file());
        // The dataset is complete already.
        assert_eq!(Dataset::open(&out).unwrap().len(), 150);
        release.send(()).unwrap();
        let s = straggler.join().unwrap().unwrap();
        assert!(!s.already_done);
    });
    let m = merge(&out, &MergeOptions::default()).unwrap();
    assert!(m.running.is_empty() && m.left.is_empty(), "{m:?}");
    assert!(!out.join(PLAN_DIR).exists());
    let reference = tmp.path().join("ref");
    pack(&src, &reference, &opts, &NoProgress).unwrap();
    assert_eq!(snapshot(&out), snapshot(&reference));
}

//! `shardpack bench` end to end on small trees: every phase runs, the JSON has its keys, and a
//! class-sorted dataset is reported with a warning.

#![cfg(unix)]

mod util;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use util::*;

fn tree(src: &Path) {
    for c in 0..40 {
        let d = src.join(format!("class{c:02}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..40u32 {
            let bytes: Vec<u8> = (0..1000u32).map(|k| (k * 31 + i * 7 + c) as u8).collect();
            std::fs::write(d.join(format!("{i:04}.bin")), bytes).unwrap();
        }
    }
}

/// The test tree under `dir/src`, packed into `dir/ds` with `extra` options.
fn packed(dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (src, ds) = (dir.join("src"), dir.join("ds"));
    tree(&src);
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"pack", &src, &ds, &"-q", &"--compress", &"none"];
    args.extend(extra.iter().map(|a| a as &dyn AsRef<OsStr>));
    sp(&args).ok();
    (src, ds)
}

/// `shardpack bench DS` on small batches and chunks, with `extra` options.
fn bench(ds: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<&dyn AsRef<OsStr>> =
        vec![&"bench", &ds, &"--batch", &"32", &"--chunk-size", &"16KiB"];
    args.extend(extra.iter().map(|a| a as &dyn AsRef<OsStr>));
    sp(&args)
}

fn bench_json(ds: &Path, extra: &[&str]) -> serde_json::Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(extra);
    bench(ds, &with_json).ok().json()
}

#[test]
fn bench_reports_every_phase_and_its_keys() {
    let dir = tmp();
    let (src, ds) = packed(dir.path(), &[]);
    let v = bench_json(
        &ds,
        &[
            "--loose",
            src.to_str().unwrap(),
            "--threads",
            "4",
            "--step-ms",
            "0.5",
        ],
    );
    for key in [
        "limit_mb_s",
        "loader_mb_s",
        "loader_samples_s",
        "loader_to_limit",
        "loose_mb_s",
        "loose_samples_s",
        "loader_to_loose",
        "trainer_busy_loader",
        "trainer_busy_loose",
        "epoch_s_loader",
        "epoch_s_loose",
        "batch_label_diversity",
        "batch_label_diversity_full_random",
        "trainer_demand_mb_s",
        "limit_random_order_mb_s",
        "loader_to_limit_random_order",
        "trainer_wait_s_loader",
        "trainer_wait_s_loose",
    ] {
        let x = v[key].as_f64();
        assert!(x.is_some_and(|x| x > 0.0), "{key} = {}", v[key]);
    }
    assert!(v["cache_evicted"].is_boolean());
    let busy = v["trainer_busy_loader"].as_f64().unwrap();
    assert!(busy > 0.0 && busy <= 1.0, "{busy}");
    // Busy and waiting are disjoint parts of the epoch.
    let wait = v["trainer_wait_s_loader"].as_f64().unwrap() / v["epoch_s_loader"].as_f64().unwrap();
    assert!(busy + wait <= 1.0 + 1e-6, "busy {busy} + waiting {wait}");
    // 1000-byte samples, batches of 32, 0.5 ms per step: the trainer asks for 64 MB/s.
    let demand = v["trainer_demand_mb_s"].as_f64().unwrap();
    assert!((demand - 64.0).abs() < 1.0, "{demand}");
    let notes = v["notes"].as_array().unwrap();
    assert!(
        !notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("WARNING")),
        "a shuffled pack gets no shuffle warning: {notes:?}"
    );

    // The text table: one meaning per column (the last is the share of the limit, for every
    // row), and the loader-to-loose-files ratio on a line of its own.
    let text = bench(&ds, &["--loose", src.to_str().unwrap(), "--threads", "4"]).out();
    let header = text.lines().find(|l| l.contains("samples/s")).unwrap();
    assert!(header.trim_end().ends_with("of limit"), "{text}");
    let loose = text
        .lines()
        .find(|l| l.contains("loose files, random"))
        .unwrap();
    let share = loose.split_whitespace().last().unwrap();
    assert!(
        share.parse::<f64>().is_ok(),
        "a share of the limit, not a ratio to the loader: {loose}"
    );
    assert!(text.contains("loader / loose files: "), "{text}");

    // Without --loose and --step-ms those figures are null, not made up.
    let v = bench_json(&ds, &[]);
    for key in [
        "loose_mb_s",
        "loader_to_loose",
        "trainer_busy_loader",
        "trainer_busy_loose",
    ] {
        assert!(v[key].is_null(), "{key} = {}", v[key]);
    }
}

#[test]
fn bench_warns_about_a_class_sorted_dataset() {
    let dir = tmp();
    let (_, ds) = packed(dir.path(), &["--no-shuffle"]);
    // The default interleaved order mixes sorted storage like a full shuffle: no warning.
    let v = bench_json(&ds, &[]);
    assert!(
        v["batch_label_diversity_ratio"].as_f64().unwrap() >= 0.9,
        "{v}"
    );
    assert!(v["notes"].as_array().unwrap().is_empty(), "{v}");
    // A uniform shuffle of small windows does not, and is warned about.
    let old = ["--shuffle", "chunked", "--window", "4"];
    let v = bench_json(&ds, &old);
    let ratio = v["batch_label_diversity"].as_f64().unwrap()
        / v["batch_label_diversity_full_random"].as_f64().unwrap();
    assert!(ratio < 0.8, "{v}");
    let notes = v["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("class-sorted")),
        "{notes:?}"
    );
    // The table says it too.
    bench(&ds, &old)
        .ok()
        .stdout_has("WARNING")
        .stdout_has("labels per batch");
}

#[test]
fn bench_refuses_a_step_that_is_not_a_positive_time() {
    let dir = tmp();
    let (_, ds) = packed(dir.path(), &[]);
    for bad in ["--step-ms=0", "--step-ms=-1", "--step-ms=NaN"] {
        bench(&ds, &[bad]).code(1).stderr_has(&["--step-ms"]);
    }
}

#[test]
fn bench_epochs_report_each_boundary() {
    let dir = tmp();
    let (_, ds) = packed(dir.path(), &[]);
    for extra in [&[][..], &["--no-read-next-epoch"][..]] {
        let mut args = vec!["--step-ms", "1", "--epochs", "3"];
        args.extend_from_slice(extra);
        let v = bench_json(&ds, &args);
        let epochs = v["trainer_epochs_loader"].as_array().unwrap();
        assert_eq!(epochs.len(), 3, "{v}");
        for e in epochs {
            for k in ["first_batch_wait_s", "busy", "seconds"] {
                assert!(e[k].as_f64().unwrap() >= 0.0, "{k}: {v}");
            }
        }
        let across = v["trainer_busy_across_boundaries"].as_f64().unwrap();
        assert!(across > 0.0 && across <= 1.5, "{v}");
        assert_eq!(v["trainer_read_next_epoch"], extra.is_empty());
        let mut text = args.clone();
        text.retain(|a| *a != "--json");
        bench(&ds, &text)
            .ok()
            .stdout_has("boundary 0->1: stall")
            .stdout_has("boundary 1->2: stall")
            .stdout_has("busy across the epoch boundaries");
    }
}

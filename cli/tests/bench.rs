//! `shardpack bench` end to end on small trees: every phase runs, the JSON has its keys, and a
//! class-sorted dataset is reported with a warning.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardpack"))
}

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

fn pack(src: &Path, out: &Path, extra: &[&str]) {
    let st = bin()
        .arg("pack")
        .arg(src)
        .arg(out)
        .args(["-q", "--compress", "none"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// The test tree under `dir/src`, packed into `dir/ds` with `extra` options.
fn packed(dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (src, ds) = (dir.join("src"), dir.join("ds"));
    tree(&src);
    pack(&src, &ds, extra);
    (src, ds)
}

fn bench_json(ds: &Path, extra: &[&str]) -> serde_json::Value {
    let out = bin()
        .arg("bench")
        .arg(ds)
        .args(["--json", "--batch", "32", "--chunk-size", "16KiB"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_reports_every_phase_and_its_keys() {
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let (_, ds) = packed(dir.path(), &["--no-shuffle"]);
    let v = bench_json(&ds, &[]);
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
    let out = bin()
        .arg("bench")
        .arg(&ds)
        .args(["--batch", "32", "--chunk-size", "16KiB"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("WARNING") && text.contains("labels per batch"),
        "{text}"
    );
}

#[test]
fn bench_refuses_a_step_that_is_not_a_positive_time() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ds) = packed(dir.path(), &[]);
    for bad in ["0", "-1", "NaN"] {
        let out = bin()
            .arg("bench")
            .arg(&ds)
            .arg(format!("--step-ms={bad}"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "--step-ms {bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--step-ms"), "{err}");
    }
}

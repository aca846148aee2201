//! `shardpack bench` reports the loader phase's CPU time (issue 16): user and system seconds
//! from getrusage, core-seconds per stored GB and samples per core-second, consistent with
//! each other, in `--json` and in the table.

#![cfg(unix)]

mod util;

use std::ffi::OsStr;

use util::*;

#[test]
fn bench_reports_the_loaders_cpu_per_gb() {
    let dir = tmp();
    let (src, ds) = (dir.path().join("src"), dir.path().join("ds"));
    for c in 0..4 {
        let d = src.join(format!("class{c}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..200u32 {
            let bytes: Vec<u8> = (0..4000u32).map(|k| (k * 31 + i * 7 + c) as u8).collect();
            std::fs::write(d.join(format!("{i:04}.bin")), bytes).unwrap();
        }
    }
    let args: Vec<&dyn AsRef<OsStr>> = vec![&"pack", &src, &ds, &"-q", &"--compress", &"none"];
    sp(&args).ok();
    let bench: Vec<&dyn AsRef<OsStr>> = vec![&"bench", &ds, &"--batch", &"32", &"--json"];
    let v = sp(&bench).ok().json();
    let user = v["loader_user_s"].as_f64().expect("loader_user_s");
    let sys = v["loader_sys_s"].as_f64().expect("loader_sys_s");
    let per_gb = v["loader_cpu_s_per_gb"]
        .as_f64()
        .expect("loader_cpu_s_per_gb");
    let per_core = v["loader_samples_per_core_s"]
        .as_f64()
        .expect("loader_samples_per_core_s");
    assert!(
        user >= 0.0 && sys >= 0.0 && user + sys > 0.0,
        "{user} {sys}"
    );
    let gb = v["stored_bytes"].as_f64().unwrap() / 1e9;
    assert!(
        (per_gb * gb - (user + sys)).abs() <= 1e-6 + 1e-9 * per_gb,
        "{per_gb} * {gb} != {user} + {sys}"
    );
    let samples = v["samples"].as_f64().unwrap();
    assert!(
        (per_core * (user + sys) - samples).abs() / samples < 1e-6,
        "{per_core} * ({user} + {sys}) != {samples}"
    );
    let table: Vec<&dyn AsRef<OsStr>> = vec![&"bench", &ds, &"--batch", &"32"];
    let out = sp(&table).ok().out();
    assert!(
        out.contains("loader CPU: user") && out.contains("core-s per GB"),
        "{out}"
    );
}

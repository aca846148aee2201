//! Remote reads through `scripts/faultproxy.py` (in front of the nginx of
//! `scripts/testsrv.py`): 503s, connection resets, bodies cut in half and stalled answers are
//! survived in both read modes (retries with backoff, a cut body resumed where it stopped) and
//! the data is byte-exact; a fault on every request gives up with an error naming the URL.
#![cfg(feature = "remote")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use shardpack::reader::{IndexCheck, OpenOptions};
use shardpack::storage::remote::ReadMode;
use shardpack::{Dataset, Loader, LoaderOptions};
use support::*;

const N: u64 = 200;

fn read_all_through(fault: &[&str], timeout: Duration) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    make_dataset(&root.join("ds"), N);
    let srv = http(&root);
    let p = proxy(&srv.url, fault);
    let url = format!("{}/ds", p.url);
    for mode in [ReadMode::Cache, ReadMode::Stream] {
        let mut o = opts(mode, &t.path().join(format!("c-{mode:?}")));
        o.timeout = timeout;
        let ds = Dataset::open_remote(&url, &o, &OpenOptions::default(), IndexCheck::Auto)
            .unwrap_or_else(|e| panic!("{fault:?} {mode:?}: {e}"));
        for i in [0, N / 3, N - 1] {
            let s = ds.get(i).unwrap();
            assert_eq!(
                &*s.field(b"bin").unwrap().unwrap().data().unwrap(),
                &content(i)[..]
            );
        }
        let ds = Arc::new(ds);
        let mut n = 0;
        for s in Loader::new(ds.clone(), LoaderOptions::default()).unwrap() {
            let s = s.unwrap_or_else(|e| panic!("{fault:?} {mode:?}: {e}"));
            assert_eq!(s.field(0).unwrap(), &content(s.index)[..]);
            n += 1;
        }
        assert_eq!(n, N);
    }
}

#[test]
fn survives_503s() {
    read_all_through(&["--fault", "503", "--every", "3"], Duration::from_secs(10));
}

#[test]
fn survives_connection_resets() {
    read_all_through(
        &["--fault", "reset", "--every", "3"],
        Duration::from_secs(10),
    );
}

#[test]
fn resumes_cut_bodies() {
    read_all_through(
        &["--fault", "truncate", "--every", "2"],
        Duration::from_secs(10),
    );
}

#[test]
fn survives_stalls_by_timing_out() {
    read_all_through(
        &["--fault", "stall", "--every", "7", "--stall-seconds", "60"],
        Duration::from_secs(1),
    );
}

#[test]
fn a_fault_on_every_request_is_an_error_naming_the_url() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    make_dataset(&root.join("ds"), N);
    let srv = http(&root);
    let p = proxy(&srv.url, &["--fault", "503", "--every", "1"]);
    let url = format!("{}/ds", p.url);
    let mut o = opts(ReadMode::Stream, t.path());
    o.retries = 2;
    let e = Dataset::open_remote(&url, &o, &OpenOptions::default(), IndexCheck::Auto)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{url}/manifest.json")) && e.contains("3 attempts"),
        "{e}"
    );
    let p = proxy(&srv.url, &["--fault", "404", "--every", "1"]);
    let url = format!("{}/ds", p.url);
    let e = Dataset::open_remote(&url, &o, &OpenOptions::default(), IndexCheck::Auto)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{url}/manifest.json")) && e.contains("404"),
        "{e}"
    );
}

//! The phases `pack` reports: scanning, then choosing each field's compression (trials,
//! dictionary training), then packing, so a progress display never shows "scanning" while a
//! dictionary is trained.

mod common;

use std::sync::Mutex;

use shardpack::compile::{pack, PackOptions, Progress};

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn walking(&self, _files: u64) {
        let mut v = self.0.lock().unwrap();
        if v.last().map(String::as_str) != Some("walk") {
            v.push("walk".into());
        }
    }
    fn choosing(&self, field: &[u8], index: usize, fields: usize) {
        self.0.lock().unwrap().push(format!(
            "choose {}/{fields} {}",
            index + 1,
            String::from_utf8_lossy(field)
        ));
    }
    fn start(&self, _files: u64, _bytes: u64) {
        self.0.lock().unwrap().push("start".into());
    }
}

#[test]
fn phases_come_in_order_one_choice_per_field() {
    let t = common::tempdir();
    let src = t.path().join("src");
    for i in 0..40u64 {
        let dir = src.join(format!("c{}", i % 2));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{i:03}.txt")), common::text_bytes(i, 500)).unwrap();
        std::fs::write(
            dir.join(format!("{i:03}.bin")),
            common::random_bytes(i, 300),
        )
        .unwrap();
    }
    let rec = Recorder::default();
    pack(&src, &t.path().join("ds"), &PackOptions::default(), &rec).unwrap();
    let got = rec.0.into_inner().unwrap();
    assert_eq!(
        got,
        vec!["walk", "choose 1/2 bin", "choose 2/2 txt", "start"],
        "{got:?}"
    );
}

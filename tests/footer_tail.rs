//! `Footer::decode_tail` (what a lazy open reads: the last 96 bytes and the file length) gives
//! exactly what `Footer::decode` gives on the whole file: on every fixture shard, on each
//! shard cut short at many lengths, and with single bytes of the footer flipped.

use std::path::Path;

use shardpack::format::{Footer, MIN_SHARD_LEN};

fn both(file: &[u8]) -> (String, String) {
    let whole = format!("{:?}", Footer::decode(file));
    let len = file.len() as u64;
    let mut tail = [0u8; Footer::SIZE];
    if len >= MIN_SHARD_LEN {
        tail.copy_from_slice(&file[file.len() - Footer::SIZE..]);
    }
    (whole, format!("{:?}", Footer::decode_tail(&tail, len)))
}

fn shards(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            shards(&p, out);
        } else if p.extension().is_some_and(|x| x == "spk") {
            out.push(std::fs::read(&p).unwrap());
        }
    }
}

#[test]
fn decode_tail_agrees_with_decode() {
    let mut files = Vec::new();
    shards(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
        &mut files,
    );
    assert!(files.len() > 10, "fixtures found: {}", files.len());
    for f in &files {
        let (a, b) = both(f);
        assert_eq!(a, b);
        for cut in [
            1usize,
            8,
            95,
            96,
            97,
            4000,
            f.len() - 4255,
            f.len() - 64,
            f.len(),
        ] {
            if cut <= f.len() {
                let (a, b) = both(&f[..f.len() - cut]);
                assert_eq!(a, b, "cut {cut}");
            }
        }
        for at in (f.len() - Footer::SIZE..f.len()).step_by(5) {
            let mut g = f.clone();
            g[at] ^= 0x10;
            let (a, b) = both(&g);
            assert_eq!(a, b, "flip at {at}");
        }
    }
}

#[test]
fn a_short_tail_is_refused() {
    let e = Footer::decode_tail(&[0u8; 10], 10_000).unwrap_err();
    assert_eq!(e.region, "footer");
}

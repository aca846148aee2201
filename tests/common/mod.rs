//! Helpers shared by the integration tests: building file trees from a path -> bytes map,
//! snapshotting a directory back into one, rebuilding a tree from a dataset, deterministic
//! content, and corrupting files.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use shardpack::rng::SplitMix64;
use shardpack::Dataset;

/// A fresh temporary directory, on tmpfs (`/dev/shm`) where there is one. The writer fsyncs
/// every shard and the manifest, which costs tens of milliseconds per file on a real disk and
/// would make the property tests slow; nothing here tests durability. Set
/// `SHARDPACK_TEST_TMPDIR` to choose another place.
pub fn tempdir() -> tempfile::TempDir {
    let base = std::env::var_os("SHARDPACK_TEST_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            shm.is_dir().then_some(shm)
        });
    if let Some(base) = base {
        if let Ok(t) = tempfile::Builder::new()
            .prefix("shardpack-test-")
            .tempdir_in(&base)
        {
            return t;
        }
    }
    tempfile::Builder::new()
        .prefix("shardpack-test-")
        .tempdir()
        .unwrap()
}

/// Relative path (components joined by `/`, raw bytes) -> file contents.
pub type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// `root/rel` for a `/`-separated relative path given as raw bytes.
pub fn join(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(rel))
}

/// Writes every file of `tree` under `root`, creating folders as needed.
pub fn write_tree(root: &Path, tree: &Tree) {
    for (rel, data) in tree {
        let p = join(root, rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }
}

/// Every regular file under `root` (recursively) as relative path -> bytes.
pub fn snapshot(root: &Path) -> Tree {
    fn go(root: &Path, dir: &Path, out: &mut Tree) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                go(root, &p, out);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = Tree::new();
    go(root, root, &mut out);
    out
}

/// Lists the keys of a tree, lossily, for assertion messages.
pub fn names(tree: &Tree) -> Vec<String> {
    tree.keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Asserts two trees are equal, with a readable message naming the first difference.
pub fn assert_same_tree(actual: &Tree, expected: &Tree, what: &str) {
    if actual == expected {
        return;
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let differ: Vec<_> = expected
        .iter()
        .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
        .map(|(k, v)| {
            format!(
                "{} ({} bytes expected, {} bytes actual)",
                String::from_utf8_lossy(k),
                v.len(),
                actual[k].len()
            )
        })
        .collect();
    panic!(
        "{what}: trees differ\n  missing: {missing:?}\n  extra: {extra:?}\n  differ: {differ:?}"
    );
}

/// The relative path a record extracts to: `key + "." + field`, or `key` for the empty field.
pub fn record_path(key: &[u8], field: &[u8]) -> Vec<u8> {
    let mut p = key.to_vec();
    if !field.is_empty() {
        p.push(b'.');
        p.extend_from_slice(field);
    }
    p
}

/// Reads every record of `ds` back into a tree (path -> decoded bytes), asserting that no path
/// comes out twice.
pub fn dataset_tree(ds: &Dataset) -> Tree {
    let mut out = Tree::new();
    for s in ds.iter() {
        let s = s.unwrap();
        for f in s.fields() {
            let f = f.unwrap();
            let data = f.data().unwrap_or_else(|e| panic!("reading a record: {e}"));
            let p = record_path(s.key(), f.name());
            let dup = out.insert(p.clone(), data.into_owned());
            assert!(
                dup.is_none(),
                "{} comes out of the dataset twice",
                String::from_utf8_lossy(&p)
            );
        }
    }
    out
}

/// `n` pseudo-random (incompressible) bytes from `seed`.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut r = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    out.truncate(n);
    out
}

/// `n` bytes of compressible, text-like content from `seed` (words from a small vocabulary).
pub fn text_bytes(seed: u64, n: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "while",
        "dog",
        "barked",
        "at",
        "sky",
        "blue",
        "\"label\":",
        "{\"id\":",
        "42},",
        "\n",
    ];
    let mut r = SplitMix64::new(seed ^ 0x7465_7874);
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(WORDS[r.below(WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(n);
    out
}

/// Content of a given kind: `true` for text-like, `false` for random bytes.
pub fn content(seed: u64, n: usize, text: bool) -> Vec<u8> {
    if text {
        text_bytes(seed, n)
    } else {
        random_bytes(seed, n)
    }
}

/// Flips the bits of `mask` at byte `at` of the file at `path`.
pub fn flip_byte(path: &Path, at: u64, mask: u8) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= mask;
    fs::write(path, b).unwrap();
}

/// The shard files (`shard-*.spk`) of a dataset directory, sorted.
pub fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("shard-") && n.ends_with(".spk")
        })
        .collect();
    v.sort();
    v
}

/// The root of the repository (the `shardpack` crate), for fixtures.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Re-seals a shard after its index was edited: new index checksum in the footer, new footer
/// checksum, and the manifest's hashes updated to match. What remains is the per-entry
/// validation of the reader.
pub fn reseal(dir: &Path, shard_index: usize, mut bytes: Vec<u8>) {
    let footer = shardpack::format::Footer::decode(&bytes).expect("only the index was edited");
    let idx =
        &bytes[footer.index_offset as usize..(footer.index_offset + footer.index_len) as usize];
    let mut f = footer;
    f.index_checksum = xxhash_rust::xxh3::xxh3_64(idx);
    let at = bytes.len() - shardpack::format::Footer::SIZE;
    bytes[at..].copy_from_slice(&f.encode());
    let name = format!("shard-{shard_index:06}.spk");
    fs::write(dir.join(&name), &bytes).unwrap();
    let mpath = dir.join(shardpack::manifest::MANIFEST_FILE);
    let mut m: shardpack::manifest::Manifest =
        serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();
    m.shards[shard_index].index_xxh3 = shardpack::manifest::Hash64(f.index_checksum);
    m.shards[shard_index].xxh3 = shardpack::manifest::Hash64(xxhash_rust::xxh3::xxh3_64(&bytes));
    fs::write(&mpath, m.to_json()).unwrap();
}

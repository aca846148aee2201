//! Field and class lookup by name on a `Dataset`, without going through the manifest.

mod common;

use shardpack::Dataset;

#[test]
fn fields_and_classes_by_name() {
    let ds = Dataset::open(common::repo_root().join("fixtures/golden-v2")).unwrap();
    let names = ds.field_names();
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            ds.field_id(n),
            Some(i as u32),
            "{:?}",
            String::from_utf8_lossy(n)
        );
    }
    assert_eq!(ds.field_id(b"no-such-field"), None);
    let classes = ds.class_names();
    assert_eq!(classes, vec![&b"bird"[..], b"cat", b"dog"]);
    assert_eq!(ds.class_name(2), Some(&b"dog"[..]));
    assert_eq!(ds.class_name(3), None);
    // The sample's own lookup agrees with the dataset's.
    let s = ds.get(0).unwrap();
    let img = ds.field_id(b"img").unwrap();
    let f = s.field(b"img").unwrap().unwrap();
    assert_eq!(f.field_index(), img);
    assert_eq!(ds.class_name(s.label().unwrap()), Some(&b"bird"[..]));
}

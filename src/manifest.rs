//! The dataset manifest (`manifest.json`), as specified in `format-spec/manifest.md`.

use std::fmt::Write as _;
use std::path::Path;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::DictTrainer;
use crate::error::{Error, Result};

/// File name of the manifest inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The value of the manifest's `format` key.
pub const FORMAT_NAME: &str = "shardpack";

/// The dataset format version a writer produces: the `format_version` of its manifests.
/// Version 2 added the manifest's `writer` and `features` keys; its shards are shard-format
/// version 1, byte for byte as in dataset version 1 (`format-spec/README.md#versioning`).
pub const FORMAT_VERSION: u32 = 2;

/// Lowest and highest dataset format version (`format_version`) this build reads.
pub const SUPPORTED_FORMAT_VERSIONS: (u32, u32) = (1, 2);

/// Feature names this build understands when a manifest lists them as required;
/// `format-spec/manifest.md` section 2.2.2 keeps the registry.
pub const KNOWN_FEATURES: &[&str] = &[crate::format::ZSTD_REF_FEATURE];

/// File name of shard `i`.
pub fn shard_file_name(i: u64) -> String {
    format!("shard-{i:06}.spk")
}

/// Raw bytes that serialize as a JSON string when they are UTF-8 and as `{"hex": "..."}`
/// otherwise, so non-UTF-8 file names survive the manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(pub Vec<u8>);

impl Name {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lossy UTF-8 for display.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl From<&[u8]> for Name {
    fn from(b: &[u8]) -> Name {
        Name(b.to_vec())
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(s.as_bytes().to_vec())
    }
}

/// Lowercase hex of `b`.
pub fn to_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The bytes of lowercase hex `s` ([`to_hex`]'s inverse); `None` when it is not that.
pub(crate) fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !is_lower_hex(s) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &to_hex(&self.0))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Name, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Hex { hex: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(Name(t.into_bytes())),
            Repr::Hex { hex } => from_hex(&hex)
                .map(Name)
                .ok_or_else(|| D::Error::custom("\"hex\" is not an even-length hex string")),
        }
    }
}

/// A 64-bit checksum written as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hash64(pub u64);

impl Serialize for Hash64 {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:016x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Hash64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Hash64, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 16 || !is_lower_hex(&s) {
            return Err(D::Error::custom("a checksum is 16 lowercase hex digits"));
        }
        u64::from_str_radix(&s, 16)
            .map(Hash64)
            .map_err(|_| D::Error::custom("a checksum is 16 hex digits"))
    }
}

/// One shard as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMeta {
    /// File name inside the dataset directory.
    pub file: String,
    /// Samples in the shard.
    pub samples: u64,
    /// Records in the shard.
    pub records: u64,
    /// Global id of the shard's first sample.
    pub first_sample: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// xxh3-64 of the whole file.
    pub xxh3: Hash64,
    /// The footer's index checksum.
    pub index_xxh3: Hash64,
}

/// One field as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMeta {
    /// Field name (the file suffix).
    pub name: Name,
    /// `none`, `zstd` or `zstd-dict`.
    pub compression: String,
    /// zstd level (0 for none).
    pub level: i32,
    /// Number of records of this field.
    pub records: u64,
    /// Bytes before encoding.
    pub raw_bytes: u64,
    /// Bytes as stored.
    pub stored_bytes: u64,
    /// Size of the field's dictionary in each shard (0 if none).
    pub dict_bytes: u64,
}

/// An input path left out of the dataset, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skipped {
    /// Path relative to the source root.
    pub path: Name,
    /// Why it was left out.
    pub reason: String,
}

/// Who wrote a dataset, with the versions that decide its bytes (manifest key `writer`,
/// format version 2). Identical output is promised for the same writer identification and
/// options, not across them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterId {
    /// The writing program, `"shardpack"` for this crate.
    pub name: String,
    /// Its version (`CARGO_PKG_VERSION` for this crate).
    pub version: String,
    /// The zstd library version that compressed the records, `"1.5.7"`.
    pub zstd: String,
    /// What trained the dictionaries ([`DictTrainer::id`]): `"fastcover:k=1024,d=8,f=16,accel=4
    /// 1.5.7"`, or `"zdict 1.5.7"` for zstd's `ZDICT_trainFromBuffer`.
    pub dict_trainer: String,
}

impl WriterId {
    /// This build's identification, with the default dictionary trainer.
    pub fn current() -> WriterId {
        WriterId::with_trainer(DictTrainer::default())
    }

    /// This build's identification, with dictionaries trained by `trainer`.
    pub fn with_trainer(trainer: DictTrainer) -> WriterId {
        let v = zstd::zstd_safe::version_number();
        let zstd = format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100);
        WriterId {
            name: "shardpack".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            dict_trainer: trainer.id(&zstd),
            zstd,
        }
    }
}

/// Feature flags (manifest key `features`, format version 2): names of extensions the dataset
/// uses. A reader refuses a dataset whose `required` list names a feature it does not know,
/// naming it, and ignores `optional` features it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Features {
    /// Features a reader must understand to read the dataset correctly.
    pub required: Vec<String>,
    /// Features a reader may ignore (extra metadata, auxiliary files).
    pub optional: Vec<String>,
}

/// The dataset manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"shardpack"`.
    pub format: String,
    /// Dataset format version (1 or 2); the shards are shard-format version 1 in both.
    pub format_version: u32,
    /// Who wrote the dataset (version 2; absent in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<WriterId>,
    /// Feature flags (version 2; absent in version 1, where it means none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// Total samples.
    pub samples: u64,
    /// Total records.
    pub records: u64,
    /// The shards in order.
    pub shards: Vec<ShardMeta>,
    /// The fields, sorted by name bytes.
    pub fields: Vec<FieldMeta>,
    /// `"imagefolder"` or `"none"`.
    pub labels: String,
    /// Class names; class `i` has label `i`.
    pub classes: Vec<Name>,
    /// Build options, for provenance (readers ignore unknown keys).
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Inputs left out.
    pub skipped: Vec<Skipped>,
}

impl Manifest {
    /// The permission bits `shardpack pack` recorded for the executable files of a tree (the
    /// `file_modes` option, `format-spec/manifest.md` section 2.5), by path relative to the
    /// tree; empty when the option is absent (no file had an execute bit, or the dataset was
    /// not packed from a tree). An option of another shape is an error naming it.
    pub fn file_modes(&self) -> std::result::Result<Vec<(Vec<u8>, u32)>, String> {
        let Some(v) = self.options.get("file_modes") else {
            return Ok(Vec::new());
        };
        let bad = |why: &str| format!("the manifest's options.file_modes {why}");
        let obj = v.as_object().ok_or_else(|| bad("is not an object"))?;
        let mut out = Vec::new();
        for (mode, paths) in obj {
            let bits = (mode.len() == 4)
                .then(|| u32::from_str_radix(mode, 8).ok())
                .flatten()
                .ok_or_else(|| bad(&format!("has a key {mode:?} that is not 4 octal digits")))?;
            let paths = paths
                .as_array()
                .ok_or_else(|| bad(&format!("maps {mode} to something other than a list")))?;
            for p in paths {
                let name: Name = serde_json::from_value(p.clone())
                    .map_err(|e| bad(&format!("lists a path that is not a name: {e}")))?;
                out.push((name.0, bits));
            }
        }
        Ok(out)
    }

    /// Serializes the manifest as pretty JSON with a trailing newline (deterministic).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parses and validates a manifest read from `path`.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::manifest(path, format!("not a valid shardpack manifest: {e}")))?;
        m.validate(path)?;
        Ok(m)
    }

    /// Checks the manifest's internal consistency.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |d: String| Err(Error::manifest(path, d));
        if self.format != FORMAT_NAME {
            return bad(format!(
                "\"format\" is {:?}, expected {FORMAT_NAME:?}",
                self.format
            ));
        }
        let (lo, hi) = SUPPORTED_FORMAT_VERSIONS;
        if !(lo..=hi).contains(&self.format_version) {
            return bad(format!(
                "format version {} is not supported by this reader (it reads versions \
                 {lo}..={hi}); upgrade shardpack",
                self.format_version,
            ));
        }
        let unknown = self.unknown_required_features();
        if !unknown.is_empty() {
            return Err(Error::UnsupportedFeatures {
                path: path.to_path_buf(),
                features: unknown,
            });
        }
        let mut next = 0u64;
        let mut records = 0u64;
        for (i, s) in self.shards.iter().enumerate() {
            if s.file != shard_file_name(i as u64) {
                return bad(format!(
                    "shard {i} is named {:?}, expected {:?}",
                    s.file,
                    shard_file_name(i as u64)
                ));
            }
            if s.first_sample != next {
                return bad(format!(
                    "shard {i} starts at sample {}, expected {next}",
                    s.first_sample
                ));
            }
            next = next
                .checked_add(s.samples)
                .ok_or_else(|| Error::manifest(path, "sample counts overflow"))?;
            records = records
                .checked_add(s.records)
                .ok_or_else(|| Error::manifest(path, "record counts overflow"))?;
        }
        if next != self.samples || records != self.records {
            return bad(format!(
                "the shards hold {next} samples and {records} records, the manifest says {} and {}",
                self.samples, self.records
            ));
        }
        if !matches!(self.labels.as_str(), "imagefolder" | "none") {
            return bad(format!("unknown labels mode {:?}", self.labels));
        }
        Ok(())
    }

    /// The required features this build does not know, in manifest order.
    pub fn unknown_required_features(&self) -> Vec<String> {
        self.features
            .iter()
            .flat_map(|f| &f.required)
            .filter(|n| !KNOWN_FEATURES.contains(&n.as_str()))
            .cloned()
            .collect()
    }

    /// The optional features this build does not know (and ignores), in manifest order.
    pub fn unknown_optional_features(&self) -> Vec<String> {
        self.features
            .iter()
            .flat_map(|f| &f.optional)
            .filter(|n| !KNOWN_FEATURES.contains(&n.as_str()))
            .cloned()
            .collect()
    }

    /// The class name of `label`, if known.
    pub fn class_name(&self, label: u32) -> Option<&Name> {
        self.classes.get(label as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_utf8_and_not() {
        for bytes in [b"jpg".to_vec(), vec![0xff, 0xfe, b'a'], vec![]] {
            let n = Name(bytes.clone());
            let j = serde_json::to_string(&n).unwrap();
            let back: Name = serde_json::from_str(&j).unwrap();
            assert_eq!(back.0, bytes, "{j}");
        }
        assert_eq!(
            serde_json::to_string(&Name(vec![0xff])).unwrap(),
            r#"{"hex":"ff"}"#
        );
        assert!(serde_json::from_str::<Name>(r#"{"hex":"f"}"#).is_err());
        assert!(serde_json::from_str::<Name>(r#"{"hex":"+f"}"#).is_err());
        assert!(serde_json::from_str::<Name>(r#"{"hex":"FF"}"#).is_err());
    }

    /// `options.file_modes` (manifest.md 2.5): each mode's paths, names in either encoding;
    /// any other shape is an error that names the option.
    #[test]
    fn file_modes_parse_and_refuse_other_shapes() {
        let with = |opts: &str| Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            writer: None,
            features: None,
            samples: 0,
            records: 0,
            shards: vec![],
            fields: vec![],
            labels: "none".into(),
            classes: vec![],
            options: serde_json::from_str(opts).unwrap(),
            skipped: vec![],
        };
        assert_eq!(with("{}").file_modes(), Ok(vec![]));
        assert_eq!(
            with(r#"{"file_modes": {"0700": ["a.sh"], "0755": ["bin/x", {"hex": "ff"}]}}"#)
                .file_modes(),
            Ok(vec![
                (b"a.sh".to_vec(), 0o700),
                (b"bin/x".to_vec(), 0o755),
                (vec![0xff], 0o755)
            ])
        );
        for bad in [
            r#"{"file_modes": []}"#,
            r#"{"file_modes": {"755": ["a"]}}"#,
            r#"{"file_modes": {"0789": ["a"]}}"#,
            r#"{"file_modes": {"0755": "a"}}"#,
            r#"{"file_modes": {"0755": [7]}}"#,
        ] {
            let e = with(bad).file_modes().unwrap_err();
            assert!(e.contains("options.file_modes"), "{bad}: {e}");
        }
    }

    /// format-spec/manifest.md 2.1.1: the exact serialization, escapes included.
    #[test]
    fn serialization_is_the_specified_one() {
        let m = Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            writer: Some(WriterId {
                name: "shardpack".into(),
                version: "0.1.0".into(),
                zstd: "1.5.7".into(),
                dict_trainer: "zdict 1.5.7".into(),
            }),
            features: Some(Features::default()),
            samples: 0,
            records: 0,
            shards: vec![],
            fields: vec![],
            labels: "imagefolder".into(),
            classes: vec![
                Name(b"a\x01\x08\t\n\x0c\r\"\\/\x7f\xc3\xa9".to_vec()),
                Name(vec![0xff]),
            ],
            options: serde_json::from_str(r#"{"b": null, "a": {"z": true, "y": 1}}"#).unwrap(),
            skipped: vec![],
        };
        let want = r#"{
  "format": "shardpack",
  "format_version": 2,
  "writer": {
    "name": "shardpack",
    "version": "0.1.0",
    "zstd": "1.5.7",
    "dict_trainer": "zdict 1.5.7"
  },
  "features": {
    "required": [],
    "optional": []
  },
  "samples": 0,
  "records": 0,
  "shards": [],
  "fields": [],
  "labels": "imagefolder",
  "classes": [
    "a\u0001\b\t\n\f\r\"\\/DEL-E-ACUTE",
    {
      "hex": "ff"
    }
  ],
  "options": {
    "a": {
      "y": 1,
      "z": true
    },
    "b": null
  },
  "skipped": []
}
"#;
        let got = String::from_utf8(m.to_json()).unwrap();
        // U+007F and non-ASCII are written unescaped, as their UTF-8 bytes.
        assert_eq!(got, want.replace("DEL-E-ACUTE", "\u{7f}\u{e9}"));
    }

    #[test]
    fn hash_is_16_hex_digits() {
        assert_eq!(
            serde_json::to_string(&Hash64(0xab)).unwrap(),
            "\"00000000000000ab\""
        );
        assert!(serde_json::from_str::<Hash64>("\"ab\"").is_err());
        assert!(serde_json::from_str::<Hash64>("\"+00000000000000a\"").is_err());
        assert!(serde_json::from_str::<Hash64>("\"00000000000000AB\"").is_err());
    }
}

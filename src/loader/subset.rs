//! A Loader over a chosen set of sample indices (for example the rows a query over the
//! Parquet index selected).

use std::sync::Arc;

use crate::hash::Xxh3;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A set of global sample indices for [`LoaderOptions::subset`](super::LoaderOptions::subset):
/// sorted, without duplicates, shared (cloning the options does not copy it).
///
/// The epoch serves each index of the set once (plus the rank padding), in the same chunked
/// order as the whole dataset restricted to the set: where the set is dense, a chunk is still
/// read with one large read (the samples not in the set are read over, never decoded); where
/// it is sparse, each run of nearby members is read on its own, so only what is needed is
/// read (members less than a sixteenth of a chunk's bytes apart share one read).
#[derive(Clone, PartialEq, Eq)]
pub struct Subset {
    ids: Arc<[u64]>,
    hash: u64,
}

impl std::fmt::Debug for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subset")
            .field("len", &self.ids.len())
            .field("id", &self.id())
            .finish()
    }
}

impl Subset {
    /// The set of `indices` (any order; duplicates count once).
    pub fn new(indices: impl IntoIterator<Item = u64>) -> Subset {
        let mut v: Vec<u64> = indices.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        let mut h = Xxh3::new();
        h.update(b"spksubset");
        for i in &v {
            h.update(&i.to_le_bytes());
        }
        Subset {
            hash: h.digest(),
            ids: v.into(),
        }
    }

    /// The indices, sorted.
    pub fn indices(&self) -> &[u64] {
        &self.ids
    }

    /// Number of indices.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// `true` when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The identity a [`LoaderState`](super::LoaderState) records: `"<len>:<xxh3 hex>"`.
    pub fn id(&self) -> String {
        format!("{}:{:016x}", self.ids.len(), self.hash)
    }

    /// Refuses an index past the dataset's end.
    pub(super) fn check(&self, samples: u64) -> Result<()> {
        match self.ids.last() {
            Some(&last) if last >= samples => Err(Error::Options(format!(
                "subset index {last} is out of range: the dataset has {samples} samples"
            ))),
            _ => Ok(()),
        }
    }
}

impl Serialize for Subset {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.ids.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Subset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Subset, D::Error> {
        Ok(Subset::new(Vec::<u64>::deserialize(d)?))
    }
}

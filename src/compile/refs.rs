//! Choosing zstd-ref bases at pack time (`format-spec/shard.md` 6.1): which records of a
//! compressed field are stored against an earlier, similar record of the same field in the
//! same shard (an identical file, or a variant such as `foo.opt-1.pyc` of `foo.pyc`, or pages
//! from one template).
//!
//! Each eligible record gets a [`Sketch`]: the [`SKETCH_K`] smallest hashes over all its
//! 32-byte windows (a bottom-k MinHash of its shingles, rolling gear hash), which estimates the
//! share of content two records have in common. The records that are not stored against
//! another become *bases*, listed per field in a [`BaseIndex`] under each of their
//! [`BANDS`] smallest hashes; a later record looks its own up there, and the most similar
//! candidate at or above [`MIN_SIMILARITY`] becomes its base. Everything depends on the
//! records' bytes and their order only (never on threads or timing), and the index restarts
//! at every shard (a base is in its record's shard), so the output is deterministic.
//!
//! A base is kept in memory (its stored bytes, decoded again when used) until the bases held
//! exceed [`BASE_MEMORY`], oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Hashes a sketch keeps.
pub(crate) const SKETCH_K: usize = 16;
/// How many of a base's smallest hashes index it.
const BANDS: usize = 4;
/// The least estimated similarity (shared share of 32-byte windows, 0 to 1) for a ref.
pub(crate) const MIN_SIMILARITY: f32 = 0.5;
/// Records smaller than this are not worth a ref (the 8-byte base index and a frame header).
pub(crate) const MIN_REF_LEN: usize = 64;
/// Records above this are neither refs nor bases (bounded memory and decode time).
pub(crate) const MAX_REF_LEN: usize = 1 << 20;
/// Stored bytes of bases kept at once, over all fields.
pub(crate) const BASE_MEMORY: u64 = 256 << 20;
/// Candidates compared per lookup, most recent first.
const MAX_CANDIDATES: usize = 16;

/// Gear table: 256 pseudo-random words (SplitMix64 from a fixed seed).
static GEAR: [u32; 256] = gear();

const fn gear() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut x: u64 = 0x5348_5244_5041_434b; // "SHRDPACK"
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        t[i] = (z >> 32) as u32;
        i += 1;
    }
    t
}

/// The [`SKETCH_K`] smallest distinct window hashes of a record, ascending (`u32::MAX` pads a
/// record with fewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sketch([u32; SKETCH_K]);

/// The sketch of `data` (at least 32 bytes for a meaningful one).
pub(crate) fn sketch(data: &[u8]) -> Sketch {
    let mut mins = [u32::MAX; SKETCH_K];
    let mut h: u32 = 0;
    for (i, &b) in data.iter().enumerate() {
        // After 32 steps the shifted-out bits make `h` depend on the last 32 bytes only.
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if i < 31 {
            continue;
        }
        let v = h.wrapping_mul(0x9e37_79b1).rotate_left(15) ^ h;
        if v < mins[SKETCH_K - 1] && !mins.contains(&v) {
            let at = mins.partition_point(|&m| m < v);
            mins.copy_within(at..SKETCH_K - 1, at + 1);
            mins[at] = v;
        }
    }
    Sketch(mins)
}

/// The estimated share of windows `a` and `b` have in common: of the [`SKETCH_K`] smallest
/// hashes of both together, the share that is in each.
pub(crate) fn similarity(a: &Sketch, b: &Sketch) -> f32 {
    let (a, b) = (&a.0, &b.0);
    let (mut i, mut j, mut taken, mut both) = (0, 0, 0, 0);
    while taken < SKETCH_K && (i < SKETCH_K || j < SKETCH_K) {
        let x = a.get(i).copied().unwrap_or(u32::MAX);
        let y = b.get(j).copied().unwrap_or(u32::MAX);
        if x == u32::MAX && y == u32::MAX {
            break;
        }
        if x == y {
            both += 1;
            i += 1;
            j += 1;
        } else if x < y {
            i += 1;
        } else {
            j += 1;
        }
        taken += 1;
    }
    if taken == 0 {
        0.0
    } else {
        both as f32 / taken as f32
    }
}

/// Where a base's bytes are: a member of the window being encoded (its data in memory), or
/// kept from an earlier window as stored (with the codec to decode them).
#[derive(Debug, Clone)]
pub(crate) enum BaseData {
    /// Position of the member in the current window.
    Window(usize),
    /// The stored bytes and their codec.
    Kept(Arc<Vec<u8>>, crate::format::Codec),
    /// Let go to stay within [`BASE_MEMORY`].
    Dropped,
}

#[derive(Debug)]
pub(crate) struct Base {
    sketch: Sketch,
    pub(crate) data: BaseData,
    pub(crate) raw_len: u64,
    /// The writer's number of the base's sample, once committed.
    pub(crate) sample: Option<u64>,
}

/// The bases of the open shard, per field. Base ids count up over the whole pack; the bases
/// of a finished shard are forgotten by [`BaseIndex::retire`] once nothing refers to them.
#[derive(Debug)]
pub(crate) struct BaseIndex {
    /// Bases from id `first` on.
    bases: VecDeque<Base>,
    first: u64,
    /// Per field: hash to the ids of the bases listed under it, in insertion order.
    bands: Vec<HashMap<u32, Vec<u64>>>,
    /// Bases holding kept bytes, oldest first, and the bytes they hold.
    kept: VecDeque<u64>,
    kept_bytes: u64,
    /// Bases below this id belong to a finished shard.
    retire_below: u64,
}

impl BaseIndex {
    pub(crate) fn new(fields: usize) -> BaseIndex {
        BaseIndex {
            bases: VecDeque::new(),
            first: 0,
            bands: vec![HashMap::new(); fields],
            kept: VecDeque::new(),
            kept_bytes: 0,
            retire_below: 0,
        }
    }

    /// A new shard starts: no earlier base is found from now on. Their entries stay (records
    /// decided before may still be encoded against them) until [`BaseIndex::retire`].
    pub(crate) fn new_shard(&mut self) {
        for b in &mut self.bands {
            b.clear();
        }
        self.retire_below = self.first + self.bases.len() as u64;
    }

    /// Forgets the bases of finished shards (call when no decided record refers to them).
    pub(crate) fn retire(&mut self) {
        while self.first < self.retire_below {
            if let Some(b) = self.bases.pop_front() {
                if let BaseData::Kept(s, _) = &b.data {
                    self.kept_bytes -= s.len() as u64;
                }
            }
            self.first += 1;
        }
        let first = self.first;
        self.kept.retain(|&id| id >= first);
    }

    pub(crate) fn base(&self, id: u64) -> &Base {
        &self.bases[(id - self.first) as usize]
    }

    fn base_mut(&mut self, id: u64) -> &mut Base {
        &mut self.bases[(id - self.first) as usize]
    }

    /// The most similar base of `field` for a record with `sketch`, if one reaches
    /// [`MIN_SIMILARITY`] and its bytes are still held.
    pub(crate) fn find(&self, field: u32, sketch: &Sketch) -> Option<u64> {
        let bands = &self.bands[field as usize];
        let mut best: Option<(f32, u64)> = None;
        let mut seen = 0;
        for h in sketch.0.iter().take(BANDS).filter(|&&h| h != u32::MAX) {
            let Some(ids) = bands.get(h) else { continue };
            for &id in ids.iter().rev().take(MAX_CANDIDATES) {
                let b = self.base(id);
                if matches!(b.data, BaseData::Dropped) {
                    continue;
                }
                seen += 1;
                let s = similarity(sketch, &b.sketch);
                // Ties go to the later base (larger id): deterministic either way.
                let better = best.is_none_or(|(bs, bid)| s > bs || (s == bs && id > bid));
                if s >= MIN_SIMILARITY && better {
                    best = Some((s, id));
                }
            }
            if seen >= MAX_CANDIDATES {
                break;
            }
        }
        best.map(|(_, id)| id)
    }

    /// Adds a base of `field` whose bytes are member `at` of the current window.
    pub(crate) fn add(&mut self, field: u32, sketch: Sketch, at: usize, raw_len: u64) -> u64 {
        let id = self.first + self.bases.len() as u64;
        self.bases.push_back(Base {
            sketch,
            data: BaseData::Window(at),
            raw_len,
            sample: None,
        });
        let bands = &mut self.bands[field as usize];
        for &h in sketch.0.iter().take(BANDS).filter(|&&h| h != u32::MAX) {
            bands.entry(h).or_default().push(id);
        }
        id
    }

    /// Base `id` has been committed as the writer's sample `sample` with these stored bytes:
    /// kept for later windows, letting the oldest kept bases go beyond [`BASE_MEMORY`].
    pub(crate) fn committed(
        &mut self,
        id: u64,
        sample: u64,
        stored: Arc<Vec<u8>>,
        codec: crate::format::Codec,
    ) {
        let n = stored.len() as u64;
        let b = self.base_mut(id);
        b.sample = Some(sample);
        b.data = BaseData::Kept(stored, codec);
        self.kept.push_back(id);
        self.kept_bytes += n;
        while self.kept_bytes > BASE_MEMORY {
            let Some(old) = self.kept.pop_front() else {
                break;
            };
            let ob = self.base_mut(old);
            let freed = match &ob.data {
                BaseData::Kept(s, _) => s.len() as u64,
                _ => 0,
            };
            ob.data = BaseData::Dropped;
            self.kept_bytes -= freed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seed: u64, n: usize) -> Vec<u8> {
        let mut r = crate::rng::SplitMix64::new(seed);
        (0..n).map(|_| b'a' + (r.next_u64() % 26) as u8).collect()
    }

    #[test]
    fn identical_data_is_fully_similar_and_unrelated_data_is_not() {
        let a = text(1, 5000);
        let b = text(2, 5000);
        assert_eq!(similarity(&sketch(&a), &sketch(&a)), 1.0);
        assert!(similarity(&sketch(&a), &sketch(&b)) < 0.2);
    }

    #[test]
    fn a_variant_with_a_cut_is_similar() {
        let a = text(3, 20000);
        let mut b = a.clone();
        b.drain(5000..6000); // a docstring removed
        assert!(similarity(&sketch(&a), &sketch(&b)) >= MIN_SIMILARITY);
    }

    #[test]
    fn the_index_finds_the_similar_base_of_the_same_field_only() {
        let a = text(4, 8000);
        let mut idx = BaseIndex::new(2);
        let id = idx.add(0, sketch(&a), 0, a.len() as u64);
        assert_eq!(idx.find(0, &sketch(&a)), Some(id));
        assert_eq!(idx.find(1, &sketch(&a)), None);
        assert_eq!(idx.find(0, &sketch(&text(5, 8000))), None);
        idx.new_shard();
        assert_eq!(idx.find(0, &sketch(&a)), None);
        assert_eq!(idx.base(id).raw_len, a.len() as u64); // still there until retired
        idx.retire();
        let b = idx.add(0, sketch(&a), 1, a.len() as u64);
        assert_eq!(idx.find(0, &sketch(&a)), Some(b));
    }
}

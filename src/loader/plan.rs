//! The plan: an epoch's order as a pure function of the dataset's manifest and the options
//! (and, after a change of world size, of the state's history of segments). No I/O: only the
//! manifest's per-shard sample counts and sizes are used, never the shards' indexes.

use crate::hash::xxh3_64;

use super::state::{LoaderState, Segment};
use super::{LoaderOptions, Shuffle};
use crate::error::{Error, Result};
use crate::reader::Dataset;
use crate::rng::SplitMix64;

/// Consecutive samples of one shard read with one read: a chunk, or the part of one that falls
/// in a rank's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Piece {
    pub(super) shard: u32,
    /// First local sample.
    pub(super) first: u64,
    pub(super) count: u64,
}

/// A piece and which of its samples belong to the sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    piece: Piece,
    /// `mask[at]`: sample `piece.first + at` is in the sequence; `None`: all are. A mask's
    /// first and last entries are `true`.
    mask: Option<Vec<bool>>,
    /// Samples in the sequence.
    n: u64,
}

impl Item {
    fn whole(shard: u32, first: u64, count: u64) -> Item {
        Item {
            piece: Piece {
                shard,
                first,
                count,
            },
            mask: None,
            n: count,
        }
    }

    /// The samples `first + at` with `mask[at]`, trimmed to the first and last of them;
    /// `None` when there is none.
    fn masked(shard: u32, first: u64, mask: &[bool]) -> Option<Item> {
        let lo = mask.iter().position(|&b| b)?;
        let hi = mask.iter().rposition(|&b| b)? + 1;
        let m = &mask[lo..hi];
        let n = m.iter().filter(|&&b| b).count() as u64;
        let count = (hi - lo) as u64;
        Some(Item {
            piece: Piece {
                shard,
                first: first + lo as u64,
                count,
            },
            mask: (n != count).then(|| m.to_vec()),
            n,
        })
    }

    fn has(&self, at: u64) -> bool {
        self.mask.as_ref().is_none_or(|m| m[at as usize])
    }

    /// The item's sequence samples `from .. from + len` (counted in the sequence).
    fn cut(&self, from: u64, len: u64) -> Item {
        debug_assert!(len > 0 && from + len <= self.n);
        let Some(m) = &self.mask else {
            return Item::whole(self.piece.shard, self.piece.first + from, len);
        };
        let (mut k, mut lo, mut hi) = (0u64, 0usize, m.len());
        for (i, &b) in m.iter().enumerate() {
            if b {
                if k == from {
                    lo = i;
                }
                if k == from + len - 1 {
                    hi = i + 1;
                    break;
                }
                k += 1;
            }
        }
        Item::masked(self.piece.shard, self.piece.first + lo as u64, &m[lo..hi])
            .expect("a cut of a non-empty range is not empty")
    }
}

/// A sequence of items with the position of each one's first sample.
#[derive(Debug)]
struct Seq {
    items: Vec<Item>,
    starts: Vec<u64>,
    total: u64,
}

impl Seq {
    fn new(items: Vec<Item>) -> Seq {
        let mut starts = Vec::with_capacity(items.len());
        let mut total = 0u64;
        for it in &items {
            starts.push(total);
            total += it.n;
        }
        Seq {
            items,
            starts,
            total,
        }
    }

    /// The items covering positions `begin .. begin + len`, positions taken modulo the total
    /// (the padding wraps to the start), cut at both ends.
    fn slice(&self, begin: u64, len: u64) -> Vec<Item> {
        let mut out = Vec::new();
        if self.total == 0 {
            return out;
        }
        let mut want = len;
        let mut pos = begin % self.total;
        while want > 0 {
            let i = self.starts.partition_point(|&s| s <= pos) - 1;
            let it = &self.items[i];
            let off = pos - self.starts[i];
            let take = (it.n - off).min(want);
            out.push(it.cut(off, take));
            want -= take;
            pos = (pos + take) % self.total;
        }
        out
    }
}

#[derive(Debug)]
pub(super) struct Window {
    pub(super) pieces: Vec<Piece>,
    /// Per piece, which samples are handed out (`None`: all of them).
    pub(super) masks: Vec<Option<Vec<bool>>>,
    pub(super) samples: u64,
    order: WindowOrder,
}

/// How a window's samples are ordered in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowOrder {
    /// Stored order ([`Shuffle::None`], and [`Shuffle::Full`]'s one-sample pieces, already
    /// in their shuffled order).
    Stored,
    /// A uniform random permutation of the window's samples ([`Shuffle::Chunked`]).
    Uniform,
    /// Each piece's samples in a random order, spread evenly over the window
    /// ([`Shuffle::Interleaved`]).
    Spread,
}

impl Window {
    /// Whether sample `at` of piece `pi` belongs to the window.
    pub(super) fn has(&self, pi: usize, at: usize) -> bool {
        self.masks[pi].as_ref().is_none_or(|m| m[at])
    }
}

/// One rank's part of an epoch (or of the segment of it that runs at the current world size).
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) windows: Vec<Window>,
    /// Position of each window's first sample in the rank's sequence.
    pub(super) starts: Vec<u64>,
    pub(super) len: u64,
    seed: u64,
    epoch: u64,
    rank: u32,
    world_size: u32,
    /// Index of the segment (number of earlier world sizes in the epoch).
    segment: u64,
}

fn mix(parts: &[u64]) -> u64 {
    let mut b = Vec::with_capacity(8 * parts.len() + 8);
    b.extend_from_slice(b"spkorder");
    for p in parts {
        b.extend_from_slice(&p.to_le_bytes());
    }
    xxh3_64(&b)
}

/// Samples per rank in a sequence of `total`: `ceil(total / world)` (padded) or, under
/// `drop_last`, `floor(total / world)`.
fn per_rank(total: u64, world: u32, drop_last: bool) -> u64 {
    let w = world as u64;
    match (total, drop_last) {
        (0, _) => 0,
        (_, true) => total / w,
        (_, false) => total.div_ceil(w),
    }
}

/// A shard's stored bytes per sample on average, from the manifest (the shard file's size,
/// index included, over its sample count).
fn avg_bytes(ds: &Dataset, s: usize) -> u64 {
    let m = &ds.manifest().shards[s];
    (m.bytes / m.samples.max(1)).max(1)
}

/// The epoch's global sequence: chunks of consecutive samples (cut from the manifest's
/// per-shard counts and sizes alone), shuffled by `(seed, epoch)`, restricted to the subset.
/// It depends on the dataset, the subset, `shuffle`, `chunk_bytes`, `seed` and `epoch`, never
/// on the world size or the rank.
fn global_sequence(ds: &Dataset, o: &LoaderOptions) -> Result<Vec<Item>> {
    let n_total = ds.len();
    if let Some(s) = &o.subset {
        s.check(n_total)?;
    }
    if n_total == 0 {
        return Ok(Vec::new());
    }
    let shards = &ds.manifest().shards;
    if o.shuffle == Shuffle::Full {
        let mut perm: Vec<u64> = match &o.subset {
            Some(s) => s.indices().to_vec(),
            None => (0..n_total).collect(),
        };
        SplitMix64::new(mix(&[o.seed, o.epoch])).shuffle(&mut perm);
        return perm
            .into_iter()
            .map(|g| {
                let (s, local) = ds.locate(g)?;
                Ok(Item::whole(s as u32, local, 1))
            })
            .collect();
    }
    let mut chunks = Vec::new();
    for (s, meta) in shards.iter().enumerate() {
        let per_chunk = (o.chunk_bytes / avg_bytes(ds, s)).max(1);
        let mut first = 0;
        while first < meta.samples {
            let count = per_chunk.min(meta.samples - first);
            chunks.push(Item::whole(s as u32, first, count));
            first += count;
        }
    }
    if matches!(o.shuffle, Shuffle::Chunked | Shuffle::Interleaved) {
        SplitMix64::new(mix(&[o.seed, o.epoch])).shuffle(&mut chunks);
    }
    let Some(subset) = &o.subset else {
        return Ok(chunks);
    };
    // Each chunk keeps its members of the subset: runs of members closer than a sixteenth of
    // a chunk's bytes share one read (the samples between them are read over, not decoded);
    // farther ones get reads of their own.
    let ids = subset.indices();
    let mut out = Vec::new();
    for c in chunks {
        let p = c.piece;
        let base = shards[p.shard as usize].first_sample;
        let (g0, g1) = (base + p.first, base + p.first + p.count);
        let members = &ids[ids.partition_point(|&i| i < g0)..ids.partition_point(|&i| i < g1)];
        let gap = ((o.chunk_bytes / 16) / avg_bytes(ds, p.shard as usize)).max(1);
        let mut run = 0;
        while run < members.len() {
            let mut end = run + 1;
            while end < members.len() && members[end] - members[end - 1] <= gap {
                end += 1;
            }
            let (lo, hi) = (members[run], members[end - 1] + 1);
            let mut mask = vec![false; (hi - lo) as usize];
            for &m in &members[run..end] {
                mask[(m - lo) as usize] = true;
            }
            out.extend(Item::masked(p.shard, lo - base, &mask));
            run = end;
        }
    }
    Ok(out)
}

/// Each shard's first global sample id, by manifest position (from the manifest alone).
fn first_samples(ds: &Dataset) -> Vec<u64> {
    ds.manifest()
        .shards
        .iter()
        .map(|s| s.first_sample)
        .collect()
}

/// The sequence left after a segment of the epoch ran at `seg.world_size` with every rank
/// taking `seg.samples_consumed` samples: `seq` in its order, without every sample any rank
/// handed out (padding repeats included).
fn after_segment(ds: &Dataset, o: &LoaderOptions, seq: &Seq, k: u64, seg: Segment) -> Result<Seq> {
    let n = per_rank(seq.total, seg.world_size, o.drop_last);
    let c = seg.samples_consumed;
    if c > n {
        return Err(Error::State(format!(
            "segment {k} of its history says each of {} ranks took samples_consumed={c} \
             samples, but that part of the epoch had {n} per rank; the state does not belong \
             to this dataset and options",
            seg.world_size
        )));
    }
    let firsts = first_samples(ds);
    // Global sample ids handed out, as intervals.
    let mut taken: Vec<(u64, u64)> = Vec::new();
    for r in 0..seg.world_size {
        let plan = Plan::of_rank(o, seq, k, seg.world_size, r);
        for (w, win) in plan.windows.iter().enumerate() {
            let start = plan.starts[w];
            if start >= c {
                break;
            }
            if start + win.samples <= c {
                for (pi, p) in win.pieces.iter().enumerate() {
                    let g = firsts[p.shard as usize] + p.first;
                    match &win.masks[pi] {
                        None => taken.push((g, g + p.count)),
                        Some(m) => taken.extend(
                            (0..p.count)
                                .filter(|&at| m[at as usize])
                                .map(|at| (g + at, g + at + 1)),
                        ),
                    }
                }
            } else {
                let order = plan.window_order(w);
                for &(pi, local) in &order[..(c - start) as usize] {
                    let g = firsts[win.pieces[pi as usize].shard as usize] + local;
                    taken.push((g, g + 1));
                }
            }
        }
    }
    taken.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(taken.len());
    for (a, b) in taken {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut items = Vec::with_capacity(seq.items.len());
    for it in &seq.items {
        let p = it.piece;
        let g0 = firsts[p.shard as usize] + p.first;
        let g1 = g0 + p.count;
        let i = merged.partition_point(|iv| iv.1 <= g0);
        if i == merged.len() || merged[i].0 >= g1 {
            items.push(it.clone());
            continue;
        }
        if merged[i].0 <= g0 && merged[i].1 >= g1 {
            continue;
        }
        let mut mask: Vec<bool> = (0..p.count).map(|at| it.has(at)).collect();
        for &(a, b) in merged[i..].iter().take_while(|iv| iv.0 < g1) {
            let (a, b) = (a.max(g0) - g0, b.min(g1) - g0);
            mask[a as usize..b as usize].fill(false);
        }
        items.extend(Item::masked(p.shard, p.first, &mask));
    }
    Ok(Seq::new(items))
}

/// Orders `order` (the window's samples, grouped by piece in stored order) for
/// [`Shuffle::Interleaved`]: each piece's samples are shuffled, and its `m` samples take the
/// positions `(j + u) / m` (`j` in `0..m`, one `u` per piece, uniform in `[0, 1)`) of the unit
/// interval, so that every piece is spread evenly over the whole window; the window's order is
/// by position. Any run of `L` consecutive samples then holds `L * m / window_samples`
/// samples of each piece, rounded up or down: a batch draws from as many of the window's
/// chunks as it has samples (all of them when it has at least one per chunk), where a
/// uniform shuffle of the window hits only about `K (1 - e^(-B/K))` of `K` chunks.
fn spread(order: &mut [(u32, u64)], rng: &mut SplitMix64) {
    let mut keyed: Vec<(f64, (u32, u64))> = Vec::with_capacity(order.len());
    let mut start = 0;
    while start < order.len() {
        let pi = order[start].0;
        let end = start + order[start..].iter().take_while(|s| s.0 == pi).count();
        let group = &mut order[start..end];
        rng.shuffle(group);
        let m = group.len() as f64;
        // 53 random bits: a uniform f64 in [0, 1).
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        for (j, &s) in group.iter().enumerate() {
            keyed.push(((j as f64 + u) / m, s));
        }
        start = end;
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (slot, (_, s)) in order.iter_mut().zip(keyed) {
        *slot = s;
    }
}

/// Samples mixed in memory per window under [`Shuffle::Full`] (one piece each).
const FULL_WINDOW: usize = 256;

impl Plan {
    /// This rank's plan for the segment after `done` (the state's finished segments).
    pub(super) fn new(ds: &Dataset, o: &LoaderOptions, done: &[Segment]) -> Result<Plan> {
        o.validate()?;
        let mut seq = Seq::new(global_sequence(ds, o)?);
        if let Some(c) = o.epoch_samples {
            if c > seq.total {
                return Err(Error::Options(format!(
                    "epoch_samples={c} is more than the {} samples of {}{}",
                    seq.total,
                    ds.dir().display(),
                    if o.subset.is_some() { "'s subset" } else { "" }
                )));
            }
            if c < seq.total {
                seq = Seq::new(seq.slice(0, c));
            }
        }
        for (k, seg) in done.iter().enumerate() {
            seq = after_segment(ds, o, &seq, k as u64, *seg)?;
        }
        Ok(Plan::of_rank(
            o,
            &seq,
            done.len() as u64,
            o.world_size,
            o.rank,
        ))
    }

    /// Rank `rank` of `world` takes positions `rank*n .. (rank+1)*n` of `seq` (wrapping past
    /// its end: the padding), grouped into windows.
    fn of_rank(o: &LoaderOptions, seq: &Seq, segment: u64, world: u32, rank: u32) -> Plan {
        let n = per_rank(seq.total, world, o.drop_last);
        let items = if n == 0 {
            Vec::new()
        } else {
            seq.slice(rank as u64 * n, n)
        };
        let size = match o.shuffle {
            Shuffle::Full => FULL_WINDOW,
            _ => o.window_chunks,
        };
        let mut windows = Vec::with_capacity(items.len().div_ceil(size.max(1)));
        let mut starts = Vec::with_capacity(windows.capacity());
        let mut at = 0u64;
        for group in items.chunks(size.max(1)) {
            let samples = group.iter().map(|i| i.n).sum();
            starts.push(at);
            at += samples;
            windows.push(Window {
                pieces: group.iter().map(|i| i.piece).collect(),
                masks: group.iter().map(|i| i.mask.clone()).collect(),
                samples,
                order: match o.shuffle {
                    Shuffle::Chunked => WindowOrder::Uniform,
                    Shuffle::Interleaved => WindowOrder::Spread,
                    Shuffle::None | Shuffle::Full => WindowOrder::Stored,
                },
            });
        }
        Plan {
            windows,
            starts,
            len: n,
            seed: o.seed,
            epoch: o.epoch,
            rank,
            world_size: world,
            segment,
        }
    }

    /// The samples of window `w` in output order, as (piece index, local sample).
    pub(super) fn window_order(&self, w: usize) -> Vec<(u32, u64)> {
        let win = &self.windows[w];
        let mut order: Vec<(u32, u64)> = Vec::with_capacity(win.samples as usize);
        for (pi, p) in win.pieces.iter().enumerate() {
            for at in 0..p.count {
                if win.has(pi, at as usize) {
                    order.push((pi as u32, p.first + at));
                }
            }
        }
        if win.order == WindowOrder::Stored {
            return order;
        }
        let seed = match self.segment {
            // The first segment keeps the order of shardpack 0.2 for the same chunks.
            0 => mix(&[self.seed, self.epoch, self.rank as u64, w as u64]),
            k => mix(&[
                self.seed,
                self.epoch,
                self.rank as u64,
                w as u64,
                k,
                self.world_size as u64,
            ]),
        };
        let mut rng = SplitMix64::new(seed);
        if win.order == WindowOrder::Uniform {
            rng.shuffle(&mut order);
            return order;
        }
        spread(&mut order, &mut rng);
        order
    }
    /// Global sample ids from position `from` to the end, in order.
    fn order_from(&self, ds: &Dataset, from: u64) -> Vec<u64> {
        let firsts = first_samples(ds);
        let mut out = Vec::with_capacity(self.len.saturating_sub(from) as usize);
        for w in 0..self.windows.len() {
            let (start, end) = (self.starts[w], self.starts[w] + self.windows[w].samples);
            if end <= from {
                continue;
            }
            let order = self.window_order(w);
            for &(pi, local) in &order[from.saturating_sub(start) as usize..] {
                let shard = self.windows[w].pieces[pi as usize].shard as usize;
                out.push(firsts[shard] + local);
            }
        }
        out
    }
}

/// The global sample ids this rank gets in this epoch, in order, computed without any I/O
/// (from the manifest alone). The loader hands out exactly this sequence.
pub fn epoch_order(ds: &Dataset, opts: &LoaderOptions) -> Result<Vec<u64>> {
    Ok(Plan::new(ds, opts, &[])?.order_from(ds, 0))
}

/// The global sample ids a loader resumed from `state` with `opts` (perhaps at another rank
/// and world size) hands out, in order, computed without any I/O: exactly what
/// [`Loader::resume`](super::Loader::resume) serves. Refuses a state that does not fit, as
/// `resume` does.
pub fn epoch_order_from(
    ds: &Dataset,
    opts: &LoaderOptions,
    state: &LoaderState,
) -> Result<Vec<u64>> {
    state.check(ds, opts)?;
    let (done, consumed) = state.rebased(opts);
    let plan = Plan::new(ds, opts, &done)?;
    if consumed > plan.len {
        return Err(past_end(consumed, plan.len));
    }
    Ok(plan.order_from(ds, consumed))
}

pub(super) fn past_end(consumed: u64, len: u64) -> Error {
    Error::State(format!(
        "samples_consumed={consumed}, but this rank's part of the epoch has {len} samples"
    ))
}

/// Checks `state` against `ds` and `opts` as [`Loader::resume`](super::Loader::resume) does,
/// and returns it re-expressed for `opts`'s rank and world size (what the resumed loader's
/// [`state`](super::Loader::state) says before its first sample) together with the number of
/// samples this rank gets in the current segment of the epoch (its
/// [`len`](super::Loader::len)). No I/O; for bindings that keep the position themselves.
pub fn resume_point(
    ds: &Dataset,
    opts: &LoaderOptions,
    state: &LoaderState,
) -> Result<(LoaderState, u64)> {
    state.check(ds, opts)?;
    let (done, consumed) = state.rebased(opts);
    let plan = Plan::new(ds, opts, &done)?;
    if consumed > plan.len {
        return Err(past_end(consumed, plan.len));
    }
    Ok((
        LoaderState::at(state.dataset.clone(), opts, done, consumed),
        plan.len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::Subset;
    use crate::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};

    fn dataset(dir: &std::path::Path) -> Dataset {
        let opts = WriterOptions {
            shard_size: 1 << 20,
            ..WriterOptions::default()
        };
        let mut w = DatasetWriter::create(dir, vec![FieldSpec::raw("x")], opts).unwrap();
        for i in 0..4000u32 {
            w.append(format!("{i:05}").as_bytes(), None, &[(0, &[7u8; 100])])
                .unwrap();
        }
        w.finish(DatasetInfo::default()).unwrap();
        Dataset::open(dir).unwrap()
    }

    fn opts(subset: Option<Subset>) -> LoaderOptions {
        LoaderOptions {
            chunk_bytes: 16 << 10,
            subset,
            ..LoaderOptions::default()
        }
    }

    #[test]
    fn dense_subsets_keep_whole_chunks_and_sparse_ones_read_only_their_runs() {
        let dir = tempfile::tempdir().unwrap();
        let ds = dataset(dir.path());
        let whole = global_sequence(&ds, &opts(None)).unwrap();
        assert!(whole.iter().all(|i| i.mask.is_none()));
        let per_chunk = whole.iter().map(|i| i.piece.count).max().unwrap();
        assert!(per_chunk > 50, "chunks of many samples: {per_chunk}");
        // Every sample but a few: the same reads, holes masked.
        let dense = Subset::new((0..4000).filter(|i| i % 97 != 0));
        let d = global_sequence(&ds, &opts(Some(dense))).unwrap();
        assert_eq!(d.len(), whole.len());
        assert_eq!(d.iter().map(|i| i.n).sum::<u64>(), 4000 - 42);
        // One sample in 500: one-sample reads, nothing else read.
        let sparse = Subset::new((0..4000).step_by(500));
        let s = global_sequence(&ds, &opts(Some(sparse))).unwrap();
        assert_eq!(s.len(), 8);
        assert!(s.iter().all(|i| i.piece.count == 1 && i.n == 1), "{s:?}");
        // Members a few samples apart share one read.
        let close = Subset::new([10, 12, 15]);
        let c = global_sequence(&ds, &opts(Some(close))).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].piece.first, c[0].piece.count, c[0].n), (10, 6, 3));
    }
}

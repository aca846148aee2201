//! Mixing several datasets in one epoch: weights or fixed counts, deterministic,
//! rank-partitioned and resumable (also at another world size) like one dataset.
//!
//! Each epoch takes a fixed number of samples from each source dataset (its **count**, from
//! the [`Weight`]s; see [`mix_counts`]): the first `count` samples of that dataset's own
//! epoch sequence ([`LoaderOptions::epoch_samples`]), so a source whose count is below its size
//! serves another part of itself each epoch, still in whole chunks. Each source is read by its
//! own [`Loader`] (seeded with [`source_seed`]`(seed, i)`, rank-partitioned and padded or cut by
//! `drop_last` on its own: every rank gets `ceil(count / world_size)` samples of it, or
//! `floor` under `drop_last`), and the sources are **interleaved** by a fixed schedule that
//! depends only on how many samples each rank takes from each source: the next sample comes
//! from the source `i` with the smallest `(taken_i + 1/2) / len_i` (ties: the lower `i`). Any
//! run of consecutive samples (a batch) therefore holds each source in its proportion,
//! rounded up or down, on every rank, and the schedule is the same on every rank.
//!
//! The state ([`MixedState`]) is one [`LoaderState`] per source plus the weights and counts;
//! at a global step it is the same on every rank but for the ranks recorded. Resuming
//! refuses another set of sources (count, fingerprint, weight, count of samples) naming the
//! source and field; each source then resumes as a single dataset does (at another world size
//! too: the rest of each source's part of the epoch is split again, and the schedule goes on
//! over what is left).

use std::sync::Arc;

use crate::hash::xxh3_64;
use serde::{Deserialize, Serialize};

use super::{
    epoch_order_from, resume_point, ErrorPolicy, LoadedSample, Loader, LoaderOptions, LoaderState,
    SkippedSample,
};
use crate::error::{Error, Result};
use crate::reader::Dataset;

/// How much of an epoch one source dataset gives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weight {
    /// A share of the epoch's samples, relative to the other sources' fractions (0.7 and 0.3,
    /// or 7 and 3): they share what the fixed counts leave of the epoch.
    Fraction(f64),
    /// Exactly this many samples each epoch (over all ranks, before padding).
    Samples(u64),
}

/// The version of [`MixedState`] this shardpack writes and reads.
pub const MIXED_STATE_VERSION: u32 = 1;

/// The seed of source `i`'s loader in a mix seeded with `seed` (so that the same dataset given
/// twice does not repeat one order).
pub fn source_seed(seed: u64, i: usize) -> u64 {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(b"spkmixed");
    b.extend_from_slice(&seed.to_le_bytes());
    b.extend_from_slice(&(i as u64).to_le_bytes());
    xxh3_64(&b)
}

/// Samples per epoch of each source, for sources of `sizes` samples with `weights`.
///
/// [`Weight::Samples`] counts are taken as they are. The [`Weight::Fraction`] sources share
/// the rest of an epoch of `epoch_samples` samples (default: the longest epoch in which no
/// fraction source repeats a sample, `min(size_i / share_i)`, rounded down) in proportion to
/// their fractions, by largest remainder: each count is its exact share rounded down or up,
/// and they sum to the rest exactly. A count above its source's size is an error (a sample is
/// never repeated within an epoch, except by the rank padding).
pub fn mix_counts(
    sizes: &[u64],
    weights: &[Weight],
    epoch_samples: Option<u64>,
) -> Result<Vec<u64>> {
    let bad = |s: String| Err(Error::Options(s));
    if sizes.is_empty() || sizes.len() != weights.len() {
        return bad("a mix needs at least one source, each with a weight".into());
    }
    let mut fixed = 0u64;
    let mut frac_sum = 0f64;
    for (i, w) in weights.iter().enumerate() {
        match *w {
            Weight::Samples(n) => {
                if n > sizes[i] {
                    return bad(format!(
                        "source {i}: Samples({n}) is more than its {} samples",
                        sizes[i]
                    ));
                }
                fixed = fixed.saturating_add(n);
            }
            Weight::Fraction(f) => {
                if !(f.is_finite() && f > 0.0) {
                    return bad(format!(
                        "source {i}: a fraction must be a positive number, not {f}"
                    ));
                }
                frac_sum += f;
            }
        }
    }
    let share = |w: &Weight| match *w {
        Weight::Fraction(f) => f / frac_sum,
        Weight::Samples(_) => 0.0,
    };
    if frac_sum == 0.0 {
        if let Some(e) = epoch_samples.filter(|&e| e != fixed) {
            return bad(format!(
                "epoch_samples={e}, but the sources' Samples counts add up to {fixed}"
            ));
        }
        return Ok(weights
            .iter()
            .map(|w| match *w {
                Weight::Samples(n) => n,
                Weight::Fraction(_) => 0,
            })
            .collect());
    }
    let mut rest = match epoch_samples {
        Some(e) if e < fixed => {
            return bad(format!(
                "epoch_samples={e} is less than the sources' Samples counts ({fixed})"
            ))
        }
        Some(e) => e - fixed,
        None => weights
            .iter()
            .zip(sizes)
            .filter(|(w, _)| matches!(w, Weight::Fraction(_)))
            .map(|(w, &n)| (n as f64 / share(w)).floor() as u64)
            .min()
            .unwrap_or(0),
    };
    loop {
        let counts = apportion(rest, weights, &share);
        let over = counts.iter().zip(sizes).position(|(c, s)| c > s);
        match over {
            None => return Ok(counts),
            // Rounding of the default epoch: one sample less until every count fits.
            Some(_) if epoch_samples.is_none() && rest > 0 => rest -= 1,
            Some(i) => {
                return bad(format!(
                    "source {i}: its share of the epoch is {} samples, more than its {} \
                     samples; lower epoch_samples or its weight",
                    counts[i], sizes[i]
                ))
            }
        }
    }
}

/// Largest-remainder apportionment of `rest` over the fraction sources (fixed counts kept).
fn apportion(rest: u64, weights: &[Weight], share: &dyn Fn(&Weight) -> f64) -> Vec<u64> {
    let mut counts = Vec::with_capacity(weights.len());
    let mut rema: Vec<(f64, usize)> = Vec::new();
    let mut given = 0u64;
    for (i, w) in weights.iter().enumerate() {
        match *w {
            Weight::Samples(n) => counts.push(n),
            Weight::Fraction(_) => {
                let q = rest as f64 * share(w);
                let c = (q.floor() as u64).min(rest);
                given += c;
                counts.push(c);
                rema.push((q - c as f64, i));
            }
        }
    }
    rema.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut left = rest.saturating_sub(given);
    for &(_, i) in rema.iter().cycle().take(rema.len() * 2) {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// One source of a [`MixedState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixedSourceState {
    /// Its weight.
    pub weight: Weight,
    /// Its samples per epoch ([`mix_counts`]).
    pub samples: u64,
    /// Its loader's state (with its dataset's fingerprint and [`source_seed`]).
    pub state: LoaderState,
}

/// Where a [`MixedLoader`] is in its epoch: small, serializable, checked at resume. As JSON:
///
/// ```json
/// {"version": 1, "seed": 0, "epoch": 3, "epoch_samples": null,
///  "sources": [{"weight": {"fraction": 0.7}, "samples": 7000, "state": { /* LoaderState */ }},
///              {"weight": {"samples": 3000}, "samples": 3000, "state": { /* ... */ }}]}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixedState {
    /// [`MIXED_STATE_VERSION`].
    pub version: u32,
    /// The mix's seed (each source's loader has [`source_seed`]).
    pub seed: u64,
    /// Epoch.
    pub epoch: u64,
    /// The epoch size asked for (`None`: the default of [`mix_counts`]).
    pub epoch_samples: Option<u64>,
    /// Per source, in the order given.
    pub sources: Vec<MixedSourceState>,
}

impl MixedState {
    /// Samples each rank has taken in the current part of the epoch, over all sources.
    pub fn samples_consumed(&self) -> u64 {
        self.sources.iter().map(|s| s.state.samples_consumed).sum()
    }
}

/// A sample of a [`MixedLoader`]: which source it came from, and the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixedSample {
    /// The source's position in the list given to [`MixedLoader::new`].
    pub source: usize,
    /// The sample (its `index` is in that source's dataset).
    pub sample: LoadedSample,
}

/// A sample a [`MixedLoader`] left out under [`ErrorPolicy::Skip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixedSkipped {
    /// The source it belongs to.
    pub source: usize,
    /// Position (in that source's part of the epoch), index and reason.
    pub sample: SkippedSample,
}

struct Source {
    ds: Arc<Dataset>,
    weight: Weight,
    samples: u64,
    loader: Loader,
    /// Its loader failed and ended early: it is not picked again.
    dead: bool,
}

/// Serves one rank's epoch of several datasets mixed by weight (see the module docs of
/// [`loader::mix`](self)).
///
/// ```
/// # use std::sync::Arc;
/// # use shardpack::writer::{DatasetInfo, DatasetWriter, FieldSpec, WriterOptions};
/// use shardpack::loader::{LoaderOptions, MixedLoader, Weight};
/// # fn make(dir: &std::path::Path, n: u32) -> shardpack::Result<Arc<shardpack::Dataset>> {
/// # let mut w = DatasetWriter::create(dir, vec![FieldSpec::raw("bin")], WriterOptions::default())?;
/// # for i in 0..n { w.append(format!("{i:04}").as_bytes(), None, &[(0, &i.to_le_bytes())])?; }
/// # w.finish(DatasetInfo::default())?;
/// # Ok(Arc::new(shardpack::Dataset::open(dir)?))
/// # }
/// # fn main() -> shardpack::Result<()> {
/// # let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
/// # let (web, books) = (make(a.path(), 1000)?, make(b.path(), 500)?);
/// let sources = [(web, Weight::Fraction(0.7)), (books, Weight::Fraction(0.3))];
/// let opts = LoaderOptions { seed: 1, batch_size: 100, ..LoaderOptions::default() };
/// let mut mixed = MixedLoader::new(&sources, None, opts.clone())?;
/// assert_eq!(mixed.counts(), vec![1000, 428]); // 70/30, as long as no sample repeats
/// let batch = mixed.next_batch().unwrap()?;
/// assert_eq!(batch.iter().filter(|s| s.source == 0).count(), 70);
/// let state = mixed.state();
/// drop(mixed);
/// let resumed = MixedLoader::resume(&sources, None, opts, &state)?;
/// assert_eq!(resumed.count() + 100, 1428);
/// # Ok(())
/// # }
/// ```
pub struct MixedLoader {
    sources: Vec<Source>,
    opts: LoaderOptions,
    epoch_samples: Option<u64>,
    skipped: Vec<MixedSkipped>,
    skipped_total: u64,
}

impl std::fmt::Debug for MixedLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixedLoader")
            .field("sources", &self.sources.len())
            .field("len", &self.len())
            .field("consumed", &self.consumed())
            .finish()
    }
}

/// Each source's options and count.
fn source_opts(
    sources: &[(Arc<Dataset>, Weight)],
    epoch_samples: Option<u64>,
    opts: &LoaderOptions,
) -> Result<Vec<(LoaderOptions, u64)>> {
    if opts.subset.is_some() || opts.epoch_samples.is_some() {
        return Err(Error::Options(
            "a mixed loader takes no subset or epoch_samples in its options: give the epoch's \
             size as its epoch_samples argument and each source's share as its weight"
                .into(),
        ));
    }
    let sizes: Vec<u64> = sources.iter().map(|(d, _)| d.len()).collect();
    let weights: Vec<Weight> = sources.iter().map(|(_, w)| *w).collect();
    let counts = mix_counts(&sizes, &weights, epoch_samples)?;
    Ok(counts
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let o = LoaderOptions {
                seed: source_seed(opts.seed, i),
                epoch_samples: Some(c),
                on_error: ErrorPolicy::Fail, // the mix applies the policy
                ..opts.clone()
            };
            (o, c)
        })
        .collect())
}

/// Checks `state` against the sources and options, naming what differs.
fn check(
    sources: &[(Arc<Dataset>, Weight)],
    epoch_samples: Option<u64>,
    opts: &LoaderOptions,
    state: &MixedState,
) -> Result<()> {
    let bad = |s: String| Err(Error::State(s));
    if state.version != MIXED_STATE_VERSION {
        return bad(format!(
            "the mixed state has version {}, and this shardpack reads version \
             {MIXED_STATE_VERSION}",
            state.version
        ));
    }
    if state.sources.len() != sources.len() {
        return bad(format!(
            "the mixed state has {} sources, and the loader was given {}; resume with the \
             sources the state was saved with, in the same order",
            state.sources.len(),
            sources.len()
        ));
    }
    for (name, saved, now) in [
        ("seed", state.seed.to_string(), opts.seed.to_string()),
        ("epoch", state.epoch.to_string(), opts.epoch.to_string()),
        (
            "epoch_samples",
            format!("{:?}", state.epoch_samples),
            format!("{epoch_samples:?}"),
        ),
    ] {
        if saved != now {
            return bad(format!(
                "the mixed state was saved with {name}={saved} but the loader has {name}={now}"
            ));
        }
    }
    for (i, ((_, w), s)) in sources.iter().zip(&state.sources).enumerate() {
        if *w != s.weight {
            return bad(format!(
                "source {i}: the state was saved with weight {:?}, the loader has {w:?}",
                s.weight
            ));
        }
    }
    Ok(())
}

impl MixedLoader {
    /// Starts this rank's epoch `opts.epoch` of `sources` (datasets with their weights), of
    /// `epoch_samples` samples over all ranks (`None`: see [`mix_counts`]). `opts` applies to
    /// every source's loader (each has its own reading threads and prefetch budget, so the
    /// memory is up to the number of sources times `prefetch_bytes`); it may not set
    /// `subset` or `epoch_samples`. Under [`ErrorPolicy::Skip`] a bad sample is left out and
    /// reported in [`MixedLoader::skipped`].
    pub fn new(
        sources: &[(Arc<Dataset>, Weight)],
        epoch_samples: Option<u64>,
        opts: LoaderOptions,
    ) -> Result<MixedLoader> {
        opts.validate()?;
        let per = source_opts(sources, epoch_samples, &opts)?;
        let mut out = Vec::with_capacity(sources.len());
        for ((ds, w), (o, c)) in sources.iter().zip(per) {
            out.push(Source {
                ds: ds.clone(),
                weight: *w,
                samples: c,
                loader: Loader::new(ds.clone(), o)?,
                dead: false,
            });
        }
        Ok(MixedLoader::from_sources(out, epoch_samples, opts))
    }

    /// Continues an epoch from `state` (saved by [`MixedLoader::state`], perhaps at another
    /// rank and world size), with the same sources in the same order, weights, epoch size,
    /// seed and epoch (else an [`Error::State`] naming the source and field); each source
    /// resumes as [`Loader::resume`] does, so at the same world size the order continues
    /// exactly, and at another one the rest of the epoch is split again over the new ranks.
    pub fn resume(
        sources: &[(Arc<Dataset>, Weight)],
        epoch_samples: Option<u64>,
        opts: LoaderOptions,
        state: &MixedState,
    ) -> Result<MixedLoader> {
        opts.validate()?;
        check(sources, epoch_samples, &opts, state)?;
        let per = source_opts(sources, epoch_samples, &opts)?;
        let mut out = Vec::with_capacity(sources.len());
        for (i, (((ds, w), (o, c)), s)) in sources.iter().zip(per).zip(&state.sources).enumerate() {
            let loader = Loader::resume(ds.clone(), o, &s.state).map_err(|e| match e {
                Error::State(m) => Error::State(format!("source {i}: {m}")),
                e => e,
            })?;
            out.push(Source {
                ds: ds.clone(),
                weight: *w,
                samples: c,
                loader,
                dead: false,
            });
        }
        Ok(MixedLoader::from_sources(out, epoch_samples, opts))
    }

    fn from_sources(
        sources: Vec<Source>,
        epoch_samples: Option<u64>,
        opts: LoaderOptions,
    ) -> MixedLoader {
        MixedLoader {
            sources,
            opts,
            epoch_samples,
            skipped: Vec::new(),
            skipped_total: 0,
        }
    }

    /// The state at the start of epoch `opts.epoch` (nothing consumed), without starting a
    /// loader.
    pub fn start_state(
        sources: &[(Arc<Dataset>, Weight)],
        epoch_samples: Option<u64>,
        opts: &LoaderOptions,
    ) -> Result<MixedState> {
        opts.validate()?;
        let per = source_opts(sources, epoch_samples, opts)?;
        Ok(MixedState {
            version: MIXED_STATE_VERSION,
            seed: opts.seed,
            epoch: opts.epoch,
            epoch_samples,
            sources: sources
                .iter()
                .zip(per)
                .map(|((ds, w), (o, c))| MixedSourceState {
                    weight: *w,
                    samples: c,
                    state: LoaderState::start(ds, &o),
                })
                .collect(),
        })
    }

    /// Each source's samples per epoch over all ranks ([`mix_counts`]).
    pub fn counts(&self) -> Vec<u64> {
        self.sources.iter().map(|s| s.samples).collect()
    }

    /// Samples this rank gets in the epoch (in the current part of it after a resume at
    /// another world size): the sum of its sources' parts.
    pub fn len(&self) -> u64 {
        self.sources.iter().map(|s| s.loader.len()).sum()
    }

    /// `true` when the epoch has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples handed out (or skipped) so far in this part of the epoch.
    pub fn consumed(&self) -> u64 {
        self.sources.iter().map(|s| s.loader.consumed()).sum()
    }

    /// The position to resume from.
    pub fn state(&self) -> MixedState {
        MixedState {
            version: MIXED_STATE_VERSION,
            seed: self.opts.seed,
            epoch: self.opts.epoch,
            epoch_samples: self.epoch_samples,
            sources: self
                .sources
                .iter()
                .map(|s| MixedSourceState {
                    weight: s.weight,
                    samples: s.samples,
                    state: s.loader.state(),
                })
                .collect(),
        }
    }

    /// The samples left out under [`ErrorPolicy::Skip`] so far, with their sources.
    pub fn skipped(&self) -> &[MixedSkipped] {
        &self.skipped
    }

    /// How many samples were left out under [`ErrorPolicy::Skip`].
    pub fn skipped_count(&self) -> u64 {
        self.skipped_total
    }

    /// The source the next sample comes from (see the module docs), `None` at the end.
    fn pick(&self) -> Option<usize> {
        pick(
            self.sources
                .iter()
                .map(|s| (s.loader.consumed(), s.loader.len(), s.dead)),
        )
    }

    /// The next sample, or `None` at the end of the epoch.
    pub fn next_sample(&mut self) -> Option<Result<MixedSample>> {
        loop {
            let i = self.pick()?;
            let src = &mut self.sources[i];
            let position = src.loader.consumed();
            match src.loader.next_sample() {
                None => {
                    src.dead = true;
                    return Some(Err(Error::Options(format!(
                        "source {i} ({}) ended after {position} of its {} samples",
                        src.ds.dir().display(),
                        src.loader.len()
                    ))));
                }
                Some(Ok(sample)) => return Some(Ok(MixedSample { source: i, sample })),
                Some(Err(e)) if self.opts.on_error == ErrorPolicy::Skip => {
                    let index = src.loader.last_index().unwrap_or(u64::MAX);
                    self.skipped.push(MixedSkipped {
                        source: i,
                        sample: SkippedSample {
                            position,
                            index,
                            reason: e.to_string(),
                        },
                    });
                    self.skipped_total += 1;
                }
                Some(Err(e)) => return Some(Err(e)),
            }
        }
    }

    /// The next batch of up to `batch_size` samples, or `None` at the end of the epoch (as
    /// [`Loader::next_batch`]).
    pub fn next_batch(&mut self) -> Option<Result<Vec<MixedSample>>> {
        let mut batch = Vec::with_capacity(self.opts.batch_size);
        while batch.len() < self.opts.batch_size {
            match self.next_sample() {
                Some(Ok(s)) => batch.push(s),
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
        }
        (!batch.is_empty()).then_some(Ok(batch))
    }

    /// The mixed loader of the next epoch (each source's loader from
    /// [`Loader::next_epoch`]: already reading under [`LoaderOptions::read_next_epoch`]).
    pub fn next_epoch(self) -> Result<MixedLoader> {
        let opts = LoaderOptions {
            epoch: self.opts.epoch + 1,
            ..self.opts
        };
        let mut out = Vec::with_capacity(self.sources.len());
        for s in self.sources {
            out.push(Source {
                loader: s.loader.next_epoch()?,
                dead: false,
                ..s
            });
        }
        Ok(MixedLoader::from_sources(out, self.epoch_samples, opts))
    }
}

/// The schedule's next source among `(taken, len, dead)`: the smallest `(taken + 1/2) / len`
/// of those not done, ties to the lower index; compared exactly in integers.
fn pick(sources: impl Iterator<Item = (u64, u64, bool)>) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None;
    for (i, (taken, len, dead)) in sources.enumerate() {
        if dead || taken >= len {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, bt, bl)) => {
                (2 * taken as u128 + 1) * (bl as u128) < (2 * bt as u128 + 1) * (len as u128)
            }
        };
        if better {
            best = Some((i, taken, len));
        }
    }
    best.map(|b| b.0)
}

impl Iterator for MixedLoader {
    type Item = Result<MixedSample>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_sample()
    }
}

impl Loader {
    /// A loader mixing `sources` by weight: [`MixedLoader::new`] with the default epoch size.
    pub fn mix(sources: &[(Arc<Dataset>, Weight)], opts: LoaderOptions) -> Result<MixedLoader> {
        MixedLoader::new(sources, None, opts)
    }
}

/// The `(source, global sample index)` pairs this rank gets, in order, computed without I/O
/// from the plans alone: exactly what [`MixedLoader::new`] (`state: None`) or
/// [`MixedLoader::resume`] serves.
pub fn mixed_epoch_order(
    sources: &[(Arc<Dataset>, Weight)],
    epoch_samples: Option<u64>,
    opts: &LoaderOptions,
    state: Option<&MixedState>,
) -> Result<Vec<(usize, u64)>> {
    opts.validate()?;
    if let Some(st) = state {
        check(sources, epoch_samples, opts, st)?;
    }
    let per = source_opts(sources, epoch_samples, opts)?;
    let mut orders = Vec::with_capacity(per.len());
    let mut pos = Vec::with_capacity(per.len());
    for (i, ((ds, _), (o, _))) in sources.iter().zip(per).enumerate() {
        let start = match state {
            Some(st) => st.sources[i].state.clone(),
            None => LoaderState::start(ds, &o),
        };
        let (at, len) = resume_point(ds, &o, &start)?;
        let order = epoch_order_from(ds, &o, &start)?;
        orders.push(order);
        pos.push((at.samples_consumed, len));
    }
    let mut taken = vec![0usize; orders.len()];
    let mut out = Vec::new();
    while let Some(i) = pick(
        pos.iter()
            .zip(&taken)
            .map(|(&(c, l), &t)| (c + t as u64, l, false)),
    ) {
        out.push((i, orders[i][taken[i]]));
        taken[i] += 1;
    }
    Ok(out)
}

//! Shuffle quality, measured rather than assumed: how far the label mix of an order's batches is
//! from what a fully random permutation gives, and how far samples move from where they are
//! stored.

use serde::Serialize;

/// Scores of one order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ShuffleQuality {
    /// Batch size used for the label figures.
    pub batch_size: u64,
    /// Full batches scored.
    pub batches: u64,
    /// Mean number of distinct labels per full batch.
    pub labels_per_batch: f64,
    /// The expected number of distinct labels in a batch of a fully random permutation.
    pub labels_per_batch_full_random: f64,
    /// `labels_per_batch / labels_per_batch_full_random` (1.0 is as good as a full shuffle).
    pub diversity_ratio: f64,
    /// Mean `|position - stored index|` as a fraction of the dataset size (a uniform random
    /// permutation gives about 1/3).
    pub mean_displacement: f64,
}

/// Expected number of distinct classes in a batch of `batch` samples drawn without replacement
/// from `n` samples with the given class sizes: the sum over classes of
/// `1 - P(class absent)`, where `P(absent) = prod_{i<batch} (n - n_c - i) / (n - i)`.
pub fn expected_distinct(class_sizes: &[u64], n: u64, batch: u64) -> f64 {
    let batch = batch.min(n);
    class_sizes
        .iter()
        .map(|&c| {
            let mut absent = 1.0f64;
            for i in 0..batch {
                if n - i == 0 || c + i >= n {
                    absent = 0.0;
                    break;
                }
                absent *= (n - c - i) as f64 / (n - i) as f64;
                if absent == 0.0 {
                    break;
                }
            }
            1.0 - absent
        })
        .sum()
}

/// Scores `order` (global sample ids as handed out) of a dataset of `n` samples whose labels
/// are `labels[id]` (`None` counts as one more class).
pub fn score(order: &[u64], labels: &[Option<u32>], batch_size: u64) -> ShuffleQuality {
    let n = labels.len() as u64;
    let key = |l: Option<u32>| l.map_or(0u64, |v| v as u64 + 1);
    let mut sizes = std::collections::BTreeMap::<u64, u64>::new();
    for &l in labels {
        *sizes.entry(key(l)).or_default() += 1;
    }
    let sizes: Vec<u64> = sizes.into_values().collect();
    let b = batch_size.max(1);
    let mut batches = 0u64;
    let mut distinct_sum = 0u64;
    let mut seen = std::collections::HashSet::new();
    for batch in order.chunks(b as usize) {
        if (batch.len() as u64) < b {
            break;
        }
        seen.clear();
        for &id in batch {
            seen.insert(key(labels[id as usize]));
        }
        distinct_sum += seen.len() as u64;
        batches += 1;
    }
    let labels_per_batch = if batches == 0 {
        0.0
    } else {
        distinct_sum as f64 / batches as f64
    };
    let full = expected_distinct(&sizes, n, b);
    let displacement: f64 = order
        .iter()
        .enumerate()
        .map(|(pos, &id)| (pos as f64 - id as f64).abs())
        .sum::<f64>()
        / (order.len().max(1) as f64 * n.max(1) as f64);
    ShuffleQuality {
        batch_size: b,
        batches,
        labels_per_batch,
        labels_per_batch_full_random: full,
        diversity_ratio: if full > 0.0 {
            labels_per_batch / full
        } else {
            0.0
        },
        mean_displacement: displacement,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_distinct_edge_cases() {
        // One class: always exactly one label.
        assert!((expected_distinct(&[100], 100, 10) - 1.0).abs() < 1e-12);
        // Batch of one: exactly one label.
        assert!((expected_distinct(&[50, 50], 100, 1) - 1.0).abs() < 1e-12);
        // Whole dataset in one batch: every class.
        assert!((expected_distinct(&[10, 20, 70], 100, 100) - 3.0).abs() < 1e-12);
        // Two equal classes, batch of two: 1 + P(different) = 1 + 50/99.
        let e = expected_distinct(&[50, 50], 100, 2);
        assert!((e - (1.0 + 50.0 / 99.0)).abs() < 1e-12, "{e}");
    }

    #[test]
    fn sorted_order_scores_poorly_and_random_well() {
        // 10 classes of 100 samples stored class-sorted.
        let labels: Vec<Option<u32>> = (0..1000).map(|i| Some(i / 100)).collect();
        let sorted: Vec<u64> = (0..1000).collect();
        let q = score(&sorted, &labels, 32);
        assert!(q.labels_per_batch < 2.1, "{q:?}");
        assert!(q.diversity_ratio < 0.3, "{q:?}");
        assert_eq!(q.mean_displacement, 0.0);
        let mut perm = sorted.clone();
        crate::rng::SplitMix64::new(1).shuffle(&mut perm);
        let q = score(&perm, &labels, 32);
        assert!((q.diversity_ratio - 1.0).abs() < 0.05, "{q:?}");
        assert!((q.mean_displacement - 1.0 / 3.0).abs() < 0.05, "{q:?}");
    }
}

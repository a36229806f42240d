//! The statistics `sluice monitor` compares distributions with: the population stability index,
//! Kolmogorov–Smirnov, Jensen–Shannon, percentiles, and a kernel two-sample test (MMD with a
//! permutation p-value) for embeddings. Pure functions over slices; no state but a seeded generator.

/// A proportion never taken as zero in PSI and Jensen–Shannon, so an empty bin on one side gives a
/// large but finite term (the usual smoothing).
const EPSILON: f64 = 1e-4;

/// A small, seeded generator (SplitMix64): samples and permutations are the same for the same seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// `k` distinct indices of `0..n` in increasing order (all of them when `k >= n`).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        if k >= n {
            return (0..n).collect();
        }
        // Floyd's algorithm: k draws, no n-sized buffer.
        let mut chosen = std::collections::BTreeSet::new();
        for j in n - k..n {
            let t = self.below(j + 1);
            if !chosen.insert(t) {
                chosen.insert(j);
            }
        }
        chosen.into_iter().collect()
    }
}

/// The `q` quantile (0..=1) of sorted values, interpolated linearly; `None` for no values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Sorts floats (NaNs are never passed in: callers keep finite numbers only).
pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// Inner bin edges from the baseline's quantiles: at most `bins - 1` distinct edges, so that each bin
/// holds about the same share of the baseline. A value equal to an edge falls in the bin above it.
pub fn quantile_edges(sorted_baseline: &[f64], bins: usize) -> Vec<f64> {
    let mut edges: Vec<f64> = (1..bins)
        .filter_map(|i| percentile(sorted_baseline, i as f64 / bins as f64))
        .collect();
    edges.dedup();
    // An edge equal to the minimum would leave the first bin empty by construction.
    if let Some(min) = sorted_baseline.first() {
        edges.retain(|e| e > min);
    }
    edges
}

/// How many values fall in each of the `edges.len() + 1` bins.
pub fn histogram(values: &[f64], edges: &[f64]) -> Vec<usize> {
    let mut counts = vec![0; edges.len() + 1];
    for v in values {
        counts[edges.partition_point(|e| e <= v)] += 1;
    }
    counts
}

/// Counts as proportions.
pub fn shares(counts: &[usize]) -> Vec<f64> {
    let total: usize = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            }
        })
        .collect()
}

/// The population stability index of `actual` against `expected` over the same bins:
/// `Σ (a − e) · ln(a / e)`. Under 0.1 is usually read as no shift, 0.1–0.2 moderate, over 0.2 large.
pub fn psi(expected: &[usize], actual: &[usize]) -> f64 {
    let (e, a) = (shares(expected), shares(actual));
    e.iter()
        .zip(&a)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(EPSILON), a.max(EPSILON));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// The Jensen–Shannon divergence of two distributions over the same bins, in bits (0 to 1).
pub fn jensen_shannon(p: &[usize], q: &[usize]) -> f64 {
    let (p, q) = (shares(p), shares(q));
    let kl = |x: &[f64], m: &[f64]| -> f64 {
        x.iter()
            .zip(m)
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, m)| x * (x / m).log2())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    ((kl(&p, &m) + kl(&q, &m)) / 2.0).clamp(0.0, 1.0)
}

/// The two-sample Kolmogorov–Smirnov statistic of two sorted samples and its asymptotic p-value
/// (Kolmogorov's distribution with Stephens' small-sample correction).
pub fn kolmogorov_smirnov(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    let en = (n * m / (n + m)).sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    Some((d, kolmogorov_q(lambda)))
}

/// `Q(λ) = 2 Σ (−1)^(k−1) exp(−2 k² λ²)`, the survival function of Kolmogorov's distribution.
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda < 1e-3 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let term = (-2.0 * (k * k) as f64 * lambda * lambda).exp();
        sum += if k % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Pearson's chi-square test of homogeneity of two samples' counts over the same bins (bins empty on
/// both sides are left out): the statistic and its p-value.
pub fn chi_square(a: &[usize], b: &[usize]) -> Option<(f64, f64)> {
    let (na, nb) = (
        a.iter().sum::<usize>() as f64,
        b.iter().sum::<usize>() as f64,
    );
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    let total = na + nb;
    let (mut stat, mut bins) = (0.0, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let col = (x + y) as f64;
        if col == 0.0 {
            continue;
        }
        bins += 1;
        for (obs, n) in [(x as f64, na), (y as f64, nb)] {
            let expected = n * col / total;
            stat += (obs - expected).powi(2) / expected;
        }
    }
    if bins < 2 {
        return Some((0.0, 1.0));
    }
    Some((stat, chi_square_survival(stat, (bins - 1) as f64)))
}

/// `P(X ≥ x)` for a chi-square variable with `k` degrees of freedom: the upper regularized gamma
/// function `Q(k/2, x/2)` (a series below `a + 1`, a continued fraction above).
pub fn chi_square_survival(x: f64, k: f64) -> f64 {
    let (a, x) = (k / 2.0, x / 2.0);
    if x <= 0.0 {
        return 1.0;
    }
    let ln_front = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..500 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term < sum * 1e-15 {
                break;
            }
        }
        (1.0 - sum * ln_front.exp()).clamp(0.0, 1.0)
    } else {
        // Lentz's method for the continued fraction of Q.
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..500 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (ln_front.exp() * h).clamp(0.0, 1.0)
    }
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series: f64 = G[0] + (1..9).map(|i| G[i] / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// A two-sided permutation test of the difference of two samples' means: the observed difference and
/// the share of `permutations` relabellings at least as far from zero (with the usual +1).
pub fn mean_difference_test(
    a: &[f64],
    b: &[f64],
    permutations: usize,
    rng: &mut Rng,
) -> (f64, f64) {
    let (Some(ma), Some(mb)) = (mean(a), mean(b)) else {
        return (0.0, 1.0);
    };
    let observed = mb - ma;
    let mut pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let total: f64 = pooled.iter().sum();
    let mut extreme = 0usize;
    for _ in 0..permutations {
        rng.shuffle(&mut pooled);
        let sa: f64 = pooled[..a.len()].iter().sum();
        let diff = (total - sa) / b.len() as f64 - sa / a.len() as f64;
        if diff.abs() >= observed.abs() - 1e-12 {
            extreme += 1;
        }
    }
    (observed, (extreme + 1) as f64 / (permutations + 1) as f64)
}

/// The result of a kernel two-sample test.
#[derive(Clone, Debug, PartialEq)]
pub struct MmdTest {
    /// The unbiased estimate of the squared maximum mean discrepancy (RBF kernel).
    pub mmd2: f64,
    /// The share of label permutations whose MMD² is at least the observed one (with the usual +1).
    pub p_value: f64,
    /// The kernel's bandwidth: the median squared distance between the pooled points.
    pub bandwidth: f64,
}

/// Tests whether two sets of vectors come from the same distribution: MMD² with a Gaussian kernel
/// `exp(−‖x − y‖² / median)` and a permutation p-value. `O((n + m)²)` memory and time per permutation,
/// so callers sample (a few hundred vectors a side).
pub fn mmd_test(
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    permutations: usize,
    rng: &mut Rng,
) -> Option<MmdTest> {
    let (n, m) = (a.len(), b.len());
    if n < 2 || m < 2 {
        return None;
    }
    let points: Vec<&[f32]> = a.iter().chain(b).map(Vec::as_slice).collect();
    let total = n + m;
    let mut dist = vec![0f64; total * total];
    let mut upper = Vec::with_capacity(total * (total - 1) / 2);
    for i in 0..total {
        for j in i + 1..total {
            let d: f64 = points[i]
                .iter()
                .zip(points[j])
                .map(|(x, y)| {
                    let t = f64::from(x - y);
                    t * t
                })
                .sum();
            dist[i * total + j] = d;
            dist[j * total + i] = d;
            upper.push(d);
        }
    }
    let upper = sorted(upper);
    let bandwidth = percentile(&upper, 0.5).unwrap_or(1.0).max(1e-12);
    // The distances become the kernel in place: one (n + m)² buffer.
    let mut kernel = dist;
    for k in &mut kernel {
        *k = (-*k / bandwidth).exp();
    }
    let statistic = |labels: &[bool]| -> f64 {
        let (mut xx, mut yy, mut xy) = (0f64, 0f64, 0f64);
        for i in 0..total {
            let row = &kernel[i * total..(i + 1) * total];
            for j in i + 1..total {
                match (labels[i], labels[j]) {
                    (false, false) => xx += row[j],
                    (true, true) => yy += row[j],
                    _ => xy += row[j],
                }
            }
        }
        let (n, m) = (n as f64, m as f64);
        2.0 * xx / (n * (n - 1.0)) + 2.0 * yy / (m * (m - 1.0)) - 2.0 * xy / (n * m)
    };
    let mut labels: Vec<bool> = (0..total).map(|i| i >= n).collect();
    let mmd2 = statistic(&labels);
    let mut extreme = 0usize;
    for _ in 0..permutations {
        rng.shuffle(&mut labels);
        if statistic(&labels) >= mmd2 {
            extreme += 1;
        }
    }
    Some(MmdTest {
        mmd2,
        p_value: (extreme + 1) as f64 / (permutations + 1) as f64,
        bandwidth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn psi_is_zero_for_the_same_shares_and_grows_with_a_shift() {
        assert!(psi(&[10, 20, 30], &[20, 40, 60]).abs() < 1e-12);
        // 50/50 against 90/10: 0.4·ln(0.9/0.5) + (−0.4)·ln(0.1/0.5) = 0.2351 + 0.6438.
        let shifted = psi(&[50, 50], &[90, 10]);
        assert!((shifted - 0.878_94).abs() < 1e-4, "{shifted}");
        // An empty bin on one side is smoothed, not infinite.
        assert!(psi(&[10, 0], &[5, 5]).is_finite());
    }

    #[test]
    fn jensen_shannon_spans_zero_to_one_bit() {
        assert!(jensen_shannon(&[3, 7], &[30, 70]).abs() < 1e-12);
        assert!((jensen_shannon(&[1, 0], &[0, 1]) - 1.0).abs() < 1e-12);
        let mid = jensen_shannon(&[1, 1], &[1, 0]);
        assert!(mid > 0.2 && mid < 0.4, "{mid}");
    }

    #[test]
    fn histograms_put_edge_values_in_the_bin_above() {
        let base = sorted((0..100).map(f64::from).collect());
        let edges = quantile_edges(&base, 4);
        assert_eq!(edges, vec![24.75, 49.5, 74.25]);
        assert_eq!(histogram(&base, &edges), vec![25, 25, 25, 25]);
        assert_eq!(histogram(&[49.5], &edges), vec![0, 0, 1, 0]);
        // A constant baseline gives one bin: no edge at its only value.
        assert!(quantile_edges(&[3.0; 10], 10).is_empty());
    }

    #[test]
    fn kolmogorov_smirnov_matches_known_values() {
        let a = sorted((0..200).map(|i| f64::from(i) / 200.0).collect());
        let same = kolmogorov_smirnov(&a, &a).unwrap();
        assert_eq!(same.0, 0.0);
        assert!(same.1 > 0.99);
        let shifted: Vec<f64> = a.iter().map(|x| x + 0.5).collect();
        let (d, p) = kolmogorov_smirnov(&a, &shifted).unwrap();
        assert!((d - 0.5).abs() <= 0.005 + 1e-9, "{d}");
        assert!(p < 1e-10, "{p}");
        // Q(1.36) ≈ 0.05, the textbook 5% critical value.
        assert!((kolmogorov_q(1.358) - 0.05).abs() < 1e-3);
    }

    #[test]
    fn chi_square_matches_known_values() {
        // Survival of chi-square: k = 1 at 3.841 and k = 9 at 16.919 are the 5% critical values.
        assert!((chi_square_survival(3.841, 1.0) - 0.05).abs() < 1e-3);
        assert!((chi_square_survival(16.919, 9.0) - 0.05).abs() < 1e-3);
        assert!((chi_square_survival(2.0, 4.0) - 0.735_758_9).abs() < 1e-6);
        let (stat, p) = chi_square(&[50, 50], &[50, 50]).unwrap();
        assert_eq!((stat, p), (0.0, 1.0));
        let (stat, p) = chi_square(&[90, 10], &[50, 50]).unwrap();
        assert!(stat > 30.0 && p < 1e-6, "{stat} {p}");
        assert_eq!(chi_square(&[5, 0], &[7, 0]), Some((0.0, 1.0)));
    }

    #[test]
    fn samples_are_distinct_sorted_and_seeded() {
        let mut rng = Rng::new(7);
        let s = rng.sample_indices(1000, 50);
        assert_eq!(s.len(), 50);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s, Rng::new(7).sample_indices(1000, 50));
        assert_eq!(Rng::new(1).sample_indices(5, 9), vec![0, 1, 2, 3, 4]);
    }

    fn cloud(rng: &mut Rng, n: usize, center: f32) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                (0..8)
                    .map(|d| {
                        let noise = (rng.next_u64() % 1000) as f32 / 1000.0 - 0.5;
                        noise + if d == 0 { center } else { 0.0 }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn mmd_tells_a_shifted_cloud_from_the_same_one() {
        let mut rng = Rng::new(42);
        let a = cloud(&mut rng, 60, 0.0);
        let same = cloud(&mut rng, 60, 0.0);
        let moved = cloud(&mut rng, 60, 0.6);
        let null = mmd_test(&a, &same, 200, &mut rng).unwrap();
        let alt = mmd_test(&a, &moved, 200, &mut rng).unwrap();
        assert!(null.p_value > 0.01, "{null:?}");
        assert!(alt.p_value < 0.01, "{alt:?}");
        assert!(alt.mmd2 > null.mmd2);
    }

    #[test]
    fn mmd_false_alarms_stay_near_alpha() {
        let mut rng = Rng::new(11);
        let mut alarms = 0;
        for _ in 0..200 {
            let a = cloud(&mut rng, 40, 0.0);
            let b = cloud(&mut rng, 40, 0.0);
            if mmd_test(&a, &b, 200, &mut rng).unwrap().p_value < 0.05 {
                alarms += 1;
            }
        }
        // 5% of 200 is 10; a binomial count beyond 22 has a probability below 0.01%.
        assert!(alarms <= 22, "{alarms} of 200 null tests below 0.05");
        eprintln!("{alarms} of 200 null tests below 0.05");
    }

    #[test]
    fn mean_difference_test_separates_shifted_means() {
        let mut rng = Rng::new(3);
        let a: Vec<f64> = (0..50).map(|i| f64::from(i % 10)).collect();
        let b: Vec<f64> = a.iter().map(|x| x + 4.0).collect();
        let (diff, p) = mean_difference_test(&a, &b, 500, &mut rng);
        assert!((diff - 4.0).abs() < 1e-9);
        assert!(p < 0.01, "{p}");
        let (_, p_same) = mean_difference_test(&a, &a, 500, &mut rng);
        assert!(p_same > 0.5, "{p_same}");
    }
}

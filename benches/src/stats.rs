//! Summaries of repeated measurements.
//!
//! The machine is shared and noisy, so every figure in the report is the median of several runs, and latency
//! percentiles are read from the full sample rather than from histogram buckets.

/// The median of `values`, or `None` when there are none. NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 50.0)
}

/// The `p`th percentile (0..=100) of `values` by the nearest-rank method, or `None` when there are none.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_of_sorted(&sorted, p)
}

/// The `p`th percentile of already sorted values (nearest rank: the smallest value with at least p% at or
/// below it).
pub fn percentile_of_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let count = sorted.len() as f64;
    // The small subtraction keeps binary rounding (99.9% of 1000 = 999.0000000000001) from skipping a rank.
    let rank = (p.clamp(0.0, 100.0) / 100.0 * count - 1e-9).ceil().max(1.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "rank is in 1..=len")]
    let index = (rank as usize).saturating_sub(1).min(sorted.len() - 1);
    sorted.get(index).copied()
}

/// `numerator / denominator`, or `None` when either is missing or the denominator is zero.
pub fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d != 0.0 => Some(n / d),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&values, 99.0), Some(990.0));
        assert_eq!(percentile(&values, 99.9), Some(999.0));
        assert_eq!(percentile(&values, 100.0), Some(1000.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[5.0], 99.0), Some(5.0));
    }

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(Some(1.0), Some(2.0)), Some(0.5));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }
}

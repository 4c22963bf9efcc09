//! A fixed-size latency histogram with about 1.6 % resolution.
//!
//! Load-generator tasks each record into their own [`Histogram`] (no
//! allocation or locking per sample); the run merges them at the end and
//! reads percentiles from the merged one. Values are nanoseconds, bucketed
//! the way HdrHistogram does it: exact below 128, then 64 buckets per
//! power of two, up to about 68 s (larger values land in the last bucket).

use std::time::Duration;

/// Mantissa bits kept per value: 2^7 = 128 exact values, then 64 per octave.
const SUB_BITS: u32 = 7;
const HALF: usize = 1 << (SUB_BITS - 1);
/// Largest exponent tracked: 2^36 ns is about 68 s.
const MAX_EXP: u32 = 36;
const BUCKETS: usize = (MAX_EXP as usize - SUB_BITS as usize + 2) * HALF + HALF;

/// Counts of latency samples by bucket.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u32>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(value: u64) -> usize {
    if value < (1 << SUB_BITS) {
        return value as usize;
    }
    let exp = (63 - value.leading_zeros()).min(MAX_EXP);
    let shift = exp - (SUB_BITS - 1);
    let mantissa = (value >> shift).min((1 << SUB_BITS) - 1) as usize;
    shift as usize * HALF + mantissa
}

/// The middle of bucket `index`, in nanoseconds.
fn midpoint(index: usize) -> u64 {
    if index < (1 << SUB_BITS) {
        return index as u64;
    }
    let shift = index / HALF - 1;
    let mantissa = (index % HALF + HALF) as u64;
    (mantissa << shift) + (1u64 << shift) / 2
}

impl Histogram {
    /// Records one sample.
    pub fn record(&mut self, sample: Duration) {
        let nanos = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether no sample was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value below which a fraction `q` (0..=1) of the samples fall.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                return Duration::from_nanos(midpoint(i).min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        let mut last = 0;
        for value in (0..1_000_000u64).chain([1 << 30, (1 << 36) - 1]) {
            let i = index(value);
            assert!(i >= last, "{value}");
            assert!(i < BUCKETS, "{value}");
            last = i;
        }
        assert_eq!(index(127), 127);
        assert_eq!(index(128), 128);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn midpoints_are_within_resolution() {
        for value in [1u64, 100, 1_000, 12_345, 1_000_000, 987_654_321] {
            let mid = midpoint(index(value)) as f64;
            let error = (mid - value as f64).abs() / value as f64;
            assert!(error < 0.016, "{value}: {mid}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_sample() {
        let mut hist = Histogram::default();
        for micros in 1..=1000 {
            hist.record(Duration::from_micros(micros));
        }
        let p50 = hist.quantile(0.5).as_micros() as f64;
        let p99 = hist.quantile(0.99).as_micros() as f64;
        assert!((p50 - 500.0).abs() < 10.0, "{p50}");
        assert!((p99 - 990.0).abs() < 16.0, "{p99}");
        assert_eq!(hist.quantile(1.0), Duration::from_micros(1000));
    }
}

//! Job latency histograms (queued → started, started → finished), counted where the first
//! final write happens, so every finished submission is observed once whichever worker or
//! server finished it, and every server's /metrics shows the same figures.
//!
//! Buckets are stored non-cumulative (one counter per bucket) because that is what a
//! Redis `HINCRBY` can keep atomically; [`Histogram::cumulative`] turns them into the
//! Prometheus form.

use std::time::Duration;

use crate::types::Submission;

/// Upper bounds of the buckets, in seconds. Queue waits of a few ms and runs of seconds
/// both matter; the last bound is a little above the largest wall limit a server allows
/// by default.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// One latency distribution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (index = `LATENCY_BUCKETS` index; the last one is +Inf).
    pub counts: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
}

impl Histogram {
    /// The bucket an observation of `d` falls in.
    pub fn bucket_of(d: Duration) -> usize {
        let secs = d.as_secs_f64();
        LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len())
    }

    pub fn observe(&mut self, d: Duration) {
        self.counts[Self::bucket_of(d)] += 1;
        self.sum_us = self.sum_us.saturating_add(micros(d));
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound, observations at or below it)` per bucket, ending with `(+Inf,
    /// count)`: the Prometheus `_bucket{le=...}` series.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, n)| {
                total += n;
                (
                    LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                    total,
                )
            })
            .collect()
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What a finished submission contributes: its wait in the queue and its run, when the
/// record says when it started (a cancel before any worker took it has no start).
pub(crate) struct JobLatency {
    pub queued: Option<Duration>,
    pub run: Option<Duration>,
}

impl JobLatency {
    pub fn of(submission: &Submission) -> Self {
        type At = chrono::DateTime<chrono::Utc>;
        let span = |from: At, to: Option<At>| to.and_then(|to| (to - from).to_std().ok());
        let started = submission.started_at;
        JobLatency {
            queued: span(submission.created_at, started),
            run: started.and_then(|s| span(s, submission.finished_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_cumulative_counts() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(1000));
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum_us, 500 + 3_000 + 1_000_000_000);
        let c = h.cumulative();
        assert_eq!(c.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(c[0], (0.001, 1));
        assert_eq!(c[1], (0.0025, 1));
        assert_eq!(c[2], (0.005, 2));
        assert_eq!(c[LATENCY_BUCKETS.len() - 1], (300.0, 2));
        assert_eq!(c[LATENCY_BUCKETS.len()], (f64::INFINITY, 3));
        assert_eq!(Histogram::bucket_of(Duration::from_millis(1)), 0);
    }
}

//! Prometheus counters, kept as plain atomics: cheap on the hot path, rendered on scrape.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Process-wide counters.
#[derive(Default)]
pub struct Metrics {
    submissions: AtomicU64,
    subscriptions_open: AtomicU64,
    subscriptions_total: AtomicU64,
}

/// Counts an open subscription until dropped.
pub struct SubscriptionGuard(Arc<Metrics>);

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.0.subscriptions_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn submitted(&self) {
        self.submissions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn subscription(self: &Arc<Self>) -> SubscriptionGuard {
        self.subscriptions_open.fetch_add(1, Ordering::Relaxed);
        self.subscriptions_total.fetch_add(1, Ordering::Relaxed);
        SubscriptionGuard(Arc::clone(self))
    }

    /// The Prometheus text format.
    pub fn render(&self, queue_len: Option<u64>, watched: usize) -> String {
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        put(
            "verdict_submissions_total",
            "counter",
            "Submissions accepted by this server.",
            self.submissions.load(Ordering::Relaxed),
        );
        put(
            "verdict_subscriptions_open",
            "gauge",
            "Open submissionEvents subscriptions.",
            self.subscriptions_open.load(Ordering::Relaxed),
        );
        put(
            "verdict_subscriptions_total",
            "counter",
            "Subscriptions started.",
            self.subscriptions_total.load(Ordering::Relaxed),
        );
        put(
            "verdict_watched_submissions",
            "gauge",
            "Submissions with a live channel subscription.",
            watched as u64,
        );
        if let Some(len) = queue_len {
            put(
                "verdict_queue_length",
                "gauge",
                "Jobs waiting or running.",
                len,
            );
        }
        out
    }
}

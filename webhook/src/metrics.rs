//! What `/metrics` shows of the webhook sender: deliveries by outcome and how far behind
//! it is. The age of the oldest undelivered submission is the figure to alert on: it grows
//! while the receiver is down, and returns to about zero once it is back.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// Counters and the in-flight set of one sending process.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    delivered: AtomicU64,
    retried: AtomicU64,
    gave_up: AtomicU64,
    skipped: AtomicU64,
    /// Submission id → when it finished, for each delivery not yet acknowledged.
    in_flight: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// How one attempt or one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// An attempt failed and another follows.
    Retried,
    /// The last attempt failed: the delivery is dropped (and logged).
    GaveUp,
    /// The submission's record was gone (expired or trimmed) before it could be sent.
    Skipped,
}

impl WebhookMetrics {
    pub(crate) fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Delivered => &self.delivered,
            Outcome::Retried => &self.retried,
            Outcome::GaveUp => &self.gave_up,
            Outcome::Skipped => &self.skipped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// How many ended with `outcome` so far.
    pub fn total(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Delivered => &self.delivered,
            Outcome::Retried => &self.retried,
            Outcome::GaveUp => &self.gave_up,
            Outcome::Skipped => &self.skipped,
        }
        .load(Ordering::Relaxed)
    }

    pub(crate) fn start(&self, id: &str, finished_at: Option<DateTime<Utc>>) {
        if let Ok(mut map) = self.in_flight.lock() {
            map.insert(id.to_owned(), finished_at.unwrap_or_else(Utc::now));
        }
    }

    pub(crate) fn end(&self, id: &str) {
        if let Ok(mut map) = self.in_flight.lock() {
            map.remove(id);
        }
    }

    /// Seconds since the oldest submission still being delivered finished (0 when none).
    pub fn oldest_undelivered_seconds(&self) -> f64 {
        let oldest = self
            .in_flight
            .lock()
            .ok()
            .and_then(|map| map.values().min().copied());
        oldest.map_or(0.0, |t| {
            (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        })
    }

    /// Prometheus text, appended to the process's `/metrics`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP verdict_webhook_deliveries_total Webhook delivery attempts by outcome \
             (retried: a failed attempt that is retried; gave_up: the last attempt failed).\n\
             # TYPE verdict_webhook_deliveries_total counter"
        );
        for (name, outcome) in [
            ("delivered", Outcome::Delivered),
            ("retried", Outcome::Retried),
            ("gave_up", Outcome::GaveUp),
            ("skipped", Outcome::Skipped),
        ] {
            let _ = writeln!(
                out,
                "verdict_webhook_deliveries_total{{outcome=\"{name}\"}} {}",
                self.total(outcome)
            );
        }
        let in_flight = self.in_flight.lock().map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP verdict_webhook_in_flight Deliveries started and not yet acknowledged.\n\
             # TYPE verdict_webhook_in_flight gauge\n\
             verdict_webhook_in_flight {in_flight}\n\
             # HELP verdict_webhook_oldest_undelivered_seconds Age of the oldest finished \
             submission not yet delivered by this process.\n\
             # TYPE verdict_webhook_oldest_undelivered_seconds gauge\n\
             verdict_webhook_oldest_undelivered_seconds {:.3}",
            self.oldest_undelivered_seconds()
        );
    }
}

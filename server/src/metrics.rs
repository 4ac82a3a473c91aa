//! Prometheus counters, kept as plain atomics: cheap on the hot path, rendered on scrape.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use verdict_broker::{Histogram, QueueStats};

/// A GraphQL operation type, for request counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Query = 0,
    Mutation = 1,
    Subscription = 2,
}

/// How a GraphQL request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Executed without errors.
    Ok = 0,
    /// Executed (or validated) with errors in the response.
    Error = 1,
}

const OPERATIONS: [&str; 3] = ["query", "mutation", "subscription"];
const OUTCOMES: [&str; 2] = ["ok", "error"];

/// HTTP requests refused before GraphQL execution, by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    Unauthenticated = 0,
    UnsupportedMediaType = 1,
    NotAcceptable = 2,
    TooLarge = 3,
    BadRequest = 4,
    MethodNotAllowed = 5,
    TooManyConnections = 6,
}

const REJECTIONS: [&str; 7] = [
    "unauthenticated",
    "unsupported_media_type",
    "not_acceptable",
    "too_large",
    "bad_request",
    "method_not_allowed",
    "too_many_connections",
];

/// Upper bounds of the submit latency histogram, in seconds.
const SUBMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Appends Prometheus text for a part outside this crate ([`Metrics::add_source`]).
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Process-wide counters.
#[derive(Default)]
pub struct Metrics {
    sources: Mutex<Vec<MetricsSource>>,
    submissions: AtomicU64,
    subscriptions_open: AtomicU64,
    subscriptions_total: AtomicU64,
    requests: [[AtomicU64; 2]; 3],
    rejections: [AtomicU64; 7],
    rate_limited: AtomicU64,
    ws_open: AtomicU64,
    ws_total: AtomicU64,
    ws_closes: [AtomicU64; WS_CLOSE_CODES.len()],
    submit_buckets: [AtomicU64; SUBMIT_BUCKETS.len()],
    submit_count: AtomicU64,
    submit_sum_us: AtomicU64,
    by_language: Mutex<BTreeMap<String, u64>>,
}

/// The close codes counted in `verdict_ws_closed_total`; anything else is "other".
const WS_CLOSE_CODES: [u16; 10] = [1000, 1001, 1009, 4400, 4401, 4403, 4406, 4408, 4409, 4429];

/// Counts an open subscription until dropped.
pub struct SubscriptionGuard(Arc<Metrics>);

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.0.subscriptions_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an open WebSocket connection until dropped.
pub struct WsGuard(Arc<Metrics>);

impl Drop for WsGuard {
    fn drop(&mut self) {
        self.0.ws_open.fetch_sub(1, Ordering::Relaxed);
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

    pub fn websocket(self: &Arc<Self>) -> WsGuard {
        self.ws_open.fetch_add(1, Ordering::Relaxed);
        self.ws_total.fetch_add(1, Ordering::Relaxed);
        WsGuard(Arc::clone(self))
    }

    /// A WebSocket closed by the server with `code`.
    pub fn ws_closed(&self, code: u16) {
        if let Some(i) = WS_CLOSE_CODES.iter().position(|c| *c == code) {
            self.ws_closes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn request(&self, op: Operation, outcome: Outcome) {
        self.requests[op as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejections[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// An accepted submission in `language` (a catalogue id: validated before counting).
    pub fn submitted_in(&self, language: &str) {
        let mut map = self.by_language.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(language.to_owned()).or_insert(0) += 1;
    }

    /// Time spent in the `submit` resolver (validation, store, enqueue).
    pub fn submit_latency(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, bound) in SUBMIT_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.submit_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.submit_count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.submit_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The Prometheus text format.
    pub fn render(&self, queue_len: Option<u64>, watched: usize, reconnects: u64) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
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
            get(&self.submissions),
        );
        put(
            "verdict_subscriptions_open",
            "gauge",
            "Open submissionEvents subscriptions.",
            get(&self.subscriptions_open),
        );
        put(
            "verdict_subscriptions_total",
            "counter",
            "Subscriptions started.",
            get(&self.subscriptions_total),
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
        put(
            "verdict_websockets_open",
            "gauge",
            "Open WebSocket connections.",
            get(&self.ws_open),
        );
        put(
            "verdict_websockets_total",
            "counter",
            "WebSocket connections accepted.",
            get(&self.ws_total),
        );
        put(
            "verdict_redis_reconnects_total",
            "counter",
            "Times this server's Redis connections were re-established (0 standalone).",
            reconnects,
        );
        put(
            "verdict_rate_limited_total",
            "counter",
            "Submits refused with RATE_LIMITED.",
            get(&self.rate_limited),
        );

        let _ = writeln!(
            out,
            "# HELP verdict_submissions_by_language_total Submissions accepted by this server, by language.\n\
             # TYPE verdict_submissions_by_language_total counter"
        );
        for (language, n) in self
            .by_language
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "verdict_submissions_by_language_total{{language=\"{language}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP verdict_graphql_requests_total GraphQL operations executed, by type and outcome.\n\
             # TYPE verdict_graphql_requests_total counter"
        );
        for (i, op) in OPERATIONS.iter().enumerate() {
            for (j, outcome) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "verdict_graphql_requests_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {}",
                    get(&self.requests[i][j])
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP verdict_http_rejections_total HTTP requests refused before execution, by reason.\n\
             # TYPE verdict_http_rejections_total counter"
        );
        for (i, why) in REJECTIONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "verdict_http_rejections_total{{reason=\"{why}\"}} {}",
                get(&self.rejections[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP verdict_ws_closed_total WebSocket connections closed by the server, by close code.\n\
             # TYPE verdict_ws_closed_total counter"
        );
        for (i, code) in WS_CLOSE_CODES.iter().enumerate() {
            let _ = writeln!(
                out,
                "verdict_ws_closed_total{{code=\"{code}\"}} {}",
                get(&self.ws_closes[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP verdict_submit_seconds Time to validate, store and enqueue a submission.\n\
             # TYPE verdict_submit_seconds histogram"
        );
        for (i, bound) in SUBMIT_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "verdict_submit_seconds_bucket{{le=\"{bound}\"}} {}",
                get(&self.submit_buckets[i])
            );
        }
        let count = get(&self.submit_count);
        let _ = writeln!(
            out,
            "verdict_submit_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             verdict_submit_seconds_sum {}\n\
             verdict_submit_seconds_count {count}",
            get(&self.submit_sum_us) as f64 / 1e6
        );
        for source in self.sources.lock().map(|s| s.clone()).unwrap_or_default() {
            source(&mut out);
        }
        out
    }

    /// Adds the metrics of a part that lives beside the server in this process (the
    /// webhook sender), rendered at the end of every scrape.
    pub fn add_source(&self, source: MetricsSource) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.push(source);
        }
    }

    /// This process's resident and virtual memory, from /proc/self/status (read at scrape
    /// time, so a leak shows in the next scrape), under the names of the Prometheus
    /// client libraries' process collector so standard dashboards find them. Nothing is
    /// written where /proc is unavailable.
    pub fn render_process(out: &mut String, status: &str) {
        for (key, name, help) in [
            (
                "VmRSS:",
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            (
                "VmSize:",
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
        ] {
            if let Some(bytes) = status_kib(status, key).map(|kib| kib.saturating_mul(1024)) {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {bytes}"
                );
            }
        }
    }

    /// The figures kept by the broker, the same on every server: finished submissions
    /// by verdict and the job latency histograms (queued → started, started → finished).
    pub fn render_shared(out: &mut String, stats: &QueueStats) {
        let _ = writeln!(
            out,
            "# HELP verdict_verdicts_total Finished submissions by verdict (all servers).\n\
             # TYPE verdict_verdicts_total counter"
        );
        for (verdict, n) in &stats.verdicts {
            let _ = writeln!(out, "verdict_verdicts_total{{verdict=\"{verdict}\"}} {n}");
        }
        histogram(
            out,
            "verdict_job_queued_seconds",
            "Time from submit to a worker starting the job (all servers).",
            &stats.queue_wait,
        );
        histogram(
            out,
            "verdict_job_run_seconds",
            "Time from a worker starting the job to its verdict (all servers).",
            &stats.run_time,
        );
        for (name, help, value) in [
            (
                "verdict_broker_retained_bytes",
                "Memory the broker keeps (embedded: its records and logs; Redis: used_memory).",
                stats.retained_bytes,
            ),
            (
                "verdict_broker_retained_budget_bytes",
                "Its bound (--max-retained-mb, or Redis maxmemory); 0 = none.",
                stats.retained_budget_bytes,
            ),
        ] {
            if let Some(v) = value {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        }
    }
}

/// The value of a `Key:   1234 kB` line of /proc/<pid>/status, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, n) in h.cumulative() {
        if bound.is_finite() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        } else {
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        }
    }
    let _ = writeln!(
        out,
        "{name}_sum {}\n{name}_count {}",
        h.sum_us as f64 / 1e6,
        h.count()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_memory_comes_from_proc_status_in_bytes() {
        let status = "Name:\tverdict\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\nThreads:\t4\n";
        let mut out = String::new();
        Metrics::render_process(&mut out, status);
        assert!(
            out.contains("\nprocess_resident_memory_bytes 2097152\n"),
            "{out}"
        );
        assert!(
            out.contains("\nprocess_virtual_memory_bytes 126418944\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE process_resident_memory_bytes gauge"),
            "{out}"
        );
        let mut none = String::new();
        Metrics::render_process(&mut none, "Name:\tkernel thread\n");
        assert!(none.is_empty(), "{none}");
    }
}

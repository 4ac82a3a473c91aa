//! The worker: takes jobs from the broker, judges them in the sandbox and publishes every
//! step. Many jobs run at once, one per sandbox slot.
//!
//! [`Worker`]'s methods live with the step they do, one `impl Worker` block per file:
//!
//! | file | what | methods |
//! |---|---|---|
//! | `lib.rs` | the job loop, heartbeats, leases, giving up | `new`, `run`, `handle` |
//! | `job.rs` | one job, start to end | `process`, `evaluate` |
//! | `compile.rs` | compile, or restore from the compile cache | `compile_or_restore` |
//! | `run.rs` | the tests of a plain submission | `run_tests`, `run_test` |
//! | `problem.rs` | the tests of a stored problem, scores | `judge_problem`, `score_problem` |
//! | `checker.rs` | checker programs | `compiled_checker`, `run_checker` |
//! | `sandboxed.rs` | one sandboxed command, run directories | `sandboxed`, `fresh_dir` |
//!
//! Free functions: verdict rules in [`judge`], live output in `output.rs`, the compile
//! cache in `cache.rs`, scores in `scoring.rs`.

mod cache;
mod checker;
mod compile;
mod error;
mod job;
pub mod judge;
mod output;
pub mod paths;
mod problem;
mod run;
mod sandboxed;
mod scoring;
mod slots;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use verdict_broker::{Catalogue, Delivery, Limits, SharedBroker, Verdict};
use verdict_sandbox::Sandbox;

pub use error::WorkerError;
pub use slots::Slots;

/// How a worker process behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once (one sandbox slot each).
    pub concurrency: usize,
    /// Consumer name in the job stream's group; unique per process.
    pub consumer: String,
    /// Limits of the compile step (the language's `compile_limits` add to these).
    pub compile_limits: Limits,
    /// Where slot lock files live (shared by all workers of one machine and uid; default:
    /// [`paths::Locations`]).
    pub slot_dir: PathBuf,
    /// On shutdown, how long running jobs may take to finish.
    pub grace: Duration,
    /// Where compiled artifacts are cached on this machine; `None` disables the cache.
    pub compile_cache_dir: Option<PathBuf>,
    /// The cache's size cap in bytes; least recently used entries are evicted beyond it.
    pub compile_cache_bytes: u64,
    /// A job delivered this many times before (each time its worker died) is finished
    /// as INTERNAL_ERROR instead of being run again.
    pub max_redeliveries: u64,
    /// How often a running job's lease is renewed (well within the visibility timeout).
    pub lease_renewal: Duration,
}

impl WorkerConfig {
    /// Limits of the compile step unless configured: the one source of these numbers (the
    /// `verdict` binary's `--compile-*` flags default to them).
    pub const DEFAULT_COMPILE_LIMITS: Limits = Limits {
        cpu_time_ms: 15_000,
        wall_time_ms: 30_000,
        memory_kb: 512 * 1024,
        output_bytes: 256 * 1024,
        processes: 64,
    };
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            consumer: format!("worker-{}", std::process::id()),
            compile_limits: Self::DEFAULT_COMPILE_LIMITS,
            slot_dir: paths::Locations::for_this_process().slot_dir,
            grace: Duration::from_secs(30),
            compile_cache_dir: Some(paths::Locations::for_this_process().compile_cache_dir),
            compile_cache_bytes: 1024 * 1024 * 1024,
            max_redeliveries: 3,
            lease_renewal: Duration::from_secs(2),
        }
    }
}

/// A worker process's shared state. Its methods are spread by step over the crate's
/// files: see the table in the crate documentation (`handle` → `process` in `job.rs`).
pub struct Worker {
    broker: SharedBroker,
    sandbox: Arc<Sandbox>,
    catalogue: Arc<Catalogue>,
    config: WorkerConfig,
    slots: Arc<Slots>,
    /// Fired when the grace period is over: running jobs are abandoned unacknowledged.
    hard_stop: CancellationToken,
    running: AtomicU32,
    /// Test-only fault switch (`VERDICT_TEST_CRASH_MARKER`): a job whose source contains
    /// the marker aborts the worker process, to test poison-job handling. Unset in
    /// production, where it changes nothing.
    crash_marker: Option<String>,
    /// Stored problems, and this worker's cache of their versions, data and checkers.
    problems: verdict_broker::SharedProblems,
    problem_cache: problem::ProblemCache,
}

impl Worker {
    /// Claims the sandbox slots; fails when fewer than `concurrency` are free.
    pub fn new(
        broker: SharedBroker,
        sandbox: Arc<Sandbox>,
        catalogue: Arc<Catalogue>,
        config: WorkerConfig,
        problems: verdict_broker::SharedProblems,
    ) -> Result<Arc<Self>, std::io::Error> {
        let slots = Slots::claim(&config.slot_dir, config.concurrency)?;
        let crash_marker = std::env::var("VERDICT_TEST_CRASH_MARKER")
            .ok()
            .filter(|m| !m.is_empty());
        Ok(Arc::new(Worker {
            broker,
            sandbox,
            catalogue,
            config,
            slots,
            hard_stop: CancellationToken::new(),
            running: AtomicU32::new(0),
            crash_marker,
            problems,
            problem_cache: problem::ProblemCache::default(),
        }))
    }

    /// Takes jobs until `shutdown` fires, then lets running jobs finish (up to the grace
    /// period) and returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let tracker = TaskTracker::new();
        let heartbeat = tokio::spawn(Arc::clone(&self).heartbeats());
        let mut backoff = Duration::from_millis(50);
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = self.broker.next_job(&self.config.consumer, Duration::from_secs(2)) => next,
            };
            match next {
                Ok(Some(delivery)) => {
                    backoff = Duration::from_millis(50);
                    let worker = Arc::clone(&self);
                    // Every log line about this job carries its submission id.
                    let span = tracing::info_span!(
                        "job",
                        submission = %delivery.job.submission.id,
                        language = %delivery.job.request.language
                    );
                    tracker.spawn(
                        async move {
                            worker.handle(delivery).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take jobs; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracker.close();
        if tokio::time::timeout(self.config.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "grace period over; unfinished jobs stay unacknowledged and will be redelivered"
            );
            self.hard_stop.cancel();
            tracker.wait().await;
        }
        heartbeat.abort();
    }

    /// Tells the broker this worker is alive and how busy it is, every
    /// [`verdict_broker::HEARTBEAT_INTERVAL`]: a worker silent for a few of those is
    /// presumed dead and its jobs are taken back by the next worker that asks, so a
    /// crash costs seconds, not the visibility timeout.
    async fn heartbeats(self: Arc<Self>) {
        let slots = u32::try_from(self.config.concurrency).unwrap_or(u32::MAX);
        // The languages whose toolchain was found at start-up: servers refuse a submission
        // that no live worker can run.
        let toolchains = self.catalogue.toolchains();
        loop {
            let running = self.running.load(Ordering::Relaxed);
            if let Err(e) = self
                .broker
                .heartbeat(&self.config.consumer, running, slots, &toolchains)
                .await
            {
                tracing::debug!(error = %e, "heartbeat failed");
            }
            tokio::time::sleep(verdict_broker::HEARTBEAT_INTERVAL).await;
        }
    }

    /// Renews the delivery's lease until dropped.
    async fn keep_lease(&self, delivery: &Delivery) {
        loop {
            tokio::time::sleep(self.config.lease_renewal).await;
            match self.broker.renew(delivery).await {
                Ok(true) => {}
                Ok(false) => {
                    // Another worker took it over; the first final write wins, so
                    // running on is harmless. Stop renewing, keep running.
                    tracing::warn!(submission = %delivery.job.submission.id, "lease lost to another worker");
                    std::future::pending::<()>().await;
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
            }
        }
    }

    /// Handles one delivery to the end: judged, or finished as INTERNAL_ERROR with the
    /// cause logged. Never leaves the submission hanging. Public so tests can drive one
    /// job at a time.
    pub async fn handle(&self, delivery: Delivery) {
        let id = delivery.job.submission.id.clone();
        if delivery.redeliveries >= self.config.max_redeliveries {
            let message = format!(
                "internal error: this job was started {} times and its worker died each time; it is not retried",
                delivery.redeliveries + 1
            );
            tracing::error!(submission = %id, "{message}");
            self.give_up(&delivery, message).await;
            return;
        }
        if self
            .crash_marker
            .as_ref()
            .is_some_and(|m| delivery.job.request.source.contains(m.as_str()))
        {
            tracing::error!(submission = %id, "test fault switch: aborting the worker");
            std::process::abort();
        }
        let Some(slot) = self.slots.take() else {
            tracing::error!("no free sandbox slot although a permit was held");
            return;
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        tracing::info!(slot, redeliveries = delivery.redeliveries, "started");
        let result = tokio::select! {
            result = self.process(&delivery.job, slot) => Some(result),
            _ = self.keep_lease(&delivery) => None,
            _ = self.hard_stop.cancelled() => None,
        };
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.slots.put(slot);
        let Some(result) = result else {
            // Shutting down past the grace period: no ack, so another worker runs it.
            tracing::warn!(submission = %id, "abandoned at shutdown; it will be redelivered");
            return;
        };
        if let Err(e) = result {
            tracing::error!(submission = %id, error = %e, "internal error while judging");
            self.give_up(
                &delivery,
                "internal error: the judge failed; the cause is logged".into(),
            )
            .await;
            return;
        }
        if let Err(e) = self.broker.ack(&delivery).await {
            tracing::warn!(submission = %id, error = %e, "ack failed; the job may run again");
        }
    }

    /// Finishes a submission as INTERNAL_ERROR and acknowledges its job.
    async fn give_up(&self, delivery: &Delivery, message: String) {
        let id = &delivery.job.submission.id;
        let mut submission = delivery.job.submission.clone();
        submission.message = Some(message);
        submission.finish(Verdict::InternalError);
        if let Err(e) = self.broker.finish(&submission).await {
            tracing::error!(submission = %id, error = %e, "cannot store the internal-error outcome");
            return; // not acked: it will be redelivered
        }
        if let Err(e) = self.broker.ack(delivery).await {
            tracing::warn!(submission = %id, error = %e, "ack failed; the job may run again");
        }
    }
}

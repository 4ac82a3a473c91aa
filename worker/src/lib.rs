//! The worker: takes jobs from the broker, judges them in the sandbox and publishes every
//! step. Many jobs run at once, one per sandbox slot.

mod error;
mod job;
pub mod judge;
mod slots;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
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
    /// Where slot lock files live (shared by all workers of one machine).
    pub slot_dir: PathBuf,
    /// On shutdown, how long running jobs may take to finish.
    pub grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            consumer: format!("worker-{}", std::process::id()),
            compile_limits: Limits {
                cpu_time_ms: 15_000,
                wall_time_ms: 30_000,
                memory_kb: 512 * 1024,
                output_bytes: 256 * 1024,
                processes: 64,
            },
            slot_dir: PathBuf::from("/tmp/verdict-slots"),
            grace: Duration::from_secs(30),
        }
    }
}

/// A worker process's shared state.
pub struct Worker {
    broker: SharedBroker,
    sandbox: Arc<Sandbox>,
    catalogue: Arc<Catalogue>,
    config: WorkerConfig,
    slots: Arc<Slots>,
}

impl Worker {
    /// Claims the sandbox slots; fails when fewer than `concurrency` are free.
    pub fn new(
        broker: SharedBroker,
        sandbox: Arc<Sandbox>,
        catalogue: Arc<Catalogue>,
        config: WorkerConfig,
    ) -> Result<Arc<Self>, std::io::Error> {
        let slots = Slots::claim(&config.slot_dir, config.concurrency)?;
        Ok(Arc::new(Worker {
            broker,
            sandbox,
            catalogue,
            config,
            slots,
        }))
    }

    /// Takes jobs until `shutdown` fires, then lets running jobs finish (up to the grace
    /// period) and returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let tracker = TaskTracker::new();
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
                    tracker.spawn(async move {
                        worker.handle(delivery).await;
                        drop(permit);
                    });
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
        }
    }

    /// Handles one delivery to the end: judged, or finished as INTERNAL_ERROR with the
    /// cause logged. Never leaves the submission hanging. Public so tests can drive one
    /// job at a time.
    pub async fn handle(&self, delivery: Delivery) {
        let Some(slot) = self.slots.take() else {
            tracing::error!("no free sandbox slot although a permit was held");
            return;
        };
        let id = delivery.job.submission.id.clone();
        let result = self.process(&delivery.job, slot).await;
        self.slots.put(slot);
        if let Err(e) = result {
            tracing::error!(submission = %id, error = %e, "internal error while judging");
            let mut submission = delivery.job.submission.clone();
            submission.message =
                Some("internal error: the judge failed; the cause is logged".into());
            submission.finish(Verdict::InternalError);
            if let Err(e) = self.broker.finish(&submission).await {
                tracing::error!(submission = %id, error = %e, "cannot store the internal-error outcome");
                return; // not acked: it will be redelivered
            }
        }
        if let Err(e) = self.broker.ack(&delivery).await {
            tracing::warn!(submission = %id, error = %e, "ack failed; the job may run again");
        }
    }
}

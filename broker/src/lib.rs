//! The broker: how jobs reach workers and how events reach subscribers.
//!
//! Two backends share one contract ([`Broker`]): Redis for many processes on many
//! machines, and memory for one standalone process. The same test suite runs against
//! both (`broker/tests/contract.rs`). Nothing here knows about GraphQL or sandboxes.

mod catalogue;
mod error;
mod feed;
mod filler;
mod hub;
mod latency;
mod memory;
mod once;
mod persist;
mod problems;
mod quota;
mod redis;
mod retention;
mod types;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use catalogue::{
    Catalogue, CatalogueError, Language, LimitBoost, LiveToolchains, Toolchains,
    LIVE_TOOLCHAINS_TTL,
};
pub use error::{BrokerError, Result};
pub use feed::{FeedBatch, FeedEntry, FeedRead, DEFAULT_FEED_MAX_LEN};
pub use filler::{Filler, Wanted};
pub use hub::{LiveEvents, Signal};
pub use latency::{Histogram, LATENCY_BUCKETS};
pub use memory::MemoryBroker;
pub use problems::*;
pub use quota::{ConnectionCount, RedisQuota};
pub use redis::{RedisBroker, RedisSettings};
pub use retention::{default_max_retained_mb, MAX_DEFAULT_RETAINED_MB};
pub use types::*;
pub use watch::{watch, EventStream};

/// A job handed to one worker, to be acknowledged once its outcome is stored.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Backend-specific delivery id (a stream entry id on Redis).
    pub id: String,
    /// The worker (consumer) it was delivered to.
    pub consumer: String,
    pub job: Job,
    /// How many times this job was delivered before (0 on first delivery).
    pub redeliveries: u64,
}

/// Tunables shared by both backends.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// How long a submission's record and event log live after their last write.
    pub ttl: Duration,
    /// Submits beyond this many waiting jobs are refused (0 = unbounded).
    pub max_queue: u64,
    /// A delivered job whose lease was not renewed for this long is given to another
    /// worker (its worker is presumed dead).
    pub visibility_timeout: Duration,
    /// Unfinished (queued or running) submissions one API key may have at once; 0 = no
    /// limit. Submissions without an owner are not counted.
    pub max_unfinished_per_owner: u64,
    /// The same for end users (owners `user:<sub>`, from JWTs); 0 = no limit.
    pub max_unfinished_per_user: u64,
    /// Bytes one submission may keep in its record and event log together (0 = no cap).
    /// Without it one submission within the output limits (100 tests x 64 MiB) could
    /// hold gigabytes until its TTL. Live output stops being logged once the log holds
    /// half of it; the final record is cut to fit the rest (`truncated` set).
    pub max_retained_bytes_per_submission: u64,
    /// The embedded broker only: bytes all records and logs may hold together before the
    /// oldest finished submissions are evicted early (0 = no budget). Unfinished ones are
    /// never evicted. On Redis, `maxmemory` plays this part. Default: a quarter of the
    /// machine's RAM, at most 1 GiB ([`default_max_retained_mb`]).
    pub max_retained_bytes: u64,
    /// A worker whose heartbeat is older than this is presumed dead: its jobs are taken
    /// back at once instead of after the visibility timeout. Workers refresh it every
    /// [`HEARTBEAT_INTERVAL`], so it must be a few of those.
    pub worker_alive: Duration,
    /// The verdict feed keeps about this many final records (feed.rs; `MAXLEN ~`).
    pub feed_max_len: u64,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            ttl: Duration::from_secs(24 * 3600),
            max_queue: 10_000,
            visibility_timeout: Duration::from_secs(10),
            max_unfinished_per_owner: 0,
            max_unfinished_per_user: 0,
            max_retained_bytes_per_submission: DEFAULT_MAX_RETAINED_PER_SUBMISSION,
            max_retained_bytes: retention::default_max_retained_mb() * 1024 * 1024,
            worker_alive: Duration::from_secs(3),
            feed_max_len: DEFAULT_FEED_MAX_LEN,
        }
    }
}

impl BrokerSettings {
    /// The unfinished-submission cap of `owner`: end users (`user:<sub>`) have their own.
    pub fn unfinished_cap(&self, owner: &str) -> u64 {
        if owner.starts_with("user:") {
            self.max_unfinished_per_user
        } else {
            self.max_unfinished_per_owner
        }
    }
}

/// Default of [`BrokerSettings::max_retained_bytes_per_submission`]: 64 MiB.
pub const DEFAULT_MAX_RETAINED_PER_SUBMISSION: u64 = 64 * 1024 * 1024;

/// How often a worker heartbeats; [`BrokerSettings::worker_alive`] is a few of these, so
/// a crashed worker's jobs come back within seconds.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The contract both backends keep. Event `seq` numbers are assigned here, atomically
/// with the append to the log and the publish, so they never repeat or go back, even
/// when two workers race on one submission.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Stores the record, publishes QueuedEvent (seq 1) and enqueues the job, atomically.
    async fn submit(&self, job: &Job) -> Result<Event>;

    /// The current record with its live status; `None` when unknown or expired.
    async fn submission(&self, id: &str) -> Result<Option<Submission>>;

    /// Appends a non-final event to the log and publishes it. `None` when the submission
    /// already finished (the event is discarded: someone else's final write won), or
    /// when an OutputEvent does not fit the submission's retained-output budget (live
    /// output stops; the record still gets the output). A TestFinishedEvent over the
    /// budget is stored with its output cut instead.
    async fn publish(&self, id: &str, kind: EventKind) -> Result<Option<Event>>;

    /// Stores the final record and publishes FinishedEvent, if no final write happened
    /// before. `None` when another writer (a cancel, a duplicate run) won. Test outputs
    /// that do not fit the retained-output budget are cut (`truncated` set); the final
    /// write itself is never refused for size.
    async fn finish(&self, submission: &Submission) -> Result<Option<Event>>;

    /// At most `limit` entries of the verdict feed (feed.rs) after entry id `after`
    /// (`"0"`: from the oldest kept), oldest first.
    async fn finished_after(&self, after: &str, limit: usize) -> Result<Vec<FeedEntry>>;

    /// The id of the feed's newest entry (`"0"` when empty): where a reader that wants
    /// only what finishes from now on starts.
    async fn feed_end(&self) -> Result<String>;

    /// Like [`Broker::finished_after`], but when nothing is there yet, waits up to `wait`
    /// for an entry (a blocking read: no polling).
    async fn feed_wait(&self, after: &str, limit: usize, wait: Duration) -> Result<Vec<FeedEntry>>;

    /// Reads the verdict feed as member `consumer` of consumer group `group` (created at
    /// the feed's end on first use), at most `count` entries; see [`FeedRead`]. Each
    /// entry handed out stays pending until [`Broker::feed_group_ack`]: at-least-once
    /// delivery for the readers of the feed (the webhook sender).
    async fn feed_group_read(
        &self,
        group: &str,
        consumer: &str,
        read: FeedRead,
        count: usize,
    ) -> Result<FeedBatch>;

    /// Ends the pending state of entries of `group`: they are done.
    async fn feed_group_ack(&self, group: &str, ids: &[String]) -> Result<()>;

    /// At most `limit` logged events with `seq > after`, in order. Paged so a subscriber
    /// catching up on a huge log never holds all of it at once. TestFinishedEvent and
    /// FinishedEvent come as stored, without their outputs ([`Event::outputs_in_record`]):
    /// [`Broker::outputs`] has them, read only when someone wants them.
    async fn events_after(&self, id: &str, after: u64, limit: usize) -> Result<Vec<Event>>;

    /// The outputs a stored event refers to: for `test: Some(k)`, test k's result while
    /// the final record does not hold it yet (or never will, after a cancel), else the
    /// final record. Each output byte is stored once, here.
    async fn outputs(&self, id: &str, test: Option<u32>) -> Result<Outputs>;

    /// Joins the live feed of `id`. Anything published after this returns is delivered.
    async fn subscribe(&self, id: &str) -> Result<LiveEvents>;

    /// Waits up to `wait` for the next job for `consumer`. Jobs of dead workers come
    /// first: those whose worker stopped heartbeating (after [`BrokerSettings::worker_alive`])
    /// or stopped renewing the lease (after the visibility timeout). A job whose owner
    /// still heartbeats or renews is never handed out again.
    async fn next_job(&self, consumer: &str, wait: Duration) -> Result<Option<Delivery>>;

    /// Marks a delivery done so it is never redelivered.
    async fn ack(&self, delivery: &Delivery) -> Result<()>;

    /// Renews the lease on a delivery that is still being worked on, so it is not
    /// handed to another worker. Call well within the visibility timeout.
    /// Returns false when the lease was already lost to another worker.
    async fn renew(&self, delivery: &Delivery) -> Result<bool>;

    /// Records that worker `consumer` is alive, how busy it is and which languages it
    /// can run. Call every [`HEARTBEAT_INTERVAL`]: a worker silent for
    /// [`BrokerSettings::worker_alive`] is presumed dead and its jobs go to the next
    /// worker that asks.
    async fn heartbeat(
        &self,
        consumer: &str,
        running: u32,
        slots: u32,
        toolchains: &Toolchains,
    ) -> Result<()>;

    /// The union of the toolchains of the workers alive right now (heartbeat within
    /// [`BrokerSettings::worker_alive`]); `None` when no worker is alive, or when one
    /// does not report its toolchains (nobody can tell what is missing).
    async fn live_toolchains(&self) -> Result<Option<Toolchains>>;

    /// Queue and worker figures for `stats` and metrics.
    async fn stats(&self) -> Result<QueueStats>;

    /// Jobs waiting or in flight.
    async fn queue_len(&self) -> Result<u64>;

    /// Succeeds when the backend is reachable (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Number of submissions this process watches live (metrics, tests).
    fn watched(&self) -> usize;

    /// Times this process's connections to the backend were re-established (metrics);
    /// always 0 in memory.
    fn reconnects(&self) -> u64 {
        0
    }
}

/// Puts the outputs back into a stored event ([`Event::outputs_in_record`]) from the
/// record, so it reads exactly as the live event did. A no-op for complete events.
pub async fn fill(broker: &dyn Broker, event: &mut Event) -> Result<()> {
    if !event.outputs_in_record {
        return Ok(());
    }
    let test = match &event.kind {
        EventKind::TestFinished { result } => Some(result.index),
        _ => None,
    };
    let outputs = broker.outputs(&event.submission_id, test).await?;
    event.fill(&outputs);
    Ok(())
}

/// A worker as seen through its heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    pub last_heartbeat: chrono::DateTime<chrono::Utc>,
    pub running: u32,
    pub slots: u32,
    /// The languages it can run, with their toolchain versions; `None` from a worker
    /// that does not report them (an older version): then nobody refuses a language.
    #[serde(default)]
    pub toolchains: Option<Toolchains>,
}

/// What is in the queue right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs not yet taken by any worker.
    pub waiting: u64,
    /// Jobs taken but not acknowledged (running, or on a dead worker until reclaimed).
    pub pending: u64,
    /// Workers with a heartbeat in the last 30 s.
    pub workers: Vec<WorkerInfo>,
    /// Finished submissions by verdict (`ACCEPTED`, ...), since the broker's data began.
    pub verdicts: Vec<(String, u64)>,
    /// Queued → started, over finished submissions that had started (all servers).
    pub queue_wait: Histogram,
    /// Started → finished (all servers).
    pub run_time: Histogram,
    /// What the broker keeps in memory, when it can tell: the embedded broker's estimate
    /// of its records and logs, or Redis's `used_memory`.
    pub retained_bytes: Option<u64>,
    /// The bound on it: `--max-retained-mb`, or Redis's `maxmemory` (0 = none).
    pub retained_budget_bytes: Option<u64>,
}

/// Heartbeats older than this mean the worker is gone.
pub const WORKER_STALE: Duration = Duration::from_secs(30);

/// Shared handle used by the server and the worker.
pub type SharedBroker = Arc<dyn Broker>;

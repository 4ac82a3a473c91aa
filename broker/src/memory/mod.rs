//! The embedded broker for `verdict standalone`: the same queue, log and fan-out as the
//! Redis backend, held in this process. A product feature, not a test double: the broker
//! contract tests run against it and against Redis alike.
//!
//! Its state can be kept on disk with `--data-dir` (load.rs, persist.rs); the verdict
//! feed's consumer groups are in groups.rs.

mod groups;
mod load;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::Notify;

use crate::error::{BrokerError, Result};
use crate::hub::{Hub, LiveEvents, HUB_CAPACITY};
use crate::latency::{Histogram, JobLatency};
use crate::once;
use crate::persist::{Op, Store};
use crate::retention;
use crate::types::{wire_name, Event, EventKind, Job, Outputs, Status, Submission, TestResult};
use crate::{
    Broker, BrokerSettings, Delivery, FeedBatch, FeedRead, QueueStats, Toolchains, WorkerInfo,
    WORKER_STALE,
};

/// Heap bytes assumed for an event or a record beside its text: the estimate the memory
/// budgets count in (serializing every event just to measure it would cost more CPU than
/// the rest of a submission).
const EVENT_OVERHEAD: usize = 256;
/// The same for one test result.
const RESULT_OVERHEAD: usize = 128;

fn result_size(r: &TestResult) -> usize {
    RESULT_OVERHEAD + r.stdout.len() + r.stderr.len()
}

fn submission_size(s: &Submission) -> usize {
    EVENT_OVERHEAD
        + s.id.len()
        + s.compile_output.as_ref().map_or(0, String::len)
        + s.message.as_ref().map_or(0, String::len)
        + s.tests.iter().map(result_size).sum::<usize>()
}

/// The final record plus the log's FinishedEvent, which refers to the record instead
/// of copying it.
fn final_size(s: &Submission) -> usize {
    submission_size(s) + EVENT_OVERHEAD
}

/// What an event adds where it is kept: the log's copy, plus for TestFinishedEvent the
/// result with its output, kept beside the log until the final record takes it over.
fn event_size(kind: &EventKind) -> usize {
    EVENT_OVERHEAD
        + match kind {
            EventKind::Output { chunk, .. } => chunk.len(),
            EventKind::TestFinished { result } => RESULT_OVERHEAD + result_size(result),
            EventKind::Finished { .. } => 0,
            _ => 0,
        }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

struct Record {
    submission: Submission,
    seq: u64,
    done: bool,
    /// The log, as stored: TestFinishedEvent and FinishedEvent without their outputs.
    log: Vec<Event>,
    /// The results (with output) of finished tests, by index, until the final record
    /// holds them: what the log's TestFinishedEvents refer to meanwhile.
    results: BTreeMap<u32, TestResult>,
    expires: Instant,
    /// Estimated bytes of the log.
    log_bytes: u64,
    /// Estimated bytes of the record and the log together (what the budgets count).
    bytes: u64,
}

struct Lease {
    job: Job,
    /// The consumer it was last delivered to.
    consumer: String,
    expires: Instant,
    /// When it was delivered or renewed last.
    renewed: Instant,
    deliveries: u64,
}

#[derive(Default)]
struct State {
    records: HashMap<String, Record>,
    queue: VecDeque<(u64, Job)>,
    in_flight: HashMap<u64, Lease>,
    next_delivery: u64,
    last_sweep: Option<Instant>,
    workers: HashMap<String, WorkerInfo>,
    /// When each consumer last showed a sign of life (heartbeat, renew, asking for work).
    alive: HashMap<String, Instant>,
    /// Finished submissions, oldest first: the eviction order of the memory budget.
    finished: VecDeque<String>,
    /// Estimated bytes of all records and logs.
    retained: u64,
    /// Unfinished submissions per owner (the per-key quota).
    unfinished: HashMap<String, u64>,
    /// Finished submissions by verdict.
    verdicts: HashMap<String, u64>,
    queue_wait: Histogram,
    run_time: Histogram,
    /// The verdict feed (feed.rs): (entry number, submission id), oldest first, capped at
    /// `feed_max_len`; `feed_next` numbers the next entry. Only the id: the record itself
    /// is read from `records` when the feed is read, so the feed holds no second copy
    /// outside the `--max-retained-mb` budget (a record the budget or the TTL removed
    /// drops out of the feed with it).
    feed: VecDeque<(u64, String)>,
    feed_next: u64,
    /// The feed's consumer groups, by name.
    groups: HashMap<String, groups::Group>,
}

/// In-process broker with Redis' semantics.
pub struct MemoryBroker {
    state: Mutex<State>,
    jobs: Notify,
    /// Woken when the feed grows, for group reads waiting for new entries.
    feed_ready: Notify,
    hub: Arc<Hub>,
    settings: BrokerSettings,
    /// The `--data-dir` journal; `None` keeps everything in memory only.
    store: Option<Store>,
}

impl MemoryBroker {
    /// A fresh, empty broker. Inside a Tokio runtime it also expires records on a timer,
    /// so an idle process gives their memory back instead of waiting for the next request.
    pub fn new(settings: BrokerSettings) -> Arc<Self> {
        Self::with_state(settings, State::default(), None)
    }

    fn with_state(settings: BrokerSettings, state: State, store: Option<Store>) -> Arc<Self> {
        let period = (settings.ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let broker = Arc::new(MemoryBroker {
            state: Mutex::new(state),
            jobs: Notify::new(),
            feed_ready: Notify::new(),
            hub: Hub::new(HUB_CAPACITY, None),
            settings,
            store,
        });
        broker.evict(&mut broker.state());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&broker);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    // Ends with the broker: the task holds no strong reference.
                    let Some(broker) = weak.upgrade() else { break };
                    let mut state = broker.state();
                    broker.expire(&mut state, Instant::now());
                }
            });
        }
        broker
    }

    /// Estimated bytes all records and logs hold (what `--max-retained-mb` bounds).
    pub fn retained_bytes(&self) -> u64 {
        self.state().retained
    }

    /// Drops expired records now.
    fn expire(&self, state: &mut State, now: Instant) {
        state.last_sweep = Some(now);
        let mut freed = 0;
        state.records.retain(|id, r| {
            let keep = r.expires > now;
            if !keep {
                freed += r.bytes;
                self.save(|| Some(Op::Drop { id: id.clone() }));
            }
            keep
        });
        state.retained = state.retained.saturating_sub(freed);
        if freed > 0 {
            let State {
                records, finished, ..
            } = state;
            finished.retain(|id| records.contains_key(id));
            records.shrink_to_fit();
        }
    }

    /// Evicts the oldest finished submissions while the total is over the budget. An
    /// unfinished one is never evicted: its worker still writes to it and a client waits.
    /// Nor is the newest finished one: its client has just been told it finished and
    /// may read the record next.
    fn evict(&self, state: &mut State) {
        let budget = self.settings.max_retained_bytes;
        if budget == 0 {
            return;
        }
        while state.retained > budget && state.finished.len() > 1 {
            let Some(id) = state.finished.pop_front() else {
                break;
            };
            if let Some(record) = state.records.remove(&id) {
                self.save(|| Some(Op::Drop { id: id.clone() }));
                state.retained = state.retained.saturating_sub(record.bytes);
                tracing::debug!(submission = %id, bytes = record.bytes, "evicted a finished submission: memory budget");
            }
        }
    }

    /// Notes a sign of life of `consumer`.
    fn seen(state: &mut State, consumer: &str, now: Instant) {
        match state.alive.get_mut(consumer) {
            Some(t) => *t = now,
            None => {
                state.alive.insert(consumer.to_owned(), now);
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops expired records, at most once a minute, while the lock is held anyway.
    fn sweep(&self, state: &mut State, now: Instant) {
        if state
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        self.expire(state, now);
    }

    /// Appends to the log (the stored copy; a test result's output goes beside it);
    /// returns the complete event and the bytes it added.
    fn append(&self, record: &mut Record, kind: EventKind) -> (Event, u64) {
        let size = to_u64(event_size(&kind));
        record.log_bytes += size;
        record.bytes += size;
        record.seq += 1;
        if let Some(status) = kind.status() {
            record.submission.status = status;
        }
        record.expires = Instant::now() + self.settings.ttl;
        let event = Event {
            seq: record.seq,
            submission_id: record.submission.id.clone(),
            at: Utc::now(),
            outputs_in_record: false,
            slice: None,
            kind,
        };
        let stored = event.stored();
        self.save_event(&stored);
        record.log.push(stored);
        let mut event = event;
        if let EventKind::TestFinished { result } = &mut event.kind {
            // Kept whole beside the log; subscribers get the event's cut copy.
            self.save_result(&record.submission.id, result);
            let live = result.for_event();
            record
                .results
                .insert(result.index, std::mem::replace(result, live));
        }
        (event, size)
    }

    /// Turns the log's OutputEvents of the run the final record holds into references
    /// into it (see [`crate::once`]); returns the chunk bytes that left the log.
    fn refer_to_record(record: &mut Record) -> usize {
        // The chunks of each test's last run: a RunningEvent starts a test's run afresh.
        let mut chunks: Vec<(usize, once::Chunk)> = Vec::new();
        for (i, event) in record.log.iter().enumerate() {
            match &event.kind {
                EventKind::Running { test, .. } => chunks.retain(|(_, c)| c.test != *test),
                EventKind::Output {
                    test,
                    stream,
                    chunk,
                } if !event.outputs_in_record => chunks.push((
                    i,
                    once::Chunk {
                        seq: event.seq,
                        test: *test,
                        stream: *stream,
                        len: chunk.len(),
                        hash: once::hash(chunk),
                    },
                )),
                _ => {}
            }
        }
        let at: HashMap<u64, usize> = chunks.iter().map(|(i, c)| (c.seq, *i)).collect();
        let plain: Vec<once::Chunk> = chunks.into_iter().map(|(_, c)| c).collect();
        let mut moved = 0;
        for (seq, offset) in once::offsets(&plain, &record.submission) {
            let Some(&i) = at.get(&seq) else { continue };
            if let Some(reference) = record.log[i].chunk_ref(offset) {
                if let EventKind::Output { chunk, .. } = &record.log[i].kind {
                    moved += chunk.len();
                }
                record.log[i] = reference;
            }
        }
        moved
    }

    /// The feed's entries after id `after` whose records are kept, oldest first.
    fn entries_after(&self, after: &str, limit: usize) -> Vec<crate::FeedEntry> {
        let after = groups::entry_number(after);
        let state = self.state();
        state
            .feed
            .iter()
            .filter(|(n, _)| *n > after)
            .filter_map(|(n, id)| {
                let record = state.records.get(id).filter(|r| r.done)?;
                Some(crate::FeedEntry {
                    id: format!("{n}-0"),
                    submission: record.submission.clone(),
                })
            })
            .take(limit.max(1))
            .collect()
    }

    /// Room the log still has for output-bearing events (`None`: no cap).
    fn log_room(&self, record: &Record) -> Option<u64> {
        let cap = self.settings.max_retained_bytes_per_submission;
        (cap > 0).then(|| retention::log_share(cap).saturating_sub(record.log_bytes))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn submit(&self, job: &Job) -> Result<Event> {
        let event = {
            let mut state = self.state();
            let now = Instant::now();
            self.sweep(&mut state, now);
            let waiting = state.queue.len() as u64;
            if self.settings.max_queue > 0 && waiting >= self.settings.max_queue {
                return Err(BrokerError::QueueFull(waiting));
            }
            if let Some(owner) = &job.submission.owner {
                let cap = self.settings.unfinished_cap(owner);
                let busy = state.unfinished.entry(owner.clone()).or_default();
                if cap > 0 && *busy >= cap {
                    return Err(BrokerError::OwnerBusy(*busy));
                }
                *busy += 1;
            }
            let record_bytes = to_u64(submission_size(&job.submission));
            let mut record = Record {
                submission: job.submission.clone(),
                seq: 0,
                done: false,
                log: Vec::new(),
                results: BTreeMap::new(),
                expires: now + self.settings.ttl,
                log_bytes: 0,
                bytes: record_bytes,
            };
            let (event, _) = self.append(
                &mut record,
                EventKind::Queued {
                    position: Some(waiting + 1),
                },
            );
            state.retained += record.bytes;
            self.save_record(&record);
            state.records.insert(job.submission.id.clone(), record);
            let delivery = state.next_delivery;
            state.next_delivery += 1;
            self.save(|| {
                Some(Op::Enqueue {
                    n: delivery,
                    json: serde_json::to_vec(job).ok()?,
                })
            });
            self.save(|| {
                Some(Op::Meta {
                    key: load::NEXT_DELIVERY,
                    value: delivery + 1,
                })
            });
            state.queue.push_back((delivery, job.clone()));
            event
        };
        // The id goes back to the client only once a restart would keep it.
        self.synced().await?;
        self.jobs.notify_one();
        self.hub.deliver(event.clone());
        Ok(event)
    }

    async fn submission(&self, id: &str) -> Result<Option<Submission>> {
        let state = self.state();
        Ok(state
            .records
            .get(id)
            .filter(|r| r.expires > Instant::now())
            .map(|r| r.submission.clone()))
    }

    async fn publish(&self, id: &str, mut kind: EventKind) -> Result<Option<Event>> {
        let event = {
            let mut guard = self.state();
            let state = &mut *guard;
            let Some(record) = state.records.get_mut(id) else {
                return Err(BrokerError::NotFound(id.to_owned()));
            };
            if record.done {
                return Ok(None);
            }
            if let Some(room) = self.log_room(record) {
                let room = usize::try_from(room).unwrap_or(usize::MAX);
                if retention::carries_output(&kind) && event_size(&kind) > room {
                    match &mut kind {
                        EventKind::TestFinished { result } => {
                            retention::fit_tests(std::slice::from_mut(result), room, |t| {
                                EVENT_OVERHEAD
                                    + t.iter()
                                        .map(|r| RESULT_OVERHEAD + result_size(r))
                                        .sum::<usize>()
                            });
                        }
                        // Live output over the budget is not kept: the record has it.
                        _ => return Ok(None),
                    }
                }
            }
            let (event, size) = self.append(record, kind);
            state.retained += size;
            event
        };
        self.hub.deliver(event.clone());
        Ok(Some(event))
    }

    async fn finish(&self, submission: &Submission) -> Result<Option<Event>> {
        let event = {
            let mut guard = self.state();
            let State {
                records,
                unfinished,
                verdicts,
                queue_wait,
                run_time,
                finished,
                retained,
                feed,
                feed_next,
                ..
            } = &mut *guard;
            let Some(record) = records.get_mut(&submission.id) else {
                return Err(BrokerError::NotFound(submission.id.clone()));
            };
            if record.done {
                return Ok(None);
            }
            record.done = true;
            if let Some(owner) = &record.submission.owner {
                if let Some(busy) = unfinished.get_mut(owner) {
                    *busy = busy.saturating_sub(1);
                }
            }
            if let Some(verdict) = submission.verdict {
                *verdicts.entry(wire_name(verdict)).or_default() += 1;
            }
            let latency = JobLatency::of(submission);
            if let Some(d) = latency.queued {
                queue_wait.observe(d);
            }
            if let Some(d) = latency.run {
                run_time.observe(d);
            }
            let mut last = submission.clone();
            last.status = Status::Finished;
            // The record takes over the results it holds: their separate copies go.
            let mut freed = 0;
            for test in &last.tests {
                if let Some(r) = record.results.remove(&test.index) {
                    freed += to_u64(result_size(&r));
                }
            }
            record.log_bytes = record.log_bytes.saturating_sub(freed);
            record.bytes = record.bytes.saturating_sub(freed);
            *retained = retained.saturating_sub(freed);
            let cap = self.settings.max_retained_bytes_per_submission;
            if cap > 0 {
                // The record and its FinishedEvent share what the log left over.
                let room =
                    usize::try_from(cap.saturating_sub(record.log_bytes)).unwrap_or(usize::MAX);
                retention::fit_submission(&mut last, room, final_size);
            }
            let old = to_u64(submission_size(&record.submission));
            let new = to_u64(submission_size(&last));
            let (event, size) = self.append(
                record,
                EventKind::Finished {
                    submission: Box::new(last.for_event()),
                },
            );
            // The verdict feed: appended here, at the first final write only.
            *feed_next += 1;
            feed.push_back((*feed_next, last.id.clone()));
            self.save(|| {
                Some(Op::Feed {
                    n: *feed_next,
                    id: last.id.clone(),
                })
            });
            self.save(|| {
                Some(Op::Meta {
                    key: load::FEED_NEXT,
                    value: *feed_next,
                })
            });
            let cap = usize::try_from(self.settings.feed_max_len.max(1)).unwrap_or(usize::MAX);
            let mut trimmed = false;
            while feed.len() > cap {
                feed.pop_front();
                trimmed = true;
            }
            if trimmed {
                if let Some((below, _)) = feed.front() {
                    self.save(|| Some(Op::FeedTrim { below: *below }));
                }
            }
            record.submission = last;
            let moved = to_u64(Self::refer_to_record(record));
            self.save_final(record);
            record.log_bytes = record.log_bytes.saturating_sub(moved);
            record.bytes = (record.bytes + new).saturating_sub(old + moved);
            *retained = (*retained + size + new).saturating_sub(old + moved);
            finished.push_back(submission.id.clone());
            self.evict(&mut guard);
            event
        };
        self.feed_ready.notify_waiters();
        // No client hears of a verdict that a restart would lose.
        self.synced().await?;
        self.hub.deliver(event.clone());
        Ok(Some(event))
    }

    async fn outputs(&self, id: &str, test: Option<u32>) -> Result<Outputs> {
        let state = self.state();
        let Some(record) = state.records.get(id).filter(|r| r.expires > Instant::now()) else {
            return Ok(Outputs::Gone);
        };
        if let Some(result) = test.and_then(|k| record.results.get(&k)) {
            return Ok(Outputs::Test(result.clone()));
        }
        Ok(if record.done {
            Outputs::Record(record.submission.clone())
        } else {
            Outputs::Gone
        })
    }

    async fn finished_after(&self, after: &str, limit: usize) -> Result<Vec<crate::FeedEntry>> {
        Ok(self.entries_after(after, limit))
    }

    async fn feed_end(&self) -> Result<String> {
        Ok(self
            .state()
            .feed
            .back()
            .map_or_else(|| "0".to_owned(), |(n, _)| format!("{n}-0")))
    }

    async fn feed_wait(
        &self,
        after: &str,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<crate::FeedEntry>> {
        self.feed_wait_for(after, limit, wait).await
    }

    async fn feed_group_read(
        &self,
        group: &str,
        consumer: &str,
        read: FeedRead,
        count: usize,
    ) -> Result<FeedBatch> {
        self.group_read(group, consumer, read, count).await
    }

    async fn feed_group_ack(&self, group: &str, ids: &[String]) -> Result<()> {
        self.group_ack(&mut self.state(), group, ids);
        Ok(())
    }

    async fn events_after(&self, id: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        let state = self.state();
        Ok(state
            .records
            .get(id)
            .map(|r| {
                r.log
                    .iter()
                    .skip(usize::try_from(after).unwrap_or(usize::MAX))
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn subscribe(&self, id: &str) -> Result<LiveEvents> {
        Ok(self.hub.join(id).await)
    }

    async fn next_job(&self, consumer: &str, wait: Duration) -> Result<Option<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.jobs.notified();
            {
                let mut guard = self.state();
                let state = &mut *guard;
                let now = Instant::now();
                Self::seen(state, consumer, now);
                let expires = now + self.settings.visibility_timeout;
                let alive = self.settings.worker_alive;
                // A lease nobody renewed, or whose worker stopped heartbeating, belongs to
                // a dead worker: hand it out again.
                let dead = |l: &Lease| {
                    now.duration_since(l.renewed) >= alive
                        && state
                            .alive
                            .get(&l.consumer)
                            .is_none_or(|t| now.duration_since(*t) >= alive)
                };
                let stale = state
                    .in_flight
                    .iter()
                    .find(|(_, l)| l.expires <= now || dead(l))
                    .map(|(&id, _)| id);
                if let Some(id) = stale {
                    if let Some(lease) = state.in_flight.get_mut(&id) {
                        lease.expires = expires;
                        lease.renewed = now;
                        lease.consumer = consumer.to_owned();
                        lease.deliveries += 1;
                        let job = lease.job.clone();
                        let redeliveries = lease.deliveries - 1;
                        return Ok(Some(Delivery {
                            id: id.to_string(),
                            consumer: consumer.to_owned(),
                            job,
                            redeliveries,
                        }));
                    }
                }
                if let Some((id, job)) = state.queue.pop_front() {
                    let lease = Lease {
                        job: job.clone(),
                        consumer: consumer.to_owned(),
                        expires,
                        renewed: now,
                        deliveries: 1,
                    };
                    state.in_flight.insert(id, lease);
                    return Ok(Some(Delivery {
                        id: id.to_string(),
                        consumer: consumer.to_owned(),
                        job,
                        redeliveries: 0,
                    }));
                }
            }
            // Wake up at least once a second to look for expired leases.
            let nap = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            if tokio::time::timeout_at(nap, notified).await.is_err() && nap >= deadline {
                return Ok(None);
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<()> {
        if let Ok(id) = delivery.id.parse::<u64>() {
            self.state().in_flight.remove(&id);
            self.save(|| Some(Op::Dequeue { n: id }));
        }
        Ok(())
    }

    async fn renew(&self, delivery: &Delivery) -> Result<bool> {
        // In one process a lease is only lost if its holder stopped renewing it.
        let Ok(id) = delivery.id.parse::<u64>() else {
            return Ok(false);
        };
        let mut guard = self.state();
        let state = &mut *guard;
        let now = Instant::now();
        Self::seen(state, &delivery.consumer, now);
        Ok(match state.in_flight.get_mut(&id) {
            // Only its holder renews it: a worker that lost it to a reclaim must not
            // take it back.
            Some(lease) if lease.consumer == delivery.consumer => {
                lease.expires = now + self.settings.visibility_timeout;
                lease.renewed = now;
                true
            }
            _ => false,
        })
    }

    async fn heartbeat(
        &self,
        consumer: &str,
        running: u32,
        slots: u32,
        toolchains: &Toolchains,
    ) -> Result<()> {
        let info = WorkerInfo {
            name: consumer.to_owned(),
            last_heartbeat: Utc::now(),
            running,
            slots,
            toolchains: Some(toolchains.clone()),
        };
        let mut state = self.state();
        Self::seen(&mut state, consumer, Instant::now());
        state.workers.insert(consumer.to_owned(), info);
        Ok(())
    }

    async fn live_toolchains(&self) -> Result<Option<Toolchains>> {
        let state = self.state();
        let now = Instant::now();
        let alive = self.settings.worker_alive;
        let mut live = None;
        for info in state.workers.values() {
            let is_alive = state
                .alive
                .get(&info.name)
                .is_some_and(|t| now.duration_since(*t) < alive);
            if is_alive {
                let Some(toolchains) = &info.toolchains else {
                    return Ok(None);
                };
                let all: &mut Toolchains = live.get_or_insert_with(Toolchains::new);
                for (id, version) in toolchains {
                    all.entry(id.clone()).or_insert_with(|| version.clone());
                }
            }
        }
        Ok(live)
    }

    async fn stats(&self) -> Result<QueueStats> {
        let mut state = self.state();
        let cutoff = Utc::now() - chrono::Duration::from_std(WORKER_STALE).unwrap_or_default();
        state.workers.retain(|_, w| w.last_heartbeat >= cutoff);
        let gone = Instant::now().checked_sub(WORKER_STALE);
        state.alive.retain(|_, t| gone.is_none_or(|g| *t >= g));
        let mut workers: Vec<WorkerInfo> = state.workers.values().cloned().collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut verdicts: Vec<(String, u64)> = state
            .verdicts
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        verdicts.sort();
        Ok(QueueStats {
            waiting: state.queue.len() as u64,
            pending: state.in_flight.len() as u64,
            workers,
            verdicts,
            queue_wait: state.queue_wait.clone(),
            run_time: state.run_time.clone(),
            retained_bytes: Some(state.retained),
            retained_budget_bytes: Some(self.settings.max_retained_bytes),
        })
    }

    async fn queue_len(&self) -> Result<u64> {
        let state = self.state();
        Ok((state.queue.len() + state.in_flight.len()) as u64)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn watched(&self) -> usize {
        self.hub.watched()
    }
}

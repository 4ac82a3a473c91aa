//! The embedded broker for `verdict standalone`: the same queue, log and fan-out as the
//! Redis backend, held in this process. A product feature, not a test double: the broker
//! contract tests run against it and against Redis alike.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::Notify;

use crate::error::{BrokerError, Result};
use crate::hub::{Hub, LiveEvents, HUB_CAPACITY};
use crate::latency::{Histogram, JobLatency};
use crate::types::{wire_name, Event, EventKind, Job, Status, Submission};
use crate::{Broker, BrokerSettings, Delivery, QueueStats, WorkerInfo, WORKER_STALE};

struct Record {
    submission: Submission,
    seq: u64,
    done: bool,
    log: Vec<Event>,
    expires: Instant,
}

struct Lease {
    job: Job,
    expires: Instant,
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
    /// Unfinished submissions per owner (the per-key quota).
    unfinished: HashMap<String, u64>,
    /// Finished submissions by verdict.
    verdicts: HashMap<String, u64>,
    queue_wait: Histogram,
    run_time: Histogram,
}

/// In-process broker with Redis' semantics.
pub struct MemoryBroker {
    state: Mutex<State>,
    jobs: Notify,
    hub: Arc<Hub>,
    settings: BrokerSettings,
}

impl MemoryBroker {
    /// A fresh, empty broker.
    pub fn new(settings: BrokerSettings) -> Arc<Self> {
        Arc::new(MemoryBroker {
            state: Mutex::new(State::default()),
            jobs: Notify::new(),
            hub: Hub::new(HUB_CAPACITY, None),
            settings,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops expired records, at most once a minute, while the lock is held anyway.
    fn sweep(state: &mut State, now: Instant) {
        if state
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        state.last_sweep = Some(now);
        state.records.retain(|_, r| r.expires > now);
    }

    fn append(&self, record: &mut Record, kind: EventKind) -> Event {
        record.seq += 1;
        if let Some(status) = kind.status() {
            record.submission.status = status;
        }
        record.expires = Instant::now() + self.settings.ttl;
        let event = Event {
            seq: record.seq,
            submission_id: record.submission.id.clone(),
            at: Utc::now(),
            kind,
        };
        record.log.push(event.clone());
        event
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn submit(&self, job: &Job) -> Result<Event> {
        let event = {
            let mut state = self.state();
            let now = Instant::now();
            Self::sweep(&mut state, now);
            let waiting = state.queue.len() as u64;
            if self.settings.max_queue > 0 && waiting >= self.settings.max_queue {
                return Err(BrokerError::QueueFull(waiting));
            }
            if let Some(owner) = &job.submission.owner {
                let cap = self.settings.max_unfinished_per_owner;
                let busy = state.unfinished.entry(owner.clone()).or_default();
                if cap > 0 && *busy >= cap {
                    return Err(BrokerError::OwnerBusy(*busy));
                }
                *busy += 1;
            }
            let mut record = Record {
                submission: job.submission.clone(),
                seq: 0,
                done: false,
                log: Vec::new(),
                expires: now + self.settings.ttl,
            };
            let event = self.append(
                &mut record,
                EventKind::Queued {
                    position: Some(waiting + 1),
                },
            );
            state.records.insert(job.submission.id.clone(), record);
            let delivery = state.next_delivery;
            state.next_delivery += 1;
            state.queue.push_back((delivery, job.clone()));
            event
        };
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

    async fn publish(&self, id: &str, kind: EventKind) -> Result<Option<Event>> {
        let event = {
            let mut state = self.state();
            let Some(record) = state.records.get_mut(id) else {
                return Err(BrokerError::NotFound(id.to_owned()));
            };
            if record.done {
                return Ok(None);
            }
            self.append(record, kind)
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
            let event = self.append(
                record,
                EventKind::Finished {
                    submission: Box::new(last.for_event()),
                },
            );
            record.submission = last;
            event
        };
        self.hub.deliver(event.clone());
        Ok(Some(event))
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
                let mut state = self.state();
                let now = Instant::now();
                let expires = now + self.settings.visibility_timeout;
                // A lease nobody renewed belongs to a dead worker: hand it out again.
                let stale = state
                    .in_flight
                    .iter()
                    .find(|(_, l)| l.expires <= now)
                    .map(|(&id, _)| id);
                if let Some(id) = stale {
                    if let Some(lease) = state.in_flight.get_mut(&id) {
                        lease.expires = expires;
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
                        expires,
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
        }
        Ok(())
    }

    async fn renew(&self, delivery: &Delivery) -> Result<bool> {
        // In one process a lease is only lost if its holder stopped renewing it.
        let Ok(id) = delivery.id.parse::<u64>() else {
            return Ok(false);
        };
        Ok(match self.state().in_flight.get_mut(&id) {
            Some(lease) => {
                lease.expires = Instant::now() + self.settings.visibility_timeout;
                true
            }
            None => false,
        })
    }

    async fn heartbeat(&self, consumer: &str, running: u32, slots: u32) -> Result<()> {
        let info = WorkerInfo {
            name: consumer.to_owned(),
            last_heartbeat: Utc::now(),
            running,
            slots,
        };
        self.state().workers.insert(consumer.to_owned(), info);
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats> {
        let mut state = self.state();
        let cutoff = Utc::now() - chrono::Duration::from_std(WORKER_STALE).unwrap_or_default();
        state.workers.retain(|_, w| w.last_heartbeat >= cutoff);
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

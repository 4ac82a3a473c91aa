//! `--data-dir` on the embedded broker: what each change writes to the journal
//! (persist.rs), and how a restart rebuilds the state from it.
//!
//! A restart keeps: every record and its log (a late subscriber replays them as before),
//! the results a running submission had, the queue, the verdict feed and its groups.
//! Jobs that workers held when the process died go back to the queue, in their order,
//! and run again from the start (their logs go on from the last `seq`, as after a worker
//! crash on Redis). A queued job whose record is already final is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{event_size, result_size, submission_size, to_u64, MemoryBroker, Record, State};
use crate::error::Result;
use crate::persist::{Op, Snapshot, Store};
use crate::types::{Event, Job, Submission, TestResult};
use crate::BrokerSettings;

/// Counter names in the journal's `meta` table.
pub(super) const NEXT_DELIVERY: &str = "next_delivery";
pub(super) const FEED_NEXT: &str = "feed_next";

/// A record as the journal keeps it, without its log and results (tables of their own).
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    submission: Submission,
    done: bool,
    /// When it expires (unix ms): an `Instant` does not survive a restart.
    expires_ms: i64,
}

fn instant_of(at_ms: i64, now: Instant) -> Instant {
    let left = at_ms.saturating_sub(Utc::now().timestamp_millis());
    now + Duration::from_millis(u64::try_from(left).unwrap_or(0))
}

fn unix_ms_of(at: Instant) -> i64 {
    let left = at.saturating_duration_since(Instant::now());
    Utc::now().timestamp_millis() + i64::try_from(left.as_millis()).unwrap_or(i64::MAX / 2)
}

impl MemoryBroker {
    /// The embedded broker with its state kept in `dir` (created if missing) and read
    /// back from it: `verdict standalone --data-dir DIR`.
    pub fn open(settings: BrokerSettings, dir: &Path) -> Result<Arc<Self>> {
        let (store, snapshot) = Store::open(dir)?;
        let state = rebuild(snapshot, &settings, &store);
        tracing::info!(
            dir = %dir.display(),
            records = state.records.len(),
            queued = state.queue.len(),
            "--data-dir: state read back"
        );
        Ok(Self::with_state(settings, state, Some(store)))
    }

    /// Sends a change to the journal, if there is one; `op` is only built then (the
    /// in-memory default pays nothing for serializing).
    pub(super) fn save(&self, op: impl FnOnce() -> Option<Op>) {
        if let Some(store) = &self.store {
            if let Some(op) = op() {
                store.send(op);
            }
        }
    }

    /// Waits until the journal holds every change made so far (a no-op in memory).
    pub(super) async fn synced(&self) -> Result<()> {
        match &self.store {
            Some(store) => store.sync().await,
            None => Ok(()),
        }
    }

    /// The journal's copy of a record (not its log).
    pub(super) fn save_record(&self, record: &Record) {
        self.save(|| {
            let stored = StoredRecord {
                submission: record.submission.clone(),
                done: record.done,
                expires_ms: unix_ms_of(record.expires),
            };
            Some(Op::Record {
                id: record.submission.id.clone(),
                json: serde_json::to_vec(&stored).ok()?,
            })
        });
    }

    pub(super) fn save_event(&self, event: &Event) {
        self.save(|| {
            Some(Op::Event {
                id: event.submission_id.clone(),
                seq: event.seq,
                json: serde_json::to_vec(event).ok()?,
            })
        });
    }

    pub(super) fn save_result(&self, id: &str, result: &TestResult) {
        self.save(|| {
            Some(Op::Result {
                id: id.to_owned(),
                index: result.index,
                json: serde_json::to_vec(result).ok()?,
            })
        });
    }

    /// A record's final state: the record, its rewritten log, no results beside it.
    pub(super) fn save_final(&self, record: &Record) {
        self.save_record(record);
        self.save(|| {
            let events = record
                .log
                .iter()
                .map(|e| Some((e.seq, serde_json::to_vec(e).ok()?)))
                .collect::<Option<Vec<_>>>()?;
            Some(Op::Log {
                id: record.submission.id.clone(),
                events,
            })
        });
        self.save(|| {
            Some(Op::DropResults {
                id: record.submission.id.clone(),
            })
        });
    }
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, key: &str, json: &[u8]) -> Option<T> {
    match serde_json::from_slice(json) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(what, key, error = %e, "--data-dir: an unreadable entry is skipped");
            None
        }
    }
}

/// The state the journal describes, with what no longer applies (expired records, jobs
/// of final records) removed from the journal too.
fn rebuild(snapshot: Snapshot, settings: &BrokerSettings, store: &Store) -> State {
    let now = Instant::now();
    let Snapshot {
        records,
        mut events,
        mut results,
        queue,
        feed,
        groups,
        meta,
    } = snapshot;
    let mut state = State {
        next_delivery: meta.get(NEXT_DELIVERY).copied().unwrap_or(0),
        feed_next: meta.get(FEED_NEXT).copied().unwrap_or(0),
        ..State::default()
    };
    let mut finished: Vec<(DateTime<Utc>, String)> = Vec::new();
    for (id, json) in records {
        let Some(stored) = parse::<StoredRecord>("record", &id, &json) else {
            continue;
        };
        let expires = instant_of(stored.expires_ms, now);
        if expires <= now {
            store.send(Op::Drop { id });
            continue;
        }
        let log: Vec<Event> = events
            .remove(&id)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(seq, json)| parse("event", &format!("{id}/{seq}"), &json))
            .collect();
        let kept: BTreeMap<u32, TestResult> = results
            .remove(&id)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(i, json)| Some((i, parse("result", &id, &json)?)))
            .collect();
        let mut submission = stored.submission;
        // The record is journaled at its first and final writes; the status in between
        // is the last one its log shows.
        if !stored.done {
            if let Some(status) = log.iter().rev().find_map(|e| e.kind.status()) {
                submission.status = status;
            }
        }
        let log_bytes = to_u64(
            log.iter().map(|e| event_size(&e.kind)).sum::<usize>()
                + kept.values().map(result_size).sum::<usize>(),
        );
        let bytes = log_bytes + to_u64(submission_size(&submission));
        if stored.done {
            finished.push((submission.finished_at.unwrap_or_default(), id.clone()));
        } else if let Some(owner) = &submission.owner {
            *state.unfinished.entry(owner.clone()).or_default() += 1;
        }
        state.retained += bytes;
        let record = Record {
            seq: log.last().map_or(0, |e| e.seq),
            submission,
            done: stored.done,
            log,
            results: kept,
            expires,
            log_bytes,
            bytes,
        };
        state.records.insert(id, record);
    }
    // Logs or results of records that are gone: left over from a crash mid-removal.
    for id in events.into_keys().chain(results.into_keys()) {
        if !state.records.contains_key(&id) {
            store.send(Op::Drop { id });
        }
    }
    finished.sort();
    state.finished = finished.into_iter().map(|(_, id)| id).collect();
    for (n, json) in queue {
        let job: Option<Job> = parse("job", &n.to_string(), &json);
        let runnable = job.filter(|j| state.records.get(&j.submission.id).is_some_and(|r| !r.done));
        match runnable {
            Some(job) => state.queue.push_back((n, job)),
            None => store.send(Op::Dequeue { n }),
        }
        state.next_delivery = state.next_delivery.max(n + 1);
    }
    state.feed = feed.into_iter().collect::<VecDeque<_>>();
    if let Some((n, _)) = state.feed.back() {
        state.feed_next = state.feed_next.max(*n);
    }
    let groups: HashMap<_, _> = groups
        .into_iter()
        .filter_map(|(name, json)| Some((name.clone(), parse("group", &name, &json)?)))
        .collect();
    state.groups = groups;
    if settings.max_retained_bytes > 0 && state.retained > settings.max_retained_bytes {
        tracing::info!(
            retained = state.retained,
            budget = settings.max_retained_bytes,
            "--data-dir: over the memory budget; the oldest finished records are evicted"
        );
    }
    state
}

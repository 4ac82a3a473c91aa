//! Consumer groups on the embedded broker's verdict feed, with the semantics of Redis
//! stream groups that the webhook sender relies on (feed.rs, [`FeedRead`]): each entry is
//! handed to one member and stays pending under it until acknowledged; a member can read
//! its own pending again (after a restart), and take over another's that went idle.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{MemoryBroker, State};
use crate::error::Result;
use crate::feed::{FeedBatch, FeedEntry, FeedRead};
use crate::persist::Op;

/// One group: how far it has read, and what it has handed out but not had acknowledged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Group {
    /// The last feed entry number handed out.
    last: u64,
    /// Entry number → who holds it.
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    /// The submission the entry names (it outlives the feed's own copy when trimmed).
    submission: String,
    consumer: String,
    /// When it was handed out or taken over (unix ms: it is kept across restarts).
    since_ms: i64,
}

/// The number of a feed entry id (`<n>-0`); 0 for anything else.
pub(super) fn entry_number(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl MemoryBroker {
    /// One attempt at a group read; `None` when a [`FeedRead::New`] read found nothing
    /// (the caller waits for the feed to grow and tries again).
    pub(super) fn group_read_now(
        &self,
        state: &mut State,
        group: &str,
        consumer: &str,
        read: &FeedRead,
        count: usize,
    ) -> Option<FeedBatch> {
        let State {
            groups,
            feed,
            feed_next,
            records,
            ..
        } = state;
        let g = groups.entry(group.to_owned()).or_insert_with(|| Group {
            last: *feed_next,
            pending: BTreeMap::new(),
        });
        let now = Utc::now().timestamp_millis();
        let picked: Vec<(u64, String)> = match read {
            FeedRead::Pending { after } => g
                .pending
                .range(entry_number(after).saturating_add(1)..)
                .filter(|(_, p)| p.consumer == consumer)
                .take(count)
                .map(|(n, p)| (*n, p.submission.clone()))
                .collect(),
            FeedRead::New { .. } => {
                let new: Vec<(u64, String)> = feed
                    .iter()
                    .filter(|(n, _)| *n > g.last)
                    .take(count)
                    .cloned()
                    .collect();
                for (n, id) in &new {
                    g.last = *n;
                    g.pending.insert(
                        *n,
                        Pending {
                            submission: id.clone(),
                            consumer: consumer.to_owned(),
                            since_ms: now,
                        },
                    );
                }
                new
            }
            FeedRead::Stale { min_idle } => {
                let idle = i64::try_from(min_idle.as_millis()).unwrap_or(i64::MAX);
                let cutoff = now.saturating_sub(idle);
                let mut taken = Vec::new();
                for (n, p) in g.pending.iter_mut() {
                    if taken.len() >= count {
                        break;
                    }
                    if p.since_ms <= cutoff {
                        p.consumer = consumer.to_owned();
                        p.since_ms = now;
                        taken.push((*n, p.submission.clone()));
                    }
                }
                taken
            }
        };
        if picked.is_empty() && matches!(read, FeedRead::New { .. }) {
            return None;
        }
        if !matches!(read, FeedRead::Pending { .. }) && !picked.is_empty() {
            self.save(|| {
                Some(Op::Group {
                    name: group.to_owned(),
                    json: serde_json::to_vec(&*g).ok()?,
                })
            });
        }
        let mut batch = FeedBatch {
            last_id: picked.last().map(|(n, _)| format!("{n}-0")),
            ..FeedBatch::default()
        };
        for (n, id) in picked {
            match records.get(&id).filter(|r| r.done) {
                Some(record) => batch.entries.push(FeedEntry {
                    id: format!("{n}-0"),
                    submission: record.submission.clone(),
                }),
                None => batch.gone.push(format!("{n}-0")),
            }
        }
        Some(batch)
    }

    pub(super) fn group_ack(&self, state: &mut State, group: &str, ids: &[String]) {
        let Some(g) = state.groups.get_mut(group) else {
            return;
        };
        let before = g.pending.len();
        for id in ids {
            g.pending.remove(&entry_number(id));
        }
        if g.pending.len() != before {
            self.save(|| {
                Some(Op::Group {
                    name: group.to_owned(),
                    json: serde_json::to_vec(&*g).ok()?,
                })
            });
        }
    }

    /// [`crate::Broker::feed_wait`]: the entries after `after`, waiting up to `wait` for one.
    pub(super) async fn feed_wait_for(
        &self,
        after: &str,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<FeedEntry>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.feed_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let entries = self.entries_after(after, limit);
            if !entries.is_empty() {
                return Ok(entries);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// The trait method: reads now, or for [`FeedRead::New`] waits up to its `wait`.
    pub(super) async fn group_read(
        &self,
        group: &str,
        consumer: &str,
        read: FeedRead,
        count: usize,
    ) -> Result<FeedBatch> {
        let count = count.max(1);
        let deadline = match &read {
            FeedRead::New { wait } => tokio::time::Instant::now() + *wait,
            _ => tokio::time::Instant::now(),
        };
        loop {
            let notified = self.feed_ready.notified();
            tokio::pin!(notified);
            // Registered before the state is looked at, so an entry appended in between
            // wakes this read instead of being missed until the deadline.
            notified.as_mut().enable();
            if let Some(batch) =
                self.group_read_now(&mut self.state(), group, consumer, &read, count)
            {
                return Ok(batch);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(FeedBatch::default());
            }
        }
    }
}

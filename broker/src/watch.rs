//! Replay-then-live: the subscription semantics of design.md, step 5, in one place for
//! both backends. Subscribe first, then read the log, then forward live events above the
//! last replayed seq. A gap in seq (lag, a reconnect, a lost message) is filled from the
//! log, so a subscriber sees every event exactly once, in order, and then the end.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;

use crate::error::{BrokerError, Result};
use crate::hub::{LiveEvents, Signal};
use crate::types::Event;
use crate::Broker;

/// The events of one submission, replayed then live; ends after the final event.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// How long a watcher waits on a silent live feed before it re-reads the log anyway: a
/// cheap guard against a publish lost in a way no signal reported.
const QUIET_RECHECK: Duration = Duration::from_secs(15);

/// Events read from the log at once: bounds a catching-up subscriber's memory.
const PAGE: usize = 256;

struct State {
    broker: Arc<dyn Broker>,
    id: String,
    live: LiveEvents,
    buffer: VecDeque<Event>,
    last: u64,
    done: bool,
    /// The last log read filled a page: there may be more to read before waiting live.
    more: bool,
}

impl State {
    async fn refill(&mut self) -> Result<()> {
        // Start after what is buffered already, so pages never overlap.
        let from = self
            .buffer
            .back()
            .map_or(self.last, |e| e.seq.max(self.last));
        let events = self.broker.events_after(&self.id, from, PAGE).await?;
        self.more = events.len() == PAGE;
        self.buffer.extend(events);
        Ok(())
    }

    /// Refills from the log, retrying while the backend is unreachable: a subscription
    /// outlives a Redis restart and resumes from its last seq.
    async fn refill_retrying(&mut self) {
        let mut backoff = Duration::from_millis(50);
        while let Err(e) = self.refill().await {
            tracing::warn!(error = %e, submission = %self.id, "cannot read the event log; retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                if event.seq <= self.last {
                    continue;
                }
                if event.seq > self.last + 1 {
                    // A gap: take the missing events from the log, then go on.
                    self.buffer.clear();
                    self.refill_retrying().await;
                    // The log must hold last+1 now; if it does not, wait for more.
                    if self.buffer.front().is_none_or(|e| e.seq > self.last + 1) {
                        self.buffer.clear();
                    } else {
                        continue;
                    }
                } else {
                    self.last = event.seq;
                    self.done = event.is_final();
                    return Some(Ok(event));
                }
            }
            if self.more {
                // Catching up on a long log, one page at a time.
                self.refill_retrying().await;
                continue;
            }
            match tokio::time::timeout(QUIET_RECHECK, self.live.recv()).await {
                Ok(Some(Signal::Event(event))) => self.buffer.push_back(Event::clone(&event)),
                Ok(Some(Signal::Resync)) | Err(_) => {
                    self.refill_retrying().await;
                    // Expired or evicted (memory budget) while watched: end, do not hang.
                    if self.buffer.is_empty()
                        && matches!(self.broker.submission(&self.id).await, Ok(None))
                    {
                        self.done = true;
                        return Some(Err(BrokerError::NotFound(self.id.clone())));
                    }
                }
                Ok(None) => return Some(Err(BrokerError::Closed)),
            }
        }
    }
}

/// Watches submission `id` from `after_seq` on (0 for everything).
///
/// Fails with [`BrokerError::NotFound`] for an unknown id rather than waiting forever.
pub async fn watch(broker: Arc<dyn Broker>, id: &str, after_seq: u64) -> Result<EventStream> {
    let live = broker.subscribe(id).await?;
    if broker.submission(id).await?.is_none() {
        return Err(BrokerError::NotFound(id.to_owned()));
    }
    let mut state = State {
        broker,
        id: id.to_owned(),
        live,
        buffer: VecDeque::new(),
        last: after_seq,
        done: false,
        more: false,
    };
    state.refill().await?;
    Ok(Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move { state.next().await.map(|item| (item, state)) },
    )))
}

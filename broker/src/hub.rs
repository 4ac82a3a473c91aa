//! In-process fan-out: one broadcast channel per watched submission, shared by every local
//! subscriber of it, with a reference count so the backend subscribes once and
//! unsubscribes when the last local subscriber leaves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, mpsc, watch};

use crate::types::Event;

/// Live events kept per watched submission for slow local subscribers. Small on purpose:
/// a subscriber that falls further behind gets `Resync` and re-reads the log page by
/// page, so a stalled WebSocket never pins more than this many events in memory.
pub(crate) const HUB_CAPACITY: usize = 128;

/// What a local subscriber receives.
#[derive(Debug, Clone)]
pub enum Signal {
    /// A live event, in publish order.
    Event(Arc<Event>),
    /// Events may have been lost (lag, reconnect): re-read the log from the last seq.
    Resync,
}

/// Requests to the backend's subscription task. Sent in order, executed in order, so a
/// quick unsubscribe/subscribe pair can never end unsubscribed.
#[derive(Debug)]
pub(crate) enum Control {
    /// SUBSCRIBE, then set the watch to true (also on failure: the watcher's periodic log
    /// check covers a subscription that did not take).
    Subscribe(String, watch::Sender<bool>),
    Unsubscribe(String),
}

struct Entry {
    count: usize,
    tx: broadcast::Sender<Signal>,
    /// True once the backend confirmed the subscription; later joiners wait on it
    /// instead of sending SUBSCRIBE again.
    ready: watch::Receiver<bool>,
}

/// The table of watched submissions.
pub(crate) struct Hub {
    channels: Mutex<HashMap<String, Entry>>,
    capacity: usize,
    control: Option<mpsc::UnboundedSender<Control>>,
}

impl Hub {
    pub(crate) fn new(
        capacity: usize,
        control: Option<mpsc::UnboundedSender<Control>>,
    ) -> Arc<Self> {
        Arc::new(Hub {
            channels: Mutex::new(HashMap::new()),
            capacity,
            control,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves the map consistent (single inserts/removes).
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the fan-out for `id`. Waits until the backend confirms the subscription, so
    /// that anything published after this returns is seen.
    pub(crate) async fn join(self: &Arc<Self>, id: &str) -> LiveEvents {
        let (rx, mut ready) = {
            let mut table = self.table();
            match table.get_mut(id) {
                Some(entry) => {
                    entry.count += 1;
                    (entry.tx.subscribe(), entry.ready.clone())
                }
                None => {
                    let (tx, rx) = broadcast::channel(self.capacity);
                    let (ready_tx, ready) = watch::channel(self.control.is_none());
                    if let Some(control) = &self.control {
                        // Sent under the table lock, so it is ordered before any
                        // Unsubscribe of a later leave.
                        let _ = control.send(Control::Subscribe(id.to_owned(), ready_tx));
                    }
                    table.insert(
                        id.to_owned(),
                        Entry {
                            count: 1,
                            tx,
                            ready: ready.clone(),
                        },
                    );
                    (rx, ready)
                }
            }
        };
        let live = LiveEvents {
            rx,
            _guard: Guard {
                hub: Arc::clone(self),
                id: id.to_owned(),
            },
        };
        // Anything published after the backend confirmed the subscription is delivered.
        // (A closed control task leaves `ready` false forever: don't wait on it then.)
        let _ = ready.wait_for(|confirmed| *confirmed).await;
        live
    }

    /// True while some local subscriber watches `id` (checked before unsubscribing).
    pub(crate) fn is_watched(&self, id: &str) -> bool {
        self.table().contains_key(id)
    }

    /// Hands a live event to the local subscribers of its submission.
    pub(crate) fn deliver(&self, event: Event) {
        let table = self.table();
        if let Some(entry) = table.get(&event.submission_id) {
            let _ = entry.tx.send(Signal::Event(Arc::new(event)));
        }
    }

    /// Tells every local subscriber to re-read its log: used after lag or a reconnect.
    pub(crate) fn resync_all(&self) {
        for entry in self.table().values() {
            let _ = entry.tx.send(Signal::Resync);
        }
    }

    /// Number of submissions watched right now (for metrics and tests).
    pub(crate) fn watched(&self) -> usize {
        self.table().len()
    }

    fn leave(&self, id: &str) {
        let last = {
            let mut table = self.table();
            match table.get_mut(id) {
                Some(entry) if entry.count > 1 => {
                    entry.count -= 1;
                    false
                }
                Some(_) => {
                    table.remove(id);
                    true
                }
                None => false,
            }
        };
        if last {
            if let Some(control) = &self.control {
                let _ = control.send(Control::Unsubscribe(id.to_owned()));
            }
        }
    }
}

struct Guard {
    hub: Arc<Hub>,
    id: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.hub.leave(&self.id);
    }
}

/// A local subscriber's live feed for one submission. Dropping it leaves the fan-out.
pub struct LiveEvents {
    rx: broadcast::Receiver<Signal>,
    _guard: Guard,
}

impl LiveEvents {
    /// The next signal; a lagging receiver gets `Resync` instead of silently losing events.
    /// `None` when the broker shut down.
    pub async fn recv(&mut self) -> Option<Signal> {
        match self.rx.recv().await {
            Ok(signal) => Some(signal),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Signal::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

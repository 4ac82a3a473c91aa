//! The sender: reads the feed as a member of the `webhooks` group and delivers each entry
//! in a task of its own, with retries, acknowledging it when its delivery ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use verdict_broker::{FeedEntry, FeedRead, SharedBroker};

use crate::backoff;
use crate::metrics::{Outcome, WebhookMetrics};
use crate::signature;
use crate::{WebhookConfig, WebhookError, GROUP};

/// How long a read for new entries blocks in the broker before the loop looks around
/// (for stale entries and for shutdown).
const READ_WAIT: Duration = Duration::from_secs(5);
/// How often the sender looks for entries that a vanished sender left pending.
const STALE_EVERY: Duration = Duration::from_secs(30);
/// The wait after a broker error before reading again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

pub(crate) struct Sender {
    broker: SharedBroker,
    config: WebhookConfig,
    client: reqwest::Client,
    metrics: Arc<WebhookMetrics>,
    tracker: TaskTracker,
    /// An entry pending this long under some consumer has been abandoned.
    stale_after: Duration,
}

impl Sender {
    pub(crate) fn new(
        broker: SharedBroker,
        config: WebhookConfig,
        tracker: TaskTracker,
    ) -> Result<Arc<Self>, WebhookError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .user_agent(concat!("verdict-webhook/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let span = backoff::worst_span(
            config.max_attempts,
            config.first_backoff,
            config.max_backoff,
            config.timeout,
        );
        Ok(Arc::new(Sender {
            broker,
            client,
            metrics: Arc::default(),
            tracker,
            stale_after: span.saturating_mul(2).max(Duration::from_secs(60)),
            config,
        }))
    }

    pub(crate) fn metrics(&self) -> Arc<WebhookMetrics> {
        self.metrics.clone()
    }

    /// The read loop: this consumer's own pending entries first (a restart after a
    /// crash), then new entries, and every [`STALE_EVERY`] the abandoned ones.
    pub(crate) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        // Some(id): still resending this consumer's own pending entries, after `id`.
        let mut own_after = Some("0".to_owned());
        let mut last_stale: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = cancel.cancelled() => return,
            };
            let room = 1 + slots.available_permits();
            let read = match (&own_after, last_stale) {
                (Some(after), _) => FeedRead::Pending {
                    after: after.clone(),
                },
                (None, Some(at)) if at.elapsed() < STALE_EVERY => FeedRead::New { wait: READ_WAIT },
                (None, _) => {
                    last_stale = Some(Instant::now());
                    FeedRead::Stale {
                        min_idle: self.stale_after,
                    }
                }
            };
            let own = matches!(read, FeedRead::Pending { .. });
            let batch = tokio::select! {
                batch = self.broker.feed_group_read(GROUP, &self.config.consumer, read, room) => batch,
                () = cancel.cancelled() => return,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: reading the verdict feed failed");
                    drop(first);
                    tokio::select! {
                        () = tokio::time::sleep(ERROR_PAUSE) => continue,
                        () = cancel.cancelled() => return,
                    }
                }
            };
            if own {
                own_after = batch.last_id.clone();
            }
            if !batch.gone.is_empty() {
                for _ in &batch.gone {
                    self.metrics.count(Outcome::Skipped);
                }
                self.ack(&batch.gone).await;
            }
            let mut permits = std::iter::once(first).chain(std::iter::from_fn(|| {
                slots.clone().try_acquire_owned().ok()
            }));
            for entry in batch.entries {
                let Some(permit) = permits.next() else {
                    // Cannot happen (the read asked for at most `room`); if it did, the
                    // entry stays pending and is resent after a restart.
                    tracing::error!(id = %entry.id, "webhook: more entries than slots");
                    break;
                };
                let sender = self.clone();
                let cancel = cancel.clone();
                self.tracker
                    .spawn(async move { sender.deliver(entry, permit, cancel).await });
            }
        }
    }

    /// Delivers one entry, then acknowledges it, unless the process is stopping (then it
    /// stays pending, to be resent after the restart).
    async fn deliver(
        &self,
        entry: FeedEntry,
        _slot: OwnedSemaphorePermit,
        cancel: CancellationToken,
    ) {
        let id = entry.submission.id.clone();
        self.metrics.start(&id, entry.submission.finished_at);
        let body = match serde_json::to_vec(&serde_json::json!({ "submission": entry.submission }))
        {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(%id, error = %e, "webhook: the record does not serialize");
                self.metrics.end(&id);
                return;
            }
        };
        let mut delivered = false;
        for attempt in 1..=self.config.max_attempts {
            let result = tokio::select! {
                r = self.attempt(&body) => r,
                () = cancel.cancelled() => { self.metrics.end(&id); return }
            };
            match result {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(why) if attempt < self.config.max_attempts => {
                    self.metrics.count(Outcome::Retried);
                    let wait =
                        backoff::delay(attempt, self.config.first_backoff, self.config.max_backoff);
                    tracing::info!(%id, attempt, %why, ?wait, "webhook: attempt failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = cancel.cancelled() => { self.metrics.end(&id); return }
                    }
                }
                Err(why) => {
                    tracing::warn!(%id, attempt, %why, "webhook: the last attempt failed; giving up");
                }
            }
        }
        self.metrics.count(if delivered {
            Outcome::Delivered
        } else {
            Outcome::GaveUp
        });
        self.ack(std::slice::from_ref(&entry.id)).await;
        self.metrics.end(&id);
    }

    /// One POST, freshly signed; `Err` says why it did not count as delivered.
    async fn attempt(&self, body: &[u8]) -> Result<(), String> {
        let t = chrono::Utc::now().timestamp();
        let response = self
            .client
            .post(self.config.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                signature::HEADER,
                signature::sign(&self.config.secret, t, body),
            )
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    e.to_string()
                }
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }

    /// Acknowledges entries; a failure leaves them pending, which means a duplicate
    /// delivery later (at-least-once), never a lost one.
    async fn ack(&self, ids: &[String]) {
        if let Err(e) = self.broker.feed_group_ack(GROUP, ids).await {
            tracing::warn!(error = %e, "webhook: acknowledging in the feed failed");
        }
    }
}

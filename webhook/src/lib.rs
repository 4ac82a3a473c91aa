//! Webhooks: every finished submission is POSTed to the operator's URL as
//! `{"submission": {...}}`, signed with `Verdict-Signature` (signature.rs), at least once.
//!
//! Delivery is driven by the consumer group `webhooks` on the verdict feed (broker
//! feed.rs), so it survives the restart of every process: an entry stays pending in the
//! group until its delivery ends (a 2xx answer, or the last attempt failed), and
//!   - a sender that restarts under the same consumer name first resends its own pending
//!     entries (a `kill -9` mid-delivery loses nothing; the receiver may see a duplicate);
//!   - entries pending under a consumer that is gone for longer than any delivery can take
//!     ([`backoff::worst_span`], twice over) are taken over by another sender.
//!
//! Any number of processes may send: the group shares the entries out among them.
//! The URL is operator configuration (a flag or the environment), never client input, so
//! there is no server-side request forgery surface; redirects are not followed.

mod backoff;
mod deliver;
mod error;
mod metrics;
pub mod signature;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use verdict_broker::SharedBroker;

pub use error::WebhookError;
pub use metrics::{Outcome, WebhookMetrics};

/// The consumer group on the feed that webhook senders share.
pub const GROUP: &str = "webhooks";
/// Default of `--webhook-max-attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Each attempt's time limit (a fixed contract, README "Webhooks").
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a sender needs; [`WebhookConfig::new`] checks it.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: reqwest::Url,
    pub secret: Vec<u8>,
    pub max_attempts: u32,
    /// The wait before the first retry; each next wait doubles, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// This sender's name in the group. It must stay the same across restarts of one
    /// process (hostname and role), so that a restarted sender resends its own pending.
    pub consumer: String,
}

impl WebhookConfig {
    /// Reads the secret file and checks the URL (http or https, with a host).
    pub fn new(
        url: &str,
        secret_file: Option<&Path>,
        max_attempts: u32,
        consumer: String,
    ) -> Result<Self, WebhookError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| WebhookError::Url(url.into(), e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(WebhookError::Url(
                url.into(),
                "must be an http:// or https:// URL with a host".into(),
            ));
        }
        let path = secret_file.ok_or(WebhookError::NoSecret)?;
        let secret = std::fs::read(path).map_err(|source| WebhookError::Secret {
            path: path.display().to_string(),
            source,
        })?;
        let secret = secret.trim_ascii().to_vec();
        if secret.is_empty() {
            return Err(WebhookError::EmptySecret(path.display().to_string()));
        }
        Ok(WebhookConfig {
            url: parsed,
            secret,
            max_attempts: max_attempts.max(1),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: ATTEMPT_TIMEOUT,
            concurrency: 16,
            consumer,
        })
    }
}

/// Starts the sender on `tracker`; it stops when `cancel` fires, leaving what it has not
/// delivered pending for the next start.
pub fn spawn(
    broker: SharedBroker,
    config: WebhookConfig,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Arc<WebhookMetrics>, WebhookError> {
    let sender = deliver::Sender::new(broker, config, tracker.clone())?;
    let metrics = sender.metrics();
    tracker.spawn(sender.run(cancel));
    Ok(metrics)
}

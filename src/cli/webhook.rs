//! Where finished submissions are POSTed (README, "Webhooks"). Every process that may
//! send takes these flags; the processes that have them share the deliveries.

use std::path::PathBuf;

use clap::Args;

/// The webhook sender's flags (names fixed by the issue that introduced them).
#[derive(Args, Clone)]
pub(crate) struct WebhookArgs {
    /// POST each finished submission here, as `{"submission": {...}}`, signed with
    /// `Verdict-Signature`. Operator configuration only: clients never choose it.
    #[arg(long, env = "VERDICT_WEBHOOK_URL")]
    pub(crate) webhook_url: Option<String>,
    /// File holding the HMAC-SHA256 signing secret (required with --webhook-url).
    #[arg(long, env = "VERDICT_WEBHOOK_SECRET_FILE")]
    pub(crate) webhook_secret_file: Option<PathBuf>,
    /// Attempts per delivery (5 s each, exponential backoff with jitter in between)
    /// before it is dropped and logged.
    #[arg(long, env = "VERDICT_WEBHOOK_MAX_ATTEMPTS", default_value_t = verdict_webhook::DEFAULT_MAX_ATTEMPTS)]
    pub(crate) webhook_max_attempts: u32,
}

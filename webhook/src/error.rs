//! The webhook crate's errors: all of them are configuration errors found at start-up.
//! Delivery failures are not errors of the process; they are retried and counted.

/// Why the webhook sender could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("--webhook-url {0:?}: {1}")]
    Url(String, String),
    #[error("--webhook-secret-file {path}: {source}")]
    Secret {
        path: String,
        source: std::io::Error,
    },
    #[error("--webhook-secret-file {0}: the secret is empty")]
    EmptySecret(String),
    #[error("--webhook-url needs --webhook-secret-file (every delivery is signed)")]
    NoSecret,
    #[error("the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

//! API errors: each carries a stable `extensions.code` that clients can branch on.

use async_graphql::ErrorExtensions;
use verdict_broker::BrokerError;

/// An error a GraphQL client sees.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The input is wrong; `field` names the offending input field.
    #[error("{message}")]
    BadInput {
        field: &'static str,
        message: String,
    },
    /// Unknown (or expired, or not yours) submission id.
    #[error("submission {0} not found")]
    NotFound(String),
    /// No valid API key was presented.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Over a quota; `retry_after` says when the next attempt can succeed.
    #[error("rate limit exceeded; retry in {} ms", retry_after.as_millis())]
    RateLimited { retry_after: std::time::Duration },
    /// The queue is at its maximum; retry later.
    #[error("the queue is full; try again later")]
    QueueFull,
    /// The broker (Redis) cannot be reached right now.
    #[error("the service is temporarily unavailable")]
    Unavailable,
    /// Our bug or an unexpected state; the cause is logged, not shown.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadInput { .. } => "BAD_USER_INPUT",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::QueueFull => "QUEUE_FULL",
            ApiError::Unavailable => "UNAVAILABLE",
            ApiError::Internal => "INTERNAL",
        }
    }

    pub(crate) fn bad(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadInput {
            field,
            message: message.into(),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NotFound(id) => ApiError::NotFound(id),
            BrokerError::QueueFull(_) => ApiError::QueueFull,
            BrokerError::Unavailable => ApiError::Unavailable,
            // The per-key quota on unfinished submissions: retry once one finishes.
            BrokerError::OwnerBusy(_) => ApiError::RateLimited {
                retry_after: std::time::Duration::from_secs(1),
            },
            BrokerError::Redis(cause) => {
                tracing::warn!(error = %cause, "broker unavailable");
                ApiError::Unavailable
            }
            other => {
                tracing::error!(error = %other, "internal broker error");
                ApiError::Internal
            }
        }
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.to_string()).extend_with(|_, e| {
            e.set("code", self.code());
            match self {
                ApiError::BadInput { field, .. } => e.set("field", *field),
                ApiError::RateLimited { retry_after } => {
                    // Whole seconds, like HTTP Retry-After, and milliseconds for precision.
                    let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
                    e.set("retryAfterMs", ms);
                    e.set("retryAfter", ms.div_ceil(1000));
                }
                _ => {}
            }
        })
    }
}

/// Converts a broker failure into a GraphQL error with its code. (async-graphql's blanket
/// `From<Display>` would drop the extensions, so conversions go through here.)
pub(crate) fn gql(e: BrokerError) -> async_graphql::Error {
    ApiError::from(e).extend()
}

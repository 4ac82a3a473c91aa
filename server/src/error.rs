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
            ApiError::QueueFull => "QUEUE_FULL",
            ApiError::Unavailable => "UNAVAILABLE",
            ApiError::Internal => "INTERNAL_ERROR",
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
            if let ApiError::BadInput { field, .. } = self {
                e.set("field", *field);
            }
        })
    }
}

/// Converts a broker failure into a GraphQL error with its code. (async-graphql's blanket
/// `From<Display>` would drop the extensions, so conversions go through here.)
pub(crate) fn gql(e: BrokerError) -> async_graphql::Error {
    ApiError::from(e).extend()
}

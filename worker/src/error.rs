//! The worker's own failures. A program's bad behaviour is a verdict, never one of these.

/// Something went wrong on our side while handling a job.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("broker: {0}")]
    Broker(#[from] verdict_broker::BrokerError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] verdict_sandbox::SandboxError),
    #[error("language {0} is not in this worker's catalogue")]
    UnknownLanguage(String),
    #[error("problem data missing from the store: {0}")]
    ProblemMissing(String),
    #[error("sandbox task panicked or was cancelled: {0}")]
    Join(#[from] tokio::task::JoinError),
}

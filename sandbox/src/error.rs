//! The sandbox's own failures. A program's bad behaviour is an [`Outcome`](crate::Outcome),
//! never one of these.

use std::io;
use std::path::PathBuf;

/// Our own failures (never the program's outcome).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid run spec: {0}")]
    InvalidSpec(String),
    #[error("run directory: {context}: {source}")]
    RunDir { context: String, source: io::Error },
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("{call}: {source}")]
    Sys {
        call: &'static str,
        source: io::Error,
    },
    #[error("sandbox setup failed in the child at `{stage}`: {source}")]
    ChildSetup {
        stage: &'static str,
        source: io::Error,
    },
    #[error("cannot execute {program}: {source}")]
    Exec { program: PathBuf, source: io::Error },
}

impl SandboxError {
    pub(crate) fn sys(call: &'static str) -> SandboxError {
        SandboxError::Sys {
            call,
            source: io::Error::last_os_error(),
        }
    }
}

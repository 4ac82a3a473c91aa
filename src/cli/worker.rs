//! How a worker handles shutdown, crashes and its directories.

use std::path::PathBuf;

use clap::Args;

/// How a worker handles shutdown and crashes.
#[derive(Args, Clone)]
pub(crate) struct WorkerTuning {
    /// On SIGTERM, seconds running jobs may take to finish before they are handed back.
    #[arg(long, env = "VERDICT_GRACE_SECS", default_value_t = 30)]
    pub(crate) grace_secs: u64,
    /// A job whose worker died this many times is finished as INTERNAL_ERROR.
    #[arg(long, env = "VERDICT_MAX_REDELIVERIES", default_value_t = 3)]
    pub(crate) max_redeliveries: u64,
    /// Leave the cgroup2 mount alone: do not remount it with `favordynmods` (then a run
    /// after idle pays 10-15 ms to join its cgroups; see README, "Sandbox").
    #[arg(long, env = "VERDICT_NO_FAVORDYNMODS")]
    pub(crate) no_favordynmods: bool,
    /// Base directory of the run directories. Default: /tmp/verdict-runs as root, else
    /// $XDG_RUNTIME_DIR/verdict/runs or /tmp/verdict-<uid>/runs. Must be this uid's own.
    #[arg(long, env = "VERDICT_RUN_DIR")]
    pub(crate) run_dir: Option<PathBuf>,
    /// Directory of the slot lock files (shared by the workers of one machine and uid).
    /// Default: /tmp/verdict-slots as root, else $XDG_RUNTIME_DIR/verdict/slots or
    /// /tmp/verdict-<uid>/slots. Must be this uid's own.
    #[arg(long, env = "VERDICT_SLOT_DIR")]
    pub(crate) slot_dir: Option<PathBuf>,
}

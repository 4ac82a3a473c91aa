//! Limits of submitted programs and of the compile step.

use std::path::PathBuf;

use clap::Args;
use verdict_server::InputPolicy;
use verdict_worker::paths::Locations;
use verdict_worker::WorkerConfig;

use crate::BoxError;

/// Limits of submitted programs: the default when a submission names none, and the
/// largest it may ask for (per-language `run_limits` in the catalogue add to both).
/// The flags' defaults are [`InputPolicy::DEFAULT_LIMITS`] and [`InputPolicy::MAX_LIMITS`].
#[derive(Args, Clone)]
pub(crate) struct LimitsArgs {
    /// Default CPU time per test, ms.
    #[arg(long, env = "VERDICT_DEFAULT_CPU_MS", default_value_t = InputPolicy::DEFAULT_LIMITS.cpu_time_ms)]
    pub(crate) default_cpu_ms: u64,
    /// Largest CPU time per test a submission may ask for, ms.
    #[arg(long, env = "VERDICT_MAX_CPU_MS", default_value_t = InputPolicy::MAX_LIMITS.cpu_time_ms)]
    pub(crate) max_cpu_ms: u64,
    /// Default wall time per test, ms.
    #[arg(long, env = "VERDICT_DEFAULT_WALL_MS", default_value_t = InputPolicy::DEFAULT_LIMITS.wall_time_ms)]
    pub(crate) default_wall_ms: u64,
    #[arg(long, env = "VERDICT_MAX_WALL_MS", default_value_t = InputPolicy::MAX_LIMITS.wall_time_ms)]
    pub(crate) max_wall_ms: u64,
    /// Default memory per test, KiB.
    #[arg(long, env = "VERDICT_DEFAULT_MEMORY_KB", default_value_t = InputPolicy::DEFAULT_LIMITS.memory_kb)]
    pub(crate) default_memory_kb: u64,
    #[arg(long, env = "VERDICT_MAX_MEMORY_KB", default_value_t = InputPolicy::MAX_LIMITS.memory_kb)]
    pub(crate) max_memory_kb: u64,
    /// Default stdout + stderr per test, bytes.
    #[arg(long, env = "VERDICT_DEFAULT_OUTPUT_BYTES", default_value_t = InputPolicy::DEFAULT_LIMITS.output_bytes)]
    pub(crate) default_output_bytes: u64,
    #[arg(long, env = "VERDICT_MAX_OUTPUT_BYTES", default_value_t = InputPolicy::MAX_LIMITS.output_bytes)]
    pub(crate) max_output_bytes: u64,
    /// Default processes and threads per test.
    #[arg(long, env = "VERDICT_DEFAULT_PROCESSES", default_value_t = InputPolicy::DEFAULT_LIMITS.processes)]
    pub(crate) default_processes: u64,
    #[arg(long, env = "VERDICT_MAX_PROCESSES", default_value_t = InputPolicy::MAX_LIMITS.processes)]
    pub(crate) max_processes: u64,
    /// Test data one problem may store, bytes (inputs and answers, each distinct file once).
    #[arg(long, env = "VERDICT_MAX_PROBLEM_BYTES", default_value_t = verdict_server::DEFAULT_MAX_PROBLEM_BYTES)]
    pub(crate) max_problem_bytes: u64,
}

impl LimitsArgs {
    pub(crate) fn policy(&self) -> Result<verdict_server::InputPolicy, BoxError> {
        let default_limits = verdict_broker::Limits {
            cpu_time_ms: self.default_cpu_ms,
            wall_time_ms: self.default_wall_ms,
            memory_kb: self.default_memory_kb,
            output_bytes: self.default_output_bytes,
            processes: self.default_processes,
        };
        let max_limits = verdict_broker::Limits {
            cpu_time_ms: self.max_cpu_ms,
            wall_time_ms: self.max_wall_ms,
            memory_kb: self.max_memory_kb,
            output_bytes: self.max_output_bytes,
            processes: self.max_processes,
        };
        let pairs = [
            ("cpu-ms", self.default_cpu_ms, self.max_cpu_ms),
            ("wall-ms", self.default_wall_ms, self.max_wall_ms),
            ("memory-kb", self.default_memory_kb, self.max_memory_kb),
            (
                "output-bytes",
                self.default_output_bytes,
                self.max_output_bytes,
            ),
            ("processes", self.default_processes, self.max_processes),
        ];
        for (name, default, max) in pairs {
            if default == 0 || default > max || max > i32::MAX as u64 {
                return Err(format!(
                    "--default-{name} {default} must be at least 1 and at most --max-{name} {max} (at most {})",
                    i32::MAX
                )
                .into());
            }
        }
        Ok(verdict_server::InputPolicy {
            default_limits,
            max_limits,
            max_problem_bytes: self.max_problem_bytes,
            ..verdict_server::InputPolicy::default()
        })
    }
}

/// The compile step's limits (per-language `compile_limits` add to these; the flags'
/// defaults are [`WorkerConfig::DEFAULT_COMPILE_LIMITS`]) and the compile cache.
#[derive(Args, Clone)]
pub(crate) struct CompileArgs {
    #[arg(long, env = "VERDICT_COMPILE_CPU_MS", default_value_t = WorkerConfig::DEFAULT_COMPILE_LIMITS.cpu_time_ms)]
    pub(crate) compile_cpu_ms: u64,
    #[arg(long, env = "VERDICT_COMPILE_WALL_MS", default_value_t = WorkerConfig::DEFAULT_COMPILE_LIMITS.wall_time_ms)]
    pub(crate) compile_wall_ms: u64,
    #[arg(long, env = "VERDICT_COMPILE_MEMORY_KB", default_value_t = WorkerConfig::DEFAULT_COMPILE_LIMITS.memory_kb)]
    pub(crate) compile_memory_kb: u64,
    /// Compiler stdout + stderr kept (compileOutput shows at most 64 KiB of it).
    #[arg(long, env = "VERDICT_COMPILE_OUTPUT_BYTES", default_value_t = WorkerConfig::DEFAULT_COMPILE_LIMITS.output_bytes)]
    pub(crate) compile_output_bytes: u64,
    #[arg(long, env = "VERDICT_COMPILE_PROCESSES", default_value_t = WorkerConfig::DEFAULT_COMPILE_LIMITS.processes)]
    pub(crate) compile_processes: u64,
    /// Directory of this machine's compile cache. Default: /var/cache/verdict/compile as
    /// root, else $XDG_CACHE_HOME/verdict or ~/.cache/verdict.
    #[arg(long, env = "VERDICT_COMPILE_CACHE_DIR")]
    pub(crate) compile_cache_dir: Option<PathBuf>,
    /// Size cap of the compile cache in MiB (least recently used entries go first); 0
    /// disables the cache.
    #[arg(long, env = "VERDICT_COMPILE_CACHE_MB", default_value_t = 1024)]
    pub(crate) compile_cache_mb: u64,
}

impl CompileArgs {
    pub(crate) fn apply(&self, config: &mut WorkerConfig, locations: &Locations) {
        config.compile_limits = verdict_broker::Limits {
            cpu_time_ms: self.compile_cpu_ms.max(1),
            wall_time_ms: self.compile_wall_ms.max(1),
            memory_kb: self.compile_memory_kb.max(1),
            output_bytes: self.compile_output_bytes.max(1),
            processes: self.compile_processes.max(1),
        };
        config.compile_cache_dir = (self.compile_cache_mb > 0).then(|| {
            self.compile_cache_dir
                .clone()
                .unwrap_or_else(|| locations.compile_cache_dir.clone())
        });
        config.compile_cache_bytes = self.compile_cache_mb.saturating_mul(1024 * 1024);
    }
}

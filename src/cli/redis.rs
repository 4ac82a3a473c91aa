//! Where the Redis URL comes from, and the broker's settings (on Redis or embedded).

use std::path::PathBuf;

use clap::Args;

use crate::BoxError;

/// Where the Redis URL comes from. A password in it must not be on the command line:
/// /proc/PID/cmdline is readable by every local user (and was by sandboxed programs),
/// while the environment (/proc/PID/environ) and a 0600 file are the owner's only.
#[derive(Args, Clone)]
pub(crate) struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379. With a password, set VERDICT_REDIS_URL or
    /// use --redis-url-file instead: a command line is visible to every local user.
    #[arg(long, env = "VERDICT_REDIS_URL", hide_env_values = true)]
    pub(crate) redis_url: Option<String>,
    /// File holding the Redis URL (surrounding whitespace ignored), e.g. a mounted secret.
    #[arg(long, env = "VERDICT_REDIS_URL_FILE", conflicts_with = "redis_url")]
    pub(crate) redis_url_file: Option<PathBuf>,
}

impl RedisArgs {
    /// The URL from the flag, the environment or the file; None when none is given.
    pub(crate) async fn url(&self) -> Result<Option<String>, BoxError> {
        if let Some(path) = &self.redis_url_file {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read --redis-url-file {}: {e}", path.display()))?;
            let url = text.trim();
            if url.is_empty() {
                return Err(format!("--redis-url-file {} is empty", path.display()).into());
            }
            return Ok(Some(url.to_owned()));
        }
        Ok(self.redis_url.clone())
    }

    /// The URL, for the subcommands that cannot run without Redis.
    pub(crate) async fn required(&self) -> Result<String, BoxError> {
        self.url().await?.ok_or_else(|| {
            "a Redis URL is required: set VERDICT_REDIS_URL, or pass --redis-url-file or --redis-url"
                .into()
        })
    }
}

#[derive(Args, Clone)]
pub(crate) struct BrokerArgs {
    /// Key and channel prefix in Redis, so deployments can share one Redis.
    #[arg(long, env = "VERDICT_REDIS_NAMESPACE", default_value = "verdict")]
    pub(crate) redis_namespace: String,
    /// How long submissions and their events are kept, in seconds.
    #[arg(long, env = "VERDICT_SUBMISSION_TTL", default_value_t = 86_400)]
    pub(crate) submission_ttl: u64,
    /// The verdict feed (`<namespace>:finished`) keeps about this many final records.
    #[arg(long, env = "VERDICT_FEED_MAX_LEN", default_value_t = verdict_broker::DEFAULT_FEED_MAX_LEN)]
    pub(crate) feed_max_len: u64,
    /// Submits are refused (QUEUE_FULL) beyond this many waiting jobs; 0 = no limit.
    #[arg(long, env = "VERDICT_MAX_QUEUE", default_value_t = 10_000)]
    pub(crate) max_queue: u64,
    /// A running job whose worker stops renewing its lease for this long (ms) is given
    /// to another worker.
    #[arg(long, env = "VERDICT_VISIBILITY_TIMEOUT_MS", default_value_t = 10_000)]
    pub(crate) visibility_timeout_ms: u64,
    /// Unfinished (queued or running) submissions one API key may have at once; 0 = no
    /// limit. Shared by all servers through Redis. Open APIs (no keys) are not counted.
    #[arg(long, env = "VERDICT_MAX_UNFINISHED_PER_KEY", default_value_t = 32)]
    pub(crate) max_unfinished_per_key: u64,
    /// Unfinished submissions one end user (a JWT's `sub`) may have at once; 0 = no limit.
    #[arg(long, env = "VERDICT_USER_MAX_UNFINISHED", default_value_t = 4)]
    pub(crate) user_max_unfinished: u64,
    /// Bytes one submission may keep (record and events, all tests); submits asking for
    /// more output (tests x outputBytes) are refused. 0 = no cap.
    #[arg(
        long,
        env = "VERDICT_MAX_RETAINED_BYTES_PER_SUBMISSION",
        default_value_t = verdict_broker::DEFAULT_MAX_RETAINED_PER_SUBMISSION
    )]
    pub(crate) max_retained_bytes_per_submission: u64,
    /// Embedded broker: MiB all kept submissions may take before the oldest finished
    /// ones are evicted early. 0 = no budget. Default: a quarter of this machine's RAM
    /// (MemTotal in /proc/meminfo), at most 1024.
    #[arg(
        long,
        env = "VERDICT_MAX_RETAINED_MB",
        default_value_t = verdict_broker::default_max_retained_mb()
    )]
    pub(crate) max_retained_mb: u64,
}

//! `verdict`: wires the server, the worker, the broker and the sandbox together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use verdict_broker::{
    BrokerSettings, Catalogue, MemoryBroker, MemoryProblems, RedisBroker, RedisProblems,
    RedisSettings, SharedBroker, SharedProblems,
};
use verdict_sandbox::{Sandbox, SandboxConfig};
use verdict_worker::paths::Locations;
use verdict_worker::{Worker, WorkerConfig};

/// Real-time code execution: GraphQL in, sandboxed runs, live events out.
#[derive(Parser)]
#[command(name = "verdict", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    standalone: StandaloneArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Server and workers in one process (the default); embedded broker unless --redis-url.
    Standalone(StandaloneArgs),
    /// The GraphQL API only, on Redis.
    Server(ServerArgs),
    /// A worker only, on Redis.
    Worker(WorkerArgs),
    /// Print the GraphQL SDL.
    Schema,
    /// List the language catalogue and check each toolchain.
    Languages(CatalogueArgs),
    /// Show which sandbox layers are active on this machine.
    Doctor,
    /// Manage stored problems.
    #[command(subcommand)]
    Problems(ProblemsCommand),
    /// Print an end-user JWT signed with the HS256 secret (development and tests).
    Token(TokenArgs),
}

#[derive(Args, Clone)]
struct TokenArgs {
    /// The user (`sub` claim); their submissions belong to `user:<sub>`.
    #[arg(long)]
    sub: String,
    /// Lifetime: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    #[arg(long, env = "VERDICT_JWT_HS256_SECRET_FILE")]
    jwt_hs256_secret_file: PathBuf,
    #[arg(long, env = "VERDICT_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    #[arg(long, env = "VERDICT_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

/// `90`, `90s`, `15m`, `1h`, `2d` → seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: expected a number of seconds, or 15m, 1h, 2d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    Ok(n.saturating_mul(scale))
}

#[derive(Subcommand)]
enum ProblemsCommand {
    /// Store a Kattis problem package (a directory or a .zip) in Redis as a new version
    /// (an unchanged package is not stored again).
    Import(ImportArgs),
}

#[derive(Args, Clone)]
struct ImportArgs {
    /// The package: a directory or a .zip.
    path: PathBuf,
    /// Problem id (default: the directory or zip name, lowercased).
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    redis: RedisArgs,
    /// The servers' limits apply: give the same --max-* flags (or environment).
    #[command(flatten)]
    limits: LimitsArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    catalogue: CatalogueArgs,
}

#[derive(Args, Clone)]
struct CatalogueArgs {
    /// Language catalogue file (default: the built-in languages.toml).
    #[arg(long, env = "VERDICT_LANGUAGES", global = true)]
    languages: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct BrokerArgs {
    /// Key and channel prefix in Redis, so deployments can share one Redis.
    #[arg(long, env = "VERDICT_REDIS_NAMESPACE", default_value = "verdict")]
    redis_namespace: String,
    /// How long submissions and their events are kept, in seconds.
    #[arg(long, env = "VERDICT_SUBMISSION_TTL", default_value_t = 86_400)]
    submission_ttl: u64,
    /// The verdict feed (`<namespace>:finished`) keeps about this many final records.
    #[arg(long, env = "VERDICT_FEED_MAX_LEN", default_value_t = verdict_broker::DEFAULT_FEED_MAX_LEN)]
    feed_max_len: u64,
    /// Submits are refused (QUEUE_FULL) beyond this many waiting jobs; 0 = no limit.
    #[arg(long, env = "VERDICT_MAX_QUEUE", default_value_t = 10_000)]
    max_queue: u64,
    /// A running job whose worker stops renewing its lease for this long (ms) is given
    /// to another worker.
    #[arg(long, env = "VERDICT_VISIBILITY_TIMEOUT_MS", default_value_t = 10_000)]
    visibility_timeout_ms: u64,
    /// Unfinished (queued or running) submissions one API key may have at once; 0 = no
    /// limit. Shared by all servers through Redis. Open APIs (no keys) are not counted.
    #[arg(long, env = "VERDICT_MAX_UNFINISHED_PER_KEY", default_value_t = 32)]
    max_unfinished_per_key: u64,
    /// Bytes one submission may keep (record and events, all tests); submits asking for
    /// more output (tests x outputBytes) are refused. 0 = no cap.
    #[arg(
        long,
        env = "VERDICT_MAX_RETAINED_BYTES_PER_SUBMISSION",
        default_value_t = verdict_broker::DEFAULT_MAX_RETAINED_PER_SUBMISSION
    )]
    max_retained_bytes_per_submission: u64,
    /// Embedded broker: MiB all kept submissions may take before the oldest finished
    /// ones are evicted early. 0 = no budget. Default: a quarter of this machine's RAM
    /// (MemTotal in /proc/meminfo), at most 1024.
    #[arg(
        long,
        env = "VERDICT_MAX_RETAINED_MB",
        default_value_t = verdict_broker::default_max_retained_mb()
    )]
    max_retained_mb: u64,
}

/// How a worker handles shutdown and crashes.
#[derive(Args, Clone)]
struct WorkerTuning {
    /// On SIGTERM, seconds running jobs may take to finish before they are handed back.
    #[arg(long, env = "VERDICT_GRACE_SECS", default_value_t = 30)]
    grace_secs: u64,
    /// A job whose worker died this many times is finished as INTERNAL_ERROR.
    #[arg(long, env = "VERDICT_MAX_REDELIVERIES", default_value_t = 3)]
    max_redeliveries: u64,
    /// Leave the cgroup2 mount alone: do not remount it with `favordynmods` (then a run
    /// after idle pays 10-15 ms to join its cgroups; see README, "Sandbox").
    #[arg(long, env = "VERDICT_NO_FAVORDYNMODS")]
    no_favordynmods: bool,
    /// Base directory of the run directories. Default: /tmp/verdict-runs as root, else
    /// $XDG_RUNTIME_DIR/verdict/runs or /tmp/verdict-<uid>/runs. Must be this uid's own.
    #[arg(long, env = "VERDICT_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// Directory of the slot lock files (shared by the workers of one machine and uid).
    /// Default: /tmp/verdict-slots as root, else $XDG_RUNTIME_DIR/verdict/slots or
    /// /tmp/verdict-<uid>/slots. Must be this uid's own.
    #[arg(long, env = "VERDICT_SLOT_DIR")]
    slot_dir: Option<PathBuf>,
}

/// Limits of submitted programs: the default when a submission names none, and the
/// largest it may ask for (per-language `run_limits` in the catalogue add to both).
#[derive(Args, Clone)]
struct LimitsArgs {
    /// Default CPU time per test, ms.
    #[arg(long, env = "VERDICT_DEFAULT_CPU_MS", default_value_t = 2_000)]
    default_cpu_ms: u64,
    /// Largest CPU time per test a submission may ask for, ms.
    #[arg(long, env = "VERDICT_MAX_CPU_MS", default_value_t = 15_000)]
    max_cpu_ms: u64,
    /// Default wall time per test, ms.
    #[arg(long, env = "VERDICT_DEFAULT_WALL_MS", default_value_t = 5_000)]
    default_wall_ms: u64,
    #[arg(long, env = "VERDICT_MAX_WALL_MS", default_value_t = 30_000)]
    max_wall_ms: u64,
    /// Default memory per test, KiB.
    #[arg(long, env = "VERDICT_DEFAULT_MEMORY_KB", default_value_t = 256 * 1024)]
    default_memory_kb: u64,
    #[arg(long, env = "VERDICT_MAX_MEMORY_KB", default_value_t = 1024 * 1024)]
    max_memory_kb: u64,
    /// Default stdout + stderr per test, bytes.
    #[arg(long, env = "VERDICT_DEFAULT_OUTPUT_BYTES", default_value_t = 1024 * 1024)]
    default_output_bytes: u64,
    #[arg(long, env = "VERDICT_MAX_OUTPUT_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_output_bytes: u64,
    /// Default processes and threads per test.
    #[arg(long, env = "VERDICT_DEFAULT_PROCESSES", default_value_t = 64)]
    default_processes: u64,
    #[arg(long, env = "VERDICT_MAX_PROCESSES", default_value_t = 256)]
    max_processes: u64,
    /// Test data one problem may store, bytes (inputs and answers, each distinct file once).
    #[arg(long, env = "VERDICT_MAX_PROBLEM_BYTES", default_value_t = verdict_server::DEFAULT_MAX_PROBLEM_BYTES)]
    max_problem_bytes: u64,
}

impl LimitsArgs {
    fn policy(&self) -> Result<verdict_server::InputPolicy, BoxError> {
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

/// The compile step's limits (per-language `compile_limits` add to these) and the
/// compile cache.
#[derive(Args, Clone)]
struct CompileArgs {
    #[arg(long, env = "VERDICT_COMPILE_CPU_MS", default_value_t = 15_000)]
    compile_cpu_ms: u64,
    #[arg(long, env = "VERDICT_COMPILE_WALL_MS", default_value_t = 30_000)]
    compile_wall_ms: u64,
    #[arg(long, env = "VERDICT_COMPILE_MEMORY_KB", default_value_t = 512 * 1024)]
    compile_memory_kb: u64,
    /// Compiler stdout + stderr kept (compileOutput shows at most 64 KiB of it).
    #[arg(long, env = "VERDICT_COMPILE_OUTPUT_BYTES", default_value_t = 256 * 1024)]
    compile_output_bytes: u64,
    #[arg(long, env = "VERDICT_COMPILE_PROCESSES", default_value_t = 64)]
    compile_processes: u64,
    /// Directory of this machine's compile cache. Default: /var/cache/verdict/compile as
    /// root, else $XDG_CACHE_HOME/verdict or ~/.cache/verdict.
    #[arg(long, env = "VERDICT_COMPILE_CACHE_DIR")]
    compile_cache_dir: Option<PathBuf>,
    /// Size cap of the compile cache in MiB (least recently used entries go first); 0
    /// disables the cache.
    #[arg(long, env = "VERDICT_COMPILE_CACHE_MB", default_value_t = 1024)]
    compile_cache_mb: u64,
}

impl CompileArgs {
    fn apply(&self, config: &mut WorkerConfig, locations: &Locations) {
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

/// API access: keys, quotas and abuse limits (server/src/{auth,limits}.rs).
#[derive(Args, Clone)]
struct ApiArgs {
    /// API keys file: `name:sha256hex` per line (`printf %s KEY | sha256sum`). With no
    /// keys the API is open, which is allowed only on a loopback address.
    #[arg(long = "api-keys", env = "VERDICT_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// API keys inline, as `name:sha256hex,name2:sha256hex` (added to the file's).
    #[arg(
        long = "api-key-digests",
        env = "VERDICT_API_KEYS",
        hide_env_values = true
    )]
    api_keys: Option<String>,
    /// Serve an open API (no keys) on a non-loopback address anyway.
    #[arg(long, env = "VERDICT_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Submits per minute per key (per IP when open); 0 = unlimited.
    #[arg(long, env = "VERDICT_SUBMITS_PER_MINUTE", default_value_t = 120)]
    submits_per_minute: u32,
    /// Open WebSocket connections per client IP; 0 = unlimited.
    #[arg(long, env = "VERDICT_MAX_WS_PER_IP", default_value_t = 1024)]
    max_ws_per_ip: usize,
    /// Open WebSocket connections per API key (on all servers together when on Redis);
    /// 0 = unlimited.
    #[arg(long, env = "VERDICT_MAX_WS_PER_KEY", default_value_t = 1024)]
    max_ws_per_key: usize,
    /// Concurrent operations per WebSocket connection.
    #[arg(
        long,
        env = "VERDICT_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        default_value_t = 100
    )]
    max_subscriptions_per_connection: usize,
    /// graphql-ws: close with 4408 when connection_init has not arrived after this, ms.
    #[arg(long, env = "VERDICT_WS_INIT_TIMEOUT_MS", default_value_t = 3_000)]
    ws_init_timeout_ms: u64,
    /// graphql-ws: server keep-alive ping interval, ms.
    #[arg(long, env = "VERDICT_WS_KEEPALIVE_MS", default_value_t = 15_000)]
    ws_keepalive_ms: u64,
    /// Largest request body, bytes (default: the input caps plus 1 MiB).
    #[arg(long, env = "VERDICT_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Query depth and complexity limits.
    #[arg(long, env = "VERDICT_MAX_QUERY_DEPTH", default_value_t = 16)]
    max_query_depth: usize,
    #[arg(long, env = "VERDICT_MAX_QUERY_COMPLEXITY", default_value_t = 1000)]
    max_query_complexity: usize,
    /// Aliased fields per query document; 0 = unlimited.
    #[arg(long, env = "VERDICT_MAX_QUERY_ALIASES", default_value_t = 30)]
    max_query_aliases: usize,
    /// Longest GraphQL document (the `query` text), bytes (default: the source cap plus
    /// 1 MiB; large inputs belong in variables).
    #[arg(long, env = "VERDICT_MAX_QUERY_BYTES")]
    max_query_bytes: Option<usize>,
    /// Refuse schema introspection (`__schema`, `__type`).
    #[arg(long, env = "VERDICT_NO_INTROSPECTION")]
    no_introspection: bool,
    #[command(flatten)]
    jwt: JwtArgs,
}

/// End-user tokens (server/src/jwt.rs): a platform's backend mints them per user.
#[derive(Args, Clone)]
struct JwtArgs {
    /// File holding the HS256 shared secret for end-user JWTs.
    #[arg(long, env = "VERDICT_JWT_HS256_SECRET_FILE")]
    jwt_hs256_secret_file: Option<PathBuf>,
    /// Public keys for end-user JWTs (RS256, ES256, EdDSA by `kid`): a PEM file or a
    /// JWKS JSON file.
    #[arg(long, env = "VERDICT_JWT_PUBLIC_KEYS")]
    jwt_public_keys: Option<PathBuf>,
    /// Required `iss` of end-user JWTs, when set.
    #[arg(long, env = "VERDICT_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of end-user JWTs, when set.
    #[arg(long, env = "VERDICT_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

impl JwtArgs {
    fn verifier(&self) -> Result<verdict_server::jwt::JwtVerifier, BoxError> {
        let mut v = verdict_server::jwt::JwtVerifier::new()
            .with_issuer(self.jwt_issuer.clone())
            .with_audience(self.jwt_audience.clone());
        if let Some(path) = &self.jwt_hs256_secret_file {
            v = v.load_hs256_secret(path)?;
        }
        if let Some(path) = &self.jwt_public_keys {
            v = v.load_public_keys(path)?;
        }
        if v.is_configured() {
            tracing::info!(algorithms = ?v.algorithms(), "end-user tokens accepted");
        }
        Ok(v)
    }
}

impl ApiArgs {
    fn keys(&self, listen: SocketAddr) -> Result<verdict_server::ApiKeys, BoxError> {
        let mut text = String::new();
        if let Some(path) = &self.api_keys_file {
            text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read API keys {}: {e}", path.display()))?;
        }
        if let Some(inline) = &self.api_keys {
            text.push('\n');
            text.push_str(inline);
        }
        let keys = verdict_server::ApiKeys::parse(&text)?.with_jwt(self.jwt.verifier()?);
        if keys.is_open() && !listen.ip().is_loopback() {
            if !self.insecure_no_auth {
                return Err(format!(
                    "{listen} is not a loopback address: configure API keys (--api-keys) or pass --insecure-no-auth"
                )
                .into());
            }
            tracing::warn!(%listen, "serving an open API without keys (--insecure-no-auth)");
        }
        tracing::info!(keys = keys.len(), "API keys loaded");
        Ok(keys)
    }

    async fn limits(
        &self,
        redis: Option<(&str, &str)>,
    ) -> Result<verdict_server::ApiLimits, BoxError> {
        let shared = match redis {
            Some((url, namespace)) => Some(
                verdict_broker::RedisQuota::connect(url, namespace)
                    .await
                    .map_err(|e| format!("cannot connect to Redis at {}: {e}", redact(url)))?,
            ),
            None => None,
        };
        Ok(verdict_server::ApiLimits {
            shared,
            submits_per_minute: self.submits_per_minute,
            max_ws_per_ip: self.max_ws_per_ip,
            max_ws_per_key: self.max_ws_per_key,
            max_subscriptions_per_connection: self.max_subscriptions_per_connection,
            connection_init_timeout: Duration::from_millis(self.ws_init_timeout_ms),
            keepalive: Duration::from_millis(self.ws_keepalive_ms),
            max_body_bytes: self.max_body_bytes,
            max_depth: self.max_query_depth,
            max_complexity: self.max_query_complexity,
            max_aliases: self.max_query_aliases,
            max_query_bytes: self.max_query_bytes,
            introspection: !self.no_introspection,
            ..verdict_server::ApiLimits::default()
        })
    }
}

/// Where the Redis URL comes from. A password in it must not be on the command line:
/// /proc/PID/cmdline is readable by every local user (and was by sandboxed programs),
/// while the environment (/proc/PID/environ) and a 0600 file are the owner's only.
#[derive(Args, Clone)]
struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379. With a password, set VERDICT_REDIS_URL or
    /// use --redis-url-file instead: a command line is visible to every local user.
    #[arg(long, env = "VERDICT_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// File holding the Redis URL (surrounding whitespace ignored), e.g. a mounted secret.
    #[arg(long, env = "VERDICT_REDIS_URL_FILE", conflicts_with = "redis_url")]
    redis_url_file: Option<PathBuf>,
}

impl RedisArgs {
    /// The URL from the flag, the environment or the file; None when none is given.
    async fn url(&self) -> Result<Option<String>, BoxError> {
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
    async fn required(&self) -> Result<String, BoxError> {
        self.url().await?.ok_or_else(|| {
            "a Redis URL is required: set VERDICT_REDIS_URL, or pass --redis-url-file or --redis-url"
                .into()
        })
    }
}

/// `url` with its password (and any `...password=` query parameter) replaced by `***`,
/// for log lines and error messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL we understand: show nothing of it rather than a secret.
        return "<redacted>".into();
    };
    // The last `@` ends the user info even when a password holds an unescaped `/`, `?`
    // or `@`: better to hide too much than to print part of a password.
    let (userinfo, after) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => (Some(userinfo), after),
        None => (None, rest),
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (host, tail) = after.split_at(end);
    let authority = match userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => host.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                        format!("{key}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// True when `url` carries a secret that [`redact`] hides.
fn has_secret(url: &str) -> bool {
    redact(url) != url
}

/// Warns when a Redis URL with a password was given as `--redis-url` on the command line
/// (rather than from the environment or a file), where any local user can read it.
fn warn_on_secret_in_argv(matches: &ArgMatches) {
    let mut matches = matches;
    while let Some((_, sub)) = matches.subcommand() {
        matches = sub;
    }
    let Ok(Some(url)) = matches.try_get_one::<String>("redis_url") else {
        return;
    };
    if matches.value_source("redis_url") == Some(ValueSource::CommandLine) && has_secret(url) {
        tracing::warn!(
            url = %redact(url),
            "the Redis password is on the command line, readable by every local user in \
             /proc/PID/cmdline: set VERDICT_REDIS_URL or use --redis-url-file instead"
        );
    }
}

#[derive(Args, Clone)]
struct StandaloneArgs {
    #[arg(long, env = "VERDICT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    api: ApiArgs,
    /// Use Redis instead of the embedded broker.
    #[command(flatten)]
    redis: RedisArgs,
    /// Jobs run at once (default: number of cores).
    #[arg(long, env = "VERDICT_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Load every Kattis package under DIR (subdirectories with a problem.yaml, and .zip
    /// files; the id is the name) at start-up.
    #[arg(long, env = "VERDICT_PROBLEMS_DIR")]
    problems_dir: Option<PathBuf>,
    #[command(flatten)]
    tuning: WorkerTuning,
    #[command(flatten)]
    limits: LimitsArgs,
    #[command(flatten)]
    compile: CompileArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    catalogue: CatalogueArgs,
}

#[derive(Args, Clone)]
struct ServerArgs {
    #[arg(long, env = "VERDICT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Load every Kattis package under DIR (subdirectories with a problem.yaml, and .zip
    /// files; the id is the name) at start-up.
    #[arg(long, env = "VERDICT_PROBLEMS_DIR")]
    problems_dir: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    limits: LimitsArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    catalogue: CatalogueArgs,
}

#[derive(Args, Clone)]
struct WorkerArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[arg(long, env = "VERDICT_CONCURRENCY")]
    concurrency: Option<usize>,
    #[command(flatten)]
    tuning: WorkerTuning,
    #[command(flatten)]
    compile: CompileArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    catalogue: CatalogueArgs,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn settings(args: &BrokerArgs) -> BrokerSettings {
    BrokerSettings {
        ttl: Duration::from_secs(args.submission_ttl.max(1)),
        max_queue: args.max_queue,
        visibility_timeout: Duration::from_millis(args.visibility_timeout_ms.max(100)),
        max_unfinished_per_owner: args.max_unfinished_per_key,
        max_retained_bytes_per_submission: args.max_retained_bytes_per_submission,
        max_retained_bytes: args.max_retained_mb.saturating_mul(1024 * 1024),
        feed_max_len: args.feed_max_len,
        // Worker liveness: the broker's default.
        ..BrokerSettings::default()
    }
}

async fn broker(url: Option<&str>, args: &BrokerArgs) -> Result<SharedBroker, BoxError> {
    Ok(match url {
        Some(url) => RedisBroker::connect(RedisSettings {
            url: url.to_owned(),
            namespace: args.redis_namespace.clone(),
            broker: settings(args),
        })
        .await
        .map_err(|e| format!("cannot connect to Redis at {}: {e}", redact(url)))?,
        None => MemoryBroker::new(settings(args)),
    })
}

/// `--problems-dir`: every package under DIR, stored before the API opens.
async fn load_problems(
    dir: Option<&std::path::Path>,
    problems: &SharedProblems,
    policy: &verdict_server::InputPolicy,
    catalogue: &Arc<Catalogue>,
) -> Result<(), BoxError> {
    let Some(dir) = dir else {
        return Ok(());
    };
    let loaded = verdict_server::package::import_dir(dir, problems, policy, catalogue)
        .await
        .map_err(|e| format!("--problems-dir {}: {e}", dir.display()))?;
    tracing::info!(dir = %dir.display(), problems = loaded.len(), "problem packages loaded");
    Ok(())
}

/// The problem store: on Redis when a URL is given, else in memory.
async fn problem_store(url: Option<&str>, args: &BrokerArgs) -> Result<SharedProblems, BoxError> {
    Ok(match url {
        Some(url) => RedisProblems::connect(url, &args.redis_namespace)
            .await
            .map_err(|e| format!("cannot connect to Redis at {}: {e}", redact(url)))?,
        None => MemoryProblems::new(),
    })
}

async fn catalogue(args: &CatalogueArgs) -> Result<Arc<Catalogue>, BoxError> {
    let path = args.languages.clone();
    let catalogue = tokio::task::spawn_blocking(move || {
        let mut c = Catalogue::load(path.as_deref())?;
        c.detect_versions();
        Ok::<_, verdict_broker::CatalogueError>(c)
    })
    .await??;
    for lang in catalogue.languages() {
        if let Some(why) = &lang.missing {
            tracing::warn!(
                language = %lang.id,
                package = lang.package.as_deref().unwrap_or("-"),
                "toolchain unavailable ({why}); submissions in it are refused unless another live worker has it"
            );
        }
    }
    Ok(Arc::new(catalogue))
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

#[allow(clippy::too_many_arguments)] // one per aspect of a worker
async fn start_worker(
    broker: SharedBroker,
    problems: SharedProblems,
    catalogue: Arc<Catalogue>,
    concurrency: Option<usize>,
    tuning: &WorkerTuning,
    compile: &CompileArgs,
    broker_args: &BrokerArgs,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    // Root's machine-wide locations, or a normal user's own (worker/src/paths.rs).
    let locations = Locations::for_this_process();
    let run_dir = tuning
        .run_dir
        .clone()
        .unwrap_or_else(|| locations.run_dir.clone());
    let slot_dir = tuning
        .slot_dir
        .clone()
        .unwrap_or_else(|| locations.slot_dir.clone());
    if locations.is_private(&run_dir) || locations.is_private(&slot_dir) {
        locations.prepare_private_root()?;
    }
    tracing::info!(
        run_dir = %run_dir.display(),
        slot_dir = %slot_dir.display(),
        "locations: {}",
        locations.reason
    );
    let sandbox_config = SandboxConfig {
        favor_dynmods: !tuning.no_favordynmods,
        base_dir: run_dir,
        ..SandboxConfig::default()
    };
    // Start-up sweep: run dirs a crashed worker left behind (blocking: they can be huge).
    let sandbox = tokio::task::spawn_blocking(|| {
        let sandbox = Sandbox::new(sandbox_config)?;
        if let Err(e) = sandbox.sweep_stale_run_dirs() {
            tracing::warn!(error = %e, "could not sweep stale run dirs");
        }
        Ok::<_, verdict_sandbox::SandboxError>(sandbox)
    })
    .await??;
    for layer in sandbox.report() {
        tracing::info!(layer = layer.name, active = layer.active, detail = %layer.detail, "sandbox layer");
    }
    let mut config = WorkerConfig::default();
    if let Some(n) = concurrency {
        config.concurrency = n.max(1);
    }
    config.consumer = format!("{}-{}", hostname(), std::process::id());
    config.grace = Duration::from_secs(tuning.grace_secs);
    config.max_redeliveries = tuning.max_redeliveries;
    config.slot_dir = slot_dir;
    compile.apply(&mut config, &locations);
    if let Some(dir) = config.compile_cache_dir.clone() {
        let prepared = tokio::task::spawn_blocking(move || {
            verdict_sandbox::dirs::ensure_own_dir(&dir, 0o700, "compile cache").map(|()| dir)
        })
        .await?;
        match prepared {
            Ok(dir) => tracing::info!(dir = %dir.display(), "compile cache"),
            Err(e) => {
                tracing::warn!(error = %e, "compile cache off (set --compile-cache-dir)");
                config.compile_cache_dir = None;
            }
        }
    }
    // Renew four times per visibility timeout, so one slow renewal never loses the lease.
    config.lease_renewal = Duration::from_millis((broker_args.visibility_timeout_ms / 4).max(25));
    let worker = Worker::new(broker, Arc::new(sandbox), catalogue, config, problems)?;
    Ok(tokio::spawn(worker.run(shutdown)))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}

/// The submission limits, with the broker's retention cap (the server refuses what the
/// broker could not keep).
fn input_policy(
    limits: &LimitsArgs,
    broker: &BrokerArgs,
) -> Result<verdict_server::InputPolicy, BoxError> {
    let mut policy = limits.policy()?;
    policy.max_retained_bytes_per_submission = broker.max_retained_bytes_per_submission;
    Ok(policy)
}

#[allow(clippy::too_many_arguments)] // one per aspect of a server
async fn start_server(
    broker: SharedBroker,
    problems: SharedProblems,
    catalogue: Arc<Catalogue>,
    listen: SocketAddr,
    api: &ApiArgs,
    policy: verdict_server::InputPolicy,
    shutdown: CancellationToken,
    // (url, namespace): quotas are counted there, shared by all servers.
    redis: Option<(&str, &str)>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, BoxError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!("listening on http://{addr} (GraphiQL at http://{addr}/graphiql)");
    let state = verdict_server::state_with(
        broker,
        catalogue,
        policy,
        shutdown,
        api.keys(listen)?,
        api.limits(redis).await?,
        problems,
    );
    Ok(tokio::spawn(verdict_server::serve(listener, state)))
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command.unwrap_or(Command::Standalone(cli.standalone)) {
        Command::Schema => print!("{}", verdict_server::sdl()),
        Command::Token(args) => {
            let secret = verdict_server::jwt::read_secret(&args.jwt_hs256_secret_file)?;
            let token = verdict_server::jwt::sign_hs256(
                &secret,
                &args.sub,
                args.ttl,
                args.jwt_issuer.as_deref(),
                args.jwt_audience.as_deref(),
            )?;
            println!("{token}");
        }
        Command::Languages(args) => {
            let catalogue = catalogue(&args).await?;
            let mut missing = 0;
            for lang in catalogue.languages() {
                let version = lang.detected_version.clone().unwrap_or_else(|| {
                    missing += 1;
                    // What to install, and why the toolchain counts as missing.
                    let why = lang.missing.as_deref().unwrap_or("not found");
                    match lang.package.as_deref() {
                        Some(package) => format!("MISSING (install {package}: {why})"),
                        None => format!("MISSING ({why})"),
                    }
                });
                println!(
                    "{:<12} {:<24} {:<8} {}",
                    lang.id,
                    lang.name,
                    if lang.compiled() { "compiled" } else { "" },
                    version
                );
            }
            if missing > 0 {
                return Err(format!("{missing} toolchain(s) missing").into());
            }
        }
        Command::Doctor => {
            // Looks only: a diagnosis does not remount cgroup2.
            let config = SandboxConfig {
                favor_dynmods: false,
                ..SandboxConfig::default()
            };
            let sandbox = tokio::task::spawn_blocking(|| Sandbox::new(config)).await??;
            for layer in sandbox.report() {
                println!(
                    "{:<20} {:<8} {}",
                    layer.name,
                    if layer.active { "active" } else { "INACTIVE" },
                    layer.detail
                );
            }
        }
        Command::Standalone(args) => {
            let shutdown = shutdown_on_signal();
            let redis_url = args.redis.url().await?;
            let broker = broker(redis_url.as_deref(), &args.broker).await?;
            let problems = problem_store(redis_url.as_deref(), &args.broker).await?;
            let catalogue = catalogue(&args.catalogue).await?;
            let policy = input_policy(&args.limits, &args.broker)?;
            load_problems(args.problems_dir.as_deref(), &problems, &policy, &catalogue).await?;
            let worker = start_worker(
                Arc::clone(&broker),
                Arc::clone(&problems),
                Arc::clone(&catalogue),
                args.concurrency,
                &args.tuning,
                &args.compile,
                &args.broker,
                shutdown.clone(),
            )
            .await?;
            let server = start_server(
                broker,
                problems,
                catalogue,
                args.listen,
                &args.api,
                policy,
                shutdown.clone(),
                redis_url
                    .as_deref()
                    .map(|url| (url, args.broker.redis_namespace.as_str())),
            )
            .await?;
            server.await??;
            shutdown.cancel();
            worker.await?;
        }
        Command::Server(args) => {
            let shutdown = shutdown_on_signal();
            let redis_url = args.redis.required().await?;
            let broker = broker(Some(&redis_url), &args.broker).await?;
            let problems = problem_store(Some(&redis_url), &args.broker).await?;
            let catalogue = catalogue(&args.catalogue).await?;
            let policy = input_policy(&args.limits, &args.broker)?;
            load_problems(args.problems_dir.as_deref(), &problems, &policy, &catalogue).await?;
            let redis = Some((redis_url.as_str(), args.broker.redis_namespace.as_str()));
            start_server(
                broker,
                problems,
                catalogue,
                args.listen,
                &args.api,
                policy,
                shutdown,
                redis,
            )
            .await?
            .await??;
        }
        Command::Problems(ProblemsCommand::Import(args)) => {
            let redis_url = args.redis.required().await?;
            let problems = problem_store(Some(&redis_url), &args.broker).await?;
            let catalogue = catalogue(&args.catalogue).await?;
            let policy = input_policy(&args.limits, &args.broker)?;
            let id = args
                .id
                .clone()
                .unwrap_or_else(|| verdict_server::package::default_id(&args.path));
            let stored = verdict_server::package::import_path(
                &args.path, &id, &problems, &policy, &catalogue,
            )
            .await
            .map_err(|e| format!("{}: {e}", args.path.display()))?;
            println!(
                "{} version {}: {} tests, {} groups, max score {}",
                stored.id,
                stored.version,
                stored.tests.len(),
                stored.groups.len(),
                stored.max_score()
            );
        }
        Command::Worker(args) => {
            let shutdown = shutdown_on_signal();
            let redis_url = args.redis.required().await?;
            let broker = broker(Some(&redis_url), &args.broker).await?;
            let problems = problem_store(Some(&redis_url), &args.broker).await?;
            let catalogue = catalogue(&args.catalogue).await?;
            start_worker(
                broker,
                problems,
                catalogue,
                args.concurrency,
                &args.tuning,
                &args.compile,
                &args.broker,
                shutdown,
            )
            .await?
            .await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,fred=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // VERDICT_LOG_FORMAT=json: one JSON object per line, spans (submission id) included,
    // for log pipelines. Read before argument parsing so every subcommand logs the same way.
    if std::env::var("VERDICT_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.init();
    }
    let matches = Cli::command().get_matches();
    warn_on_secret_in_argv(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verdict: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_and_only_them() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("rediss://app:s3cret@h:6380", "rediss://app:***@h:6380"),
            ("redis://app@h", "redis://app@h"),
            ("redis://:pa/ss@w?rd@h:1", "redis://:***@h:1"),
            (
                "redis-sentinel://h:26379?sentinelPassword=s3cret&node=x",
                "redis-sentinel://h:26379?sentinelPassword=***&node=x",
            ),
            ("s3cret", "<redacted>"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains("s3cret"), "{url}");
            assert_eq!(has_secret(url), url != shown, "{url}");
        }
    }

    #[test]
    fn the_cli_still_parses() {
        Cli::command().debug_assert();
    }
}

//! The command line: the subcommands and their flags (each flag also read from a
//! `VERDICT_*` environment variable). Flag groups shared by several subcommands live in
//! the submodules.

mod api;
mod limits;
mod redis;
mod webhook;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub(crate) use api::ApiArgs;
pub(crate) use limits::{CompileArgs, LimitsArgs};
pub(crate) use redis::{BrokerArgs, RedisArgs};
pub(crate) use webhook::WebhookArgs;
pub(crate) use worker::WorkerTuning;

/// Real-time code execution: GraphQL in, sandboxed runs, live events out.
#[derive(Parser)]
#[command(name = "verdict", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) standalone: StandaloneArgs,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct TokenArgs {
    /// The user (`sub` claim); their submissions belong to `user:<sub>`.
    #[arg(long)]
    pub(crate) sub: String,
    /// Lifetime: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub(crate) ttl: u64,
    #[arg(long, env = "VERDICT_JWT_HS256_SECRET_FILE")]
    pub(crate) jwt_hs256_secret_file: PathBuf,
    #[arg(long, env = "VERDICT_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,
    #[arg(long, env = "VERDICT_JWT_AUDIENCE")]
    pub(crate) jwt_audience: Option<String>,
}

/// `90`, `90s`, `15m`, `1h`, `2d` → seconds.
pub(crate) fn parse_ttl(text: &str) -> Result<u64, String> {
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
pub(crate) enum ProblemsCommand {
    /// Store a Kattis problem package (a directory or a .zip) in Redis as a new version
    /// (an unchanged package is not stored again).
    Import(ImportArgs),
}

#[derive(Args, Clone)]
pub(crate) struct ImportArgs {
    /// The package: a directory or a .zip.
    pub(crate) path: PathBuf,
    /// Problem id (default: the directory or zip name, lowercased).
    #[arg(long)]
    pub(crate) id: Option<String>,
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    /// The servers' limits apply: give the same --max-* flags (or environment).
    #[command(flatten)]
    pub(crate) limits: LimitsArgs,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    #[command(flatten)]
    pub(crate) catalogue: CatalogueArgs,
}

#[derive(Args, Clone)]
pub(crate) struct CatalogueArgs {
    /// Language catalogue file (default: the built-in languages.toml).
    #[arg(long, env = "VERDICT_LANGUAGES", global = true)]
    pub(crate) languages: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub(crate) struct StandaloneArgs {
    #[arg(long, env = "VERDICT_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Use Redis instead of the embedded broker.
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    /// Jobs run at once (default: number of cores).
    #[arg(long, env = "VERDICT_CONCURRENCY")]
    pub(crate) concurrency: Option<usize>,
    /// Load every Kattis package under DIR (subdirectories with a problem.yaml, and .zip
    /// files; the id is the name) at start-up.
    #[arg(long, env = "VERDICT_PROBLEMS_DIR")]
    pub(crate) problems_dir: Option<PathBuf>,
    /// Keep the embedded broker's records, event logs, queue and verdict feed in DIR, so
    /// that they survive a restart (README, "What a restart keeps"). Default: memory only.
    #[arg(long, env = "VERDICT_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) webhook: WebhookArgs,
    #[command(flatten)]
    pub(crate) tuning: WorkerTuning,
    #[command(flatten)]
    pub(crate) limits: LimitsArgs,
    #[command(flatten)]
    pub(crate) compile: CompileArgs,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    #[command(flatten)]
    pub(crate) catalogue: CatalogueArgs,
}

#[derive(Args, Clone)]
pub(crate) struct ServerArgs {
    #[arg(long, env = "VERDICT_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Load every Kattis package under DIR (subdirectories with a problem.yaml, and .zip
    /// files; the id is the name) at start-up.
    #[arg(long, env = "VERDICT_PROBLEMS_DIR")]
    pub(crate) problems_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    #[command(flatten)]
    pub(crate) webhook: WebhookArgs,
    #[command(flatten)]
    pub(crate) limits: LimitsArgs,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    #[command(flatten)]
    pub(crate) catalogue: CatalogueArgs,
}

#[derive(Args, Clone)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    #[command(flatten)]
    pub(crate) webhook: WebhookArgs,
    #[arg(long, env = "VERDICT_CONCURRENCY")]
    pub(crate) concurrency: Option<usize>,
    #[command(flatten)]
    pub(crate) tuning: WorkerTuning,
    #[command(flatten)]
    pub(crate) compile: CompileArgs,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    #[command(flatten)]
    pub(crate) catalogue: CatalogueArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_cli_still_parses() {
        Cli::command().debug_assert();
    }
}

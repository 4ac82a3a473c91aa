//! `verdict`: wires the server, the worker, the broker and the sandbox together.
//!
//! The command line is in `cli.rs` (flag groups under `cli/`); the long-running
//! subcommands (`standalone`, `server`, `worker`) in `serve.rs`; the one-shot ones in
//! `commands.rs`; keeping the Redis password out of logs in `redact.rs`.

mod cli;
mod commands;
mod redact;
mod serve;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command, ProblemsCommand};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command.unwrap_or(Command::Standalone(cli.standalone)) {
        Command::Schema => print!("{}", verdict_server::sdl()),
        Command::Token(args) => commands::token(&args)?,
        Command::Languages(args) => commands::languages(&args).await?,
        Command::Doctor => commands::doctor().await?,
        Command::Standalone(args) => serve::standalone(args).await?,
        Command::Server(args) => serve::server(args).await?,
        Command::Problems(ProblemsCommand::Import(args)) => commands::import(&args).await?,
        Command::Worker(args) => serve::worker(args).await?,
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
    redact::warn_on_secret_in_argv(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verdict: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `verdict`: wires the server, the worker, the broker and the sandbox together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use verdict_broker::{
    BrokerSettings, Catalogue, MemoryBroker, RedisBroker, RedisSettings, SharedBroker,
};
use verdict_sandbox::{Sandbox, SandboxConfig};
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
    /// Submits are refused (QUEUE_FULL) beyond this many waiting jobs; 0 = no limit.
    #[arg(long, env = "VERDICT_MAX_QUEUE", default_value_t = 10_000)]
    max_queue: u64,
}

#[derive(Args, Clone)]
struct StandaloneArgs {
    #[arg(long, env = "VERDICT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Use Redis instead of the embedded broker.
    #[arg(long, env = "VERDICT_REDIS_URL")]
    redis_url: Option<String>,
    /// Jobs run at once (default: number of cores).
    #[arg(long, env = "VERDICT_CONCURRENCY")]
    concurrency: Option<usize>,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    catalogue: CatalogueArgs,
}

#[derive(Args, Clone)]
struct ServerArgs {
    #[arg(long, env = "VERDICT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[arg(long, env = "VERDICT_REDIS_URL")]
    redis_url: String,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    catalogue: CatalogueArgs,
}

#[derive(Args, Clone)]
struct WorkerArgs {
    #[arg(long, env = "VERDICT_REDIS_URL")]
    redis_url: String,
    #[arg(long, env = "VERDICT_CONCURRENCY")]
    concurrency: Option<usize>,
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
        .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?,
        None => MemoryBroker::new(settings(args)),
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
        if lang.detected_version.is_none() {
            tracing::warn!(language = %lang.id, "toolchain not found; submissions in it will fail");
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

async fn start_worker(
    broker: SharedBroker,
    catalogue: Arc<Catalogue>,
    concurrency: Option<usize>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    let sandbox = tokio::task::spawn_blocking(|| Sandbox::new(SandboxConfig::default())).await??;
    for layer in sandbox.report() {
        tracing::info!(layer = layer.name, active = layer.active, detail = %layer.detail, "sandbox layer");
    }
    let mut config = WorkerConfig::default();
    if let Some(n) = concurrency {
        config.concurrency = n.max(1);
    }
    config.consumer = format!("{}-{}", hostname(), std::process::id());
    let worker = Worker::new(broker, Arc::new(sandbox), catalogue, config)?;
    Ok(tokio::spawn(worker.run(shutdown)))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}

async fn start_server(
    broker: SharedBroker,
    catalogue: Arc<Catalogue>,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, BoxError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!("listening on http://{addr} (GraphiQL at http://{addr}/graphiql)");
    let state = verdict_server::state(
        broker,
        catalogue,
        verdict_server::InputPolicy::default(),
        shutdown,
    );
    Ok(tokio::spawn(verdict_server::serve(listener, state)))
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command.unwrap_or(Command::Standalone(cli.standalone)) {
        Command::Schema => print!("{}", verdict_server::sdl()),
        Command::Languages(args) => {
            let catalogue = catalogue(&args).await?;
            let mut missing = 0;
            for lang in catalogue.languages() {
                let version = lang.detected_version.clone().unwrap_or_else(|| {
                    missing += 1;
                    "MISSING".into()
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
            let sandbox =
                tokio::task::spawn_blocking(|| Sandbox::new(SandboxConfig::default())).await??;
            for layer in sandbox.report() {
                println!(
                    "{:<14} {:<8} {}",
                    layer.name,
                    if layer.active { "active" } else { "INACTIVE" },
                    layer.detail
                );
            }
        }
        Command::Standalone(args) => {
            let shutdown = shutdown_on_signal();
            let broker = broker(args.redis_url.as_deref(), &args.broker).await?;
            let catalogue = catalogue(&args.catalogue).await?;
            let worker = start_worker(
                Arc::clone(&broker),
                Arc::clone(&catalogue),
                args.concurrency,
                shutdown.clone(),
            )
            .await?;
            let server = start_server(broker, catalogue, args.listen, shutdown.clone()).await?;
            server.await??;
            shutdown.cancel();
            worker.await?;
        }
        Command::Server(args) => {
            let shutdown = shutdown_on_signal();
            let broker = broker(Some(&args.redis_url), &args.broker).await?;
            let catalogue = catalogue(&args.catalogue).await?;
            start_server(broker, catalogue, args.listen, shutdown)
                .await?
                .await??;
        }
        Command::Worker(args) => {
            let shutdown = shutdown_on_signal();
            let broker = broker(Some(&args.redis_url), &args.broker).await?;
            let catalogue = catalogue(&args.catalogue).await?;
            start_worker(broker, catalogue, args.concurrency, shutdown)
                .await?
                .await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,fred=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verdict: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

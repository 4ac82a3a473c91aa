//! The long-running subcommands: `standalone`, `server` and `worker`, and the pieces they
//! are built of (broker, problem store, catalogue, the server and the worker tasks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use verdict_broker::{
    BrokerSettings, Catalogue, MemoryBroker, MemoryProblems, RedisBroker, RedisProblems,
    RedisSettings, SharedBroker, SharedProblems,
};
use verdict_sandbox::{Sandbox, SandboxConfig};
use verdict_worker::paths::Locations;
use verdict_worker::{Worker, WorkerConfig};

use crate::cli::{
    ApiArgs, BrokerArgs, CatalogueArgs, CompileArgs, LimitsArgs, ServerArgs, StandaloneArgs,
    WebhookArgs, WorkerArgs, WorkerTuning,
};
use crate::redact::redact;
use crate::BoxError;

/// `verdict standalone` (and `verdict` alone): server and workers in one process.
pub(crate) async fn standalone(args: StandaloneArgs) -> Result<(), BoxError> {
    let shutdown = shutdown_on_signal();
    let redis_url = args.redis.url().await?;
    let broker = match (&args.data_dir, &redis_url) {
        (Some(_), Some(_)) => {
            return Err("--data-dir is for the embedded broker; on Redis, Redis keeps the state (configure its persistence)".into())
        }
        (Some(dir), None) => {
            let settings = settings(&args.broker);
            let dir = dir.clone();
            let opened =
                tokio::task::spawn_blocking(move || MemoryBroker::open(settings, &dir)).await?;
            let shared: SharedBroker = opened.map_err(|e| format!("--data-dir: {e}"))?;
            shared
        }
        (None, url) => broker(url.as_deref(), &args.broker).await?,
    };
    let problems = problem_store(redis_url.as_deref(), &args.broker).await?;
    let catalogue = catalogue(&args.catalogue).await?;
    let policy = input_policy(&args.limits, &args.broker)?;
    load_problems(args.problems_dir.as_deref(), &problems, &policy, &catalogue).await?;
    let webhook = start_webhook(&broker, &args.webhook, "standalone", &shutdown)?;
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
        webhook.as_ref().map(|w| w.metrics()),
    )
    .await?;
    server.await??;
    shutdown.cancel();
    worker.await?;
    stop_webhook(webhook).await;
    Ok(())
}

/// `verdict server`: the GraphQL API only, on Redis.
pub(crate) async fn server(args: ServerArgs) -> Result<(), BoxError> {
    let shutdown = shutdown_on_signal();
    let redis_url = args.redis.required().await?;
    let broker = broker(Some(&redis_url), &args.broker).await?;
    let problems = problem_store(Some(&redis_url), &args.broker).await?;
    let catalogue = catalogue(&args.catalogue).await?;
    let policy = input_policy(&args.limits, &args.broker)?;
    load_problems(args.problems_dir.as_deref(), &problems, &policy, &catalogue).await?;
    let redis = Some((redis_url.as_str(), args.broker.redis_namespace.as_str()));
    let webhook = start_webhook(&broker, &args.webhook, "server", &shutdown)?;
    start_server(
        broker,
        problems,
        catalogue,
        args.listen,
        &args.api,
        policy,
        shutdown.clone(),
        redis,
        webhook.as_ref().map(|w| w.metrics()),
    )
    .await?
    .await??;
    shutdown.cancel();
    stop_webhook(webhook).await;
    Ok(())
}

/// `verdict worker`: a worker only, on Redis.
pub(crate) async fn worker(args: WorkerArgs) -> Result<(), BoxError> {
    let shutdown = shutdown_on_signal();
    let redis_url = args.redis.required().await?;
    let broker = broker(Some(&redis_url), &args.broker).await?;
    let problems = problem_store(Some(&redis_url), &args.broker).await?;
    let catalogue = catalogue(&args.catalogue).await?;
    let webhook = start_webhook(&broker, &args.webhook, "worker", &shutdown)?;
    start_worker(
        broker,
        problems,
        catalogue,
        args.concurrency,
        &args.tuning,
        &args.compile,
        &args.broker,
        shutdown.clone(),
    )
    .await?
    .await?;
    shutdown.cancel();
    stop_webhook(webhook).await;
    Ok(())
}

pub(crate) fn settings(args: &BrokerArgs) -> BrokerSettings {
    BrokerSettings {
        ttl: Duration::from_secs(args.submission_ttl.max(1)),
        max_queue: args.max_queue,
        visibility_timeout: Duration::from_millis(args.visibility_timeout_ms.max(100)),
        max_unfinished_per_owner: args.max_unfinished_per_key,
        max_unfinished_per_user: args.user_max_unfinished,
        max_retained_bytes_per_submission: args.max_retained_bytes_per_submission,
        max_retained_bytes: args.max_retained_mb.saturating_mul(1024 * 1024),
        feed_max_len: args.feed_max_len,
        // Worker liveness: the broker's default.
        ..BrokerSettings::default()
    }
}

pub(crate) async fn broker(url: Option<&str>, args: &BrokerArgs) -> Result<SharedBroker, BoxError> {
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
pub(crate) async fn load_problems(
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
pub(crate) async fn problem_store(
    url: Option<&str>,
    args: &BrokerArgs,
) -> Result<SharedProblems, BoxError> {
    Ok(match url {
        Some(url) => RedisProblems::connect(url, &args.redis_namespace)
            .await
            .map_err(|e| format!("cannot connect to Redis at {}: {e}", redact(url)))?,
        None => MemoryProblems::new(),
    })
}

pub(crate) async fn catalogue(args: &CatalogueArgs) -> Result<Arc<Catalogue>, BoxError> {
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

pub(crate) fn shutdown_on_signal() -> CancellationToken {
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
pub(crate) async fn start_worker(
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

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}

/// The submission limits, with the broker's retention cap (the server refuses what the
/// broker could not keep).
pub(crate) fn input_policy(
    limits: &LimitsArgs,
    broker: &BrokerArgs,
) -> Result<verdict_server::InputPolicy, BoxError> {
    let mut policy = limits.policy()?;
    policy.max_retained_bytes_per_submission = broker.max_retained_bytes_per_submission;
    Ok(policy)
}

#[allow(clippy::too_many_arguments)] // one per aspect of a server
pub(crate) async fn start_server(
    broker: SharedBroker,
    problems: SharedProblems,
    catalogue: Arc<Catalogue>,
    listen: SocketAddr,
    api: &ApiArgs,
    policy: verdict_server::InputPolicy,
    shutdown: CancellationToken,
    // (url, namespace): quotas are counted there, shared by all servers.
    redis: Option<(&str, &str)>,
    // Shown in /metrics beside the server's own (the webhook sender's).
    extra_metrics: Option<verdict_server::MetricsSource>,
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
    if let Some(source) = extra_metrics {
        state.api.metrics.add_source(source);
    }
    Ok(tokio::spawn(verdict_server::serve(listener, state)))
}

/// A running webhook sender (verdict-webhook) and what its tasks are.
pub(crate) struct Webhook {
    tasks: tokio_util::task::TaskTracker,
    metrics: Arc<verdict_webhook::WebhookMetrics>,
}

impl Webhook {
    fn metrics(&self) -> verdict_server::MetricsSource {
        let metrics = Arc::clone(&self.metrics);
        Arc::new(move |out: &mut String| metrics.render(out))
    }
}

/// Starts the webhook sender when `--webhook-url` is set. Its consumer name is this
/// host's name and the process's role, the same after a restart, so that a restarted
/// process resends first what it had not finished delivering.
pub(crate) fn start_webhook(
    broker: &SharedBroker,
    args: &WebhookArgs,
    role: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Webhook>, BoxError> {
    let Some(url) = &args.webhook_url else {
        return Ok(None);
    };
    let config = verdict_webhook::WebhookConfig::new(
        url,
        args.webhook_secret_file.as_deref(),
        args.webhook_max_attempts,
        format!("{}:{role}", hostname()),
    )?;
    let tasks = tokio_util::task::TaskTracker::new();
    let metrics = verdict_webhook::spawn(Arc::clone(broker), config, shutdown.clone(), &tasks)?;
    tasks.close();
    tracing::info!(url = %redact(url), "webhooks: sending each finished submission");
    Ok(Some(Webhook { tasks, metrics }))
}

/// Waits (briefly) for the sender's tasks after shutdown: what they had not delivered
/// stays pending in the feed group for the next start.
pub(crate) async fn stop_webhook(webhook: Option<Webhook>) {
    if let Some(w) = webhook {
        if tokio::time::timeout(Duration::from_secs(2), w.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("webhooks: deliveries still in flight at exit stay pending");
        }
    }
}

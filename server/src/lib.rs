//! The API server: GraphQL over HTTP and graphql-ws on axum. It validates, stores and
//! enqueues submissions and streams their events; it never runs submitted code.

mod app;
mod assets;
mod auth;
mod error;
mod feed;
pub mod jwt;
mod limits;
mod metrics;
pub mod package;
pub mod problems;
mod schema;
mod validate;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql::Schema;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verdict_broker::{Catalogue, SharedBroker};

pub use app::{app, AppState};
pub use auth::{ApiKeys, AuthError, Caller, KeyFileError};
pub use error::ApiError;
pub use limits::{Access, ApiLimits};
pub use metrics::{Metrics, MetricsSource};
pub use schema::{build, sdl, ApiState, VerdictSchema};
pub use validate::{InputPolicy, DEFAULT_MAX_PROBLEM_BYTES};
pub use ws::{Protocol, PROTOCOLS};

/// Builds the shared state for [`app`] and [`serve`]: an open API with default limits.
pub fn state(
    broker: SharedBroker,
    catalogue: Arc<Catalogue>,
    policy: InputPolicy,
    shutdown: CancellationToken,
) -> AppState {
    state_with(
        broker,
        catalogue,
        policy,
        shutdown,
        ApiKeys::open(),
        ApiLimits::default(),
        verdict_broker::MemoryProblems::new(),
    )
}

/// Like [`state`], with API keys (empty = open) and limits.
pub fn state_with(
    broker: SharedBroker,
    catalogue: Arc<Catalogue>,
    policy: InputPolicy,
    shutdown: CancellationToken,
    keys: ApiKeys,
    limits: ApiLimits,
    problems: verdict_broker::SharedProblems,
) -> AppState {
    let metrics = Arc::new(Metrics::default());
    let roles = problems::Roles {
        open: keys.is_open(),
        admins: Arc::new(keys.admins()),
    };
    let api = Arc::new(ApiState {
        feed: feed::FeedWatch::new(Arc::clone(&broker), shutdown.clone()),
        broker,
        catalogue,
        live_toolchains: verdict_broker::LiveToolchains::default(),
        policy,
        metrics: Arc::clone(&metrics),
        shutdown,
        problems,
        roles,
    });
    let access = Arc::new(Access::new(keys, limits));
    let limits = &access.limits;
    let mut builder = Schema::build(
        schema::QueryRoot,
        schema::MutationRoot,
        schema::SubscriptionRoot,
    )
    .data(Arc::clone(&api))
    .extension(limits::Guard {
        access: Arc::clone(&access),
        metrics,
        max_query_bytes: limits.query_bytes(&api.policy),
    })
    .limit_depth(limits.max_depth)
    .limit_complexity(limits.max_complexity)
    .limit_directives(limits.max_directives);
    if !limits.introspection {
        builder = builder.disable_introspection();
    }
    AppState {
        schema: builder.finish(),
        api,
        access,
        sockets: tokio_util::task::TaskTracker::new(),
    }
}

/// Serves on an already-bound listener (tests bind port 0) until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.api.shutdown.clone();
    let sockets = state.sockets.clone();
    // The peer address feeds per-IP limits (rate when open, WebSocket connections).
    // Without TCP_NODELAY, Nagle + delayed ACK held each small event frame ~40 ms
    // (measured in BENCHMARKS.md): push latency is the product here.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await?;
    // Upgraded sockets outlive axum's graceful shutdown: wait for their close handshakes
    // (each bounded by ws::CLOSE_WAIT), so that every client sees 1001, not 1006.
    sockets.close();
    if tokio::time::timeout(ws::CLOSE_WAIT * 2, sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!(open = sockets.len(), "WebSockets still closing at shutdown");
    }
    Ok(())
}

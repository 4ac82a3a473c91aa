//! The API server: GraphQL over HTTP and graphql-ws on axum. It validates, stores and
//! enqueues submissions and streams their events; it never runs submitted code.

mod app;
mod assets;
mod error;
mod metrics;
mod schema;
mod validate;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verdict_broker::{Catalogue, SharedBroker};

pub use app::{app, AppState};
pub use error::ApiError;
pub use metrics::Metrics;
pub use schema::{build, sdl, ApiState, VerdictSchema};
pub use validate::InputPolicy;

/// Builds the shared state for [`app`] and [`serve`].
pub fn state(
    broker: SharedBroker,
    catalogue: Arc<Catalogue>,
    policy: InputPolicy,
    shutdown: CancellationToken,
) -> AppState {
    let api = Arc::new(ApiState {
        broker,
        catalogue,
        policy,
        metrics: Arc::new(Metrics::default()),
        shutdown,
    });
    AppState {
        schema: build(Arc::clone(&api)),
        api,
    }
}

/// Serves on an already-bound listener (tests bind port 0) until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.api.shutdown.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

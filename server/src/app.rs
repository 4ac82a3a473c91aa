//! HTTP routes: GraphQL over HTTP and WebSocket, GraphiQL, health, metrics, example app.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::schema::{ApiState, VerdictSchema};

/// Shared by every route.
#[derive(Clone)]
pub struct AppState {
    pub schema: VerdictSchema,
    pub api: Arc<ApiState>,
}

/// The router; a test can drive it without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/ws", get(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::assets::router())
        .with_state(state)
}

async fn graphql_post(State(state): State<AppState>, request: GraphQLRequest) -> GraphQLResponse {
    state.schema.execute(request.into_inner()).await.into()
}

/// GET /graphql is either a WebSocket upgrade or GraphQL over HTTP GET.
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let wants_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_upgrade {
        return websocket_from(state, request).await;
    }
    match GraphQLRequest::<async_graphql_axum::rejection::GraphQLRejection>::from_request(
        request,
        &(),
    )
    .await
    {
        Ok(req) => {
            let req = req.into_inner();
            if req.query.trim_start().starts_with("mutation") {
                return (StatusCode::METHOD_NOT_ALLOWED, "mutations must use POST").into_response();
            }
            GraphQLResponse::from(state.schema.execute(req).await).into_response()
        }
        Err(rejection) => rejection.into_response(),
    }
}

async fn websocket(State(state): State<AppState>, request: Request) -> Response {
    websocket_from(state, request).await
}

async fn websocket_from(state: AppState, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let schema = state.schema.clone();
    upgrade
        // axum's defaults cost ~128 KiB per idle connection; subscriptions are small.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(2 * 1024 * 1024)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            GraphQLWebSocket::new(stream, schema, protocol)
                .keepalive_timeout(Duration::from_secs(60))
                .serve()
        })
}

async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(1), state.api.broker.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("broker unavailable: {e}"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "broker did not answer within 1 s",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let queue = tokio::time::timeout(Duration::from_millis(500), state.api.broker.queue_len())
        .await
        .ok()
        .and_then(Result::ok);
    let body = state.api.metrics.render(queue, state.api.broker.watched());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

//! HTTP routes: GraphQL over HTTP and WebSocket, GraphiQL, health, metrics, example app.
//!
//! GraphQL over HTTP is handled here rather than by async-graphql-axum's extractor so
//! that the graphql-over-http rules hold exactly (graphql-http audit): the response media
//! type follows `Accept` (`application/json` for legacy clients), request errors answer
//! 400 under `application/graphql-response+json` and carry no `data`, mutations are
//! refused over GET (405), a POST must say `application/json` (CSRF guard: a browser
//! form cannot send it without a preflight), and the body size is capped (413).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::Variables;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::auth::{AuthError, Caller};
use crate::limits::Access;
use crate::metrics::Rejection;
use crate::schema::{ApiState, VerdictSchema};
use crate::ws;

/// Shared by every route.
#[derive(Clone)]
pub struct AppState {
    pub schema: VerdictSchema,
    pub api: Arc<ApiState>,
    pub access: Arc<Access>,
    /// Every WebSocket's task: `serve` waits for them (their close handshakes) on shutdown.
    pub sockets: tokio_util::task::TaskTracker,
}

/// The router; a test can drive it without a socket.
pub fn app(state: AppState) -> Router {
    let cors = cors(&state.access.limits.cors_origins);
    let router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/ws", get(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::assets::router())
        .with_state(state);
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// `--cors-origin`: tower-http's CORS layer for exactly those origins (a preflight from
/// any other gets no CORS headers, so the browser refuses the call). Credentials travel
/// in `Authorization`, never cookies, so no `Allow-Credentials`.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allowed: Vec<header::HeaderValue> = origins
        .iter()
        .filter_map(|o| header::HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if allowed.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

const JSON: &str = "application/json; charset=utf-8";
const GRAPHQL_RESPONSE: &str = "application/graphql-response+json; charset=utf-8";

/// The media type of the answer, chosen from `Accept`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Accept {
    /// `application/json`: always 200, errors in the body (legacy clients expect this).
    Json,
    /// `application/graphql-response+json`: request errors answer 4xx.
    GraphqlResponse,
}

/// Picks the media type: the acceptable type with the highest q, earlier on a tie; a
/// missing Accept, `*/*` and `application/*` mean `application/json`.
fn negotiate(headers: &HeaderMap) -> Option<Accept> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(Accept::Json);
    };
    if accept.trim().is_empty() {
        return Some(Accept::Json);
    }
    let mut best: Option<(f32, Accept)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let kind = match media.as_str() {
            "application/graphql-response+json" => Accept::GraphqlResponse,
            "application/json" | "application/*" | "*/*" => Accept::Json,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, kind));
        }
    }
    best.map(|(_, kind)| kind)
}

fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// A JSON error body in the GraphQL response shape (no `data`: nothing executed).
fn error_response(
    status: StatusCode,
    accept: Accept,
    code: &str,
    message: impl Into<String>,
) -> Response {
    let body = json!({ "errors": [{ "message": message.into(), "extensions": { "code": code } }] });
    let content_type = match accept {
        Accept::Json => JSON,
        Accept::GraphqlResponse => GRAPHQL_RESPONSE,
    };
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        body.to_string(),
    )
        .into_response()
}

impl AppState {
    fn caller(&self, headers: &HeaderMap, ip: Option<IpAddr>) -> Result<Caller, AuthError> {
        let credential = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.access.keys.authenticate(credential, ip)
    }

    fn refuse(&self, why: Rejection, response: Response) -> Response {
        self.api.metrics.rejected(why);
        response
    }

    fn unauthenticated(&self, accept: Accept, e: AuthError) -> Response {
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            accept,
            "UNAUTHENTICATED",
            e.to_string(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        self.refuse(Rejection::Unauthenticated, response)
    }

    fn bad_request(&self, accept: Accept, message: impl Into<String>) -> Response {
        self.refuse(
            Rejection::BadRequest,
            error_response(StatusCode::BAD_REQUEST, accept, "BAD_REQUEST", message),
        )
    }

    async fn execute(
        &self,
        accept: Accept,
        request: async_graphql::Request,
        caller: Caller,
    ) -> Response {
        let response = self.schema.execute(request.data(caller)).await;
        let request_error = ws::is_request_error(&response);
        let (status, content_type) = match accept {
            Accept::Json => (StatusCode::OK, JSON),
            Accept::GraphqlResponse if request_error => (StatusCode::BAD_REQUEST, GRAPHQL_RESPONSE),
            Accept::GraphqlResponse => (StatusCode::OK, GRAPHQL_RESPONSE),
        };
        let body = if request_error {
            // No execution happened, so the response has no `data` entry at all.
            json!({ "errors": response.errors }).to_string()
        } else {
            serde_json::to_string(&response).unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot serialize a GraphQL response");
                json!({ "errors": [{ "message": "internal error", "extensions": { "code": "INTERNAL" } }] })
                    .to_string()
            })
        };
        let mut http = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
        http.headers_mut().extend(response.http_headers);
        http
    }
}

/// The GraphQL request parameters of a POST body or a GET query string, checked.
fn request_from(params: &Map<String, Value>) -> Result<async_graphql::Request, String> {
    let query = match params.get("query") {
        Some(Value::String(q)) => q.clone(),
        None | Some(Value::Null) => return Err("the `query` parameter is missing".into()),
        Some(_) => return Err("the `query` parameter must be a string".into()),
    };
    let mut request = async_graphql::Request::new(query);
    match params.get("operationName") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => request = request.operation_name(name.as_str()),
        Some(_) => return Err("the `operationName` parameter must be a string".into()),
    }
    match params.get("variables") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => request = request.variables(Variables::from_json(v.clone())),
        Some(_) => return Err("the `variables` parameter must be a map".into()),
    }
    match params.get("extensions") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err("the `extensions` parameter must be a map".into()),
    }
    Ok(request)
}

/// True when the POST's content type is one a browser cannot send cross-site without a
/// CORS preflight: `application/json` or `application/graphql-response+json`.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let utf8 = parts.all(|p| match p.trim().split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    utf8 && (media == "application/json" || media == "application/graphql-response+json")
}

/// `multipart/form-data`: a GraphQL multipart request (file uploads, `importProblem`).
fn multipart_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// A GraphQL multipart request (graphql-multipart-request-spec). A browser form may post
/// multipart/form-data cross-site without a preflight, so the request must carry a header
/// no form can set: `Authorization` or `Apollo-Require-Preflight` (the CSRF guard stays).
/// The body may be as large as a problem's test data plus 1 MiB; one file at most.
async fn graphql_multipart(
    state: AppState,
    accept: Accept,
    parts: Parts,
    body: axum::body::Body,
) -> Response {
    let headers = &parts.headers;
    if !headers.contains_key(header::AUTHORIZATION)
        && !headers.contains_key("apollo-require-preflight")
    {
        return state.refuse(
            Rejection::UnsupportedMediaType,
            // 415 like every other form-encodable POST: without the header it is one.
            error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                accept,
                "BAD_REQUEST",
                "a multipart/form-data POST needs an Authorization or an Apollo-Require-Preflight header (CSRF guard)",
            ),
        );
    }
    let caller = match state.caller(headers, peer_ip(&parts)) {
        Ok(c) => c,
        Err(e) => return state.unauthenticated(accept, e),
    };
    let cap = usize::try_from(state.api.policy.max_problem_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(state.access.limits.body_bytes(&state.api.policy))
        .saturating_add(1024 * 1024);
    let bytes = match axum::body::to_bytes(body, cap).await {
        Ok(b) => b,
        Err(_) => {
            return state.refuse(
                Rejection::TooLarge,
                error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    accept,
                    "PAYLOAD_TOO_LARGE",
                    format!("the request body is larger than {cap} bytes"),
                ),
            )
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let options = async_graphql::http::MultipartOptions::default()
        .max_num_files(1)
        .max_file_size(cap);
    match async_graphql::http::receive_body(content_type, bytes.as_ref(), options).await {
        Ok(request) => state.execute(accept, request, caller).await,
        Err(e) => state.bad_request(accept, format!("bad multipart request: {e}")),
    }
}

async fn graphql_post(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(accept) = negotiate(&parts.headers) else {
        return state.refuse(
            Rejection::NotAcceptable,
            error_response(
                StatusCode::NOT_ACCEPTABLE,
                Accept::Json,
                "NOT_ACCEPTABLE",
                "accept application/graphql-response+json or application/json",
            ),
        );
    };
    if multipart_content_type(&parts.headers) {
        return graphql_multipart(state, accept, parts, body).await;
    }
    if !json_content_type(&parts.headers) {
        return state.refuse(
            Rejection::UnsupportedMediaType,
            error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                accept,
                "UNSUPPORTED_MEDIA_TYPE",
                "POST /graphql needs Content-Type: application/json",
            ),
        );
    }
    let caller = match state.caller(&parts.headers, peer_ip(&parts)) {
        Ok(c) => c,
        Err(e) => return state.unauthenticated(accept, e),
    };
    let cap = state.access.limits.body_bytes(&state.api.policy);
    let bytes = match axum::body::to_bytes(body, cap).await {
        Ok(b) => b,
        Err(_) => {
            return state.refuse(
                Rejection::TooLarge,
                error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    accept,
                    "PAYLOAD_TOO_LARGE",
                    format!("the request body is larger than {cap} bytes"),
                ),
            )
        }
    };
    let params =
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(params)) => params,
            // Batching would multiply every per-request limit by the batch size; one
            // operation per request (HTTP/2 and WebSockets make several cheap anyway).
            Ok(Value::Array(_)) => return state.bad_request(
                accept,
                "batched requests (a JSON array) are not supported: send one operation per request",
            ),
            Ok(_) => return state.bad_request(accept, "the body must be a JSON object"),
            Err(e) => return state.bad_request(accept, format!("the body is not valid JSON: {e}")),
        };
    match request_from(&params) {
        Ok(request) => state.execute(accept, request, caller).await,
        Err(why) => state.bad_request(accept, why),
    }
}

/// GET /graphql is either a WebSocket upgrade or GraphQL over HTTP GET.
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let wants_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (mut parts, _body) = request.into_parts();
    if wants_upgrade {
        return websocket_from(state, &mut parts).await;
    }
    let Some(accept) = negotiate(&parts.headers) else {
        return state.refuse(
            Rejection::NotAcceptable,
            error_response(
                StatusCode::NOT_ACCEPTABLE,
                Accept::Json,
                "NOT_ACCEPTABLE",
                "accept application/graphql-response+json or application/json",
            ),
        );
    };
    let caller = match state.caller(&parts.headers, peer_ip(&parts)) {
        Ok(c) => c,
        Err(e) => return state.unauthenticated(accept, e),
    };
    let Ok(Query(raw)) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri) else {
        return state.bad_request(accept, "the query string is malformed");
    };
    // In a URL, variables and extensions are JSON text.
    let mut params = Map::new();
    for (key, value) in raw {
        let value = match key.as_str() {
            "variables" | "extensions" => match serde_json::from_str::<Value>(&value) {
                Ok(v) => v,
                Err(_) => return state.bad_request(accept, format!("`{key}` is not valid JSON")),
            },
            _ => Value::String(value),
        };
        params.insert(key, value);
    }
    let mut request = match request_from(&params) {
        Ok(r) => r,
        Err(why) => return state.bad_request(accept, why),
    };
    if is_mutation(&mut request) {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            accept,
            "METHOD_NOT_ALLOWED",
            "mutations must use POST",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return state.refuse(Rejection::MethodNotAllowed, response);
    }
    state.execute(accept, request, caller).await
}

/// Does `request` select a mutation? (A document that does not parse is left to the
/// executor, which reports the syntax error.) The parsed document stays in `request`, so
/// the executor does not parse it again.
fn is_mutation(request: &mut async_graphql::Request) -> bool {
    let operation_name = request.operation_name.clone();
    let Ok(doc) = request.parsed_query() else {
        return false;
    };
    let ty = match (&doc.operations, operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| op.node.ty),
        (DocumentOperations::Multiple(ops), None) => {
            // Ambiguous without a name (an error anyway): refuse if any is a mutation.
            ops.values()
                .any(|op| op.node.ty == OperationType::Mutation)
                .then_some(OperationType::Mutation)
        }
    };
    ty == Some(OperationType::Mutation)
}

async fn websocket(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    websocket_from(state, &mut parts).await
}

async fn websocket_from(state: AppState, parts: &mut Parts) -> Response {
    let upgrade = match WebSocketUpgrade::from_request_parts(parts, &()).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    // `--ws-allowed-origin`: a browser page from another origin may not open a socket.
    let allowed = &state.access.limits.ws_allowed_origins;
    if !allowed.is_empty() {
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if let Some(origin) = origin {
            if !allowed.iter().any(|a| a.trim_end_matches('/') == origin) {
                tracing::debug!(origin, "WebSocket upgrade from an origin not allowed");
                return (
                    StatusCode::FORBIDDEN,
                    "this origin may not open a WebSocket\n",
                )
                    .into_response();
            }
        }
    }
    let ip = peer_ip(parts);
    // A key in the upgrade request's header (non-browser clients) is checked now; browsers
    // cannot set headers on a WebSocket and send it in connection_init instead.
    let caller = match parts.headers.get(header::AUTHORIZATION) {
        None => None,
        Some(_) => match state.caller(&parts.headers, ip) {
            Ok(c) => Some(c),
            Err(e) => return state.unauthenticated(Accept::Json, e),
        },
    };
    let Some(slot) = state.access.ws_connection(ip) else {
        return state.refuse(
            Rejection::TooManyConnections,
            (
                StatusCode::TOO_MANY_REQUESTS,
                "too many WebSocket connections from this address",
            )
                .into_response(),
        );
    };
    let limits = &state.access.limits;
    let max_message = limits.ws_message_bytes(&state.api.policy);
    let upgrade = upgrade
        // axum's defaults cost ~128 KiB per idle connection; subscriptions are small.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(max_message)
        .max_frame_size(max_message);
    // The client's order of preference, not ours (axum's `protocols` picks by ours).
    let protocol = ws::negotiate(&parts.headers);
    let mut upgrade = upgrade;
    if let Some(p) = protocol {
        upgrade.set_selected_protocol(HeaderValue::from_static(p.name()));
    }
    let connection = ws::Connection {
        schema: state.schema.clone(),
        access: Arc::clone(&state.access),
        metrics: Arc::clone(&state.api.metrics),
        shutdown: state.api.shutdown.clone(),
        ip,
        caller,
        _slot: slot,
    };
    let sockets = state.sockets.clone();
    upgrade.on_upgrade(move |socket| sockets.track_future(ws::serve(socket, protocol, connection)))
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
    // One broker read serves the queue length and the verdict counts.
    let stats = tokio::time::timeout(Duration::from_millis(500), state.api.broker.stats())
        .await
        .ok()
        .and_then(Result::ok);
    let queue = stats.as_ref().map(|s| s.waiting + s.pending);
    let broker = &state.api.broker;
    let mut body = state
        .api
        .metrics
        .render(queue, broker.watched(), broker.reconnects());
    if let Some(stats) = &stats {
        crate::metrics::Metrics::render_shared(&mut body, stats);
    }
    // procfs reads do not block on a disk, but tokio::fs keeps them off the runtime.
    if let Ok(status) = tokio::fs::read_to_string("/proc/self/status").await {
        crate::metrics::Metrics::render_process(&mut body, &status);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Option<Accept> {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).expect("header"),
        );
        negotiate(&h)
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(&HeaderMap::new()), Some(Accept::Json));
        assert_eq!(accept("application/json"), Some(Accept::Json));
        assert_eq!(accept("*/*"), Some(Accept::Json));
        assert_eq!(
            accept("application/graphql-response+json, application/json;q=0.9"),
            Some(Accept::GraphqlResponse)
        );
        assert_eq!(
            accept("application/json;q=0.5, application/graphql-response+json"),
            Some(Accept::GraphqlResponse)
        );
        assert_eq!(accept("text/html"), None);
    }

    #[test]
    fn mutation_detection() {
        let m = |q: &str| is_mutation(&mut async_graphql::Request::new(q));
        assert!(m("mutation { cancel(id: 1) { id } }"));
        assert!(!m("{ languages { id } }"));
        assert!(!m("query Q { languages { id } }"));
        assert!(!m("not graphql"));
        let mut named =
            async_graphql::Request::new("query A { a } mutation B { b }").operation_name("B");
        assert!(is_mutation(&mut named));
    }
}

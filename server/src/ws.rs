//! GraphQL over WebSocket, written by hand over axum's WebSocket.
//!
//! Why not async-graphql's `GraphQLWebSocket`: in 7.2 it closes with 1002/1011 where the
//! protocol requires 4403/4401/4400, has no connection-init timeout (4408), silently
//! replaces a subscription whose id is already active (the protocol requires 4409), and
//! sends reasons longer than a close frame allows (the peer then sees 1006). This module
//! follows enisdenjo/graphql-ws `PROTOCOL.md` (subprotocol `graphql-transport-ws`) and
//! keeps the legacy subscriptions-transport-ws protocol (subprotocol `graphql-ws`).
//!
//! One task per connection; its operations live in a `StreamMap` polled by that task, so
//! an idle subscription costs its stream and nothing else (no task, no channel).
//!
//! Close codes (graphql-transport-ws; the legacy protocol uses the same ones):
//! - 4400 malformed or unexpected message (reason ≤ 123 bytes, as a close frame allows)
//! - 4401 `subscribe` before `connection_ack`
//! - 4403 `connection_init` with a missing or bad API key
//! - 4406 no supported subprotocol was offered
//! - 4408 no `connection_init` within the init timeout
//! - 4409 `subscribe` with the id of an operation still running
//! - 4429 a second `connection_init`, or (reason "Too many connections for this key") the
//!   key already has its maximum of open connections: the reference client does not
//!   retry 4429, which is what a quota wants
//! - 1001 the server is shutting down (clients reconnect and resubscribe with `afterSeq`);
//!   an unfinished subscription never gets `complete` on shutdown
//! - 1009 a message larger than the cap
//!
//! Every close ends with the RFC 6455 close handshake: a client's Close frame is answered
//! with a Close frame carrying its code (1000 → 1000) before the TCP connection ends, and
//! after the server sends its own Close it reads on until the client's answer (at most
//! [`CLOSE_WAIT`]). Dropping the socket instead shows the peer 1006, and the reference
//! client in lazy mode then fails or backs off the subscription that starts next.
//!
//! The subprotocol is the first one in the client's `Sec-WebSocket-Protocol` list that we
//! speak ([`negotiate`], RFC 6455 §4.2.2), echoed as the exact token.
//!
//! Too many operations on one connection is not fatal: that `subscribe` gets an `error`
//! message with `extensions.code` RATE_LIMITED, and the connection stays open.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Request, Response, ServerError, Variables};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{json, Map, Value};
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::limits::{Access, KeySlot, WsSlot};
use crate::metrics::Metrics;
use crate::schema::VerdictSchema;

/// The subprotocols we serve. The client's order of preference decides ([`negotiate`]).
pub const PROTOCOLS: [&str; 2] = ["graphql-transport-ws", "graphql-ws"];

/// How long a closing socket waits for the peer's half of the close handshake.
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// A negotiated subprotocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// graphql-transport-ws (enisdenjo/graphql-ws).
    TransportWs,
    /// graphql-ws (the legacy subscriptions-transport-ws).
    Legacy,
}

impl Protocol {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "graphql-transport-ws" => Some(Protocol::TransportWs),
            "graphql-ws" => Some(Protocol::Legacy),
            _ => None,
        }
    }

    /// The token as it goes on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::Legacy => "graphql-ws",
        }
    }
}

/// The subprotocol to answer with: the first token of the client's
/// `Sec-WebSocket-Protocol` header(s), in the client's order, that we speak. Tokens are
/// compared exactly (they are case-sensitive); unknown ones are skipped.
pub fn negotiate(headers: &axum::http::HeaderMap) -> Option<Protocol> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|token| Protocol::from_name(token.trim()))
}

/// Everything a connection needs.
pub struct Connection {
    pub schema: VerdictSchema,
    pub access: Arc<Access>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub ip: Option<IpAddr>,
    /// A caller already authenticated by the upgrade request's Authorization header.
    pub caller: Option<Caller>,
    /// Holds this connection's place in the per-IP count.
    pub _slot: WsSlot,
}

/// An item of an operation's stream: a response (with its index), or the end.
enum Item {
    Response(usize, Box<Response>),
    End,
}

type Operations = StreamMap<String, BoxStream<'static, Item>>;

/// Why the loop stops with an error: the close code and reason we send.
struct Close(u16, String);

/// How the connection loop ended.
enum End {
    /// The peer sent a Close frame: answer it.
    PeerClosed,
    /// The connection is gone (no close frame, or a failed read or write).
    Gone,
}

impl Close {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Close(code, reason.into())
    }
}

/// The peer went away without a close frame (reserved: never sent on the wire).
const ABNORMAL: u16 = 1006;

/// A close reason must fit a control frame: 125 bytes minus the 2-byte code.
const MAX_REASON: usize = 123;

fn truncate(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Serves one upgraded socket until it closes.
pub async fn serve(mut socket: WebSocket, protocol: Option<Protocol>, conn: Connection) {
    let _open = conn.metrics.websocket();
    let Some(protocol) = protocol else {
        // The reference server does the same when no known subprotocol was offered.
        close(
            &mut socket,
            &conn.metrics,
            4406,
            "Subprotocol not acceptable",
        )
        .await;
        return;
    };
    let mut state = State {
        protocol,
        conn,
        acked: false,
        init_received: false,
        ops: StreamMap::new(),
        key_slot: None,
    };
    let result = state.run(&mut socket).await;
    // The operations end before the handshake: nothing more is sent on this socket.
    state.ops = StreamMap::new();
    match result {
        Ok(End::PeerClosed) => answer_close(&mut socket).await,
        Ok(End::Gone) => {}
        // 1006 is never sent (it means "no close frame"): the peer is gone already.
        Err(Close(ABNORMAL, _)) => {}
        Err(Close(code, reason)) => {
            close(&mut socket, &state.conn.metrics, code, &reason).await;
        }
    }
}

/// Answers the peer's Close frame. tungstenite queued the answer (the peer's own code)
/// when it read the frame; it goes out on the next write or flush, and `close` flushes.
async fn answer_close(socket: &mut WebSocket) {
    use futures_util::SinkExt as _;
    let _ = tokio::time::timeout(CLOSE_WAIT, socket.close()).await;
}

/// Sends our Close frame, then reads until the peer's answer (or [`CLOSE_WAIT`]), so that
/// the TCP connection ends only after both Close frames: the peer sees `code`, not 1006.
async fn close(socket: &mut WebSocket, metrics: &Metrics, code: u16, reason: &str) {
    metrics.ws_closed(code);
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(truncate(reason)),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        // Data frames after our Close are discarded; the peer's Close ends the exchange.
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

struct State {
    protocol: Protocol,
    conn: Connection,
    acked: bool,
    init_received: bool,
    ops: Operations,
    /// Holds this connection's place in its key's count.
    key_slot: Option<KeySlot>,
}

impl State {
    /// The connection loop. Ok(end) when the peer closed or left; Err(close) to close
    /// with a code.
    async fn run(&mut self, socket: &mut WebSocket) -> Result<End, Close> {
        let limits = &self.conn.access.limits;
        let init_deadline = tokio::time::sleep(limits.connection_init_timeout);
        tokio::pin!(init_deadline);
        let keepalive_every = limits.keepalive.max(Duration::from_millis(100));
        let shutdown = self.conn.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        let mut keepalive = tokio::time::interval_at(
            tokio::time::Instant::now() + keepalive_every,
            keepalive_every,
        );
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // An end user's token ends the connection when it expires: 4403, so that the
        // client reconnects with a fresh token (README, "End-user tokens").
        let expiry = tokio::time::sleep(Duration::from_secs(86_400 * 365));
        tokio::pin!(expiry);
        let mut expiry_armed = false;
        loop {
            if !expiry_armed {
                if let Some(at) = self.token_expiry() {
                    expiry.as_mut().reset(at);
                    expiry_armed = true;
                }
            }
            tokio::select! {
                // Events that are ready go out before a shutdown closes the socket: a
                // stream that delivered its FinishedEvent still gets its `complete`.
                // Streams never end because of shutdown; they just stop with the socket.
                biased;
                Some((id, item)) = self.ops.next(), if !self.ops.is_empty() => {
                    self.on_item(socket, id, item).await?;
                }
                message = socket.recv() => match message {
                    None => return Ok(End::Gone),
                    Some(Err(e)) => {
                        // tungstenite reports an oversized message as a capacity error.
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("Space limit") || text.contains("size") {
                            return Err(Close::new(1009, "Message too big"));
                        }
                        return Ok(End::Gone);
                    }
                    Some(Ok(Message::Text(text))) => self.on_text(socket, text.as_str()).await?,
                    Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                        Ok(text) => self.on_text(socket, text).await?,
                        Err(_) => return Err(Close::new(4400, "Invalid message received")),
                    },
                    Some(Ok(Message::Close(_))) => return Ok(End::PeerClosed),
                    // WebSocket-level ping/pong is handled by tungstenite.
                    Some(Ok(_)) => {}
                },
                () = &mut expiry, if expiry_armed => {
                    return Err(Close::new(4403, "Forbidden: the token expired"));
                }
                () = &mut init_deadline, if !self.init_received => {
                    return Err(Close::new(4408, "Connection initialisation timeout"));
                }
                _ = keepalive.tick() => {
                    let frame = match self.protocol {
                        Protocol::TransportWs => json!({ "type": "ping" }),
                        // The legacy protocol's keep-alive exists only after the ack.
                        Protocol::Legacy if self.acked => json!({ "type": "ka" }),
                        Protocol::Legacy => continue,
                    };
                    send(socket, &frame).await?;
                }
                () = &mut shutdown => {
                    return Err(Close::new(1001, "Server shutting down"));
                }
            }
        }
    }

    /// When the connection's end-user token expires (with the verifier's leeway).
    fn token_expiry(&self) -> Option<tokio::time::Instant> {
        let Some(crate::auth::Caller::User { exp, .. }) = &self.conn.caller else {
            return None;
        };
        let now = jsonwebtoken::get_current_timestamp();
        let left = exp
            .saturating_add(crate::jwt::LEEWAY_SECS)
            .saturating_sub(now);
        Some(tokio::time::Instant::now() + Duration::from_secs(left))
    }

    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), Close> {
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            return Err(Close::new(
                4400,
                "Invalid message received: not a JSON object",
            ));
        };
        let Some(kind) = message.get("type").and_then(Value::as_str) else {
            return Err(Close::new(4400, "Invalid message received: no `type`"));
        };
        match (self.protocol, kind) {
            (_, "connection_init") => self.on_init(socket, &message).await,
            (Protocol::TransportWs, "ping") => send(socket, &json!({ "type": "pong" })).await,
            (Protocol::TransportWs, "pong") => Ok(()),
            (Protocol::TransportWs, "subscribe") | (Protocol::Legacy, "start") => {
                self.on_subscribe(socket, &message).await
            }
            (Protocol::TransportWs, "complete") | (Protocol::Legacy, "stop") => {
                let Some(id) = message.get("id").and_then(Value::as_str) else {
                    return Err(Close::new(4400, "Invalid message received: no `id`"));
                };
                // The client stops listening: dropping the stream ends the subscription.
                self.ops.remove(id);
                Ok(())
            }
            (Protocol::Legacy, "connection_terminate") => Err(Close::new(1000, "Terminated")),
            (_, other) => Err(Close::new(
                4400,
                format!("Invalid message received: unexpected type `{other}`"),
            )),
        }
    }

    async fn on_init(
        &mut self,
        socket: &mut WebSocket,
        message: &Map<String, Value>,
    ) -> Result<(), Close> {
        if self.init_received {
            return Err(Close::new(4429, "Too many initialisation requests"));
        }
        self.init_received = true;
        let payload = match message.get("payload") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(_) => {
                return Err(Close::new(
                    4400,
                    "Invalid message received: `payload` must be an object",
                ))
            }
        };
        let credential = payload
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.as_str());
        let caller = match (credential, &self.conn.caller) {
            // A key from the upgrade request's header stands unless the payload has one.
            (None, Some(caller)) => Ok(caller.clone()),
            (credential, _) => self.conn.access.keys.authenticate(credential, self.conn.ip),
        };
        match caller {
            Ok(caller) => {
                let Some(slot) = self.conn.access.ws_key_connection(&caller).await else {
                    return Err(Close::new(4429, "Too many connections for this key"));
                };
                self.key_slot = Some(slot);
                self.conn.caller = Some(caller);
                self.acked = true;
                send(socket, &json!({ "type": "connection_ack" })).await?;
                if self.protocol == Protocol::Legacy {
                    send(socket, &json!({ "type": "ka" })).await?;
                }
                Ok(())
            }
            Err(e) => {
                if self.protocol == Protocol::Legacy {
                    let frame = json!({ "type": "connection_error", "payload": { "message": e.to_string() } });
                    send(socket, &frame).await?;
                }
                Err(Close::new(4403, "Forbidden"))
            }
        }
    }

    async fn on_subscribe(
        &mut self,
        socket: &mut WebSocket,
        message: &Map<String, Value>,
    ) -> Result<(), Close> {
        let id = match message.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                return Err(Close::new(
                    4400,
                    "Invalid message received: `id` must be a non-empty string",
                ))
            }
        };
        let request = parse_request(message.get("payload"))
            .map_err(|why| Close::new(4400, format!("Invalid message received: {why}")))?;
        let caller = match (&self.conn.caller, self.acked) {
            (Some(caller), true) => caller.clone(),
            _ => return Err(Close::new(4401, "Unauthorized")),
        };
        if self.ops.contains_key(&id) {
            match self.protocol {
                Protocol::TransportWs => {
                    return Err(Close::new(
                        4409,
                        format!("Subscriber for {id} already exists"),
                    ))
                }
                // subscriptions-transport-ws replaces the running operation instead.
                Protocol::Legacy => {
                    self.ops.remove(&id);
                }
            }
        }
        let max = self.conn.access.limits.max_subscriptions_per_connection;
        if self.ops.len() >= max {
            let error = json!({
                "message": format!("too many operations on this connection (at most {max})"),
                "extensions": { "code": "RATE_LIMITED" }
            });
            return send(
                socket,
                &json!({ "id": id, "type": "error", "payload": [error] }),
            )
            .await;
        }
        let request = request.data(caller);
        let stream = self
            .conn
            .schema
            .execute_stream(request)
            .enumerate()
            .map(|(i, r)| Item::Response(i, Box::new(r)))
            .chain(stream::once(async { Item::End }));
        self.ops.insert(id, Box::pin(stream) as Pin<Box<_>>);
        Ok(())
    }

    async fn on_item(
        &mut self,
        socket: &mut WebSocket,
        id: String,
        item: Item,
    ) -> Result<(), Close> {
        match item {
            Item::Response(index, response) => {
                if index == 0 && is_request_error(&response) {
                    // Parse and validation errors (no execution happened) are an `error`
                    // message, after which no `complete` follows.
                    self.ops.remove(&id);
                    return send(
                        socket,
                        &json!({ "id": id, "type": "error", "payload": response.errors }),
                    )
                    .await;
                }
                let kind = match self.protocol {
                    Protocol::TransportWs => "next",
                    Protocol::Legacy => "data",
                };
                let payload = serde_json::to_value(&*response).unwrap_or(Value::Null);
                send(
                    socket,
                    &json!({ "id": id, "type": kind, "payload": payload }),
                )
                .await
            }
            Item::End => send(socket, &json!({ "id": id, "type": "complete" })).await,
        }
    }
}

async fn send(socket: &mut WebSocket, frame: &Value) -> Result<(), Close> {
    // A failed send means the peer is gone; there is no one left to tell.
    socket
        .send(Message::Text(Utf8Bytes::from(frame.to_string())))
        .await
        .map_err(|_| Close::new(ABNORMAL, ""))
}

/// A response to a request that never executed: parse, validation or variable errors
/// (they carry no path), so there is no data.
pub(crate) fn is_request_error(response: &Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response
            .errors
            .iter()
            .all(|e: &ServerError| e.path.is_empty())
}

/// The `subscribe` payload: `{query, operationName?, variables?, extensions?}`.
fn parse_request(payload: Option<&Value>) -> Result<Request, &'static str> {
    let Some(Value::Object(payload)) = payload else {
        return Err("`payload` must be an object");
    };
    let Some(query) = payload.get("query").and_then(Value::as_str) else {
        return Err("`payload.query` must be a string");
    };
    let mut request = Request::new(query);
    match payload.get("operationName") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => request = request.operation_name(name.as_str()),
        Some(_) => return Err("`payload.operationName` must be a string"),
    }
    match payload.get("variables") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => request = request.variables(Variables::from_json(v.clone())),
        Some(_) => return Err("`payload.variables` must be an object"),
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_REASON);
        assert!(long.starts_with(cut));
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn the_clients_order_of_preference_wins() {
        use axum::http::{header::SEC_WEBSOCKET_PROTOCOL, HeaderMap, HeaderValue};
        let offer = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(v));
            }
            negotiate(&h)
        };
        // gql's default offer: the legacy protocol first.
        assert_eq!(
            offer(&["graphql-ws, graphql-transport-ws"]),
            Some(Protocol::Legacy)
        );
        assert_eq!(
            offer(&["graphql-transport-ws,graphql-ws"]),
            Some(Protocol::TransportWs)
        );
        assert_eq!(
            offer(&["mqtt", "graphql-ws", "graphql-transport-ws"]),
            Some(Protocol::Legacy)
        );
        assert_eq!(
            offer(&["chat, graphql-transport-ws"]),
            Some(Protocol::TransportWs)
        );
        // Tokens are case-sensitive.
        assert_eq!(offer(&["GRAPHQL-WS"]), None);
        assert_eq!(offer(&[]), None);
        assert_eq!(Protocol::Legacy.name(), "graphql-ws");
    }

    #[test]
    fn payload_shapes() {
        assert!(parse_request(Some(&json!({ "query": "{ a }" }))).is_ok());
        assert!(parse_request(Some(&json!({ "query": 1 }))).is_err());
        assert!(parse_request(Some(&json!({ "query": "{a}", "variables": [] }))).is_err());
        assert!(parse_request(None).is_err());
    }
}

//! The API's edges against real `verdict standalone` processes: graphql-ws close codes and
//! messages (raw frames, both subprotocols), GraphQL-over-HTTP rules, API keys and
//! ownership, rate limits, connection limits and /metrics.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use verdict_testkit::{free_port, Proc, Server};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

/// `verdict standalone` with extra flags, on a free port.
fn standalone(extra: &[&str]) -> Server {
    spawn(&["standalone", "--concurrency", "2"], extra, &[])
}

/// `verdict ARGS --listen <free port> EXTRA` with environment `envs`, once it listens.
fn spawn(args: &[&str], extra: &[&str], envs: &[(&str, &str)]) -> Server {
    spawn_logging(args, extra, envs, std::process::Stdio::inherit())
}

/// Like [`spawn`], with the process's stderr (its logs) sent to `stderr`.
fn spawn_logging(
    args: &[&str],
    extra: &[&str],
    envs: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(bin())
        .args(args)
        .args(["--listen", &listen])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(envs.iter().copied())
        .stderr(stderr)
        .spawn()
        .expect("spawn verdict");
    let proc = Proc(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "verdict did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { proc, port }
}

/// A sha256 hex digest, as the key file holds it (computed with sha256sum, so the test
/// checks the documented recipe).
fn sha256_hex(key: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha256sum", "sh", key])
        .output()
        .expect("sha256sum");
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

const SLEEPER: &str = "import time\ntime.sleep(4)\nprint('done')";
const SUBMIT: &str = "mutation($i: SubmitInput!) { submit(input: $i) { id status } }";
const EVENTS: &str = "subscription($id: ID!) { submissionEvents(id: $id) { __typename seq } }";

/// POST /graphql with optional bearer key; returns (status, headers, body).
async fn post(
    server: &Server,
    key: Option<&str>,
    body: Value,
) -> (u16, HashMap<String, String>, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/graphql", server.http()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let res = req.send().await.expect("POST");
    let status = res.status().as_u16();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

async fn submit_as(server: &Server, key: Option<&str>, source: &str) -> Value {
    post(
        server,
        key,
        json!({ "query": SUBMIT, "variables": { "i": { "language": "python3", "source": source } } }),
    )
    .await
    .2
}

// ---------------------------------------------------------------------------------------
// Raw graphql-ws frames

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Raw(Socket);

/// What the server did next.
#[derive(Debug)]
enum Got {
    Frame(Value),
    Closed(u16, String),
}

impl Raw {
    async fn open(server: &Server, path: &str, protocol: Option<&str>) -> Raw {
        let mut request = server.ws(path).into_client_request().unwrap();
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("ws connect");
        Raw(socket)
    }

    async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    async fn send_text(&mut self, text: &str) {
        self.0.send(Message::text(text)).await.expect("ws send");
    }

    /// The next text frame or the close, within 10 s.
    async fn next(&mut self) -> Got {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("nothing from the server within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => return Got::Frame(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(Some(f)))) => {
                    return Got::Closed(f.code.into(), f.reason.to_string())
                }
                Some(Ok(Message::Close(None))) | None => return Got::Closed(1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("ws error: {e}"),
            }
        }
    }

    /// The next frame that is not a keep-alive.
    async fn frame(&mut self) -> Value {
        loop {
            match self.next().await {
                Got::Frame(f) if f["type"] == "ping" || f["type"] == "ka" => continue,
                Got::Frame(f) => return f,
                Got::Closed(code, reason) => panic!("closed {code} {reason}, expected a frame"),
            }
        }
    }

    /// Skips frames until the server closes; returns the code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Got::Closed(code, reason) = self.next().await {
                return (code, reason);
            }
        }
    }

    async fn init(server: &Server, payload: Value) -> Raw {
        let mut ws = Raw::open(server, "/graphql", Some("graphql-transport-ws")).await;
        ws.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        let ack = ws.frame().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        ws
    }
}

fn subscribe(id: &str, query: &str, variables: Value) -> Value {
    json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } })
}

// ---------------------------------------------------------------------------------------
// graphql-transport-ws

#[tokio::test]
async fn graphql_ws_close_codes_follow_the_protocol() {
    let server = standalone(&["--ws-init-timeout-ms", "700"]);

    // 4400: not JSON, and a reason that would not fit a close frame is cut to 123 bytes.
    let mut ws = Raw::open(&server, "/graphql", Some("graphql-transport-ws")).await;
    ws.send_text("{not json").await;
    let (code, _) = ws.closed().await;
    assert_eq!(code, 4400);
    let mut ws = Raw::open(&server, "/ws", Some("graphql-transport-ws")).await;
    ws.send(json!({ "type": "x".repeat(400) })).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 4400);
    assert!(reason.len() <= 123, "reason of {} bytes", reason.len());
    // 4400 also for a subscribe without a query.
    let mut ws = Raw::init(&server, json!({})).await;
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": {} }))
        .await;
    assert_eq!(ws.closed().await.0, 4400);

    // 4401: subscribe before the ack.
    let mut ws = Raw::open(&server, "/graphql", Some("graphql-transport-ws")).await;
    ws.send(subscribe("1", "{ languages { id } }", json!({})))
        .await;
    assert_eq!(ws.closed().await, (4401, "Unauthorized".into()));

    // 4408: no connection_init within the (configured) timeout.
    let started = std::time::Instant::now();
    let mut ws = Raw::open(&server, "/graphql", Some("graphql-transport-ws")).await;
    assert_eq!(ws.closed().await.0, 4408);
    assert!(started.elapsed() >= Duration::from_millis(600));

    // 4429: a second connection_init.
    let mut ws = Raw::init(&server, json!({})).await;
    ws.send(json!({ "type": "connection_init" })).await;
    assert_eq!(ws.closed().await.0, 4429);

    // 4406: no subprotocol we speak.
    let mut ws = Raw::open(&server, "/graphql", None).await;
    assert_eq!(ws.closed().await.0, 4406);

    // 4409: a second subscribe with the id of a running subscription.
    let id = submit_as(&server, None, SLEEPER).await["data"]["submit"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = Raw::init(&server, json!(null)).await;
    ws.send(subscribe("dup", EVENTS, json!({ "id": id }))).await;
    let first = ws.frame().await;
    assert_eq!(first["type"], "next", "{first}");
    ws.send(subscribe("dup", EVENTS, json!({ "id": id }))).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 4409);
    assert_eq!(reason, "Subscriber for dup already exists");
}

#[tokio::test]
async fn graphql_ws_messages_ping_complete_and_errors() {
    let server = standalone(&[
        "--ws-keepalive-ms",
        "300",
        "--max-subscriptions-per-connection",
        "2",
    ]);
    let mut ws = Raw::init(&server, json!({})).await;

    // ping → pong; and the server pings on its own.
    ws.send(json!({ "type": "ping" })).await;
    let mut saw_pong = false;
    let mut saw_ping = false;
    while !(saw_pong && saw_ping) {
        match ws.next().await {
            Got::Frame(f) if f["type"] == "pong" => saw_pong = true,
            Got::Frame(f) if f["type"] == "ping" => saw_ping = true,
            other => panic!("unexpected {other:?}"),
        }
    }

    // A query over the socket: next, then complete.
    ws.send(subscribe("q", "{ languages { id } }", json!({})))
        .await;
    let next = ws.frame().await;
    assert_eq!(
        (next["type"].as_str(), next["id"].as_str()),
        (Some("next"), Some("q"))
    );
    assert!(next["payload"]["data"]["languages"].is_array(), "{next}");
    assert_eq!(ws.frame().await, json!({ "id": "q", "type": "complete" }));

    // A validation error is an `error` message (an array of errors), with no complete.
    ws.send(subscribe("bad", "subscription { nope }", json!({})))
        .await;
    let error = ws.frame().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["id"], "bad");
    assert!(error["payload"][0]["message"].is_string(), "{error}");

    // complete from the client stops the stream: nothing more arrives for it.
    let id = submit_as(&server, None, SLEEPER).await["data"]["submit"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.send(subscribe("s", EVENTS, json!({ "id": id }))).await;
    let first = ws.frame().await;
    assert_eq!(
        first["payload"]["data"]["submissionEvents"]["seq"], 1,
        "{first}"
    );
    ws.send(json!({ "id": "s", "type": "complete" })).await;
    // Events the server sent before it read the complete may still arrive; the pong marks
    // the point after which none may.
    ws.send(json!({ "type": "ping" })).await;
    loop {
        let f = ws.frame().await;
        if f["type"] == "pong" {
            break;
        }
        assert_eq!(f["id"], "s", "{f}");
    }

    // At most 2 operations per connection (as configured): the third gets RATE_LIMITED
    // and the connection stays open.
    ws.send(subscribe("a", EVENTS, json!({ "id": id }))).await;
    ws.send(subscribe("b", EVENTS, json!({ "id": id }))).await;
    ws.send(subscribe("c", EVENTS, json!({ "id": id }))).await;
    let mut limited = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut completed = Vec::new();
    while completed.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a and b did not complete"
        );
        let f = ws.frame().await;
        assert_ne!(f["id"], "s", "events after complete: {f}");
        if f["id"] == "c" {
            assert_eq!(f["type"], "error", "{f}");
            assert_eq!(f["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{f}");
            limited = true;
        }
        if f["type"] == "complete" {
            completed.push(f["id"].as_str().unwrap().to_owned());
        }
    }
    assert!(limited);
    completed.sort();
    assert_eq!(completed, ["a", "b"]);
}

#[tokio::test]
async fn legacy_graphql_ws_protocol_still_works() {
    let server = standalone(&[]);
    let mut ws = Raw::open(&server, "/ws", Some("graphql-ws")).await;
    ws.send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert_eq!(ws.frame().await["type"], "connection_ack");
    ws.send(json!({ "id": "1", "type": "start", "payload": { "query": "{ languages { id } }" } }))
        .await;
    let data = ws.frame().await;
    assert_eq!(data["type"], "data", "{data}");
    assert!(data["payload"]["data"]["languages"].is_array());
    assert_eq!(ws.frame().await, json!({ "id": "1", "type": "complete" }));

    let id = submit_as(&server, None, "print(7)").await["data"]["submit"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.send(json!({ "id": "2", "type": "start", "payload": { "query": EVENTS, "variables": { "id": id } } }))
        .await;
    let mut last = Value::Null;
    loop {
        let f = ws.frame().await;
        if f["type"] == "complete" {
            break;
        }
        assert_eq!(f["type"], "data", "{f}");
        last = f["payload"]["data"]["submissionEvents"].clone();
    }
    assert_eq!(last["__typename"], "FinishedEvent");
    ws.send(json!({ "type": "connection_terminate" })).await;
    assert_eq!(ws.closed().await.0, 1000);
}

// ---------------------------------------------------------------------------------------
// GraphQL over HTTP

#[tokio::test]
async fn http_rules_media_types_get_mutations_and_body_cap() {
    let server = standalone(&["--max-body-bytes", "4096"]);
    let http = reqwest::Client::new();
    let url = format!("{}/graphql", server.http());

    // application/json only → application/json.
    let res = http
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(r#"{"query":"{ __typename }"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));

    // CSRF guard: a form-encodable content type is refused.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let res = http
            .post(&url)
            .header("content-type", ct)
            .body(r#"{"query":"{ __typename }"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 415, "{ct}");
    }

    // Mutations are refused over GET; queries work.
    let res = http
        .get(&url)
        .query(&[("query", "mutation { cancel(id: \"x\") { id } }")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    let res = http
        .get(&url)
        .query(&[("query", "{ __typename }")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The body cap: 413 with a clear message.
    let big = json!({ "query": SUBMIT, "variables": { "i": { "language": "python3", "source": "#".repeat(8000) } } });
    let (status, _, body) = post(&server, None, big).await;
    assert_eq!(status, 413);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("larger than 4096 bytes"),
        "{body}"
    );

    // The same cap holds for a WebSocket message: 1009.
    let mut ws = Raw::init(&server, json!({})).await;
    ws.send(subscribe(
        "big",
        SUBMIT,
        json!({ "i": { "source": "#".repeat(8000) } }),
    ))
    .await;
    assert_eq!(ws.closed().await.0, 1009);

    // Depth limit.
    let nested = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {} name {} }} }} }} }} }}",
        "ofType { ".repeat(14),
        "} ".repeat(14)
    );
    let (status, _, body) = post(&server, None, json!({ "query": nested })).await;
    assert_eq!(status, 200);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------
// API keys and ownership

#[tokio::test]
async fn api_keys_authenticate_and_submissions_belong_to_their_key() {
    // Removed on drop, also when an assertion fails.
    let tmp = verdict_testkit::TempDir::new("verdict-keys");
    let dir = tmp.path().to_path_buf();
    let file = dir.join("keys");
    std::fs::write(
        &file,
        format!(
            "# test keys\nalice:{}\nbob:{}\n",
            sha256_hex("key-alice"),
            sha256_hex("key-bob")
        ),
    )
    .unwrap();
    let server = standalone(&[
        "--api-keys",
        file.to_str().unwrap(),
        "--max-ws-per-key",
        "1",
    ]);

    // No key, or a bad one: 401 UNAUTHENTICATED.
    for key in [None, Some("wrong")] {
        let (status, headers, body) =
            post(&server, key, json!({ "query": "{ __typename }" })).await;
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }

    // Alice's submission is hers.
    let body = submit_as(&server, Some("key-alice"), SLEEPER).await;
    let id = body["data"]["submit"]["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let read = "query($id: ID!) { submission(id: $id) { id } }";
    let (_, _, mine) = post(
        &server,
        Some("key-alice"),
        json!({ "query": read, "variables": { "id": id } }),
    )
    .await;
    assert_eq!(mine["data"]["submission"]["id"], id.as_str());

    // Bob sees it exactly as an unknown id: null, and NOT_FOUND on cancel and subscribe.
    let unknown = uuid::Uuid::new_v4().to_string();
    let (_, _, theirs) = post(
        &server,
        Some("key-bob"),
        json!({ "query": read, "variables": { "id": id } }),
    )
    .await;
    assert_eq!(theirs["data"]["submission"], Value::Null, "{theirs}");
    let cancel = "mutation($id: ID!) { cancel(id: $id) { id verdict } }";
    let mut codes = Vec::new();
    for target in [&id, &unknown] {
        let (_, _, body) = post(
            &server,
            Some("key-bob"),
            json!({ "query": cancel, "variables": { "id": target } }),
        )
        .await;
        codes.push(body["errors"][0]["extensions"]["code"].clone());
    }
    assert_eq!(codes, [json!("NOT_FOUND"), json!("NOT_FOUND")]);

    let mut ws = Raw::init(&server, json!({ "authorization": "Bearer key-bob" })).await;
    ws.send(subscribe("x", EVENTS, json!({ "id": id }))).await;
    let f = ws.frame().await;
    assert_eq!(f["type"], "next", "{f}");
    assert_eq!(
        f["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{f}"
    );
    assert_eq!(
        f["payload"]["errors"][0]["message"],
        format!("submission {id} not found")
    );

    // One connection per key (as configured): Bob's second is refused with 4429.
    let mut second = Raw::open(&server, "/graphql", Some("graphql-transport-ws")).await;
    second
        .send(
            json!({ "type": "connection_init", "payload": { "authorization": "Bearer key-bob" } }),
        )
        .await;
    assert_eq!(
        second.closed().await,
        (4429, "Too many connections for this key".into())
    );
    drop(ws);

    // Alice can watch and cancel it.
    let mut ws = Raw::init(&server, json!({ "authorization": "Bearer key-alice" })).await;
    ws.send(subscribe("x", EVENTS, json!({ "id": id }))).await;
    let f = ws.frame().await;
    assert_eq!(f["payload"]["data"]["submissionEvents"]["seq"], 1, "{f}");
    let (_, _, body) = post(
        &server,
        Some("key-alice"),
        json!({ "query": cancel, "variables": { "id": id } }),
    )
    .await;
    assert_eq!(body["data"]["cancel"]["verdict"], "CANCELLED", "{body}");

    // graphql-ws: no key or a bad key → 4403.
    for payload in [json!({}), json!({ "authorization": "Bearer nope" })] {
        let mut ws = Raw::open(&server, "/graphql", Some("graphql-transport-ws")).await;
        ws.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        assert_eq!(ws.closed().await, (4403, "Forbidden".into()));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn introspection_can_be_switched_off() {
    let server = standalone(&["--no-introspection"]);
    let (status, _, body) = post(
        &server,
        None,
        json!({ "query": "{ __schema { types { name } } }" }),
    )
    .await;
    assert_eq!(status, 200);
    // async-graphql answers a disabled introspection with null, not an error.
    assert_eq!(body, json!({ "data": { "__schema": null } }));
    let (_, _, body) = post(&server, None, json!({ "query": "{ languages { id } }" })).await;
    assert!(body["data"]["languages"].is_array(), "{body}");
}

#[test]
fn non_loopback_listen_without_keys_is_refused() {
    let out = Command::new(bin())
        .args(["standalone", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-no-auth"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Limits and metrics

#[tokio::test]
async fn submits_over_the_rate_are_rate_limited_with_a_retry_hint() {
    let server = standalone(&["--submits-per-minute", "3"]);
    for _ in 0..3 {
        let body = submit_as(&server, None, "print(1)").await;
        assert_eq!(body["data"]["submit"]["status"], "QUEUED", "{body}");
    }
    let (_, headers, body) = post(
        &server,
        None,
        json!({ "query": SUBMIT, "variables": { "i": { "language": "python3", "source": "print(1)" } } }),
    )
    .await;
    let secs: u64 = headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After: {secs}");
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["code"], "RATE_LIMITED", "{body}");
    assert!(
        error["extensions"]["retryAfter"].as_u64().unwrap() >= 1,
        "{body}"
    );
    assert!(
        error["extensions"]["retryAfterMs"].as_u64().unwrap() > 0,
        "{body}"
    );
}

/// Two `verdict server`s on one Redis namespace with `extra` flags; also the Redis URL
/// and namespace, for workers.
fn two_servers_on_redis(extra: &[&str]) -> (Server, Server, String, String) {
    let (url, ns) = (verdict_testkit::redis_url(), verdict_testkit::namespace());
    let server = || {
        spawn(
            &["server", "--redis-url", &url],
            extra,
            &[("VERDICT_REDIS_NAMESPACE", &ns)],
        )
    };
    let (a, b) = (server(), server());
    (a, b, url, ns)
}

#[tokio::test]
async fn two_servers_on_redis_share_the_submit_count() {
    let (a, b, _, _) = two_servers_on_redis(&["--submits-per-minute", "3"]);
    for s in [&a, &b, &a] {
        let body = submit_as(s, None, "print(1)").await;
        assert_eq!(body["data"]["submit"]["status"], "QUEUED", "{body}");
    }
    for s in [&b, &a] {
        let body = submit_as(s, None, "print(1)").await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
            "{body}"
        );
        let ms = body["errors"][0]["extensions"]["retryAfterMs"]
            .as_u64()
            .unwrap();
        assert!(ms > 0 && ms <= 60_000, "{body}");
    }
}

#[tokio::test]
async fn websocket_connections_per_ip_are_capped() {
    let server = standalone(&["--max-ws-per-ip", "2"]);
    let _a = Raw::init(&server, json!({})).await;
    let _b = Raw::init(&server, json!({})).await;
    let mut request = server.ws("/graphql").into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 429),
        other => panic!("expected HTTP 429, got {other:?}"),
    }
    drop(_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _c = Raw::init(&server, json!({})).await;
}

/// A keys file with alice and bob (keys `key-alice`, `key-bob`); the directory is leaked
/// for the life of the test process, which is short.
/// A keys file for alice and bob, in a directory removed when the returned guard is
/// dropped (keep it alive while a server may still read the file).
fn keys_file() -> (verdict_testkit::TempDir, std::path::PathBuf) {
    // Removed on drop, also when an assertion fails.
    let tmp = verdict_testkit::TempDir::new("verdict-keys");
    let dir = tmp.path().to_path_buf();
    let file = dir.join("keys");
    let keys = format!(
        "alice:{}\nbob:{}\n",
        sha256_hex("key-alice"),
        sha256_hex("key-bob")
    );
    std::fs::write(&file, keys).unwrap();
    (tmp, file)
}

#[tokio::test]
async fn websocket_connections_per_key_are_capped_across_servers() {
    let (_keys, file) = keys_file();
    let (a, b, _, _) = two_servers_on_redis(&[
        "--api-keys",
        file.to_str().unwrap(),
        "--max-ws-per-key",
        "2",
    ]);
    let alice = || json!({ "authorization": "Bearer key-alice" });
    let first = Raw::init(&a, alice()).await;
    let _second = Raw::init(&b, alice()).await;
    // The third, on either server, is over alice's quota: 4429, which clients do not retry.
    for s in [&a, &b] {
        let mut third = Raw::open(s, "/graphql", Some("graphql-transport-ws")).await;
        third
            .send(json!({ "type": "connection_init", "payload": alice() }))
            .await;
        assert_eq!(
            third.closed().await,
            (4429, "Too many connections for this key".into())
        );
    }
    // Another key is not affected.
    let _bob = Raw::init(&a, json!({ "authorization": "Bearer key-bob" })).await;
    // Closing one frees a place (released in the background: allow a moment).
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = Raw::open(&b, "/graphql", Some("graphql-transport-ws")).await;
        again
            .send(json!({ "type": "connection_init", "payload": alice() }))
            .await;
        match again.next().await {
            Got::Frame(f) if f["type"] == "connection_ack" => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "place never freed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn query_limits_refuse_with_bad_user_input() {
    let server = standalone(&["--max-query-aliases", "3", "--max-query-depth", "4"]);
    let query = |q: &str| post(&server, None, json!({ "query": q }));
    let aliases = |n: usize| {
        let fields: Vec<String> = (0..n)
            .map(|i| format!("a{i}: languages {{ id }}"))
            .collect();
        format!("{{ {} }}", fields.join(" "))
    };
    let (_, _, ok) = query(&aliases(3)).await;
    assert!(ok["errors"].is_null(), "3 aliases are allowed: {ok}");
    assert!(ok["data"]["a2"][0]["id"].is_string(), "{ok}");
    let (_, _, body) = query(&aliases(4)).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("aliased fields"),
        "{body}"
    );
    // Aliases hidden in a fragment count too.
    let (_, _, body) = query(
        "{ ...F } fragment F on QueryRoot { a: languages { id } b: languages { id } \
         c: languages { id } d: languages { id } }",
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    // Too deep, unparsable and invalid queries carry the same code.
    let (_, _, body) = query(
        "{ submission(id: \"x\") { tests { __typename } } __schema { types { fields { type { ofType { name } } } } } }",
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    for q in ["{ languages {", "{ noSuchField }"] {
        let (_, _, body) = query(q).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{q}: {body}"
        );
    }
    // Batched requests (a JSON array) are refused as a whole with a clear message.
    let res = reqwest::Client::new()
        .post(format!("{}/graphql", server.http()))
        .header("content-type", "application/json")
        .body(r#"[{"query":"{ languages { id } }"},{"query":"{ languages { id } }"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let text = res.text().await.unwrap();
    assert!(text.to_lowercase().contains("batch"), "{text}");
}

/// Parses the Prometheus text format strictly enough: `name{labels} value` lines, HELP
/// and TYPE comments.
fn scrape(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line.is_empty() {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        assert!(
            !name.is_empty() && !name.starts_with('#'),
            "bad line {line}"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(
            out.insert(name.to_owned(), value).is_none(),
            "duplicate {name}"
        );
    }
    out
}

#[tokio::test]
async fn metrics_parse_and_move_with_submissions() {
    let server = standalone(&[]);
    let get = || async { scrape(&server.metrics().await) };
    let before = get().await;
    for _ in 0..3 {
        submit_as(&server, None, "print(1)").await;
    }
    let _ws = Raw::init(&server, json!({})).await;
    let after = get().await;
    let delta = |name: &str| after[name] - before.get(name).copied().unwrap_or(0.0);
    assert_eq!(delta("verdict_submissions_total"), 3.0);
    assert_eq!(delta("verdict_submit_seconds_count"), 3.0);
    assert_eq!(
        delta("verdict_graphql_requests_total{operation=\"mutation\",outcome=\"ok\"}"),
        3.0
    );
    assert_eq!(
        delta("verdict_submissions_by_language_total{language=\"python3\"}"),
        3.0
    );
    assert_eq!(after["verdict_websockets_open"], 1.0);
    assert!(after["verdict_submit_seconds_sum"] > 0.0);
    assert_eq!(after["verdict_submit_seconds_bucket{le=\"+Inf\"}"], 3.0);
    assert_eq!(after["verdict_redis_reconnects_total"], 0.0, "standalone");

    // Once the three finish: three ACCEPTED verdicts, and each job observed once in both
    // latency histograms.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let now = get().await;
        let accepted = "verdict_verdicts_total{verdict=\"ACCEPTED\"}";
        if now.get(accepted).copied().unwrap_or(0.0) - before.get(accepted).copied().unwrap_or(0.0)
            >= 3.0
        {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not finished: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delta = |name: &str| done[name] - before.get(name).copied().unwrap_or(0.0);
    assert_eq!(delta("verdict_verdicts_total{verdict=\"ACCEPTED\"}"), 3.0);
    for h in ["verdict_job_queued_seconds", "verdict_job_run_seconds"] {
        assert_eq!(delta(&format!("{h}_count")), 3.0, "{h}");
        assert_eq!(delta(&format!("{h}_bucket{{le=\"+Inf\"}}")), 3.0, "{h}");
        assert!(delta(&format!("{h}_sum")) > 0.0, "{h}");
    }
    // A Python print(1) runs in well under 10 s, so every run is in the 10 s bucket.
    assert_eq!(delta("verdict_job_run_seconds_bucket{le=\"10\"}"), 3.0);
}

#[tokio::test]
async fn unfinished_submissions_per_key_are_capped_across_servers() {
    let (_keys, file) = keys_file();
    let (a, b, url, ns) = two_servers_on_redis(&[
        "--api-keys",
        file.to_str().unwrap(),
        "--max-unfinished-per-key",
        "2",
    ]);
    // No worker yet: submissions stay unfinished.
    for s in [&a, &b] {
        let body = submit_as(s, Some("key-alice"), "print(1)").await;
        assert_eq!(body["data"]["submit"]["status"], "QUEUED", "{body}");
    }
    let body = submit_as(&a, Some("key-alice"), "print(1)").await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body}"
    );
    let body = submit_as(&b, Some("key-bob"), "print(1)").await;
    assert_eq!(
        body["data"]["submit"]["status"], "QUEUED",
        "another key is not affected: {body}"
    );
    // Once a worker finishes them, alice may submit again; verdicts show in /metrics.
    let _w = verdict_testkit::worker(bin(), &url, &ns, 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = submit_as(&a, Some("key-alice"), "print(2)").await;
        if body["data"]["submit"]["status"] == "QUEUED" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "quota never freed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = b.metrics().await;
    assert!(
        text.contains("verdict_verdicts_total{verdict=\"ACCEPTED\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn json_logs_carry_the_submission_id_on_server_and_worker_lines() {
    let tmp = verdict_testkit::TempDir::new("verdict-log");
    let log = tmp.path().join("log.jsonl");
    let server = spawn_logging(
        &["standalone", "--concurrency", "2"],
        &[],
        &[("VERDICT_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
        std::fs::File::create(&log).unwrap().into(),
    );
    let id = |body: Value| body["data"]["submit"]["id"].as_str().unwrap().to_owned();
    let ran = id(submit_as(&server, None, "print(1)").await);
    let cancelled = id(submit_as(&server, None, SLEEPER).await);
    let cancel = json!({ "query": "mutation($id: ID!) { cancel(id: $id) { status } }", "variables": { "id": cancelled } });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let q = json!({ "query": "query($id: ID!) { submission(id: $id) { status } }", "variables": { "id": ran } });
        let (_, _, body) = post(&server, None, q).await;
        if body["data"]["submission"]["status"] == "FINISHED" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never finished: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cancel once the worker has it, so the worker logs about it too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, body) = post(&server, None, cancel).await;
    assert_eq!(body["data"]["cancel"]["status"], "FINISHED", "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(server);

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for id in [&ran, &cancelled] {
        // Every line that mentions the id carries it as the span's `submission` field.
        let about: Vec<&Value> = lines
            .iter()
            .filter(|l| l.to_string().contains(id.as_str()))
            .collect();
        for line in &about {
            assert_eq!(line["span"]["submission"], id.as_str(), "{line}");
        }
        let from = |target: &str| {
            about
                .iter()
                .any(|l| l["target"].as_str().unwrap_or("").starts_with(target))
        };
        assert!(from("verdict_server"), "no server line about {id}: {text}");
        assert!(from("verdict_worker"), "no worker line about {id}: {text}");
    }
    let cancelled_line = lines.iter().any(|l| {
        l["fields"]["message"] == "cancelled" && l["span"]["submission"] == cancelled.as_str()
    });
    assert!(cancelled_line, "{text}");
    let _ = std::fs::remove_file(&log);
}

/// The first error of an HTTP response body or of a graphql-ws `error` / `next` frame.
fn first_error(body: &Value) -> &Value {
    match body["type"].as_str() {
        Some("error") => &body["payload"][0],
        Some(_) => &body["payload"]["errors"][0],
        None => &body["errors"][0],
    }
}

#[tokio::test]
async fn every_input_error_carries_bad_user_input_over_http_and_graphql_ws() {
    let server = standalone(&[]);
    let submit_with = |extra: &str| {
        format!(
            "mutation {{ submit(input: {{ language: \"python3\", source: \"print(1)\" {extra} }}) {{ id }} }}"
        )
    };
    let over_int = submit_with(", limits: { cpuTimeMs: 3000000000 }");
    let wrong_enum = submit_with(", compare: NOPE");
    let limits_var = "mutation($l: LimitsInput) { submit(input: { language: \"python3\", source: \"print(1)\", limits: $l }) { id } }";
    let int_var = "mutation($c: Int) { submit(input: { language: \"python3\", source: \"print(1)\", limits: { cpuTimeMs: $c } }) { id } }";
    let enum_var = "mutation($c: CompareMode) { submit(input: { language: \"python3\", source: \"print(1)\", compare: $c }) { id } }";
    let cases: Vec<(&str, String, Value, Option<&str>)> = vec![
        ("Int over 2^31, literal", over_int, json!({}), None),
        (
            "Int over 2^31 in an object variable",
            limits_var.into(),
            json!({ "l": { "cpuTimeMs": 3_000_000_000u64 } }),
            None,
        ),
        (
            "Int over 2^31, variable",
            int_var.into(),
            json!({ "c": 3_000_000_000u64 }),
            None,
        ),
        (
            "Int below -2^31, variable",
            int_var.into(),
            json!({ "c": -3_000_000_000i64 }),
            None,
        ),
        ("wrong enum value, literal", wrong_enum, json!({}), None),
        (
            "wrong enum value, variable",
            enum_var.into(),
            json!({ "c": "NOPE" }),
            None,
        ),
        (
            "missing required argument",
            "mutation { submit { id } }".into(),
            json!({}),
            None,
        ),
        (
            "missing required variable",
            "query($id: ID!) { submission(id: $id) { id } }".into(),
            json!({}),
            None,
        ),
        (
            "undefined variable",
            "query { submission(id: $nope) { id } }".into(),
            json!({}),
            None,
        ),
        (
            "two operations, no name",
            "query A { languages { id } } query B { languages { id } }".into(),
            json!({}),
            None,
        ),
        (
            "unknown operation name",
            "query A { languages { id } }".into(),
            json!({}),
            Some("X"),
        ),
        ("syntax error", "{ languages { id ".into(), json!({}), None),
    ];
    let mut ws = Raw::init(&server, json!({})).await;
    for (i, (what, query, variables, operation)) in cases.iter().enumerate() {
        let mut body = json!({ "query": query, "variables": variables });
        if let Some(name) = operation {
            body["operationName"] = json!(name);
        }
        let (_, _, http) = post(&server, None, body.clone()).await;
        assert_eq!(
            first_error(&http)["extensions"]["code"],
            "BAD_USER_INPUT",
            "HTTP, {what}: {http}"
        );
        let id = format!("op{i}");
        ws.send(json!({ "id": id, "type": "subscribe", "payload": body }))
            .await;
        let frame = ws.frame().await;
        assert_eq!(frame["id"], id.as_str(), "{frame}");
        assert_eq!(
            first_error(&frame)["extensions"]["code"],
            "BAD_USER_INPUT",
            "graphql-ws, {what}: {frame}"
        );
        if frame["type"] == "next" {
            let done = ws.frame().await;
            assert_eq!(done["type"], "complete", "{done}");
        }
    }
    // The refusals did not stop valid requests.
    let (_, _, ok) = post(
        &server,
        None,
        json!({ "query": int_var, "variables": { "c": 1000 } }),
    )
    .await;
    assert!(ok["data"]["submit"]["id"].is_string(), "{ok}");
}

#[tokio::test]
async fn metrics_report_the_process_memory() {
    let server = standalone(&[]);
    let metrics = scrape(&server.metrics().await);
    let rss = metrics["process_resident_memory_bytes"];
    let vsz = metrics["process_virtual_memory_bytes"];
    assert!(rss > 1024.0 * 1024.0, "resident {rss}");
    assert!(vsz >= rss, "virtual {vsz} < resident {rss}");
    // Read at scrape time: the figure is the process's own, as the kernel reports it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.proc.pid())).unwrap();
    let kib = |key: &str| -> f64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let now = kib("VmRSS:") * 1024.0;
    assert!(
        (rss - now).abs() < 0.5 * now,
        "scraped {rss}, /proc says {now}"
    );
}

/// Waits until `server` has `id` FINISHED; returns the record.
async fn finished(server: &Server, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let q = json!({ "query": "query($id: ID!) { submission(id: $id) { status verdict } }", "variables": { "id": id } });
        let (_, _, body) = post(server, None, q).await;
        if body["data"]["submission"]["status"] == "FINISHED" {
            return body["data"]["submission"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never finished: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .replace('\0', " ")
}

#[tokio::test]
async fn the_redis_password_stays_off_command_lines_and_out_of_logs() {
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let (_redis, plain) = verdict_testkit::start_redis(&["--requirepass", &password]);
    let url = plain.replacen("redis://", &format!("redis://:{password}@"), 1);
    let ns = verdict_testkit::namespace();
    let tmp = verdict_testkit::TempDir::new("verdict-secret");
    let dir = tmp.path().to_path_buf();

    // The server gets the URL from the environment (testkit's way), the worker from a
    // file; a submission running end to end shows both authenticated.
    let server = verdict_testkit::server(bin(), &url, &ns);
    let url_file = dir.join("redis-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let worker_log = dir.join("worker.log");
    let worker = Proc(
        Command::new(bin())
            .args(["worker", "--concurrency", "1", "--redis-url-file"])
            .arg(&url_file)
            .env_remove("VERDICT_REDIS_URL")
            .env("VERDICT_REDIS_NAMESPACE", &ns)
            .env("RUST_LOG", "debug")
            .stderr(std::fs::File::create(&worker_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let body = submit_as(&server, None, "print(1)").await;
    let id = body["data"]["submit"]["id"].as_str().unwrap().to_owned();
    assert_eq!(finished(&server, &id).await["verdict"], "ACCEPTED");
    for pid in [server.proc.pid(), worker.pid()] {
        let line = cmdline(pid);
        assert!(line.contains("verdict"), "{line}");
        assert!(!line.contains(&password), "password in {line}");
    }
    drop(worker);
    let log = std::fs::read_to_string(&worker_log).unwrap();
    assert!(!log.is_empty(), "the worker logged nothing at debug");
    assert!(
        !log.contains(&password),
        "password in the worker's log: {log}"
    );

    // Still accepted on the command line (the fixed contract), with a warning that
    // shows the URL redacted.
    let argv_log = dir.join("argv.log");
    let argv = spawn_logging(
        &["server", "--redis-url", &url],
        &[],
        &[("VERDICT_REDIS_NAMESPACE", &ns), ("RUST_LOG", "warn")],
        std::fs::File::create(&argv_log).unwrap().into(),
    );
    let body = submit_as(&argv, None, "print(2)").await;
    assert_eq!(body["data"]["submit"]["status"], "QUEUED", "{body}");
    drop(argv);
    let log = std::fs::read_to_string(&argv_log).unwrap();
    assert!(log.contains("command line"), "no warning: {log}");
    assert!(log.contains(":***@127.0.0.1"), "{log}");
    assert!(!log.contains(&password), "password in the log: {log}");

    // A refused connection names the URL without its password.
    let wrong = url.replace(&password, "wrong-password-123");
    let out = Command::new(bin())
        .args(["worker"])
        .env("VERDICT_REDIS_URL", &wrong)
        .env("VERDICT_REDIS_NAMESPACE", &ns)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot connect to Redis at redis://:***@"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-password-123"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

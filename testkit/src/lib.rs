//! Test support shared by the crates' test suites: a real Redis, real `verdict`
//! processes on free ports, and small GraphQL-over-HTTP and graphql-ws clients.
//! Test code: failing loudly (expect) is the point here.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Proc {
    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        // A directory made for this process alone (a private Redis's) goes with it.
        let pid = self.0.id();
        let mut dirs = PROC_DIRS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = dirs.iter().position(|(p, _)| *p == pid) {
            let (_, dir) = dirs.swap_remove(k);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Directories removed when the `Proc` of that pid is dropped.
static PROC_DIRS: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

/// A directory under the system temp dir (`<prefix>-<uuid>`), removed with everything in
/// it on drop, so test runs leave nothing behind in /tmp.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Starts a private `redis-server` on a free port; its directory is removed when the
/// returned `Proc` is dropped.
pub fn start_redis(extra: &[&str]) -> (Proc, String) {
    let dir = std::env::temp_dir().join(format!("verdict-redis-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("redis dir");
    let (proc, url) = start_redis_in(&dir, extra);
    PROC_DIRS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((proc.pid(), dir));
    (proc, url)
}

/// Starts a private `redis-server` on a free port with its files in `dir`, which the
/// caller owns (and removes): for a test that restarts Redis on the same files.
pub fn start_redis_in(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test installs it)");
    assert!(
        wait_for_port(port, Duration::from_secs(5)),
        "redis-server did not start"
    );
    (Proc(child), format!("redis://127.0.0.1:{port}"))
}

/// The Redis the tests share: `REDIS_URL` when set (scripts/test sets it), else one
/// private server for this test binary. Tests isolate themselves by namespace.
pub fn redis_url() -> String {
    static SHARED: OnceLock<(Option<Proc>, String)> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("REDIS_URL") {
            Ok(url) => (None, url),
            Err(_) => {
                // Statics are never dropped: a watchdog stops this Redis when the test
                // process is gone, so no server outlives the run.
                let dir = TempDir::new("verdict-redis");
                let (proc, url) = start_redis_in(dir.path(), &[]);
                let script = "while kill -0 \"$1\" 2>/dev/null; do sleep 0.5; done; \
                              kill \"$2\"; n=0; while kill -0 \"$2\" 2>/dev/null && [ $n -lt 50 ]; do \
                              sleep 0.1; n=$((n + 1)); done; \
                              rm -rf -- \"$3\"";
                let me = std::process::id().to_string();
                let redis = proc.pid().to_string();
                // The watchdog removes the directory; the guard must not.
                let dir = std::mem::ManuallyDrop::new(dir);
                let _ = Command::new("sh")
                    .args(["-c", script, "watchdog", &me, &redis])
                    .arg(dir.path())
                    .stdin(Stdio::null())
                    .spawn();
                (Some(proc), url)
            }
        })
        .1
        .clone()
}

/// A fresh Redis namespace, so tests sharing one Redis never see each other's jobs.
pub fn namespace() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// A running `verdict` server (standalone or `server`), with its address.
pub struct Server {
    pub proc: Proc,
    pub port: u16,
}

impl Server {
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = reqwest::get(format!("{}/metrics", self.http()))
            .await
            .expect("GET /metrics");
        res.text().await.expect("metrics body")
    }
}

fn verdict(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(args).env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    // Only what the test passes: a Redis URL exported in the developer's shell must not
    // turn an embedded-broker test into a Redis one.
    cmd.env_remove("VERDICT_REDIS_URL")
        .env_remove("VERDICT_REDIS_URL_FILE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("spawn verdict"))
}

fn wait_healthy(port: u16) {
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "verdict did not start listening on {port}"
    );
}

/// `verdict standalone` on a free port (embedded broker, or Redis when given).
///
/// The Redis URL goes in the environment (VERDICT_REDIS_URL), never on the command line,
/// which every local user can read: as a deployment should pass it.
pub fn standalone(bin: &Path, redis: Option<(&str, &str)>) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["standalone", "--listen", &listen];
    let ns = redis.map(|(_, ns)| ns).unwrap_or("verdict");
    let mut envs = vec![("VERDICT_REDIS_NAMESPACE", ns)];
    if let Some((url, _)) = redis {
        envs.push(("VERDICT_REDIS_URL", url));
    }
    let proc = verdict(bin, &args, &envs);
    wait_healthy(port);
    Server { proc, port }
}

/// `verdict standalone` on a free port, embedded broker, with extra flags and environment
/// (`--max-retained-mb 50`, `--data-dir DIR`, ...).
pub fn standalone_with(bin: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["standalone", "--listen", &listen];
    args.extend_from_slice(extra);
    let proc = verdict(bin, &args, envs);
    wait_healthy(port);
    Server { proc, port }
}

/// `verdict server` on a free port, on Redis namespace `ns` (URL in the environment).
pub fn server(bin: &Path, url: &str, ns: &str) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let proc = verdict(
        bin,
        &["server", "--listen", &listen],
        &[("VERDICT_REDIS_NAMESPACE", ns), ("VERDICT_REDIS_URL", url)],
    );
    wait_healthy(port);
    Server { proc, port }
}

/// `verdict worker` on Redis namespace `ns`.
pub fn worker(bin: &Path, url: &str, ns: &str, concurrency: usize) -> Proc {
    worker_with_env(bin, url, ns, concurrency, &[])
}

/// `verdict worker` with extra environment (visibility timeout, test fault switch, ...);
/// the Redis URL is passed in the environment too.
pub fn worker_with_env(
    bin: &Path,
    url: &str,
    ns: &str,
    concurrency: usize,
    env: &[(&str, &str)],
) -> Proc {
    let n = concurrency.to_string();
    let mut envs = vec![("VERDICT_REDIS_NAMESPACE", ns), ("VERDICT_REDIS_URL", url)];
    envs.extend_from_slice(env);
    verdict(bin, &["worker", "--concurrency", &n], &envs)
}

/// POSTs a GraphQL operation; returns the whole response body.
pub async fn graphql(base: &str, query: &str, variables: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("POST /graphql")
        .json()
        .await
        .expect("JSON body")
}

/// Submits and returns the new id (panics on a GraphQL error).
pub async fn submit(base: &str, input: Value) -> String {
    let body = graphql(
        base,
        "mutation($i: SubmitInput!) { submit(input: $i) { id status } }",
        json!({ "i": input }),
    )
    .await;
    assert_eq!(
        body["data"]["submit"]["status"], "QUEUED",
        "submit failed: {body}"
    );
    body["data"]["submit"]["id"].as_str().unwrap().to_owned()
}

/// The selection used by subscription tests.
pub const EVENTS: &str = r#"subscription($id: ID!, $after: Int) { submissionEvents(id: $id, afterSeq: $after) {
  __typename seq submissionId at
  ... on QueuedEvent { position }
  ... on RunningEvent { test tests }
  ... on OutputEvent { test stream chunk }
  ... on TestFinishedEvent { result { index verdict stdout stderr exitCode signal timeMs memoryKb } }
  ... on FinishedEvent { submission { id status verdict compileOutput tests { index verdict stdout stderr exitCode signal truncated } } }
} }"#;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-transport-ws connection (the protocol of the npm `graphql-ws` client).
pub struct WsClient {
    socket: Socket,
    next_id: u64,
}

impl WsClient {
    /// Connects and completes connection_init / connection_ack.
    pub async fn connect(url: &str) -> WsClient {
        let mut request = url.into_client_request().expect("ws url");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("ws connect");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("graphql-transport-ws")
        );
        let mut client = WsClient { socket, next_id: 1 };
        client
            .send(json!({ "type": "connection_init", "payload": {} }))
            .await;
        let ack = client.recv().await.expect("connection_ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("ws send");
    }

    /// The next protocol message (pings answered), or None when the socket closed.
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON frame");
                    if value["type"] == "ping" {
                        self.send(json!({ "type": "pong" })).await;
                        continue;
                    }
                    return Some(value);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Starts a subscription; returns its operation id.
    pub async fn subscribe(&mut self, query: &str, variables: Value) -> String {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send(json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } })).await;
        id
    }

    /// Reads `next` payloads of subscription `op` until `complete` (or `limit` events).
    /// Returns the events and whether the subscription completed.
    pub async fn collect(
        &mut self,
        op: &str,
        limit: usize,
        timeout: Duration,
    ) -> (Vec<Value>, bool) {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while events.len() < limit {
            let message = tokio::time::timeout_at(deadline, self.recv())
                .await
                .expect("subscription timed out");
            let Some(message) = message else {
                return (events, false);
            };
            if message["id"] != op {
                continue;
            }
            match message["type"].as_str() {
                Some("next") => {
                    let payload = &message["payload"];
                    assert!(
                        payload.get("errors").is_none(),
                        "subscription error: {payload}"
                    );
                    events.push(payload["data"]["submissionEvents"].clone());
                }
                Some("complete") => return (events, true),
                Some("error") => panic!("subscription error: {message}"),
                _ => {}
            }
        }
        (events, false)
    }

    /// Subscribes to `id`'s events and collects them all.
    pub async fn events(&mut self, id: &str, after: Option<u64>) -> Vec<Value> {
        let op = self
            .subscribe(EVENTS, json!({ "id": id, "after": after }))
            .await;
        let (events, completed) = self.collect(&op, usize::MAX, Duration::from_secs(60)).await;
        assert!(completed, "subscription to {id} did not complete");
        events
    }

    /// Closes the socket abruptly (no complete, no close handshake).
    pub fn drop_connection(self) {
        drop(self.socket);
    }
}

/// Checks the fixed event-order contract and returns the final submission.
pub fn check_event_order(events: &[Value], compiled: bool) -> Value {
    assert!(!events.is_empty(), "no events");
    for (k, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"],
            json!(k as u64 + 1),
            "seq must start at 1 and grow by one: {events:?}"
        );
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["__typename"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "QueuedEvent", "{kinds:?}");
    assert_eq!(*kinds.last().unwrap(), "FinishedEvent", "{kinds:?}");
    let mut k = 1;
    if compiled {
        assert_eq!(kinds[k], "CompilingEvent", "{kinds:?}");
        k += 1;
    }
    assert_eq!(kinds[k], "RunningEvent", "{kinds:?}");
    assert!(kinds.contains(&"TestFinishedEvent"), "{kinds:?}");
    events.last().unwrap()["submission"].clone()
}

//! Subscription scale: N graphql-ws connections with one subscription each on one
//! `verdict server`; its RSS per connection, and the fan-out latency when events arrive
//! for all of them at once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// Connections per source address (the ephemeral port range is ~28k per address).
const PER_ADDRESS: usize = 20_000;
/// Source addresses 127.0.0.B.. ; moved on per run so TIME_WAIT ports of an earlier run
/// never collide.
static NEXT_BASE: AtomicU8 = AtomicU8::new(10);

/// The open-file limit this process has (children inherit it).
fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Raises RLIMIT_NOFILE to at least `want` (via util-linux `prlimit` on our own pid, so
/// no unsafe code), before any server is spawned. Returns the limit in force.
pub fn ensure_nofile(want: u64) -> u64 {
    let have = nofile_limit().unwrap_or(0);
    if have >= want {
        return have;
    }
    let arg = format!("--nofile={want}:{want}");
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit").args(["--pid", &pid, &arg]).status();
    let now = nofile_limit().unwrap_or(0);
    if now < want {
        eprintln!(
            "subs: open-file limit is {now}, wanted {want} (run `ulimit -n {want}` as root first)"
        );
    }
    now
}

type Events = Vec<(String, i64, i64)>;

/// One subscriber: connect from `src`, subscribe to `id`, report ready after the
/// replayed QueuedEvent, then record every event until `complete`.
async fn subscriber(
    src: IpAddr,
    server: SocketAddr,
    id: String,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Events, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let setup = async {
        let socket = TcpSocket::new_v4().map_err(|e| fail("socket", &e))?;
        socket
            .set_reuseaddr(true)
            .map_err(|e| fail("reuseaddr", &e))?;
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| fail("bind", &e))?;
        let stream = socket
            .connect(server)
            .await
            .map_err(|e| fail("connect", &e))?;
        let mut request = format!("ws://{server}/graphql")
            .into_client_request()
            .map_err(|e| fail("request", &e))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().expect("header value"),
        );
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| fail("handshake", &e))?;
        let send = |v: Value| Message::text(v.to_string());
        ws.send(send(json!({ "type": "connection_init", "payload": {} })))
            .await
            .map_err(|e| fail("send init", &e))?;
        ws.send(send(json!({ "id": "1", "type": "subscribe",
            "payload": { "query": EVENTS, "variables": { "id": id } } })))
            .await
            .map_err(|e| fail("send subscribe", &e))?;
        Ok::<_, String>(ws)
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(60), setup).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
        Err(_) => {
            let _ = ready.send(Err("setup timed out".into()));
            return Err("setup timed out".into());
        }
    };
    let mut permit = Some(permit);
    let mut events = Vec::new();
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                if permit.is_some() {
                    let _ = ready.send(Err(fail("read", &e)));
                }
                return Err(fail("read", &e));
            }
        };
        let received = now_ns();
        let v: Value = serde_json::from_str(&text).map_err(|e| fail("json", &e))?;
        match v["type"].as_str() {
            Some("next") => {
                let e = &v["payload"]["data"]["submissionEvents"];
                let kind = e["__typename"].as_str().unwrap_or("?").to_owned();
                events.push((kind, parse_at(&e["at"]).unwrap_or(0), received));
                if permit.take().is_some() {
                    let _ = ready.send(Ok(()));
                }
            }
            Some("complete") => return Ok(events),
            Some("ping") => {
                let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
            }
            Some("connection_ack") | Some("pong") => {}
            _ => {
                let e = format!("unexpected message: {v}");
                if permit.take().is_some() {
                    let _ = ready.send(Err(e.clone()));
                }
                return Err(e);
            }
        }
    }
    if permit.is_some() {
        let _ = ready.send(Err("closed before the first event".into()));
    }
    Err("closed before complete".into())
}

pub async fn measure_one(bin: &Path, n: usize, submissions: usize, table: &mut Table) {
    eprintln!("subs: {n} connections over {submissions} submissions");
    let mut env = Env::start(bin, Mode::Redis, false);
    let server_pid = env.server.proc.pid();
    let server: SocketAddr = ([127, 0, 0, 1], env.server.port).into();
    let api = Api::new(&env.server);
    // Queued with no worker running: the events come when the worker starts.
    let mut ids = Vec::new();
    for _ in 0..submissions {
        ids.push(api.submit(&Program::Python.input()).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kib(server_pid).unwrap_or(0);
    let addresses = n.div_ceil(PER_ADDRESS).max(1);
    let base = NEXT_BASE.fetch_add(addresses as u8, Ordering::Relaxed);
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let t_connect = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, base + (i % addresses) as u8));
        let id = ids[i % ids.len()].clone();
        tasks.push(tokio::spawn(subscriber(
            src,
            server,
            id,
            ready_tx.clone(),
            permit,
        )));
    }
    drop(ready_tx);
    let mut connected = 0usize;
    let mut errors: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while connected + errors.len() < n {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(e))) => errors.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    eprintln!(
        "subs: {connected}/{n} subscribed in {connect_secs:.1} s ({} failed)",
        errors.len()
    );
    if let Some(e) = errors.first() {
        eprintln!("subs: first failure: {e}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = rss_kib(server_pid).unwrap_or(0);
    let per_conn = (rss1 as f64 - rss0 as f64) / connected.max(1) as f64;
    // Now the events: start the worker and let it run the queued jobs.
    let cpu0 = cpu_ms(server_pid).0;
    let me = std::process::id();
    let client0 = cpu_ms(me).0;
    env.start_worker();
    let mut finished = Vec::new();
    let mut live = Vec::new();
    let mut completed = 0usize;
    let wait = async {
        for t in tasks {
            if let Ok(Ok(events)) = t.await {
                completed += 1;
                for (kind, at, received) in events {
                    let ms = ns_to_ms(received - at);
                    match kind.as_str() {
                        // Replayed at subscribe time: not part of the fan-out.
                        "QueuedEvent" => {}
                        "FinishedEvent" => {
                            finished.push(ms);
                            live.push(ms);
                        }
                        _ => live.push(ms),
                    }
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(180), wait)
        .await
        .is_err()
    {
        eprintln!("subs: fan-out did not complete within 180 s");
    }
    let cpu_ms_fanout = cpu_ms(server_pid).0 - cpu0;
    let client_cpu = cpu_ms(me).0 - client0;
    let rss2 = rss_kib(server_pid).unwrap_or(0);
    drop(env);
    let f99 = p99(&finished);
    table.row(vec![
        n.to_string(),
        format!("{connected} ({} failed)", errors.len()),
        format!("{:.0}", connected as f64 / connect_secs),
        format!("{:.1}", rss0 as f64 / 1024.0),
        format!("{:.1}", rss1 as f64 / 1024.0),
        format!("{per_conn:.1}"),
        met(per_conn <= 16.0 && connected == n),
        completed.to_string(),
        fmt_ms(p50(&finished)),
        fmt_ms(f99),
        fmt_ms(p50(&live)),
        fmt_ms(p99(&live)),
        met(f99 < 100.0 && completed == n),
        format!("{:.1}", rss2 as f64 / 1024.0),
        format!("{:.0}", cpu_ms_fanout),
        format!("{:.0}", client_cpu),
    ]);
}

pub async fn measure(bin: &Path, sizes: &[usize], submissions: usize) -> Table {
    let mut table = Table::new(
        "Subscription scale: one `verdict server`, N graphql-ws connections × 1 subscription",
        &[
            "N",
            "subscribed",
            "connects/s",
            "server RSS before MiB",
            "RSS subscribed MiB",
            "KiB / connection",
            "target ≤ 16 KiB",
            "completed",
            "fan-out FinishedEvent p50 ms",
            "p99 ms",
            "all live events p50 ms",
            "p99 ms",
            "target p99 < 100 ms",
            "RSS after MiB",
            "server CPU during fan-out ms",
            "load generator CPU ms",
        ],
    );
    let limit = nofile_limit().unwrap_or(0);
    for &n in sizes {
        if (n as u64) + 1024 > limit {
            let mut row = vec![n.to_string()];
            row.push(format!(
                "skipped: open-file limit {limit} (needs ~{}; raising it needs CAP_SYS_RESOURCE)",
                n + 1024
            ));
            row.resize(table.headers.len(), "-".into());
            table.row(row);
            continue;
        }
        measure_one(bin, n, submissions, &mut table).await;
    }
    table.note(format!("Each connection subscribes to one of {submissions} python print(1) submissions queued while no worker runs (so each subscription first gets its QueuedEvent by replay: that marks it live). Then a worker starts (concurrency = cores) and each submission's events fan out to N/{submissions} subscribers in a burst."));
    table.note("Fan-out latency = client receipt − the event's `at` (stamped by the worker when it publishes), for every live event of every connection. The load generator runs on the same 2 cores as server, worker and Redis, so at large N it competes with the server it measures.");
    table.note("RSS per connection = (server VmRSS with N idle subscriptions − before) / N. Source addresses 127.0.0.x, 20k connections per address.");
    table
}

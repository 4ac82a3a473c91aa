//! Webhooks (issue 16), against real `verdict` processes on both backends and a real
//! receiver on loopback: every finished submission is POSTed, signed, retried after a
//! failure, and none is lost when the sending process is killed -9 and restarted.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use verdict_testkit::{Server, TempDir};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

const SECRET: &str = "whsec-test-0123456789abcdef";

/// What the receiver saw of one submission.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Every request, in order: whether its signature verified.
    attempts: Vec<bool>,
    /// Requests answered 200 (more than one is a duplicate delivery).
    delivered: u32,
    /// The body of the first 2xx delivery.
    body: Option<Value>,
    /// finished → first 2xx delivery.
    latency_ms: Option<i64>,
}

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// Each submission's first `fail_first` attempts are answered 500.
    fail_first: u32,
}

fn verify(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_owned()),
            Some(("v1", x)) => v1 = Some(x.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let fresh = t
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 60);
    hex == v1 && fresh
}

async fn hook(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signed = headers
        .get("verdict-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| verify(h, &body));
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let id = value["submission"]["id"].as_str().unwrap_or("").to_owned();
    let mut seen = rx.seen.lock().unwrap();
    let entry = seen.entry(id).or_default();
    entry.attempts.push(signed);
    if !signed || entry.attempts.len() as u32 <= rx.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    entry.delivered += 1;
    if entry.body.is_none() {
        let finished = value["submission"]["finished_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        entry.latency_ms = finished
            .map(|f| (chrono::Utc::now() - f.with_timezone(&chrono::Utc)).num_milliseconds());
        entry.body = Some(value);
    }
    StatusCode::OK
}

/// A receiver on a free loopback port; returns its URL and what it saw.
async fn receiver(fail_first: u32) -> (String, Arc<Mutex<HashMap<String, Seen>>>) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(Receiver {
            seen: seen.clone(),
            fail_first,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// `verdict standalone` sending webhooks: embedded broker (optionally with `--data-dir`)
/// or Redis on namespace `ns`.
fn sender(url: &str, secret: &str, redis_ns: Option<&str>, data_dir: Option<&Path>) -> Server {
    let redis = verdict_testkit::redis_url();
    let mut extra = vec![
        "--concurrency",
        "2",
        "--webhook-url",
        url,
        "--webhook-secret-file",
        secret,
    ];
    let dir;
    if let Some(d) = data_dir {
        dir = d.display().to_string();
        extra.extend(["--data-dir", dir.as_str()]);
    }
    let mut envs = Vec::new();
    if let Some(ns) = redis_ns {
        envs.push(("VERDICT_REDIS_URL", redis.as_str()));
        envs.push(("VERDICT_REDIS_NAMESPACE", ns));
    }
    verdict_testkit::standalone_with(bin(), &extra, &envs)
}

fn secret_file(dir: &TempDir) -> String {
    let path = dir.path().join("webhook-secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path.display().to_string()
}

async fn submit_prints(base: &str, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let code = format!("print('{tag}-{i}')");
        ids.push(
            verdict_testkit::submit(base, json!({ "language": "python3", "source": code })).await,
        );
    }
    ids
}

/// Waits until every id was delivered (2xx) at least once.
async fn wait_delivered(seen: &Mutex<HashMap<String, Seen>>, ids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let missing: Vec<String> = {
            let seen = seen.lock().unwrap();
            ids.iter()
                .filter(|id| seen.get(*id).is_none_or(|s| s.delivered == 0))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} never delivered: {missing:?}",
            missing.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn each_submission_is_delivered_signed_after_two_failures(redis: bool) {
    let dir = TempDir::new("webhook");
    let secret = secret_file(&dir);
    let (url, seen) = receiver(2).await;
    let ns = verdict_testkit::namespace();
    let server = sender(&url, &secret, redis.then_some(ns.as_str()), None);
    let ids = submit_prints(&server.http(), 8, "hook").await;
    wait_delivered(&seen, &ids, Duration::from_secs(60)).await;
    // Give a wrongly repeated delivery time to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    let mut latencies = Vec::new();
    for id in &ids {
        let s = &seen[id];
        assert_eq!(
            s.attempts.len(),
            3,
            "{id}: 2 failures, then delivered: {s:?}"
        );
        assert!(
            s.attempts.iter().all(|ok| *ok),
            "{id}: every signature verifies"
        );
        assert_eq!(s.delivered, 1, "{id}: delivered once");
        let body = s.body.as_ref().unwrap();
        assert_eq!(body["submission"]["verdict"], "ACCEPTED", "{body}");
        assert_eq!(body["submission"]["status"], "FINISHED");
        let out = body["submission"]["tests"][0]["stdout"]
            .as_str()
            .unwrap_or("");
        assert!(out.starts_with("hook-"), "the record is whole: {body}");
        latencies.extend(s.latency_ms);
    }
    assert_eq!(seen.len(), ids.len(), "no delivery of anything else");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("verdict_webhook_deliveries_total{outcome=\"delivered\"} 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains("verdict_webhook_deliveries_total{outcome=\"retried\"} 16"),
        "{metrics}"
    );
    latencies.sort_unstable();
    println!(
        "webhook ({}): finished → delivered after 2 failed attempts, p50 {} ms, max {} ms",
        if redis { "redis" } else { "embedded" },
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_embedded_delivers_each_submission_signed_after_two_failures() {
    each_submission_is_delivered_signed_after_two_failures(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_redis_delivers_each_submission_signed_after_two_failures() {
    each_submission_is_delivered_signed_after_two_failures(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_first_delivery_is_fast() {
    // A receiver that answers 200 at once: finished → received is the sender's own
    // latency (the figure the closing note reports).
    let dir = TempDir::new("webhook-fast");
    let secret = secret_file(&dir);
    let (url, seen) = receiver(0).await;
    let server = sender(&url, &secret, None, None);
    let ids = submit_prints(&server.http(), 20, "fast").await;
    wait_delivered(&seen, &ids, Duration::from_secs(60)).await;
    let seen = seen.lock().unwrap().clone();
    let mut latencies: Vec<i64> = ids.iter().filter_map(|id| seen[id].latency_ms).collect();
    latencies.sort_unstable();
    println!(
        "webhook latency, finished → received: p50 {} ms, max {} ms (n = {})",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len()
    );
    assert_eq!(latencies.len(), ids.len());
}

async fn kill_9_mid_delivery_loses_nothing(redis: bool) {
    let dir = TempDir::new("webhook-kill");
    let secret = secret_file(&dir);
    let data = dir.path().join("data");
    // Every delivery fails twice first, so that at the kill some are mid-retry.
    let (url, seen) = receiver(2).await;
    let ns = verdict_testkit::namespace();
    let ns = redis.then_some(ns.as_str());
    let data_dir = (!redis).then_some(data.as_path());
    let first = sender(&url, &secret, ns, data_dir);
    let ids = submit_prints(&first.http(), 12, "kill").await;
    // Kill once some, not all, were delivered.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = seen
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.delivered > 0)
            .count();
        if done >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing delivered before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::process::Command::new("kill")
        .args(["-9", &first.proc.pid().to_string()])
        .status()
        .unwrap();
    let delivered_before = seen
        .lock()
        .unwrap()
        .values()
        .filter(|s| s.delivered > 0)
        .count();
    drop(first);
    let second = sender(&url, &secret, ns, data_dir);
    wait_delivered(&seen, &ids, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    let duplicates: u32 = ids.iter().map(|id| seen[id].delivered - 1).sum();
    for id in &ids {
        assert!(
            seen[id].attempts.iter().all(|ok| *ok),
            "{id}: signatures verify"
        );
    }
    println!(
        "webhook kill -9 ({}): {} of {} delivered before the kill, 0 lost, {duplicates} duplicate deliveries",
        if redis { "redis" } else { "embedded --data-dir" },
        delivered_before,
        ids.len()
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_redis_kill_9_of_the_sender_loses_no_delivery() {
    kill_9_mid_delivery_loses_nothing(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_embedded_data_dir_kill_9_of_the_sender_loses_no_delivery() {
    kill_9_mid_delivery_loses_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_flags_are_checked_at_start() {
    // A URL without a secret, or a secret file that is missing, stops the process with a
    // clear message instead of sending unsigned or not at all.
    let out = std::process::Command::new(bin())
        .args([
            "standalone",
            "--listen",
            "127.0.0.1:0",
            "--webhook-url",
            "http://127.0.0.1:9/x",
        ])
        .env_remove("VERDICT_REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--webhook-secret-file"), "{err}");
    let out = std::process::Command::new(bin())
        .args([
            "standalone",
            "--listen",
            "127.0.0.1:0",
            "--webhook-url",
            "ftp://example/x",
            "--webhook-secret-file",
            "/nonexistent",
        ])
        .env_remove("VERDICT_REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--webhook-url"), "{err}");
}

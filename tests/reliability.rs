//! Fault injection against real processes and a real Redis: worker crashes, poison jobs,
//! Redis and server restarts, graceful shutdown, backpressure. Each test prints the
//! figures the reliability issue asks for.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::{json, Value};
use verdict_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

fn sigkill(pid: u32) {
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
}

fn sigterm(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

async fn redis(url: &str) -> Client {
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

/// Entries delivered to a worker and never acknowledged.
async fn pending(redis: &Client, ns: &str) -> u64 {
    let summary: fred::types::Value = redis
        .custom(
            fred::types::CustomCommand::new("XPENDING", fred::types::ClusterHash::FirstKey, false),
            vec![format!("{ns}:jobs"), "workers".into()],
        )
        .await
        .unwrap();
    // XPENDING summary: [count, smallest id, greatest id, [[consumer, count]...]]
    summary
        .into_array()
        .into_iter()
        .next()
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// A worker process with extra environment (visibility timeout, fault switch).
fn worker_with(url: &str, ns: &str, concurrency: usize, env: &[(&str, &str)]) -> Proc {
    worker_with_env(bin(), url, ns, concurrency, env)
}

const FAST_RECLAIM: (&str, &str) = ("VERDICT_VISIBILITY_TIMEOUT_MS", "2000");

#[tokio::test]
async fn killed_workers_lose_no_job_and_each_submission_finishes_once() {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let workers: Vec<Proc> = (0..3)
        .map(|_| worker_with(&url, &ns, 2, &[FAST_RECLAIM]))
        .collect();
    let mut ids = Vec::new();
    for k in 0..60 {
        let source = format!("import time\ntime.sleep(0.3)\nprint('job-{k}')");
        ids.push(
            submit(
                &server.http(),
                json!({ "language": "python3", "source": source }),
            )
            .await,
        );
    }
    let mut subscribers = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let (ws_url, id) = (server.ws("/graphql"), id.clone());
        subscribers.push(tokio::spawn(async move {
            let mut ws = WsClient::connect(&ws_url).await;
            let events = ws.events(&id, None).await;
            (k, events)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut workers = workers.into_iter();
    let first = workers.next().unwrap();
    let killed_at = chrono::Utc::now();
    sigkill(first.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = workers.next().unwrap();
    sigkill(second.pid());
    let _survivor = workers.next();
    let start = Instant::now();
    let mut finished = 0;
    let mut rerun_delays = Vec::new();
    for s in subscribers {
        let (k, events) = tokio::time::timeout(Duration::from_secs(2 + 30 + 60), s)
            .await
            .unwrap()
            .unwrap();
        let finals: Vec<&Value> = events
            .iter()
            .filter(|e| e["__typename"] == "FinishedEvent")
            .collect();
        assert_eq!(finals.len(), 1, "job {k}: exactly one FinishedEvent");
        let submission = &finals[0]["submission"];
        assert_eq!(submission["verdict"], "ACCEPTED", "job {k}: {submission}");
        assert_eq!(submission["tests"][0]["stdout"], format!("job-{k}\n"));
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "job {k}: seq has no repeats or gaps"
        );
        let runs: Vec<&Value> = events
            .iter()
            .filter(|e| e["__typename"] == "RunningEvent")
            .collect();
        if runs.len() > 1 {
            let at: chrono::DateTime<chrono::Utc> = runs[1]["at"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .unwrap_or(killed_at);
            rerun_delays.push((at - killed_at).num_milliseconds());
        }
        finished += 1;
    }
    let r = redis(&url).await;
    assert_eq!(
        pending(&r, &ns).await,
        0,
        "no pending entries left in the job stream"
    );
    // The verdict feed: exactly one entry per submission, kills or not.
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = r
        .xrange(format!("{ns}:finished"), "-", "+", None)
        .await
        .unwrap();
    let mut fed: Vec<String> = entries.iter().map(|(_, f)| f["id"].clone()).collect();
    assert_eq!(fed.len(), 60, "one feed entry per submission");
    fed.sort();
    fed.dedup();
    let mut submitted = ids.clone();
    submitted.sort();
    assert_eq!(fed, submitted, "each submission once in the feed");
    assert!(entries
        .iter()
        .all(|(_, f)| f["verdict"] == "ACCEPTED"
            && f["submission"].contains("\"status\":\"FINISHED\"")));
    println!(
        "worker crash: {finished}/60 finished exactly once; {} re-run after a kill; kill → re-run start (ms): {:?}; all done {:?} after the second kill",
        rerun_delays.len(),
        rerun_delays,
        start.elapsed()
    );
    assert_eq!(finished, 60);
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_worker_ends_as_internal_error() {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let env = [
        FAST_RECLAIM,
        ("VERDICT_TEST_CRASH_MARKER", "CRASH-ME"),
        ("VERDICT_MAX_REDELIVERIES", "3"),
    ];
    let id = submit(
        &server.http(),
        json!({ "language": "python3", "source": "print('CRASH-ME')" }),
    )
    .await;
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        assert!(Instant::now() < deadline, "the poison job never ended");
        let mut w = worker_with(&url, &ns, 1, &env);
        // Each worker either dies on the job or finishes it as INTERNAL_ERROR.
        let status = loop {
            if let Some(status) = w.0.try_wait().unwrap() {
                break Some(status);
            }
            let body = graphql(
                &server.http(),
                "query($id: ID!) { submission(id: $id) { status verdict message } }",
                json!({ "id": id }),
            )
            .await;
            if body["data"]["submission"]["status"] == "FINISHED" {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match status {
            Some(_) => crashes += 1,
            None => {
                break graphql(
                    &server.http(),
                    "query($id: ID!) { submission(id: $id) { verdict message } }",
                    json!({ "id": id }),
                )
                .await;
            }
        }
        drop(w);
    };
    println!("poison: {crashes} worker crashes, then: {outcome}");
    assert_eq!(outcome["data"]["submission"]["verdict"], "INTERNAL_ERROR");
    assert!(outcome["data"]["submission"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("not retried"));
    assert_eq!(
        crashes, 3,
        "it is tried exactly max_redeliveries + 1 times, the last one gives up"
    );
    assert_eq!(pending(&redis(&url).await, &ns).await, 0);
}

#[tokio::test]
async fn open_subscriptions_survive_a_redis_restart_with_aof() {
    // A private Redis we can kill: AOF with fsync on every write, so nothing acknowledged
    // is lost when it is SIGKILLed (see README, "Redis persistence").
    let aof = ["--appendonly", "yes", "--appendfsync", "always"];
    // Its files outlive the first server (the restart reads them) and go with `redis_dir`.
    let redis_dir = TempDir::new("verdict-redis");
    let (redis_proc, url) = start_redis_in(redis_dir.path(), &aof);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let ns = namespace();
    let server = server(bin(), &url, &ns);
    let _w1 = worker_with(&url, &ns, 2, &[]);
    let _w2 = worker_with(&url, &ns, 2, &[]);
    let mut tasks = Vec::new();
    for k in 0..20 {
        let source = format!(
            "import time\nfor i in range(4):\n    print({k}, i, flush=True)\n    time.sleep(0.4)\n"
        );
        let id = submit(
            &server.http(),
            json!({ "language": "python3", "source": source }),
        )
        .await;
        let ws_url = server.ws("/graphql");
        tasks.push(tokio::spawn(async move {
            let mut ws = WsClient::connect(&ws_url).await;
            let op = ws.subscribe(EVENTS, json!({ "id": id })).await;
            let (events, completed) = ws.collect(&op, usize::MAX, Duration::from_secs(90)).await;
            (k, events, completed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let dir = redis_dir.path().to_path_buf();
    drop(redis_proc); // SIGKILL
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(aof)
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _restarted = Proc(restarted);
    let mut ok = 0;
    for t in tasks {
        let (k, events, completed) = t.await.unwrap();
        assert!(
            completed,
            "subscription {k} must complete without its WebSocket closing"
        );
        let submission = check_event_order(&events, false);
        assert_eq!(submission["verdict"], "ACCEPTED", "{k}: {submission}");
        assert_eq!(
            submission["tests"][0]["stdout"],
            format!("{k} 0\n{k} 1\n{k} 2\n{k} 3\n")
        );
        ok += 1;
    }
    // The server counted its reconnects (command and Pub/Sub connections at least).
    let metrics = server.metrics().await;
    let reconnects: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("verdict_redis_reconnects_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no reconnect count in {metrics}"));
    assert!(reconnects >= 2, "{reconnects} reconnects counted");
    println!(
        "redis restart: {ok}/20 subscriptions completed with every seq exactly once; server counted {reconnects} reconnects"
    );
}

#[tokio::test]
async fn a_retrying_client_gets_the_final_event_across_a_server_restart() {
    let (url, ns) = (redis_url(), namespace());
    let first = server(bin(), &url, &ns);
    let port = first.port;
    let _w = worker_with(&url, &ns, 1, &[]);
    let source =
        "import time\nfor i in range(8):\n    print(i, flush=True)\n    time.sleep(0.25)\n";
    let id = submit(
        &first.http(),
        json!({ "language": "python3", "source": source }),
    )
    .await;
    let mut ws = WsClient::connect(&first.ws("/graphql")).await;
    let op = ws.subscribe(EVENTS, json!({ "id": id })).await;
    let (mut seen, _) = ws.collect(&op, 3, Duration::from_secs(30)).await;
    drop(first); // kill the server mid-run
    assert!(
        ws.recv().await.is_none(),
        "the socket closes with the server"
    );
    // The client retries (as graphql-ws `retryAttempts` does) until a server answers.
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(bin());
    cmd.args(["server", "--listen", &listen, "--redis-url", &url])
        .env("VERDICT_REDIS_NAMESPACE", &ns);
    let _second = Proc(cmd.spawn().unwrap());
    let ws_url = format!("ws://{listen}/graphql");
    let mut retries = 0;
    let mut ws = loop {
        match tokio::net::TcpStream::connect(listen.as_str()).await {
            Ok(_) => break WsClient::connect(&ws_url).await,
            _ => {
                retries += 1;
                assert!(retries < 100, "server never came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();
    seen.extend(ws.events(&id, Some(last)).await);
    let submission = check_event_order(&seen, false);
    assert_eq!(submission["tests"][0]["stdout"], "0\n1\n2\n3\n4\n5\n6\n7\n");
    println!(
        "server restart: reconnected after {retries} retries; {} events, none missed",
        seen.len()
    );
}

#[tokio::test]
async fn sigterm_lets_a_worker_finish_its_job_then_exit() {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let mut w = worker_with(&url, &ns, 1, &[]);
    let source = "import time\nprint('started', flush=True)\ntime.sleep(1)\nprint('done')";
    let id = submit(
        &server.http(),
        json!({ "language": "python3", "source": source }),
    )
    .await;
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let op = ws.subscribe(EVENTS, json!({ "id": id })).await;
    // Wait until it runs, then ask the worker to stop.
    loop {
        let (e, _) = ws.collect(&op, 1, Duration::from_secs(30)).await;
        if e[0]["__typename"] == "RunningEvent" {
            break;
        }
    }
    let asked = Instant::now();
    sigterm(w.pid());
    let (rest, completed) = ws.collect(&op, usize::MAX, Duration::from_secs(30)).await;
    assert!(completed);
    let last = rest.last().unwrap();
    assert_eq!(last["submission"]["verdict"], "ACCEPTED", "{last}");
    assert_eq!(last["submission"]["tests"][0]["stdout"], "started\ndone\n");
    let status = loop {
        if let Some(s) = w.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "worker did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit: {status}");
    assert_eq!(
        pending(&redis(&url).await, &ns).await,
        0,
        "the job was acknowledged"
    );
    println!(
        "graceful shutdown: job finished and acked, worker exited in {:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_full_queue_refuses_submits_with_queue_full() {
    let (url, ns) = (redis_url(), namespace());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(bin());
    cmd.args([
        "server",
        "--listen",
        &listen,
        "--redis-url",
        &url,
        "--max-queue",
        "5",
    ])
    .env("VERDICT_REDIS_NAMESPACE", &ns);
    let _server = Proc(cmd.spawn().unwrap());
    let base = format!("http://{listen}");
    for _ in 0..50 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        submit(&base, json!({ "language": "bash", "source": "echo hi" })).await;
    }
    let q = "mutation($i: SubmitInput!) { submit(input: $i) { id } }";
    let body = graphql(
        &base,
        q,
        json!({ "i": { "language": "bash", "source": "echo hi" } }),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "QUEUE_FULL",
        "{body}"
    );
    let stats = graphql(&base, "{ stats { waiting pending } }", json!({})).await;
    assert_eq!(
        stats["data"]["stats"]["waiting"], 5,
        "nothing was enqueued by the refused submit: {stats}"
    );
}

#[tokio::test]
async fn stats_show_live_workers_and_readyz_follows_redis() {
    let (redis_proc, url) = start_redis(&[]);
    let ns = namespace();
    let server = server(bin(), &url, &ns);
    let _w = worker_with(&url, &ns, 2, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = graphql(
            &server.http(),
            "{ stats { waiting pending workers { name slots running } } }",
            json!({}),
        )
        .await;
        if body["data"]["stats"]["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 1)
        {
            assert_eq!(body["data"]["stats"]["workers"][0]["slots"], 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker heartbeat never showed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = reqwest::get(format!("{}/readyz", server.http()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    drop(redis_proc);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = reqwest::get(format!("{}/readyz", server.http()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "readyz reports Redis down");
    let asked = Instant::now();
    let q = "mutation($i: SubmitInput!) { submit(input: $i) { id } }";
    let body = graphql(
        &server.http(),
        q,
        json!({ "i": { "language": "bash", "source": "echo hi" } }),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAVAILABLE",
        "{body}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "submit fails fast while Redis is down: {:?}",
        asked.elapsed()
    );
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_subscriber_that_never_reads_neither_grows_the_server_nor_slows_others() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let _w = worker_with(&url, &ns, 2, &[]);
    // ~48 MB of live output over a few seconds.
    let flood = "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(48 * 1024):\n    sys.stdout.write(line)\n";
    let id = submit(
        &server.http(),
        json!({ "language": "python3", "source": flood, "limits": { "outputBytes": 64 << 20, "wallTimeMs": 20000 } }),
    )
    .await;
    let mut request = server.ws("/graphql").into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut stalled, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    stalled
        .send(Message::text(
            json!({ "type": "connection_init" }).to_string(),
        ))
        .await
        .unwrap();
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": EVENTS, "variables": { "id": id } } });
    stalled
        .send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    let before = rss_kb(server.proc.pid());
    // Meanwhile another client's submission runs and is delivered promptly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let other = submit(
        &server.http(),
        json!({ "language": "bash", "source": "echo other" }),
    )
    .await;
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let events = ws.events(&other, None).await;
    assert_eq!(
        check_event_order(&events, false)["tests"][0]["stdout"],
        "other\n"
    );
    let other_took = start.elapsed();
    // Let the flood finish while the stalled client reads nothing; wait on a subscription
    // without live output (polling the record would itself load 24 MB per poll).
    let quiet =
        "subscription($id: ID!) { submissionEvents(id: $id, output: false) { __typename seq } }";
    let op = ws.subscribe(quiet, json!({ "id": id })).await;
    let (_, completed) = ws.collect(&op, usize::MAX, Duration::from_secs(60)).await;
    assert!(completed);
    let after = rss_kb(server.proc.pid());
    println!(
        "stalled subscriber: server RSS {before} KiB -> {after} KiB (+{} KiB) while 48 MiB of output streamed; another submission took {other_took:?}",
        after.saturating_sub(before)
    );
    // Bounded, not proportional to the output: measured +23..27 MiB for 24 and 48 MiB
    // streamed (a reading subscriber: +5 MiB). Events are at most 64 KiB and the hub keeps
    // HUB_CAPACITY of them per submission.
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "server memory grew by {} KiB",
        after.saturating_sub(before)
    );
    assert!(other_took < Duration::from_secs(5));
    drop(stalled);
}

/// The only worker is SIGKILLed mid-job; a worker started again takes the job back as soon
/// as the dead one's heartbeat lapses (3 s), not after the visibility timeout (30 s here),
/// and the job finishes once.
#[tokio::test]
async fn a_restarted_worker_takes_back_the_dead_workers_job_promptly() {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let slow_reclaim = ("VERDICT_VISIBILITY_TIMEOUT_MS", "30000");
    let first = worker_with(&url, &ns, 1, &[slow_reclaim]);
    let source = "import time\ntime.sleep(2)\nprint('done')";
    let id = submit(
        &server.http(),
        json!({ "language": "python3", "source": source }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = graphql(
            &server.http(),
            "query($id: ID!) { submission(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await;
        if body["data"]["submission"]["status"] == "RUNNING" {
            break;
        }
        assert!(Instant::now() < deadline, "never ran: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigkill(first.pid());
    let killed = Instant::now();
    let _second = worker_with(&url, &ns, 1, &[slow_reclaim]);
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let events = tokio::time::timeout(Duration::from_secs(40), ws.events(&id, None))
        .await
        .expect("the job finished");
    let took = killed.elapsed();
    let last = events.last().unwrap();
    assert_eq!(last["__typename"], "FinishedEvent");
    assert_eq!(last["submission"]["verdict"], "ACCEPTED", "{last}");
    assert_eq!(last["submission"]["tests"][0]["stdout"], "done\n");
    let finals = events
        .iter()
        .filter(|e| e["__typename"] == "FinishedEvent")
        .count();
    assert_eq!(finals, 1);
    println!("kill -> FinishedEvent of the re-run: {took:?} (the job itself sleeps 2 s)");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: waited for the visibility timeout instead of the heartbeat"
    );
    assert_eq!(pending(&redis(&url).await, &ns).await, 0);
}

//! `verdict standalone --data-dir` (issue 20): killed with SIGKILL while it holds
//! finished, running and queued submissions, and started again on the same directory,
//! every submission is there or runs to completion, with the same records and logs.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verdict_testkit::{graphql, standalone_with, submit, TempDir, WsClient};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

const RECORD: &str =
    "query($id: ID!) { submission(id: $id) { id status verdict tests { index verdict stdout } } }";

async fn record(base: &str, id: &str) -> Value {
    graphql(base, RECORD, json!({ "id": id })).await["data"]["submission"].clone()
}

async fn wait_finished(base: &str, ids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    for id in ids {
        loop {
            if record(base, id).await["status"] == "FINISHED" {
                break;
            }
            assert!(Instant::now() < deadline, "{id} did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn data_dir_sigkill_keeps_finished_and_runs_queued_to_completion() {
    let dir = TempDir::new("data-dir");
    let data = dir.path().join("state");
    let data = data.display().to_string();
    let args = ["--concurrency", "1", "--data-dir", data.as_str()];
    let first = standalone_with(bin(), &args, &[]);
    let base = first.http();

    let mut done = Vec::new();
    for i in 0..3 {
        let code = format!("print('done-{i}')");
        done.push(submit(&base, json!({ "language": "python3", "source": code })).await);
    }
    wait_finished(&base, &done, Duration::from_secs(60)).await;
    let mut before = Vec::new();
    let mut ws = WsClient::connect(&first.ws("/ws")).await;
    for id in &done {
        before.push((record(&base, id).await, ws.events(id, None).await));
    }
    // One worker slot: the first of these runs (sleeping), the others wait in the queue.
    let mut pending = Vec::new();
    for i in 0..4 {
        let code = format!("import time\ntime.sleep(0.5)\nprint('late-{i}')");
        pending.push(submit(&base, json!({ "language": "python3", "source": code })).await);
    }
    let statuses: Vec<Value> = {
        let mut s = Vec::new();
        for id in &pending {
            s.push(record(&base, id).await["status"].clone());
        }
        s
    };
    assert!(
        statuses.iter().filter(|s| **s == "QUEUED").count() >= 2,
        "some are still queued at the kill: {statuses:?}"
    );
    std::process::Command::new("kill")
        .args(["-9", &first.proc.pid().to_string()])
        .status()
        .unwrap();
    drop(ws);
    drop(first);

    let second = standalone_with(bin(), &args, &[]);
    let base = second.http();
    let mut ws = WsClient::connect(&second.ws("/ws")).await;
    for (id, (record_before, events_before)) in done.iter().zip(&before) {
        assert_eq!(
            &record(&base, id).await,
            record_before,
            "{id}: the same record"
        );
        assert_eq!(
            &ws.events(id, None).await,
            events_before,
            "{id}: the same log"
        );
    }
    wait_finished(&base, &pending, Duration::from_secs(60)).await;
    for (i, id) in pending.iter().enumerate() {
        let events = ws.events(id, None).await;
        let last = verdict_testkit::check_event_order(&events, false);
        assert_eq!(last["verdict"], "ACCEPTED", "{id}: {last}");
        assert_eq!(last["tests"][0]["stdout"], format!("late-{i}\n"));
    }
    // Submitting goes on as before, and the ids stay unique.
    let fresh = submit(
        &base,
        json!({ "language": "python3", "source": "print(7)" }),
    )
    .await;
    assert!(!done.contains(&fresh) && !pending.contains(&fresh));
    wait_finished(&base, &[fresh], Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_dir_is_refused_with_redis_and_when_another_process_holds_it() {
    let dir = TempDir::new("data-dir-busy");
    let data = dir.path().join("state").display().to_string();
    let _holder = standalone_with(bin(), &["--data-dir", data.as_str()], &[]);
    let out = std::process::Command::new(bin())
        .args([
            "standalone",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.as_str(),
        ])
        .env_remove("VERDICT_REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already open"), "{err}");
    let out = std::process::Command::new(bin())
        .args([
            "standalone",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.as_str(),
        ])
        .env("VERDICT_REDIS_URL", verdict_testkit::redis_url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--data-dir is for the embedded broker"),
        "{err}"
    );
}

//! The verdict feed (feed.rs) on both backends: one entry per submission, at its first
//! final write, however many writers race; capped; readable after an entry id. On Redis
//! the entry is a stream entry of `<namespace>:finished` with the documented fields.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashMap;

use fred::prelude::*;
use verdict_broker::*;
use verdict_testkit::{namespace, redis_url};

fn job() -> Job {
    let request = Request {
        language: "python3".into(),
        source: "print(1)".into(),
        tests: vec![TestCase {
            stdin: String::new(),
            expected_output: None,
        }],
        limits: Limits {
            cpu_time_ms: 1000,
            wall_time_ms: 2000,
            memory_kb: 65536,
            output_bytes: 1024,
            processes: 8,
        },
        compare: CompareMode::TrimTrailing,
        epsilon: None,
        stop_on_first_failure: false,
        problem: None,
    };
    Job {
        submission: Submission::queued(
            uuid::Uuid::new_v4().to_string(),
            Some("user:alice".into()),
            &request,
        ),
        request,
    }
}

async fn backends(settings: BrokerSettings) -> [(SharedBroker, Option<String>); 2] {
    let memory: SharedBroker = MemoryBroker::new(settings.clone());
    let ns = namespace();
    let redis: SharedBroker = RedisBroker::connect(RedisSettings {
        url: redis_url(),
        namespace: ns.clone(),
        broker: settings,
    })
    .await
    .unwrap();
    [(memory, None), (redis, Some(ns))]
}

#[tokio::test]
async fn each_submission_is_appended_once_at_its_first_final_write() {
    for (broker, ns) in backends(BrokerSettings::default()).await {
        let mut ids = Vec::new();
        for k in 0..20 {
            let job = job();
            broker.submit(&job).await.unwrap();
            let mut done = job.submission.clone();
            done.finish(if k % 2 == 0 {
                Verdict::Accepted
            } else {
                Verdict::WrongAnswer
            });
            // Three racing final writes (a cancel, a duplicate run): one wins.
            let mut cancelled = job.submission.clone();
            cancelled.finish(Verdict::Cancelled);
            let (a, b, c) = tokio::join!(
                broker.finish(&done),
                broker.finish(&cancelled),
                broker.finish(&done)
            );
            let won = [a, b, c]
                .into_iter()
                .filter(|r| r.as_ref().unwrap().is_some())
                .count();
            assert_eq!(won, 1);
            ids.push(job.submission.id.clone());
        }
        let entries = broker.finished_after("0", 1000).await.unwrap();
        let seen: Vec<&str> = entries.iter().map(|e| e.submission.id.as_str()).collect();
        assert_eq!(seen, ids.iter().map(String::as_str).collect::<Vec<_>>());
        for e in &entries {
            assert_eq!(e.submission.status, Status::Finished);
            assert_eq!(e.submission.owner.as_deref(), Some("user:alice"));
        }
        // Reading on after an entry id.
        let rest = broker.finished_after(&entries[9].id, 1000).await.unwrap();
        assert_eq!(rest.len(), 10);
        assert_eq!(rest[0].submission.id, ids[10]);
        let page = broker.finished_after("0", 3).await.unwrap();
        assert_eq!(page.len(), 3);

        if let Some(ns) = ns {
            // The stream's contract: the fields other services read.
            let client = Client::new(Config::from_url(&redis_url()).unwrap(), None, None, None);
            client.init().await.unwrap();
            let key = format!("{ns}:finished");
            let len: u64 = client.xlen(&key).await.unwrap();
            assert_eq!(len, 20);
            let raw: Vec<(String, HashMap<String, String>)> =
                client.xrange(&key, "-", "+", Some(1)).await.unwrap();
            let fields = &raw[0].1;
            assert_eq!(fields["id"], ids[0]);
            assert_eq!(fields["owner"], "user:alice");
            assert_eq!(fields["verdict"], "ACCEPTED");
            assert_eq!(fields["problemId"], "");
            assert!(!fields["finishedAt"].is_empty());
            let record: Submission = serde_json::from_str(&fields["submission"]).unwrap();
            assert_eq!(record.id, ids[0]);
            assert!(fields.contains_key("score") && fields.contains_key("maxScore"));
            client.quit().await.unwrap();
        }
    }
}

#[tokio::test]
async fn the_memory_feed_is_capped() {
    let broker = MemoryBroker::new(BrokerSettings {
        feed_max_len: 5,
        ..BrokerSettings::default()
    });
    for _ in 0..8 {
        let job = job();
        broker.submit(&job).await.unwrap();
        let mut done = job.submission.clone();
        done.finish(Verdict::Accepted);
        broker.finish(&done).await.unwrap();
    }
    let entries = broker.finished_after("0", 100).await.unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0].id, "4-0");
}

//! The broker contract, run unchanged against both backends: the embedded one and a real
//! Redis (`REDIS_URL`, or a private `redis-server` testkit starts on a free port).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use verdict_broker::*;
use verdict_testkit::{namespace, redis_url};

async fn redis_broker() -> SharedBroker {
    let settings = RedisSettings {
        url: redis_url(),
        namespace: namespace(),
        broker: BrokerSettings::default(),
    };
    RedisBroker::connect(settings)
        .await
        .expect("connect to redis")
}

async fn memory_broker() -> SharedBroker {
    MemoryBroker::new(BrokerSettings::default())
}

fn job(source: &str) -> Job {
    let request = Request {
        language: "python3".into(),
        source: source.into(),
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
    };
    Job {
        submission: Submission::queued(uuid::Uuid::new_v4().to_string(), None, &request),
        request,
    }
}

fn finished(job: &Job, verdict: Verdict) -> Submission {
    let mut s = job.submission.clone();
    s.finish(verdict);
    s
}

async fn submit_queues_and_logs_seq_1(broker: SharedBroker) {
    let job = job("print(1)");
    let event = broker.submit(&job).await.expect("submit");
    assert_eq!(event.seq, 1);
    assert!(matches!(event.kind, EventKind::Queued { position: Some(p) } if p >= 1));
    let record = broker
        .submission(&job.submission.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(record.status, Status::Queued);
    let log = broker
        .events_after(&job.submission.id, 0, usize::MAX)
        .await
        .expect("log");
    assert_eq!(log, vec![event]);
    assert!(broker
        .submission("no-such-id")
        .await
        .expect("read")
        .is_none());
}

async fn seq_increases_and_first_finish_wins(broker: SharedBroker) {
    let job = job("print(1)");
    broker.submit(&job).await.expect("submit");
    let id = &job.submission.id;
    let running = broker
        .publish(id, EventKind::Running { test: 1, tests: 1 })
        .await
        .expect("publish")
        .expect("open");
    assert_eq!(running.seq, 2);
    assert_eq!(
        broker
            .submission(id)
            .await
            .expect("read")
            .expect("exists")
            .status,
        Status::Running
    );
    let first = broker
        .finish(&finished(&job, Verdict::Accepted))
        .await
        .expect("finish")
        .expect("first wins");
    assert_eq!(first.seq, 3);
    assert!(
        broker
            .finish(&finished(&job, Verdict::Cancelled))
            .await
            .expect("finish")
            .is_none(),
        "second final write must lose"
    );
    assert!(
        broker
            .publish(id, EventKind::Compiling)
            .await
            .expect("publish")
            .is_none(),
        "events after the end are discarded"
    );
    let record = broker.submission(id).await.expect("read").expect("exists");
    assert_eq!(
        (record.status, record.verdict),
        (Status::Finished, Some(Verdict::Accepted))
    );
    let seqs: Vec<u64> = broker
        .events_after(id, 0, usize::MAX)
        .await
        .expect("log")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(
        broker
            .events_after(id, 2, usize::MAX)
            .await
            .expect("log")
            .len(),
        1
    );
}

async fn late_watcher_gets_replay_then_end(broker: SharedBroker) {
    let job = job("print(1)");
    broker.submit(&job).await.expect("submit");
    let id = &job.submission.id;
    broker
        .publish(id, EventKind::Running { test: 1, tests: 1 })
        .await
        .expect("publish");
    broker
        .finish(&finished(&job, Verdict::Accepted))
        .await
        .expect("finish");
    let stream = watch(Arc::clone(&broker), id, 0).await.expect("watch");
    let events: Vec<Event> = tokio::time::timeout(
        Duration::from_secs(5),
        stream.map(|e| e.expect("event")).collect(),
    )
    .await
    .expect("completes");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(events[2].is_final());
}

async fn live_watchers_see_every_event_once(broker: SharedBroker) {
    let job = job("print(1)");
    broker.submit(&job).await.expect("submit");
    let id = job.submission.id.clone();
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let stream = watch(Arc::clone(&broker), &id, 0).await.expect("watch");
        watchers.push(tokio::spawn(async move {
            stream
                .map(|e| e.expect("event").seq)
                .collect::<Vec<_>>()
                .await
        }));
    }
    assert_eq!(
        broker.watched(),
        1,
        "one shared subscription per submission"
    );
    for k in 0..200 {
        let chunk = format!("line {k}\n");
        broker
            .publish(
                &id,
                EventKind::Output {
                    test: 1,
                    stream: Stream::Stdout,
                    chunk,
                },
            )
            .await
            .expect("publish");
    }
    broker
        .finish(&finished(&job, Verdict::Accepted))
        .await
        .expect("finish");
    let expected: Vec<u64> = (1..=202).collect();
    for w in watchers {
        let seqs = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("completes")
            .expect("task");
        assert_eq!(seqs, expected);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(broker.watched(), 0, "the last watcher leaving unsubscribes");
}

async fn watching_from_a_seq_resumes_there(broker: SharedBroker) {
    let job = job("print(1)");
    broker.submit(&job).await.expect("submit");
    let id = &job.submission.id;
    broker
        .publish(id, EventKind::Compiling)
        .await
        .expect("publish");
    broker
        .publish(id, EventKind::Running { test: 1, tests: 1 })
        .await
        .expect("publish");
    let stream = watch(Arc::clone(&broker), id, 2).await.expect("watch");
    let finisher = {
        let broker = Arc::clone(&broker);
        let done = finished(&job, Verdict::Accepted);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            broker.finish(&done).await.expect("finish");
        })
    };
    let seqs: Vec<u64> = tokio::time::timeout(
        Duration::from_secs(5),
        stream.map(|e| e.expect("event").seq).collect(),
    )
    .await
    .expect("completes");
    finisher.await.expect("finisher");
    assert_eq!(seqs, vec![3, 4]);
}

async fn unknown_id_is_an_error_not_a_hang(broker: SharedBroker) {
    let result = tokio::time::timeout(Duration::from_secs(2), watch(broker, "does-not-exist", 0))
        .await
        .expect("no hang");
    assert!(matches!(result, Err(BrokerError::NotFound(_))));
}

async fn each_job_is_delivered_once(broker: SharedBroker) {
    let jobs: Vec<Job> = (0..5).map(|k| job(&format!("print({k})"))).collect();
    for j in &jobs {
        broker.submit(j).await.expect("submit");
    }
    let mut seen = Vec::new();
    while let Some(delivery) = broker
        .next_job("c1", Duration::from_millis(200))
        .await
        .expect("next")
    {
        seen.push(delivery.job.submission.id.clone());
        broker.ack(&delivery).await.expect("ack");
    }
    let mut expected: Vec<String> = jobs.iter().map(|j| j.submission.id.clone()).collect();
    assert_eq!(seen, expected, "FIFO, each once");
    expected.clear();
    assert_eq!(broker.queue_len().await.expect("len"), 0);
}

async fn queue_limit_refuses_submits(broker: SharedBroker) {
    // Exercised with a private small-limit broker below; here: the default is generous.
    for k in 0..20 {
        broker
            .submit(&job(&format!("print({k})")))
            .await
            .expect("under the default limit");
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $name() { super::$name(super::memory_broker().await).await } )*
        }
        mod redis {
            $( #[tokio::test] async fn $name() { super::$name(super::redis_broker().await).await } )*
        }
    };
}

contract!(
    submit_queues_and_logs_seq_1,
    seq_increases_and_first_finish_wins,
    late_watcher_gets_replay_then_end,
    live_watchers_see_every_event_once,
    watching_from_a_seq_resumes_there,
    unknown_id_is_an_error_not_a_hang,
    each_job_is_delivered_once,
    queue_limit_refuses_submits,
    latency_histograms_count_each_finished_submission_once,
);

#[tokio::test]
async fn full_queue_is_refused_on_both_backends() {
    let settings = BrokerSettings {
        max_queue: 2,
        ..BrokerSettings::default()
    };
    let memory: SharedBroker = MemoryBroker::new(settings.clone());
    let redis: SharedBroker = RedisBroker::connect(RedisSettings {
        url: redis_url(),
        namespace: namespace(),
        broker: settings,
    })
    .await
    .expect("connect");
    for broker in [memory, redis] {
        broker.submit(&job("1")).await.expect("first");
        broker.submit(&job("2")).await.expect("second");
        assert!(matches!(
            broker.submit(&job("3")).await,
            Err(BrokerError::QueueFull(2))
        ));
    }
}

#[tokio::test]
async fn a_long_log_is_replayed_in_pages_without_gaps() {
    for broker in [memory_broker().await, redis_broker().await] {
        let job = job("print(1)");
        broker.submit(&job).await.expect("submit");
        let id = job.submission.id.clone();
        for k in 0..1000 {
            let chunk = format!("{k}\n");
            broker
                .publish(
                    &id,
                    EventKind::Output {
                        test: 1,
                        stream: Stream::Stdout,
                        chunk,
                    },
                )
                .await
                .expect("publish");
        }
        broker
            .finish(&finished(&job, Verdict::Accepted))
            .await
            .expect("finish");
        assert_eq!(
            broker.events_after(&id, 10, 5).await.expect("page").len(),
            5
        );
        let seqs: Vec<u64> = watch(Arc::clone(&broker), &id, 0)
            .await
            .expect("watch")
            .map(|e| e.expect("event").seq)
            .collect()
            .await;
        assert_eq!(seqs, (1..=1002).collect::<Vec<u64>>());
    }
}

#[tokio::test]
async fn an_owner_over_its_unfinished_quota_is_refused_until_one_finishes() {
    let settings = BrokerSettings {
        max_unfinished_per_owner: 2,
        ..BrokerSettings::default()
    };
    let memory: SharedBroker = MemoryBroker::new(settings.clone());
    let redis: SharedBroker = RedisBroker::connect(RedisSettings {
        url: redis_url(),
        namespace: namespace(),
        broker: settings,
    })
    .await
    .expect("connect");
    for broker in [memory, redis] {
        let owned = |source: &str| {
            let mut j = job(source);
            j.submission.owner = Some("alice".into());
            j
        };
        let first = owned("1");
        broker.submit(&first).await.expect("first");
        broker.submit(&owned("2")).await.expect("second");
        assert!(matches!(
            broker.submit(&owned("3")).await,
            Err(BrokerError::OwnerBusy(2))
        ));
        broker
            .submit(&job("no owner"))
            .await
            .expect("others are not counted");
        broker
            .finish(&finished(&first, Verdict::Accepted))
            .await
            .expect("finish");
        broker
            .submit(&owned("4"))
            .await
            .expect("a finished one frees a place");
        let stats = broker.stats().await.expect("stats");
        assert_eq!(stats.verdicts, vec![("ACCEPTED".to_owned(), 1)]);
    }
}

/// Each finished submission is observed once in the latency histograms, from the
/// timestamps of its record; a losing second finish and a never-started cancel add none.
async fn latency_histograms_count_each_finished_submission_once(broker: SharedBroker) {
    let ran = job("ran");
    broker.submit(&ran).await.expect("submit");
    let mut done = ran.submission.clone();
    let t0 = done.created_at;
    done.started_at = Some(t0 + chrono::Duration::milliseconds(20));
    done.finish(Verdict::Accepted);
    done.finished_at = Some(t0 + chrono::Duration::milliseconds(1520));
    assert!(broker.finish(&done).await.expect("finish").is_some());
    assert!(broker.finish(&done).await.expect("again").is_none());

    let cancelled = job("cancelled");
    broker.submit(&cancelled).await.expect("submit");
    let gone = finished(&cancelled, Verdict::Cancelled);
    assert!(broker.finish(&gone).await.expect("cancel").is_some());

    let stats = broker.stats().await.expect("stats");
    assert_eq!(stats.queue_wait.count(), 1, "{stats:?}");
    assert_eq!(stats.run_time.count(), 1, "{stats:?}");
    assert_eq!(stats.queue_wait.sum_us, 20_000);
    assert_eq!(stats.run_time.sum_us, 1_500_000);
    let le = |h: &Histogram, bound: f64| {
        h.cumulative()
            .into_iter()
            .find(|(b, _)| *b == bound)
            .map(|(_, n)| n)
    };
    assert_eq!(le(&stats.queue_wait, 0.01), Some(0));
    assert_eq!(le(&stats.queue_wait, 0.025), Some(1));
    assert_eq!(le(&stats.run_time, 1.0), Some(0));
    assert_eq!(le(&stats.run_time, 2.5), Some(1));
}

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
        problem: None,
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
    feed_groups_hand_each_entry_out_until_acknowledged,
);

fn toolchains(ids: &[(&str, &str)]) -> Toolchains {
    ids.iter()
        .map(|(id, v)| ((*id).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn live_toolchains_are_the_union_of_live_workers_and_none_without_any() {
    let settings = BrokerSettings {
        worker_alive: Duration::from_millis(600),
        ..BrokerSettings::default()
    };
    for broker in broker_pair(settings).await {
        assert_eq!(broker.live_toolchains().await.expect("live"), None);
        let a = toolchains(&[("python3", "Python 3.11"), ("c", "gcc 12")]);
        let b = toolchains(&[("go", "go1.19")]);
        broker.heartbeat("a", 0, 1, &a).await.expect("heartbeat");
        broker.heartbeat("b", 0, 1, &b).await.expect("heartbeat");
        let live = broker.live_toolchains().await.expect("live").expect("some");
        assert_eq!(
            live.keys().map(String::as_str).collect::<Vec<_>>(),
            ["c", "go", "python3"]
        );
        assert_eq!(live["go"], "go1.19");
        // `b` stops heartbeating: its languages go with it; `a` keeps going.
        tokio::time::sleep(Duration::from_millis(400)).await;
        broker.heartbeat("a", 0, 1, &a).await.expect("heartbeat");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let live = broker.live_toolchains().await.expect("live").expect("some");
        assert!(!live.contains_key("go"), "{live:?}");
        assert!(live.contains_key("python3"), "{live:?}");
        // A live worker with no toolchain at all is still a live worker.
        broker
            .heartbeat("a", 0, 1, &Toolchains::new())
            .await
            .expect("heartbeat");
        assert_eq!(
            broker.live_toolchains().await.expect("live"),
            Some(Toolchains::new())
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(broker.live_toolchains().await.expect("live"), None);
    }
}

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

fn output(chunk: String) -> EventKind {
    EventKind::Output {
        test: 1,
        stream: Stream::Stdout,
        chunk,
    }
}

fn result_with(index: u32, stdout: String) -> TestResult {
    TestResult {
        index,
        verdict: Verdict::Accepted,
        time_ms: 1,
        wall_time_ms: 1,
        memory_kb: 1,
        exit_code: Some(0),
        signal: None,
        stdout,
        stderr: String::new(),
        truncated: false,
        name: None,
        group: None,
        sample: false,
        checker_message: None,
        score: None,
    }
}

/// Bytes a submission's record and log take as JSON: what Redis holds, and close to what
/// the memory backend estimates.
async fn retained_json(broker: &SharedBroker, id: &str) -> usize {
    let record = broker.submission(id).await.expect("read").expect("exists");
    let log = broker.events_after(id, 0, usize::MAX).await.expect("log");
    serde_json::to_string(&record).expect("json").len()
        + log
            .iter()
            .map(|e| serde_json::to_string(e).expect("json").len())
            .sum::<usize>()
}

/// One submission's live output, test results and final record together stay within
/// `max_retained_bytes_per_submission`; cut outputs say `truncated`, the record keeps
/// the largest share, and the final write is never refused.
#[tokio::test]
async fn retained_output_is_capped_per_submission_on_both_backends() {
    const CAP: u64 = 256 * 1024;
    let settings = BrokerSettings {
        max_retained_bytes_per_submission: CAP,
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
        let job = job("print('x' * 10**6)");
        broker.submit(&job).await.expect("submit");
        let id = job.submission.id.clone();
        let mut kept = 0;
        for _ in 0..50 {
            let chunk = "o".repeat(8 * 1024);
            if broker
                .publish(&id, output(chunk))
                .await
                .expect("publish")
                .is_some()
            {
                kept += 1;
            }
        }
        assert!(
            (5..=16).contains(&kept),
            "about half of 256 KiB of live output is kept, got {kept} chunks of 8 KiB"
        );
        let big = result_with(1, "r".repeat(300 * 1024));
        let event = broker
            .publish(
                &id,
                EventKind::TestFinished {
                    result: big.clone(),
                },
            )
            .await
            .expect("publish")
            .expect("a test result is stored even over the budget");
        let EventKind::TestFinished { result } = event.kind else {
            panic!("not a TestFinished: {event:?}");
        };
        assert!(
            result.truncated && result.stdout.len() < 64 * 1024,
            "{}",
            result.stdout.len()
        );
        let mut done = job.submission.clone();
        done.tests = vec![big.clone(), result_with(2, "s".repeat(300 * 1024))];
        done.finish(Verdict::Accepted);
        let finished = broker.finish(&done).await.expect("finish");
        assert!(finished.is_some(), "the final write happens");
        let record = broker.submission(&id).await.expect("read").expect("exists");
        assert_eq!(record.status, Status::Finished);
        assert!(record.tests.iter().all(|t| t.truncated));
        let kept: usize = record.tests.iter().map(|t| t.stdout.len()).sum();
        assert!(kept >= 32 * 1024, "the record keeps a fair share: {kept}");
        let total = retained_json(&broker, &id).await;
        assert!(
            total <= CAP as usize + 16 * 1024,
            "{total} bytes retained for a cap of {CAP}"
        );
        // Without output an event is always stored.
        assert!(broker.finish(&done).await.expect("again").is_none());
    }
}

/// The embedded broker's memory budget evicts the oldest finished submissions first and
/// never an unfinished one; records also expire on a timer, with no request arriving.
#[tokio::test]
async fn the_memory_budget_evicts_oldest_finished_and_never_unfinished() {
    let broker = MemoryBroker::new(BrokerSettings {
        max_retained_bytes: 1024 * 1024,
        max_retained_bytes_per_submission: 0,
        ..BrokerSettings::default()
    });
    let shared: SharedBroker = broker.clone();
    let finish_with = |job: &Job, kib: usize| {
        let mut s = job.submission.clone();
        s.tests = vec![result_with(1, "x".repeat(kib * 1024))];
        s.finish(Verdict::Accepted);
        s
    };
    let (a, b, running, d) = (job("a"), job("b"), job("running"), job("d"));
    for j in [&a, &b, &running, &d] {
        shared.submit(j).await.expect("submit");
    }
    shared
        .finish(&finish_with(&a, 300))
        .await
        .expect("finish a");
    shared
        .finish(&finish_with(&b, 300))
        .await
        .expect("finish b");
    for _ in 0..10 {
        shared
            .publish(&running.submission.id, output("y".repeat(60 * 1024)))
            .await
            .expect("publish")
            .expect("stored");
    }
    shared
        .finish(&finish_with(&d, 300))
        .await
        .expect("finish d");
    let there = |id: String| {
        let shared = Arc::clone(&shared);
        async move { shared.submission(&id).await.expect("read").is_some() }
    };
    assert!(
        !there(a.submission.id.clone()).await,
        "the oldest finished is evicted"
    );
    assert!(
        there(running.submission.id.clone()).await,
        "an unfinished one stays"
    );
    assert!(
        there(d.submission.id.clone()).await,
        "the newest finished stays"
    );
    assert!(
        broker.retained_bytes() <= 1024 * 1024 + 700 * 1024,
        "{}",
        broker.retained_bytes()
    );
    // Unfinished output alone over the budget: nothing unfinished goes.
    for _ in 0..20 {
        shared
            .publish(&running.submission.id, output("z".repeat(60 * 1024)))
            .await
            .expect("publish")
            .expect("an unfinished submission is never cut by the global budget");
    }
    shared
        .finish(&finish_with(&running, 1))
        .await
        .expect("finish");
    assert!(
        there(running.submission.id.clone()).await,
        "the last one written stays"
    );

    let short = MemoryBroker::new(BrokerSettings {
        ttl: Duration::from_secs(1),
        ..BrokerSettings::default()
    });
    let s: SharedBroker = short.clone();
    let j = job("expires");
    s.submit(&j).await.expect("submit");
    s.finish(&finish_with(&j, 100)).await.expect("finish");
    assert!(short.retained_bytes() > 100 * 1024);
    // No request in between: the timer alone must give the memory back.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(short.retained_bytes(), 0, "expired on the timer");
}

async fn broker_pair(settings: BrokerSettings) -> [SharedBroker; 2] {
    let memory: SharedBroker = MemoryBroker::new(settings.clone());
    let redis: SharedBroker = RedisBroker::connect(RedisSettings {
        url: redis_url(),
        namespace: namespace(),
        broker: settings,
    })
    .await
    .expect("connect");
    [memory, redis]
}

/// Waits up to `within` for `consumer` to be handed a job.
async fn take_within(broker: &SharedBroker, consumer: &str, within: Duration) -> Option<Delivery> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        broker
            .heartbeat(consumer, 0, 1, &Toolchains::new())
            .await
            .expect("heartbeat");
        if let Some(d) = broker
            .next_job(consumer, Duration::from_millis(300))
            .await
            .expect("next_job")
        {
            return Some(d);
        }
    }
    None
}

/// A worker that stops heartbeating loses its job to the next worker within seconds,
/// long before the visibility timeout; one that keeps heartbeating and renewing never
/// does.
#[tokio::test]
async fn a_dead_workers_job_is_taken_back_once_its_heartbeat_stops() {
    let settings = BrokerSettings {
        visibility_timeout: Duration::from_secs(60),
        worker_alive: Duration::from_secs(1),
        ..BrokerSettings::default()
    };
    for broker in broker_pair(settings).await {
        // A live owner: heartbeats and renews; nobody else gets its job.
        let live = job("live");
        broker.submit(&live).await.expect("submit");
        let held = take_within(&broker, "owner", Duration::from_secs(2))
            .await
            .expect("delivered");
        assert_eq!(held.job.submission.id, live.submission.id);
        let keeper = {
            let broker = Arc::clone(&broker);
            let held = held.clone();
            tokio::spawn(async move {
                loop {
                    broker
                        .heartbeat("owner", 1, 1, &Toolchains::new())
                        .await
                        .expect("heartbeat");
                    assert!(broker.renew(&held).await.expect("renew"), "lease kept");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        };
        let stolen = take_within(&broker, "other", Duration::from_secs(3)).await;
        assert!(
            stolen.is_none(),
            "a live owner's job was handed out: {stolen:?}"
        );
        keeper.abort();
        let _ = keeper.await;

        // The owner dies (no heartbeat, no renewal): the other worker takes it promptly.
        let started = std::time::Instant::now();
        let taken = take_within(&broker, "other", Duration::from_secs(8))
            .await
            .expect("the dead worker's job is taken back");
        let took = started.elapsed();
        assert_eq!(taken.job.submission.id, live.submission.id);
        assert_eq!(taken.redeliveries, 1);
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(
            !broker.renew(&held).await.expect("renew"),
            "the dead owner's lease is gone"
        );
        broker.ack(&taken).await.expect("ack");
    }
}

/// MEMORY USAGE over a submission's keys (its record hash and its event log) on Redis.
async fn redis_bytes(namespace: &str, id: &str) -> u64 {
    use fred::prelude::*;
    use fred::types::{ClusterHash, CustomCommand};
    let client = Builder::from_config(Config::from_url(&redis_url()).expect("url"))
        .build()
        .expect("client");
    client.init().await.expect("connect");
    let mut total = 0;
    for key in [
        format!("{namespace}:sub:{id}"),
        format!("{namespace}:log:{id}"),
    ] {
        let bytes: Option<u64> = client
            .custom(
                CustomCommand::new_static("MEMORY", ClusterHash::Random, false),
                vec!["USAGE", key.as_str(), "SAMPLES", "0"],
            )
            .await
            .expect("MEMORY USAGE");
        total += bytes.unwrap_or(0);
    }
    let _ = client.quit().await;
    total
}

/// `bytes` of program output made of numbered lines, like a program printing a table.
fn program_output(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 16);
    let mut k = 0u64;
    while text.len() < bytes {
        text.push_str(&format!("line {k} of the output\n"));
        k += 1;
    }
    text.truncate(bytes);
    text
}

/// Runs one submission the way a worker does (Running, live output in chunks of at most
/// 64 KiB, TestFinished with the result, the final record), while a subscriber watches
/// live. Returns the events the live subscriber got and the final record.
async fn run_like_a_worker(
    broker: &SharedBroker,
    job: &Job,
    stdout: &str,
) -> (Vec<Event>, Submission) {
    let id = job.submission.id.clone();
    let mut live = broker.subscribe(&id).await.expect("subscribe");
    let queued = broker.submit(job).await.expect("submit");
    let mut sent = vec![queued];
    let publish = |kind| {
        let broker = Arc::clone(broker);
        let id = id.clone();
        async move {
            broker
                .publish(&id, kind)
                .await
                .expect("publish")
                .expect("stored")
        }
    };
    sent.push(publish(EventKind::Running { test: 1, tests: 1 }).await);
    let mut rest = stdout;
    while !rest.is_empty() {
        let cut = rest.len().min(64 * 1024);
        let (chunk, tail) = rest.split_at(cut);
        sent.push(publish(output(chunk.to_owned())).await);
        rest = tail;
    }
    let mut result = result_with(1, stdout.to_owned());
    result.stderr = "a warning\n".into();
    sent.push(
        publish(EventKind::TestFinished {
            result: result.for_event(),
        })
        .await,
    );
    let mut done = job.submission.clone();
    done.compile_output = Some("compiled fine\n".into());
    done.tests = vec![result];
    done.finish(Verdict::Accepted);
    sent.push(broker.finish(&done).await.expect("finish").expect("first"));
    let mut got = Vec::new();
    while got.len() < sent.len() {
        match tokio::time::timeout(Duration::from_secs(5), live.recv()).await {
            Ok(Some(Signal::Event(event))) => got.push(Event::clone(&event)),
            other => panic!("live feed: {other:?}"),
        }
    }
    assert_eq!(
        got, sent,
        "live subscribers get what publish and finish returned"
    );
    (got, done)
}

/// Each output byte is stored once: the live OutputEvents in the log, each test's stdout
/// and stderr in the record; the log's TestFinishedEvent and FinishedEvent refer to the
/// record. A late subscriber, after filling them in, gets exactly what a live one got,
/// and `submission(id)` the whole record. A 200 KB-output submission costs at most 1.3x
/// its output (Redis MEMORY USAGE, and the embedded broker's own accounting), a small one
/// at most 3 KiB.
#[tokio::test]
async fn output_is_stored_once_and_late_subscribers_see_the_same_events() {
    const BIG: usize = 200 * 1000;
    let namespace = namespace();
    let redis: SharedBroker = RedisBroker::connect(RedisSettings {
        url: redis_url(),
        namespace: namespace.clone(),
        broker: BrokerSettings::default(),
    })
    .await
    .expect("connect");
    let stdout = program_output(BIG);
    for (name, size) in [("200 KB", BIG), ("small", 2)] {
        let text = if size == BIG {
            stdout.clone()
        } else {
            "1\n".to_owned()
        };
        let memory = MemoryBroker::new(BrokerSettings::default());
        let backends: [(&str, SharedBroker); 2] =
            [("memory", memory.clone()), ("redis", Arc::clone(&redis))];
        for (backend, broker) in backends {
            let job = job("print(1)");
            let id = job.submission.id.clone();
            let (live, done) = run_like_a_worker(&broker, &job, &text).await;
            // A late subscriber: the same events, byte for byte, once filled in.
            let replayed: Vec<Event> = watch(Arc::clone(&broker), &id, 0)
                .await
                .expect("watch")
                .map(|e| e.expect("event"))
                .collect()
                .await;
            assert_eq!(replayed.len(), live.len());
            let by_ref = replayed.iter().filter(|e| e.outputs_in_record).count();
            let chunks = live
                .iter()
                .filter(|e| matches!(&e.kind, EventKind::Output { chunk, .. } if chunk.len() >= 64))
                .count();
            assert_eq!(
                by_ref,
                chunks + 2,
                "{backend}: the chunks (but tiny ones), TestFinished and Finished refer to the record"
            );
            let mut filled = Vec::new();
            for mut event in replayed {
                fill(broker.as_ref(), &mut event).await.expect("fill");
                filled.push(event);
            }
            assert_eq!(
                filled, live,
                "{backend}: a late subscriber sees what a live one saw"
            );
            let EventKind::Finished { submission } = &filled[filled.len() - 1].kind else {
                panic!("last is not Finished");
            };
            assert_eq!(submission.tests[0].stdout, text);
            assert_eq!(
                submission.compile_output.as_deref(),
                Some("compiled fine\n")
            );
            let record = broker.submission(&id).await.expect("read").expect("exists");
            assert_eq!(
                record, done,
                "{backend}: submission(id) is the whole record"
            );

            let bytes = if backend == "redis" {
                redis_bytes(&namespace, &id).await
            } else {
                memory.retained_bytes()
            };
            println!(
                "{backend}: a {name}-output submission keeps {bytes} bytes ({:.2}x its output)",
                bytes as f64 / size as f64
            );
            if size == BIG {
                assert!(
                    bytes as f64 <= 1.3 * BIG as f64,
                    "{backend}: {bytes} bytes for {BIG} of output"
                );
            } else {
                assert!(
                    bytes <= 3 * 1024,
                    "{backend}: {bytes} bytes for a small submission"
                );
            }
        }
    }
}

/// Submits and finishes `n` jobs; returns their ids in finishing order.
async fn finish_n(broker: &SharedBroker, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let job = job("print(1)");
        broker.submit(&job).await.expect("submit");
        broker
            .finish(&finished(&job, Verdict::Accepted))
            .await
            .expect("finish")
            .expect("first final write");
        ids.push(job.submission.id);
    }
    ids
}

fn ids_of(batch: &FeedBatch) -> Vec<String> {
    batch
        .entries
        .iter()
        .map(|e| e.submission.id.clone())
        .collect()
}

/// The at-least-once contract webhooks stand on (feed.rs, FeedRead), on both backends.
async fn feed_groups_hand_each_entry_out_until_acknowledged(broker: SharedBroker) {
    let group = format!("g-{}", uuid::Uuid::new_v4().simple());
    let none = FeedRead::New {
        wait: Duration::from_millis(50),
    };
    // A group starts at the feed's end: what finished before it is not its backlog.
    finish_n(&broker, 2).await;
    let empty = broker
        .feed_group_read(&group, "a", none.clone(), 10)
        .await
        .expect("read");
    assert!(
        empty.entries.is_empty() && empty.last_id.is_none(),
        "{empty:?}"
    );

    let ids = finish_n(&broker, 3).await;
    let first = broker
        .feed_group_read(&group, "a", none.clone(), 2)
        .await
        .expect("read");
    assert_eq!(ids_of(&first), ids[..2], "oldest first, at most `count`");
    let rest = broker
        .feed_group_read(&group, "a", none.clone(), 10)
        .await
        .expect("read");
    assert_eq!(ids_of(&rest), ids[2..]);
    assert!(
        broker
            .feed_group_read(&group, "b", none.clone(), 10)
            .await
            .expect("read")
            .entries
            .is_empty(),
        "each entry goes to one member"
    );

    // The first is acknowledged; the other two stay pending under "a".
    broker
        .feed_group_ack(&group, &[first.entries[0].id.clone()])
        .await
        .expect("ack");
    let own = broker
        .feed_group_read(&group, "a", FeedRead::Pending { after: "0".into() }, 10)
        .await
        .expect("read");
    assert_eq!(ids_of(&own), ids[1..], "own pending, as after a restart");
    let after = own.entries[0].id.clone();
    let paged = broker
        .feed_group_read(&group, "a", FeedRead::Pending { after }, 10)
        .await
        .expect("read");
    assert_eq!(ids_of(&paged), ids[2..], "paged by id");
    assert!(broker
        .feed_group_read(&group, "b", FeedRead::Pending { after: "0".into() }, 10)
        .await
        .expect("read")
        .entries
        .is_empty());

    // Not idle long enough: nothing to take over. Idle enough: "b" takes them.
    let busy = FeedRead::Stale {
        min_idle: Duration::from_secs(3600),
    };
    assert!(broker
        .feed_group_read(&group, "b", busy, 10)
        .await
        .expect("read")
        .entries
        .is_empty());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stale = FeedRead::Stale {
        min_idle: Duration::from_millis(10),
    };
    let taken = broker
        .feed_group_read(&group, "b", stale, 10)
        .await
        .expect("read");
    assert_eq!(ids_of(&taken), ids[1..]);
    assert_eq!(
        taken.entries[0].submission.status,
        Status::Finished,
        "the whole record"
    );
    let theirs = broker
        .feed_group_read(&group, "b", FeedRead::Pending { after: "0".into() }, 10)
        .await
        .expect("read");
    assert_eq!(ids_of(&theirs), ids[1..], "now pending under b");
    let acks: Vec<String> = theirs.entries.iter().map(|e| e.id.clone()).collect();
    broker.feed_group_ack(&group, &acks).await.expect("ack");
    for member in ["a", "b"] {
        let left = broker
            .feed_group_read(&group, member, FeedRead::Pending { after: "0".into() }, 10)
            .await
            .expect("read");
        assert!(
            left.entries.is_empty() && left.gone.is_empty(),
            "{member}: {left:?}"
        );
    }

    // A waiting read wakes when an entry arrives, well before its wait is over.
    let waiter = {
        let broker = broker.clone();
        let group = group.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let wait = FeedRead::New {
                wait: Duration::from_secs(20),
            };
            let batch = broker
                .feed_group_read(&group, "a", wait, 10)
                .await
                .expect("read");
            (batch, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = finish_n(&broker, 1).await;
    let (batch, took) = waiter.await.expect("join");
    assert_eq!(ids_of(&batch), late);
    assert!(took < Duration::from_secs(10), "woke after {took:?}");
}

/// `--data-dir`: what the embedded broker held is there again after the process ends,
/// without a clean shutdown (the broker is dropped mid-state: nothing is flushed then).
#[tokio::test]
async fn memory_data_dir_keeps_records_logs_queue_and_groups_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = BrokerSettings::default();
    let (done_id, queued_id, running_id, log_before, feed_id);
    {
        let broker: SharedBroker = MemoryBroker::open(settings.clone(), dir.path()).expect("open");
        let done = job("print('done')");
        broker.submit(&done).await.expect("submit");
        let delivery = broker
            .next_job("w", Duration::from_secs(1))
            .await
            .expect("take")
            .expect("a job");
        broker
            .publish(&done.submission.id, output("done\n".into()))
            .await
            .expect("publish");
        let mut record = finished(&done, Verdict::Accepted);
        record.tests = vec![result_with(1, "done\n".into())];
        broker
            .finish(&record)
            .await
            .expect("finish")
            .expect("first");
        broker.ack(&delivery).await.expect("ack");
        done_id = done.submission.id.clone();
        log_before = broker
            .events_after(&done_id, 0, usize::MAX)
            .await
            .expect("log");

        let running = job("print('running')");
        broker.submit(&running).await.expect("submit");
        let held = broker
            .next_job("w", Duration::from_secs(1))
            .await
            .expect("take")
            .expect("job");
        assert_eq!(held.job.submission.id, running.submission.id);
        broker
            .publish(&running.submission.id, EventKind::Compiling)
            .await
            .expect("publish");
        running_id = running.submission.id.clone();

        let queued = job("print('queued')");
        broker.submit(&queued).await.expect("submit");
        queued_id = queued.submission.id.clone();

        // A group with one pending entry.
        let group_ids = {
            let read = FeedRead::New {
                wait: Duration::from_millis(10),
            };
            let first = broker
                .feed_group_read("hooks", "me", read, 10)
                .await
                .expect("read");
            assert!(first.entries.is_empty());
            finish_n(&broker, 1).await
        };
        let read = FeedRead::New {
            wait: Duration::from_millis(10),
        };
        let got = broker
            .feed_group_read("hooks", "me", read, 10)
            .await
            .expect("read");
        assert_eq!(ids_of(&got), group_ids);
        feed_id = group_ids[0].clone();
        // The last change must reach the disk without a clean shutdown: a submit waits
        // for everything before it.
        broker.submit(&job("print('sync')")).await.expect("submit");
    }
    let broker = loop {
        // The old writer thread lets go of the file once it has drained.
        match MemoryBroker::open(settings.clone(), dir.path()) {
            Ok(b) => break b,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let broker: SharedBroker = broker;
    let done = broker
        .submission(&done_id)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(done.verdict, Some(Verdict::Accepted));
    assert_eq!(done.tests[0].stdout, "done\n");
    assert_eq!(
        broker
            .events_after(&done_id, 0, usize::MAX)
            .await
            .expect("log"),
        log_before,
        "the same log, event for event"
    );
    let running = broker
        .submission(&running_id)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(
        running.status,
        Status::Compiling,
        "the status its log last showed"
    );
    // Both unfinished jobs are queued again, the one a worker held first.
    let mut order = Vec::new();
    while let Some(d) = broker
        .next_job("w2", Duration::from_millis(100))
        .await
        .expect("take")
    {
        order.push(d.job.submission.id.clone());
    }
    assert_eq!(
        order[..2],
        [running_id.clone(), queued_id.clone()],
        "{order:?}"
    );
    assert_eq!(
        order.len(),
        3,
        "and the last submit; the finished job is not queued again"
    );
    // The next event goes on from the log's last seq.
    let next = broker
        .publish(&running_id, EventKind::Compiling)
        .await
        .expect("publish")
        .expect("event");
    assert_eq!(next.seq, 3);
    // The group's pending entry is still pending under its member.
    let own = broker
        .feed_group_read("hooks", "me", FeedRead::Pending { after: "0".into() }, 10)
        .await
        .expect("read");
    assert_eq!(ids_of(&own), [feed_id]);
}

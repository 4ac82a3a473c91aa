//! Poll, for comparison with push: a client polling `submission(id)` at a fixed interval.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const POLL: &str = "query($id: ID!) { submission(id: $id) { status finishedAt } }";

/// Submits, then polls every `interval` starting at a random phase in [0, interval)
/// (a job's length is arbitrary relative to the polling grid). Returns (detection delay
/// after finishedAt in ms, submission(id) requests sent).
async fn poll_one(api: Api, interval: Duration, phase: Duration) -> (f64, u32) {
    let id = api.submit(&Program::Python.input()).await;
    let start = tokio::time::Instant::now() + phase;
    let mut ticks = tokio::time::interval_at(start, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests = 0;
    loop {
        ticks.tick().await;
        requests += 1;
        let body = api.query(POLL, json!({ "id": id })).await;
        let s = &body["data"]["submission"];
        if s["status"] == "FINISHED" {
            let seen = now_ns();
            let finished = parse_at(&s["finishedAt"]).unwrap_or(seen);
            return (ns_to_ms(seen - finished), requests);
        }
        assert!(requests < 10_000, "submission {id} never finished");
    }
}

/// Tiny deterministic generator for poll phases (no rand dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub async fn measure(bin: &Path, mode: Mode, submissions: usize) -> Table {
    let mut table = Table::new(
        "Poll: a client polling submission(id) instead of subscribing (python print(1))",
        &[
            "deployment",
            "interval",
            "n",
            "detection delay p50 ms",
            "p99 ms",
            "submission(id) requests / submission",
        ],
    );
    let env = Env::start(bin, mode, true);
    let api = Api::new(&env.server);
    // Warm-up.
    for _ in 0..3 {
        poll_one(api.clone(), Duration::from_millis(20), Duration::ZERO).await;
    }
    let mut rng = Lcg(0x5eed);
    for interval_ms in [100u64, 1000] {
        eprintln!(
            "poll: {} every {interval_ms} ms x{submissions}",
            mode.name()
        );
        let interval = Duration::from_millis(interval_ms);
        let mut tasks = Vec::new();
        for k in 0..submissions {
            let phase = interval.mul_f64(rng.next_f64());
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                // Staggered: a trickle of independent users, not a burst.
                tokio::time::sleep(Duration::from_millis(60 * k as u64)).await;
                poll_one(api, interval, phase).await
            }));
        }
        let mut delays = Vec::new();
        let mut requests = Vec::new();
        for t in tasks {
            let (d, r) = t.await.expect("poll task");
            delays.push(d);
            requests.push(r as f64);
        }
        let mean_req = requests.iter().sum::<f64>() / requests.len().max(1) as f64;
        table.row(vec![
            mode.name().into(),
            format!("{interval_ms} ms"),
            delays.len().to_string(),
            fmt_ms(p50(&delays)),
            fmt_ms(p99(&delays)),
            format!("{mean_req:.2}"),
        ]);
    }
    table.note("Detection delay = time the poll response showing FINISHED arrived − the submission's finishedAt. Polls start at a random phase after submit (a job's length is arbitrary against the polling grid), so the expected delay is about half the interval plus one request.");
    table.note("Push for comparison: one submit request plus one subscribe message per submission, and the delay in the push table.");
    table
}

//! `verdict-bench memory`: a standalone process under load at its default retained-memory
//! budget (`--max-retained-mb` left unset: a quarter of RAM, at most 1 GiB), its RSS and
//! the embedded broker's retained bytes sampled over time (issue 20).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use verdict_testkit::WsClient;

use crate::common::{rss_kib, submit_and_follow, Api, Mode, Table};

/// A gauge from the `/metrics` text.
fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// `clients` loops of submit → subscribe → FinishedEvent for `seconds`, alternating a
/// bash program printing `output_kb` KB with one printing a line; RSS every `every` s.
pub async fn measure(
    bin: &Path,
    seconds: f64,
    clients: usize,
    output_kb: usize,
    every: f64,
) -> Table {
    let env = crate::common::Env::start(bin, Mode::Standalone, false);
    let pid = env.server.proc.pid();
    let api = Api::new(&env.server);
    let ws_url = env.server.ws("/graphql");
    let big = json!({ "language": "bash",
        "source": format!("head -c {} /dev/zero | tr '\\0' x", output_kb * 1024) });
    let small = json!({ "language": "bash", "source": "echo 1" });
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (api, url, done, stop) = (api.clone(), ws_url.clone(), done.clone(), stop.clone());
        let inputs = [big.clone(), small.clone()];
        tasks.push(tokio::spawn(async move {
            let mut ws = WsClient::connect(&url).await;
            let mut n = k;
            while !stop.load(Ordering::Relaxed) {
                submit_and_follow(&api, &mut ws, &inputs[n % 2]).await;
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let mut table = Table::new(
        &format!(
            "standalone memory at the default budget: {clients} clients, {seconds:.0} s, half the submissions print {output_kb} KB"
        ),
        &["t (s)", "finished", "RSS (MiB)", "broker retained (MiB)", "budget (MiB)"],
    );
    let start = Instant::now();
    let start_rss = rss_kib(pid).unwrap_or(0);
    table.row(vec![
        "0".into(),
        "0".into(),
        mib(start_rss),
        "-".into(),
        "-".into(),
    ]);
    let mut peak = start_rss;
    let mut sample = |table: &mut Table, metrics: String| {
        let rss = rss_kib(pid).unwrap_or(0);
        peak = peak.max(rss);
        let kept = gauge(&metrics, "verdict_broker_retained_bytes").unwrap_or(0);
        let budget = gauge(&metrics, "verdict_broker_retained_budget_bytes").unwrap_or(0);
        let row = vec![
            format!("{:.0}", start.elapsed().as_secs_f64()),
            done.load(Ordering::Relaxed).to_string(),
            mib(rss),
            mib(kept / 1024),
            mib(budget / 1024),
        ];
        println!("  {}", row.join("  "));
        table.row(row);
        rss
    };
    let mut last = start_rss;
    while start.elapsed().as_secs_f64() < seconds {
        tokio::time::sleep(Duration::from_secs_f64(every)).await;
        last = sample(&mut table, env.server.metrics().await);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let finished = done.load(Ordering::Relaxed);
    table.note(format!(
        "{finished} submissions in {:.0} s ({:.1}/s); RSS {} MiB at start, {} MiB at the end, {} MiB at most",
        start.elapsed().as_secs_f64(),
        finished as f64 / start.elapsed().as_secs_f64(),
        mib(start_rss),
        mib(last),
        mib(peak)
    ));
    table
}

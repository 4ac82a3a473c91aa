//! Throughput against the ideal (bare runs of the same program in parallel on the same
//! cores for the same time), CPU per submission, and what a submission costs Redis.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use verdict_testkit::WsClient;

use crate::common::*;

/// Bare runs of `program` on `threads` threads for `secs`: runs per second.
fn ideal(program: Program, threads: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let bare = Bare::new("ideal");
                while !stop.load(Ordering::Relaxed) {
                    bare.run(program);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Let every thread get going, then count completions over the window.
    std::thread::sleep(Duration::from_millis(500));
    let before = done.load(Ordering::Relaxed);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after = done.load(Ordering::Relaxed);
    let rate = (after - before) as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    rate
}

fn redis_info(url: &str, section: &str) -> String {
    Command::new("redis-cli")
        .args(["-u", url, "INFO", section])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default()
}

fn command_calls(url: &str) -> BTreeMap<String, u64> {
    redis_info(url, "commandstats")
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

fn connected_clients(url: &str) -> Option<u64> {
    redis_info(url, "clients").lines().find_map(|l| {
        l.strip_prefix("connected_clients:")?
            .trim()
            .parse::<u64>()
            .ok()
    })
}

pub struct Outcome {
    pub tables: Vec<Table>,
}

/// One deployment, one program: returns (submissions/s, CPU row, redis rows).
async fn service(
    bin: &Path,
    mode: Mode,
    program: Program,
    clients: usize,
    secs: f64,
    conns: &mut Vec<(String, u64)>,
) -> (f64, Vec<String>, Option<Vec<String>>) {
    eprintln!(
        "throughput: {} / {} with {clients} clients for {secs} s",
        mode.name(),
        program.name()
    );
    let mut env = Env::start(bin, mode, false);
    if mode == Mode::Redis {
        let url = env.redis_url().expect("redis").to_owned();
        std::thread::sleep(Duration::from_millis(500));
        // connected_clients counts redis-cli's own connection too.
        let with_server = connected_clients(&url).unwrap_or(0).saturating_sub(1);
        env.start_worker();
        std::thread::sleep(Duration::from_millis(1500));
        let with_worker = connected_clients(&url).unwrap_or(0).saturating_sub(1);
        if conns.is_empty() {
            conns.push(("server (idle)".into(), with_server));
            conns.push((
                format!(
                    "worker (--concurrency {})",
                    WORKER_CONCURRENCY.get().copied().unwrap_or_else(cores)
                ),
                with_worker.saturating_sub(with_server),
            ));
        }
    }
    let api = Api::new(&env.server);
    {
        let mut ws = WsClient::connect(&env.server.ws("/graphql")).await;
        for _ in 0..3 {
            submit_and_follow(&api, &mut ws, &program.input()).await;
        }
    }
    let calls_before = env.redis_url().map(command_calls);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (api, stop, total) = (api.clone(), stop.clone(), total.clone());
        let url = env.server.ws("/graphql");
        let input = program.input();
        tasks.push(tokio::spawn(async move {
            let mut ws = WsClient::connect(&url).await;
            let mut finished = Vec::new();
            let mut rejected = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let s = submit_and_follow(&api, &mut ws, &input).await;
                total.fetch_add(1, Ordering::Relaxed);
                if s.verdict == "ACCEPTED" {
                    finished.push(s.event("FinishedEvent").map(|(_, r)| r).unwrap_or(0));
                } else {
                    rejected += 1;
                }
            }
            (finished, rejected)
        }));
    }
    // Ramp-up, then the measured window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let me = std::process::id();
    let client_before = cpu_ms(me).0;
    let cpu_before: Vec<_> = env.pids().iter().map(|(r, p)| (*r, cpu_ms(*p))).collect();
    let w0 = now_ns();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let w1 = now_ns();
    let cpu_after: Vec<_> = env.pids().iter().map(|(r, p)| (*r, cpu_ms(*p))).collect();
    let client_cpu = cpu_ms(me).0 - client_before;
    stop.store(true, Ordering::Relaxed);
    let mut in_window = 0u64;
    let mut not_accepted = 0u64;
    for t in tasks {
        let (finished, rejected) = t.await.expect("client task");
        in_window += finished.iter().filter(|&&r| r >= w0 && r < w1).count() as u64;
        not_accepted += rejected;
    }
    let rate = in_window as f64 / ns_to_ms(w1 - w0) * 1e3;
    let per = |v: f64| fmt_ms(v / in_window.max(1) as f64);
    let mut cpu_row = vec![mode.name().into(), program.name().into()];
    let mut own_total = 0.0;
    let mut children = 0.0;
    for role in ["server", "standalone", "worker", "redis"] {
        let b = cpu_before.iter().find(|(r, _)| *r == role);
        let a = cpu_after.iter().find(|(r, _)| *r == role);
        match (b, a) {
            (Some((_, b)), Some((_, a))) => {
                own_total += a.0 - b.0;
                children += a.1 - b.1;
                if role != "standalone" {
                    cpu_row.push(per(a.0 - b.0));
                } else {
                    cpu_row.push(format!("{} (all in one)", per(a.0 - b.0)));
                }
            }
            _ if role != "standalone" && role != "server" => cpu_row.push("-".into()),
            _ => {}
        }
    }
    cpu_row.push(per(children));
    cpu_row.push(per(own_total));
    cpu_row.push(per(client_cpu));
    if not_accepted > 0 {
        eprintln!("  {not_accepted} submissions were not ACCEPTED (excluded)");
    }
    let redis_row = match (calls_before, env.redis_url().map(command_calls)) {
        (Some(before), Some(after)) => {
            let n = total.load(Ordering::Relaxed).max(1) as f64;
            let mut deltas: Vec<(String, f64)> = after
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (*v - before.get(k).copied().unwrap_or(0)) as f64 / n,
                    )
                })
                .filter(|(k, v)| *v > 0.0 && k != "info")
                .collect();
            deltas.sort_by(|a, b| b.1.total_cmp(&a.1));
            let sum: f64 = deltas.iter().map(|(_, v)| v).sum();
            let top: Vec<String> = deltas
                .iter()
                .take(8)
                .map(|(k, v)| format!("{k} {v:.1}"))
                .collect();
            Some(vec![
                program.name().into(),
                format!("{sum:.1}"),
                top.join(", "),
            ])
        }
        _ => None,
    };
    drop(env);
    (rate, cpu_row, redis_row)
}

pub async fn measure(
    bin: &Path,
    modes: &[Mode],
    programs: &[Program],
    clients: usize,
    secs: f64,
) -> Outcome {
    let threads = cores();
    let mut thr = Table::new(
        "Throughput: submissions/s vs the ideal (bare runs in parallel, same cores, same time)",
        &[
            "deployment",
            "program",
            "clients",
            "submissions/s",
            "ideal runs/s",
            "ratio",
            "target ≥ 0.85",
        ],
    );
    let mut cpu = Table::new(
        "CPU time per submission (ms), from /proc/PID/stat over the measured window",
        &[
            "deployment",
            "program",
            "server",
            "worker",
            "redis",
            "sandboxed programs (worker's children)",
            "service total (excl. programs)",
            "load generator",
        ],
    );
    let mut redis = Table::new(
        "Redis commands per submission (INFO commandstats, whole run / submissions)",
        &["program", "commands / submission", "top commands"],
    );
    let mut conns: Vec<(String, u64)> = Vec::new();
    for &program in programs {
        eprintln!(
            "throughput: ideal for {} on {threads} threads",
            program.name()
        );
        let ideal_rate = tokio::task::spawn_blocking(move || ideal(program, threads, secs))
            .await
            .expect("ideal");
        for &mode in modes {
            let (rate, cpu_row, redis_row) =
                service(bin, mode, program, clients, secs, &mut conns).await;
            thr.row(vec![
                mode.name().into(),
                program.name().into(),
                clients.to_string(),
                format!("{rate:.1}"),
                format!("{ideal_rate:.1}"),
                format!("{:.2}", rate / ideal_rate),
                met(rate / ideal_rate >= 0.85),
            ]);
            cpu.row(cpu_row);
            if let Some(r) = redis_row {
                redis.row(r);
            }
        }
    }
    thr.note(format!("Ideal: {threads} threads each spawning the bare program (for C: `./main` compiled once, as the service's compile cache serves identical sources) back to back; {threads} = the cores the service gets too. The load generator shares the same cores."));
    thr.note("Counted: FinishedEvents received in the window (after 2 s of ramp-up).");
    cpu.note("The load generator (HTTP + graphql-ws clients) runs on the same cores and takes CPU the ideal run does not pay.");
    cpu.note("Service CPU excludes the sandboxed programs (counted separately as the worker's reaped children). In standalone the single process is shown under server.");
    if !conns.is_empty() {
        redis.note(format!(
            "Redis connections (INFO clients): {}.",
            conns
                .iter()
                .map(|(p, n)| format!("{p}: {n}"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    redis.note("No per-subscriber Redis connections: subscribers share the server's one Pub/Sub connection.");
    Outcome {
        tables: vec![thr, cpu, redis],
    }
}

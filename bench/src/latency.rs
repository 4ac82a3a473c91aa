//! End-to-end latency (submit → FinishedEvent) against the bare run of the same program,
//! its breakdown by stage from the events' `at`, and push latency (publish → client).

use std::path::Path;

use verdict_testkit::WsClient;

use crate::common::*;

/// One (mode, program) series: the client samples and the bare runs interleaved with them.
pub struct Series {
    pub mode: Mode,
    pub program: Program,
    pub samples: Vec<Sample>,
    /// Bare run in ms, one per sample.
    pub bare: Vec<f64>,
    /// Bare gcc compiles of the C program (ms), for reference.
    pub bare_compile: Vec<f64>,
}

pub async fn measure(bin: &Path, mode: Mode, program: Program, n: usize) -> Series {
    eprintln!("latency: {} / {} x{n}", mode.name(), program.name());
    let env = Env::start(bin, mode, true);
    let api = Api::new(&env.server);
    let mut ws = WsClient::connect(&env.server.ws("/graphql")).await;
    let bare = Bare::new("latency");
    let input = program.input();
    for _ in 0..5.min(n) {
        let s = submit_and_follow(&api, &mut ws, &input).await;
        assert_eq!(s.verdict, "ACCEPTED", "warm-up submission not accepted");
        bare.run(program);
    }
    let mut series = Series {
        mode,
        program,
        samples: Vec::with_capacity(n),
        bare: Vec::with_capacity(n),
        bare_compile: Vec::new(),
    };
    if program == Program::C {
        for _ in 0..5 {
            series.bare_compile.push(bare.compile_c());
        }
    }
    // Optional idle gap between submissions (to study pacing effects).
    let pause: u64 = std::env::var("VERDICT_BENCH_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Interleaved, so both see the same machine load over the run.
    for _ in 0..n {
        if pause > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
        let s = submit_and_follow(&api, &mut ws, &input).await;
        if s.verdict != "ACCEPTED" {
            eprintln!("  submission finished {} (kept in the figures)", s.verdict);
        }
        if std::env::var_os("VERDICT_BENCH_DEBUG").is_some() {
            let line: Vec<String> = s
                .events
                .iter()
                .map(|(k, a, r)| {
                    format!(
                        "{k} at+{:.2} recv+{:.2}",
                        ns_to_ms(a - s.send),
                        ns_to_ms(r - s.send)
                    )
                })
                .collect();
            eprintln!("  {}", line.join(" | "));
        }
        series.samples.push(s);
        series.bare.push(bare.run(program));
    }
    drop(env);
    series
}

fn stage(s: &Sample, from: &str, to: &str) -> Option<f64> {
    let a = s.event(from)?.0;
    let b = s.event(to)?.0;
    Some(ns_to_ms(b - a))
}

fn collect(series: &Series, f: impl Fn(&Sample) -> Option<f64>) -> Vec<f64> {
    series.samples.iter().filter_map(f).collect()
}

/// The end-to-end table, the stage breakdown and the push table.
pub fn tables(all: &[Series]) -> Vec<Table> {
    let mut e2e = Table::new(
        "End-to-end latency: submit → FinishedEvent vs the bare run, same run",
        &[
            "deployment",
            "program",
            "n",
            "bare p50 ms",
            "e2e p50 ms",
            "e2e p99 ms",
            "p50 − bare ms",
            "ratio",
            "≤ bare+5 ms (design)",
            "≤ bare+3 ms (issue)",
        ],
    );
    let mut stages = Table::new(
        "Where the time goes (medians, ms, from the events' `at` and client clocks)",
        &[
            "deployment",
            "program",
            "HTTP submit round trip",
            "send → Queued.at",
            "Queued → worker start",
            "compile",
            "Running → TestFinished",
            "sandbox wall (worker)",
            "TestFinished → Finished",
            "Finished.at → client",
        ],
    );
    let mut push = Table::new(
        "Push: FinishedEvent published (`at`) → received by the subscribed client",
        &[
            "deployment",
            "program",
            "n",
            "p50 ms",
            "p99 ms",
            "target p50 ≤ 2 ms",
        ],
    );
    let mut queue_hops = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for s in all {
        let total = collect(s, |x| Some(x.total_ms()));
        let bare = s.bare.clone();
        let compiled = s.samples.iter().filter(|x| x.cached == Some(false)).count();
        if compiled > 0 {
            notes.push(format!(
                "{} / {}: {compiled} of {} submissions compiled (compile-cache miss); bare gcc compile p50 {} ms is not in the bare column.",
                s.mode.name(),
                s.program.name(),
                s.samples.len(),
                fmt_ms(p50(&s.bare_compile))
            ));
        } else if !s.bare_compile.is_empty() {
            notes.push(format!(
                "{} / {}: every measured submission hit the compile cache (CompilingEvent.cached); a bare gcc compile would add {} ms.",
                s.mode.name(),
                s.program.name(),
                fmt_ms(p50(&s.bare_compile))
            ));
        }
        let (b50, t50, t99) = (p50(&bare), p50(&total), p99(&total));
        let over = t50 - b50;
        e2e.row(vec![
            s.mode.name().into(),
            s.program.name().into(),
            s.samples.len().to_string(),
            fmt_ms(b50),
            fmt_ms(t50),
            fmt_ms(t99),
            fmt_ms(over),
            format!("{:.2}×", t50 / b50),
            met(over <= 5.0),
            met(over <= 3.0),
        ]);
        let worker_start = |x: &Sample| {
            let q = x.event("QueuedEvent")?.0;
            let w = x
                .event("CompilingEvent")
                .or_else(|| x.event("RunningEvent"))?
                .0;
            Some(ns_to_ms(w - q))
        };
        let qh = p50(&collect(s, worker_start));
        queue_hops.push((s.mode, s.program, qh));
        let fin_push = collect(s, |x| {
            x.event("FinishedEvent").map(|(a, r)| ns_to_ms(r - a))
        });
        stages.row(vec![
            s.mode.name().into(),
            s.program.name().into(),
            fmt_ms(p50(&collect(s, |x| Some(ns_to_ms(x.response - x.send))))),
            fmt_ms(p50(&collect(s, |x| {
                x.event("QueuedEvent").map(|(a, _)| ns_to_ms(a - x.send))
            }))),
            fmt_ms(qh),
            if s.program == Program::C {
                fmt_ms(p50(&collect(s, |x| {
                    stage(x, "CompilingEvent", "RunningEvent")
                })))
            } else {
                "-".into()
            },
            fmt_ms(p50(&collect(s, |x| {
                stage(x, "RunningEvent", "TestFinishedEvent")
            }))),
            fmt_ms(p50(&collect(s, |x| x.run_wall_ms))),
            fmt_ms(p50(&collect(s, |x| {
                stage(x, "TestFinishedEvent", "FinishedEvent")
            }))),
            fmt_ms(p50(&fin_push)),
        ]);
        push.row(vec![
            s.mode.name().into(),
            s.program.name().into(),
            fin_push.len().to_string(),
            fmt_ms(p50(&fin_push)),
            fmt_ms(p99(&fin_push)),
            met(p50(&fin_push) <= 2.0),
        ]);
    }
    e2e.note("The same source is submitted every time: after the warm-up the worker's compile cache serves the C binary, so the C rows are run-only and their bare baseline is `./main` compiled once.");
    e2e.note("Bare = /usr/bin/python3 -S -c 'print(1)' (or ./main) spawned directly, interleaved one-for-one with the submissions.");
    for n in notes {
        e2e.note(n);
    }
    e2e.note("Each submission: POST submit, then subscribe on an open graphql-ws connection (the replay covers an early finish); timed from sending submit to receiving FinishedEvent.");
    stages.note("`at` is stamped by the process that publishes the event (worker or standalone), with the same machine clock as the client.");
    stages.note("compile = CompilingEvent → RunningEvent: with a compile-cache hit, the cache lookup and copy.");
    stages.note("Queued → worker start = queue wait + XREADGROUP/channel hop + run-directory setup, up to CompilingEvent (C) or RunningEvent (Python). Running → TestFinished includes the sandbox spawn.");
    for (mode, program, qh) in queue_hops {
        stages.note(format!(
            "Queue hop target < 1 ms ({}, {}): {:.2} ms, {}",
            mode.name(),
            program.name(),
            qh,
            met(qh < 1.0)
        ));
    }
    push.note("Measured from the same submissions as the latency table. When the job finishes before the subscription starts, the FinishedEvent arrives by replay and this includes the subscribe round trip.");
    vec![e2e, stages, push]
}

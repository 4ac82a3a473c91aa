//! `verdict-bench`: drives real `verdict` processes (and a private redis-server) and prints
//! each benchmark as a table of ratios measured side by side in one run. `scripts/bench`
//! builds once, runs the sandbox overhead bench and `verdict-bench all`, and writes
//! BENCHMARKS.md. Benchmarks never assert on timings: they report.
// A benchmark that cannot set up (no Redis, no server) has nothing to report: it fails
// loudly with `expect`.

mod common;
mod latency;
mod memory;
mod poll;
mod problem;
mod subs;
mod throughput;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use common::{Mode, Program, Report};

#[derive(Parser)]
#[command(
    name = "verdict-bench",
    about = "Verdict benchmarks: ratios measured in one run"
)]
struct Cli {
    /// The `verdict` binary (default: next to this one, i.e. target/release/verdict).
    #[arg(long, global = true)]
    verdict: Option<PathBuf>,
    /// Also write the tables as Markdown here (rewritten after each table).
    #[arg(long, global = true)]
    markdown: Option<PathBuf>,
    /// Deployments: redis, standalone (comma-separated).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "redis,standalone"
    )]
    modes: Vec<String>,
    /// Slots of the `verdict worker` process in Redis mode (default: cores).
    #[arg(long, global = true)]
    worker_concurrency: Option<usize>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Submit → FinishedEvent vs the bare run, by stage; and push latency.
    Latency {
        /// Python submissions per deployment.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// C submissions per deployment (each compiles: slower).
        #[arg(long, default_value_t = 200)]
        c_samples: usize,
    },
    /// Push latency, and a client polling every 100 ms and every 1 s.
    PushPoll {
        /// Submissions per deployment for push.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Submissions per poll interval.
        #[arg(long, default_value_t = 20)]
        poll_submissions: usize,
    },
    /// Submissions/s vs bare parallel runs; CPU and Redis commands per submission.
    Throughput {
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Concurrent clients, each submit → subscribe → FinishedEvent in a loop.
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// N graphql-ws subscriptions on one server: RSS per connection and fan-out latency.
    Subs {
        /// Connection counts, comma-separated (e.g. 1000,10000,50000).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        conns: Vec<usize>,
        /// Submissions the subscriptions are spread over.
        #[arg(long, default_value_t = 10)]
        submissions: usize,
    },
    /// A stored problem with many tests and a cached C solution vs bare runs.
    Problem {
        #[arg(long, default_value_t = 100)]
        tests: usize,
        /// Submissions per deployment.
        #[arg(long, default_value_t = 20)]
        samples: usize,
    },
    /// Standalone RSS over a load at the default retained-memory budget (not in `all`).
    Memory {
        #[arg(long, default_value_t = 120.0)]
        seconds: f64,
        /// Concurrent clients, each submit → subscribe → FinishedEvent in a loop.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// KB printed by every other submission (the rest print one line).
        #[arg(long, default_value_t = 100)]
        output_kb: usize,
        /// Seconds between RSS samples.
        #[arg(long, default_value_t = 10.0)]
        every: f64,
    },
    /// Everything, with sizes that finish in about ten minutes on two cores.
    All {
        #[arg(long, default_value_t = 200)]
        samples: usize,
        #[arg(long, default_value_t = 200)]
        c_samples: usize,
        #[arg(long, default_value_t = 20)]
        poll_submissions: usize,
        #[arg(long, default_value_t = 15.0)]
        seconds: f64,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        conns: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        submissions: usize,
    },
}

async fn latency(report: &mut Report, bin: &std::path::Path, modes: &[Mode], py: usize, c: usize) {
    let mut series = Vec::new();
    for &mode in modes {
        for (program, n) in [(Program::Python, py), (Program::C, c)] {
            if n > 0 {
                series.push(latency::measure(bin, mode, program, n).await);
            }
        }
    }
    for t in latency::tables(&series) {
        report.push(t);
    }
}

fn main() {
    let cli = Cli::parse();
    // The processes under test inherit these: the abuse limits (per-IP submit quota and
    // WebSocket cap) are for the public internet, not for a load generator on loopback.
    // Set before the runtime starts any thread.
    for (k, v) in [
        ("VERDICT_SUBMITS_PER_MINUTE", "0"),
        ("VERDICT_MAX_WS_PER_IP", "0"),
    ] {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run(cli));
}

async fn run(cli: Cli) {
    let bin = cli.verdict.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("current exe")
            .with_file_name("verdict")
    });
    assert!(
        bin.exists(),
        "{} not found: build it (cargo build --release --workspace --bins) or pass --verdict",
        bin.display()
    );
    if let Some(n) = cli.worker_concurrency {
        let _ = common::WORKER_CONCURRENCY.set(n.max(1));
    }
    let modes: Vec<Mode> = cli
        .modes
        .iter()
        .map(|m| match m.as_str() {
            "redis" => Mode::Redis,
            "standalone" => Mode::Standalone,
            other => panic!("unknown mode {other}: use redis or standalone"),
        })
        .collect();
    let mut report = Report {
        tables: Vec::new(),
        markdown: cli.markdown.clone(),
    };
    match cli.command {
        Cmd::Latency { samples, c_samples } => {
            latency(&mut report, &bin, &modes, samples, c_samples).await;
        }
        Cmd::PushPoll {
            samples,
            poll_submissions,
        } => {
            let mut series = Vec::new();
            for &mode in &modes {
                series.push(latency::measure(&bin, mode, Program::Python, samples).await);
            }
            if let Some(push) = latency::tables(&series).pop() {
                report.push(push);
            }
            for &mode in &modes {
                report.push(poll::measure(&bin, mode, poll_submissions).await);
            }
        }
        Cmd::Throughput { seconds, clients } => {
            let out = throughput::measure(
                &bin,
                &modes,
                &[Program::Python, Program::C],
                clients,
                seconds,
            )
            .await;
            for t in out.tables {
                report.push(t);
            }
        }
        Cmd::Problem { tests, samples } => {
            report.push(problem::measure(&bin, &modes, tests, samples).await);
        }
        Cmd::Memory {
            seconds,
            clients,
            output_kb,
            every,
        } => {
            report.push(memory::measure(&bin, seconds, clients, output_kb, every).await);
        }
        Cmd::Subs { conns, submissions } => {
            subs::ensure_nofile(conns.iter().max().copied().unwrap_or(0) as u64 + 4096);
            report.push(subs::measure(&bin, &conns, submissions).await);
        }
        Cmd::All {
            samples,
            c_samples,
            poll_submissions,
            seconds,
            clients,
            conns,
            submissions,
        } => {
            subs::ensure_nofile(conns.iter().max().copied().unwrap_or(0) as u64 + 4096);
            latency(&mut report, &bin, &modes, samples, c_samples).await;
            for &mode in &modes {
                report.push(poll::measure(&bin, mode, poll_submissions).await);
            }
            let out = throughput::measure(
                &bin,
                &modes,
                &[Program::Python, Program::C],
                clients,
                seconds,
            )
            .await;
            for t in out.tables {
                report.push(t);
            }
            report.push(subs::measure(&bin, &conns, submissions).await);
            report.push(problem::measure(&bin, &modes, 100, 20).await);
        }
    }
}

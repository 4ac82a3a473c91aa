//! Shared pieces: the processes under test, bare baselines, /proc readings, the API
//! client; statistics and tables are in `common/stats.rs` (re-exported here).

mod stats;

pub use stats::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verdict_testkit::{Proc, Server, WsClient};

/// Which deployment is under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// `verdict server` + `verdict worker` processes around a private redis-server.
    Redis,
    /// `verdict standalone`: one process, embedded broker.
    Standalone,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Redis => "redis (server+worker)",
            Mode::Standalone => "standalone",
        }
    }
}

/// The processes under test; killed on drop (server and worker before Redis).
pub struct Env {
    pub server: Server,
    pub worker: Option<Proc>,
    pub redis: Option<(Proc, String)>,
    pub ns: String,
    pub bin: PathBuf,
}

/// Worker slots for `verdict worker` (default: cores, as `verdict standalone` uses).
pub static WORKER_CONCURRENCY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Env {
    /// Starts the deployment; in Redis mode the worker only when `worker` is true.
    pub fn start(bin: &Path, mode: Mode, worker: bool) -> Env {
        let ns = format!("bench-{}", uuid::Uuid::new_v4().simple());
        match mode {
            Mode::Standalone => Env {
                server: verdict_testkit::standalone(bin, None),
                worker: None,
                redis: None,
                ns,
                bin: bin.to_owned(),
            },
            Mode::Redis => {
                let (redis, url) = verdict_testkit::start_redis(&[]);
                let server = verdict_testkit::server(bin, &url, &ns);
                let mut env = Env {
                    server,
                    worker: None,
                    redis: Some((redis, url)),
                    ns,
                    bin: bin.to_owned(),
                };
                if worker {
                    env.start_worker();
                }
                env
            }
        }
    }

    pub fn start_worker(&mut self) {
        let (_, url) = self.redis.as_ref().expect("worker needs Redis mode");
        let slots = WORKER_CONCURRENCY.get().copied().unwrap_or_else(cores);
        self.worker = Some(verdict_testkit::worker(&self.bin, url, &self.ns, slots));
    }

    pub fn redis_url(&self) -> Option<&str> {
        self.redis.as_ref().map(|(_, u)| u.as_str())
    }

    /// (role, pid) of every process under test.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut v = vec![(
            if self.redis.is_some() {
                "server"
            } else {
                "standalone"
            },
            self.server.proc.pid(),
        )];
        if let Some(w) = &self.worker {
            v.push(("worker", w.pid()));
        }
        if let Some((r, _)) = &self.redis {
            v.push(("redis", r.pid()));
        }
        v
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop the worker first so it does not log Redis errors when Redis goes.
        self.worker.take();
    }
}

/// CPU time of a process from /proc/PID/stat: (own utime+stime, reaped children's), in ms.
pub fn cpu_ms(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (f64::NAN, f64::NAN);
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // rest[0] is field 3 (state): utime = field 14, stime 15, cutime 16, cstime 17.
    let tick = 1000.0 / clock_ticks();
    let g = |i: usize| f.get(i - 3).copied().unwrap_or(f64::NAN);
    ((g(14) + g(15)) * tick, (g(16) + g(17)) * tick)
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture we run on; `getconf` confirms it.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The two programs every benchmark uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Program {
    Python,
    C,
}

pub const C_HELLO: &str = "#include <stdio.h>\nint main(void){ puts(\"hello\"); return 0; }\n";

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Python => "python print(1)",
            Program::C => "C hello (cached compile)",
        }
    }

    pub fn input(self) -> Value {
        match self {
            Program::Python => json!({ "language": "python3", "source": "print(1)" }),
            Program::C => json!({ "language": "c", "source": C_HELLO }),
        }
    }
}

/// Bare runs of the same program, outside any sandbox or service, in `dir`.
pub struct Bare {
    dir: PathBuf,
}

impl Bare {
    pub fn new(tag: &str) -> Bare {
        let dir = std::env::temp_dir().join(format!(
            "verdict-bench-bare-{tag}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("bare dir");
        std::fs::write(dir.join("main.c"), C_HELLO).expect("main.c");
        std::fs::write(dir.join("main.py"), "print(1)\n").expect("main.py");
        Bare { dir }
    }

    fn timed(&self, program: &str, args: &[&str]) -> f64 {
        let t = Instant::now();
        let out = Command::new(program)
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .expect("spawn bare program");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(out.status.success(), "bare {program} failed: {out:?}");
        ms
    }

    /// One bare gcc compile of the C program, in ms.
    pub fn compile_c(&self) -> f64 {
        self.timed(
            "/usr/bin/gcc",
            &["-std=gnu17", "-O2", "-pipe", "-o", "main", "main.c", "-lm"],
        )
    }

    /// One bare run in ms: Python from source; C from the binary compiled once (the
    /// service's compile cache makes repeated identical C submissions run-only too).
    pub fn run(&self, p: Program) -> f64 {
        match p {
            Program::Python => self.timed("/usr/bin/python3", &["-S", "-c", "print(1)"]),
            Program::C => {
                if !self.dir.join("main").exists() {
                    self.compile_c();
                }
                self.timed("./main", &[])
            }
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GraphQL over HTTP with one keep-alive connection pool (as a browser would).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    pub fn new(server: &Server) -> Api {
        Api {
            http: reqwest::Client::new(),
            url: format!("{}/graphql", server.http()),
        }
    }

    pub async fn query(&self, query: &str, variables: Value) -> Value {
        self.http
            .post(&self.url)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("POST /graphql")
            .json()
            .await
            .expect("JSON body")
    }

    pub async fn submit(&self, input: &Value) -> String {
        let body = self
            .query(
                "mutation($i: SubmitInput!) { submit(input: $i) { id status } }",
                json!({ "i": input }),
            )
            .await;
        body["data"]["submit"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("submit failed: {body}"))
            .to_owned()
    }
}

/// The subscription every benchmark client uses: just what the timings need.
pub const EVENTS: &str = r#"subscription($id: ID!) { submissionEvents(id: $id) {
  __typename seq at
  ... on CompilingEvent { cached }
  ... on TestFinishedEvent { result { wallTimeMs } }
  ... on FinishedEvent { submission { verdict } }
} }"#;

/// One submission as a client sees it.
pub struct Sample {
    /// When the client sent the submit request.
    pub send: i64,
    /// When the submit response arrived.
    pub response: i64,
    /// (typename, at, received) for each event, in order.
    pub events: Vec<(String, i64, i64)>,
    pub verdict: String,
    /// The sandboxed run's wall time as the worker measured it.
    pub run_wall_ms: Option<f64>,
    /// CompilingEvent.cached: Some(false) when the worker really compiled.
    pub cached: Option<bool>,
}

impl Sample {
    pub fn event(&self, kind: &str) -> Option<(i64, i64)> {
        self.events
            .iter()
            .find(|(t, _, _)| t == kind)
            .map(|(_, a, r)| (*a, *r))
    }

    /// Submit sent → FinishedEvent received, in ms.
    pub fn total_ms(&self) -> f64 {
        self.event("FinishedEvent")
            .map(|(_, r)| ns_to_ms(r - self.send))
            .unwrap_or(f64::NAN)
    }
}

/// Submit, then subscribe (the replay covers a fast finish), and read to `complete`.
pub async fn submit_and_follow(api: &Api, ws: &mut WsClient, input: &Value) -> Sample {
    let send = now_ns();
    let id = api.submit(input).await;
    let response = now_ns();
    let op = ws.subscribe(EVENTS, json!({ "id": id })).await;
    let mut sample = Sample {
        send,
        response,
        events: Vec::new(),
        verdict: String::new(),
        run_wall_ms: None,
        cached: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.recv())
            .await
            .expect("subscription timed out")
            .expect("socket closed");
        let received = now_ns();
        if msg["id"] != op.as_str() {
            continue;
        }
        match msg["type"].as_str() {
            Some("next") => {
                let e = &msg["payload"]["data"]["submissionEvents"];
                let kind = e["__typename"].as_str().unwrap_or("?").to_owned();
                if kind == "FinishedEvent" {
                    sample.verdict = e["submission"]["verdict"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned();
                }
                if let Some(c) = e["cached"].as_bool() {
                    sample.cached = Some(c);
                }
                if let Some(w) = e["result"]["wallTimeMs"].as_f64() {
                    sample.run_wall_ms = Some(w);
                }
                sample
                    .events
                    .push((kind, parse_at(&e["at"]).unwrap_or(0), received));
            }
            Some("complete") => return sample,
            _ => panic!("subscription error: {msg}"),
        }
    }
}

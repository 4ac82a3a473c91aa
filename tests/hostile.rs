//! Hostile programs through the real service (`verdict standalone`: server, worker and
//! sandbox in one process, as in production). Each test checks the attack is contained
//! AND that a normal submission still runs, in normal time, afterwards.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verdict_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

/// Runs `source` and returns the final submission.
async fn run(server: &Server, language: &str, source: &str, limits: Value) -> Value {
    let id = submit(
        &server.http(),
        json!({ "language": language, "source": source, "limits": limits }),
    )
    .await;
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let events = ws.events(&id, None).await;
    events.last().unwrap()["submission"].clone()
}

/// The service still works, quickly, after the attack.
async fn still_healthy(server: &Server) {
    let start = Instant::now();
    let s = run(server, "python3", "print('still here')", json!({})).await;
    assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    assert_eq!(s["tests"][0]["stdout"], "still here\n");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "normal run took {:?}",
        start.elapsed()
    );
}

fn stdout(s: &Value) -> &str {
    s["tests"][0]["stdout"].as_str().unwrap_or_default()
}

/// Python that tries each action and prints `blocked` or `OPEN: <what>`.
fn probe(actions: &[&str]) -> String {
    let mut src = String::from("import os, socket\n");
    for action in actions {
        src.push_str(&format!(
            "try:\n    {action}\n    print('OPEN:', {action:?})\nexcept Exception as e:\n    print('blocked')\n"
        ));
    }
    src
}

async fn all_blocked(actions: &[&str]) {
    let server = standalone(bin(), None);
    let s = run(&server, "python3", &probe(actions), json!({})).await;
    assert_eq!(stdout(&s), "blocked\n".repeat(actions.len()), "{s}");
    still_healthy(&server).await;
}

#[tokio::test]
async fn tcp_to_redis_and_to_the_server_is_blocked() {
    let redis_port = redis_url().rsplit(':').next().unwrap().to_owned();
    let server = standalone(bin(), None);
    let a = format!("socket.create_connection(('127.0.0.1', {redis_port}), timeout=2)");
    let b = format!(
        "socket.create_connection(('127.0.0.1', {}), timeout=2)",
        server.port
    );
    let s = run(&server, "python3", &probe(&[&a, &b]), json!({})).await;
    assert_eq!(stdout(&s), "blocked\nblocked\n", "{s}");
    still_healthy(&server).await;
}

#[tokio::test]
async fn udp_and_unix_sockets_are_blocked() {
    all_blocked(&[
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 53))",
        "socket.socket(socket.AF_INET6, socket.SOCK_STREAM)",
        "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect('/var/run/redis/redis-server.sock')",
        "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect('\\0abstract')",
    ])
    .await;
}

#[tokio::test]
async fn secrets_of_the_host_and_the_worker_are_unreadable() {
    all_blocked(&[
        "open('/etc/shadow').read()",
        "os.listdir('/root')",
        "open('/proc/1/environ').read()",
        "open('/proc/%d/environ' % os.getppid()).read()",
        "open('/work/main/Cargo.toml').read()",
    ])
    .await;
}

#[tokio::test]
async fn writes_outside_the_run_directory_fail() {
    all_blocked(&[
        "open('/tmp/verdict-hostile', 'w').write('x')",
        "open('/var/tmp/verdict-hostile', 'w').write('x')",
        "open('/dev/shm/verdict-hostile', 'w').write('x')",
        "open('/work/main/verdict-hostile', 'w').write('x')",
        "os.chmod('/tmp', 0o777)",
        "os.chown('/tmp', 0, 0)",
    ])
    .await;
    assert!(!Path::new("/tmp/verdict-hostile").exists());
}

#[tokio::test]
async fn signals_and_ptrace_cannot_reach_the_worker() {
    let server = standalone(bin(), None);
    let c = r#"#include <signal.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <unistd.h>
int main(void) {
    pid_t parent = getppid();
    printf("%d %d %ld\n", kill(parent, SIGKILL), kill(1, SIGKILL), ptrace(PTRACE_ATTACH, parent, 0, 0));
    fflush(stdout);
    kill(-1, SIGKILL); /* kills only what the sandbox may signal: itself */
    return 0;
}"#;
    let s = run(&server, "c", c, json!({})).await;
    assert_eq!(stdout(&s), "-1 -1 -1\n", "{s}");
    still_healthy(&server).await;
}

#[tokio::test]
async fn fork_bombs_in_c_and_bash_are_contained() {
    let server = standalone(bin(), None);
    let c = "#include <unistd.h>\nint main(void){ for(;;) fork(); }";
    let s = run(&server, "c", c, json!({ "wallTimeMs": 2000 })).await;
    assert_ne!(s["verdict"], "ACCEPTED", "{s}");
    let s = run(
        &server,
        "bash",
        ":(){ :|:& };:",
        json!({ "wallTimeMs": 2000 }),
    )
    .await;
    assert_ne!(s["verdict"], "INTERNAL_ERROR", "{s}");
    still_healthy(&server).await;
}

#[tokio::test]
async fn a_thread_bomb_is_contained() {
    let server = standalone(bin(), None);
    let src = "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n";
    let s = run(&server, "python3", src, json!({ "wallTimeMs": 2000 })).await;
    // Daemon threads: once creation fails at the process limit, the program dies of it.
    let stderr = s["tests"][0]["stderr"].as_str().unwrap_or_default();
    assert!(stderr.contains("can't start new thread"), "{s}");
    assert_eq!(s["verdict"], "RUNTIME_ERROR", "{s}");
    still_healthy(&server).await;
}

#[tokio::test]
async fn a_memory_bomb_is_memory_limit_exceeded() {
    let server = standalone(bin(), None);
    let src = "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n";
    let s = run(&server, "python3", src, json!({ "memoryKb": 131072 })).await;
    assert_eq!(s["verdict"], "MEMORY_LIMIT_EXCEEDED", "{s}");
    still_healthy(&server).await;
}

#[tokio::test]
async fn an_output_flood_is_cut_fast() {
    let server = standalone(bin(), None);
    let start = Instant::now();
    let s = run(
        &server,
        "c",
        "#include <stdio.h>\nint main(void){ for(;;) puts(\"flood\"); }",
        json!({ "outputBytes": 65536 }),
    )
    .await;
    assert_eq!(s["verdict"], "OUTPUT_LIMIT_EXCEEDED", "{s}");
    assert_eq!(s["tests"][0]["truncated"], true);
    assert!(stdout(&s).len() <= 65536);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "killed at once, not at the time limit: {:?}",
        start.elapsed()
    );
    still_healthy(&server).await;
}

#[tokio::test]
async fn a_two_gigabyte_file_is_capped() {
    let server = standalone(bin(), None);
    let src = "f = open('big', 'wb')\nchunk = b'x' * (1 << 20)\nfor _ in range(2048):\n    f.write(chunk)\n";
    let s = run(&server, "python3", src, json!({ "wallTimeMs": 10000 })).await;
    assert_ne!(
        s["verdict"], "ACCEPTED",
        "the file size limit stops it: {s}"
    );
    still_healthy(&server).await;
}

#[tokio::test]
async fn a_setsid_daemon_does_not_outlive_its_run() {
    let server = standalone(bin(), None);
    let marker = format!("verdict-daemon-{}", std::process::id());
    let src = format!(
        "setsid bash -c 'exec -a {marker} sleep 60' </dev/null >/dev/null 2>&1 &\necho started"
    );
    let s = run(&server, "bash", &src, json!({})).await;
    assert_eq!(stdout(&s), "started\n", "{s}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let found = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "daemon survived: pids {}",
        String::from_utf8_lossy(&found.stdout)
    );
    still_healthy(&server).await;
}

#[tokio::test]
async fn a_symlink_to_etc_in_the_run_directory_is_not_followed_on_cleanup() {
    let server = standalone(bin(), None);
    let src = "import os\nos.symlink('/etc', 'etc')\nos.symlink('/etc/hostname', 'hostname')\nprint('planted')";
    let s = run(&server, "python3", src, json!({})).await;
    assert_eq!(stdout(&s), "planted\n", "{s}");
    assert!(Path::new("/etc/hostname").exists() && Path::new("/etc/passwd").exists());
    still_healthy(&server).await;
}

#[tokio::test]
async fn closing_stdio_and_sleeping_past_the_wall_limit_are_handled() {
    let server = standalone(bin(), None);
    let s = run(
        &server,
        "bash",
        "exec 0<&- 1>&- 2>&-\nsleep 0.2\nexit 0",
        json!({}),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    let start = Instant::now();
    let s = run(&server, "bash", "sleep 30", json!({ "wallTimeMs": 1000 })).await;
    assert_eq!(s["verdict"], "TIME_LIMIT_EXCEEDED", "{s}");
    assert!(start.elapsed() < Duration::from_secs(5));
    still_healthy(&server).await;
}

#[tokio::test]
async fn namespaces_mounts_and_own_seccomp_filters_are_contained() {
    let server = standalone(bin(), None);
    let c = r#"#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <linux/seccomp.h>
int main(void) {
    printf("%d %d %d\n", unshare(CLONE_NEWUSER), unshare(CLONE_NEWNS), mount("none", "/tmp", "tmpfs", 0, 0));
    fflush(stdout);
    /* Its own filter only restricts itself; strict mode then kills it at exit_group. */
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT);
    return 0;
}"#;
    let s = run(&server, "c", c, json!({})).await;
    assert_eq!(stdout(&s), "-1 -1 -1\n", "{s}");
    still_healthy(&server).await;
}

/// `levels` fragments each spreading the next twice: 2^levels fields once expanded, from
/// about 50 bytes per level.
fn fragment_bomb(levels: usize) -> String {
    let mut doc = String::from("query { languages { ...F0 } }");
    for i in 0..levels {
        doc.push_str(&format!(
            " fragment F{i} on Language {{ ...F{n} ...F{n} }}",
            n = i + 1
        ));
    }
    doc.push_str(&format!(" fragment F{levels} on Language {{ id }}"));
    doc
}

#[tokio::test]
async fn a_fragment_bomb_is_refused_in_linear_time() {
    let server = standalone(bin(), None);
    let bomb = fragment_bomb(30);
    let client = reqwest::Client::new();
    let code = |body: &Value| body["errors"][0]["extensions"]["code"].clone();

    // POST and GET: refused as input, at once (expanding it would take hours).
    let start = Instant::now();
    let post: Value = client
        .post(format!("{}/graphql", server.http()))
        .json(&json!({ "query": bomb }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(code(&post), "BAD_USER_INPUT", "{post}");
    assert!(
        post["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("fragments are spread"),
        "{post}"
    );
    assert!(
        took < Duration::from_millis(100),
        "POST refused after {took:?}"
    );
    let get: Value = client
        .get(format!("{}/graphql", server.http()))
        .query(&[("query", bomb.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&get), "BAD_USER_INPUT", "{get}");

    // graphql-ws: an `error` message for that operation, and the connection stays usable.
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let start = Instant::now();
    let id = ws.subscribe(&bomb, json!({})).await;
    let frame = ws.recv().await.expect("an answer to the bomb");
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(frame["id"], id.as_str(), "{frame}");
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(
        frame["payload"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{frame}"
    );
    // A fragment cycle is refused the same way (async-graphql's own walk would recurse).
    let cycle = "query { languages { ...A } } fragment A on Language { id ...A ...A }";
    let id = ws.subscribe(cycle, json!({})).await;
    let frame = ws.recv().await.expect("an answer to the cycle");
    assert_eq!(frame["id"], id.as_str(), "{frame}");
    assert_eq!(
        frame["payload"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{frame}"
    );

    // Two clients sending bombs without pause do not stall the server: /healthz answers
    // in under 100 ms, every time. Before, each
    // bomb held a runtime thread for hours: /healthz stalled and no bomb was answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bombers: Vec<_> = (0..2)
        .map(|_| {
            let (url, bomb) = (server.http(), bomb.clone());
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let (stop, sent) = (stop.clone(), sent.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body: Value = client
                        .post(format!("{url}/graphql"))
                        .json(&json!({ "query": bomb }))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut took = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let res = client
            .get(format!("{}/healthz", server.http()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        took.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in bombers {
        b.await.unwrap();
    }
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    took.sort();
    let (median, slowest) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!("/healthz: median {median:?}, slowest {slowest:?}, while {sent} bombs were refused");
    assert!(sent >= 4, "only {sent} bombs were answered");
    assert!(
        median < Duration::from_millis(100) && slowest < Duration::from_millis(100),
        "/healthz took {slowest:?} (median {median:?}) with {sent} bombs in flight"
    );
    still_healthy(&server).await;
}

/// Each test of a submission runs in a fresh directory: a file, a changed program or a
/// planted script from test k is gone in test k+1, for interpreted and compiled languages.
#[tokio::test]
async fn nothing_a_test_writes_reaches_the_next_test() {
    let server = standalone(bin(), None);
    let python = "import os\n\
                  seen = sorted(f for f in os.listdir('.') if f != 'main.py')\n\
                  print('seen', seen)\n\
                  open('state', 'w').write('from an earlier test')\n\
                  os.mkdir('d')\n";
    let c = r##"#include <stdio.h>
#include <unistd.h>
int main() {
    int planted = access("state", F_OK) == 0;
    FILE *f = fopen("state", "w"); fputs("x", f); fclose(f);
    /* overwrite our own binary: the next test must still run the compiled program */
    FILE *self = fopen("main", "w"); if (self) { fputs("#!/bin/sh\necho tampered\n", self); fclose(self); }
    printf("planted=%d\n", planted);
    return 0;
}"##;
    for (language, source, want) in [("python3", python, "seen []\n"), ("c", c, "planted=0\n")] {
        let id = submit(
            &server.http(),
            json!({ "language": language, "source": source,
                    "tests": [ { "stdin": "" }, { "stdin": "" }, { "stdin": "" } ] }),
        )
        .await;
        let mut ws = WsClient::connect(&server.ws("/graphql")).await;
        let events = ws.events(&id, None).await;
        let s = &events.last().unwrap()["submission"];
        let tests = s["tests"].as_array().unwrap();
        assert_eq!(tests.len(), 3, "{s}");
        for t in tests {
            assert_eq!(t["stdout"], want, "{language}: {s}");
        }
    }
    still_healthy(&server).await;
}
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Output a submission may leave behind is capped (default 64 MiB per submission, record
/// and events together): 16 tests x 32 MiB is refused at submit naming the field, and 16
/// tests x 4 MiB of output, all of it produced, keeps at most the cap.
#[tokio::test]
async fn retained_output_is_capped_per_submission() {
    let server = standalone(bin(), None);
    let tests: Vec<Value> = (0..16).map(|_| json!({ "stdin": "" })).collect();
    let source = "import sys\nsys.stdout.write('x' * (4 << 20))";
    let refused = graphql(
        &server.http(),
        "mutation($i: SubmitInput!) { submit(input: $i) { id } }",
        json!({ "i": { "language": "python3", "source": source, "tests": tests,
                       "limits": { "outputBytes": 32 << 20 } } }),
    )
    .await;
    let error = &refused["errors"][0];
    assert_eq!(error["extensions"]["code"], "BAD_USER_INPUT", "{refused}");
    assert_eq!(error["extensions"]["field"], "outputBytes", "{refused}");
    assert!(error["message"]
        .as_str()
        .unwrap_or_default()
        .contains("outputBytes"));

    let before = rss_kib(server.proc.pid());
    let id = submit(
        &server.http(),
        json!({ "language": "python3", "source": source, "tests": tests,
                "limits": { "outputBytes": 4 << 20 } }),
    )
    .await;
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let events = ws.events(&id, None).await;
    let last = events.last().unwrap();
    assert_eq!(
        last["__typename"], "FinishedEvent",
        "{}",
        last["__typename"]
    );
    let live: usize = events
        .iter()
        .filter_map(|e| e["chunk"].as_str())
        .map(str::len)
        .sum();
    let body = graphql(
        &server.http(),
        "query($id: ID!) { submission(id: $id) { verdict tests { stdout truncated } } }",
        json!({ "id": id }),
    )
    .await;
    let record = &body["data"]["submission"];
    let kept: usize = record["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stdout"].as_str().unwrap_or_default().len())
        .sum();
    let after = rss_kib(server.proc.pid());
    println!(
        "16 x 4 MiB output: live output kept {live} bytes, record {kept} bytes, RSS {before} -> {after} KiB"
    );
    assert!(live <= 32 << 20, "live output kept: {live}");
    assert!(
        kept + live <= 64 << 20,
        "record {kept} + live {live} over the 64 MiB cap"
    );
    assert!(kept >= 8 << 20, "the record keeps a fair share: {kept}");
    assert!(record["tests"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["truncated"] == true));
    still_healthy(&server).await;
}

/// Polls `GET /healthz` every 10 ms on its own thread (its own runtime and connection, so
/// the test's own work cannot delay it) until `stop`; returns the slowest answer and the
/// number of polls.
fn poll_healthz(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::new();
            let url = format!("http://127.0.0.1:{port}/healthz");
            let mut took = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.get(&url).send().await.unwrap();
                assert!(r.status().is_success());
                let _ = r.text().await.unwrap();
                took.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            took.sort();
            took
        })
    })
}

/// Removing a run dir with 130k files takes ~2 s of blocking work; two of them ending
/// together must not stall the API (it did, 1.6-3.4 s, while removal ran on the runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_fast_while_big_run_dirs_are_removed() {
    let server = standalone(bin(), None);
    let c = r#"#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
int main(void){ char p[64]; int made = 0;
  for (int i = 0; i < 130000; i++) {
    snprintf(p, sizeof p, "f%d", i);
    int fd = open(p, O_WRONLY|O_CREAT|O_EXCL, 0600);
    if (fd < 0) break;
    close(fd); made++;
  }
  printf("%d\n", made); return 0; }"#;
    let limits = json!({ "wallTimeMs": 30000, "cpuTimeMs": 15000 });
    // Warm the C toolchain's page cache, so both submissions compile and run in step.
    let warm = run(&server, "c", "int main(void){return 0;}", json!({})).await;
    assert_eq!(warm["verdict"], "ACCEPTED", "{warm}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll_healthz(server.port, stop.clone());
    let t = Instant::now();
    let second = format!("{c}\n/* second */");
    let (a, b) = tokio::join!(
        run(&server, "c", c, limits.clone()),
        run(&server, "c", &second, limits.clone()),
    );
    let ran = t.elapsed();
    // The run dirs are removed after the results are published: keep polling meanwhile.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let took = poller.join().unwrap();
    let polls = took.len();
    let worst = took.last().copied().unwrap_or_default();
    let p99 = took[(polls * 99 / 100).min(polls.saturating_sub(1))];
    println!(
        "2 x {} + {} files: runs took {ran:?}; /healthz p99 {p99:?}, worst {worst:?} over {polls} polls",
        stdout(&a).trim(),
        stdout(&b).trim()
    );
    for s in [&a, &b] {
        assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    }
    assert!(
        stdout(&a).trim().parse::<u32>().unwrap_or(0) >= 100_000,
        "the program could not create its files: {a}"
    );
    // Every poll, not a percentile: the issue's bound is "/healthz stays under 100 ms".
    assert!(polls > 100, "only {polls} polls");
    assert!(p99 < Duration::from_millis(100), "/healthz p99 {p99:?}");
    assert!(
        worst < Duration::from_millis(100),
        "/healthz took {worst:?} (p99 {p99:?})"
    );
    still_healthy(&server).await;
}

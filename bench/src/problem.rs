//! A stored 100-test problem with a cached C solution: submit → FinishedEvent against
//! 100 bare runs of the same binary (each fed its test's stdin), interleaved in one run.
//! The figure is the overhead per test: (e2e − bare total) / tests.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};
use verdict_testkit::WsClient;

use crate::common::*;

/// Echoes the number it reads.
const ECHO_C: &str =
    "#include <stdio.h>\nint main(void){ long x; if (scanf(\"%ld\", &x) != 1) return 1; printf(\"%ld\\n\", x); return 0; }\n";

fn problem(tests: usize) -> Value {
    let tests: Vec<Value> = (0..tests)
        .map(|k| json!({ "stdin": format!("{k}\n"), "expectedOutput": format!("{k}\n"), "sample": k == 0 }))
        .collect();
    json!({ "id": "bench100", "title": "Echo a number", "tests": tests })
}

/// `./main` compiled once, run `tests` times with each test's stdin: total ms.
fn bare_runs(dir: &Path, tests: usize) -> f64 {
    let t = Instant::now();
    for k in 0..tests {
        let mut child = Command::new("./main")
            .current_dir(dir)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn bare ./main");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("{k}\n").as_bytes())
                .expect("bare stdin");
        }
        let out = child.wait_with_output().expect("bare wait");
        assert!(out.status.success(), "bare run failed: {out:?}");
    }
    t.elapsed().as_secs_f64() * 1e3
}

pub async fn measure(bin: &Path, modes: &[Mode], tests: usize, n: usize) -> Table {
    let mut table = Table::new(
        &format!("Problem with {tests} tests, cached C: submit → FinishedEvent vs {tests} bare runs, same run"),
        &[
            "deployment",
            "n",
            "bare total p50 ms",
            "e2e p50 ms",
            "e2e p99 ms",
            "overhead per test p50 ms",
            "ratio",
        ],
    );
    let dir = std::env::temp_dir().join(format!(
        "verdict-bench-problem-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("bare dir");
    std::fs::write(dir.join("main.c"), ECHO_C).expect("main.c");
    let gcc = Command::new("/usr/bin/gcc")
        .args(["-std=gnu17", "-O2", "-pipe", "-o", "main", "main.c", "-lm"])
        .current_dir(&dir)
        .status()
        .expect("gcc");
    assert!(gcc.success(), "bare gcc failed");
    for &mode in modes {
        eprintln!("problem: {} / {tests} tests x{n}", mode.name());
        let env = Env::start(bin, mode, true);
        let api = Api::new(&env.server);
        let put = api
            .query(
                "mutation($i: ProblemInput!) { putProblem(input: $i) { id testCount } }",
                json!({ "i": problem(tests) }),
            )
            .await;
        assert!(put["errors"].is_null(), "putProblem: {put}");
        let mut ws = WsClient::connect(&env.server.ws("/graphql")).await;
        let input = json!({ "problemId": "bench100", "language": "c", "source": ECHO_C });
        // Warm-up: the compile, the worker's problem and data caches.
        for _ in 0..2 {
            let s = submit_and_follow(&api, &mut ws, &input).await;
            assert_eq!(s.verdict, "ACCEPTED", "warm-up not accepted");
            bare_runs(&dir, tests);
        }
        let (mut e2e, mut bare, mut cached) = (Vec::new(), Vec::new(), 0);
        for _ in 0..n {
            let s = submit_and_follow(&api, &mut ws, &input).await;
            assert_eq!(s.verdict, "ACCEPTED");
            if s.cached == Some(true) {
                cached += 1;
            }
            e2e.push(s.total_ms());
            bare.push(bare_runs(&dir, tests));
        }
        let (b, e) = (p50(&bare), p50(&e2e));
        table.row(vec![
            mode.name().into(),
            n.to_string(),
            fmt_ms(b),
            fmt_ms(e),
            fmt_ms(p99(&e2e)),
            format!("{:.3}", (e - b) / tests as f64),
            format!("{:.2}×", e / b),
        ]);
        table.note(format!(
            "{}: {cached} of {n} measured submissions hit the compile cache",
            mode.name()
        ));
        drop(env);
    }
    let _ = std::fs::remove_dir_all(&dir);
    table.note("Bare = the same binary compiled once, spawned once per test with that test's stdin, sequentially (the worker also runs a submission's tests one after another).");
    table
}

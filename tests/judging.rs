//! Judging end to end through real processes: every verdict, compare modes, limits,
//! cancel, live output and the compile cache. Most tests run against `verdict
//! standalone`; the ones at the end run the same checks on `verdict server` + `verdict
//! worker` around a real Redis.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verdict_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

/// Everything the judging tests look at.
const FULL: &str = r#"subscription($id: ID!) { submissionEvents(id: $id) {
  __typename seq submissionId
  ... on CompilingEvent { cached }
  ... on RunningEvent { test tests }
  ... on OutputEvent { test stream chunk }
  ... on TestFinishedEvent { result { index verdict } }
  ... on FinishedEvent { submission { id status verdict compileOutput compileCached message
      testCount timeMs memoryKb
      tests { index verdict timeMs wallTimeMs memoryKb exitCode signal stdout stderr truncated } } }
} }"#;

/// Like FULL, but without program output (for the 10 MB tests).
const QUIET: &str = r#"subscription($id: ID!) { submissionEvents(id: $id) {
  __typename seq
  ... on FinishedEvent { submission { verdict tests { index verdict truncated } } }
} }"#;

/// `verdict standalone` with extra flags, on a free port.
fn standalone_with(extra: &[&str]) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(bin())
        .args(["standalone", "--listen", &listen])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .expect("spawn verdict");
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("verdict standalone {extra:?} exited: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Server {
        proc: Proc(child),
        port,
    }
}

/// Subscribes to `id` with `query` and collects every event.
async fn events_of(server: &Server, id: &str, query: &str) -> Vec<Value> {
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let op = ws.subscribe(query, json!({ "id": id })).await;
    let (events, completed) = ws.collect(&op, usize::MAX, Duration::from_secs(90)).await;
    assert!(completed, "subscription to {id} did not complete");
    events
}

/// Submits, waits for the end, checks the event order; returns (events, submission).
async fn judge(server: &Server, input: Value) -> (Vec<Value>, Value) {
    let id = submit(&server.http(), input).await;
    let events = events_of(server, &id, FULL).await;
    let submission = events.last().unwrap()["submission"].clone();
    (events, submission)
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["__typename"].as_str().unwrap())
        .collect()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an int: {v}"))
}

const ECHO_PY: &str = "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n";
const DOUBLE_CPP: &str =
    "#include <iostream>\nint main(){ long n; std::cin >> n; std::cout << 2*n << \"\\n\"; }\n";

// ---------------------------------------------------------------------------------------
// ACCEPTED, WRONG_ANSWER, compare modes

#[tokio::test]
async fn accepted_and_wrong_answer_in_python_and_cpp() {
    let server = standalone(bin(), None);
    for (lang, source, compiled) in [
        ("python3", "print(2 * int(input()))", false),
        ("cpp", DOUBLE_CPP, true),
    ] {
        let tests = json!([{ "stdin": "21\n", "expectedOutput": "42\n" }]);
        let (events, s) = judge(
            &server,
            json!({ "language": lang, "source": source, "tests": tests }),
        )
        .await;
        check_event_order(&events, compiled);
        assert_eq!(s["verdict"], "ACCEPTED", "{lang}: {s}");
        assert_eq!(s["tests"][0]["stdout"], "42\n");
        let tests = json!([{ "stdin": "21\n", "expectedOutput": "43\n" }]);
        let (_, s) = judge(
            &server,
            json!({ "language": lang, "source": source, "tests": tests }),
        )
        .await;
        assert_eq!(s["verdict"], "WRONG_ANSWER", "{lang}: {s}");
        assert_eq!(s["tests"][0]["verdict"], "WRONG_ANSWER");
        assert_eq!(s["tests"][0]["exitCode"], 0);
    }
}

/// (program output, expected output, verdict)
type Case = (&'static str, &'static str, &'static str);

async fn compare_cases(server: &Server, mode: &str, epsilon: Option<f64>, cases: &[Case]) {
    let tests: Vec<Value> = cases
        .iter()
        .map(|(out, exp, _)| json!({ "stdin": out, "expectedOutput": exp }))
        .collect();
    let mut input =
        json!({ "language": "python3", "source": ECHO_PY, "tests": tests, "compare": mode });
    if let Some(e) = epsilon {
        input["epsilon"] = json!(e);
    }
    let (_, s) = judge(server, input).await;
    let results = s["tests"].as_array().unwrap();
    assert_eq!(results.len(), cases.len(), "{s}");
    for (k, ((out, exp, want), got)) in cases.iter().zip(results).enumerate() {
        assert_eq!(
            got["verdict"], *want,
            "{mode} case {k}: output {out:?} vs expected {exp:?}"
        );
    }
    let first_failure = cases
        .iter()
        .map(|c| c.2)
        .find(|v| *v != "ACCEPTED")
        .unwrap_or("ACCEPTED");
    assert_eq!(s["verdict"], first_failure, "{mode}");
}

#[tokio::test]
async fn compare_modes_with_their_edge_cases() {
    let server = standalone(bin(), None);
    compare_cases(
        &server,
        "EXACT",
        None,
        &[
            ("a\n", "a\n", "ACCEPTED"),
            ("", "", "ACCEPTED"),
            ("a\n", "a", "WRONG_ANSWER"),
            ("a", "a\n", "WRONG_ANSWER"),
            ("a\r\n", "a\n", "WRONG_ANSWER"),
            ("a ", "a", "WRONG_ANSWER"),
        ],
    )
    .await;
    compare_cases(
        &server,
        "TRIM_TRAILING",
        None,
        &[
            ("a  \r\nb\r\n\r\n\n", "a\nb", "ACCEPTED"),
            ("a\nb", "a\nb\n", "ACCEPTED"),
            ("a\r\nb\r\n", "a\nb\n", "ACCEPTED"),
            ("", "", "ACCEPTED"),
            ("\n\n \n", "", "ACCEPTED"),
            ("x", "", "WRONG_ANSWER"),
            ("a\n\nb", "a\nb", "WRONG_ANSWER"),
            (" a", "a", "WRONG_ANSWER"),
            ("a b", "a  b", "WRONG_ANSWER"),
        ],
    )
    .await;
    compare_cases(
        &server,
        "TOKENS",
        None,
        &[
            ("1\n2   3\t\r\n", "1 2 3", "ACCEPTED"),
            ("", "", "ACCEPTED"),
            (" \n", "", "ACCEPTED"),
            ("1 23", "1 2 3", "WRONG_ANSWER"),
            ("1 2", "1 2 3", "WRONG_ANSWER"),
            ("1.0", "1", "WRONG_ANSWER"),
        ],
    )
    .await;
    compare_cases(
        &server,
        "FLOAT",
        None,
        &[
            ("1.0000001\n", "1", "ACCEPTED"),
            ("1000000100", "1e9", "ACCEPTED"),
            ("abc 2.5", "abc 2.5000001", "ACCEPTED"),
            ("", "", "ACCEPTED"),
            ("1.00001", "1", "WRONG_ANSWER"),
            ("abd 2.5", "abc 2.5", "WRONG_ANSWER"),
            ("1 2", "1 2 3", "WRONG_ANSWER"),
        ],
    )
    .await;
    compare_cases(
        &server,
        "FLOAT",
        Some(0.01),
        &[
            ("3.14\n2.718", "3.1416 2.71828", "ACCEPTED"),
            ("3.2", "3.1416", "WRONG_ANSWER"),
        ],
    )
    .await;
    // epsilon belongs to FLOAT only, and must be sane.
    let q = "mutation($i: SubmitInput!) { submit(input: $i) { id } }";
    for input in [
        json!({ "language": "python3", "source": "", "compare": "TOKENS", "epsilon": 0.1 }),
        json!({ "language": "python3", "source": "", "compare": "FLOAT", "epsilon": -1.0 }),
    ] {
        let body = graphql(&server.http(), q, json!({ "i": input })).await;
        assert_eq!(
            body["errors"][0]["extensions"]["field"], "epsilon",
            "{body}"
        );
    }
}

#[tokio::test]
async fn ten_megabyte_expected_output_is_compared() {
    let server = standalone(bin(), None);
    let n = 1_400_000;
    let expected: String = (0..n).map(|i| format!("{i:07}\n")).collect();
    assert!(expected.len() > 10_000_000);
    let mut wrong = expected.clone();
    wrong.replace_range(wrong.len() - 8.., "9999999\n");
    let source =
        format!("import sys\nsys.stdout.write(''.join('%07d\\n' % i for i in range({n})))\n");
    let limits =
        json!({ "outputBytes": 16 * 1024 * 1024, "cpuTimeMs": 10000, "wallTimeMs": 20000 });
    for (mode, trimmed) in [("TRIM_TRAILING", false), ("TOKENS", true), ("EXACT", false)] {
        let first = if trimmed {
            expected.trim_end().to_owned()
        } else {
            expected.clone()
        };
        let id = submit(
            &server.http(),
            json!({ "language": "python3", "source": source, "compare": mode, "limits": limits,
                    "tests": [{ "stdin": "", "expectedOutput": first }, { "stdin": "", "expectedOutput": wrong }] }),
        )
        .await;
        let events = events_of(&server, &id, QUIET).await;
        let s = &events.last().unwrap()["submission"];
        assert_eq!(s["tests"][0]["verdict"], "ACCEPTED", "{mode}: {s}");
        // The event carries at most 1 MiB of stdout (flagged truncated); the record has it
        // all, and nothing was cut by the output limit.
        assert_eq!(
            s["tests"][0]["truncated"], true,
            "{mode}: event copy is capped"
        );
        let record = graphql(
            &server.http(),
            "query($id: ID!) { submission(id: $id) { tests { truncated stdout } } }",
            json!({ "id": id }),
        )
        .await;
        let full = &record["data"]["submission"]["tests"][0];
        assert_eq!(full["truncated"], false, "{mode}");
        assert_eq!(
            full["stdout"].as_str().map(str::len),
            Some(expected.len()),
            "{mode}"
        );
        assert_eq!(s["tests"][1]["verdict"], "WRONG_ANSWER", "{mode}: {s}");
        assert_eq!(s["verdict"], "WRONG_ANSWER");
    }
}

// ---------------------------------------------------------------------------------------
// TIME, MEMORY and OUTPUT limits

#[tokio::test]
async fn time_limit_by_cpu_in_python_and_c() {
    let server = standalone(bin(), None);
    for (lang, source) in [
        ("python3", "while True:\n    pass\n"),
        (
            "c",
            "int main(void){ volatile unsigned long x = 0; for(;;) x++; }",
        ),
    ] {
        let started = Instant::now();
        let (_, s) = judge(
            &server,
            json!({ "language": lang, "source": source, "limits": { "cpuTimeMs": 500, "wallTimeMs": 10000 } }),
        )
        .await;
        let t = &s["tests"][0];
        assert_eq!(s["verdict"], "TIME_LIMIT_EXCEEDED", "{lang}: {s}");
        assert!(int(&t["timeMs"]) >= 450, "{lang}: CPU time {t}");
        assert!(
            int(&t["timeMs"]) < 2000,
            "{lang}: killed soon after the limit {t}"
        );
        assert!(started.elapsed() < Duration::from_secs(8), "{lang}");
    }
}

#[tokio::test]
async fn time_limit_by_wall_in_python_and_bash() {
    let server = standalone(bin(), None);
    for (lang, source) in [
        ("python3", "import time\ntime.sleep(10)\n"),
        ("bash", "sleep 10"),
    ] {
        let (_, s) = judge(
            &server,
            json!({ "language": lang, "source": source, "limits": { "cpuTimeMs": 2000, "wallTimeMs": 1000 } }),
        )
        .await;
        let t = &s["tests"][0];
        assert_eq!(s["verdict"], "TIME_LIMIT_EXCEEDED", "{lang}: {s}");
        let wall = int(&t["wallTimeMs"]);
        assert!((950..3000).contains(&wall), "{lang}: wall time {t}");
        assert!(int(&t["timeMs"]) < 500, "{lang}: sleeping uses no CPU {t}");
    }
}

#[tokio::test]
async fn memory_limit_in_python_and_c() {
    let server = standalone(bin(), None);
    for (lang, source) in [
        ("python3", "x = b'x' * (512 << 20)\nprint(len(x))\n"),
        (
            "c",
            "#include <stdlib.h>\n#include <string.h>\nint main(void){ size_t n = 512u << 20; volatile char *p = malloc(n); if (!p) return 7; memset((char *)p, 1, n); for (size_t i = 0; i < n; i += 4096) p[i] = 2; return p[n - 1] == 1 ? 0 : 1; }",
        ),
    ] {
        let (_, s) = judge(
            &server,
            json!({ "language": lang, "source": source, "limits": { "memoryKb": 65536 } }),
        )
        .await;
        assert_eq!(s["verdict"], "MEMORY_LIMIT_EXCEEDED", "{lang}: {s}");
        let peak = int(&s["tests"][0]["memoryKb"]);
        assert!(
            (30_000..=80_000).contains(&peak),
            "{lang}: peak {peak} KiB near the 64 MiB limit"
        );
        eprintln!("{lang}: MLE peak {peak} KiB at a 65536 KiB limit");
    }
}

#[tokio::test]
async fn memory_and_time_figures_are_plausible() {
    let server = standalone(bin(), None);
    let (_, s) = judge(
        &server,
        json!({ "language": "python3", "source": "x = bytearray(100 << 20)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\n" }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    let t = &s["tests"][0];
    let peak = int(&t["memoryKb"]);
    // `python3 -S -c pass` peaks at about 8.4 MB resident outside the sandbox here.
    let truth = 102_400 + 8_400;
    eprintln!("python 100 MiB: peak {peak} KiB, expected about {truth} KiB");
    assert!(
        (peak - truth).abs() * 10 <= truth,
        "100 MiB + the interpreter is about {truth} KiB, measured {peak} KiB"
    );
    assert_eq!(
        s["memoryKb"], t["memoryKb"],
        "the submission's figure is the max"
    );
    assert!(int(&t["wallTimeMs"]) >= int(&t["timeMs"]) / 2, "{t}");
    // The same in C: malloc + memset of 100 MiB.
    let (_, s) = judge(
        &server,
        json!({ "language": "c", "source": "#include <stdlib.h>\n#include <string.h>\nint main(void){ size_t n = 100u << 20; volatile char *p = malloc(n); memset((char *)p, 1, n); for (size_t i = 0; i < n; i += 4096) p[i] = 2; return p[n - 1] - 1; }" }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    let peak = int(&s["tests"][0]["memoryKb"]);
    eprintln!("c 100 MiB: peak {peak} KiB");
    assert!((102_400..=112_640).contains(&peak), "C peak {peak} KiB");
    // CPU time of a half-second busy loop.
    let (_, s) = judge(
        &server,
        json!({ "language": "python3", "source": "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n" }),
    )
    .await;
    let cpu = int(&s["tests"][0]["timeMs"]);
    assert!(
        (480..1500).contains(&cpu),
        "CPU time {cpu} ms for a 0.5 s loop"
    );
}

#[tokio::test]
async fn output_limit_in_python_and_bash() {
    let server = standalone(bin(), None);
    for (lang, source) in [
        (
            "python3",
            "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        ),
        ("bash", "yes flood"),
    ] {
        let started = Instant::now();
        let (events, s) = judge(
            &server,
            json!({ "language": lang, "source": source, "limits": { "outputBytes": 10000 } }),
        )
        .await;
        let t = &s["tests"][0];
        assert_eq!(s["verdict"], "OUTPUT_LIMIT_EXCEEDED", "{lang}: {s}");
        assert_eq!(t["truncated"], true, "{lang}");
        assert!(t["stdout"].as_str().unwrap().len() <= 10000, "{lang}");
        let live: usize = events
            .iter()
            .filter(|e| e["__typename"] == "OutputEvent")
            .map(|e| e["chunk"].as_str().unwrap().len())
            .sum();
        assert!(
            live <= 10000,
            "{lang}: live output stops at the cap ({live})"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{lang}: a flood is stopped at once, took {:?}",
            started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------------------
// RUNTIME_ERROR

#[tokio::test]
async fn runtime_error_by_exit_code_and_by_signal() {
    let server = standalone(bin(), None);
    let cases = [
        (
            "python3",
            "import sys\nprint('bye')\nsys.exit(3)\n",
            Some(3),
            None,
        ),
        ("c", "int main(void){ return 3; }", Some(3), None),
        (
            "c",
            "#include <signal.h>\nint main(void){ raise(SIGSEGV); return 0; }",
            None,
            Some(11),
        ),
        (
            "python3",
            "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
            None,
            Some(11),
        ),
        (
            "cpp",
            "#include <cstdlib>\nint main(){ std::abort(); }",
            None,
            Some(6),
        ),
    ];
    for (lang, source, exit, signal) in cases {
        let (_, s) = judge(&server, json!({ "language": lang, "source": source })).await;
        let t = &s["tests"][0];
        assert_eq!(s["verdict"], "RUNTIME_ERROR", "{lang} {source}: {s}");
        assert_eq!(t["exitCode"], json!(exit), "{lang}: {t}");
        assert_eq!(t["signal"], json!(signal), "{lang}: {t}");
    }
}

// ---------------------------------------------------------------------------------------
// COMPILATION_ERROR

#[tokio::test]
async fn compilation_error_in_c_and_rust_with_compiler_output() {
    let server = standalone(bin(), None);
    for (lang, source, needle) in [
        ("c", "int main(void){ return missing; }", "missing"),
        (
            "rust",
            "fn main() { let x: u32 = \"no\"; }",
            "mismatched types",
        ),
    ] {
        let (events, s) = judge(
            &server,
            json!({ "language": lang, "source": source, "tests": [{ "stdin": "", "expectedOutput": "" }] }),
        )
        .await;
        assert_eq!(
            kinds(&events),
            ["QueuedEvent", "CompilingEvent", "FinishedEvent"],
            "{lang}"
        );
        assert_eq!(s["verdict"], "COMPILATION_ERROR", "{lang}: {s}");
        assert!(
            s["compileOutput"].as_str().unwrap().contains(needle),
            "{lang}: {s}"
        );
        assert_eq!(s["tests"], json!([]), "no test ran");
        assert_eq!(s["testCount"], 1);
    }
}

#[tokio::test]
async fn compiler_output_is_capped_at_64_kib() {
    let server = standalone(bin(), None);
    let body: String = (0..3000).map(|k| format!("  undefined_{k};\n")).collect();
    let source = format!("int main(void){{\n{body}}}\n");
    let (_, s) = judge(&server, json!({ "language": "c", "source": source })).await;
    assert_eq!(s["verdict"], "COMPILATION_ERROR", "{s}");
    let out = s["compileOutput"].as_str().unwrap();
    assert!(
        out.len() <= 64 * 1024 + 200,
        "compileOutput is {} bytes",
        out.len()
    );
    assert!(out.len() > 60 * 1024, "{} bytes", out.len());
    assert!(out.contains("truncated"), "says it was cut");
}

#[tokio::test]
async fn compiler_over_its_time_limit_is_a_compilation_error() {
    let server = standalone_with(&["--compile-cpu-ms", "1000", "--compile-wall-ms", "5000"]);
    let source = "constexpr long f(){ long s = 0; for (long i = 0; i < 200000; i++) for (long j = 0; j < 200000; j++) s += i ^ j; return s; }\nconstexpr long x = f();\nint main(){ return (int)(x & 1); }\n";
    let started = Instant::now();
    let (_, s) = judge(&server, json!({ "language": "cpp", "source": source })).await;
    assert_eq!(s["verdict"], "COMPILATION_ERROR", "{s}");
    assert!(
        s["compileOutput"]
            .as_str()
            .unwrap()
            .contains("the compiler exceeded its time limit"),
        "{s}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn compiler_over_its_memory_limit_is_a_compilation_error() {
    // cc1plus needs about 200 MB for <bits/stdc++.h> at -O2.
    let server = standalone_with(&["--compile-memory-kb", "65536"]);
    let source = format!(
        "// {}\n#include <bits/stdc++.h>\nint main(){{ std::map<int,int> m; std::cout << m.size(); }}\n",
        uuid::Uuid::new_v4()
    );
    let (_, s) = judge(&server, json!({ "language": "cpp", "source": source })).await;
    assert_eq!(s["verdict"], "COMPILATION_ERROR", "{s}");
    assert!(
        s["compileOutput"]
            .as_str()
            .unwrap()
            .contains("the compiler exceeded its memory limit"),
        "{s}"
    );
}

// ---------------------------------------------------------------------------------------
// Several tests against one compiled program

fn three_tests() -> Value {
    json!([
        { "stdin": "1", "expectedOutput": "2" },
        { "stdin": "2", "expectedOutput": "5" },
        { "stdin": "3", "expectedOutput": "6" },
    ])
}

async fn three_cpp_tests_second_fails(server: &Server) {
    // A fresh source, so that this run compiles (the cache may know DOUBLE_CPP).
    let source = format!("// {}\n{DOUBLE_CPP}", uuid::Uuid::new_v4());
    let (events, s) = judge(
        server,
        json!({ "language": "cpp", "source": source, "tests": three_tests() }),
    )
    .await;
    check_event_order(&events, true);
    // Without output events: Running k, TestFinished k, for k = 1..3, in order.
    let steps: Vec<String> = events
        .iter()
        .filter(|e| e["__typename"] != "OutputEvent")
        .map(|e| match e["__typename"].as_str().unwrap() {
            "RunningEvent" => format!("run {}/{}", e["test"], e["tests"]),
            "TestFinishedEvent" => format!(
                "done {} {}",
                e["result"]["index"],
                e["result"]["verdict"].as_str().unwrap()
            ),
            other => other.to_owned(),
        })
        .collect();
    assert_eq!(
        steps,
        [
            "QueuedEvent",
            "CompilingEvent",
            "run 1/3",
            "done 1 ACCEPTED",
            "run 2/3",
            "done 2 WRONG_ANSWER",
            "run 3/3",
            "done 3 ACCEPTED",
            "FinishedEvent"
        ]
    );
    for e in events.iter().filter(|e| e["__typename"] == "OutputEvent") {
        // Output of test k comes between Running k and TestFinished k.
        let seq = int(&e["seq"]);
        let running = events
            .iter()
            .rfind(|r| r["__typename"] == "RunningEvent" && int(&r["seq"]) < seq)
            .unwrap();
        assert_eq!(running["test"], e["test"], "{e}");
    }
    assert_eq!(s["verdict"], "WRONG_ANSWER");
    assert_eq!(s["testCount"], 3);
    let stdouts: Vec<&str> = s["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stdout"].as_str().unwrap())
        .collect();
    assert_eq!(stdouts, ["2\n", "4\n", "6\n"]);

    let (events, s) = judge(
        server,
        json!({ "language": "cpp", "source": source, "tests": three_tests(), "stopOnFirstFailure": true }),
    )
    .await;
    assert_eq!(
        s["compileCached"], true,
        "the same source again comes from the cache"
    );
    check_event_order(&events, true);
    assert_eq!(s["verdict"], "WRONG_ANSWER");
    assert_eq!(s["testCount"], 3, "testCount says how many were requested");
    assert_eq!(
        s["tests"].as_array().unwrap().len(),
        2,
        "test 3 has no result"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["__typename"] == "RunningEvent" && e["test"] == 3),
        "test 3 never started"
    );
}

#[tokio::test]
async fn three_cpp_tests_where_the_second_fails() {
    three_cpp_tests_second_fails(&standalone(bin(), None)).await;
}

// ---------------------------------------------------------------------------------------
// CANCELLED

fn proc_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn cancel(server: &Server, id: &str) -> Value {
    let body = graphql(
        &server.http(),
        "mutation($id: ID!) { cancel(id: $id) { id status verdict } }",
        json!({ "id": id }),
    )
    .await;
    body["data"]["cancel"].clone()
}

async fn cancel_running(server: &Server) {
    let source = "import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass\n";
    let id = submit(
        &server.http(),
        json!({ "language": "python3", "source": source, "limits": { "cpuTimeMs": 10000, "wallTimeMs": 20000 } }),
    )
    .await;
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let op = ws.subscribe(FULL, json!({ "id": id })).await;
    let mut seen = Vec::new();
    let pid = loop {
        let (mut batch, completed) = ws.collect(&op, 1, Duration::from_secs(30)).await;
        assert!(!completed, "finished before cancel: {seen:?}");
        let e = batch.pop().unwrap();
        seen.push(e.clone());
        if e["__typename"] == "OutputEvent" {
            break e["chunk"].as_str().unwrap().trim().parse::<i64>().unwrap();
        }
    };
    assert!(proc_alive(pid), "program {pid} runs");
    let started = Instant::now();
    let answer = cancel(server, &id).await;
    assert_eq!(answer["verdict"], "CANCELLED", "{answer}");
    let (rest, completed) = ws.collect(&op, usize::MAX, Duration::from_secs(5)).await;
    let latency = started.elapsed();
    assert!(completed);
    let last = rest.last().unwrap();
    assert_eq!(last["__typename"], "FinishedEvent");
    assert_eq!(last["submission"]["verdict"], "CANCELLED");
    assert!(
        latency < Duration::from_secs(1),
        "FinishedEvent after {latency:?}"
    );
    let killed = loop {
        if !proc_alive(pid) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "program {pid} still running 1 s after cancel"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    eprintln!("cancel: FinishedEvent after {latency:?}, program gone after {killed:?}");
    let finished: Vec<Value> = rest
        .iter()
        .filter(|e| e["__typename"] == "FinishedEvent")
        .cloned()
        .collect();
    assert_eq!(finished.len(), 1, "exactly one FinishedEvent");
    // The slot is free again: the next submission runs.
    let (_, s) = judge(
        server,
        json!({ "language": "python3", "source": "print(1)" }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED");
}

#[tokio::test]
async fn cancel_while_running_kills_the_program_at_once() {
    cancel_running(&standalone(bin(), None)).await;
}

#[tokio::test]
async fn cancel_while_queued_never_runs_it() {
    let server = standalone_with(&["--concurrency", "1"]);
    let busy = submit(
        &server.http(),
        json!({ "language": "bash", "source": "sleep 10", "limits": { "wallTimeMs": 20000 } }),
    )
    .await;
    let queued = submit(
        &server.http(),
        json!({ "language": "bash", "source": "echo ran" }),
    )
    .await;
    let answer = cancel(&server, &queued).await;
    assert_eq!(answer["status"], "FINISHED", "{answer}");
    assert_eq!(answer["verdict"], "CANCELLED", "{answer}");
    let again = cancel(&server, &queued).await;
    assert_eq!(
        again, answer,
        "cancelling a finished submission changes nothing"
    );
    let started = Instant::now();
    assert_eq!(cancel(&server, &busy).await["verdict"], "CANCELLED");
    let events = events_of(&server, &busy, FULL).await;
    assert_eq!(events.last().unwrap()["submission"]["verdict"], "CANCELLED");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Give the worker time to take (and skip) the cancelled job, then check it never ran.
    let (_, s) = judge(
        &server,
        json!({ "language": "bash", "source": "echo next" }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED");
    let events = events_of(&server, &queued, FULL).await;
    assert_eq!(
        kinds(&events),
        ["QueuedEvent", "FinishedEvent"],
        "{events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// INTERNAL_ERROR

/// A toolchain that is missing is refused at submit (BAD_USER_INPUT, see
/// tests/languages.rs); one that is present but fails in the sandbox is our error.
#[tokio::test]
async fn broken_toolchain_is_an_internal_error_and_the_server_stays_healthy() {
    let dir = std::env::temp_dir().join(format!("verdict-langs-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("languages.toml");
    // Executable by anyone, but outside the sandbox's read paths: exec fails in the sandbox.
    let interpreter = dir.join("interpreter");
    std::fs::write(&interpreter, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(
        &interpreter,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        &file,
        r#"
[[language]]
id = "broken"
name = "Broken"
source = "main.txt"
version = ["/bin/echo", "broken 1.0"]
run = ["INTERPRETER", "main.txt"]

[[language]]
id = "python3"
name = "Python 3"
source = "main.py"
version = ["/usr/bin/python3", "--version"]
run = ["/usr/bin/python3", "-S", "main.py"]
"#
        .replace("INTERPRETER", interpreter.to_str().unwrap()),
    )
    .unwrap();
    let server = standalone_with(&["--languages", file.to_str().unwrap()]);
    let (events, s) = judge(&server, json!({ "language": "broken", "source": "x" })).await;
    assert_eq!(kinds(&events).last(), Some(&"FinishedEvent"));
    assert_eq!(s["verdict"], "INTERNAL_ERROR", "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("internal error"),
        "{s}"
    );
    let health = reqwest::get(format!("{}/healthz", server.http()))
        .await
        .unwrap();
    assert!(health.status().is_success());
    let (_, s) = judge(
        &server,
        json!({ "language": "python3", "source": "print(1)" }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Live output

#[tokio::test]
async fn live_output_arrives_while_the_program_runs() {
    let server = standalone(bin(), None);
    let source =
        "import time\nfor k in range(10):\n    print(k, flush=True)\n    time.sleep(0.1)\n";
    let id = submit(
        &server.http(),
        json!({ "language": "python3", "source": source }),
    )
    .await;
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let op = ws.subscribe(FULL, json!({ "id": id })).await;
    let mut arrivals = Vec::new();
    let mut text = String::new();
    loop {
        let (batch, completed) = ws.collect(&op, 1, Duration::from_secs(30)).await;
        if completed {
            break;
        }
        let e = &batch[0];
        if e["__typename"] == "OutputEvent" {
            arrivals.push(Instant::now());
            text.push_str(e["chunk"].as_str().unwrap());
        }
    }
    let expected: String = (0..10).map(|k| format!("{k}\n")).collect();
    assert_eq!(text, expected);
    assert!(arrivals.len() >= 5, "{} output events", arrivals.len());
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(600),
        "output events spread over {spread:?}, not all at the end"
    );
    // Opting out: `output: false` leaves the OutputEvents out.
    let quiet =
        r#"subscription($id: ID!) { submissionEvents(id: $id, output: false) { __typename seq } }"#;
    let events = events_of(&server, &id, quiet).await;
    assert!(!kinds(&events).contains(&"OutputEvent"), "{events:?}");
    assert_eq!(kinds(&events).last(), Some(&"FinishedEvent"));

    // A chatty program (thousands of flushed lines in a second) makes few events: output
    // is batched, at most one event per stream per 50 ms.
    let source = "import sys, time\nt = time.time()\nk = 0\nwhile time.time() - t < 1.0:\n    print(k, flush=True)\n    k += 1\n    time.sleep(0.0002)\n";
    let (events, s) = judge(&server, json!({ "language": "python3", "source": source })).await;
    assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    let stdout = s["tests"][0]["stdout"].as_str().unwrap();
    let lines = stdout.lines().count();
    let outputs: Vec<&Value> = events
        .iter()
        .filter(|e| e["__typename"] == "OutputEvent")
        .collect();
    let live: String = outputs
        .iter()
        .map(|e| e["chunk"].as_str().unwrap())
        .collect();
    assert_eq!(live, stdout, "live output adds up to the final stdout");
    eprintln!(
        "{lines} flushed lines in 1 s -> {} OutputEvents",
        outputs.len()
    );
    assert!(lines > 500, "{lines}");
    assert!(outputs.len() <= 40, "{} OutputEvents", outputs.len());
}

// ---------------------------------------------------------------------------------------
// Limits

#[tokio::test]
async fn limits_are_configurable_and_out_of_range_is_a_clear_error() {
    let server = standalone_with(&["--default-cpu-ms", "300", "--max-cpu-ms", "3000"]);
    let q = "mutation($i: SubmitInput!) { submit(input: $i) { id } }";
    let body = graphql(
        &server.http(),
        q,
        json!({ "i": { "language": "python3", "source": "", "limits": { "cpuTimeMs": 4000 } } }),
    )
    .await;
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["field"], "cpuTimeMs", "{body}");
    assert!(
        error["message"].as_str().unwrap().contains("3000"),
        "{body}"
    );
    // The default applies when the submission names none.
    let (_, s) = judge(
        &server,
        json!({ "language": "python3", "source": "while True:\n    pass\n" }),
    )
    .await;
    assert_eq!(s["verdict"], "TIME_LIMIT_EXCEEDED");
    let cpu = int(&s["tests"][0]["timeMs"]);
    eprintln!("busy loop with the default 300 ms CPU limit: {cpu} ms");
    assert!((280..800).contains(&cpu), "default 300 ms CPU, used {cpu}");
    // A default above the maximum refuses to start.
    let out = Command::new(bin())
        .args([
            "standalone",
            "--listen",
            "127.0.0.1:0",
            "--default-memory-kb",
            "9000",
            "--max-memory-kb",
            "8000",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--max-memory-kb"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// Compile cache

#[tokio::test]
async fn compile_cache_skips_compiling_identical_source() {
    let cache = std::env::temp_dir().join(format!("verdict-cache-{}", uuid::Uuid::new_v4()));
    let server = standalone_with(&["--compile-cache-dir", cache.to_str().unwrap()]);
    let source = format!(
        "// {}\n#include <iostream>\n#include <vector>\n#include <algorithm>\n#include <map>\nint main(){{ long n; std::cin >> n; std::map<long,long> m; m[n] = 2*n; std::cout << m[n] << \"\\n\"; }}\n",
        uuid::Uuid::new_v4()
    );
    let tests: Vec<Value> = (1..=10)
        .map(|k| json!({ "stdin": k.to_string(), "expectedOutput": (2 * k).to_string() }))
        .collect();
    let input = json!({ "language": "cpp", "source": source, "tests": tests });
    let mut times = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let (events, s) = judge(&server, input.clone()).await;
        times.push(started.elapsed());
        runs.push((events, s));
    }
    let (first_events, first) = &runs[0];
    let (second_events, second) = &runs[1];
    assert_eq!(first["verdict"], "ACCEPTED", "{first}");
    assert_eq!(second["verdict"], "ACCEPTED", "{second}");
    assert_eq!(first["compileCached"], false);
    assert_eq!(second["compileCached"], true);
    check_event_order(first_events, true);
    check_event_order(second_events, true);
    assert_eq!(first_events[1]["cached"], false);
    assert_eq!(
        second_events[1]["cached"], true,
        "the event stream shows that compiling was skipped"
    );
    eprintln!(
        "10-test C++: submit -> FinishedEvent {:?} compiled, {:?} cached",
        times[0], times[1]
    );
    assert!(times[1] < times[0], "cached is faster: {times:?}");
    // Artifacts are stored outside every sandbox, private to the worker.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cache).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "cache dir is private: {mode:o}");
    // A different source is a different key.
    let (_, third) = judge(
        &server,
        json!({ "language": "cpp", "source": format!("{source}\n// changed"), "tests": [{ "stdin": "1", "expectedOutput": "2" }] }),
    )
    .await;
    assert_eq!(third["compileCached"], false);
    // Java: several class files, none executable, restored from the cache.
    let java = format!(
        "// {}\npublic class Main {{ static class Inner {{ int v = 7; }} public static void main(String[] a) {{ System.out.println(new Inner().v); }} }}",
        uuid::Uuid::new_v4()
    );
    for cached in [false, true] {
        let (_, s) = judge(&server, json!({ "language": "java", "source": java })).await;
        assert_eq!(s["verdict"], "ACCEPTED", "{s}");
        assert_eq!(s["compileCached"], cached, "{s}");
        assert_eq!(s["tests"][0]["stdout"], "7\n");
    }
    let _ = std::fs::remove_dir_all(&cache);
}

// ---------------------------------------------------------------------------------------
// The same on server + worker around Redis

#[tokio::test]
async fn judging_on_redis_with_server_and_worker() {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let _w = worker(bin(), &url, &ns, 2);
    three_cpp_tests_second_fails(&server).await;
    let (_, s) = judge(
        &server,
        json!({ "language": "python3", "source": "x = b'x' * (512 << 20)\n", "limits": { "memoryKb": 65536 } }),
    )
    .await;
    assert_eq!(s["verdict"], "MEMORY_LIMIT_EXCEEDED", "{s}");
    let (_, s) = judge(
        &server,
        json!({ "language": "c", "source": "#include <signal.h>\nint main(void){ raise(SIGSEGV); }" }),
    )
    .await;
    assert_eq!(s["verdict"], "RUNTIME_ERROR", "{s}");
    assert_eq!(s["tests"][0]["signal"], 11);
    let (_, s) = judge(
        &server,
        json!({ "language": "python3", "source": ECHO_PY, "compare": "FLOAT", "epsilon": 0.001,
                "tests": [{ "stdin": "0.3333", "expectedOutput": "0.33333333" }] }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    cancel_running(&server).await;
}

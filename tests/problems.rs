//! Problems end to end (issue 15): stored tests with groups and points, secrecy of hidden
//! tests for non-admin keys, KATTIS and TESTLIB checkers, version pinning, roles, Kattis
//! packages. Real processes; the main flows run on `verdict standalone` and on `verdict
//! server` + `verdict worker` around a real Redis.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use verdict_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

const ADMIN: &str = "admin-key-0123456789";
const USER: &str = "user-key-0123456789";

fn sha256_hex(key: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha256sum", "sh", key])
        .output()
        .expect("sha256sum");
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn keys_env() -> String {
    format!(
        "admin:{}:admin,user:{}",
        sha256_hex(ADMIN),
        sha256_hex(USER)
    )
}

fn spawn(args: &[&str], envs: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("VERDICT_REDIS_URL")
        .env_remove("VERDICT_REDIS_URL_FILE")
        .env("VERDICT_API_KEYS", keys_env());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child: Child = cmd.spawn().expect("spawn verdict");
    Proc(child)
}

fn wait_port(proc: &mut Proc, port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = proc.0.try_wait().unwrap() {
            panic!("verdict exited: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no listen");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A deployment under test: one server address, and what keeps its processes alive.
struct Judge {
    server: Server,
    _others: Vec<Proc>,
    redis: Option<(String, String)>,
}

impl Judge {
    fn standalone(extra: &[&str]) -> Judge {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["standalone", "--listen", &listen];
        args.extend_from_slice(extra);
        let mut proc = spawn(&args, &[]);
        wait_port(&mut proc, port);
        Judge {
            server: Server { proc, port },
            _others: Vec::new(),
            redis: None,
        }
    }

    /// `verdict server` and (unless `workers` is 0) one `verdict worker` on Redis.
    fn on_redis(workers: usize) -> Judge {
        let (url, ns) = (redis_url(), namespace());
        let envs = [
            ("VERDICT_REDIS_URL", url.clone()),
            ("VERDICT_REDIS_NAMESPACE", ns.clone()),
        ];
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut proc = spawn(&["server", "--listen", &listen], &envs);
        wait_port(&mut proc, port);
        let mut judge = Judge {
            server: Server { proc, port },
            _others: Vec::new(),
            redis: Some((url, ns)),
        };
        for _ in 0..workers {
            judge.add_worker();
        }
        judge
    }

    fn add_worker(&mut self) {
        let (url, ns) = self.redis.clone().unwrap();
        let envs = [("VERDICT_REDIS_URL", url), ("VERDICT_REDIS_NAMESPACE", ns)];
        self._others
            .push(spawn(&["worker", "--concurrency", "1"], &envs));
    }

    async fn gql(&self, key: &str, query: &str, variables: Value) -> Value {
        reqwest::Client::new()
            .post(format!("{}/graphql", self.server.http()))
            .bearer_auth(key)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn put(&self, input: Value) -> Value {
        let body = self
            .gql(
                ADMIN,
                "mutation($i: ProblemInput!) { putProblem(input: $i) { id version testCount maxScore groups { name points testCount } } }",
                json!({ "i": input }),
            )
            .await;
        assert!(body["errors"].is_null(), "putProblem: {body}");
        body["data"]["putProblem"].clone()
    }

    async fn submit(&self, key: &str, input: Value) -> String {
        let body = self
            .gql(
                key,
                "mutation($i: SubmitInput!) { submit(input: $i) { id status problemId problemVersion maxScore } }",
                json!({ "i": input }),
            )
            .await;
        assert_eq!(body["data"]["submit"]["status"], "QUEUED", "{body}");
        body["data"]["submit"]["id"].as_str().unwrap().to_owned()
    }

    /// Every event of `id` as `key` sees them, over graphql-transport-ws.
    async fn events(&self, key: &str, id: &str) -> Vec<Value> {
        let mut request = self
            .server
            .ws("/graphql")
            .into_client_request_with_protocol();
        let _ = &mut request;
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let send = |v: Value| Message::Text(v.to_string().into());
        ws.send(send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {key}") } })))
            .await
            .unwrap();
        ws.send(send(json!({ "id": "1", "type": "subscribe", "payload": { "query": EVENTS_ALL, "variables": { "id": id } } })))
            .await
            .unwrap();
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, ws.next())
                .await
                .expect("events in time")
                .expect("socket open")
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let frame: Value = serde_json::from_str(&text).unwrap();
            match frame["type"].as_str().unwrap_or_default() {
                "next" => {
                    assert!(frame["payload"]["errors"].is_null(), "{frame}");
                    events.push(frame["payload"]["data"]["submissionEvents"].clone());
                }
                "complete" => return events,
                "error" => panic!("subscription error: {frame}"),
                _ => {}
            }
        }
    }

    async fn record(&self, key: &str, id: &str) -> Value {
        let body = self
            .gql(
                key,
                &format!("query($id: ID!) {{ submission(id: $id) {{ {SUBMISSION} }} }}"),
                json!({ "id": id }),
            )
            .await;
        assert!(body["errors"].is_null(), "{body}");
        body["data"]["submission"].clone()
    }

    /// Submits as `key`, waits for the end; returns (events, final record).
    async fn judge(&self, key: &str, input: Value) -> (Vec<Value>, Value) {
        let id = self.submit(key, input).await;
        let events = self.events(key, &id).await;
        let record = self.record(key, &id).await;
        (events, record)
    }
}

trait WsRequest {
    fn into_client_request_with_protocol(
        self,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request;
}

impl WsRequest for String {
    fn into_client_request_with_protocol(
        self,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut r = self.into_client_request().unwrap();
        r.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        r
    }
}

const SUBMISSION: &str =
    "id status verdict message score maxScore problemId problemVersion testCount compileOutput
  groups { name verdict score maxScore }
  tests { index verdict name group sample score stdout stderr checkerMessage exitCode timeMs }";

const EVENTS_ALL: &str = r#"subscription($id: ID!) { submissionEvents(id: $id) {
  __typename seq
  ... on RunningEvent { test tests }
  ... on OutputEvent { test stream chunk }
  ... on TestFinishedEvent { result { index verdict name group sample score stdout stderr checkerMessage } }
  ... on FinishedEvent { submission { id verdict score maxScore groups { name verdict score maxScore }
      tests { index verdict sample stdout stderr checkerMessage score } } }
} }"#;

/// A+B: 2 samples (group "samples", 0 points), 4 hidden tests in g1 (30) and 4 in g2
/// (70, big numbers).
fn a_plus_b(id: &str) -> Value {
    let mut tests = vec![
        json!({ "name": "s1", "stdin": "1 2\n", "expectedOutput": "3\n", "sample": true, "group": "samples" }),
        json!({ "name": "s2", "stdin": "5 7\n", "expectedOutput": "12\n", "sample": true, "group": "samples" }),
    ];
    for k in 0..4 {
        let (a, b) = (k + 10, k * 3);
        tests.push(json!({ "name": format!("g1-{k}"), "stdin": format!("{a} {b}\n"), "expectedOutput": format!("{}\n", a + b), "group": "g1" }));
    }
    for k in 0..4 {
        let (a, b) = (1_000_000 + k, 2_000_000 * (k + 1));
        tests.push(json!({ "name": format!("g2-{k}"), "stdin": format!("{a} {b}\n"), "expectedOutput": format!("{}\n", a + b), "group": "g2" }));
    }
    json!({
        "id": id,
        "title": "A plus B",
        "statement": "Print a + b.",
        "limits": { "cpuTimeMs": 1000, "wallTimeMs": 3000 },
        "tests": tests,
        "groups": [
            { "name": "samples", "points": 0.0 },
            { "name": "g1", "points": 30.0 },
            { "name": "g2", "points": 70.0, "scoring": "ALL_OR_NOTHING" },
        ],
    })
}

const CORRECT: &str = "a, b = map(int, input().split())\nprint(a + b)\n";
const WRONG_ON_G2: &str = "a, b = map(int, input().split())\nprint(a + b if a < 1000000 else 0)\n";
const SPIN: &str = "while True:\n    pass\n";

async fn scores_100_30_and_0(judge: &Judge) {
    let p = judge.put(a_plus_b("aplusb")).await;
    assert_eq!(p["version"], 1);
    assert_eq!(p["testCount"], 10);
    assert_eq!(p["maxScore"], 100.0);

    let (_, r) = judge
        .judge(
            USER,
            json!({ "problemId": "aplusb", "language": "python3", "source": CORRECT }),
        )
        .await;
    assert_eq!(r["verdict"], "ACCEPTED", "{r}");
    assert_eq!(r["score"], 100.0, "{r}");
    assert_eq!(r["maxScore"], 100.0);
    assert_eq!(r["problemVersion"], 1);
    assert_eq!(r["tests"].as_array().unwrap().len(), 10);
    assert!(r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["verdict"] == "ACCEPTED"));

    let (_, r) = judge
        .judge(
            USER,
            json!({ "problemId": "aplusb", "language": "python3", "source": WRONG_ON_G2 }),
        )
        .await;
    assert_eq!(r["verdict"], "WRONG_ANSWER", "{r}");
    assert_eq!(r["score"], 30.0, "{r}");
    let groups = r["groups"].as_array().unwrap();
    assert_eq!(
        groups[1],
        json!({ "name": "g1", "verdict": "ACCEPTED", "score": 30.0, "maxScore": 30.0 })
    );
    assert_eq!(
        groups[2],
        json!({ "name": "g2", "verdict": "WRONG_ANSWER", "score": 0.0, "maxScore": 70.0 })
    );
    let tests = r["tests"].as_array().unwrap();
    assert!(tests[..6].iter().all(|t| t["verdict"] == "ACCEPTED"), "{r}");
    assert!(
        tests[6..]
            .iter()
            .all(|t| t["verdict"] == "WRONG_ANSWER" && t["group"] == "g2"),
        "{r}"
    );
    assert_eq!(tests[2]["name"], "g1-0");
    assert_eq!(tests[0]["sample"], true);
    assert_eq!(tests[2]["sample"], false);

    // TLE everywhere; stopOnFirstFailure skips the rest of each group, not of the submission.
    let (_, r) = judge
        .judge(
            USER,
            json!({ "problemId": "aplusb", "language": "python3", "source": SPIN, "stopOnFirstFailure": true }),
        )
        .await;
    assert_eq!(r["verdict"], "TIME_LIMIT_EXCEEDED", "{r}");
    assert_eq!(r["score"], 0.0, "{r}");
    let tests = r["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 3, "one test per group: {r}");
    let idx: Vec<_> = tests.iter().map(|t| t["index"].as_i64().unwrap()).collect();
    assert_eq!(idx, [1, 3, 7]);
    assert!(
        r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["verdict"] == "TIME_LIMIT_EXCEEDED"),
        "{r}"
    );
}

#[tokio::test]
async fn a_plus_b_scores_100_30_and_0_standalone() {
    scores_100_30_and_0(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn a_plus_b_scores_100_30_and_0_on_redis() {
    scores_100_30_and_0(&Judge::on_redis(1)).await;
}

#[tokio::test]
async fn a_non_admin_key_gets_forbidden_for_put_and_delete_standalone() {
    a_non_admin_key_gets_forbidden_for_put_and_delete(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn a_non_admin_key_gets_forbidden_for_put_and_delete_on_redis() {
    a_non_admin_key_gets_forbidden_for_put_and_delete(&Judge::on_redis(1)).await;
}

async fn a_non_admin_key_gets_forbidden_for_put_and_delete(judge: &Judge) {
    let body = judge
        .gql(
            USER,
            "mutation($i: ProblemInput!) { putProblem(input: $i) { id } }",
            json!({ "i": a_plus_b("nope") }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    let body = judge
        .gql(USER, "mutation { deleteProblem(id: \"nope\") }", json!({}))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    let body = judge
        .gql(ADMIN, "{ problem(id: \"nope\") { id } }", json!({}))
        .await;
    assert_eq!(
        body["data"]["problem"],
        Value::Null,
        "no partial problem: {body}"
    );
}

#[tokio::test]
async fn bad_problem_input_is_bad_user_input_naming_the_field() {
    let judge = Judge::standalone(&[]);
    let mut p = a_plus_b("Bad Id");
    let body = judge
        .gql(
            ADMIN,
            "mutation($i: ProblemInput!) { putProblem(input: $i) { id } }",
            json!({ "i": p.clone() }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    assert_eq!(body["errors"][0]["extensions"]["field"], "id", "{body}");
    p["id"] = json!("ok");
    p["tests"][3]["group"] = json!("nosuch");
    let body = judge
        .gql(
            ADMIN,
            "mutation($i: ProblemInput!) { putProblem(input: $i) { id } }",
            json!({ "i": p }),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "group", "{body}");
    // Over --max-problem-bytes.
    let judge = Judge::standalone(&["--max-problem-bytes", "100"]);
    let body = judge
        .gql(
            ADMIN,
            "mutation($i: ProblemInput!) { putProblem(input: $i) { id } }",
            json!({ "i": a_plus_b("big") }),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "tests", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("--max-problem-bytes"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------
// Secrecy: one test per rule, as a key that is not admin.

/// Hidden answers carry this marker; no non-admin view may ever contain it.
const SECRET: &str = "SECRET-ANSWER-5150";
const SECRET_INPUT: &str = "SECRET-INPUT-9091";

fn secret_problem(id: &str) -> Value {
    json!({
        "id": id,
        "title": "Echo",
        "limits": { "cpuTimeMs": 5000, "wallTimeMs": 10000 },
        "tests": [
            { "name": "sample", "stdin": "hello\n", "expectedOutput": "hello\n", "sample": true },
            { "name": "hidden1", "stdin": format!("{SECRET_INPUT} {SECRET}\n"), "expectedOutput": format!("{SECRET_INPUT} {SECRET}\n") },
            { "name": "hidden2", "stdin": format!("{SECRET_INPUT}-2 {SECRET}-2\n"), "expectedOutput": format!("{SECRET_INPUT}-2 {SECRET}-2\n") },
        ],
    })
}

/// Prints its stdin on stdout and stderr.
const ECHO: &str = "import sys\nd = sys.stdin.read()\nsys.stdout.write(d)\nsys.stderr.write(d)\n";

async fn echo_run(judge: &Judge) -> (String, Vec<Value>, Value) {
    judge.put(secret_problem("echo")).await;
    let id = judge
        .submit(
            USER,
            json!({ "problemId": "echo", "language": "python3", "source": ECHO }),
        )
        .await;
    let events = judge.events(USER, &id).await;
    let record = judge.record(USER, &id).await;
    (id, events, record)
}

fn assert_no_secret(what: &str, v: &Value) {
    let text = v.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains(SECRET_INPUT),
        "{what} leaks: {text}"
    );
}

#[tokio::test]
async fn secrecy_problem_queries_never_show_hidden_input_or_answer_standalone() {
    secrecy_problem_queries_never_show_hidden_input_or_answer(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn secrecy_problem_queries_never_show_hidden_input_or_answer_on_redis() {
    secrecy_problem_queries_never_show_hidden_input_or_answer(&Judge::on_redis(1)).await;
}

async fn secrecy_problem_queries_never_show_hidden_input_or_answer(judge: &Judge) {
    judge.put(secret_problem("echo")).await;
    for key in [USER, ADMIN] {
        let body = judge
            .gql(key, "{ problems { id testCount samples { name stdin expectedOutput } groups { name testCount } } problem(id: \"echo\") { samples { stdin expectedOutput } } }", json!({}))
            .await;
        assert!(body["errors"].is_null(), "{body}");
        assert_eq!(body["data"]["problems"][0]["testCount"], 3);
        assert_eq!(
            body["data"]["problems"][0]["samples"],
            json!([{ "name": "sample", "stdin": "hello\n", "expectedOutput": "hello\n" }])
        );
        assert_no_secret("problem queries", &body);
    }
}

#[tokio::test]
async fn secrecy_no_output_event_for_a_hidden_test_standalone() {
    secrecy_no_output_event_for_a_hidden_test(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn secrecy_no_output_event_for_a_hidden_test_on_redis() {
    secrecy_no_output_event_for_a_hidden_test(&Judge::on_redis(1)).await;
}

async fn secrecy_no_output_event_for_a_hidden_test(judge: &Judge) {
    let (_, events, record) = echo_run(judge).await;
    assert_eq!(record["verdict"], "ACCEPTED", "{record}");
    let outputs: Vec<_> = events
        .iter()
        .filter(|e| e["__typename"] == "OutputEvent")
        .collect();
    assert!(outputs.iter().all(|e| e["test"] == 1), "{outputs:?}");
    assert!(!outputs.is_empty(), "the sample's output is live");
}

#[tokio::test]
async fn secrecy_test_finished_events_of_hidden_tests_carry_no_output_standalone() {
    secrecy_test_finished_events_of_hidden_tests_carry_no_output(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn secrecy_test_finished_events_of_hidden_tests_carry_no_output_on_redis() {
    secrecy_test_finished_events_of_hidden_tests_carry_no_output(&Judge::on_redis(1)).await;
}

async fn secrecy_test_finished_events_of_hidden_tests_carry_no_output(judge: &Judge) {
    let (_, events, _) = echo_run(judge).await;
    let finished: Vec<_> = events
        .iter()
        .filter(|e| e["__typename"] == "TestFinishedEvent")
        .collect();
    assert_eq!(finished.len(), 3);
    assert_eq!(
        finished[0]["result"]["stdout"], "hello\n",
        "samples show output"
    );
    for e in &finished[1..] {
        assert_eq!(e["result"]["stdout"], "");
        assert_eq!(e["result"]["stderr"], "");
        assert_eq!(e["result"]["verdict"], "ACCEPTED");
        assert_eq!(e["result"]["group"], "all");
    }
    assert_no_secret("TestFinishedEvents", &json!(finished));
}

#[tokio::test]
async fn secrecy_finished_event_and_submission_record_carry_no_hidden_output_standalone() {
    secrecy_finished_event_and_submission_record_carry_no_hidden_output(&Judge::standalone(&[]))
        .await;
}

#[tokio::test]
async fn secrecy_finished_event_and_submission_record_carry_no_hidden_output_on_redis() {
    secrecy_finished_event_and_submission_record_carry_no_hidden_output(&Judge::on_redis(1)).await;
}

async fn secrecy_finished_event_and_submission_record_carry_no_hidden_output(judge: &Judge) {
    let (id, events, record) = echo_run(judge).await;
    let last = events.last().unwrap();
    assert_eq!(last["__typename"], "FinishedEvent");
    assert_no_secret("FinishedEvent", last);
    assert_no_secret("submission(id)", &record);
    assert_no_secret("every event", &json!(events));
    assert_eq!(record["tests"][1]["stdout"], "");
    assert_eq!(record["tests"][0]["stdout"], "hello\n");
    // An admin key sees everything, the client's submissions too (design: roles).
    let full = judge.record(ADMIN, &id).await;
    assert_eq!(
        full["tests"][1]["stdout"],
        format!("{SECRET_INPUT} {SECRET}\n"),
        "{full}"
    );
}

#[tokio::test]
async fn secrecy_admin_keys_see_hidden_output_in_their_submissions_standalone() {
    secrecy_admin_keys_see_hidden_output_in_their_submissions(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn secrecy_admin_keys_see_hidden_output_in_their_submissions_on_redis() {
    secrecy_admin_keys_see_hidden_output_in_their_submissions(&Judge::on_redis(1)).await;
}

async fn secrecy_admin_keys_see_hidden_output_in_their_submissions(judge: &Judge) {
    judge.put(secret_problem("echo")).await;
    let (_, record) = judge
        .judge(
            ADMIN,
            json!({ "problemId": "echo", "language": "python3", "source": ECHO }),
        )
        .await;
    assert!(
        record["tests"][1]["stdout"]
            .as_str()
            .unwrap()
            .contains(SECRET),
        "{record}"
    );
}

#[tokio::test]
async fn secrecy_no_checker_message_on_a_hidden_test_standalone() {
    secrecy_no_checker_message_on_a_hidden_test(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn secrecy_no_checker_message_on_a_hidden_test_on_redis() {
    secrecy_no_checker_message_on_a_hidden_test(&Judge::on_redis(1)).await;
}

async fn secrecy_no_checker_message_on_a_hidden_test(judge: &Judge) {
    let mut p = secret_problem("echochk");
    p["checker"] = json!({ "program": { "protocol": "KATTIS", "language": "python3", "source": KATTIS_ECHO_CHECKER } });
    judge.put(p).await;
    let (events, record) = judge
        .judge(
            USER,
            json!({ "problemId": "echochk", "language": "python3", "source": ECHO }),
        )
        .await;
    assert_eq!(record["verdict"], "ACCEPTED", "{record}");
    assert_eq!(
        record["tests"][0]["checkerMessage"], "checked hello",
        "{record}"
    );
    assert_eq!(
        record["tests"][1]["checkerMessage"],
        Value::Null,
        "{record}"
    );
    assert_eq!(
        record["tests"][2]["checkerMessage"],
        Value::Null,
        "{record}"
    );
    assert_no_secret("checker messages", &json!([events, record]));
}

/// Accepts when the output equals the input; tells it in judgemessage.txt.
const KATTIS_ECHO_CHECKER: &str = r#"import sys
inp = open(sys.argv[1]).read()
out = sys.stdin.read()
open(sys.argv[3] + "/judgemessage.txt", "w").write("checked " + ("" if out == inp else "diff ") + inp)
sys.exit(42 if out == inp else 43)
"#;

/// Looks for the answer files everywhere it can reach and reports what it found.
const SEARCHER: &str = r#"import os, stat, sys, time
needle = ("SECRET" + "-" + "ANSWER").encode()
found = []
start = time.time()
roots = ["/", os.getcwd(), os.path.dirname(os.getcwd()), "/tmp", "/var", "/run", "/dev/shm", "/home", "/root", "/proc/self", "/proc/1"]
for root in roots:
    for d, dirs, files in os.walk(root):
        if time.time() - start > 3:
            break
        if d.startswith("/proc") and d not in ("/proc/self", "/proc/1"):
            dirs[:] = []
        for f in files:
            p = os.path.join(d, f)
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode) and needle in os.read(fd, 1 << 20):
                        found.append(p)
                finally:
                    os.close(fd)
            except Exception:
                pass
print("FOUND", len(found), " ".join(found).replace("SECRET", "S"))
"#;

#[tokio::test]
async fn secrecy_answer_files_are_not_readable_from_the_sandbox_standalone() {
    secrecy_answer_files_are_not_readable_from_the_sandbox(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn secrecy_answer_files_are_not_readable_from_the_sandbox_on_redis() {
    secrecy_answer_files_are_not_readable_from_the_sandbox(&Judge::on_redis(1)).await;
}

async fn secrecy_answer_files_are_not_readable_from_the_sandbox(judge: &Judge) {
    let mut p = secret_problem("search");
    p["checker"] = json!({ "compare": "TOKENS" });
    judge.put(p).await;
    // As a non-admin: the sample's output (visible) says what the search found.
    let (_, record) = judge
        .judge(
            USER,
            json!({ "problemId": "search", "language": "python3", "source": SEARCHER }),
        )
        .await;
    assert_no_secret("searcher", &record);
    assert_eq!(record["tests"][0]["stdout"], "FOUND 0 \n", "{record}");
    // As admin, on every test (the hidden ones ran while their answers were stored).
    let (_, record) = judge
        .judge(
            ADMIN,
            json!({ "problemId": "search", "language": "python3", "source": SEARCHER }),
        )
        .await;
    for t in record["tests"].as_array().unwrap() {
        assert_eq!(t["stdout"], "FOUND 0 \n", "{record}");
    }
}

// ---------------------------------------------------------------------------------------
// Checkers

/// Print any two positive integers whose product is n (many correct outputs).
fn factor_problem(id: &str, checker: Value) -> Value {
    let tests: Vec<Value> = [12, 30, 49, 100]
        .iter()
        .enumerate()
        .map(|(k, n)| json!({ "stdin": format!("{n}\n"), "expectedOutput": format!("1 {n}\n"), "sample": k == 0 }))
        .collect();
    json!({ "id": id, "title": "Factor", "tests": tests, "checker": checker })
}

const KATTIS_FACTOR: &str = r#"import sys
n = int(open(sys.argv[1]).read())
try:
    a, b = map(int, sys.stdin.read().split())
    ok = a >= 1 and b >= 1 and a * b == n
except Exception:
    ok = False
with open(sys.argv[3] + "/judgemessage.txt", "w") as f:
    f.write("good factors" if ok else "bad factors")
sys.exit(42 if ok else 43)
"#;

#[tokio::test]
async fn a_kattis_checker_accepts_any_valid_answer_standalone() {
    a_kattis_checker_accepts_any_valid_answer(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn a_kattis_checker_accepts_any_valid_answer_on_redis() {
    a_kattis_checker_accepts_any_valid_answer(&Judge::on_redis(1)).await;
}

async fn a_kattis_checker_accepts_any_valid_answer(judge: &Judge) {
    judge
        .put(factor_problem("factor", json!({ "program": { "protocol": "KATTIS", "language": "python3", "source": KATTIS_FACTOR } })))
        .await;
    // Prints the largest proper factor pair, not the expected "1 n".
    let other = "import math\nn = int(input())\nd = max(k for k in range(1, math.isqrt(n) + 1) if n % k == 0)\nprint(d, n // d)\n";
    let (_, r) = judge
        .judge(
            ADMIN,
            json!({ "problemId": "factor", "language": "python3", "source": other }),
        )
        .await;
    assert_eq!(r["verdict"], "ACCEPTED", "{r}");
    assert_eq!(
        r["tests"][1]["checkerMessage"], "good factors",
        "admin sees it: {r}"
    );
    let (_, r) = judge
        .judge(
            ADMIN,
            json!({ "problemId": "factor", "language": "python3", "source": "print(2, 2)" }),
        )
        .await;
    assert_eq!(r["verdict"], "WRONG_ANSWER", "{r}");
    assert_eq!(r["tests"][0]["checkerMessage"], "bad factors", "{r}");
}

/// testlib protocol, in C: `checker input output answer`. The answer is "1 n"; printing
/// the product's factors in any order is full marks, printing only n earns half.
const TESTLIB_C: &str = r#"#include <stdio.h>
#include "points.h"
int main(int argc, char **argv) {
    if (argc < 4) return 3;
    FILE *in = fopen(argv[1], "r"), *out = fopen(argv[2], "r");
    long n, a = 0, b = 0;
    if (!in || !out || fscanf(in, "%ld", &n) != 1) return 3;
    int got = fscanf(out, "%ld %ld", &a, &b);
    if (got == 2 && a >= 1 && b >= 1 && a * b == n) { fprintf(stderr, "ok"); return 0; }
    if (got == 1 && a == n) { printf("%s\n", HALF); fprintf(stderr, "partial"); return 7; }
    fprintf(stderr, "wrong");
    return 1;
}
"#;

#[tokio::test]
async fn a_testlib_checker_in_c_gives_partial_points_standalone() {
    a_testlib_checker_in_c_gives_partial_points(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn a_testlib_checker_in_c_gives_partial_points_on_redis() {
    a_testlib_checker_in_c_gives_partial_points(&Judge::on_redis(1)).await;
}

async fn a_testlib_checker_in_c_gives_partial_points(judge: &Judge) {
    let mut p = factor_problem(
        "tl",
        json!({ "program": { "protocol": "TESTLIB", "language": "c", "source": TESTLIB_C,
            "files": [{ "name": "points.h", "content": "#define HALF \"0.5\"\n" }] } }),
    );
    p["groups"] = json!([{ "name": "all", "points": 100.0, "scoring": "PER_TEST" }]);
    judge.put(p).await;
    let (_, r) = judge
        .judge(
            ADMIN,
            json!({ "problemId": "tl", "language": "python3", "source": "print(int(input()))" }),
        )
        .await;
    assert_eq!(r["verdict"], "WRONG_ANSWER", "{r}");
    assert_eq!(r["score"], 50.0, "{r}");
    assert!(
        r["tests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["score"] == 0.5 && t["checkerMessage"] == "partial"),
        "{r}"
    );
    let (_, r) = judge
        .judge(ADMIN, json!({ "problemId": "tl", "language": "python3", "source": "n = int(input())\nprint(n, 1)" }))
        .await;
    assert_eq!(r["verdict"], "ACCEPTED", "{r}");
    assert_eq!(r["score"], 100.0, "{r}");
}

#[tokio::test]
async fn a_crashing_checker_is_internal_error_not_wrong_answer_standalone() {
    a_crashing_checker_is_internal_error_not_wrong_answer(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn a_crashing_checker_is_internal_error_not_wrong_answer_on_redis() {
    a_crashing_checker_is_internal_error_not_wrong_answer(&Judge::on_redis(1)).await;
}

async fn a_crashing_checker_is_internal_error_not_wrong_answer(judge: &Judge) {
    judge
        .put(factor_problem("crash", json!({ "program": { "protocol": "KATTIS", "language": "python3", "source": "raise SystemExit(1 / 0)" } })))
        .await;
    let (_, r) = judge
        .judge(USER, json!({ "problemId": "crash", "language": "python3", "source": "print(1, int(input()))" }))
        .await;
    assert_eq!(r["verdict"], "INTERNAL_ERROR", "{r}");
    assert_eq!(r["tests"][0]["verdict"], "INTERNAL_ERROR", "{r}");
    let message = r["message"].as_str().unwrap();
    assert!(
        message.contains("checker (KATTIS, python3) of problem crash v1"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------
// Versions

#[tokio::test]
async fn a_problem_changed_while_a_submission_is_queued_is_judged_on_the_old_version() {
    // No worker yet: the submission waits in the Redis queue.
    let mut judge = Judge::on_redis(0);
    judge.put(a_plus_b("pin")).await;
    let id = judge
        .submit(
            USER,
            json!({ "problemId": "pin", "language": "python3", "source": CORRECT }),
        )
        .await;
    // Version 2 expects a - b: the queued submission must still pass on version 1.
    let mut v2 = a_plus_b("pin");
    for t in v2["tests"].as_array_mut().unwrap() {
        t["expectedOutput"] = json!("wrong\n");
    }
    assert_eq!(judge.put(v2).await["version"], 2);
    judge.add_worker();
    let _ = judge.events(USER, &id).await;
    let r = judge.record(USER, &id).await;
    assert_eq!(r["problemVersion"], 1, "{r}");
    assert_eq!(r["verdict"], "ACCEPTED", "{r}");
    assert_eq!(r["score"], 100.0, "{r}");
    // A new submission gets version 2.
    let (_, r) = judge
        .judge(
            USER,
            json!({ "problemId": "pin", "language": "python3", "source": CORRECT }),
        )
        .await;
    assert_eq!(r["problemVersion"], 2, "{r}");
    assert_eq!(r["verdict"], "WRONG_ANSWER", "{r}");
}

/// Bytes Redis uses for every key of namespace `ns` matching `pattern` (MEMORY USAGE).
async fn redis_bytes(url: &str, ns: &str, pattern: &str) -> (u64, usize) {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let keys: Vec<String> = client
        .custom(fred::cmd!("KEYS"), vec![format!("{ns}:{pattern}")])
        .await
        .unwrap();
    let mut total = 0;
    for k in &keys {
        let n: Option<u64> = client
            .custom(
                fred::cmd!("MEMORY"),
                vec!["USAGE".to_owned(), k.clone(), "SAMPLES".into(), "0".into()],
            )
            .await
            .unwrap();
        total += n.unwrap_or(0);
    }
    (total, keys.len())
}

#[tokio::test]
async fn a_100_test_problem_on_redis_stores_its_data_once_per_content() {
    let judge = Judge::on_redis(0);
    let (url, ns) = judge.redis.clone().unwrap();
    // 100 tests of 1 KiB input and a short answer each.
    let tests: Vec<Value> = (0..100)
        .map(|k| json!({ "stdin": format!("{k:04} {}\n", "x".repeat(1019)), "expectedOutput": format!("{k}\n"), "sample": k < 2 }))
        .collect();
    let problem = json!({ "id": "big", "title": "Big", "tests": tests });
    assert_eq!(judge.put(problem.clone()).await["version"], 1);
    let (data, files) = redis_bytes(&url, &ns, "pdata:*").await;
    let (record, _) = redis_bytes(&url, &ns, "problem:*").await;
    assert_eq!(files, 200, "100 inputs and 100 answers");
    eprintln!("FIGURE 100-test problem on Redis: test data {data} bytes in {files} keys, version record(s) {record} bytes");
    // A new version changing one test stores one new file and one more record.
    let mut v2 = problem.clone();
    v2["tests"][5]["expectedOutput"] = json!("changed\n");
    assert_eq!(judge.put(v2).await["version"], 2);
    let (data2, files2) = redis_bytes(&url, &ns, "pdata:*").await;
    let (record2, _) = redis_bytes(&url, &ns, "problem:*").await;
    assert_eq!(files2, 201);
    eprintln!(
        "FIGURE second version (one answer changed): +{} bytes data, +{} bytes records",
        data2 - data,
        record2 - record
    );
    assert!(data2 - data < 200, "{data} -> {data2}");
}

// ---------------------------------------------------------------------------------------
// Kattis problem packages: a directory and a zip, through importProblem (a real multipart
// POST), `verdict problems import` and `--problems-dir`; bad packages.

const VALIDATOR_PY: &str = r#"import os, sys
answer = open(sys.argv[2]).read().split()
output = sys.stdin.read().split()
if output == answer:
    sys.exit(42)
with open(os.path.join(sys.argv[3], "judgemessage.txt"), "w") as f:
    f.write("expected " + " ".join(answer))
sys.exit(43)
"#;

/// Writes `files` (path, content) under `dir`.
fn write_tree(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in files {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(content).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn file(path: &str, content: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (path.to_owned(), content.into())
}

/// A+B in the 2025-09 format: a scoring problem, 1 sample, groups g1 (40, small numbers,
/// `test_group.yaml`) and g2 (60, big numbers, legacy `testdata.yaml`), a Python output
/// validator, a Markdown statement.
fn package_2025() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        file(
            "problem.yaml",
            "problem_format_version: 2025-09\ntype: scoring\nname:\n  en: Sum of two\nlimits:\n  time_limit: 2.5\n  memory: 256\n",
        ),
        file("statement/problem.en.md", "# Sum\n\nPrint a + b.\n"),
        file("output_validator/validator.py", VALIDATOR_PY),
        file("data/sample/1.in", "1 2\n"),
        file("data/sample/1.ans", "3\n"),
        file("data/secret/g1/test_group.yaml", "max_score: 40\n"),
        file("data/secret/g2/testdata.yaml", "max_score: 60\n"),
    ];
    for k in 0..3 {
        files.push(file(
            &format!("data/secret/g1/{k}.in"),
            format!("{k} {k}\n"),
        ));
        files.push(file(
            &format!("data/secret/g1/{k}.ans"),
            format!("{}\n", 2 * k),
        ));
        let big = 1_000_000_000u64 + k;
        files.push(file(
            &format!("data/secret/g2/{k}.in"),
            format!("{big} 1\n"),
        ));
        files.push(file(
            &format!("data/secret/g2/{k}.ans"),
            format!("{}\n", big + 1),
        ));
    }
    files
}

/// A+B in the legacy format, inside a top folder (as `zip -r sum sum/` makes it):
/// pass-fail, `problem_statement/`, `output_validators/check/`, tests right in secret/.
fn package_legacy() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        file(
            "sum/problem.yaml",
            "name: Sum (legacy)\nvalidation: custom\nlimits:\n  memory: 128\n",
        ),
        file("sum/problem_statement/problem.md", "Print a + b.\n"),
        file("sum/output_validators/check/check.py", VALIDATOR_PY),
        file("sum/data/sample/01.in", "1 2\n"),
        file("sum/data/sample/01.ans", "3\n"),
    ];
    for k in 0..4 {
        files.push(file(
            &format!("sum/data/secret/{k:02}.in"),
            format!("{k} 10\n"),
        ));
        files.push(file(
            &format!("sum/data/secret/{k:02}.ans"),
            format!("{}\n", k + 10),
        ));
    }
    files
}

const IMPORT: &str = "mutation($id: ID!, $p: Upload!) { importProblem(id: $id, package: $p) { id version title statement testCount maxScore samples { name stdin expectedOutput } groups { name points testCount } } }";

/// A GraphQL multipart request (graphql-multipart-request-spec) with one file, built by
/// hand; `headers` are added as given.
async fn multipart_import(
    base: &str,
    headers: &[(&str, &str)],
    id: &str,
    zip: &[u8],
) -> (reqwest::StatusCode, Value) {
    let boundary = "verdict-boundary-7d1b9c";
    let operations = json!({ "query": IMPORT, "variables": { "id": id, "p": null } });
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{operations}\r\n").as_bytes());
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n{{\"0\": [\"variables.p\"]}}\r\n").as_bytes());
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"0\"; filename=\"{id}.zip\"\r\nContent-Type: application/zip\r\n\r\n").as_bytes());
    body.extend_from_slice(zip);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut request = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn import_zip(judge: &Judge, id: &str, zip: &[u8]) -> Value {
    let auth = format!("Bearer {ADMIN}");
    let (status, body) =
        multipart_import(&judge.server.http(), &[("Authorization", &auth)], id, zip).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Correct and wrong-on-big-numbers solutions against the 2025-09 package as `id`.
async fn judge_sum_2025(judge: &Judge, id: &str) {
    let (_, r) = judge
        .judge(
            USER,
            json!({ "problemId": id, "language": "python3", "source": CORRECT }),
        )
        .await;
    assert_eq!(r["verdict"], "ACCEPTED", "{r}");
    assert_eq!(r["score"], 100.0, "{r}");
    let (_, r) = judge
        .judge(
            USER,
            json!({ "problemId": id, "language": "python3", "source": WRONG_ON_G2 }),
        )
        .await;
    assert_eq!(r["verdict"], "WRONG_ANSWER", "{r}");
    assert_eq!(r["score"], 40.0, "{r}");
    let groups = r["groups"].as_array().unwrap();
    let g2 = groups.iter().find(|g| g["name"] == "g2").unwrap();
    assert_eq!(g2["verdict"], "WRONG_ANSWER", "{r}");
    // Hidden: no checker message for the non-admin caller.
    assert!(
        r["tests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["checkerMessage"].is_null()),
        "{r}"
    );
}

fn assert_sum_2025(p: &Value) {
    assert_eq!(p["title"], "Sum of two", "{p}");
    assert_eq!(p["statement"], "# Sum\n\nPrint a + b.\n");
    assert_eq!(p["testCount"], 7);
    assert_eq!(p["maxScore"], 100.0);
    assert_eq!(
        p["samples"],
        json!([{ "name": "sample/1", "stdin": "1 2\n", "expectedOutput": "3\n" }])
    );
    assert_eq!(
        p["groups"],
        json!([{ "name": "sample", "points": 0.0, "testCount": 1 },
               { "name": "g1", "points": 40.0, "testCount": 3 },
               { "name": "g2", "points": 60.0, "testCount": 3 }])
    );
}

#[tokio::test]
async fn a_kattis_zip_imports_through_multipart_import_problem_and_judges() {
    let judge = Judge::standalone(&[]);
    let zip = zip_of(&package_2025());
    let body = import_zip(&judge, "sum", &zip).await;
    assert!(body["errors"].is_null(), "{body}");
    let p = &body["data"]["importProblem"];
    assert_eq!(p["version"], 1);
    assert_sum_2025(p);
    judge_sum_2025(&judge, "sum").await;

    // The legacy format, zipped with its top folder: a new problem; pass-fail.
    let body = import_zip(&judge, "legacy", &zip_of(&package_legacy())).await;
    assert!(body["errors"].is_null(), "{body}");
    let p = &body["data"]["importProblem"];
    assert_eq!(p["title"], "Sum (legacy)");
    assert_eq!(p["statement"], "Print a + b.\n");
    assert_eq!(
        p["groups"],
        json!([{ "name": "sample", "points": 0.0, "testCount": 1 }, { "name": "secret", "points": 100.0, "testCount": 4 }])
    );
    let (_, r) = judge
        .judge(
            USER,
            json!({ "problemId": "legacy", "language": "python3", "source": CORRECT }),
        )
        .await;
    assert_eq!(
        (r["verdict"].as_str(), r["score"].as_f64()),
        (Some("ACCEPTED"), Some(100.0)),
        "{r}"
    );

    // Importing again makes version 2.
    let body = import_zip(&judge, "sum", &zip).await;
    assert_eq!(body["data"]["importProblem"]["version"], 2, "{body}");
}

#[tokio::test]
async fn import_problem_multipart_keeps_the_csrf_guard_and_the_admin_role() {
    let judge = Judge::standalone(&[]);
    let zip = zip_of(&package_2025());
    let base = judge.server.http();
    // No Authorization and no Apollo-Require-Preflight: a cross-site form could send it.
    let (status, body) = multipart_import(&base, &[], "sum", &zip).await;
    assert_eq!(status, 415, "{body}");
    assert!(body["data"].is_null());
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Apollo-Require-Preflight"),
        "{body}"
    );
    // Apollo-Require-Preflight passes the guard; without a key the caller is then refused.
    let (status, body) =
        multipart_import(&base, &[("Apollo-Require-Preflight", "true")], "sum", &zip).await;
    assert_eq!(status, 401, "{body}");
    // A key that is not admin: FORBIDDEN, and nothing stored.
    let auth = format!("Bearer {USER}");
    let (_, body) = multipart_import(&base, &[("Authorization", &auth)], "sum", &zip).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    let q = judge
        .gql(USER, "{ problem(id: \"sum\") { id } }", json!({}))
        .await;
    assert!(q["data"]["problem"].is_null(), "{q}");
}

#[tokio::test]
async fn kattis_packages_load_from_problems_dir_as_directory_and_zip() {
    let dir = TempDir::new("verdict-problems-dir");
    write_tree(&dir.path().join("sum"), &package_2025());
    std::fs::write(dir.path().join("Legacy.zip"), zip_of(&package_legacy())).unwrap();
    std::fs::write(dir.path().join("README.txt"), "not a package").unwrap();
    let judge = Judge::standalone(&["--problems-dir", dir.path().to_str().unwrap()]);
    let body = judge
        .gql(USER, "{ problems { id version title } problem(id: \"sum\") { title statement testCount maxScore samples { name stdin expectedOutput } groups { name points testCount } } }", json!({}))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(
        body["data"]["problems"],
        json!([{ "id": "legacy", "version": 1, "title": "Sum (legacy)" }, { "id": "sum", "version": 1, "title": "Sum of two" }]),
        "{body}"
    );
    assert_sum_2025(&body["data"]["problem"]);
    judge_sum_2025(&judge, "sum").await;
}

fn import_cli(judge: &Judge, path: &Path, id: &str) -> std::process::Output {
    let (url, ns) = judge.redis.clone().unwrap();
    Command::new(bin())
        .args(["problems", "import"])
        .arg(path)
        .args(["--id", id])
        .env_remove("VERDICT_REDIS_URL_FILE")
        .env("VERDICT_REDIS_URL", url)
        .env("VERDICT_REDIS_NAMESPACE", ns)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn kattis_packages_import_through_the_cli_on_redis_and_judge() {
    let judge = Judge::on_redis(1);
    let dir = TempDir::new("verdict-package-cli");
    write_tree(&dir.path().join("sum"), &package_2025());
    let out = import_cli(&judge, &dir.path().join("sum"), "sum");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("sum version 1: 7 tests, 3 groups"), "{said}");
    // The same package again is unchanged: no new version.
    let out = import_cli(&judge, &dir.path().join("sum"), "sum");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sum version 1"),
        "{out:?}"
    );
    let zip = dir.path().join("legacy.zip");
    std::fs::write(&zip, zip_of(&package_legacy())).unwrap();
    let out = import_cli(&judge, &zip, "legacy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let body = judge
        .gql(USER, "{ problem(id: \"sum\") { title statement testCount maxScore samples { name stdin expectedOutput } groups { name points testCount } } }", json!({}))
        .await;
    assert_sum_2025(&body["data"]["problem"]);
    judge_sum_2025(&judge, "sum").await;
    let (_, r) = judge
        .judge(
            USER,
            json!({ "problemId": "legacy", "language": "python3", "source": CORRECT }),
        )
        .await;
    assert_eq!(r["verdict"], "ACCEPTED", "{r}");

    // A bad package through the CLI: a failure naming the file, nothing stored.
    let mut broken = package_2025();
    broken.retain(|(p, _)| p != "data/secret/g1/1.ans");
    write_tree(&dir.path().join("broken"), &broken);
    let out = import_cli(&judge, &dir.path().join("broken"), "broken");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data/secret/g1/1.in") && err.contains("1.ans"),
        "{err}"
    );
    let q = judge
        .gql(USER, "{ problem(id: \"broken\") { id } }", json!({}))
        .await;
    assert!(q["data"]["problem"].is_null(), "{q}");
}

#[tokio::test]
async fn bad_kattis_packages_are_bad_user_input_naming_the_file_and_store_nothing() {
    let judge = Judge::standalone(&["--max-problem-bytes", "4000000"]);
    let without = |drop: &dyn Fn(&str) -> bool| {
        let mut files = package_2025();
        files.retain(|(p, _)| !drop(p));
        zip_of(&files)
    };
    let mut unknown_language = package_2025();
    unknown_language.retain(|(p, _)| !p.starts_with("output_validator/"));
    unknown_language.push(file(
        "output_validator/validator.cobol",
        "IDENTIFICATION DIVISION.",
    ));
    let mut escaping = package_2025();
    escaping.push(file("../evil.txt", "outside"));
    let mut bomb = package_2025();
    bomb.push(file("data/secret/g1/huge.txt", vec![0u8; 3_900_000]));
    // Over --max-problem-bytes unpacked, compressing poorly (no ratio alarm).
    let mut too_big = package_2025();
    let mut x: u32 = 1;
    let noise: Vec<u8> = (0..4_100_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            b'a' + (x >> 24) as u8 % 26
        })
        .collect();
    too_big.push(file("data/secret/g1/noise.txt", noise));
    let mut interactive = package_2025();
    interactive[0] = file("problem.yaml", "name: I\ntype: interactive\n");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "nodata",
            without(&|p| p.starts_with("data/")),
            "data/secret",
        ),
        (
            "noanswer",
            without(&|p| p == "data/secret/g2/2.ans"),
            "data/secret/g2/2.in",
        ),
        (
            "unknownlang",
            zip_of(&unknown_language),
            "output_validator/validator.cobol",
        ),
        ("escaping", zip_of(&escaping), "../evil.txt"),
        ("bomb", zip_of(&bomb), "data/secret/g1/huge.txt"),
        ("toobig", zip_of(&too_big), "--max-problem-bytes"),
        ("interactive", zip_of(&interactive), "problem.yaml"),
        ("notazip", b"PK not really".to_vec(), "zip"),
    ];
    for (id, zip, names) in cases {
        let body = import_zip(&judge, id, &zip).await;
        let e = &body["errors"][0];
        assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{id}: {body}");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(names), "{id}: {message}");
        eprintln!("{id}: {message}");
        let q = judge
            .gql(
                ADMIN,
                "query($id: ID!) { problem(id: $id) { id } }",
                json!({ "id": id }),
            )
            .await;
        assert!(q["data"]["problem"].is_null(), "{id} left a problem: {q}");
    }
    let q = judge.gql(ADMIN, "{ problems { id } }", json!({})).await;
    assert_eq!(q["data"]["problems"], json!([]), "{q}");
}

// ---------------------------------------------------------------------------------------
// Roles: an admin key may read, watch and cancel every submission, whoever owns it.

#[tokio::test]
async fn admin_keys_read_watch_and_cancel_every_submission_standalone() {
    admin_keys_read_watch_and_cancel_every_submission(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn admin_keys_read_watch_and_cancel_every_submission_on_redis() {
    admin_keys_read_watch_and_cancel_every_submission(&Judge::on_redis(1)).await;
}

async fn admin_keys_read_watch_and_cancel_every_submission(judge: &Judge) {
    let id = judge
        .submit(
            USER,
            json!({ "language": "python3", "source": "print(input())", "stdin": "hi\n" }),
        )
        .await;
    // Watch the client's submission as admin, to the end.
    let events = judge.events(ADMIN, &id).await;
    assert_eq!(
        events.last().unwrap()["__typename"],
        "FinishedEvent",
        "{events:?}"
    );
    let r = judge.record(ADMIN, &id).await;
    assert_eq!(r["verdict"], "ACCEPTED", "{r}");
    assert_eq!(r["tests"][0]["stdout"], "hi\n", "{r}");
    // A client key still sees only its own.
    let admins = judge
        .submit(
            ADMIN,
            json!({ "language": "python3", "source": "print(2)" }),
        )
        .await;
    let q = judge
        .gql(
            USER,
            "query($id: ID!) { submission(id: $id) { id } }",
            json!({ "id": admins }),
        )
        .await;
    assert!(q["data"]["submission"].is_null(), "{q}");
    let q = judge
        .gql(
            USER,
            "mutation($id: ID!) { cancel(id: $id) { id } }",
            json!({ "id": admins }),
        )
        .await;
    assert_eq!(q["errors"][0]["extensions"]["code"], "NOT_FOUND", "{q}");
    // Cancel the client's running submission as admin.
    let spin = judge
        .submit(
            USER,
            json!({ "language": "python3", "source": SPIN, "limits": { "cpuTimeMs": 10000, "wallTimeMs": 20000 } }),
        )
        .await;
    let c = judge
        .gql(
            ADMIN,
            "mutation($id: ID!) { cancel(id: $id) { id status verdict } }",
            json!({ "id": spin }),
        )
        .await;
    assert_eq!(c["data"]["cancel"]["verdict"], "CANCELLED", "{c}");
    let r = judge.record(USER, &spin).await;
    assert_eq!(r["verdict"], "CANCELLED", "{r}");
}

// The verdict feed as a subscription: `finishedSubmissions` (issue 16).

/// A graphql-transport-ws connection as `key`, acknowledged.
async fn ws_as(
    judge: &Judge,
    key: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let request = judge
        .server
        .ws("/graphql")
        .into_client_request_with_protocol();
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {key}") } });
    ws.send(Message::Text(init.to_string().into()))
        .await
        .unwrap();
    loop {
        let Message::Text(text) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).unwrap();
        if frame["type"] == "connection_ack" {
            return ws;
        }
    }
}

const FINISHED: &str = "subscription($p: ID) { finishedSubmissions(problemId: $p) { id verdict score problemId tests { index stdout } } }";

/// Reads frames until each operation of `ops` got its count of records, or `within`.
async fn feed_records(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    ops: &[(&str, usize)],
    within: Duration,
) -> std::collections::HashMap<String, Vec<Value>> {
    let mut got: std::collections::HashMap<String, Vec<Value>> = ops
        .iter()
        .map(|(op, _)| (op.to_string(), Vec::new()))
        .collect();
    let deadline = Instant::now() + within;
    while ops.iter().any(|(op, n)| got[*op].len() < *n) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(msg) = tokio::time::timeout(left, ws.next()).await else {
            break;
        };
        let Message::Text(text) = msg.unwrap().unwrap() else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).unwrap();
        if frame["type"] == "next" {
            assert!(frame["payload"]["errors"].is_null(), "{frame}");
            let op = frame["id"].as_str().unwrap().to_owned();
            got.entry(op)
                .or_default()
                .push(frame["payload"]["data"]["finishedSubmissions"].clone());
        } else if frame["type"] == "error" {
            panic!("{frame}");
        }
    }
    got
}

async fn finished_submissions_is_live_for_admins_only(judge: &Judge) {
    judge.put(a_plus_b("feedprob")).await;
    let mut admin = ws_as(judge, ADMIN).await;
    for (op, p) in [("all", Value::Null), ("one", json!("feedprob"))] {
        let sub = json!({ "id": op, "type": "subscribe", "payload": { "query": FINISHED, "variables": { "p": p } } });
        admin
            .send(Message::Text(sub.to_string().into()))
            .await
            .unwrap();
    }
    // A key that is not admin is refused.
    let mut user = ws_as(judge, USER).await;
    let sub = json!({ "id": "u", "type": "subscribe", "payload": { "query": FINISHED, "variables": {} } });
    user.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    let refused = loop {
        let Message::Text(text) = user.next().await.unwrap().unwrap() else {
            continue;
        };
        break serde_json::from_str::<Value>(&text).unwrap();
    };
    assert!(refused.to_string().contains("FORBIDDEN"), "{refused}");
    // The admin's subscriptions are live once the server has read the feed's end.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let free = judge
        .submit(
            USER,
            json!({ "language": "python3", "source": "print('free')" }),
        )
        .await;
    let problem = judge
        .submit(
            USER,
            json!({ "problemId": "feedprob", "language": "python3", "source": CORRECT }),
        )
        .await;
    let got = feed_records(
        &mut admin,
        &[("all", 2), ("one", 1)],
        Duration::from_secs(90),
    )
    .await;
    let all: Vec<&str> = got["all"]
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(all.len(), 2, "{got:?}");
    assert!(
        all.contains(&free.as_str()) && all.contains(&problem.as_str()),
        "{all:?}"
    );
    let one = &got["one"];
    assert_eq!(one.len(), 1, "only the problem's submission: {one:?}");
    assert_eq!(one[0]["id"], problem.as_str());
    assert_eq!(one[0]["verdict"], "ACCEPTED");
    assert_eq!(one[0]["score"], 100.0);
    // An admin sees hidden tests' output in the feed too.
    assert_eq!(one[0]["tests"][9]["stdout"], "9000003\n", "{one:?}");
    // Nothing from before the subscription started: a new one sees neither.
    let mut late = ws_as(judge, ADMIN).await;
    let sub = json!({ "id": "late", "type": "subscribe", "payload": { "query": FINISHED, "variables": {} } });
    late.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    let old = feed_records(&mut late, &[("late", 1)], Duration::from_millis(1500)).await;
    assert!(old["late"].is_empty(), "{old:?}");
}

#[tokio::test]
async fn finished_submissions_is_live_for_admins_only_standalone() {
    finished_submissions_is_live_for_admins_only(&Judge::standalone(&[])).await;
}

#[tokio::test]
async fn finished_submissions_is_live_for_admins_only_on_redis() {
    finished_submissions_is_live_for_admins_only(&Judge::on_redis(1)).await;
}

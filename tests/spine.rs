//! End to end through real processes: `verdict server` + `verdict worker`s on a real
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Redis, and `verdict standalone`, each driven over HTTP and graphql-ws.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use verdict_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

/// (language, source, expected stdout, compiled)
const HELLO: &[(&str, &str, &str, bool)] = &[
    ("python3", "print('hello from python')", "hello from python\n", false),
    ("c", "#include <stdio.h>\nint main(void){ puts(\"hello from c\"); return 0; }", "hello from c\n", true),
    ("cpp", "#include <iostream>\nint main(){ std::cout << \"hello from cpp\" << std::endl; }", "hello from cpp\n", true),
    ("rust", "fn main() { println!(\"hello from rust\"); }", "hello from rust\n", true),
    ("javascript", "console.log('hello from javascript')", "hello from javascript\n", false),
    (
        "java",
        "public class Main { public static void main(String[] a) { System.out.println(\"hello from java\"); } }",
        "hello from java\n",
        true,
    ),
    ("bash", "echo hello from bash", "hello from bash\n", false),
];

async fn hello_in_every_language(server: &Server) {
    // Submit all first so the two workers run them in parallel, then subscribe.
    let mut ids = Vec::new();
    for (lang, source, _, _) in HELLO {
        ids.push(
            submit(
                &server.http(),
                json!({ "language": lang, "source": source }),
            )
            .await,
        );
    }
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    for (id, (lang, _, stdout, compiled)) in ids.iter().zip(HELLO) {
        let events = ws.events(id, None).await;
        let submission = check_event_order(&events, *compiled);
        assert_eq!(submission["verdict"], "ACCEPTED", "{lang}: {submission}");
        assert_eq!(submission["tests"][0]["stdout"], *stdout, "{lang}");
        let live: String = events
            .iter()
            .filter(|e| e["__typename"] == "OutputEvent" && e["stream"] == "STDOUT")
            .map(|e| e["chunk"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            live, *stdout,
            "{lang}: live output must add up to the final stdout"
        );
    }
}

#[tokio::test]
async fn hello_world_in_all_languages_on_redis_with_two_workers() {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let _w1 = worker(bin(), &url, &ns, 2);
    let _w2 = worker(bin(), &url, &ns, 2);
    hello_in_every_language(&server).await;
}

#[tokio::test]
async fn hello_world_in_all_languages_standalone() {
    let server = standalone(bin(), None);
    hello_in_every_language(&server).await;
}

async fn late_subscriber(server: &Server) {
    let id = submit(
        &server.http(),
        json!({ "language": "python3", "source": "print(42)" }),
    )
    .await;
    // Wait until it is finished, by reading the record (this test is about replay).
    for _ in 0..300 {
        let body = graphql(
            &server.http(),
            "query($id: ID!) { submission(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await;
        if body["data"]["submission"]["status"] == "FINISHED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ws = WsClient::connect(&server.ws("/ws")).await;
    let events = ws.events(&id, None).await;
    let submission = check_event_order(&events, false);
    assert_eq!(submission["tests"][0]["stdout"], "42\n");
}

#[tokio::test]
async fn late_subscriber_gets_full_replay_and_completion() {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let _w = worker(bin(), &url, &ns, 1);
    late_subscriber(&server).await;
    let standalone = standalone(bin(), None);
    late_subscriber(&standalone).await;
}

async fn reconnect(server: &Server) {
    let source =
        "import time\nfor k in range(6):\n    print(k, flush=True)\n    time.sleep(0.15)\n";
    let id = submit(
        &server.http(),
        json!({ "language": "python3", "source": source }),
    )
    .await;
    let mut first = WsClient::connect(&server.ws("/graphql")).await;
    let op = first.subscribe(EVENTS, json!({ "id": id })).await;
    let (seen, completed) = first.collect(&op, 4, Duration::from_secs(30)).await;
    assert!(!completed && seen.len() == 4, "expected to drop mid-run");
    first.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();
    let mut second = WsClient::connect(&server.ws("/graphql")).await;
    let rest = second.events(&id, Some(last)).await;
    let all: Vec<Value> = seen.into_iter().chain(rest).collect();
    let submission = check_event_order(&all, false);
    assert_eq!(submission["tests"][0]["stdout"], "0\n1\n2\n3\n4\n5\n");
}

#[tokio::test]
async fn reconnecting_subscriber_gets_exactly_the_missed_events() {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let _w = worker(bin(), &url, &ns, 1);
    reconnect(&server).await;
    reconnect(&standalone(bin(), None)).await;
}

async fn fifty_concurrent(server: &Server) {
    let mut tasks = Vec::new();
    for k in 0..50 {
        let base = server.http();
        let ws_url = server.ws("/graphql");
        tasks.push(tokio::spawn(async move {
            let token = format!("token-{k}-{}", uuid::Uuid::new_v4().simple());
            let id = submit(
                &base,
                json!({ "language": "bash", "source": format!("echo {token}") }),
            )
            .await;
            let mut ws = WsClient::connect(&ws_url).await;
            let events = ws.events(&id, None).await;
            let finals = events
                .iter()
                .filter(|e| e["__typename"] == "FinishedEvent")
                .count();
            assert_eq!(finals, 1, "exactly one FinishedEvent");
            let submission = check_event_order(&events, false);
            assert_eq!(submission["id"], id.as_str());
            assert_eq!(submission["tests"][0]["stdout"], format!("{token}\n"));
        }));
    }
    for t in tasks {
        t.await.expect("submission task");
    }
}

#[tokio::test]
async fn fifty_concurrent_submissions_each_get_their_own_result() {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let _w1 = worker(bin(), &url, &ns, 2);
    let _w2 = worker(bin(), &url, &ns, 2);
    fifty_concurrent(&server).await;
    fifty_concurrent(&standalone(bin(), None)).await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_server_stays_healthy() {
    let server = standalone(bin(), None);
    let base = server.http();
    let q = "mutation($i: SubmitInput!) { submit(input: $i) { id } }";
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({ "language": "cobol", "source": "x" }),
            "language",
            "python3",
        ),
        (
            json!({ "language": "python3", "source": "#".repeat(256 * 1024 + 1) }),
            "source",
            "262144",
        ),
        (
            json!({ "language": "python3", "source": "", "stdin": "x".repeat(8 * 1024 * 1024 + 1) }),
            "stdin",
            "8388608",
        ),
        (
            json!({ "language": "python3", "source": "", "limits": { "cpuTimeMs": 0 } }),
            "cpuTimeMs",
            "between 1 and",
        ),
        (
            json!({ "language": "python3", "source": "", "limits": { "memoryKb": -5 } }),
            "memoryKb",
            "between 1 and",
        ),
        (
            json!({ "language": "python3", "source": "", "limits": { "wallTimeMs": 3_600_000 } }),
            "wallTimeMs",
            "30000",
        ),
        (
            json!({ "language": "python3", "source": "", "tests": vec![json!({ "stdin": "" }); 101] }),
            "tests",
            "maximum is 100",
        ),
    ];
    for (input, field, hint) in cases {
        let body = graphql(&base, q, json!({ "i": input })).await;
        let error = &body["errors"][0];
        assert_eq!(
            error["extensions"]["code"], "BAD_USER_INPUT",
            "{field}: {body}"
        );
        assert_eq!(error["extensions"]["field"], field, "{body}");
        assert!(
            error["message"].as_str().unwrap_or_default().contains(hint),
            "{field}: message should say {hint}: {error}"
        );
        assert!(body["data"].is_null(), "{body}");
    }
    let body = graphql(
        &base,
        "query { submission(id: \"nope\") { id } }",
        json!({}),
    )
    .await;
    assert!(body["data"]["submission"].is_null(), "{body}");
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let op = ws.subscribe(EVENTS, json!({ "id": "nope" })).await;
    let message = tokio::time::timeout(Duration::from_secs(5), ws.recv())
        .await
        .expect("no hang")
        .expect("message");
    assert_eq!(message["id"], op.as_str());
    // An execution error: graphql-ws sends it as a `next` with errors (then `complete`),
    // or as `error`; either way it names the code and the subscription ends.
    let errors = match message["type"].as_str() {
        Some("next") => message["payload"]["errors"].clone(),
        Some("error") => message["payload"].clone(),
        _ => panic!("unexpected {message}"),
    };
    assert_eq!(errors[0]["extensions"]["code"], "NOT_FOUND", "{message}");
    if message["type"] == "next" {
        let end = tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("no hang")
            .expect("message");
        assert_eq!(end["type"], "complete", "{end}");
    }
    // Still healthy and still working.
    let id = submit(
        &base,
        json!({ "language": "python3", "source": "print('ok')" }),
    )
    .await;
    let events = ws.events(&id, None).await;
    assert_eq!(check_event_order(&events, false)["verdict"], "ACCEPTED");
}

#[tokio::test]
async fn two_hundred_subscribers_share_the_servers_few_redis_connections() {
    use fred::prelude::*;
    let (url, ns) = (redis_url(), namespace());
    let redis = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    let count = |list: String| list.lines().count();
    let server = server(bin(), &url, &ns);
    // A slow job keeps all subscriptions open; no worker runs it at first.
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(
                submit(
                    &server.http(),
                    json!({ "language": "python3", "source": "print(1)" }),
                )
                .await,
            );
        }
        ids
    };
    let before = count(
        redis
            .custom(
                fred::types::CustomCommand::new(
                    "CLIENT",
                    fred::types::ClusterHash::FirstKey,
                    false,
                ),
                vec!["LIST"],
            )
            .await
            .unwrap(),
    );
    let mut sockets = Vec::new();
    for k in 0..200 {
        let mut ws = WsClient::connect(&server.ws("/graphql")).await;
        let op = ws
            .subscribe(EVENTS, json!({ "id": ids[k % ids.len()] }))
            .await;
        let (queued, _) = ws.collect(&op, 1, Duration::from_secs(10)).await;
        assert_eq!(queued[0]["__typename"], "QueuedEvent");
        sockets.push((ws, op));
    }
    let during = count(
        redis
            .custom(
                fred::types::CustomCommand::new(
                    "CLIENT",
                    fred::types::ClusterHash::FirstKey,
                    false,
                ),
                vec!["LIST"],
            )
            .await
            .unwrap(),
    );
    assert!(
        during <= before + 1,
        "200 subscribers must not open Redis connections: {before} before, {during} during"
    );
    // Now let a worker finish them: every subscriber completes.
    let _w = worker(bin(), &url, &ns, 2);
    for (mut ws, op) in sockets {
        let (_, completed) = ws.collect(&op, usize::MAX, Duration::from_secs(60)).await;
        assert!(completed);
    }
}

#[test]
fn schema_graphql_matches_the_generated_sdl() {
    let out = std::process::Command::new(bin())
        .arg("schema")
        .output()
        .expect("verdict schema");
    let generated = String::from_utf8(out.stdout).expect("utf-8");
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
            .expect("schema.graphql");
    assert!(
        generated == checked_in,
        "schema.graphql drifted: run `cargo run -- schema > schema.graphql`"
    );
}

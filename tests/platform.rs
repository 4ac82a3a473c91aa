//! Browser-direct use by a coding-challenge platform (issue 16), against real `verdict`
//! processes on both backends: end-user JWTs (HS256 secret, public keys by PEM and JWKS),
//! each refused-token case over HTTP (UNAUTHENTICATED) and graphql-ws (close 4403), and
//! per-user ownership (`user:<sub>`).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use verdict_testkit::{free_port, Proc, Server, TempDir};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
const SUBMIT: &str = "mutation($i: SubmitInput!) { submit(input: $i) { id status } }";

/// `verdict standalone` (embedded broker, or Redis on a fresh namespace) with `extra`
/// flags, once it listens.
fn standalone(redis: bool, extra: &[&str]) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(bin());
    cmd.args(["standalone", "--concurrency", "2", "--listen", &listen])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("VERDICT_REDIS_URL")
        .env_remove("VERDICT_REDIS_URL_FILE");
    if redis {
        cmd.env("VERDICT_REDIS_URL", verdict_testkit::redis_url())
            .env("VERDICT_REDIS_NAMESPACE", verdict_testkit::namespace());
    }
    let proc = Proc(cmd.spawn().expect("spawn verdict"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "verdict did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { proc, port }
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// POST /graphql with `Authorization: Bearer <credential>`: (status, body).
async fn post(server: &Server, credential: &str, query: &str, variables: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/graphql", server.http()))
        .header("authorization", format!("Bearer {credential}"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

fn code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

/// A graphql-transport-ws connection whose connection_init carries `credential`.
struct Ws {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What the server answered connection_init with.
enum Init {
    Ack(Box<Ws>),
    Closed(u16),
}

async fn ws_init(server: &Server, credential: &str) -> Init {
    let mut request = server.ws("/graphql").into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {credential}") } });
    socket.send(Message::text(init.to_string())).await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer to connection_init");
        match next {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["type"], "connection_ack", "{v}");
                return Init::Ack(Box::new(Ws { socket }));
            }
            Some(Ok(Message::Close(frame))) => {
                return Init::Closed(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    }
}

impl Ws {
    /// Subscribes to `submissionEvents(id)`; returns the messages until complete/error.
    async fn events(&mut self, id: &str) -> Vec<Value> {
        let sub = json!({ "id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { submissionEvents(id: $id) { __typename seq } }",
            "variables": { "id": id } } });
        self.socket
            .send(Message::text(sub.to_string()))
            .await
            .unwrap();
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), self.socket.next())
                .await
                .expect("events in time");
            let Some(Ok(message)) = next else {
                panic!("socket ended")
            };
            let Message::Text(text) = message else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            match v["type"].as_str() {
                Some("next") | Some("error") => {
                    let done = v["type"] == "error";
                    out.push(v);
                    if done {
                        return out;
                    }
                }
                Some("complete") => return out,
                Some("ping") => {
                    let pong = json!({ "type": "pong" }).to_string();
                    self.socket.send(Message::text(pong)).await.unwrap();
                }
                _ => {}
            }
        }
    }
}

/// Asserts the token is refused on both transports.
async fn assert_refused(server: &Server, token: &str, case: &str) {
    let (status, body) = post(server, token, "{ languages { id } }", json!({})).await;
    assert_eq!(status, 401, "{case}: {body}");
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{case}: {body}");
    match ws_init(server, token).await {
        Init::Closed(code) => assert_eq!(code, 4403, "{case}"),
        Init::Ack(_) => panic!("{case}: the WebSocket was accepted"),
    }
}

async fn assert_accepted(server: &Server, token: &str, case: &str) {
    let (status, body) = post(server, token, "{ languages { id } }", json!({})).await;
    assert_eq!(status, 200, "{case}: {body}");
    assert!(body["errors"].is_null(), "{case}: {body}");
    assert!(
        matches!(ws_init(server, token).await, Init::Ack(_)),
        "{case}: WebSocket refused"
    );
}

/// `verdict token`, the development helper, signs with the configured secret.
fn cli_token(secret_file: &str, sub: &str) -> String {
    let out = Command::new(bin())
        .args(["token", "--sub", sub, "--ttl", "1h"])
        .env("VERDICT_JWT_HS256_SECRET_FILE", secret_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn users_see_only_their_own(redis: bool) {
    let dir = TempDir::new("verdict-platform");
    let secret = write(&dir, "secret", SECRET);
    let server = standalone(redis, &["--jwt-hs256-secret-file", &secret]);
    let alice = cli_token(&secret, "alice");
    let bob = hs256(SECRET, &json!({ "sub": "bob", "exp": now() + 600 }));

    let input = json!({ "i": { "language": "python3", "source": "print('hi')" } });
    let (status, body) = post(&server, &alice, SUBMIT, input.clone()).await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["submit"]["id"].as_str().unwrap().to_owned();
    let (_, body) = post(&server, &bob, SUBMIT, input).await;
    let bobs = body["data"]["submit"]["id"].as_str().unwrap().to_owned();

    // Alice watches hers to the end.
    let Init::Ack(mut ws) = ws_init(&server, &alice).await else {
        panic!("alice refused")
    };
    let events = ws.events(&id).await;
    assert_eq!(
        events.last().unwrap()["payload"]["data"]["submissionEvents"]["__typename"],
        "FinishedEvent",
        "{events:?}"
    );

    // Bob sees nothing of it: null by id, NOT_FOUND to subscribe and to cancel.
    let q = "query($id: ID!) { submission(id: $id) { id owner: status } }";
    let (_, body) = post(&server, &bob, q, json!({ "id": id })).await;
    assert!(body["data"]["submission"].is_null(), "{body}");
    let (_, body) = post(&server, &alice, q, json!({ "id": id })).await;
    assert_eq!(body["data"]["submission"]["id"], id.as_str(), "{body}");
    let (_, body) = post(&server, &bob, q, json!({ "id": bobs })).await;
    assert_eq!(body["data"]["submission"]["id"], bobs.as_str(), "{body}");
    let (_, body) = post(&server, &alice, q, json!({ "id": bobs })).await;
    assert!(body["data"]["submission"].is_null(), "{body}");
    let cancel = "mutation($id: ID!) { cancel(id: $id) { id } }";
    let (_, body) = post(&server, &bob, cancel, json!({ "id": id })).await;
    assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");
    let Init::Ack(mut ws) = ws_init(&server, &bob).await else {
        panic!("bob refused")
    };
    let events = ws.events(&id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    // graphql-ws sends a resolver's error as `next` with `errors`.
    let payload = &events[0]["payload"];
    let error = if payload.is_array() {
        &payload[0]
    } else {
        &payload["errors"][0]
    };
    assert_eq!(error["extensions"]["code"], "NOT_FOUND", "{events:?}");
}

#[tokio::test]
async fn jwt_users_see_only_their_own_embedded() {
    users_see_only_their_own(false).await;
}

#[tokio::test]
async fn jwt_users_see_only_their_own_redis() {
    users_see_only_their_own(true).await;
}

#[tokio::test]
async fn refused_tokens_are_unauthenticated_and_close_4403() {
    let dir = TempDir::new("verdict-platform");
    let secret = write(&dir, "secret", SECRET);
    let server = standalone(
        false,
        &[
            "--jwt-hs256-secret-file",
            &secret,
            "--jwt-issuer",
            "https://platform.example",
            "--jwt-audience",
            "verdict",
        ],
    );
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({ "sub": "alice", "exp": now() + 600,
            "iss": "https://platform.example", "aud": "verdict" });
        f(&mut c);
        c
    };
    assert_accepted(&server, &hs256(SECRET, &claims(&|_| {})), "valid").await;

    // alg none: header {"alg":"none","typ":"JWT"}, a valid token's payload, no signature.
    let valid = hs256(SECRET, &claims(&|_| {}));
    let payload = valid.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_refused(&server, &none, "alg none").await;
    assert_refused(
        &server,
        &hs256("another-secret", &claims(&|_| {})),
        "wrong signature",
    )
    .await;
    assert_refused(
        &server,
        &hs256(SECRET, &claims(&|c| c["exp"] = json!(now() - 3600))),
        "expired",
    )
    .await;
    assert_refused(
        &server,
        &hs256(
            SECRET,
            &claims(&|c| c["iss"] = json!("https://evil.example")),
        ),
        "issuer mismatch",
    )
    .await;
    assert_refused(
        &server,
        &hs256(SECRET, &claims(&|c| c["aud"] = json!("someone-else"))),
        "audience mismatch",
    )
    .await;
    assert_refused(
        &server,
        &hs256(
            SECRET,
            &claims(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        "no sub",
    )
    .await;
    assert_refused(
        &server,
        &hs256(
            SECRET,
            &claims(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        "no exp",
    )
    .await;
}

/// Generates a private key with the `openssl` CLI: (private PEM, public PEM).
fn openssl_key(dir: &TempDir, name: &str, algorithm: &[&str]) -> (String, String) {
    let private = dir.path().join(format!("{name}.key"));
    let public = dir.path().join(format!("{name}.pub"));
    let ok = Command::new("openssl")
        .arg("genpkey")
        .args(algorithm)
        .arg("-out")
        .arg(&private)
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(ok.success());
    (
        std::fs::read_to_string(private).unwrap(),
        std::fs::read_to_string(public).unwrap(),
    )
}

/// The raw 32-byte Ed25519 public key: the tail of its DER SubjectPublicKeyInfo.
fn ed25519_public_raw(dir: &TempDir, name: &str) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(dir.path().join(format!("{name}.pub")))
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout[out.stdout.len() - 32..].to_vec()
}

/// Unpadded base64url (RFC 4648 §5), for the JWK above.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

struct Keys {
    rsa: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
    rsa_public_pem: String,
    ec_public_pem: String,
    ed_public_pem: String,
}

fn keys(dir: &TempDir, prefix: &str) -> Keys {
    let (rsa, rsa_public_pem) = openssl_key(
        dir,
        &format!("{prefix}rsa"),
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec, ec_public_pem) = openssl_key(
        dir,
        &format!("{prefix}ec"),
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let (ed, ed_public_pem) = openssl_key(dir, &format!("{prefix}ed"), &["-algorithm", "ED25519"]);
    Keys {
        rsa: EncodingKey::from_rsa_pem(rsa.as_bytes()).unwrap(),
        ec: EncodingKey::from_ec_pem(ec.as_bytes()).unwrap(),
        ed: EncodingKey::from_ed_pem(ed.as_bytes()).unwrap(),
        rsa_public_pem,
        ec_public_pem,
        ed_public_pem,
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, sub: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &json!({ "sub": sub, "exp": now() + 600 }), key).unwrap()
}

#[tokio::test]
async fn public_keys_by_kid_from_jwks_and_pem() {
    let dir = TempDir::new("verdict-platform");
    let k = keys(&dir, "");
    let other = keys(&dir, "other-");
    // JWKS: one key per algorithm, each with its kid.
    let jwk = |key: &EncodingKey, alg: Algorithm, kid: &str| {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk
    };
    let set = jsonwebtoken::jwk::JwkSet {
        keys: vec![
            jwk(&k.rsa, Algorithm::RS256, "rsa-1"),
            jwk(&k.ec, Algorithm::ES256, "ec-1"),
            // jsonwebtoken cannot make an Ed25519 JWK: built from the DER public key.
            serde_json::from_value(json!({ "kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
                "x": base64url(&ed25519_public_raw(&dir, "ed")) }))
            .unwrap(),
        ],
    };
    let jwks = write(&dir, "jwks.json", &serde_json::to_string(&set).unwrap());
    let server = standalone(false, &["--jwt-public-keys", &jwks]);
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", &k.rsa),
        (Algorithm::ES256, "ec-1", &k.ec),
        (Algorithm::EdDSA, "ed-1", &k.ed),
    ] {
        assert_accepted(&server, &sign(alg, Some(kid), key, "alice"), kid).await;
    }
    // The right kid, signed by another key: wrong signature.
    assert_refused(
        &server,
        &sign(Algorithm::RS256, Some("rsa-1"), &other.rsa, "alice"),
        "RS256 wrong signature",
    )
    .await;
    assert_refused(
        &server,
        &sign(Algorithm::ES256, Some("ec-1"), &other.ec, "alice"),
        "ES256 wrong signature",
    )
    .await;
    // A kid that names another algorithm's key, and an unknown kid.
    assert_refused(
        &server,
        &sign(Algorithm::ES256, Some("rsa-1"), &k.ec, "alice"),
        "kid of another algorithm",
    )
    .await;
    assert_refused(
        &server,
        &sign(Algorithm::RS256, Some("nope"), &k.rsa, "alice"),
        "unknown kid",
    )
    .await;
    // Key confusion: HS256 "signed" with the public key's bytes as the secret.
    for public in [&k.rsa_public_pem, &k.ec_public_pem] {
        let token = hs256(public, &json!({ "sub": "mallory", "exp": now() + 600 }));
        assert_refused(
            &server,
            &token,
            "HS256 where only public keys are configured",
        )
        .await;
    }
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &json!({ "sub": "mallory", "exp": now() + 600 }),
        &EncodingKey::from_secret(k.rsa_public_pem.as_bytes()),
    )
    .unwrap();
    assert_refused(&server, &confused, "HS256 with a public key's kid").await;
    drop(server);

    // PEM: the three public keys in one file, without kids.
    let pem = format!("{}{}{}", k.rsa_public_pem, k.ec_public_pem, k.ed_public_pem);
    let pem = write(&dir, "keys.pem", &pem);
    let server = standalone(false, &["--jwt-public-keys", &pem]);
    assert_accepted(
        &server,
        &sign(Algorithm::RS256, None, &k.rsa, "a"),
        "PEM RS256",
    )
    .await;
    assert_accepted(
        &server,
        &sign(Algorithm::ES256, None, &k.ec, "a"),
        "PEM ES256",
    )
    .await;
    assert_accepted(
        &server,
        &sign(Algorithm::EdDSA, None, &k.ed, "a"),
        "PEM EdDSA",
    )
    .await;
    assert_refused(
        &server,
        &sign(Algorithm::EdDSA, None, &other.ed, "a"),
        "PEM EdDSA wrong signature",
    )
    .await;
    let token = hs256(
        &k.rsa_public_pem,
        &json!({ "sub": "mallory", "exp": now() + 600 }),
    );
    assert_refused(&server, &token, "PEM: HS256 key confusion").await;
}

/// A small Kattis package `id` (one hidden test: a + b) under `dir`.
fn package(dir: &TempDir, id: &str) {
    let root = dir.path().join("problems").join(id);
    std::fs::create_dir_all(root.join("data/secret")).unwrap();
    std::fs::write(root.join("problem.yaml"), format!("name: {id}\n")).unwrap();
    std::fs::write(root.join("data/secret/1.in"), "1 2\n").unwrap();
    std::fs::write(root.join("data/secret/1.ans"), "3\n").unwrap();
}

const A_PLUS_B: &str = "a, b = map(int, input().split())\nprint(a + b)\n";

#[tokio::test]
async fn an_open_websocket_closes_4403_when_its_token_expires() {
    let dir = TempDir::new("verdict-platform");
    let secret = write(&dir, "secret", SECRET);
    let server = standalone(false, &["--jwt-hs256-secret-file", &secret]);
    // Valid for 2 more seconds (plus the verifier's 5 s of leeway for clock skew).
    let token = hs256(SECRET, &json!({ "sub": "alice", "exp": now() + 2 }));
    let opened = std::time::Instant::now();
    let Init::Ack(mut ws) = ws_init(&server, &token).await else {
        panic!("a valid token was refused")
    };
    let code = loop {
        let next = tokio::time::timeout(Duration::from_secs(30), ws.socket.next())
            .await
            .expect("closed within 30 s");
        match next {
            Some(Ok(Message::Close(frame))) => break frame.map_or(1005, |f| u16::from(f.code)),
            Some(Ok(Message::Text(text))) if text.contains("\"ping\"") => {
                let pong = json!({ "type": "pong" }).to_string();
                ws.socket.send(Message::text(pong)).await.unwrap();
            }
            Some(Ok(_)) => {}
            other => panic!("ended without a close frame: {other:?}"),
        }
    };
    let took = opened.elapsed();
    assert_eq!(code, 4403);
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "closed after {took:?}"
    );
    println!(
        "token expiry: the open WebSocket closed with 4403 after {took:?} (exp +2 s, leeway 5 s)"
    );
}

#[tokio::test]
async fn the_problems_claim_and_jwt_problems_only_limit_what_a_token_submits() {
    let dir = TempDir::new("verdict-platform");
    let secret = write(&dir, "secret", SECRET);
    package(&dir, "p1");
    package(&dir, "p2");
    let problems = dir.path().join("problems").display().to_string();
    let server = standalone(
        false,
        &[
            "--jwt-hs256-secret-file",
            &secret,
            "--jwt-problems-only",
            "--problems-dir",
            &problems,
        ],
    );
    let only_p1 = hs256(
        SECRET,
        &json!({ "sub": "carol", "exp": now() + 600, "verdict": { "problems": ["p1"] } }),
    );
    let any = hs256(SECRET, &json!({ "sub": "dave", "exp": now() + 600 }));
    let to =
        |p: &str| json!({ "i": { "problemId": p, "language": "python3", "source": A_PLUS_B } });
    let free = json!({ "i": { "language": "python3", "source": "print(1)" } });

    let (_, body) = post(&server, &only_p1, SUBMIT, to("p1")).await;
    assert_eq!(body["data"]["submit"]["status"], "QUEUED", "{body}");
    let (_, body) = post(&server, &only_p1, SUBMIT, to("p2")).await;
    assert_eq!(code(&body), Some("FORBIDDEN"), "outside its claim: {body}");
    let (_, body) = post(&server, &any, SUBMIT, to("p2")).await;
    assert_eq!(
        body["data"]["submit"]["status"], "QUEUED",
        "no claim: any problem: {body}"
    );
    for token in [&only_p1, &any] {
        let (_, body) = post(&server, token, SUBMIT, free.clone()).await;
        assert_eq!(
            code(&body),
            Some("FORBIDDEN"),
            "--jwt-problems-only: {body}"
        );
        assert!(body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("problems-only"));
    }
}

#[tokio::test]
async fn end_users_have_their_own_quotas() {
    let dir = TempDir::new("verdict-platform");
    let secret = write(&dir, "secret", SECRET);
    let server = standalone(
        false,
        &[
            "--jwt-hs256-secret-file",
            &secret,
            "--user-submits-per-minute",
            "3",
            "--user-max-unfinished",
            "2",
            "--user-max-ws",
            "1",
        ],
    );
    let erin = hs256(SECRET, &json!({ "sub": "erin", "exp": now() + 600 }));
    let frank = hs256(SECRET, &json!({ "sub": "frank", "exp": now() + 600 }));
    let slow = json!({ "i": { "language": "python3", "source": "import time\ntime.sleep(3)" } });
    // Two unfinished at once; the third waits for one of them.
    for _ in 0..2 {
        let (_, body) = post(&server, &erin, SUBMIT, slow.clone()).await;
        assert_eq!(body["data"]["submit"]["status"], "QUEUED", "{body}");
    }
    let (_, body) = post(&server, &erin, SUBMIT, slow.clone()).await;
    assert_eq!(
        code(&body),
        Some("RATE_LIMITED"),
        "unfinished quota: {body}"
    );
    let quota = body.clone();
    // Another user is not held up by erin's quota.
    let (_, body) = post(&server, &frank, SUBMIT, slow.clone()).await;
    assert_eq!(body["data"]["submit"]["status"], "QUEUED", "{body}");
    // The unfinished quota says "retry in a second"; the rate (3 a minute, the refused
    // submit above counted too) says when the next token comes, about 20 s away.
    assert_eq!(
        quota["errors"][0]["extensions"]["retryAfterMs"], 1000,
        "{quota}"
    );
    let quick = json!({ "i": { "language": "python3", "source": "print(1)" } });
    let (_, body) = post(&server, &erin, SUBMIT, quick).await;
    assert_eq!(code(&body), Some("RATE_LIMITED"), "rate: {body}");
    let wait = body["errors"][0]["extensions"]["retryAfterMs"]
        .as_u64()
        .unwrap();
    assert!(wait > 5_000, "the rate's wait, not the quota's: {body}");
    // One WebSocket per user.
    let Init::Ack(_first) = ws_init(&server, &frank).await else {
        panic!("first connection refused")
    };
    match ws_init(&server, &frank).await {
        Init::Closed(code) => assert_eq!(code, 4429),
        Init::Ack(_) => panic!("a second connection for one user was accepted"),
    }
    assert!(
        matches!(ws_init(&server, &erin).await, Init::Ack(_)),
        "erin has her own"
    );
}

/// OPTIONS /graphql as a browser's preflight from `origin`: (status, allow-origin,
/// allow-headers).
async fn preflight(server: &Server, origin: &str) -> (u16, Option<String>, Option<String>) {
    let res = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/graphql", server.http()),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    let get = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    (
        res.status().as_u16(),
        get("access-control-allow-origin"),
        get("access-control-allow-headers"),
    )
}

/// A WebSocket upgrade with `Origin: origin` (None: no header): the HTTP status.
async fn ws_upgrade_status(server: &Server, origin: Option<&str>) -> u16 {
    let mut request = server.ws("/graphql").into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn cors_and_websocket_origins_are_allowed_only_for_the_configured_sites() {
    const SITE: &str = "https://challenge.example";
    const OTHER: &str = "https://evil.example";
    let server = standalone(false, &["--cors-origin", SITE, "--ws-allowed-origin", SITE]);
    let (status, origin, headers) = preflight(&server, SITE).await;
    assert!(status < 300, "preflight allowed: {status}");
    assert_eq!(origin.as_deref(), Some(SITE));
    assert!(headers.unwrap_or_default().contains("authorization"));
    let (_, origin, _) = preflight(&server, OTHER).await;
    assert_eq!(origin, None, "another origin gets no CORS headers");
    let res = reqwest::Client::new()
        .post(format!("{}/graphql", server.http()))
        .header("origin", SITE)
        .json(&json!({ "query": "{ languages { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some(SITE)
    );
    assert_eq!(ws_upgrade_status(&server, Some(SITE)).await, 101);
    assert_eq!(ws_upgrade_status(&server, Some(OTHER)).await, 403);
    assert_eq!(
        ws_upgrade_status(&server, None).await,
        101,
        "non-browser clients"
    );

    // Without the flags: no CORS headers at all, and any origin may open a socket.
    let plain = standalone(false, &[]);
    let (_, origin, _) = preflight(&plain, SITE).await;
    assert_eq!(origin, None);
    assert_eq!(ws_upgrade_status(&plain, Some(OTHER)).await, 101);
}

//! Every language of the catalogue that issue 13 added (and Rust on rustc-web), with
//! real toolchains in the real sandbox: a hello world, a stdin echo and, for compiled
//! languages, a compile error, on `verdict standalone` and on `verdict server` + `verdict
//! worker` around Redis. A language whose toolchain this machine lacks is skipped with a
//! note (scripts/test installs them all). Then `Language.available`: a language no live
//! worker can run is refused at submit, and queued while no worker is alive at all.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verdict_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_verdict"))
}

/// One language's programs. `compile_error` is `None` for interpreted languages.
struct Programs {
    id: &'static str,
    /// Starts a line comment: a fresh one per run keeps the compile cache out of it.
    comment: &'static str,
    hello: &'static str,
    /// Copies stdin to stdout, line by line.
    echo: &'static str,
    compile_error: Option<&'static str>,
}

const GO: Programs = Programs {
    id: "go",
    comment: "//",
    hello: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"Hello, World!\")\n}\n",
    echo:
        "package main\n\nimport (\n\t\"bufio\"\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\
           \ts := bufio.NewScanner(os.Stdin)\n\tfor s.Scan() {\n\t\tfmt.Println(s.Text())\n\t}\n}\n",
    compile_error: Some("package main\n\nfunc main() {\n\tx := undefinedThing\n}\n"),
};

const TYPESCRIPT: Programs = Programs {
    id: "typescript",
    comment: "//",
    hello: "const greeting: string = \"Hello, World!\";\nconsole.log(greeting);\n",
    echo: "const input: string = require(\"fs\").readFileSync(0, \"utf8\");\n\
           for (const line of input.split(\"\\n\").filter((l: string) => l.length > 0)) {\n\
           \x20 console.log(line);\n}\n",
    // A type error: tsc still writes JS, but fails, and that is a compilation error.
    compile_error: Some("const n: number = \"not a number\";\nconsole.log(n);\n"),
};

const CSHARP: Programs = Programs {
    id: "csharp",
    comment: "//",
    hello: "using System;\nclass Program {\n  static void Main() { Console.WriteLine(\"Hello, World!\"); }\n}\n",
    echo: "using System;\nclass Program {\n  static void Main() {\n    string line;\n\
           \x20   while ((line = Console.ReadLine()) != null) Console.WriteLine(line);\n  }\n}\n",
    compile_error: Some("class Program { static void Main() { int x = \"s\"; } }\n"),
};

const RUBY: Programs = Programs {
    id: "ruby",
    comment: "#",
    hello: "puts \"Hello, World!\"\n",
    echo: "STDIN.each_line { |line| puts line }\n",
    compile_error: None,
};

const PHP: Programs = Programs {
    id: "php",
    comment: "#",
    hello: "<?php\necho \"Hello, World!\\n\";\n",
    echo: "<?php\nwhile (($line = fgets(STDIN)) !== false) {\n  echo $line;\n}\n",
    compile_error: None,
};

const HASKELL: Programs = Programs {
    id: "haskell",
    comment: "--",
    hello: "main :: IO ()\nmain = putStrLn \"Hello, World!\"\n",
    echo: "main :: IO ()\nmain = interact (unlines . lines)\n",
    compile_error: Some("main :: IO ()\nmain = putStrLn (1 + True)\n"),
};

const PASCAL: Programs = Programs {
    id: "pascal",
    comment: "//",
    hello: "program Hello;\nbegin\n  writeln('Hello, World!');\nend.\n",
    echo: "program Echo;\nvar line: string;\nbegin\n  while not eof do\n  begin\n\
           \x20   readln(line);\n    writeln(line);\n  end;\nend.\n",
    compile_error: Some("program Broken;\nbegin\n  writeln(undefinedThing);\nend.\n"),
};

const LUA: Programs = Programs {
    id: "lua",
    comment: "--",
    hello: "print(\"Hello, World!\")\n",
    echo: "for line in io.lines() do print(line) end\n",
    compile_error: None,
};

const PERL: Programs = Programs {
    id: "perl",
    comment: "#",
    hello: "print \"Hello, World!\\n\";\n",
    echo: "while (my $line = <STDIN>) {\n  print $line;\n}\n",
    compile_error: None,
};

/// Rust on rustc-web: `let else` (1.65) and `std::iter::repeat_n` (1.82) do not
/// compile on Debian's old rustc 1.63.
const RUST: Programs = Programs {
    id: "rust",
    comment: "//",
    hello: "fn main() {\n    let Some(w) = \"Hello, World!\".split(',').next() else { return };\n\
            \x20   let bang: String = std::iter::repeat_n('!', 1).collect();\n\
            \x20   println!(\"{w}, World{bang}\");\n}\n",
    echo: "use std::io::BufRead;\nfn main() {\n    for line in std::io::stdin().lock().lines() {\n\
           \x20       println!(\"{}\", line.unwrap());\n    }\n}\n",
    compile_error: Some("fn main() {\n    let x: i32 = \"not a number\";\n}\n"),
};

/// The final submission of one run, through a graphql-ws subscription.
const FINISHED: &str = r#"subscription($id: ID!) { submissionEvents(id: $id) {
  __typename
  ... on FinishedEvent { submission { verdict compileOutput message
      tests { verdict stdout stderr exitCode } } }
} }"#;

async fn judge(server: &Server, input: Value) -> Value {
    let id = submit(&server.http(), input).await;
    let mut ws = WsClient::connect(&server.ws("/graphql")).await;
    let op = ws.subscribe(FINISHED, json!({ "id": id })).await;
    let (events, completed) = ws.collect(&op, usize::MAX, Duration::from_secs(120)).await;
    assert!(completed, "subscription to {id} did not complete");
    events.last().unwrap()["submission"].clone()
}

/// `languages { id available version }`, once some worker reported (or after `wait`).
async fn languages(server: &Server, wait: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let body = graphql(
            &server.http(),
            "{ languages { id name version compiled available package } }",
            json!({}),
        )
        .await;
        let list = body["data"]["languages"]
            .as_array()
            .unwrap_or_else(|| panic!("languages: {body}"))
            .clone();
        if list.iter().any(|l| l["available"] == true) || start.elapsed() > wait {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The language `id` as the server reports it, or `None` (with a printed note) when no
/// live worker has its toolchain.
async fn installed(server: &Server, id: &str) -> Option<Value> {
    let list = languages(server, Duration::from_secs(20)).await;
    let lang = list
        .into_iter()
        .find(|l| l["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not in the catalogue"));
    if lang["available"] == true {
        Some(lang)
    } else {
        println!(
            "note: skipping {id}: its toolchain is not installed (package {}); \
             scripts/test installs it",
            lang["package"]
        );
        None
    }
}

/// A fresh comment at the end: each run compiles for real instead of hitting the cache.
fn fresh(p: &Programs, source: &str) -> String {
    format!("{source}{} {}\n", p.comment, uuid::Uuid::new_v4())
}

async fn hello_echo_and_compile_error(server: &Server, p: &Programs) {
    let Some(lang) = installed(server, p.id).await else {
        return;
    };
    assert_eq!(lang["compiled"], json!(p.compile_error.is_some()), "{lang}");
    assert_ne!(lang["version"], "unavailable", "{lang}");

    // Hello world.
    let s = judge(
        server,
        json!({ "language": p.id, "source": fresh(p, p.hello),
                "tests": [{ "stdin": "", "expectedOutput": "Hello, World!\n" }] }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED", "{}: hello world: {s}", p.id);
    assert_eq!(s["tests"][0]["stdout"], "Hello, World!\n", "{s}");

    // Stdin echo, on two tests (each in a fresh copy of the compiled program).
    let s = judge(
        server,
        json!({ "language": p.id, "source": fresh(p, p.echo), "compare": "EXACT",
                "tests": [
                    { "stdin": "hello\nworld 42\n", "expectedOutput": "hello\nworld 42\n" },
                    { "stdin": "ünïcödé ✓\n", "expectedOutput": "ünïcödé ✓\n" },
                ] }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED", "{}: echo: {s}", p.id);
    assert_eq!(s["tests"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["tests"][1]["stdout"], "ünïcödé ✓\n", "{s}");

    // A compile error is the user's: COMPILATION_ERROR with the compiler's message.
    if let Some(broken) = p.compile_error {
        let s = judge(
            server,
            json!({ "language": p.id, "source": fresh(p, broken) }),
        )
        .await;
        assert_eq!(s["verdict"], "COMPILATION_ERROR", "{}: {s}", p.id);
        let output = s["compileOutput"].as_str().unwrap_or_default();
        assert!(
            !output.trim().is_empty(),
            "{}: no compiler output: {s}",
            p.id
        );
        assert_eq!(s["tests"], json!([]), "{s}");
    }
}

async fn on_standalone(p: &Programs) {
    let server = standalone(bin(), None);
    hello_echo_and_compile_error(&server, p).await;
}

async fn on_redis(p: &Programs) {
    let (url, ns) = (redis_url(), namespace());
    let server = server(bin(), &url, &ns);
    let _worker = worker(bin(), &url, &ns, 1);
    hello_echo_and_compile_error(&server, p).await;
}

macro_rules! language_tests {
    ($($standalone:ident, $redis:ident: $programs:expr;)*) => {$(
        #[tokio::test]
        async fn $standalone() {
            on_standalone(&$programs).await;
        }
        #[tokio::test]
        async fn $redis() {
            on_redis(&$programs).await;
        }
    )*};
}

language_tests! {
    go_standalone, go_on_redis: GO;
    typescript_standalone, typescript_on_redis: TYPESCRIPT;
    csharp_standalone, csharp_on_redis: CSHARP;
    ruby_standalone, ruby_on_redis: RUBY;
    php_standalone, php_on_redis: PHP;
    haskell_standalone, haskell_on_redis: HASKELL;
    pascal_standalone, pascal_on_redis: PASCAL;
    lua_standalone, lua_on_redis: LUA;
    perl_standalone, perl_on_redis: PERL;
    rust_standalone, rust_on_redis: RUST;
}

// ---------------------------------------------------------------------------------------
// Availability

/// A catalogue with python3 and a language whose toolchain no machine has.
fn catalogue_with_a_missing_toolchain() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("verdict-langs-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("languages.toml");
    std::fs::write(
        &file,
        r#"
[[language]]
id = "cobol"
name = "COBOL"
package = "gnucobol4"
source = "main.cob"
version = ["/usr/bin/verdict-test-no-such-cobc", "--version"]
compile = ["/usr/bin/verdict-test-no-such-cobc", "-x", "main.cob"]
run = ["./main"]

[[language]]
id = "python3"
name = "Python 3"
package = "python3-minimal"
source = "main.py"
version = ["/usr/bin/python3", "--version"]
run = ["/usr/bin/python3", "-S", "main.py"]
"#,
    )
    .unwrap();
    (dir, file)
}

async fn submit_body(server: &Server, language: &str) -> Value {
    graphql(
        &server.http(),
        "mutation($i: SubmitInput!) { submit(input: $i) { id status } }",
        json!({ "i": { "language": language, "source": "print(1)" } }),
    )
    .await
}

fn assert_refused_as_not_installed(body: &Value) {
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["code"], "BAD_USER_INPUT", "{body}");
    assert_eq!(error["extensions"]["field"], "language", "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not installed") && message.contains("gnucobol4"),
        "{body}"
    );
    assert!(
        body["data"].is_null() || body["data"]["submit"].is_null(),
        "{body}"
    );
}

fn by_id<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter().find(|l| l["id"] == id).unwrap()
}

#[tokio::test]
async fn standalone_refuses_a_language_whose_toolchain_is_missing() {
    let (dir, file) = catalogue_with_a_missing_toolchain();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let proc = Proc(
        std::process::Command::new(bin())
            .args(["standalone", "--listen", &listen, "--languages"])
            .arg(&file)
            .env("RUST_LOG", "warn")
            .env_remove("VERDICT_REDIS_URL")
            .env_remove("VERDICT_REDIS_URL_FILE")
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "no listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let server = Server { proc, port };

    let list = languages(&server, Duration::from_secs(20)).await;
    let cobol = by_id(&list, "cobol");
    assert_eq!(cobol["available"], false, "{cobol}");
    assert_eq!(cobol["version"], "unavailable", "{cobol}");
    assert_eq!(cobol["package"], "gnucobol4", "{cobol}");
    assert_eq!(by_id(&list, "python3")["available"], true, "{list:?}");

    assert_refused_as_not_installed(&submit_body(&server, "cobol").await);
    let s = judge(
        &server,
        json!({ "language": "python3", "source": "print(1)" }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn on_redis_a_missing_toolchain_is_queued_without_workers_and_refused_with_one() {
    let (dir, file) = catalogue_with_a_missing_toolchain();
    let file = file.to_str().unwrap();
    let (url, ns) = (redis_url(), namespace());
    let server = {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let proc = Proc(
            std::process::Command::new(bin())
                .args(["server", "--listen", &listen, "--languages", file])
                .env("RUST_LOG", "warn")
                .env("VERDICT_REDIS_URL", &url)
                .env("VERDICT_REDIS_NAMESPACE", &ns)
                .spawn()
                .unwrap(),
        );
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "no listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { proc, port }
    };

    // No worker alive: nobody can tell, so the submission waits for one, as before.
    let list = languages(&server, Duration::ZERO).await;
    assert!(list.iter().all(|l| l["available"] == false), "{list:?}");
    let body = submit_body(&server, "cobol").await;
    assert_eq!(body["data"]["submit"]["status"], "QUEUED", "{body}");

    // A live worker without the toolchain: refused at once. (Its first job is the queued
    // cobol one, which ends as INTERNAL_ERROR: queued before anyone could refuse it.)
    let _worker = worker_with_env(bin(), &url, &ns, 1, &[("VERDICT_LANGUAGES", file)]);
    let list = languages(&server, Duration::from_secs(20)).await;
    assert_eq!(by_id(&list, "python3")["available"], true, "{list:?}");
    assert_eq!(by_id(&list, "cobol")["available"], false, "{list:?}");
    assert_refused_as_not_installed(&submit_body(&server, "cobol").await);
    let s = judge(
        &server,
        json!({ "language": "python3", "source": "print(1)" }),
    )
    .await;
    assert_eq!(s["verdict"], "ACCEPTED", "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verdict_languages_prints_versions_and_the_package_of_a_missing_toolchain() {
    let (dir, file) = catalogue_with_a_missing_toolchain();
    let out = std::process::Command::new(bin())
        .args(["languages", "--languages"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a missing toolchain is an error: {text}"
    );
    let cobol = text.lines().find(|l| l.starts_with("cobol")).unwrap();
    assert!(
        cobol.contains("MISSING") && cobol.contains("install gnucobol4"),
        "{text}"
    );
    let python = text.lines().find(|l| l.starts_with("python3")).unwrap();
    assert!(python.contains("Python 3."), "{text}");
    let _ = std::fs::remove_dir_all(&dir);

    // The built-in catalogue: the sandboxed Rust is rustc-web's, not Debian's 1.63.
    let out = std::process::Command::new(bin())
        .arg("languages")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    let rust = text.lines().find(|l| l.starts_with("rust ")).unwrap();
    if let Some(version) = rust.split_whitespace().find(|w| w.starts_with("1.")) {
        let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
        assert!(minor >= 80, "the sandboxed rustc is too old: {rust}");
    } else {
        println!("note: rust's toolchain is missing (scripts/test installs rustc-web)");
    }
}

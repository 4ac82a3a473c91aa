//! `verdict standalone` as a normal user (issue 19): no slot uid, no cgroups, no loop
//! mounts; only Landlock, seccomp, no_new_privs, rlimits and the parent's watches.
//!
//! Run as root (scripts/test), the tests start the binary as the unprivileged account
//! `verdict-nonroot` (scripts/test creates it; without it they print a note and pass),
//! from a copy the account can execute, with root-owned `/tmp/verdict-runs` and
//! `/tmp/verdict-slots` present, as a root test run leaves them. Run as a normal user, they
//! start the binary as that user.
//!
//! Checked: every available language's hello world; MLE, TLE and the process limit; the
//! hostile basics (no TCP to the server, no reading the account's own files outside the
//! run, no writing /tmp, kill(-1) hits nothing outside the run); and a directory someone
//! else owns is refused at start with a message saying whose it is.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verdict_testkit::*;

const ACCOUNT: &str = "verdict-nonroot";

/// A directory removed (with everything in it) on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str, mode: u32) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Who the binary runs as.
struct Account {
    /// `None`: this process's own (not root) uid.
    ids: Option<(u32, u32)>,
    uid: u32,
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// The account to run as, or `None` (with a note) when root has no such account.
fn account() -> Option<Account> {
    if !is_root() {
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        return Some(Account { ids: None, uid });
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let entry = passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == ACCOUNT).then_some(())?;
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    });
    match entry {
        Some((uid, gid)) => Some(Account {
            ids: Some((uid, gid)),
            uid,
        }),
        None => {
            eprintln!(
                "note: running as root and there is no account {ACCOUNT} \
                 (scripts/test creates it: useradd --system --no-create-home {ACCOUNT}); skipped"
            );
            None
        }
    }
}

/// The built binary, where the account can execute it (the target dir may not be
/// readable to it): a copy in a scratch dir, removed on drop.
struct Binary {
    path: PathBuf,
    _dir: Option<Scratch>,
}

fn binary(account: &Account) -> Binary {
    let built = Path::new(env!("CARGO_BIN_EXE_verdict"));
    if account.ids.is_none() {
        return Binary {
            path: built.to_path_buf(),
            _dir: None,
        };
    }
    let dir = Scratch::new("verdict-nonroot-bin", 0o755);
    let path = dir.0.join("verdict");
    std::fs::copy(built, &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Binary {
        path,
        _dir: Some(dir),
    }
}

/// A directory that belongs to the account (for its XDG_RUNTIME_DIR), removed on drop.
fn account_dir(account: &Account, prefix: &str) -> Scratch {
    let dir = Scratch::new(prefix, 0o700);
    if let Some((uid, gid)) = account.ids {
        std::os::unix::fs::chown(&dir.0, Some(uid), Some(gid)).unwrap();
    }
    dir
}

/// The command that runs `bin args` as the account, with a clean environment of its own:
/// no home (a system account has none), XDG_RUNTIME_DIR as given.
fn as_account(account: &Account, bin: &Path, runtime: &Path) -> Command {
    let mut cmd = match account.ids {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("XDG_RUNTIME_DIR", runtime)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    cmd
}

/// Root-owned `/tmp/verdict-runs` and `/tmp/verdict-slots`, as a root run leaves them.
fn root_dirs_present() {
    if is_root() {
        for dir in ["/tmp/verdict-runs", "/tmp/verdict-slots"] {
            std::fs::create_dir_all(dir).unwrap();
        }
    }
}

fn start(account: &Account, bin: &Path, runtime: &Path) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = as_account(account, bin, runtime)
        .args(["standalone", "--listen", &listen])
        .spawn()
        .expect("spawn verdict");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("verdict standalone as a normal user exited: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Server {
        proc: Proc(child),
        port,
    }
}

const RESULT: &str = "query($id: ID!) { submission(id: $id) { status verdict compileOutput \
                      tests { verdict stdout stderr exitCode signal memoryKb timeMs } } }";

/// Submits and waits for the final submission.
async fn judge(server: &Server, input: Value) -> Value {
    let id = submit(&server.http(), input).await;
    wait(server, &id).await
}

async fn wait(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let body = graphql(&server.http(), RESULT, json!({ "id": id })).await;
        let s = body["data"]["submission"].clone();
        if s["status"] == "FINISHED" {
            return s;
        }
        assert!(Instant::now() < deadline, "{id} did not finish: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hello world per language id of the catalogue.
const HELLO: &[(&str, &str)] = &[
    ("python3", "print(\"Hello, World!\")\n"),
    ("c", "#include <stdio.h>\nint main(void) { puts(\"Hello, World!\"); return 0; }\n"),
    ("cpp", "#include <iostream>\nint main() { std::cout << \"Hello, World!\\n\"; }\n"),
    ("rust", "fn main() {\n    println!(\"Hello, World!\");\n}\n"),
    ("javascript", "console.log(\"Hello, World!\");\n"),
    (
        "java",
        "public class Main {\n  public static void main(String[] args) {\n    \
         System.out.println(\"Hello, World!\");\n  }\n}\n",
    ),
    ("bash", "echo \"Hello, World!\"\n"),
    (
        "go",
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"Hello, World!\")\n}\n",
    ),
    ("typescript", "const greeting: string = \"Hello, World!\";\nconsole.log(greeting);\n"),
    (
        "csharp",
        "using System;\nclass Program {\n  static void Main() { Console.WriteLine(\"Hello, World!\"); }\n}\n",
    ),
    ("ruby", "puts \"Hello, World!\"\n"),
    ("php", "<?php\necho \"Hello, World!\\n\";\n"),
    ("haskell", "main :: IO ()\nmain = putStrLn \"Hello, World!\"\n"),
    ("pascal", "program Hello;\nbegin\n  writeln('Hello, World!');\nend.\n"),
    ("lua", "print(\"Hello, World!\")\n"),
    ("perl", "print \"Hello, World!\\n\";\n"),
];

/// The catalogue's languages and whether this machine has their toolchains.
async fn languages(server: &Server) -> Vec<(String, bool)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = graphql(&server.http(), "{ languages { id available } }", json!({})).await;
        let list: Vec<(String, bool)> = body["data"]["languages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["id"].as_str().unwrap().to_owned(),
                    l["available"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        // `available` comes from the worker's heartbeat: wait for the first.
        if list.iter().any(|(_, a)| *a) || Instant::now() > deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn python(source: &str, limits: Value) -> Value {
    json!({ "language": "python3", "source": source, "limits": limits })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_user_runs_every_language_and_the_limits_and_hostile_basics_hold() {
    let Some(account) = account() else { return };
    root_dirs_present();
    let bin = binary(&account);
    let runtime = account_dir(&account, "verdict-nonroot-run");
    let server = start(&account, &bin.path, &runtime.0);

    // The per-user locations were made, the account's own, 0700.
    let own = runtime.0.join("verdict");
    for dir in [own.clone(), own.join("slots")] {
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.uid(), account.uid, "{}", dir.display());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o700,
            "{}",
            dir.display()
        );
    }

    // Every available language: hello world, accepted.
    let langs = languages(&server).await;
    let mut ids = Vec::new();
    for (id, available) in &langs {
        let Some((_, source)) = HELLO.iter().find(|(l, _)| l == id) else {
            panic!("no hello world for language {id}: add one to HELLO");
        };
        if !available {
            eprintln!("note: {id} is not available on this machine; skipped");
            continue;
        }
        let input = json!({ "language": id, "source": source,
            "tests": [{ "stdin": "", "expectedOutput": "Hello, World!" }] });
        ids.push((id.clone(), submit(&server.http(), input).await));
    }
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for (lang, id) in &ids {
        let s = wait(&server, id).await;
        if s["verdict"] == "ACCEPTED" {
            passed.push(lang.clone());
        } else {
            failed.push(format!("{lang}: {s}"));
        }
    }
    eprintln!("passed as uid {}: {}", account.uid, passed.join(" "));
    assert!(
        failed.is_empty(),
        "hello world failed:\n{}",
        failed.join("\n")
    );
    assert!(passed.iter().any(|l| l == "python3"), "{passed:?}");

    // Memory: 300 MiB filled under 64 MiB (no memory cgroup: the resident-set watch).
    let s = judge(
        &server,
        python(
            "s = b'x' * (300 << 20)\nprint(len(s))\n",
            json!({ "memoryKb": 65536 }),
        ),
    )
    .await;
    assert_eq!(s["verdict"], "MEMORY_LIMIT_EXCEEDED", "{s}");

    // CPU: a busy loop under 500 ms.
    let s = judge(
        &server,
        python("while True:\n    pass\n", json!({ "cpuTimeMs": 500 })),
    )
    .await;
    assert_eq!(s["verdict"], "TIME_LIMIT_EXCEEDED", "{s}");
    let ms = s["tests"][0]["timeMs"].as_u64().unwrap();
    assert!((500..1500).contains(&ms), "stopped after {ms} ms of CPU");

    // Processes: forking until refused, under a limit of 16 (nothing else runs now, so
    // the limit is the run's own: the main process plus at most 15 children).
    let bomb = "import os, time\nn = 0\ntry:\n    while n < 1000:\n        if os.fork() == 0:\n\
                \x20           time.sleep(30)\n            os._exit(0)\n        n += 1\n\
                except OSError as e:\n    print('refused after', n, e.errno)\n";
    let s = judge(
        &server,
        python(bomb, json!({ "processes": 16, "wallTimeMs": 10000 })),
    )
    .await;
    let out = s["tests"][0]["stdout"].as_str().unwrap_or("");
    let n: u64 = out
        .strip_prefix("refused after ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the fork bomb was not stopped: {s}"));
    assert!(
        (8..=16).contains(&n),
        "forked {n} children under a limit of 16: {s}"
    );

    // Java's threads under its process limit: many threads still start.
    if passed.iter().any(|l| l == "java") {
        let threads = "public class Main {\n  public static void main(String[] a) throws Exception {\n\
                       \x20   Thread[] t = new Thread[16];\n    for (int i = 0; i < t.length; i++) { t[i] = new Thread(() -> {}); t[i].start(); }\n\
                       \x20   for (Thread x : t) x.join();\n    System.out.println(\"threads ok\");\n  }\n}\n";
        let s = judge(&server, json!({ "language": "java", "source": threads })).await;
        assert_eq!(s["verdict"], "ACCEPTED", "{s}");
        assert_eq!(s["tests"][0]["stdout"], "threads ok\n", "{s}");
    }

    // Hostile basics. A file of the account's own outside the run directory: same uid, so
    // only Landlock keeps it away.
    let secret = runtime.0.join("secret.txt");
    std::fs::write(&secret, "the account's secret\n").unwrap();
    if let Some((uid, gid)) = account.ids {
        std::os::unix::fs::chown(&secret, Some(uid), Some(gid)).unwrap();
    }
    let escape = format!("/tmp/verdict-nonroot-escape-{}", uuid::Uuid::new_v4());
    let hostile = format!(
        "import socket\nbad = []\n\
         try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    bad.append('tcp')\nexcept OSError:\n    pass\n\
         for path in ['{secret}', '/etc/shadow', '/proc/1/environ']:\n    try:\n        open(path).read()\n        bad.append(path)\n    except OSError:\n        pass\n\
         try:\n    open('{escape}', 'w').write('x')\n    bad.append('write')\nexcept OSError:\n    pass\n\
         print('bad:', bad)\n",
        port = server.port,
        secret = secret.display(),
    );
    let s = judge(&server, python(&hostile, json!({}))).await;
    assert_eq!(s["tests"][0]["stdout"], "bad: []\n", "{s}");
    assert!(!Path::new(&escape).exists());

    // kill(-1) as the account: a canary process of the account outside the run, and the
    // server, survive.
    let mut canary = as_account(&account, Path::new("/bin/sleep"), &runtime.0)
        .arg("60")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let s = judge(
        &server,
        python(
            "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('sent')\n",
            json!({}),
        ),
    )
    .await;
    assert_ne!(s["verdict"], "INTERNAL_ERROR", "{s}");
    assert!(
        canary.try_wait().unwrap().is_none(),
        "kill(-1) from a run killed a process of the account outside it"
    );
    let _ = canary.kill();
    let _ = canary.wait();
    let s = judge(&server, python("print('still here')\n", json!({}))).await;
    assert_eq!(s["tests"][0]["stdout"], "still here\n", "{s}");
}

#[tokio::test]
async fn a_directory_someone_else_owns_is_refused_at_start() {
    let Some(account) = account() else { return };
    if account.ids.is_none() {
        eprintln!("note: not root, so no directory of another owner can be made; skipped");
        return;
    }
    root_dirs_present();
    let bin = binary(&account);
    let runtime = account_dir(&account, "verdict-nonroot-run");
    // Root made the per-user dir first.
    std::fs::create_dir(runtime.0.join("verdict")).unwrap();
    let out = as_account(&account, &bin.path, &runtime.0)
        .args([
            "standalone",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("belongs to uid 0") && stderr.contains("refusing"),
        "{stderr}"
    );
    std::fs::remove_dir(runtime.0.join("verdict")).unwrap();

    // Root's shared slot lock dir, named explicitly.
    let out = as_account(&account, &bin.path, &runtime.0)
        .args([
            "standalone",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--slot-dir", "/tmp/verdict-slots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("slot lock dir /tmp/verdict-slots belongs to uid 0"),
        "{stderr}"
    );
}

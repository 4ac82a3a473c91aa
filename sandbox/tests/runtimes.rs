//! Normal programs in real toolchains must still work under every layer.

mod common;

use common::*;
use verdict_sandbox::Limits;

fn skip_unless(path: &str) -> bool {
    if std::path::Path::new(path).exists() {
        false
    } else {
        eprintln!("skipping: {path} not installed");
        true
    }
}

#[test]
fn python_reads_1mb_stdin() {
    if skip_unless("/usr/bin/python3") {
        return;
    }
    let input: Vec<u8> = (0..1024 * 1024)
        .map(|i| if i % 64 == 63 { b'\n' } else { b'x' })
        .collect();
    let o = run(
        SLOT_BASE + 50,
        "/usr/bin/python3",
        &[
            "-c",
            "import sys; d = sys.stdin.buffer.read(); print(len(d), d.count(b'\\n'))",
        ],
        &input,
        Limits::default(),
    );
    assert!(o.success(), "{o:?} {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), "1048576 16384\n");
}

#[test]
fn node_runs() {
    if skip_unless("/usr/bin/node") {
        return;
    }
    let o = run(
        SLOT_BASE + 51,
        "/usr/bin/node",
        &["-e", "const c = require('crypto'); console.log(1 + 1, c.createHash('sha256').update('x').digest('hex').length)"],
        b"",
        Limits::default(),
    );
    assert!(o.success(), "{o:?} {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), "2 64\n");
}

#[test]
fn java_runs_with_256mb() {
    if skip_unless("/usr/bin/java") {
        return;
    }
    let slot = SLOT_BASE + 52;
    let dir = sandbox().run_dir(slot).expect("dir");
    dir.write_file(
        "Main.java",
        b"public class Main { public static void main(String[] a) { long s = 0; for (int i = 0; i < 1000000; i++) s += i; System.out.println(\"sum \" + s); } }\n",
    )
    .expect("write");
    let limits = Limits {
        memory_kb: 256 * 1024,
        cpu_ms: 10_000,
        wall_ms: 20_000,
        processes: 128,
        ..Limits::default()
    };
    let r = run_in(&dir, slot, "/usr/bin/java", &["Main.java"], b"", limits);
    let o = r.outcome;
    assert!(o.success(), "{o:?} {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), "sum 499999500000\n");
}

#[test]
fn gcc_compiles_inside_the_sandbox_and_threads_run() {
    if skip_unless("/usr/bin/gcc") {
        return;
    }
    let slot = SLOT_BASE + 53;
    let dir = sandbox().run_dir(slot).expect("dir");
    dir.write_file(
        "main.c",
        b"#include <pthread.h>\n#include <stdio.h>\nstatic long sum[4];\nvoid *w(void *a){ long i = (long)a; for (long k = 0; k < 1000000; k++) sum[i] += k; return 0; }\nint main(){ pthread_t t[4]; for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, w, (void*)i); long s = 0; for (int i = 0; i < 4; i++) { pthread_join(t[i], 0); s += sum[i]; } printf(\"%ld\\n\", s); return 0; }\n",
    )
    .expect("write");
    let limits = Limits {
        cpu_ms: 10_000,
        wall_ms: 20_000,
        ..Limits::default()
    };
    let r = run_in(
        &dir,
        slot,
        "/usr/bin/gcc",
        &["-O2", "-pthread", "-o", "main", "main.c"],
        b"",
        limits,
    );
    assert!(
        r.outcome.success(),
        "{:?} {}",
        r.outcome,
        String::from_utf8_lossy(&r.outcome.stderr)
    );
    let bin = dir.path().join("main");
    let r = run_in(&dir, slot, path_str(&bin), &[], b"", Limits::default());
    assert!(r.outcome.success(), "{:?}", r.outcome);
    assert_eq!(stdout(&r.outcome), "1999998000000\n");
}

#[test]
fn python_memory_error_is_mle() {
    if skip_unless("/usr/bin/python3") {
        return;
    }
    let limits = Limits {
        memory_kb: 64 * 1024,
        ..Limits::default()
    };
    let o = run(
        SLOT_BASE + 54,
        "/usr/bin/python3",
        &["-c", "x = bytearray(200 * 1024 * 1024); print(len(x))"],
        b"",
        limits,
    );
    assert_eq!(
        o.limit,
        Some(verdict_sandbox::LimitHit::Memory),
        "{o:?} {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

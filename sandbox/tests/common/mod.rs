//! Shared helpers: one Sandbox per test binary, C programs compiled at test time.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use verdict_sandbox::{Limits, Outcome, RunDir, RunSpec, Sandbox, SandboxConfig, StreamKind};

pub fn sandbox() -> &'static Sandbox {
    static SB: OnceLock<Sandbox> = OnceLock::new();
    SB.get_or_init(|| {
        let config = SandboxConfig {
            base_dir: PathBuf::from("/tmp/verdict-sandbox-tests"),
            ..SandboxConfig::default()
        };
        Sandbox::new(config).expect("sandbox")
    })
}

/// Test slots start high so they never collide with other crates' tests on this machine.
pub const SLOT_BASE: u32 = 1000;

pub fn env_for(dir: &RunDir) -> Vec<(String, String)> {
    let d = dir.path().display().to_string();
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), d.clone()),
        ("TMPDIR".into(), d),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

pub struct Ran {
    pub outcome: Outcome,
    pub chunks: usize,
}

pub fn run_in(
    dir: &RunDir,
    slot: u32,
    program: &str,
    args: &[&str],
    stdin: &[u8],
    limits: Limits,
) -> Ran {
    let spec = RunSpec {
        program: PathBuf::from(program),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env_for(dir),
        stdin,
        dir,
        slot,
        limits,
    };
    let mut chunks = 0;
    let mut on_output = |_k: StreamKind, _d: &[u8]| chunks += 1;
    let cancel = AtomicBool::new(false);
    let outcome = sandbox()
        .run(&spec, &mut on_output, &cancel)
        .expect("sandbox run");
    Ran { outcome, chunks }
}

/// Runs `program args` in a fresh run dir of `slot`.
pub fn run(slot: u32, program: &str, args: &[&str], stdin: &[u8], limits: Limits) -> Outcome {
    let dir = sandbox().run_dir(slot).expect("run dir");
    run_in(&dir, slot, program, args, stdin, limits).outcome
}

/// Compiles C source with /usr/bin/gcc in a tempdir and returns the binary's bytes.
pub fn compile_c(name: &str, source: &str) -> Vec<u8> {
    let dir = tempfile::Builder::new()
        .prefix("verdict-sandbox-c-")
        .tempdir()
        .expect("tempdir");
    let src = dir.path().join(format!("{name}.c"));
    let bin = dir.path().join(name);
    std::fs::write(&src, source).expect("write source");
    let out = Command::new("/usr/bin/gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg("-lpthread")
        .output()
        .expect("gcc");
    assert!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&bin).expect("read binary")
}

/// Compiles `source`, places the binary in a fresh run dir of `slot` and runs it there.
pub fn run_c(
    slot: u32,
    name: &str,
    source: &str,
    args: &[&str],
    stdin: &[u8],
    limits: Limits,
) -> Outcome {
    let bin = compile_c(name, source);
    let dir = sandbox().run_dir(slot).expect("run dir");
    dir.write_file_mode(name, &bin, 0o700)
        .expect("write binary");
    let program = dir.path().join(name);
    run_in(&dir, slot, path_str(&program), args, stdin, limits).outcome
}

pub fn stdout(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn assert_normal_run_still_works(slot: u32) {
    let t = std::time::Instant::now();
    let o = run(
        slot,
        "/bin/echo",
        &["still", "fine"],
        b"",
        Limits::default(),
    );
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    assert_eq!(stdout(&o), "still fine\n");
    assert!(
        t.elapsed().as_millis() < 1000,
        "normal run took {:?}",
        t.elapsed()
    );
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

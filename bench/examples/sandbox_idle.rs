//! Is a sandboxed run slower after the worker idled? Times sandboxed `python3 -S -c
//! 'print(1)'` (and bare) back to back and after a pause, with the slot cgroups on and off.
//!
//! Run: `cargo run --release -p verdict-bench --example sandbox_idle -- [iterations] [pause_ms]`
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use verdict_sandbox::{Limits, RunSpec, Sandbox, SandboxConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(40) as usize;
    let pause = Duration::from_millis(args.get(1).copied().unwrap_or(40));
    let program = "/usr/bin/python3";
    let pargs = ["-S", "-c", "print(1)"];
    println!(
        "{:<14} {:>12} {:>12}",
        "",
        "back-to-back",
        format!("after {} ms", pause.as_millis())
    );
    let bare = |p: Duration| {
        let mut v = Vec::new();
        for _ in 0..n {
            std::thread::sleep(p);
            let t = Instant::now();
            let _ = Command::new(program)
                .args(pargs)
                .stdin(Stdio::null())
                .output();
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        median(v)
    };
    println!(
        "{:<14} {:>12.2} {:>12.2}",
        "bare",
        bare(Duration::ZERO),
        bare(pause)
    );
    for (label, cgroup) in [("sandbox", true), ("no cgroups", false)] {
        let mut config = SandboxConfig {
            base_dir: PathBuf::from("/tmp/verdict-bench-idle"),
            ..SandboxConfig::default()
        };
        if !cgroup {
            config.cgroup_name = None;
        }
        let sandbox = Sandbox::new(config).expect("sandbox");
        let slot = 3000;
        let dir = sandbox.run_dir(slot).expect("run dir");
        let spec = RunSpec {
            program: PathBuf::from(program),
            args: pargs.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: b"",
            dir: &dir,
            slot,
            limits: Limits::default(),
        };
        let cancel = AtomicBool::new(false);
        let run = |p: Duration| {
            let mut v = Vec::new();
            for _ in 0..n {
                std::thread::sleep(p);
                let t = Instant::now();
                let _ = sandbox.run(&spec, &mut |_, _| {}, &cancel);
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
            median(v)
        };
        println!(
            "{label:<14} {:>12.2} {:>12.2}",
            run(Duration::ZERO),
            run(pause)
        );
    }
}

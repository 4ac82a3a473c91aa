//! Measures the sandbox's per-run cost with individual layers switched off (diagnostics).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use verdict_sandbox::{Limits, RunSpec, Sandbox, SandboxConfig};

fn median_run(sb: &Sandbox, slot: u32, n: usize) -> Duration {
    let dir = sb.run_dir(slot).expect("dir");
    let spec = RunSpec {
        program: PathBuf::from("/bin/true"),
        args: vec![],
        env: vec![("PATH".into(), "/usr/bin".into())],
        stdin: b"",
        dir: &dir,
        slot,
        limits: Limits::default(),
    };
    let cancel = AtomicBool::new(false);
    let mut v = Vec::new();
    for i in 0..n + 20 {
        let t = Instant::now();
        let o = sb.run(&spec, &mut |_, _| {}, &cancel).expect("run");
        assert!(o.success(), "{o:?}");
        if i >= 20 {
            v.push(t.elapsed());
        }
    }
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n = 300;
    let base = SandboxConfig {
        base_dir: PathBuf::from("/tmp/verdict-bench-runs"),
        ..SandboxConfig::default()
    };
    let variants: Vec<(&str, SandboxConfig)> = vec![
        ("all layers", base.clone()),
        (
            "no cgroups",
            SandboxConfig {
                cgroup_name: None,
                ..base.clone()
            },
        ),
        (
            "no uid drop",
            SandboxConfig {
                drop_privileges: false,
                ..base.clone()
            },
        ),
        (
            "no proc",
            SandboxConfig {
                proc_when_uid_dropped: false,
                ..base.clone()
            },
        ),
        (
            "few paths",
            SandboxConfig {
                read_only_paths: vec!["/usr".into()],
                ..base.clone()
            },
        ),
    ];
    for (name, cfg) in variants {
        let sb = Sandbox::new(cfg).expect("sandbox");
        let d = median_run(&sb, 2100, n);
        println!("{name:<14} {:.3} ms", d.as_secs_f64() * 1e3);
    }
    let bare: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let _ = std::process::Command::new("/bin/true").output();
            t.elapsed()
        })
        .collect();
    let mut bare = bare;
    bare.sort();
    println!("bare           {:.3} ms", bare[n / 2].as_secs_f64() * 1e3);
}

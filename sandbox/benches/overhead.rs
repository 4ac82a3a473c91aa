//! Sandbox overhead: median wall time per run of `/bin/true` and `python3 -c pass`, bare
//! spawn vs. our sandbox with every layer vs. bubblewrap (when installed), with ratios.
//!
//! Run: `cargo bench -p verdict-sandbox --bench overhead` (optionally `-- <iterations>`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use verdict_sandbox::{Limits, RunSpec, Sandbox, SandboxConfig};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_n(n: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..n.min(20) {
        f(); // warm-up
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    median(samples)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let sandbox = match Sandbox::new(SandboxConfig {
        base_dir: PathBuf::from("/tmp/verdict-bench-runs"),
        ..SandboxConfig::default()
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandbox unavailable: {e}");
            std::process::exit(1);
        }
    };
    println!("layers:");
    for l in sandbox.report() {
        println!("  {:<14} {}", l.name, if l.active { "on" } else { "off" });
    }
    let slot = 2000;
    let dir = match sandbox.run_dir(slot) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("run dir: {e}");
            std::process::exit(1);
        }
    };
    let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let cancel = AtomicBool::new(false);

    let cases: [(&str, &str, &[&str], usize); 2] = [
        ("/bin/true", "/bin/true", &[], n),
        (
            "python3 -c pass",
            "/usr/bin/python3",
            &["-c", "pass"],
            (n / 5).max(20),
        ),
    ];
    println!();
    println!(
        "{:<18} {:>10} {:>10} {:>8} {:>10} {:>8}",
        "program", "bare ms", "verdict", "ratio", "bwrap", "ratio"
    );
    for (label, program, args, iters) in cases {
        if !Path::new(program).exists() {
            println!("{label:<18} (not installed)");
            continue;
        }
        let bare = time_n(iters, || {
            let _ = Command::new(program)
                .args(args)
                .env_clear()
                .stdin(Stdio::null())
                .output();
        });
        let spec = RunSpec {
            program: PathBuf::from(program),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("HOME".into(), dir.path().display().to_string()),
                ("TMPDIR".into(), dir.path().display().to_string()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            stdin: b"",
            dir: &dir,
            slot,
            limits: Limits::default(),
        };
        let mut failed = None;
        let ours = time_n(iters, || {
            match sandbox.run(&spec, &mut |_, _| {}, &cancel) {
                Ok(o) if o.success() => {}
                Ok(o) => failed = Some(format!("{o:?}")),
                Err(e) => failed = Some(e.to_string()),
            }
        });
        if let Some(f) = failed {
            eprintln!("sandboxed {label} failed: {f}");
        }
        let bw = bwrap.map(|b| {
            time_n(iters, || {
                let _ = Command::new(b)
                    .args([
                        "--ro-bind",
                        "/usr",
                        "/usr",
                        "--symlink",
                        "usr/lib",
                        "/lib",
                        "--symlink",
                        "usr/lib64",
                        "/lib64",
                    ])
                    .args([
                        "--symlink",
                        "usr/bin",
                        "/bin",
                        "--dev",
                        "/dev",
                        "--proc",
                        "/proc",
                        "--unshare-all",
                        "--die-with-parent",
                    ])
                    .arg(program)
                    .args(args)
                    .env_clear()
                    .stdin(Stdio::null())
                    .output();
            })
        });
        let bw_cols = match bw {
            Some(b) => format!("{:>10.3} {:>7.2}x", ms(b), ms(b) / ms(bare)),
            None => format!("{:>10} {:>8}", "-", "-"),
        };
        println!(
            "{label:<18} {:>10.3} {:>10.3} {:>7.2}x {bw_cols}",
            ms(bare),
            ms(ours),
            ms(ours) / ms(bare)
        );
    }
    let rd = time_n(n.min(200), || {
        let _ = sandbox.run_dir(slot + 1);
    });
    println!();
    println!(
        "run dir create+remove: {:.3} ms (per submission, not per run)",
        ms(rd)
    );
}

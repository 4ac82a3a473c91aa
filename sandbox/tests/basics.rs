//! Core behaviour: exit codes, signals, limits, stdin/stdout plumbing, run directories.

mod common;

use common::*;
use verdict_sandbox::{LimitHit, Limits};

#[test]
fn exit_code_is_reported() {
    let o = run(
        SLOT_BASE + 1,
        "/bin/sh",
        &["-c", "echo hi; echo err >&2; exit 7"],
        b"",
        Limits::default(),
    );
    assert_eq!(o.exit_code, Some(7), "{o:?}");
    assert_eq!(o.signal, None);
    assert_eq!(stdout(&o), "hi\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    assert_eq!(o.limit, None);
}

#[test]
fn true_succeeds() {
    let o = run(SLOT_BASE + 2, "/bin/true", &[], b"", Limits::default());
    assert!(o.success(), "{o:?}");
}

#[test]
fn signal_is_reported() {
    let o = run_c(
        SLOT_BASE + 3,
        "segv",
        "#include <signal.h>\nint main(){ volatile int *p = 0; *p = 1; return 0; }",
        &[],
        b"",
        Limits::default(),
    );
    assert_eq!(o.signal, Some(libc::SIGSEGV), "{o:?}");
    assert_eq!(o.exit_code, None);
    assert_eq!(o.limit, None);
}

#[test]
fn cpu_time_limit() {
    let limits = Limits {
        cpu_ms: 500,
        wall_ms: 10_000,
        ..Limits::default()
    };
    let o = run_c(
        SLOT_BASE + 4,
        "spin",
        "int main(){ volatile unsigned long x = 0; for(;;) x++; }",
        &[],
        b"",
        limits,
    );
    assert_eq!(o.limit, Some(LimitHit::CpuTime), "{o:?}");
    assert!(o.cpu_ms >= 500, "{o:?}");
    assert!(o.wall_ms < 5_000, "{o:?}");
}

#[test]
fn wall_time_limit() {
    let limits = Limits {
        wall_ms: 300,
        ..Limits::default()
    };
    let o = run(SLOT_BASE + 5, "/bin/sleep", &["10"], b"", limits);
    assert_eq!(o.limit, Some(LimitHit::WallTime), "{o:?}");
    assert_eq!(o.signal, Some(libc::SIGKILL));
    assert!(o.wall_ms >= 300 && o.wall_ms < 1_500, "{o:?}");
    assert_normal_run_still_works(SLOT_BASE + 5);
}

#[test]
fn output_flood_is_cut_fast() {
    let limits = Limits {
        output_bytes: 64 * 1024,
        wall_ms: 10_000,
        ..Limits::default()
    };
    let o = run_c(
        SLOT_BASE + 6,
        "flood",
        "#include <stdio.h>\nint main(){ for(;;) fputs(\"flood flood flood flood flood flood\\n\", stdout); }",
        &[],
        b"",
        limits,
    );
    assert_eq!(o.limit, Some(LimitHit::Output), "{o:?}");
    assert!(o.stdout_truncated);
    assert_eq!(o.stdout.len(), 64 * 1024);
    assert!(
        o.wall_ms < 1_000,
        "OLE should be immediate: {} ms",
        o.wall_ms
    );
    assert_normal_run_still_works(SLOT_BASE + 6);
}

#[test]
fn big_stdin_is_echoed() {
    let input: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let limits = Limits {
        output_bytes: 4 * 1024 * 1024,
        ..Limits::default()
    };
    let o = run(SLOT_BASE + 7, "/bin/cat", &[], &input, limits);
    assert!(o.success(), "{:?}", o.limit);
    assert_eq!(o.stdout.len(), input.len());
    assert!(o.stdout == input);
}

#[test]
fn environment_is_only_what_we_pass() {
    let dir = sandbox().run_dir(SLOT_BASE + 8).expect("dir");
    let r = run_in(
        &dir,
        SLOT_BASE + 8,
        "/usr/bin/env",
        &[],
        b"",
        Limits::default(),
    );
    let mut lines: Vec<String> = stdout(&r.outcome).lines().map(str::to_owned).collect();
    lines.sort();
    let mut want: Vec<String> = env_for(&dir)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    want.sort();
    assert_eq!(lines, want);
    assert!(r.chunks >= 1);
}

#[test]
fn scratch_file_in_run_dir() {
    let o = run(
        SLOT_BASE + 9,
        "/bin/sh",
        &["-c", "echo data > scratch.txt && cat scratch.txt && mkdir sub && echo x > sub/y && cat sub/y"],
        b"",
        Limits::default(),
    );
    assert!(o.success(), "{o:?} {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), "data\nx\n");
}

#[test]
fn run_dir_is_private_and_removed() {
    let slot = SLOT_BASE + 10;
    let dir = sandbox().run_dir(slot).expect("dir");
    let path = dir.path().to_path_buf();
    let meta = std::fs::metadata(&path).expect("meta");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    if let Some((uid, _)) = sandbox().slot_ids(slot) {
        assert_eq!(meta.uid(), uid);
    }
    dir.write_file("main.py", b"print(1)\n").expect("write");
    assert!(dir.write_file("main.py", b"again").is_err(), "O_EXCL");
    assert!(dir.write_file("../escape", b"x").is_err());
    drop(dir);
    assert!(!path.exists());
}

#[test]
fn missing_program_is_our_error() {
    let dir = sandbox().run_dir(SLOT_BASE + 11).expect("dir");
    let spec = verdict_sandbox::RunSpec {
        program: "/nonexistent/prog".into(),
        args: vec![],
        env: vec![],
        stdin: b"",
        dir: &dir,
        slot: SLOT_BASE + 11,
        limits: Limits::default(),
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let err = sandbox()
        .run(&spec, &mut |_, _| {}, &cancel)
        .expect_err("must fail");
    assert!(
        matches!(err, verdict_sandbox::SandboxError::Exec { .. }),
        "{err}"
    );
}

#[test]
fn cancel_flag_stops_the_run() {
    let dir = sandbox().run_dir(SLOT_BASE + 12).expect("dir");
    let spec = verdict_sandbox::RunSpec {
        program: "/bin/sleep".into(),
        args: vec!["10".into()],
        env: vec![],
        stdin: b"",
        dir: &dir,
        slot: SLOT_BASE + 12,
        limits: Limits::default(),
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let o = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        sandbox().run(&spec, &mut |_, _| {}, &cancel).expect("run")
    });
    assert_eq!(o.limit, Some(LimitHit::Cancelled));
    assert!(o.wall_ms < 1_000, "{o:?}");
}

#[test]
fn layers_are_applied_in_the_child() {
    let slot = SLOT_BASE + 13;
    let o = run(
        slot,
        "/bin/cat",
        &["/proc/self/status", "/proc/self/cgroup"],
        b"",
        Limits::default(),
    );
    assert!(o.success(), "{o:?}");
    let text = stdout(&o);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{text}");
    assert_eq!(field("Seccomp:"), "2", "{text}");
    if let Some((uid, gid)) = sandbox().slot_ids(slot) {
        assert!(
            field("Uid:")
                .split_whitespace()
                .all(|u| u == uid.to_string()),
            "{text}"
        );
        assert!(
            field("Gid:")
                .split_whitespace()
                .all(|g| g == gid.to_string()),
            "{text}"
        );
        assert_eq!(field("Groups:"), "", "{text}");
        assert_eq!(field("CapEff:"), "0000000000000000", "{text}");
    }
    let report = sandbox().report();
    let active = |n: &str| report.iter().any(|l| l.name == n && l.active);
    if active("cgroup memory") {
        assert!(
            text.contains(&format!("memory:/verdict/slot-{slot}")),
            "{text}"
        );
    }
    if active("cgroup pids") {
        assert!(
            text.contains(&format!("pids:/verdict/slot-{slot}")),
            "{text}"
        );
    }
    if active("cgroup cpuacct") {
        assert!(
            text.contains(&format!("cpuacct:/verdict/slot-{slot}")),
            "{text}"
        );
    }
    assert!(active("landlock") && active("seccomp"));
}

/// The cgroup2 mount (path, options) from /proc/self/mounts.
fn cgroup2_mount() -> Option<(String, Vec<String>)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(2) == Some(&"cgroup2")).then(|| {
            (
                f[1].to_owned(),
                f[3].split(',').map(str::to_owned).collect(),
            )
        })
    })
}

#[test]
fn cgroup2_is_remounted_with_favordynmods_keeping_its_other_options() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let Some((path, options)) = cgroup2_mount().filter(|_| root) else {
        eprintln!("skipped: needs root and a cgroup2 mount");
        return;
    };
    // Turn the mode off first with a raw remount (mount(8) would merge the current options
    // back in). Other tests' sandboxes may turn it on again at any moment; that is fine.
    let kept: Vec<&String> = options.iter().filter(|o| *o != "favordynmods").collect();
    let mut flags = libc::MS_REMOUNT;
    if kept.iter().any(|o| *o == "relatime") {
        flags |= libc::MS_RELATIME;
    }
    for (name, flag) in [
        ("nosuid", libc::MS_NOSUID),
        ("nodev", libc::MS_NODEV),
        ("noexec", libc::MS_NOEXEC),
    ] {
        if kept.iter().any(|o| *o == name) {
            flags |= flag;
        }
    }
    let data: Vec<&str> = kept
        .iter()
        .map(|o| o.as_str())
        .filter(|o| o.starts_with("nsdelegate") || o.starts_with("memory_"))
        .collect();
    let target = std::ffi::CString::new(path.clone()).unwrap();
    let data = std::ffi::CString::new(data.join(",")).unwrap();
    // SAFETY: NUL-terminated strings that outlive the call; NULL source/fstype on remount.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "remount: {}", std::io::Error::last_os_error());

    let config = || verdict_sandbox::SandboxConfig {
        base_dir: std::path::PathBuf::from("/tmp/verdict-sandbox-tests-dynmods"),
        ..verdict_sandbox::SandboxConfig::default()
    };
    let sb = verdict_sandbox::Sandbox::new(config()).expect("sandbox");
    let (_, after) = cgroup2_mount().expect("still mounted");
    assert!(after.iter().any(|o| o == "favordynmods"), "{after:?}");
    for o in &kept {
        assert!(after.contains(o), "lost {o}: {after:?}");
    }
    let layer = sb
        .report()
        .into_iter()
        .find(|l| l.name == "cgroup favordynmods")
        .expect("reported");
    assert!(layer.active, "{}", layer.detail);
    // Looking only (as `verdict doctor` does) reports it on and changes nothing.
    let look = verdict_sandbox::Sandbox::new(verdict_sandbox::SandboxConfig {
        favor_dynmods: false,
        ..config()
    })
    .expect("sandbox");
    let layer = look
        .report()
        .into_iter()
        .find(|l| l.name == "cgroup favordynmods")
        .expect("reported");
    assert!(
        layer.active && layer.detail.starts_with("already on"),
        "{}",
        layer.detail
    );
}

//! Hostile programs, one per test, each run through the real Sandbox. Every test checks
//! the attack is contained and, where it could hurt the slot, that a normal program still
//! runs in normal time afterwards.

mod common;

use common::*;
use verdict_sandbox::{LimitHit, Limits};

const PRELUDE: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <fcntl.h>
#include <signal.h>
#include <sched.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/seccomp.h>
"#;

fn c(name: &str, body: &str, args: &[&str], limits: Limits, slot: u32) -> verdict_sandbox::Outcome {
    run_c(slot, name, &format!("{PRELUDE}\n{body}"), args, b"", limits)
}

fn connect_tcp_program() -> &'static str {
    r#"
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) { printf("socket: %s\n", strerror(errno)); return 0; }
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[1])); a.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(s, (struct sockaddr*)&a, sizeof a) < 0) { printf("connect: %s\n", strerror(errno)); return 0; }
    printf("CONNECTED\n"); return 0;
}"#
}

#[test]
fn tcp_connect_to_loopback_is_denied() {
    let slot = SLOT_BASE + 20;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    for p in [port.as_str(), "6379"] {
        let o = c("tcp", connect_tcp_program(), &[p], Limits::default(), slot);
        assert_eq!(o.exit_code, Some(0), "{o:?}");
        assert!(
            !stdout(&o).contains("CONNECTED"),
            "port {p}: {}",
            stdout(&o)
        );
    }
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "nothing may have connected");
    assert_normal_run_still_works(slot);
}

#[test]
fn udp_socket_is_denied() {
    let o = c(
        "udp",
        r#"int main(){ int s = socket(AF_INET, SOCK_DGRAM, 0); int s6 = socket(AF_INET6, SOCK_DGRAM, 0);
           int n = socket(AF_NETLINK, SOCK_RAW, 0); int p = socket(AF_PACKET, SOCK_RAW, 0);
           printf("%d %d %d %d\n", s, s6, n, p); return (s < 0 && s6 < 0 && n < 0 && p < 0) ? 0 : 1; }"#,
        &[],
        Limits::default(),
        SLOT_BASE + 21,
    );
    assert_eq!(o.exit_code, Some(0), "{}", stdout(&o));
}

#[test]
fn unix_sockets_outside_run_dir_are_unreachable() {
    let slot = SLOT_BASE + 22;
    // A world-connectable filesystem socket outside the run dir, like /run/mysqld/mysqld.sock.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("svc.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // And an abstract one.
    use std::os::linux::net::SocketAddrExt;
    let abs_addr =
        std::os::unix::net::SocketAddr::from_abstract_name(b"verdict-test-abstract").expect("addr");
    let abs = std::os::unix::net::UnixListener::bind_addr(&abs_addr).expect("bind abstract");
    let body = r#"
int main(int argc, char **argv) {
    int ok = 0;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s >= 0) {
        struct sockaddr_un a = {0}; a.sun_family = AF_UNIX; strcpy(a.sun_path, argv[1]);
        if (connect(s, (struct sockaddr*)&a, sizeof a) == 0) { printf("FS CONNECTED\n"); ok = 1; }
    } else printf("socket: %s\n", strerror(errno));
    int t = socket(AF_UNIX, SOCK_STREAM, 0);
    if (t >= 0) {
        struct sockaddr_un a = {0}; a.sun_family = AF_UNIX; const char *n = "verdict-test-abstract";
        memcpy(a.sun_path + 1, n, strlen(n));
        if (connect(t, (struct sockaddr*)&a, offsetof(struct sockaddr_un, sun_path) + 1 + strlen(n)) == 0) { printf("ABSTRACT CONNECTED\n"); ok = 1; }
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) { printf("socketpair failed\n"); return 2; }
    return ok;
}"#;
    let body = format!("#include <stddef.h>\n{body}");
    let o = c(
        "unixsock",
        &body,
        &[path_str(&path)],
        Limits::default(),
        slot,
    );
    assert_eq!(o.exit_code, Some(0), "{}", stdout(&o));
    listener.set_nonblocking(true).expect("nb");
    abs.set_nonblocking(true).expect("nb");
    assert!(listener.accept().is_err());
    assert!(abs.accept().is_err());
}

#[test]
fn secrets_are_unreadable() {
    let o = c(
        "readsecrets",
        r#"
int try_read(const char *p) {
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    char buf[64]; ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) { printf("READ %s\n", p); return 1; }
    return 0;
}
int main() {
    char pp[64]; snprintf(pp, sizeof pp, "/proc/%d/environ", getppid());
    int bad = try_read("/etc/shadow") + try_read("/root/.bashrc") + try_read("/proc/1/environ")
        + try_read(pp) + try_read("/etc/hostname") + try_read("/work/shared/design.md");
    if (opendir("/root")) { printf("LISTED /root\n"); bad++; }
    printf("bad=%d\n", bad);
    return bad;
}"#
        .replace("int main", "#include <dirent.h>\nint main")
        .as_str(),
        &[],
        Limits::default(),
        SLOT_BASE + 23,
    );
    assert_eq!(o.exit_code, Some(0), "{}", stdout(&o));
}

#[test]
fn writes_outside_run_dir_fail() {
    let o = c(
        "writes",
        r#"
int try_write(const char *p) {
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) { printf("WROTE %s\n", p); unlink(p); return 1; }
    return 0;
}
int main() {
    int bad = try_write("/tmp/verdict-escape") + try_write("/var/tmp/verdict-escape")
        + try_write("/dev/shm/verdict-escape") + try_write("/work/main/verdict-escape")
        + try_write("/tmp/verdict-sandbox-tests/escape");
    if (mkdir("/tmp/verdict-escape-dir", 0777) == 0) { printf("MKDIR\n"); rmdir("/tmp/verdict-escape-dir"); bad++; }
    int fd = open("/dev/null", O_WRONLY | O_TRUNC); if (fd < 0) { printf("no /dev/null\n"); bad++; }
    printf("bad=%d\n", bad);
    return bad;
}"#,
        &[],
        Limits::default(),
        SLOT_BASE + 24,
    );
    assert_eq!(o.exit_code, Some(0), "{}", stdout(&o));
    assert!(!std::path::Path::new("/tmp/verdict-escape").exists());
}

#[test]
fn signals_and_ptrace_on_the_worker_fail() {
    // kill(-1) returns 0 whenever the caller may signal anything at all (its own group),
    // so its return value proves nothing: a host process must still be alive afterwards.
    let mut canary = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .expect("canary");
    let o = c(
        "killparent",
        r#"
int main() {
    pid_t pp = getppid();
    int bad = 0;
    if (kill(pp, 0) == 0) { printf("can signal parent\n"); bad++; }
    if (kill(1, 0) == 0) { printf("can signal init\n"); bad++; }
    if (ptrace(PTRACE_ATTACH, pp, 0, 0) == 0) { printf("ptrace ok\n"); bad++; }
    if (syscall(SYS_pidfd_open, pp, 0) >= 0 && 0) bad++;
    kill(-1, SIGKILL);   /* everything we may signal (nothing but ourselves' group) */
    printf("bad=%d\n", bad);
    return bad;
}"#,
        &[],
        Limits::default(),
        SLOT_BASE + 25,
    );
    // kill(-1) never hits the caller; it survives and reports.
    assert_eq!(o.exit_code, Some(0), "{o:?} {}", stdout(&o));
    assert!(
        canary.try_wait().expect("canary status").is_none(),
        "kill(-1) inside the sandbox killed a host process"
    );
    let _ = canary.kill();
    let _ = canary.wait();
}

#[test]
fn fork_bomb_in_c_is_contained() {
    let slot = SLOT_BASE + 26;
    let limits = Limits {
        wall_ms: 1_500,
        processes: 32,
        ..Limits::default()
    };
    let o = c(
        "forkbomb",
        "int main(){ for(;;) fork(); }",
        &[],
        limits,
        slot,
    );
    assert!(o.limit.is_some(), "{o:?}");
    assert_normal_run_still_works(slot);
    // The slot can still fork (nothing left over counts against it).
    let o = run(
        slot,
        "/bin/sh",
        &["-c", "/bin/echo a | /bin/cat"],
        b"",
        Limits::default(),
    );
    assert_eq!(stdout(&o), "a\n", "{o:?}");
}

#[test]
fn fork_bomb_in_bash_is_contained() {
    let slot = SLOT_BASE + 27;
    let limits = Limits {
        wall_ms: 1_500,
        processes: 32,
        ..Limits::default()
    };
    let o = run(
        slot,
        "/bin/bash",
        &["-c", "f(){ f | f & }; f; sleep 5"],
        b"",
        limits,
    );
    assert!(o.limit.is_some() || o.exit_code.is_some(), "{o:?}");
    assert!(o.wall_ms < 3_000, "{o:?}");
    assert_normal_run_still_works(slot);
    let o = run(
        slot,
        "/bin/sh",
        &["-c", "/bin/echo a | /bin/cat"],
        b"",
        Limits::default(),
    );
    assert_eq!(stdout(&o), "a\n", "{o:?}");
}

#[test]
fn thread_bomb_is_contained() {
    let slot = SLOT_BASE + 28;
    let limits = Limits {
        wall_ms: 1_500,
        processes: 32,
        ..Limits::default()
    };
    let o = c(
        "threadbomb",
        r#"void *f(void *a){ for(;;) pause(); return 0; }
           int main(){ int n = 0; pthread_t t; while (pthread_create(&t, 0, f, 0) == 0) n++; printf("%d threads\n", n); return 0; }"#,
        &[],
        limits,
        slot,
    );
    let n: u64 = stdout(&o)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(n < 32, "{o:?}");
    assert_normal_run_still_works(slot);
}

#[test]
fn memory_bomb_is_mle() {
    let slot = SLOT_BASE + 29;
    let limits = Limits {
        memory_kb: 64 * 1024,
        wall_ms: 5_000,
        ..Limits::default()
    };
    let o = c(
        "membomb",
        r#"int main(){ for(;;){ char *p = malloc(1<<20); if(!p) return 3; memset(p, 1, 1<<20);} }"#,
        &[],
        limits,
        slot,
    );
    assert_eq!(o.limit, Some(LimitHit::Memory), "{o:?}");
    assert_normal_run_still_works(slot);
}

#[test]
fn peak_memory_is_accurate_for_100_mb() {
    let o = c(
        "touch100",
        r#"int main(){ size_t n = 100u << 20; char *p = malloc(n); for (size_t i = 0; i < n; i += 4096) p[i] = 1; printf("%d\n", p[4096]); return 0; }"#,
        &[],
        Limits::default(),
        SLOT_BASE + 30,
    );
    assert!(o.success(), "{o:?}");
    let mb = o.memory_kb as f64 / 1024.0;
    assert!((100.0..=110.0).contains(&mb), "peak {mb:.1} MB");
}

#[test]
fn huge_file_write_is_capped() {
    let limits = Limits {
        file_size_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };
    let o = c(
        "bigfile",
        r#"int main(){ static char buf[1<<20]; int fd = open("big", O_WRONLY|O_CREAT|O_TRUNC, 0600);
            for (int i = 0; i < 2048; i++) if (write(fd, buf, sizeof buf) < 0) { printf("write failed at %d MB\n", i); return 1; }
            return 0; }"#,
        &[],
        limits,
        SLOT_BASE + 31,
    );
    assert!(
        o.signal == Some(libc::SIGXFSZ) || o.exit_code == Some(1),
        "{o:?}"
    );
}

#[test]
fn setsid_daemon_does_not_outlive_the_run() {
    let slot = SLOT_BASE + 32;
    let o = c(
        "daemon",
        r#"int main(){
            if (fork() == 0) { setsid(); if (fork() == 0) { printf("%d\n", getpid()); fflush(stdout);
                close(1); close(2); for(;;) sleep(1); } _exit(0); }
            wait(0); usleep(100000); return 0; }"#,
        &[],
        Limits::default(),
        slot,
    );
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    let pid: i32 = stdout(&o).trim().parse().expect("daemon pid");
    std::thread::sleep(std::time::Duration::from_millis(100));
    // Gone, or at worst a zombie awaiting its reaper.
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next())
            .unwrap_or(None);
        assert_eq!(state, Some('Z'), "daemon still alive: {stat}");
    }
    assert_normal_run_still_works(slot);
}

#[test]
fn symlink_to_etc_in_run_dir_is_not_followed_on_removal() {
    let slot = SLOT_BASE + 33;
    let canary_dir = tempfile::tempdir().expect("tempdir");
    let canary = canary_dir.path().join("canary");
    std::fs::write(&canary, b"keep me").expect("canary");
    let dir = sandbox().run_dir(slot).expect("dir");
    let script = format!(
        "ln -s /etc etc && ln -s {} canarydir && mkdir -p a/b && ln -s /etc a/b/etc2 && ls etc/ >/dev/null; echo ok",
        canary_dir.path().display()
    );
    let r = run_in(
        &dir,
        slot,
        "/bin/sh",
        &["-c", &script],
        b"",
        Limits::default(),
    );
    assert_eq!(stdout(&r.outcome), "ok\n", "{:?}", r.outcome);
    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(!path.exists());
    assert!(std::path::Path::new("/etc/passwd").exists());
    assert_eq!(std::fs::read(&canary).expect("canary survives"), b"keep me");
}

#[test]
fn closing_stdio_is_harmless() {
    let o = c(
        "closefds",
        r#"int main(){ write(1, "x", 1); close(0); close(1); close(2); dup2(5, 1); int fd = open("/dev/null", O_RDONLY); dup2(fd, 2); return 4; }"#,
        &[],
        Limits::default(),
        SLOT_BASE + 34,
    );
    assert_eq!(o.exit_code, Some(4), "{o:?}");
    assert_eq!(o.stdout, b"x");
}

#[test]
fn chmod_and_chown_outside_fail() {
    let o = c(
        "chmod",
        r#"int main(){ int bad = 0;
            if (chmod("/usr/bin/ls", 04777) == 0) { printf("chmod ls\n"); bad++; }
            if (chown("/usr/bin/ls", getuid(), getgid()) == 0) { printf("chown ls\n"); bad++; }
            int fd = open("mine", O_CREAT|O_WRONLY, 0600); close(fd);
            if (geteuid() != 0 && chown("mine", 0, 0) == 0) { printf("chown to root\n"); bad++; }
            if (chmod("mine", 04755) != 0) { printf("chmod own file failed\n"); }
            return bad; }"#,
        &[],
        Limits::default(),
        SLOT_BASE + 35,
    );
    assert_eq!(o.exit_code, Some(0), "{}", stdout(&o));
}

#[test]
fn namespaces_and_mounts_are_denied() {
    let o = c(
        "ns",
        r#"static char stack[65536]; static int fn(void *a){ return 0; }
        int main(){ int bad = 0;
            if (unshare(CLONE_NEWUSER) == 0) { printf("unshare user\n"); bad++; }
            if (unshare(CLONE_NEWNS) == 0) { printf("unshare ns\n"); bad++; }
            if (mount("none", "/tmp", "tmpfs", 0, 0) == 0) { printf("mount\n"); bad++; }
            int p = clone(fn, stack + sizeof stack, CLONE_NEWUSER | SIGCHLD, 0);
            if (p > 0) { printf("clone newuser\n"); bad++; }
            if (syscall(SYS_clone3, 0, 0) != -1 || errno != ENOSYS) { printf("clone3 not ENOSYS\n"); bad++; }
            if (chroot(".") == 0) { printf("chroot\n"); bad++; }
            if (syscall(SYS_io_uring_setup, 1, 0) >= 0) { printf("io_uring\n"); bad++; }
            if (syscall(SYS_bpf, 0, 0, 0) >= 0 || errno != EPERM) { printf("bpf errno %d\n", errno); bad++; }
            if (personality(0x0040000) != -1) { printf("personality\n"); bad++; }
            /* a normal fork still works */
            pid_t c = fork(); if (c == 0) _exit(0); if (c < 0) { printf("fork failed\n"); bad++; } else waitpid(c, 0, 0);
            return bad; }"#
            .replace("int main", "#include <sys/personality.h>\nint main")
            .as_str(),
        &[],
        Limits::default(),
        SLOT_BASE + 36,
    );
    assert_eq!(o.exit_code, Some(0), "{}", stdout(&o));
}

#[test]
fn own_seccomp_filter_is_harmless() {
    let o = c(
        "ownseccomp",
        r#"#include <linux/filter.h>
        int main(){
            struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
            struct sock_fprog prog = { 1, allow };
            if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return 2;
            /* Strict mode on top of a filter is refused by the kernel; either way nothing is loosened. */
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT);
            int s = socket(AF_INET, SOCK_STREAM, 0);
            printf("own filter, inet socket %s\n", s < 0 ? "still denied" : "ALLOWED"); return 0; }"#,
        &[],
        Limits::default(),
        SLOT_BASE + 37,
    );
    assert_eq!(
        stdout(&o),
        "own filter, inet socket still denied\n",
        "{o:?}"
    );
    assert_normal_run_still_works(SLOT_BASE + 37);
}

#[test]
fn program_sleeping_past_wall_limit_is_killed() {
    let slot = SLOT_BASE + 38;
    let limits = Limits {
        wall_ms: 400,
        ..Limits::default()
    };
    let o = c(
        "sleeper",
        "int main(){ close(1); close(2); sleep(30); return 0; }",
        &[],
        limits,
        slot,
    );
    assert_eq!(o.limit, Some(LimitHit::WallTime), "{o:?}");
    assert!(o.wall_ms < 1_500);
    assert_normal_run_still_works(slot);
}

#[test]
fn background_child_holding_pipes_does_not_stall_the_run() {
    let slot = SLOT_BASE + 39;
    let t = std::time::Instant::now();
    let o = run(
        slot,
        "/bin/sh",
        &["-c", "sleep 30 & echo started"],
        b"",
        Limits::default(),
    );
    assert_eq!(stdout(&o), "started\n", "{o:?}");
    assert!(t.elapsed().as_millis() < 2_000, "{:?}", t.elapsed());
}

#[test]
fn busy_loop_is_killed_soon_after_its_cpu_limit() {
    // RLIMIT_CPU alone counts whole seconds: a 300 ms limit let it burn a full second.
    let slot = SLOT_BASE + 40;
    let limits = Limits {
        cpu_ms: 300,
        wall_ms: 10_000,
        ..Limits::default()
    };
    let o = c(
        "busy300",
        "int main(){ volatile unsigned long x = 0; for(;;) x++; }",
        &[],
        limits,
        slot,
    );
    eprintln!(
        "busy loop, 300 ms CPU limit: {} ms CPU, {} ms wall",
        o.cpu_ms, o.wall_ms
    );
    assert_eq!(o.limit, Some(LimitHit::CpuTime), "{o:?}");
    assert_eq!(
        o.signal,
        Some(libc::SIGKILL),
        "killed by the parent, not SIGXCPU: {o:?}"
    );
    assert!((300..700).contains(&o.cpu_ms), "{o:?}");
    assert_normal_run_still_works(slot);
}

#[test]
fn forked_busy_children_share_one_cpu_limit() {
    let slot = SLOT_BASE + 41;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let layer = sandbox()
            .report()
            .into_iter()
            .find(|l| l.name == "cgroup cpuacct")
            .expect("cpuacct layer reported");
        assert!(layer.active, "{layer:?}");
    }
    let limits = Limits {
        cpu_ms: 500,
        wall_ms: 10_000,
        ..Limits::default()
    };
    // Four busy children, each below any per-process limit for a while: only the slot's
    // cpuacct cgroup sees their sum. Per process (RLIMIT_CPU) they would burn 4 s.
    let o = run(
        slot,
        "/bin/sh",
        &[
            "-c",
            "for i in 1 2 3 4; do (while :; do :; done) & done; wait",
        ],
        b"",
        limits,
    );
    eprintln!(
        "4 busy children, 500 ms CPU limit: {} ms CPU in total, {} ms wall",
        o.cpu_ms, o.wall_ms
    );
    assert_eq!(o.limit, Some(LimitHit::CpuTime), "{o:?}");
    assert!((500..900).contains(&o.cpu_ms), "{o:?}");
    assert!(o.wall_ms < 2_000, "{o:?}");
    // The slot's CPU count starts from zero again for the next run.
    let o = run(slot, "/bin/true", &[], b"", limits);
    assert!(o.success(), "{o:?}");
    assert!(o.cpu_ms < 100, "a fresh run starts from zero: {o:?}");
    assert_normal_run_still_works(slot);
}

#[test]
fn busy_loop_without_cgroups_is_killed_via_proc_stat() {
    // The fallback watch (no cpuacct cgroup, e.g. not root): /proc/<pid>/stat of the main
    // process, in 10 ms clock ticks.
    let sb = verdict_sandbox::Sandbox::new(verdict_sandbox::SandboxConfig {
        base_dir: std::path::PathBuf::from("/tmp/verdict-sandbox-tests"),
        cgroup_name: None,
        ..verdict_sandbox::SandboxConfig::default()
    })
    .expect("sandbox");
    let slot = SLOT_BASE + 42;
    let bin = compile_c(
        "busy300nocg",
        "int main(){ volatile unsigned long x = 0; for(;;) x++; }",
    );
    let dir = sb.run_dir(slot).expect("run dir");
    dir.write_file_mode("busy", &bin, 0o700).expect("write");
    let spec = verdict_sandbox::RunSpec {
        program: dir.path().join("busy"),
        args: Vec::new(),
        env: env_for(&dir),
        stdin: b"",
        dir: &dir,
        slot,
        limits: Limits {
            cpu_ms: 300,
            wall_ms: 10_000,
            ..Limits::default()
        },
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let o = sb.run(&spec, &mut |_, _| {}, &cancel).expect("run");
    eprintln!(
        "busy loop, no cgroups, 300 ms CPU limit: {} ms CPU, {} ms wall",
        o.cpu_ms, o.wall_ms
    );
    assert_eq!(o.limit, Some(LimitHit::CpuTime), "{o:?}");
    assert_eq!(o.signal, Some(libc::SIGKILL), "{o:?}");
    assert!((300..700).contains(&o.cpu_ms), "{o:?}");
}

// ---------------------------------------------------------------------------------------
// What must not outlive a run or cross from one run to the next (issue 12: IPC, /proc,
// Unix datagrams, abstract names, stdio re-opens, the disk budget).

/// SysV shared memory, message queues and semaphores: created by one run (or refused), they
/// must never be visible to the next run of the same slot (same uid), nor stay charged.
#[test]
fn sysv_ipc_does_not_outlive_the_run() {
    let slot = SLOT_BASE + 60;
    let body = r#"
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/msg.h>
#include <sys/sem.h>
int main(int argc, char **argv) {
    int create = argv[1][0] == 'c';
    int flags = create ? (IPC_CREAT | 0600) : 0600;
    int found = 0;
    int shm = shmget(0x7665726b, 1 << 20, flags);
    if (shm >= 0) {
        char *p = shmat(shm, 0, 0);
        if (p != (void*)-1) {
            if (create) strcpy(p, "hidden-test-secret"); else if (!strcmp(p, "hidden-test-secret")) found++;
        }
        if (!create) found++;
    }
    int mq = msgget(0x7665726c, flags);
    if (mq >= 0 && !create) found++;
    if (mq >= 0 && create) { struct { long t; char m[32]; } msg = {1, "secret"}; msgsnd(mq, &msg, sizeof msg.m, IPC_NOWAIT); }
    int sem = semget(0x7665726d, 1, flags);
    if (sem >= 0 && !create) found++;
    printf("shm=%d mq=%d sem=%d found=%d\n", shm, mq, sem, found);
    return found;
}"#;
    let first = c("sysv", body, &["create"], Limits::default(), slot);
    assert!(first.exit_code.is_some(), "{first:?}");
    let second = c("sysv", body, &["look"], Limits::default(), slot);
    assert_eq!(
        second.exit_code,
        Some(0),
        "the next run saw IPC objects: {}",
        stdout(&second)
    );
    // Nothing of a slot uid is left in the host's IPC tables either.
    if let Some((uid, _)) = sandbox().slot_ids(slot) {
        for table in [
            "/proc/sysvipc/shm",
            "/proc/sysvipc/msg",
            "/proc/sysvipc/sem",
        ] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            for line in text.lines().skip(1) {
                let key = line.split_whitespace().next().unwrap_or("");
                assert!(
                    !["1986359915", "1986359916", "1986359917"].contains(&key),
                    "{table} still holds the run's object: {line} (slot uid {uid})"
                );
            }
        }
    }
    assert_normal_run_still_works(slot);
}

/// POSIX shared memory (/dev/shm) and message queues must not persist past the run.
#[test]
fn posix_shm_and_mqueues_do_not_persist() {
    let slot = SLOT_BASE + 61;
    let body = r#"
#include <sys/mman.h>
#include <mqueue.h>
int main() {
    int fd = shm_open("/verdict-hostile-shm", O_CREAT | O_RDWR, 0600);
    if (fd >= 0) { ftruncate(fd, 1 << 20); printf("SHM CREATED\n"); }
    int direct = open("/dev/shm/verdict-hostile-file", O_CREAT | O_RDWR, 0600);
    if (direct >= 0) printf("DEVSHM FILE CREATED\n");
    mqd_t q = mq_open("/verdict-hostile-mq", O_CREAT | O_RDWR, 0600, NULL);
    if (q != (mqd_t)-1) printf("MQ CREATED\n");
    return 0;
}"#;
    let o = c("posixshm", body, &[], Limits::default(), slot);
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    for p in [
        "/dev/shm/verdict-hostile-shm",
        "/dev/shm/verdict-hostile-file",
        "/dev/mqueue/verdict-hostile-mq",
    ] {
        assert!(
            !std::path::Path::new(p).exists(),
            "{p} outlived the run ({})",
            stdout(&o)
        );
    }
}

/// A datagram socket (socketpair or socket) must not reach a world-writable pathname
/// datagram socket of the host such as /dev/log, by sendto or by connect.
#[test]
fn unix_datagrams_cannot_reach_host_sockets() {
    use std::os::unix::fs::PermissionsExt;
    let slot = SLOT_BASE + 62;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let path = dir.path().join("log.sock");
    let host = std::os::unix::net::UnixDatagram::bind(&path).expect("bind dgram");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    host.set_nonblocking(true).expect("nb");
    let body = r#"
#include <stddef.h>
int main(int argc, char **argv) {
    struct sockaddr_un a = {0}; a.sun_family = AF_UNIX; strcpy(a.sun_path, argv[1]);
    int reached = 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0) {
        if (sendto(sv[0], "via-socketpair", 14, 0, (struct sockaddr*)&a, sizeof a) > 0) reached++;
        if (connect(sv[1], (struct sockaddr*)&a, sizeof a) == 0 && send(sv[1], "via-connect", 11, 0) > 0) reached++;
    }
    int d = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (d >= 0 && sendto(d, "via-socket", 10, 0, (struct sockaddr*)&a, sizeof a) > 0) reached++;
    struct msghdr m = {0}; struct iovec v = { "via-sendmsg", 11 };
    m.msg_name = &a; m.msg_namelen = sizeof a; m.msg_iov = &v; m.msg_iovlen = 1;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0 && sendmsg(sv[0], &m, 0) > 0) { /* connected: name ignored */ }
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) == 0 && sendmsg(sv[0], &m, 0) > 0) reached++;
    int st[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) != 0) { printf("stream socketpair refused\n"); return 2; }
    printf("reached=%d\n", reached);
    return 0;
}"#;
    let o = c("dgram", body, &[path_str(&path)], Limits::default(), slot);
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    let mut buf = [0u8; 64];
    let got = host.recv(&mut buf);
    assert!(
        got.is_err(),
        "the host socket received {:?} ({})",
        got.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()),
        stdout(&o)
    );
}

/// A name bound in the abstract namespace inside the sandbox must not be reachable by host
/// clients (squatting a well-known name).
#[test]
fn abstract_names_cannot_be_squatted_from_inside() {
    use std::os::linux::net::SocketAddrExt;
    let slot = SLOT_BASE + 63;
    let body = r#"
#include <stddef.h>
int bind_abstract(int type, const char *n) {
    int s = socket(AF_UNIX, type, 0);
    int sv[2];
    if (s < 0 && socketpair(AF_UNIX, type, 0, sv) == 0) {
        s = sv[0];
        /* dissolve the pair so the socket accepts datagrams from anyone */
        struct sockaddr unspec = { .sa_family = AF_UNSPEC };
        connect(s, &unspec, sizeof unspec);
    }
    if (s < 0) return -1;
    struct sockaddr_un a = {0}; a.sun_family = AF_UNIX; memcpy(a.sun_path + 1, n, strlen(n));
    if (bind(s, (struct sockaddr*)&a, offsetof(struct sockaddr_un, sun_path) + 1 + strlen(n)) != 0) return -1;
    if (type == SOCK_STREAM) listen(s, 8);
    return s;
}
int main() {
    int a = bind_abstract(SOCK_DGRAM, "verdict-squat-dgram");
    int b = bind_abstract(SOCK_STREAM, "verdict-squat-stream");
    printf("%d %d\n", a, b); fflush(stdout);
    usleep(600000);
    return 0;
}"#;
    let handle = std::thread::spawn(move || c("squat", body, &[], Limits::default(), slot));
    std::thread::sleep(std::time::Duration::from_millis(400));
    let dgram_addr =
        std::os::unix::net::SocketAddr::from_abstract_name(b"verdict-squat-dgram").expect("addr");
    let stream_addr =
        std::os::unix::net::SocketAddr::from_abstract_name(b"verdict-squat-stream").expect("addr");
    let client = std::os::unix::net::UnixDatagram::unbound().expect("dgram");
    let sent = client.send_to_addr(b"hello", &dgram_addr);
    let connected = std::os::unix::net::UnixStream::connect_addr(&stream_addr);
    let o = handle.join().expect("run thread");
    assert!(
        sent.is_err(),
        "a host client reached the sandbox's datagram name ({})",
        stdout(&o)
    );
    assert!(
        connected.is_err(),
        "a host client connected to the sandbox's stream name ({})",
        stdout(&o)
    );
}

/// Legitimate programs open /dev/stdin, /dev/stdout and /proc/self/fd/N.
#[test]
fn dev_stdin_stdout_and_proc_self_fd_can_be_opened() {
    let body = r#"
int main() {
    char buf[64] = {0};
    int in = open("/dev/stdin", O_RDONLY);
    if (in < 0) { printf("open /dev/stdin: %s\n", strerror(errno)); return 1; }
    if (read(in, buf, sizeof buf - 1) <= 0) return 2;
    int out = open("/dev/stdout", O_WRONLY);
    if (out < 0) { printf("open /dev/stdout: %s\n", strerror(errno)); return 3; }
    dprintf(out, "stdout:%s", buf);
    int err = open("/proc/self/fd/2", O_WRONLY);
    if (err < 0) { printf("open /proc/self/fd/2: %s\n", strerror(errno)); return 4; }
    dprintf(err, "stderr-ok\n");
    int o2 = open("/dev/fd/1", O_WRONLY);
    if (o2 < 0) { printf("open /dev/fd/1: %s\n", strerror(errno)); return 5; }
    dprintf(o2, "fd-ok\n");
    return 0;
}"#;
    let o = run_c(
        SLOT_BASE + 64,
        "devstdio",
        &format!("{PRELUDE}\n{body}"),
        &[],
        b"hello\n",
        Limits::default(),
    );
    assert_eq!(o.exit_code, Some(0), "{o:?} {}", stdout(&o));
    assert_eq!(stdout(&o), "stdout:hello\nfd-ok\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "stderr-ok\n");
    // A shell's child (cat) re-opening /dev/stdin too.
    let sh = run(
        SLOT_BASE + 64,
        "/bin/sh",
        &["-c", "cat /dev/stdin > /dev/stdout"],
        b"piped\n",
        Limits::default(),
    );
    assert_eq!(stdout(&sh), "piped\n", "{sh:?}");
}

/// The command lines and environments of host processes (the worker, Redis, the server
/// with its Redis URL) are not readable from inside: the run sees only its own processes.
#[test]
fn host_processes_are_invisible_through_proc() {
    let me = std::process::id().to_string();
    let body = r#"
#include <dirent.h>
int main(int argc, char **argv) {
    int bad = 0;
    char p[64];
    const char *targets[] = { "1", argv[1], 0 };
    for (int i = 0; targets[i]; i++) {
        const char *files[] = { "cmdline", "environ", "status", "stat", 0 };
        for (int j = 0; files[j]; j++) {
            snprintf(p, sizeof p, "/proc/%s/%s", targets[i], files[j]);
            int fd = open(p, O_RDONLY);
            char buf[256];
            if (fd >= 0 && read(fd, buf, sizeof buf) > 0) {
                /* pid 1 inside our own pid namespace is ourselves: that is fine */
                if (!(targets[i][0] == '1' && targets[i][1] == 0 && getpid() == 1)) { printf("READ %s\n", p); bad++; }
            }
        }
    }
    DIR *d = opendir("/proc");
    int others = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            if (atoi(e->d_name) != getpid()) { snprintf(p, sizeof p, "/proc/%s/cmdline", e->d_name);
                int fd = open(p, O_RDONLY); char buf[256];
                if (fd >= 0 && read(fd, buf, sizeof buf) > 0) { others++; } }
        }
    }
    printf("bad=%d others=%d\n", bad, others);
    return bad + others;
}"#;
    let o = c("procpeek", body, &[&me], Limits::default(), SLOT_BASE + 65);
    assert_eq!(o.exit_code, Some(0), "{}", stdout(&o));
}

/// Runs `f` on a thread with a 256 KiB stack, as a stand-in for an async runtime's worker
/// thread that drops a run dir: removal must not recurse per directory level.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("small-stack thread panicked")
}

#[test]
fn a_30000_deep_directory_chain_is_removed_without_recursion() {
    let slot = SLOT_BASE + 80;
    let bin = compile_c(
        "deepchain",
        &format!(
            "{PRELUDE}\n{}",
            r#"int main(){
    if (mkdir("c", 0700)) return 1;
    for (int i = 0; i < 30000; i++) {
        if (mkdir("n", 0700) || rename("c", "n/d") || rename("n", "c")) { printf("failed at %d: %s\n", i, strerror(errno)); return 2; }
    }
    printf("ok\n"); return 0; }"#
        ),
    );
    let dir = sandbox().run_dir(slot).expect("run dir");
    dir.write_file_mode("deepchain", &bin, 0o700)
        .expect("write binary");
    let program = dir.path().join("deepchain");
    let limits = Limits {
        wall_ms: 20_000,
        cpu_ms: 10_000,
        ..Limits::default()
    };
    let r = run_in(&dir, slot, path_str(&program), &[], b"", limits);
    assert_eq!(stdout(&r.outcome), "ok\n", "{:?}", r.outcome);
    let path = dir.path().to_path_buf();
    // Drop, not remove(): the fallback path must be just as safe.
    let took = on_small_stack(move || {
        let t = std::time::Instant::now();
        drop(dir);
        t.elapsed()
    });
    eprintln!("30001-deep chain removed in {took:?}");
    assert!(!path.exists(), "run dir left behind");
    assert_normal_run_still_works(slot);
}

#[test]
fn a_directory_with_130000_entries_is_removed() {
    let slot = SLOT_BASE + 81;
    let bin = compile_c(
        "manyfiles",
        &format!(
            "{PRELUDE}\n{}",
            r#"int main(){
    char p[64];
    if (mkdir("d", 0700)) return 1;
    for (int i = 0; i < 130000; i++) {
        snprintf(p, sizeof p, "d/file-with-a-longish-name-%d", i);
        int fd = open(p, O_WRONLY|O_CREAT|O_EXCL, 0600);
        if (fd < 0) { printf("failed at %d: %s\n", i, strerror(errno)); return 2; }
        close(fd);
    }
    printf("ok\n"); return 0; }"#
        ),
    );
    let dir = sandbox().run_dir(slot).expect("run dir");
    dir.write_file_mode("manyfiles", &bin, 0o700)
        .expect("write binary");
    let program = dir.path().join("manyfiles");
    let limits = Limits {
        wall_ms: 30_000,
        cpu_ms: 20_000,
        ..Limits::default()
    };
    let r = run_in(&dir, slot, path_str(&program), &[], b"", limits);
    assert_eq!(stdout(&r.outcome), "ok\n", "{:?}", r.outcome);
    let path = dir.path().to_path_buf();
    let (took, stats) = on_small_stack(move || {
        let t = std::time::Instant::now();
        let stats = dir.remove().expect("remove");
        (t.elapsed(), stats)
    });
    eprintln!("130k files removed in {took:?}: {stats:?}");
    assert!(!path.exists(), "run dir left behind");
    assert_eq!(stats.files, 130_001, "{stats:?}");
}

#[test]
fn unreadable_dirs_and_symlinks_out_do_not_break_or_escape_removal() {
    let slot = SLOT_BASE + 82;
    let outside = tempfile::tempdir().expect("tempdir");
    let canary = outside.path().join("canary");
    std::fs::write(&canary, b"keep me").expect("canary");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let dir = sandbox().run_dir(slot).expect("dir");
    let o = outside.path().display().to_string();
    // Symlinks to the outside dir and file at every level, then every dir made 0000
    // (innermost first), the run dir itself 0500.
    let script = format!(
        "mkdir -p a/b/c && touch a/f a/b/f a/b/c/f && \
         ln -s {o} a/out && ln -s {o}/canary a/b/canary && ln -s {o} a/b/c/out && ln -s {o} out && \
         chmod 000 a/b/c a/b a && chmod 500 . && echo ok"
    );
    let r = run_in(
        &dir,
        slot,
        "/bin/sh",
        &["-c", &script],
        b"",
        Limits::default(),
    );
    assert_eq!(stdout(&r.outcome), "ok\n", "{:?}", r.outcome);
    let path = dir.path().to_path_buf();
    let stats = dir.remove().expect("remove");
    assert!(!path.exists(), "run dir left behind");
    assert_eq!((stats.files, stats.dirs), (7, 4), "{stats:?}");
    assert_eq!(std::fs::read(&canary).expect("canary survives"), b"keep me");
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode(outside.path()), 0o755, "outside dir's mode changed");
    assert_eq!(mode(&canary), 0o644, "canary's mode changed");
}

#[test]
fn stale_run_dirs_of_dead_processes_are_swept_at_start_up() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let base = tempfile::Builder::new()
        .prefix("verdict-sweep-")
        .tempdir()
        .expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("canary"), b"keep me").expect("canary");
    // A pid that is certainly dead: a child we reaped.
    let mut child = std::process::Command::new("/bin/true")
        .spawn()
        .expect("spawn");
    let dead = child.id();
    child.wait().expect("wait");
    let b = base.path();
    // Stale: a deep chain with a 0000 dir and a symlink out.
    let stale = b.join(format!("run-{dead}-3-7-0badcafe"));
    std::fs::create_dir(&stale).expect("mkdir");
    std::fs::create_dir(stale.join("c")).expect("mkdir");
    for _ in 0..5000 {
        std::fs::create_dir(stale.join("n")).expect("mkdir");
        std::fs::rename(stale.join("c"), stale.join("n/d")).expect("rename");
        std::fs::rename(stale.join("n"), stale.join("c")).expect("rename");
    }
    symlink(outside.path(), stale.join("c/d/out")).expect("symlink");
    std::fs::create_dir(stale.join("c/d/locked")).expect("mkdir");
    std::fs::set_permissions(
        stale.join("c/d/locked"),
        std::fs::Permissions::from_mode(0o000),
    )
    .expect("chmod");
    // Stale: a symlink named like a run dir, pointing out: unlinked, never followed.
    symlink(outside.path(), b.join(format!("run-{dead}-4-0-00000001"))).expect("symlink");
    // Kept: our own (live) pid, made after we started; pid 1 (alive, started long before);
    // names that are not run dirs.
    let me = std::process::id();
    let mine = b.join(format!("run-{me}-0-0-00000000"));
    std::fs::create_dir(&mine).expect("mkdir");
    let init = b.join("run-1-0-0-00000000");
    std::fs::create_dir(&init).expect("mkdir");
    let other = b.join(format!("keep-{dead}-0-0-00000000"));
    std::fs::create_dir(&other).expect("mkdir");
    let odd = b.join(format!("run-{dead}-x-0-00000000"));
    std::fs::create_dir(&odd).expect("mkdir");

    let sb = verdict_sandbox::Sandbox::new(verdict_sandbox::SandboxConfig {
        base_dir: b.to_path_buf(),
        ..verdict_sandbox::SandboxConfig::default()
    })
    .expect("sandbox");
    let t = std::time::Instant::now();
    let removed = sb.sweep_stale_run_dirs().expect("sweep");
    eprintln!("swept {removed} in {:?}", t.elapsed());
    assert_eq!(removed, 2);
    assert!(!stale.exists() && std::fs::symlink_metadata(&stale).is_err());
    assert!(std::fs::symlink_metadata(b.join(format!("run-{dead}-4-0-00000001"))).is_err());
    assert!(mine.is_dir() && init.is_dir() && other.is_dir() && odd.is_dir());
    assert_eq!(
        std::fs::read(outside.path().join("canary")).expect("canary survives"),
        b"keep me"
    );
    // A second sweep finds nothing; a run dir made now by this process survives it.
    let live = sb.run_dir(0).expect("run dir");
    assert_eq!(sb.sweep_stale_run_dirs().expect("sweep"), 0);
    assert!(live.path().is_dir());
    drop((live, sb));
    // As root the slot's run dirs are on a loop-mounted file system under the temp dir:
    // unmount it, or the temp dir (and a loop device) would be left behind.
    let slot_fs = b.join("slot-0");
    if std::fs::metadata(&slot_fs).is_ok() {
        let _ = std::process::Command::new("umount")
            .arg(&slot_fs)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn a_run_dir_whose_pid_was_reused_is_swept() {
    let base = tempfile::Builder::new()
        .prefix("verdict-sweep-")
        .tempdir()
        .expect("tempdir");
    let b = base.path();
    let old = b.join("made-before");
    std::fs::create_dir(&old).expect("mkdir");
    std::fs::write(old.join("f"), b"x").expect("write");
    // The process now holding the pid started well after the directory was made.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let mut holder = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .expect("spawn");
    let reused = b.join(format!("run-{}-0-0-00000000", holder.id()));
    std::fs::rename(&old, &reused).expect("rename");
    let fresh = b.join(format!("run-{}-1-0-00000000", holder.id()));
    std::fs::create_dir(&fresh).expect("mkdir");
    let sb = verdict_sandbox::Sandbox::new(verdict_sandbox::SandboxConfig {
        base_dir: b.to_path_buf(),
        ..verdict_sandbox::SandboxConfig::default()
    })
    .expect("sandbox");
    let removed = sb.sweep_stale_run_dirs();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(removed.expect("sweep"), 1);
    assert!(!reused.exists());
    assert!(
        fresh.is_dir(),
        "a dir made after its process started is kept"
    );
}

#[test]
fn page_cache_rereads_are_not_memory_limit_exceeded() {
    // 140 MiB of anonymous memory plus two 60 MiB files re-read several times under
    // 256 MiB: the files' clean page cache is evicted and read again, which keeps the
    // cgroup at its limit, but the anonymous working set fits. A plain memory cgroup lets
    // this finish; so must we.
    let slot = SLOT_BASE + 83;
    let limits = Limits {
        memory_kb: 256 * 1024,
        file_size_bytes: 128 * 1024 * 1024,
        wall_ms: 30_000,
        cpu_ms: 20_000,
        ..Limits::default()
    };
    let t = std::time::Instant::now();
    let o = c(
        "rereads",
        r#"int main(){
    size_t table = 140u << 20;
    char *p = malloc(table); if (!p) return 1;
    for (size_t i = 0; i < table; i += 4096) p[i] = (char)i;
    static char buf[1 << 20];
    memset(buf, 7, sizeof buf);
    const char *names[] = { "a.dat", "b.dat" };
    for (int f = 0; f < 2; f++) {
        int fd = open(names[f], O_WRONLY|O_CREAT|O_TRUNC, 0600); if (fd < 0) return 2;
        for (int i = 0; i < 60; i++) if (write(fd, buf, sizeof buf) != sizeof buf) return 3;
        close(fd);
    }
    long sum = 0;
    for (int round = 0; round < 80; round++)
        for (int f = 0; f < 2; f++) {
            int fd = open(names[f], O_RDONLY); if (fd < 0) return 4;
            ssize_t n; while ((n = read(fd, buf, sizeof buf)) > 0) sum += buf[n - 1];
            close(fd);
            for (size_t i = 0; i < table; i += 4096) sum += p[i];
        }
    printf("%ld\n", sum > 0); return 0; }"#,
        &[],
        limits,
        slot,
    );
    eprintln!("rereads: {:?} in {:?}", o.limit, t.elapsed());
    assert_eq!(o.limit, None, "{o:?}");
    assert!(o.success(), "{o:?}");
    assert_eq!(stdout(&o), "1\n");
}

fn host_free_bytes(path: &str) -> u64 {
    let c = std::ffi::CString::new(path).expect("path");
    // SAFETY: statvfs is plain old data; the call fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// `fallocate`, many files and many inodes: a run is bounded by its slot's disk budget
/// and the host disk is untouched.
#[test]
fn the_disk_budget_bounds_fallocate_files_and_inodes() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let budget = verdict_sandbox::DiskBudget {
        bytes: 64 << 20,
        inodes: 4000,
    };
    let sb = verdict_sandbox::Sandbox::new(verdict_sandbox::SandboxConfig {
        base_dir: std::path::PathBuf::from("/tmp/verdict-sandbox-disk-tests"),
        disk: budget,
        ..verdict_sandbox::SandboxConfig::default()
    })
    .expect("sandbox");
    let active = sb
        .report()
        .iter()
        .any(|l| l.name == "disk budget" && l.active);
    assert_eq!(active, root, "the disk budget is on exactly when root");
    if !active {
        return;
    }
    let slot = SLOT_BASE + 66;
    let body = r#"
int main() {
    long long reserved = 0, written = 0; int files = 0, inodes = 0;
    signal(SIGXFSZ, SIG_IGN);
    /* 2 GiB in 32 MiB pieces, each under RLIMIT_FSIZE */
    for (int i = 0; i < 64; i++) {
        char name[32]; snprintf(name, sizeof name, "big%d", i);
        int fd = open(name, O_CREAT | O_WRONLY, 0600);
        if (fd < 0 || fallocate(fd, 0, 0, 32LL << 20) != 0) { close(fd); break; }
        reserved += 32LL << 20; close(fd);
    }
    printf("reserved=%lld ", reserved);
    for (int i = 0; i < 64; i++) { char name[32]; snprintf(name, sizeof name, "big%d", i); unlink(name); }
    static char buf[1 << 20];
    memset(buf, 'x', sizeof buf);
    for (int i = 0; i < 200; i++) {
        char name[32]; snprintf(name, sizeof name, "f%d", i);
        int f = open(name, O_CREAT | O_WRONLY, 0600);
        if (f < 0) break;
        int ok = 1;
        for (int j = 0; j < 8 && ok; j++) { if (write(f, buf, sizeof buf) != sizeof buf) ok = 0; else written += sizeof buf; }
        close(f); files++;
        if (!ok) break;
    }
    mkdir("d", 0700);
    for (int i = 0; i < 100000; i++) {
        char name[32]; snprintf(name, sizeof name, "d/%d", i);
        int f = open(name, O_CREAT | O_WRONLY, 0600);
        if (f < 0) break;
        close(f); inodes++;
    }
    printf("written=%lld files=%d inodes=%d\n", written, files, inodes);
    return 0;
}"#;
    let bin = compile_c("diskfill", &format!("{PRELUDE}\n{body}"));
    let free_before = host_free_bytes("/tmp");
    let dir = sb.run_dir(slot).expect("run dir");
    dir.write_file_mode("diskfill", &bin, 0o700).expect("write");
    let program = dir.path().join("diskfill");
    let spec = verdict_sandbox::RunSpec {
        program: program.clone(),
        args: vec![],
        env: env_for(&dir),
        stdin: b"",
        dir: &dir,
        slot,
        limits: Limits {
            wall_ms: 20_000,
            cpu_ms: 10_000,
            ..Limits::default()
        },
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let o = sb.run(&spec, &mut |_, _| {}, &cancel).expect("run");
    let out = stdout(&o);
    let free_after = host_free_bytes("/tmp");
    let field = |name: &str| -> i64 {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out:?} ({o:?})"))
    };
    assert!(
        field("reserved") <= (budget.bytes + budget.bytes / 20) as i64,
        "fallocate took more than the budget: {out}"
    );
    // ext4 keeps a little room of its own: allow 5%.
    let room = (budget.bytes + budget.bytes / 20) as i64;
    assert!(field("written") <= room, "{out}");
    // mkfs rounds the inode count up to whole block groups.
    assert!(
        field("inodes") <= (budget.inodes + budget.inodes / 10) as i64,
        "{out}"
    );
    assert!(
        free_before.saturating_sub(free_after) < 2 * budget.bytes,
        "the host disk lost {} bytes",
        free_before.saturating_sub(free_after)
    );
    drop(dir);
    // The slot works normally afterwards: the budget is per run.
    let again = sb.run_dir(slot).expect("run dir");
    again
        .write_file("probe", b"ok")
        .expect("room again after the run");
}

#[test]
fn a_compiler_thrashing_at_its_memory_limit_is_stopped_soon() {
    // cc1plus needs ~200 MB for <bits/stdc++.h>; under 64 MiB without swap it keeps
    // evicting and re-reading its own text instead of being OOM-killed.
    if !std::path::Path::new("/usr/bin/g++").exists() {
        return;
    }
    let slot = SLOT_BASE + 84;
    let dir = sandbox().run_dir(slot).expect("run dir");
    dir.write_file(
        "main.cpp",
        b"#include <bits/stdc++.h>\nint main(){ std::map<int,int> m; std::cout << m.size(); }\n",
    )
    .expect("source");
    let limits = Limits {
        memory_kb: 64 * 1024,
        wall_ms: 30_000,
        cpu_ms: 30_000,
        ..Limits::default()
    };
    let t = std::time::Instant::now();
    let r = run_in(
        &dir,
        slot,
        "/usr/bin/g++",
        &["-O2", "-c", "-o", "main.o", "main.cpp"],
        b"",
        limits,
    );
    let took = t.elapsed();
    eprintln!("g++ under 64 MiB: {:?} after {took:?}", r.outcome.limit);
    assert_eq!(r.outcome.limit, Some(LimitHit::Memory), "{:?}", r.outcome);
    assert!(took < std::time::Duration::from_secs(6), "{took:?}");
}

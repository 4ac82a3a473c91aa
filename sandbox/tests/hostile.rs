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

//! The child's side of fork: one ordered recipe, async-signal-safe calls only.
//!
//! The child is started with `clone(CLONE_VM | CLONE_VFORK)` (like glibc's posix_spawn):
//! it shares the parent's memory until execve, so no page tables are copied, and the
//! calling thread is suspended until the child has exec'd or exited. Everything here was
//! prepared by the parent (C strings, pointer arrays, rlimit values, the Landlock ruleset
//! fd, the BPF program). The child makes raw syscalls only, writes to nothing but its own
//! stack and the `report` word, and on failure stores `(stage, errno)` there and `_exit`s.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use libc::{c_char, c_int};
use seccompiler::sock_filter;

/// Setup steps, in the order the child performs them. The discriminant travels over the
/// error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Stage {
    Signals = 1,
    Setsid,
    Cgroup,
    Stdio,
    Chdir,
    Rlimits,
    Groups,
    Gid,
    Uid,
    ParentDeath,
    CloseFds,
    NoNewPrivs,
    ProcSelf,
    Landlock,
    Seccomp,
    Exec,
}

impl Stage {
    pub(crate) fn from_code(code: u32) -> Option<Stage> {
        use Stage::*;
        [
            Signals,
            Setsid,
            Cgroup,
            Stdio,
            Chdir,
            Rlimits,
            Groups,
            Gid,
            Uid,
            ParentDeath,
            CloseFds,
            NoNewPrivs,
            ProcSelf,
            Landlock,
            Seccomp,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == code)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Stage::Signals => "reset signals",
            Stage::Setsid => "setsid",
            Stage::Cgroup => "join cgroup",
            Stage::Stdio => "redirect stdio",
            Stage::Chdir => "chdir to run dir",
            Stage::Rlimits => "setrlimit",
            Stage::Groups => "setgroups",
            Stage::Gid => "setresgid",
            Stage::Uid => "setresuid",
            Stage::ParentDeath => "PR_SET_PDEATHSIG",
            Stage::CloseFds => "close_range",
            Stage::NoNewPrivs => "PR_SET_NO_NEW_PRIVS",
            Stage::ProcSelf => "landlock_add_rule(/proc/self)",
            Stage::Landlock => "landlock_restrict_self",
            Stage::Seccomp => "seccomp",
            Stage::Exec => "execve",
        }
    }
}

/// Everything the child needs, borrowed from data the parent built before fork.
pub(crate) struct ChildPlan<'a> {
    pub program: &'a CStr,
    /// NULL-terminated.
    pub argv: &'a [*const c_char],
    /// NULL-terminated.
    pub envp: &'a [*const c_char],
    pub dir: &'a CStr,
    /// Child ends: stdin read end, stdout and stderr write ends. All >= 3.
    pub stdio: [RawFd; 3],
    /// Set to `stage << 32 | errno` when setup fails; untouched on success.
    pub report: &'a AtomicU64,
    /// The signal mask to restore right before execve (the parent blocks every signal
    /// around clone so no parent handler can run on the child's stack).
    pub exec_sigmask: &'a libc::sigset_t,
    pub rlimits: &'a [(libc::__rlimit_resource_t, libc::rlimit)],
    pub cgroup_procs: &'a [RawFd],
    /// (uid, gid) to drop to.
    pub ids: Option<(libc::uid_t, libc::gid_t)>,
    pub landlock_fd: Option<RawFd>,
    /// Rights on the child's own `/proc/<pid>`, added to the ruleset in the child (the
    /// directory exists only once the child does); 0: none.
    pub proc_self_access: u64,
    pub seccomp: Option<&'a [sock_filter]>,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

/// Signals whose disposition we reset: SIG_IGN survives execve, and the Rust runtime
/// ignores SIGPIPE.
const RESET_SIGNALS: [c_int; 12] = [
    libc::SIGPIPE,
    libc::SIGXFSZ,
    libc::SIGXCPU,
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGCHLD,
    libc::SIGTSTP,
];

fn errno() -> c_int {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// Reports `stage` and the current errno to the parent, then exits.
fn fail(report: &AtomicU64, stage: Stage) -> ! {
    let e = errno() as u32;
    report.store(
        (u64::from(stage as u32) << 32) | u64::from(e),
        Ordering::SeqCst,
    );
    // SAFETY: _exit(2) is async-signal-safe and never returns.
    unsafe { libc::_exit(127) }
}

/// Splits a report word into (stage code, errno).
pub(crate) fn decode_report(word: u64) -> Option<(u32, i32)> {
    (word != 0).then_some(((word >> 32) as u32, (word & 0xffff_ffff) as u32 as i32))
}

/// The `clone` entry point.
///
/// # Safety
/// `arg` must point to a live `ChildPlan` (the parent is suspended by CLONE_VFORK until
/// we exec or exit, so it is).
pub(crate) extern "C" fn clone_entry(arg: *mut libc::c_void) -> c_int {
    // SAFETY: per the contract above, `arg` is a `*const ChildPlan` that outlives us.
    unsafe { exec_child(&*(arg as *const ChildPlan<'_>)) }
}

/// Formats `n` in decimal into `buf`, returning the used tail. No allocation.
fn itoa(mut n: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Applies the recipe and execs. Never returns.
///
/// Long on purpose: the layers are applied in one order that matters (see the crate
/// docs), inside one unsafe block under one safety argument, in a child that shares our
/// memory until it execs; read top to bottom, the numbered steps are that order.
///
/// # Safety
/// Must only be called in a freshly cloned (CLONE_VM | CLONE_VFORK) or forked child.
/// All pointers in `plan` must be valid (they point into the parent's memory, which the
/// child has a copy of).
pub(crate) unsafe fn exec_child(plan: &ChildPlan<'_>) -> ! {
    let err_fd = plan.report;
    // SAFETY: (whole function) only async-signal-safe libc functions and raw syscalls are
    // called; every pointer passed comes from `plan`, whose data outlives this call (we
    // either exec or _exit).
    unsafe {
        // 1. Signals: reset ignored dispositions (SIG_IGN survives execve). All signals stay
        //    blocked until just before execve.
        for sig in RESET_SIGNALS {
            libc::signal(sig, libc::SIG_DFL);
        }

        // 2. Own session and process group (pgid = pid), no controlling terminal.
        if libc::setsid() < 0 {
            fail(err_fd, Stage::Setsid);
        }

        // 3. Join the slot's cgroups (while still privileged).
        if !plan.cgroup_procs.is_empty() {
            let mut buf = [0u8; 12];
            let pid = itoa(libc::getpid() as u32, &mut buf);
            for &fd in plan.cgroup_procs {
                if libc::write(fd, pid.as_ptr().cast(), pid.len()) < 0 {
                    fail(err_fd, Stage::Cgroup);
                }
            }
        }

        // 4. stdio. The parent guarantees the sources are >= 3, so dup2 never clobbers one.
        for (target, &src) in plan.stdio.iter().enumerate() {
            if libc::dup2(src, target as c_int) < 0 {
                fail(err_fd, Stage::Stdio);
            }
        }

        // 5. The run directory is the working directory.
        if libc::chdir(plan.dir.as_ptr()) != 0 {
            fail(err_fd, Stage::Chdir);
        }

        // 6. rlimits (before the uid drop: RLIMIT_NPROC applies to the new uid at execve).
        for (resource, limit) in plan.rlimits {
            if libc::setrlimit(*resource, limit) != 0 {
                fail(err_fd, Stage::Rlimits);
            }
        }

        // 7. Drop to the slot's uid/gid with no supplementary groups. Raw syscalls: the libc
        //    wrappers synchronise credentials across threads, which a forked child has not.
        if let Some((uid, gid)) = plan.ids {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
                fail(err_fd, Stage::Groups);
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail(err_fd, Stage::Gid);
            }
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail(err_fd, Stage::Uid);
            }
        }

        // 8. Die with the forking thread (reset by the credential change, so set after it).
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(err_fd, Stage::ParentDeath);
        }

        // 9. Nothing but stdio crosses exec: mark every other fd close-on-exec (fds of
        //    concurrent runs forked from other threads included).
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            fail(err_fd, Stage::CloseFds);
        }

        // 10. No privilege gain through exec (setuid binaries, file caps).
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(err_fd, Stage::NoNewPrivs);
        }

        // 11. Landlock: first the child's own /proc/<pid> (only this process's entries, never
        //     another's: their command lines and environments are secrets), then restrict.
        if let (Some(fd), true) = (plan.landlock_fd, plan.proc_self_access != 0) {
            let dir = libc::open(
                c"/proc/self".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if dir < 0 {
                fail(err_fd, Stage::ProcSelf);
            }
            let attr = PathBeneathAttr {
                allowed_access: plan.proc_self_access,
                parent_fd: dir,
            };
            if libc::syscall(
                libc::SYS_landlock_add_rule,
                fd,
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0u32,
            ) != 0
            {
                fail(err_fd, Stage::ProcSelf);
            }
            libc::close(dir);
        }
        if let Some(fd) = plan.landlock_fd {
            if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0 {
                fail(err_fd, Stage::Landlock);
            }
        }

        // 12. seccomp, last.
        if let Some(filter) = plan.seccomp {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                fail(err_fd, Stage::Seccomp);
            }
        }

        if libc::sigprocmask(libc::SIG_SETMASK, plan.exec_sigmask, std::ptr::null_mut()) != 0 {
            fail(err_fd, Stage::Signals);
        }
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        fail(err_fd, Stage::Exec)
    }
}

//! The parent's side of a run: prepare, fork, feed stdin, read output under a cap, enforce
//! wall time, reap with `wait4`, then kill and reap whatever the run left behind.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::child::{self, ChildPlan, Stage};
use crate::cleanup;
use crate::sys::{
    self, above_stdio, exited_nowait, give_to, kill_group, pidfd_open, pipe, set_nonblocking,
    timeval_ms, wait4,
};
use crate::watch::RunWatch;
use crate::{LimitHit, Outcome, RunSpec, Sandbox, SandboxError, StreamKind};

/// Cancel flag poll interval.
const CANCEL_TICK: Duration = Duration::from_millis(20);
fn cstring(bytes: &[u8], what: &str) -> Result<CString, SandboxError> {
    CString::new(bytes)
        .map_err(|_| SandboxError::InvalidSpec(format!("{what} contains a NUL byte")))
}

fn rlimit(cur: u64, max: u64) -> libc::rlimit {
    libc::rlimit {
        rlim_cur: cur as libc::rlim_t,
        rlim_max: max as libc::rlim_t,
    }
}

/// The rlimits for a run, clamped to our own hard limits (an unprivileged worker cannot
/// raise them). When the parent watches the run's CPU time (`cpu_watched`), RLIMIT_CPU is
/// only a backstop, a second above the limit rounded up to seconds (its granularity), for
/// when the parent cannot get scheduled; otherwise it is the enforcement.
/// `nproc` is RLIMIT_NPROC's value, when it is set (see `nproc.rs` for a shared uid).
/// `data_limit`: no memory cgroup, so RLIMIT_DATA bounds memory — the limit itself, or,
/// when the parent watches the resident memory (`resident_watched`), a backstop of
/// [`data_backstop`] (see [`ResidentWatch`](crate::watch::ResidentWatch)).
fn rlimits(
    spec: &RunSpec<'_>,
    data_limit: bool,
    nproc: Option<u64>,
    cpu_watched: bool,
    resident_watched: bool,
) -> Vec<(libc::__rlimit_resource_t, libc::rlimit)> {
    let l = &spec.limits;
    let cpu_s = l.cpu_ms.div_ceil(1000).max(1) + u64::from(cpu_watched);
    let mem = l.memory_kb.saturating_mul(1024);
    let stack = if l.stack_kb == 0 {
        mem
    } else {
        l.stack_kb.saturating_mul(1024)
    };
    let mut v = vec![
        (libc::RLIMIT_CPU, rlimit(cpu_s, cpu_s + 1)),
        (
            libc::RLIMIT_FSIZE,
            rlimit(l.file_size_bytes, l.file_size_bytes),
        ),
        (libc::RLIMIT_NOFILE, rlimit(l.open_files, l.open_files)),
        (libc::RLIMIT_STACK, rlimit(stack, stack)),
        (libc::RLIMIT_CORE, rlimit(0, 0)),
    ];
    if data_limit {
        let data = if resident_watched {
            data_backstop(mem)
        } else {
            mem
        };
        v.push((libc::RLIMIT_DATA, rlimit(data, data)));
    }
    if let Some(n) = nproc {
        v.push((libc::RLIMIT_NPROC, rlimit(n, n)));
    }
    for (res, lim) in &mut v {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `cur`, a valid rlimit.
        if unsafe { libc::getrlimit(*res, &mut cur) } == 0 && cur.rlim_max != libc::RLIM_INFINITY {
            lim.rlim_max = lim.rlim_max.min(cur.rlim_max);
            lim.rlim_cur = lim.rlim_cur.min(lim.rlim_max);
        }
    }
    v
}

/// RLIMIT_DATA when the parent watches resident memory: 4 x the limit + 1 GiB.
///
/// RLIMIT_DATA counts writable private *address space*, not memory: a JVM reserves a
/// thread stack of `-Xss` (64 MiB in the catalogue) per thread and sizes its heap from the
/// host's RAM, so a hello world maps ~1 GB (`VmData`) while using 40 MB, and under
/// RLIMIT_DATA = 512 MiB it could not start its threads (`pthread_create failed
/// (EAGAIN)`). So without a memory cgroup the limit is enforced on what the program
/// really uses — resident memory, sampled by the parent — and RLIMIT_DATA only stops an
/// allocation burst between two samples from taking the machine.
pub(crate) fn data_backstop(limit_bytes: u64) -> u64 {
    limit_bytes.saturating_mul(4).saturating_add(1 << 30)
}

/// Output accounting: both streams share one cap.
struct Sink<'a> {
    cap: u64,
    total: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_truncated: bool,
    stderr_truncated: bool,
    on_output: &'a mut dyn FnMut(StreamKind, &[u8]),
}

impl Sink<'_> {
    /// Returns false when the cap was exceeded.
    fn push(&mut self, kind: StreamKind, data: &[u8]) -> bool {
        let room = self.cap.saturating_sub(self.total);
        let take = (data.len() as u64).min(room) as usize;
        if take > 0 {
            let chunk = &data[..take];
            match kind {
                StreamKind::Stdout => self.stdout.extend_from_slice(chunk),
                StreamKind::Stderr => self.stderr.extend_from_slice(chunk),
            }
            self.total += take as u64;
            (self.on_output)(kind, chunk);
        }
        if take < data.len() {
            match kind {
                StreamKind::Stdout => self.stdout_truncated = true,
                StreamKind::Stderr => self.stderr_truncated = true,
            }
            return false;
        }
        true
    }
}

enum ReadResult {
    Open,
    Eof,
    Overflow,
}

/// Reads what is available on a non-blocking pipe.
fn drain(fd: RawFd, kind: StreamKind, buf: &mut [u8], sink: &mut Sink<'_>) -> ReadResult {
    // Bounded so one chatty stream cannot starve the deadline checks.
    for _ in 0..16 {
        // SAFETY: `buf` is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            if !sink.push(kind, &buf[..n as usize]) {
                return ReadResult::Overflow;
            }
            continue;
        }
        if n == 0 {
            return ReadResult::Eof;
        }
        let e = io::Error::last_os_error().raw_os_error();
        if e == Some(libc::EINTR) {
            continue;
        }
        if e == Some(libc::EAGAIN) {
            return ReadResult::Open;
        }
        return ReadResult::Eof;
    }
    ReadResult::Open
}

/// Child stack for clone: only the recipe's few frames run on it.
pub(crate) const CHILD_STACK: usize = 64 * 1024;

/// Starts the child (see [`sys::clone_vfork`]) on the slot's reused stack.
fn spawn(plan: &ChildPlan<'_>, stack: &mut Vec<u8>) -> Result<libc::pid_t, SandboxError> {
    if stack.len() < CHILD_STACK {
        stack.resize(CHILD_STACK, 0);
    }
    // SAFETY: `clone_entry` runs the async-signal-safe recipe on `stack`, which lives until
    // we return; CLONE_VFORK suspends this thread until the child execs or exits, so
    // `plan` (on our stack) stays valid for the child's whole use of it.
    let pid = unsafe {
        sys::clone_vfork(
            child::clone_entry,
            stack,
            plan as *const ChildPlan<'_> as *mut libc::c_void,
        )
    };
    pid.map_err(|source| SandboxError::Sys {
        call: "clone",
        source,
    })
}

pub(crate) fn run(
    sb: &Sandbox,
    spec: &RunSpec<'_>,
    on_output: &mut dyn FnMut(StreamKind, &[u8]),
    cancel: &AtomicBool,
) -> Result<Outcome, SandboxError> {
    if !spec.program.is_absolute() {
        return Err(SandboxError::InvalidSpec(format!(
            "program {} is not absolute",
            spec.program.display()
        )));
    }
    if spec.dir.slot() != spec.slot {
        return Err(SandboxError::InvalidSpec(format!(
            "run dir belongs to slot {}, spec says slot {}",
            spec.dir.slot(),
            spec.slot
        )));
    }
    // --- Everything the child needs, built before fork. ---
    let program = cstring(spec.program.as_os_str().as_bytes(), "program")?;
    let mut argv_owned = Vec::with_capacity(spec.args.len() + 1);
    argv_owned.push(program.clone());
    for a in &spec.args {
        argv_owned.push(cstring(a.as_bytes(), "argument")?);
    }
    let mut env_owned = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') {
            return Err(SandboxError::InvalidSpec(format!(
                "bad environment variable name {k:?}"
            )));
        }
        env_owned.push(cstring(format!("{k}={v}").as_bytes(), "environment")?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env_owned.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let dir = cstring(spec.dir.path().as_os_str().as_bytes(), "run dir")?;

    let ids = sb.slot_ids(spec.slot);
    let slot_arc = sb.slot_state(spec.slot);
    let mut slot = slot_arc.lock().unwrap_or_else(|p| p.into_inner());
    let has_mem_cg = slot.cgroup.as_ref().is_some_and(|c| c.has_memory());
    let before = slot.cgroup.as_mut().map(|c| {
        c.prepare(
            spec.limits.memory_kb.saturating_mul(1024),
            spec.limits.processes,
        )
    });
    let cgroup_procs = slot
        .cgroup
        .as_ref()
        .map(|c| c.procs_fds())
        .unwrap_or_default();
    let cpu_watched = slot.cgroup.as_ref().is_some_and(|c| c.has_cpuacct()) || sb.proc_stat;
    // RLIMIT_NPROC counts every task of the uid. A slot uid runs nothing else: the run's
    // limit. Under the worker's own uid it is raised by what the uid runs outside runs, and
    // by the other runs' shares (`nproc.rs`), counted now, before the spawn. Root ignores
    // it; a pids cgroup is exact and replaces it.
    let has_pids_cg = slot.cgroup.as_ref().is_some_and(|c| c.has_pids());
    let shared_uid = (ids.is_none() && !sb.is_root && !has_pids_cg)
        .then(|| sb.shared_uid.reserve(spec.limits.processes));
    let nproc = match ids {
        Some(_) => Some(spec.limits.processes),
        None => shared_uid.as_ref().map(|r| r.rlimit),
    };
    // Without a memory cgroup the parent watches the resident memory (with the CPU time,
    // so only when that is watched too) and RLIMIT_DATA is a backstop.
    let resident_watched = !has_mem_cg && cpu_watched;
    let limits = rlimits(spec, !has_mem_cg, nproc, cpu_watched, resident_watched);

    let proc = sb.config.proc_when_uid_dropped;
    let landlock_fd = sb.fs.ruleset_for(spec.dir.path(), proc)?;

    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let stdin_r = above_stdio(stdin_r)?;
    let stdout_w = above_stdio(stdout_w)?;
    let stderr_w = above_stdio(stderr_w)?;
    if let Some(ids) = ids {
        // A pipe's inode belongs to its creator with mode 0600, so re-opening it through
        // /dev/stdin or /proc/self/fd/N failed with EACCES for the slot uid.
        for fd in [&stdin_r, &stdout_w, &stderr_w] {
            give_to(fd, ids)?;
        }
    }
    set_nonblocking(&stdin_w)?;
    set_nonblocking(&stdout_r)?;
    set_nonblocking(&stderr_r)?;

    let report = AtomicU64::new(0);
    // The program starts with an empty signal mask, whatever this thread blocks.
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it.
    let exec_sigmask: libc::sigset_t = unsafe {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    let plan = ChildPlan {
        program: &program,
        argv: &argv,
        envp: &envp,
        dir: &dir,
        stdio: [
            stdin_r.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        ],
        report: &report,
        exec_sigmask: &exec_sigmask,
        rlimits: &limits,
        cgroup_procs: &cgroup_procs,
        ids,
        landlock_fd: landlock_fd.as_ref().map(|f| f.as_raw_fd()),
        proc_self_access: if proc {
            crate::fs_policy::proc_self_access(sb.fs.kernel_version)
        } else {
            0
        },
        seccomp: sb.seccomp.as_deref(),
    };

    let start = Instant::now();
    let pid = spawn(&plan, &mut slot.stack)?;
    if let Some(r) = &shared_uid {
        r.spawned(pid);
    }
    drop((stdin_r, stdout_w, stderr_w, landlock_fd));

    if let Some((code, errno)) = child::decode_report(report.load(Ordering::SeqCst)) {
        kill_group(pid);
        let _ = wait4(pid);
        let source = io::Error::from_raw_os_error(errno);
        return Err(match Stage::from_code(code) {
            Some(Stage::Exec) => SandboxError::Exec {
                program: spec.program.clone(),
                source,
            },
            Some(stage) => SandboxError::ChildSetup {
                stage: stage.name(),
                source,
            },
            None => SandboxError::ChildSetup {
                stage: "unknown",
                source,
            },
        });
    }

    let mut sink = Sink {
        cap: spec.limits.output_bytes,
        total: 0,
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        on_output,
    };
    let deadline = start + Duration::from_millis(spec.limits.wall_ms);
    let watch = RunWatch::start(
        slot.cgroup.as_ref(),
        before,
        pid,
        &spec.limits,
        sb.cpus,
        start,
        resident_watched,
    );
    let limit = supervise_io(
        pid, spec.stdin, stdin_w, stdout_r, stderr_r, deadline, watch, cancel, &mut sink,
    );

    // Kill the group while the leader is still unreaped (its pgid cannot be recycled yet).
    kill_group(pid);
    let (status, usage) = wait4(pid)?;
    let wall_ms = start.elapsed().as_millis() as u64;

    let cleanup = cleanup::cleanup_slot(sb, ids, slot.cgroup.as_ref());
    if let Some(n) = cleanup {
        tracing::debug!(
            slot = spec.slot,
            leftovers = n,
            "killed processes left behind by the run"
        );
    }

    let (mem_cg, cg_cpu_ns) = match (&slot.cgroup, before) {
        (Some(c), Some(b)) => (c.memory_after(b), c.cpu_ns(b)),
        _ => (None, None),
    };
    drop(slot);

    let exit_code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    // The cpuacct cgroup also counts children the program did not reap (killed with it),
    // read after the cleanup so everything the run started is in.
    let cpu_ms = (timeval_ms(usage.ru_utime) + timeval_ms(usage.ru_stime))
        .max(cg_cpu_ns.map_or(0, |ns| ns / 1_000_000));
    let rss_kb = usage.ru_maxrss.max(0) as u64;
    // ru_maxrss also counts the worker's pages the child shared between clone(CLONE_VM)
    // and execve (~24 MB here), so a tiny program looked big. The memory cgroup's peak,
    // reset before the run, counts only what the run charged.
    let memory_kb = match mem_cg {
        Some((peak, _)) if peak > 0 => peak / 1024,
        _ => rss_kb,
    };

    let limit = limit.or_else(|| {
        let abnormal = exit_code != Some(0);
        let mem_limit = spec.limits.memory_kb;
        match mem_cg {
            Some((_, true)) => return Some(LimitHit::Memory),
            Some(_) => {}
            None => {
                // RLIMIT_DATA only: allocation failures are not visible from outside, so
                // infer: an abnormal end near the limit, or a runtime's out-of-memory message.
                if abnormal
                    && (rss_kb.saturating_mul(10) >= mem_limit.saturating_mul(9)
                        || oom_message(&sink.stderr))
                {
                    return Some(LimitHit::Memory);
                }
            }
        }
        if signal == Some(libc::SIGXCPU) || cpu_ms > spec.limits.cpu_ms {
            return Some(LimitHit::CpuTime);
        }
        None
    });

    Ok(Outcome {
        exit_code,
        signal,
        cpu_ms,
        wall_ms,
        memory_kb,
        stdout: sink.stdout,
        stderr: sink.stderr,
        stdout_truncated: sink.stdout_truncated,
        stderr_truncated: sink.stderr_truncated,
        limit,
    })
}

fn oom_message(stderr: &[u8]) -> bool {
    const MARKERS: [&[u8]; 6] = [
        b"MemoryError",
        b"std::bad_alloc",
        b"java.lang.OutOfMemoryError",
        b"JavaScript heap out of memory",
        b"Cannot allocate memory",
        b"memory allocation of",
    ];
    MARKERS
        .iter()
        .any(|m| stderr.windows(m.len()).any(|w| w == *m))
}

/// The poll loop. Returns the limit that made us stop early, if any.
#[allow(clippy::too_many_arguments)]
fn supervise_io(
    pid: libc::pid_t,
    stdin: &[u8],
    stdin_w: OwnedFd,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
    deadline: Instant,
    mut watch: RunWatch<'_>,
    cancel: &AtomicBool,
    sink: &mut Sink<'_>,
) -> Option<LimitHit> {
    let pidfd = pidfd_open(pid);
    let mut stdin_w = (!stdin.is_empty()).then_some(stdin_w);
    let mut stdin_off = 0usize;
    let mut outs: [Option<OwnedFd>; 2] = [Some(stdout_r), Some(stderr_r)];
    let kinds = [StreamKind::Stdout, StreamKind::Stderr];
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        if cancel.load(Ordering::Relaxed) {
            kill_group(pid);
            return Some(LimitHit::Cancelled);
        }
        let now = Instant::now();
        if let Some(hit) = watch.check(now) {
            kill_group(pid);
            return Some(hit);
        }
        if now >= deadline {
            kill_group(pid);
            return Some(LimitHit::WallTime);
        }
        let mut timeout = (deadline - now).min(CANCEL_TICK).min(watch.until_next(now));
        // Without a pidfd, notice the exit by polling.
        if pidfd.is_none() {
            if exited_nowait(pid) {
                break;
            }
            timeout = timeout.min(Duration::from_millis(5));
        }

        let mut pfds: [libc::pollfd; 4] = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 4];
        if let Some(p) = &pidfd {
            pfds[0] = libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
        }
        for (i, o) in outs.iter().enumerate() {
            if let Some(fd) = o {
                pfds[1 + i] = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
            }
        }
        if let Some(w) = &stdin_w {
            pfds[3] = libc::pollfd {
                fd: w.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `pfds` is a valid array of 4 pollfds (fd -1 entries are ignored); `ts` is
        // a valid timespec; no signal mask change.
        let r = unsafe {
            libc::ppoll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // Should not happen; fall back to sleeping a tick.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }

        if pfds[3].revents != 0 {
            if let Some(w) = &stdin_w {
                let rest = &stdin[stdin_off..];
                // SAFETY: `rest` is a valid readable buffer of rest.len() bytes.
                let n = unsafe { libc::write(w.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
                if n > 0 {
                    stdin_off += n as usize;
                    if stdin_off >= stdin.len() {
                        stdin_w = None; // EOF for the program
                    }
                } else if n < 0 {
                    let e = io::Error::last_os_error().raw_os_error();
                    if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                        stdin_w = None; // EPIPE: the program closed stdin
                    }
                }
            }
        }
        for i in 0..2 {
            if pfds[1 + i].revents == 0 {
                continue;
            }
            if let Some(fd) = &outs[i] {
                match drain(fd.as_raw_fd(), kinds[i], &mut buf, sink) {
                    ReadResult::Open => {}
                    ReadResult::Eof => outs[i] = None,
                    ReadResult::Overflow => {
                        kill_group(pid);
                        return Some(LimitHit::Output);
                    }
                }
            }
        }
        if pfds[0].revents != 0 {
            break;
        }
    }
    // The program exited: collect what it wrote, without waiting for EOF (a background
    // process may still hold the pipes; it is killed next).
    for i in 0..2 {
        if let Some(fd) = &outs[i] {
            loop {
                match drain(fd.as_raw_fd(), kinds[i], &mut buf, sink) {
                    ReadResult::Open => {
                        // drain() stops after 16 reads; go on only if it filled them all.
                        let mut pfd = libc::pollfd {
                            fd: fd.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd, zero timeout.
                        if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0
                            || pfd.revents & libc::POLLIN == 0
                        {
                            break;
                        }
                    }
                    ReadResult::Eof => break,
                    ReadResult::Overflow => return Some(LimitHit::Output),
                }
            }
        }
    }
    None
}

//! The parent's side of a run: prepare, fork, feed stdin, read output under a cap, enforce
//! wall time, reap with `wait4`, then kill and reap whatever the run left behind.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::child::{self, ChildPlan, Stage};
use crate::cleanup;
use crate::pump::{self, Pump, Sink};
use crate::sys::{self, kill_group, timeval_ms, wait4};
use crate::watch::RunWatch;
use crate::{LimitHit, Outcome, RunSpec, Sandbox, SandboxError, StreamKind};

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

    let (child_ends, parent_ends) = pump::stdio_pipes(ids)?;

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
            child_ends.stdin_r.as_raw_fd(),
            child_ends.stdout_w.as_raw_fd(),
            child_ends.stderr_w.as_raw_fd(),
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
    drop((child_ends, landlock_fd));

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

    let mut sink = Sink::new(spec.limits.output_bytes, on_output);
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
    let limit = pump::supervise_io(Pump {
        pid,
        stdin: spec.stdin,
        pipes: parent_ends,
        deadline,
        watch,
        cancel,
        sink: &mut sink,
    });

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

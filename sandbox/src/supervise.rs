//! The parent's side of a run: prepare, fork, feed stdin, read output under a cap, enforce
//! wall time, reap with `wait4`, then kill and reap whatever the run left behind.
//!
//! [`run`] is the table of contents; each step lives in the file of its concern:
//! [`rlimits`](crate::rlimits), [`pump`](crate::pump) (stdio pipes and output),
//! [`watch`](crate::watch) (CPU and memory while it runs), [`cleanup`](crate::cleanup)
//! (what the run left behind), [`outcome`](crate::outcome) (measurements and verdict), on
//! top of the syscall wrappers in [`sys`](crate::sys) and the child's recipe in
//! [`child`](crate::child).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cgroup::Before;
use crate::child::{self, ChildPlan, Stage};
use crate::nproc::Reservation;
use crate::outcome::{self, Ended};
use crate::pump::{self, Pump, Sink};
use crate::sys::{self, kill_group, wait4};
use crate::watch::RunWatch;
use crate::{cleanup, rlimits, Outcome, RunSpec, Sandbox, SandboxError, SlotState, StreamKind};

/// One run, start to end (see [`Sandbox::run`]).
pub(crate) fn run(
    sb: &Sandbox,
    spec: &RunSpec<'_>,
    on_output: &mut dyn FnMut(StreamKind, &[u8]),
    cancel: &AtomicBool,
) -> Result<Outcome, SandboxError> {
    check_spec(spec)?;
    let exec = ExecStrings::new(spec)?;

    let ids = sb.slot_ids(spec.slot);
    let slot_arc = sb.slot_state(spec.slot);
    let mut slot = slot_arc.lock().unwrap_or_else(|p| p.into_inner());
    let prep = prepare_slot(sb, spec, ids, &mut slot);

    let proc = sb.config.proc_when_uid_dropped;
    let landlock_fd = sb.fs.ruleset_for(spec.dir.path(), proc)?;
    let (child_ends, parent_ends) = pump::stdio_pipes(ids)?;

    let report = AtomicU64::new(0);
    // The program starts with an empty signal mask, whatever this thread blocks.
    let exec_sigmask = sys::empty_sigmask();
    let plan = ChildPlan {
        program: &exec.program,
        argv: &exec.argv,
        envp: &exec.envp,
        dir: &exec.dir,
        stdio: [
            child_ends.stdin_r.as_raw_fd(),
            child_ends.stdout_w.as_raw_fd(),
            child_ends.stderr_w.as_raw_fd(),
        ],
        report: &report,
        exec_sigmask: &exec_sigmask,
        rlimits: &prep.rlimits,
        cgroup_procs: &prep.cgroup_procs,
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
    if let Some(r) = &prep.shared_uid {
        r.spawned(pid);
    }
    drop((child_ends, landlock_fd));
    check_child_setup(pid, &report, spec)?;

    let mut sink = Sink::new(spec.limits.output_bytes, on_output);
    let watch = RunWatch::start(
        slot.cgroup.as_ref(),
        prep.before,
        pid,
        &spec.limits,
        sb.cpus,
        start,
        prep.resident_watched,
    );
    let limit = pump::supervise_io(Pump {
        pid,
        stdin: spec.stdin,
        pipes: parent_ends,
        deadline: start + Duration::from_millis(spec.limits.wall_ms),
        watch,
        cancel,
        sink: &mut sink,
    });

    // Kill the group while the leader is still unreaped (its pgid cannot be recycled yet).
    kill_group(pid);
    let (status, usage) = wait4(pid)?;
    let wall_ms = start.elapsed().as_millis() as u64;
    clean_up_slot(sb, spec.slot, ids, &slot);

    let (mem_cg, cg_cpu_ns) = match (&slot.cgroup, prep.before) {
        (Some(c), Some(b)) => (c.memory_after(b), c.cpu_ns(b)),
        _ => (None, None),
    };
    drop(slot);
    let ended = Ended {
        limit,
        status,
        usage,
        wall_ms,
        mem_cg,
        cg_cpu_ns,
    };
    Ok(outcome::outcome(ended, &spec.limits, sink))
}

/// Refuses a spec the child could not run as meant.
fn check_spec(spec: &RunSpec<'_>) -> Result<(), SandboxError> {
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
    Ok(())
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, SandboxError> {
    CString::new(bytes)
        .map_err(|_| SandboxError::InvalidSpec(format!("{what} contains a NUL byte")))
}

/// The strings execve needs, built before fork: the child only reads them.
struct ExecStrings {
    program: CString,
    /// NULL-terminated; points into `_argv_owned` (a CString's bytes do not move with it).
    argv: Vec<*const libc::c_char>,
    /// NULL-terminated; points into `_env_owned`.
    envp: Vec<*const libc::c_char>,
    dir: CString,
    _argv_owned: Vec<CString>,
    _env_owned: Vec<CString>,
}

impl ExecStrings {
    fn new(spec: &RunSpec<'_>) -> Result<ExecStrings, SandboxError> {
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
        Ok(ExecStrings {
            program,
            argv,
            envp,
            dir,
            _argv_owned: argv_owned,
            _env_owned: env_owned,
        })
    }
}

/// The slot made ready for one run, and what follows from what it has.
struct SlotPrep<'a> {
    /// The slot cgroup's counters before the run (it is reset and its limits set).
    before: Option<Before>,
    /// The cgroups' `cgroup.procs` files the child joins.
    cgroup_procs: Vec<RawFd>,
    /// The run's RLIMIT_NPROC share under the worker's own uid, released on drop.
    shared_uid: Option<Reservation<'a>>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// No memory cgroup: the parent watches the resident memory.
    resident_watched: bool,
}

/// Resets the slot's cgroups for the run and decides its rlimits.
fn prepare_slot<'a>(
    sb: &'a Sandbox,
    spec: &RunSpec<'_>,
    ids: Option<(u32, u32)>,
    slot: &mut SlotState,
) -> SlotPrep<'a> {
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
    let rlimits = rlimits::rlimits(spec, !has_mem_cg, nproc, cpu_watched, resident_watched);
    SlotPrep {
        before,
        cgroup_procs,
        shared_uid,
        rlimits,
        resident_watched,
    }
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

/// When the child failed before exec (it wrote a report), reaps it and returns the
/// failure: nothing of the program ran.
fn check_child_setup(
    pid: libc::pid_t,
    report: &AtomicU64,
    spec: &RunSpec<'_>,
) -> Result<(), SandboxError> {
    let Some((code, errno)) = child::decode_report(report.load(Ordering::SeqCst)) else {
        return Ok(());
    };
    kill_group(pid);
    let _ = wait4(pid);
    let source = io::Error::from_raw_os_error(errno);
    Err(match Stage::from_code(code) {
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
    })
}

/// Kills and reaps what the run left behind in its slot (see [`cleanup::cleanup_slot`]).
fn clean_up_slot(sb: &Sandbox, slot_id: u32, ids: Option<(u32, u32)>, slot: &SlotState) {
    let cleanup = cleanup::cleanup_slot(sb, ids, slot.cgroup.as_ref());
    if let Some(n) = cleanup {
        tracing::debug!(
            slot = slot_id,
            leftovers = n,
            "killed processes left behind by the run"
        );
    }
}

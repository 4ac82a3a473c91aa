//! What a run's end is turned into: the measurements (CPU time, wall time, peak memory)
//! and the limit it hit, inferred where the kernel does not say (see [`outcome`]).

use crate::pump::Sink;
use crate::sys::timeval_ms;
use crate::{LimitHit, Limits, Outcome};

/// How the run ended, as the parent measured it.
pub(crate) struct Ended {
    /// The limit the pump stopped the run for, if any.
    pub(crate) limit: Option<LimitHit>,
    /// The main process's wait status and resource usage (`wait4`).
    pub(crate) status: libc::c_int,
    pub(crate) usage: libc::rusage,
    pub(crate) wall_ms: u64,
    /// The memory cgroup's (peak bytes, limit hit), with one.
    pub(crate) mem_cg: Option<(u64, bool)>,
    /// The cpuacct cgroup's CPU time of the whole run, with one.
    pub(crate) cg_cpu_ns: Option<u64>,
}

/// The run's [`Outcome`]: its output from `sink`, its measurements, and the limit it hit.
pub(crate) fn outcome(ended: Ended, limits: &Limits, sink: Sink<'_>) -> Outcome {
    let Ended {
        limit,
        status,
        usage,
        wall_ms,
        mem_cg,
        cg_cpu_ns,
    } = ended;
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
        let mem_limit = limits.memory_kb;
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
        if signal == Some(libc::SIGXCPU) || cpu_ms > limits.cpu_ms {
            return Some(LimitHit::CpuTime);
        }
        None
    });

    Outcome {
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
    }
}

/// A runtime's out-of-memory message in the program's stderr.
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

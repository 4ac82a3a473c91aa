//! The rlimits a run gets, set in the child before the uid drop: CPU (a backstop when the
//! parent watches CPU time), file size, open files, stack, no core dumps, and, without a
//! memory cgroup, RLIMIT_DATA; RLIMIT_NPROC when it is set.

use crate::RunSpec;

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
pub(crate) fn rlimits(
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

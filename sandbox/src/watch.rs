//! The run watch: while the program runs, the parent samples its CPU time (the slot's
//! cpuacct cgroup, or `/proc/<pid>/stat`) and its memory (thrashing at the memory cgroup's
//! limit, or the resident set without one), and says when a limit is hit.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::cgroup::{Before, SlotCgroup};
use crate::{LimitHit, Limits};

/// Longest gap between two samples of the run's CPU time.
const CPU_TICK: Duration = Duration::from_millis(20);
/// Shortest gap between two samples, near the limit: never a busy loop.
const CPU_TICK_MIN: Duration = Duration::from_millis(2);

/// The memory limit without a memory cgroup: the main process's resident set
/// (`/proc/<pid>/statm`, its threads included), sampled with the CPU time (at most
/// `CPU_TICK` apart); above the limit the run is killed as MEMORY_LIMIT. Processes it
/// forks are not counted here, each is bounded by its own RLIMIT_DATA backstop.
struct ResidentWatch {
    statm: File,
    limit_pages: u64,
}

impl ResidentWatch {
    /// For `pid`, our unreaped child.
    fn open(pid: libc::pid_t, limit_bytes: u64) -> Option<ResidentWatch> {
        // SAFETY: sysconf takes no pointers.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).ok().filter(|&p| p > 0)?;
        Some(ResidentWatch {
            statm: File::open(format!("/proc/{pid}/statm")).ok()?,
            limit_pages: limit_bytes / page,
        })
    }

    fn over_limit(&self) -> bool {
        let mut buf = [0u8; 256];
        let Ok(n) = self.statm.read_at(&mut buf, 0) else {
            return false;
        };
        statm_resident(&buf[..n]).is_some_and(|pages| pages > self.limit_pages)
    }
}

/// The second field (resident pages) of a `/proc/<pid>/statm` line.
fn statm_resident(statm: &[u8]) -> Option<u64> {
    std::str::from_utf8(statm)
        .ok()?
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Where the parent reads the run's CPU time from while it runs.
///
/// The slot's cpuacct cgroup is preferred: `cpuacct.usage` is exact (ns, scheduler
/// accounting) and counts every process of the run, so forking N busy children cannot use
/// N times the limit, and a child that died unreaped still counts. Without it (not root, no
/// cgroups), `/proc/<pid>/stat` of the main process: utime + stime of all its threads plus
/// cutime + cstime of the children it has reaped — what `wait4` reports at the end, so the
/// watch and the final verdict agree — in clock ticks (10 ms). Children it has not reaped are
/// invisible there and only bounded by their own RLIMIT_CPU.
enum CpuSource<'a> {
    Cgroup(&'a SlotCgroup, Before),
    ProcStat { file: File, tick_ns: u64 },
}

impl CpuSource<'_> {
    /// For `pid`, our unreaped child (so the pid cannot be reused while we read it).
    fn open(
        cgroup: Option<&SlotCgroup>,
        before: Option<Before>,
        pid: libc::pid_t,
    ) -> Option<CpuSource<'_>> {
        if let (Some(c), Some(b)) = (cgroup, before) {
            if c.has_cpuacct() {
                return Some(CpuSource::Cgroup(c, b));
            }
        }
        // SAFETY: sysconf takes no pointers.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
        let file = File::open(format!("/proc/{pid}/stat")).ok()?;
        Some(CpuSource::ProcStat {
            file,
            tick_ns: 1_000_000_000 / hz,
        })
    }

    /// CPU time used so far, in ns.
    fn used_ns(&self) -> Option<u64> {
        match self {
            CpuSource::Cgroup(c, b) => c.cpu_ns(*b),
            CpuSource::ProcStat { file, tick_ns } => {
                let mut buf = [0u8; 1024];
                let n = file.read_at(&mut buf, 0).ok()?;
                proc_stat_ticks(&buf[..n]).map(|t| t.saturating_mul(*tick_ns))
            }
        }
    }
}

/// The fields of a `/proc/<pid>/stat` line from field 3 (state) on. The command name
/// (field 2) is the program's choice and may hold spaces and parentheses: fields are
/// counted after its last `)`.
pub(crate) fn stat_fields(stat: &[u8]) -> Option<std::str::SplitAsciiWhitespace<'_>> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    Some(rest.split_ascii_whitespace())
}

/// utime + stime + cutime + cstime (fields 14-17) of a `/proc/<pid>/stat` line.
fn proc_stat_ticks(stat: &[u8]) -> Option<u64> {
    // Field 3 (state) is the first of `stat_fields`, so field k is at index k - 3.
    stat_fields(stat)?
        .skip(11)
        .take(4)
        .map(|f| f.parse::<u64>().ok())
        .try_fold((0u64, 0), |(sum, n), t| {
            Some((sum.saturating_add(t?), n + 1))
        })
        .and_then(|(sum, n)| (n == 4).then_some(sum))
}

/// Watches a running program: kills it as soon as its CPU time exceeds the limit, or when
/// it thrashes at its memory limit ([`ThrashWatch`], sampled at the same moments). Sampling
/// is paced by the earliest moment the limit could be reached: CPU time grows at most
/// `cpus` times as fast as wall time, so with `r` ns left the next sample is due in
/// `r / cpus` — every `CPU_TICK` while far from the limit, down to `CPU_TICK_MIN` close to
/// it. The kill lands within a few ms of CPU past the limit, plus the time to deliver
/// SIGKILL.
pub(crate) struct RunWatch<'a> {
    source: Option<CpuSource<'a>>,
    limit_ns: u64,
    cpus: u32,
    next: Instant,
    /// Sampled at the same moments as the CPU time.
    memory: Option<ThrashWatch<'a>>,
    /// Without a memory cgroup: the resident memory, sampled with the CPU time.
    resident: Option<ResidentWatch>,
}

/// How long a run may stay pressed against its memory limit, thrashing, before it counts
/// as out of memory (one evaluation window).
const THRASH_AFTER: Duration = Duration::from_secs(1);

/// Major faults per second of pressure above which a run pressed at its limit is waiting on
/// its own mapped pages, not streaming files. Measured: cc1plus thrashing under 64 MiB,
/// 140-150/s; a program re-reading 2 x 60 MiB with read(2) next to a 140 MiB table under
/// 256 MiB, 0/s.
const THRASH_MAJOR_FAULTS_PER_SEC: u64 = 32;

/// Detects a run that thrashes at its memory limit instead of being OOM-killed.
///
/// Without swap, a memory cgroup at its limit reclaims page cache, and as long as that
/// frees something the OOM killer does not fire. A compiler needing 200 MB under a 64 MB
/// limit then keeps evicting and re-reading its own binary: measured, 43 MB anonymous +
/// 19 MB of file pages, `memory.failcnt` rising ~100k/s, ~150 major faults/s, and no
/// progress until the wall limit 30 s later.
///
/// Hitting the limit is not enough: clean page cache is reclaimable by design, and a
/// program whose files do not fit next to its anonymous memory (a 140 MiB table plus two
/// 60 MiB files re-read under 256 MiB) hits the limit at every sample too while making
/// full progress; a plain memory cgroup lets it finish in seconds. What differs is whose
/// pages reclaim takes: the compiler's *working set* (anonymous memory plus the text it
/// executes) does not fit, so it keeps faulting its own mapped pages back in (major
/// faults), while read(2) refills the cache without a single major fault. So a run is
/// stopped as MEMORY_LIMIT when, over a window of [`THRASH_AFTER`] during which its charges
/// hit the limit at every sample, at least half the limit is anonymous (resident or
/// swapped) and it took at least [`THRASH_MAJOR_FAULTS_PER_SEC`] major faults per second.
/// A window that does not qualify starts the next one.
///
/// Cost: `memory.failcnt` is read at each sample as before; `memory.stat` only while the
/// run is pressed against its limit (at the start and end of each window), so a run that
/// never reaches its limit pays nothing extra.
struct ThrashWatch<'a> {
    cgroup: &'a SlotCgroup,
    limit: u64,
    last_hits: u64,
    /// Since when the run is pressed, and its major-fault count then.
    pressed: Option<(Instant, u64)>,
}

impl<'a> ThrashWatch<'a> {
    fn new(cgroup: Option<&'a SlotCgroup>) -> Option<Self> {
        let cgroup = cgroup?;
        Some(ThrashWatch {
            limit: cgroup.memory_limit()?,
            last_hits: cgroup.limit_hits()?,
            cgroup,
            pressed: None,
        })
    }

    fn thrashing(&mut self, now: Instant) -> bool {
        let Some(hits) = self.cgroup.limit_hits() else {
            return false;
        };
        let hit_since_last = hits > self.last_hits;
        self.last_hits = hits;
        if !hit_since_last {
            self.pressed = None;
            return false;
        }
        let Some((since, faults_then)) = self.pressed else {
            self.pressed = self.cgroup.pressure().map(|p| (now, p.major_faults));
            return false;
        };
        let window = now.duration_since(since);
        if window < THRASH_AFTER {
            return false;
        }
        let Some(p) = self.cgroup.pressure() else {
            return false;
        };
        let faults = p.major_faults.saturating_sub(faults_then);
        let needed = THRASH_MAJOR_FAULTS_PER_SEC.saturating_mul(window.as_millis() as u64) / 1000;
        if p.anon.saturating_mul(2) >= self.limit && faults >= needed {
            return true;
        }
        self.pressed = Some((now, p.major_faults));
        false
    }
}

impl<'a> RunWatch<'a> {
    /// Starts watching `pid`, our unreaped child, spawned at `start`, with the slot's
    /// cgroup (`before`: its counters before the run). `resident_watched`: no memory
    /// cgroup, so the resident set is watched ([`ResidentWatch`]).
    pub(crate) fn start(
        cgroup: Option<&'a SlotCgroup>,
        before: Option<Before>,
        pid: libc::pid_t,
        limits: &Limits,
        cpus: u32,
        start: Instant,
        resident_watched: bool,
    ) -> RunWatch<'a> {
        RunWatch {
            source: CpuSource::open(cgroup, before, pid),
            limit_ns: limits.cpu_ms.saturating_mul(1_000_000),
            cpus,
            next: start,
            memory: ThrashWatch::new(cgroup),
            resident: resident_watched
                .then(|| ResidentWatch::open(pid, limits.memory_kb.saturating_mul(1024)))
                .flatten(),
        }
    }

    /// Samples when due: the limit hit, if any (CPU time, or memory by thrashing).
    pub(crate) fn check(&mut self, now: Instant) -> Option<LimitHit> {
        if now < self.next {
            return None;
        }
        if self.memory.as_mut().is_some_and(|m| m.thrashing(now)) {
            return Some(LimitHit::Memory);
        }
        if self
            .resident
            .as_ref()
            .is_some_and(ResidentWatch::over_limit)
        {
            return Some(LimitHit::Memory);
        }
        self.over_limit(now).then_some(LimitHit::CpuTime)
    }

    /// Samples the CPU time. Returns true when the limit is exceeded.
    fn over_limit(&mut self, now: Instant) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let Some(used) = source.used_ns() else {
            // Unreadable (should not happen): RLIMIT_CPU and the final check remain.
            self.source = None;
            return false;
        };
        if used > self.limit_ns {
            return true;
        }
        let left = Duration::from_nanos((self.limit_ns - used) / u64::from(self.cpus.max(1)));
        self.next = now + left.clamp(CPU_TICK_MIN, CPU_TICK);
        false
    }

    /// How long the poll may sleep before the next sample.
    pub(crate) fn until_next(&self, now: Instant) -> Duration {
        match self.source {
            Some(_) => self.next.saturating_duration_since(now),
            None => Duration::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{proc_stat_ticks, statm_resident};
    use crate::rlimits::data_backstop;

    #[test]
    fn statm_resident_is_the_second_field() {
        assert_eq!(
            statm_resident(b"249120 10931 2790 1 0 238402 0\n"),
            Some(10931)
        );
        assert_eq!(statm_resident(b"249120\n"), None);
        assert_eq!(data_backstop(256 << 20), (1024 << 20) + (1 << 30));
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_last_parenthesis() {
        let line = b"4242 (a) b) (c d) R 1 4242 4242 0 -1 4194304 100 0 0 0 31 7 2 1 20 0 1 0";
        assert_eq!(proc_stat_ticks(line), Some(31 + 7 + 2 + 1));
        assert_eq!(proc_stat_ticks(b"1 (x) R 1 1 1 0 -1 0 0 0 0 0 5"), None);
        assert_eq!(proc_stat_ticks(b"garbage"), None);
    }
}

//! Per-slot cgroups (v1 `memory`, `pids` and `cpuacct` hierarchies).
//!
//! The memory cgroup makes MLE detection exact: the kernel OOM-kills inside the cgroup and
//! counts it in `memory.oom_control` (`oom_kill N`), so MLE is read, not guessed. The pids
//! cgroup caps tasks (fork/thread bombs) even when no per-slot uid is available, and its
//! `pids.current` tells the parent whether anything of the run is still alive. The cpuacct
//! cgroup's `cpuacct.usage` is the CPU time (ns) of every process of the run, forked children
//! included, alive or dead: the parent polls it to kill the run as soon as it exceeds its CPU
//! limit (RLIMIT_CPU is per process and whole seconds).
//!
//! Layout: `/sys/fs/cgroup/{memory,pids,cpuacct}/<name>/slot-<n>`. The sandboxed child joins by
//! writing its own pid into the pre-opened `cgroup.procs` fds before exec.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const V1_ROOT: &str = "/sys/fs/cgroup";

/// Where the per-slot cgroups live, if the hierarchies are usable.
#[derive(Debug, Clone)]
pub(crate) struct CgroupRoots {
    pub(crate) memory: Option<PathBuf>,
    pub(crate) pids: Option<PathBuf>,
    pub(crate) cpuacct: Option<PathBuf>,
}

fn prepare_parent(controller: &str, probe: &str, name: &str) -> Option<PathBuf> {
    let hierarchy = Path::new(V1_ROOT).join(controller);
    if !hierarchy.join(probe).exists() {
        return None;
    }
    let dir = hierarchy.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    // Probe that we may actually create children (read-only mounts, no privilege, ...).
    let probe_dir = dir.join(format!("probe-{}", std::process::id()));
    match std::fs::create_dir(&probe_dir) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe_dir);
            Some(dir)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_dir(&probe_dir);
            Some(dir)
        }
        Err(_) => None,
    }
}

impl CgroupRoots {
    pub(crate) fn detect(name: &str) -> CgroupRoots {
        CgroupRoots {
            memory: prepare_parent("memory", "memory.limit_in_bytes", name),
            pids: prepare_parent("pids", "cgroup.procs", name),
            // Often co-mounted as `cpu,cpuacct`, with `cpuacct` a symlink to it.
            cpuacct: prepare_parent("cpuacct", "cpuacct.usage", name),
        }
    }
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

fn open_w(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).open(path)
}

fn read_u64(file: &File) -> Option<u64> {
    let mut buf = [0u8; 64];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

fn write_str(file: &File, s: &str) -> io::Result<()> {
    file.write_at(s.as_bytes(), 0).map(|_| ())
}

struct MemoryCg {
    procs: File,
    limit: File,
    max_usage: File,
    usage: File,
    oom_control: File,
    force_empty: File,
    current_limit: Option<u64>,
}

struct PidsCg {
    dir: PathBuf,
    procs: File,
    max: File,
    current: File,
    current_max: Option<u64>,
}

struct CpuacctCg {
    procs: File,
    usage: File,
}

/// One slot's cgroups, kept open across runs.
pub(crate) struct SlotCgroup {
    memory: Option<MemoryCg>,
    pids: Option<PidsCg>,
    cpuacct: Option<CpuacctCg>,
}

/// What the parent measured before a run, to compare after it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Before {
    oom_kills: u64,
    /// Bytes already charged when the run starts (page cache left by earlier runs of the
    /// slot); the run's peak is measured above it.
    baseline: u64,
    /// `cpuacct.usage` (ns) when the run starts: zeroed before each run, so normally 0, but
    /// the run is measured above it in case the reset was refused.
    cpu_baseline: u64,
}

fn make_dir(parent: &Path, slot: u32) -> io::Result<PathBuf> {
    let dir = parent.join(format!("slot-{slot}"));
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(e),
    }
}

impl SlotCgroup {
    pub(crate) fn open(roots: &CgroupRoots, slot: u32) -> SlotCgroup {
        let memory = roots.memory.as_ref().and_then(|p| {
            let dir = make_dir(p, slot).ok()?;
            Some(MemoryCg {
                procs: open_w(&dir.join("cgroup.procs")).ok()?,
                limit: open_rw(&dir.join("memory.limit_in_bytes")).ok()?,
                max_usage: open_rw(&dir.join("memory.max_usage_in_bytes")).ok()?,
                usage: File::open(dir.join("memory.usage_in_bytes")).ok()?,
                oom_control: open_rw(&dir.join("memory.oom_control")).ok()?,
                force_empty: open_w(&dir.join("memory.force_empty")).ok()?,
                current_limit: None,
            })
        });
        let pids = roots.pids.as_ref().and_then(|p| {
            let dir = make_dir(p, slot).ok()?;
            Some(PidsCg {
                procs: open_w(&dir.join("cgroup.procs")).ok()?,
                max: open_rw(&dir.join("pids.max")).ok()?,
                current: File::open(dir.join("pids.current")).ok()?,
                dir,
                current_max: None,
            })
        });
        let cpuacct = roots.cpuacct.as_ref().and_then(|p| {
            let dir = make_dir(p, slot).ok()?;
            Some(CpuacctCg {
                procs: open_w(&dir.join("cgroup.procs")).ok()?,
                usage: open_rw(&dir.join("cpuacct.usage")).ok()?,
            })
        });
        SlotCgroup {
            memory,
            pids,
            cpuacct,
        }
    }

    pub(crate) fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    pub(crate) fn has_pids(&self) -> bool {
        self.pids.is_some()
    }

    pub(crate) fn has_cpuacct(&self) -> bool {
        self.cpuacct.is_some()
    }

    /// The `cgroup.procs` fds the child writes its pid into. (Joining `cpuacct` after the
    /// other two costs ~0.1 ms: the expensive part, waiting for an RCU grace period on the
    /// cgroup rwsem, is paid once by the first join.)
    pub(crate) fn procs_fds(&self) -> Vec<RawFd> {
        let mut v = Vec::with_capacity(3);
        if let Some(m) = &self.memory {
            v.push(m.procs.as_raw_fd());
        }
        if let Some(p) = &self.pids {
            v.push(p.procs.as_raw_fd());
        }
        if let Some(c) = &self.cpuacct {
            v.push(c.procs.as_raw_fd());
        }
        v
    }

    /// Sets the limits for the next run and resets the peak counter.
    pub(crate) fn prepare(&mut self, memory_bytes: u64, max_tasks: u64) -> Before {
        let mut before = Before::default();
        if let Some(m) = &mut self.memory {
            if m.current_limit != Some(memory_bytes) {
                let value = memory_bytes.to_string();
                if write_str(&m.limit, &value).is_err() {
                    // Lowering below the current usage (page cache left from an earlier
                    // run) fails with EBUSY: drop the cache first.
                    let _ = write_str(&m.force_empty, "0");
                    let _ = write_str(&m.limit, &value);
                }
                m.current_limit = Some(memory_bytes);
            }
            // Page cache earlier runs left charged to the slot would count in this run's
            // peak: drop it first (cheap when there is little), then measure above what
            // could not be dropped.
            if read_u64(&m.usage).unwrap_or(0) > 0 {
                let _ = write_str(&m.force_empty, "0");
            }
            let _ = write_str(&m.max_usage, "0");
            before.baseline = read_u64(&m.usage).unwrap_or(0);
            before.oom_kills = oom_kills(&m.oom_control);
        }
        if let Some(p) = &mut self.pids {
            if p.current_max != Some(max_tasks) {
                let _ = write_str(&p.max, &max_tasks.to_string());
                p.current_max = Some(max_tasks);
            }
        }
        if let Some(c) = &self.cpuacct {
            // Slots are reused: start the run's CPU count from zero. Nothing of the previous
            // run is alive any more (it was killed and reaped), so the count stays put.
            let _ = write_str(&c.usage, "0");
            before.cpu_baseline = read_u64(&c.usage).unwrap_or(0);
        }
        before
    }

    /// (peak bytes, whether the OOM killer fired during the run).
    pub(crate) fn memory_after(&self, before: Before) -> Option<(u64, bool)> {
        let m = self.memory.as_ref()?;
        let peak = read_u64(&m.max_usage)
            .unwrap_or(0)
            .saturating_sub(before.baseline);
        Some((peak, oom_kills(&m.oom_control) > before.oom_kills))
    }

    /// CPU time (user + system, ns) every process of the run has used so far.
    pub(crate) fn cpu_ns(&self, before: Before) -> Option<u64> {
        let c = self.cpuacct.as_ref()?;
        Some(read_u64(&c.usage)?.saturating_sub(before.cpu_baseline))
    }

    /// Tasks still charged to the slot's pids cgroup (zombies included).
    pub(crate) fn tasks_alive(&self) -> Option<u64> {
        read_u64(&self.pids.as_ref()?.current)
    }

    /// Pids listed in the slot's pids cgroup.
    pub(crate) fn list_pids(&self) -> Vec<libc::pid_t> {
        let Some(p) = &self.pids else {
            return Vec::new();
        };
        std::fs::read_to_string(p.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

fn oom_kills(file: &File) -> u64 {
    let mut buf = [0u8; 256];
    let Ok(n) = file.read_at(&mut buf, 0) else {
        return 0;
    };
    let text = String::from_utf8_lossy(&buf[..n]);
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

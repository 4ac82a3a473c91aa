//! Runs one untrusted command under every isolation layer the machine offers.
//!
//! Layers, applied in the forked child between fork and exec, in this order (see
//! [`child`]): reset signals → own session/process group → join the slot's cgroups →
//! stdio → chdir to the run dir → rlimits → drop to the slot uid/gid (when root) →
//! parent-death signal → close-on-exec everything else → `PR_SET_NO_NEW_PRIVS` → Landlock →
//! seccomp (last) → execve.
//!
//! The policy is plain data ([`SandboxConfig`], [`Limits`]); the Landlock ruleset and the
//! BPF program are compiled in the parent. The parent enforces wall time and CPU time (it
//! samples the slot's cpuacct cgroup, or `/proc/<pid>/stat` without one, and kills the run
//! as soon as it is over; RLIMIT_CPU is only a backstop), caps output while reading it, reaps
//! with `wait4` and then kills everything the run left behind (every process of the slot
//! uid, atomically, with `kill(-1)` from a helper running as that uid).
//!
//! Blocking, no async: call [`Sandbox::run`] from a blocking thread.

mod cgroup;
mod child;
mod cleanup;
pub mod dirs;
mod disk;
mod error;
mod fs_policy;
mod ipc;
mod nproc;
mod outcome;
mod pump;
pub mod remove;
mod report;
mod rlimits;
mod rundir;
mod seccomp;
mod supervise;
mod sys;
mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use disk::DiskBudget;
pub use error::SandboxError;
pub use report::LayerReport;
pub use rundir::RunDir;

/// Resource limits for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// CPU time (user + system) in milliseconds, of the whole run (all its processes) when
    /// the cpuacct cgroup is available, else of the main process and the children it reaped.
    pub cpu_ms: u64,
    /// Wall-clock time in milliseconds.
    pub wall_ms: u64,
    /// Memory in KiB (cgroup limit when available, else RLIMIT_DATA).
    pub memory_kb: u64,
    /// stdout + stderr, in bytes, together.
    pub output_bytes: u64,
    /// Largest file the program may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
    /// Processes and threads (RLIMIT_NPROC per slot uid and pids cgroup; under the
    /// worker's own uid, RLIMIT_NPROC raised by what the uid already runs).
    pub processes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_STACK in KiB; 0 means "as large as the memory limit".
    pub stack_kb: u64,
}

/// Defaults for direct users of the sandbox (its tests, benches and examples). The service
/// never relies on the first five: the worker sets CPU, wall, memory, output and processes
/// from the job (whose defaults are the server's, `verdict_server::InputPolicy`; this
/// crate depends on neither) and takes only `file_size_bytes`, `open_files` and `stack_kb`
/// from here.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_ms: 2_000,
            wall_ms: 5_000,
            memory_kb: 256 * 1024,
            output_bytes: 1024 * 1024,
            file_size_bytes: 64 * 1024 * 1024,
            processes: 64,
            open_files: 256,
            stack_kb: 64 * 1024,
        }
    }
}

/// How many uids above `slot_id_base` count as slot uids (for sweeping what they left).
const SLOT_UID_SPAN: u32 = 100_000;

/// Sandbox configuration fixed per worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// Paths the program may read and execute (toolchains). Missing ones are skipped.
    pub read_only_paths: Vec<PathBuf>,
    /// Device files granted read+write as single files.
    pub device_files: Vec<PathBuf>,
    /// Where run directories are created. Made 0711 if we create it.
    pub base_dir: PathBuf,
    /// When root: the slot's uid and gid are `slot_id_base + slot`.
    pub slot_id_base: u32,
    /// Grant read access to the run's own `/proc/<pid>` (granted in the child, so never
    /// another process's: their command lines are readable by anyone under a plain /proc)
    /// and to a few machine-wide files (`/proc/cpuinfo`, `/proc/meminfo`, ...). The name is
    /// historical: it applies with or without the uid drop.
    pub proc_when_uid_dropped: bool,
    /// Name of the cgroup (under each v1 hierarchy) holding the per-slot cgroups; `None`
    /// disables cgroups.
    pub cgroup_name: Option<String>,
    /// Drop to a per-slot uid when running as root.
    pub drop_privileges: bool,
    /// When root with cgroups: remount cgroup2 with `favordynmods` (a global kernel mode;
    /// false: only report whether it is on)
    /// so that joining the slot cgroups does not wait for an RCU grace period, which cost
    /// 12–15 ms per run after the CPUs idled. See `cgroup::favor_dynmods`.
    pub favor_dynmods: bool,
    /// When root: each slot's run directories live on a loop-mounted ext4 of this size,
    /// so files, `fallocate` and inodes of a run are bounded and the host disk is not
    /// (see `disk.rs`). Ignored without root.
    pub disk: DiskBudget,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let mut read_only: Vec<PathBuf> = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"]
            .iter()
            .map(PathBuf::from)
            .collect();
        // Not /etc wholesale (database and service configs live there): only what runtimes
        // and the dynamic loader read.
        for p in [
            "/etc/ld.so.cache",
            "/etc/ld.so.conf",
            "/etc/ld.so.conf.d",
            "/etc/alternatives",
            "/etc/ssl",
            "/etc/ca-certificates",
            "/etc/localtime",
            "/etc/timezone",
            "/etc/nsswitch.conf",
            "/etc/passwd",
            "/etc/group",
            "/etc/mime.types",
            "/etc/os-release",
            // glibc's locale aliases (/usr/share/locale/locale.alias links here).
            "/etc/locale.alias",
            // Mono's DllMap (/etc/mono/config maps System.Native to libmono-native.so:
            // without it every file access of a C# program fails) and machine.config.
            "/etc/mono",
            // PHP's php.ini and the conf.d files that enable its bundled extensions.
            "/etc/php",
            // GHC's global package database (/usr/lib/ghc/package.conf.d links here).
            "/var/lib/ghc",
        ] {
            read_only.push(PathBuf::from(p));
        }
        // JDK configuration (e.g. /usr/lib/jvm/*/conf -> /etc/java-17-openjdk), Python's,
        // and Free Pascal's (/etc/fpc.cfg -> /etc/alternatives -> /etc/fpc-3.2.2.cfg).
        if let Ok(entries) = std::fs::read_dir("/etc") {
            let mut extra: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("java-") || n.starts_with("python3") || n.starts_with("fpc")
                    })
                })
                .collect();
            extra.sort();
            read_only.extend(extra);
        }
        SandboxConfig {
            read_only_paths: read_only,
            device_files: ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            base_dir: PathBuf::from("/tmp/verdict-runs"),
            slot_id_base: 60_000,
            proc_when_uid_dropped: true,
            cgroup_name: Some("verdict".into()),
            drop_privileges: true,
            favor_dynmods: true,
            disk: DiskBudget::default(),
        }
    }
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// The limit that ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LimitHit {
    CpuTime,
    WallTime,
    Memory,
    Output,
    Cancelled,
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct RunSpec<'a> {
    /// Absolute path of the executable.
    pub program: PathBuf,
    /// argv[1..] (argv[0] is the program path).
    pub args: Vec<String>,
    /// The complete environment; nothing else is passed.
    pub env: Vec<(String, String)>,
    pub stdin: &'a [u8],
    pub dir: &'a RunDir,
    pub slot: u32,
    pub limits: Limits,
}

/// The program's outcome (never our own failure: that is [`SandboxError`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub cpu_ms: u64,
    pub wall_ms: u64,
    /// Peak resident memory in KiB.
    pub memory_kb: u64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Which limit ended it, if any.
    pub limit: Option<LimitHit>,
}

impl Outcome {
    /// Exited normally with status 0 and hit no limit.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.limit.is_none()
    }
}

/// Per-slot state, locked for the duration of a run: runs of one slot never overlap (they
/// share a uid, and the post-run `kill(-1)` would hit a concurrent run).
pub(crate) struct SlotState {
    pub(crate) cgroup: Option<cgroup::SlotCgroup>,
    /// The child's clone stack, reused across runs.
    pub(crate) stack: Vec<u8>,
    /// Where this slot's run directories go: its own file system under the disk budget,
    /// else the base directory. Set by the slot's first `run_dir`.
    pub(crate) run_base: Option<PathBuf>,
}

/// The sandbox: compiled policy plus per-slot state. `Send + Sync`; share it across worker
/// threads.
pub struct Sandbox {
    config: SandboxConfig,
    is_root: bool,
    fs: fs_policy::FsPolicy,
    seccomp: Option<Vec<seccompiler::sock_filter>>,
    seccomp_allows_unix_socket: bool,
    cgroups: Option<cgroup::CgroupRoots>,
    slots: Mutex<HashMap<u32, Arc<Mutex<SlotState>>>>,
    reaper: bool,
    /// Online CPUs: how many times faster than wall time a run's CPU time can grow.
    cpus: u32,
    /// `/proc/<pid>/stat` is readable: the CPU watch's fallback without a cpuacct cgroup.
    proc_stat: bool,
    /// The kernel's cgroup `favordynmods` mode, as found or set at start.
    dynmods: Option<cgroup::DynMods>,
    /// Whether runs get a file system of their own per slot.
    disk: disk::DiskMode,
    /// Runs in progress under the worker's own uid, for their RLIMIT_NPROC (`nproc.rs`).
    shared_uid: nproc::SharedUid,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .field("is_root", &self.is_root)
            .field("landlock_abi", &self.fs.kernel_version)
            .field("seccomp_len", &self.seccomp.as_ref().map(Vec::len))
            .field("cgroups", &self.cgroups)
            .finish()
    }
}

impl Sandbox {
    /// Prepares the policy: opens the read-only paths, compiles the BPF program, sets up
    /// the base directory and cgroups.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        // SAFETY: geteuid has no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        let fs = fs_policy::FsPolicy::new(&config.read_only_paths, &config.device_files)?;
        let allow_unix = fs.restricts_unix_connect();
        let seccomp = seccomp::build_filter(seccomp::SeccompPolicy {
            allow_unix_socket: allow_unix,
        })
        .map_err(SandboxError::Seccomp)?;
        prepare_base_dir(&config.base_dir)?;
        let cgroups = config
            .cgroup_name
            .as_deref()
            .map(cgroup::CgroupRoots::detect);
        let uses_cgroups = cgroups
            .as_ref()
            .is_some_and(|c| c.memory.is_some() || c.pids.is_some() || c.cpuacct.is_some());
        let dynmods =
            (is_root && uses_cgroups).then(|| cgroup::favor_dynmods(config.favor_dynmods));
        let drop_uid = is_root && config.drop_privileges;
        if drop_uid {
            let base = config.slot_id_base;
            let removed = ipc::sweep(base..base.saturating_add(SLOT_UID_SPAN));
            if removed > 0 {
                tracing::warn!(removed, "removed SysV IPC objects left behind by slot uids");
            }
        }
        // Orphans of a run (double-forked daemons) are killed after the run; someone has to
        // reap them, and PID 1 in a container often does not. As a subreaper we reap them
        // ourselves — only children whose uid is a slot uid (see `cleanup::reap_orphans`).
        let reaper = drop_uid && {
            // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes no pointers.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
        };
        // SAFETY: sysconf takes no pointers.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let disk_mode = disk::mode(config.disk, is_root);
        Ok(Sandbox {
            config,
            is_root,
            fs,
            seccomp,
            seccomp_allows_unix_socket: allow_unix,
            cgroups,
            slots: Mutex::new(HashMap::new()),
            reaper,
            cpus: u32::try_from(online).unwrap_or(1).max(1),
            proc_stat: std::fs::File::open("/proc/self/stat").is_ok(),
            dynmods,
            disk: disk_mode,
            shared_uid: nproc::SharedUid::default(),
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The uid/gid a slot's programs run as, when the uid drop is active.
    pub fn slot_ids(&self, slot: u32) -> Option<(u32, u32)> {
        if self.is_root && self.config.drop_privileges {
            let id = self.config.slot_id_base.saturating_add(slot);
            Some((id, id))
        } else {
            None
        }
    }

    /// A fresh run directory for one submission: mode 0700, owned by the slot uid, removed
    /// on drop without following symlinks.
    pub fn run_dir(&self, slot: u32) -> Result<RunDir, SandboxError> {
        let base = self.run_base(slot);
        RunDir::create(&base, slot, self.slot_ids(slot))
    }

    /// The directory a slot's run directories are created in; makes the slot's file
    /// system on first use when the disk budget is on. Blocking.
    fn run_base(&self, slot: u32) -> PathBuf {
        let state = self.slot_state(slot);
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(base) = &state.run_base {
            return base.clone();
        }
        let base = match self.disk {
            disk::DiskMode::PerSlot(budget) => {
                match disk::ensure_slot_fs(&self.config.base_dir, slot, budget) {
                    Ok(dir) => dir,
                    Err(e) => {
                        // Runs go on, without the budget: better than refusing every run.
                        tracing::error!(slot, error = %e, "no file system for the slot's disk budget; using the base dir");
                        self.config.base_dir.clone()
                    }
                }
            }
            disk::DiskMode::Off(_) => self.config.base_dir.clone(),
        };
        state.run_base = Some(base.clone());
        base
    }

    pub(crate) fn slot_state(&self, slot: u32) -> Arc<Mutex<SlotState>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(slot)
            .or_insert_with(|| {
                let cgroup = self
                    .cgroups
                    .as_ref()
                    .map(|roots| cgroup::SlotCgroup::open(roots, slot));
                Arc::new(Mutex::new(SlotState {
                    cgroup,
                    stack: Vec::new(),
                    run_base: None,
                }))
            })
            .clone()
    }

    /// Runs one command to completion. `on_output` receives stdout/stderr chunks as they
    /// arrive (capped at `limits.output_bytes` in total). Setting `cancel` kills the run
    /// within about 20 ms.
    pub fn run(
        &self,
        spec: &RunSpec<'_>,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
        cancel: &AtomicBool,
    ) -> Result<Outcome, SandboxError> {
        // A file just written into a run dir (a source, a cached binary) can still be open
        // for writing in another slot's child for an instant: the fd table is copied at
        // clone and only closed at exec. exec then fails with ETXTBSY. Nothing ran yet,
        // so trying again is safe.
        let mut attempt = 0;
        loop {
            match supervise::run(self, spec, on_output, cancel) {
                Err(SandboxError::Exec { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2 * attempt));
                }
                other => return other,
            }
        }
    }
}

fn prepare_base_dir(base: &Path) -> Result<(), SandboxError> {
    // Ours, a real directory, 0711: slot uids must traverse it but never list or write it.
    // One that another user (or root, before) made is refused with a clear message.
    dirs::ensure_own_dir(base, 0o711, "base dir").map_err(|e| SandboxError::RunDir {
        context: format!("prepare {}", base.display()),
        source: e,
    })
}

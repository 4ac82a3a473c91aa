//! Landlock: which paths the sandboxed program may touch, and how.
//!
//! The ruleset for one run is built in the parent (one `landlock_create_ruleset` plus one
//! `landlock_add_rule` per path, using path fds opened once per [`crate::Sandbox`]); the
//! child only makes the raw `landlock_restrict_self` syscall on the resulting fd, which is
//! async-signal-safe.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

use crate::SandboxError;

/// The Landlock ABI version the running kernel offers (0 when Landlock is unavailable).
pub(crate) fn kernel_abi_version() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version (or -1 with errno); it reads no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, /* LANDLOCK_CREATE_RULESET_VERSION */
        )
    };
    if v < 0 {
        0
    } else {
        i32::try_from(v).unwrap_or(i32::MAX)
    }
}

fn abi_from_version(v: i32) -> ABI {
    match v {
        i32::MIN..=0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        7 => ABI::V7,
        8 => ABI::V8,
        9 => ABI::V9,
        _ => ABI::V10,
    }
}

/// Machine-wide `/proc` files that runtimes read (the JVM, libc, Node) and that say
/// nothing about other processes. Everything else of `/proc` stays denied: the run's own
/// `/proc/<pid>` is granted in the child, after clone, by [`crate::child`].
const PROC_FILES: [&str; 10] = [
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/filesystems",
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/kernel/pid_max",
    "/proc/sys/kernel/threads-max",
];

/// The rights on the run's own `/proc/<pid>` (`landlock_path_beneath_attr.allowed_access`).
pub(crate) fn proc_self_access(abi_version: i32) -> u64 {
    if abi_version <= 0 {
        0
    } else {
        (AccessFs::ReadFile | AccessFs::ReadDir).bits()
    }
}

struct Grant {
    path: PathBuf,
    fd: PathFd,
    access: BitFlags<AccessFs>,
}

/// Prepared Landlock state: the ABI and the opened read-only paths.
pub(crate) struct FsPolicy {
    pub(crate) kernel_version: i32,
    abi: ABI,
    grants: Vec<Grant>,
    /// Read grants for [`PROC_FILES`], added when the run may see its own `/proc`.
    proc_grants: Vec<Grant>,
    /// Configured paths that do not exist on this machine (skipped, reported by doctor).
    pub(crate) missing: Vec<PathBuf>,
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false)
}

impl FsPolicy {
    pub(crate) fn new(read_only: &[PathBuf], devices: &[PathBuf]) -> Result<Self, SandboxError> {
        let kernel_version = kernel_abi_version();
        let abi = abi_from_version(kernel_version);
        let mut grants = Vec::new();
        let mut missing = Vec::new();
        if abi == ABI::Unsupported {
            return Ok(FsPolicy {
                kernel_version,
                abi,
                grants,
                proc_grants: Vec::new(),
                missing,
            });
        }
        let read = AccessFs::from_read(abi);
        let file_rights = AccessFs::from_file(abi);
        for path in read_only {
            if !path.exists() {
                missing.push(path.clone());
                continue;
            }
            let access = if is_dir(path) {
                read
            } else {
                read & file_rights
            };
            let fd = PathFd::new(path)
                .map_err(|e| SandboxError::Landlock(format!("{}: {e}", path.display())))?;
            grants.push(Grant {
                path: path.clone(),
                fd,
                access,
            });
        }
        // Devices are granted as single files: read, write and truncate (`> /dev/null` opens
        // with O_TRUNC), plus device ioctls (harmless on these character devices).
        let mut dev_access = AccessFs::ReadFile | AccessFs::WriteFile;
        if abi >= ABI::V3 {
            dev_access |= AccessFs::Truncate;
        }
        if abi >= ABI::V5 {
            dev_access |= AccessFs::IoctlDev;
        }
        for path in devices {
            if !path.exists() {
                missing.push(path.clone());
                continue;
            }
            let fd = PathFd::new(path)
                .map_err(|e| SandboxError::Landlock(format!("{}: {e}", path.display())))?;
            grants.push(Grant {
                path: path.clone(),
                fd,
                access: dev_access,
            });
        }
        let mut proc_grants = Vec::new();
        for path in PROC_FILES.iter().map(Path::new) {
            // Absent on some kernels; nothing to report.
            if let Ok(fd) = PathFd::new(path) {
                proc_grants.push(Grant {
                    path: path.to_path_buf(),
                    fd,
                    access: AccessFs::ReadFile.into(),
                });
            }
        }
        Ok(FsPolicy {
            kernel_version,
            abi,
            grants,
            proc_grants,
            missing,
        })
    }

    pub(crate) fn active(&self) -> bool {
        self.abi != ABI::Unsupported
    }

    /// Whether Landlock restricts connecting to pathname Unix sockets (ABI >= 9).
    pub(crate) fn restricts_unix_connect(&self) -> bool {
        self.abi >= ABI::V9
    }

    pub(crate) fn granted_paths(&self) -> impl Iterator<Item = &Path> {
        self.grants.iter().map(|g| g.path.as_path())
    }

    /// Builds the ruleset fd for one run: everything handled, read-only grants, full access
    /// beneath `run_dir` and, with `proc`, the machine-wide [`PROC_FILES`] (the child adds
    /// its own `/proc/<pid>` to the same ruleset before restricting itself).
    pub(crate) fn ruleset_for(
        &self,
        run_dir: &Path,
        proc: bool,
    ) -> Result<Option<OwnedFd>, SandboxError> {
        if !self.active() {
            return Ok(None);
        }
        let abi = self.abi;
        let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .map_err(err)?;
        if abi >= ABI::V4 {
            // No rule ever grants TCP bind/connect, so handling them denies them.
            ruleset = ruleset
                .handle_access(AccessNet::from_all(abi))
                .map_err(err)?;
        }
        if abi >= ABI::V6 {
            ruleset = ruleset.scope(Scope::from_all(abi)).map_err(err)?;
        }
        let mut created = ruleset.create().map_err(err)?;
        for grant in &self.grants {
            created = created
                .add_rule(PathBeneath::new(&grant.fd, grant.access))
                .map_err(err)?;
        }
        let dir_fd = PathFd::new(run_dir)
            .map_err(|e| SandboxError::Landlock(format!("{}: {e}", run_dir.display())))?;
        created = created
            .add_rule(PathBeneath::new(dir_fd, AccessFs::from_all(abi)))
            .map_err(err)?;
        if proc {
            for grant in &self.proc_grants {
                created = created
                    .add_rule(PathBeneath::new(&grant.fd, grant.access))
                    .map_err(err)?;
            }
        }
        Ok(created.into())
    }
}

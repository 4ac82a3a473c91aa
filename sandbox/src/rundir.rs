//! Fresh per-run directories, the only writable place for a sandboxed program.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::remove::RemoveStats;
use crate::SandboxError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh run directory, mode 0700, owned by the slot's uid when the worker is root.
/// Removed (without following symlinks, without recursion) by [`RunDir::remove`] or, as a
/// fallback, when dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    slot: u32,
    owner: Option<(libc::uid_t, libc::gid_t)>,
    /// Held open so files are created relative to the directory we made, never a path a
    /// program could have swapped.
    dir_fd: OwnedFd,
    /// Set by [`RunDir::remove`], so the drop that follows does nothing.
    removed: bool,
}

fn rundir_err(context: String) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::RunDir { context, source }
}

impl RunDir {
    pub(crate) fn create(
        base: &Path,
        slot: u32,
        owner: Option<(libc::uid_t, libc::gid_t)>,
    ) -> Result<RunDir, SandboxError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("run-{}-{slot}-{n}-{nanos:08x}", std::process::id());
            let path = base.join(name);
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(rundir_err(format!("create {}", path.display()))(e)),
            }
            let c = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| SandboxError::InvalidSpec("run dir path contains NUL".into()))?;
            // SAFETY: `c` is a valid C string; open(2) returns a new fd or -1.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                let _ = std::fs::remove_dir(&path);
                return Err(rundir_err(format!("open {}", path.display()))(e));
            }
            // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
            let dir_fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // chmod explicitly: the umask may have narrowed 0700 further.
            // SAFETY: fchmod/fchown on a valid fd we own.
            let rc = unsafe { libc::fchmod(dir_fd.as_raw_fd(), 0o700) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                let _ = std::fs::remove_dir(&path);
                return Err(rundir_err(format!("chmod {}", path.display()))(e));
            }
            if let Some((uid, gid)) = owner {
                // SAFETY: as above.
                if unsafe { libc::fchown(dir_fd.as_raw_fd(), uid, gid) } != 0 {
                    let e = io::Error::last_os_error();
                    let _ = std::fs::remove_dir(&path);
                    return Err(rundir_err(format!("chown {}", path.display()))(e));
                }
            }
            return Ok(RunDir {
                path,
                slot,
                owner,
                dir_fd,
                removed: false,
            });
        }
        Err(SandboxError::RunDir {
            context: format!("no free run dir name under {}", base.display()),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        })
    }

    /// The directory's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The slot this directory belongs to.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Creates `name` (a plain file name, no `/`) inside the run directory with mode 0600,
    /// refusing to follow or replace anything already there (`O_EXCL | O_NOFOLLOW`), owned
    /// by the slot uid.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<(), SandboxError> {
        self.write_file_mode(name, contents, 0o600)
    }

    /// Like [`RunDir::write_file`] with an explicit mode (e.g. 0o700 for a script).
    pub fn write_file_mode(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), SandboxError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(SandboxError::InvalidSpec(format!("bad file name {name:?}")));
        }
        let c = CString::new(name)
            .map_err(|_| SandboxError::InvalidSpec("file name contains NUL".into()))?;
        let ctx = || format!("write {}/{name}", self.path.display());
        // SAFETY: dir_fd is a valid directory fd we own; `c` is a valid C string.
        let fd = unsafe {
            libc::openat(
                self.dir_fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                (mode & 0o777) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(rundir_err(ctx())(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by openat(2) and is owned by nobody else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if let Some((uid, gid)) = self.owner {
            // SAFETY: fchown on a valid fd we own.
            if unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } != 0 {
                return Err(rundir_err(ctx())(io::Error::last_os_error()));
            }
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(rundir_err(ctx()))?;
        file.write_all(contents).map_err(rundir_err(ctx()))
    }
}

impl RunDir {
    /// Removes the directory and everything the program left in it, never following a
    /// symlink out of it and without recursion (see [`crate::remove`]): a 30,000-deep chain
    /// of directories or 130k files take milliseconds to a second of blocking work, so call
    /// this on a blocking thread (`spawn_blocking`), not on an async runtime's worker.
    /// Dropping a `RunDir` does the same as a fallback, logging instead of returning errors.
    pub fn remove(mut self) -> Result<RemoveStats, SandboxError> {
        self.removed = true;
        self.remove_now()
    }

    fn remove_now(&self) -> Result<RemoveStats, SandboxError> {
        let ctx = || format!("remove {}", self.path.display());
        let mut stats = crate::remove::empty_dir(&self.dir_fd).map_err(rundir_err(ctx()))?;
        // The base directory is not writable by programs, so this path is still ours.
        std::fs::remove_dir(&self.path).map_err(rundir_err(ctx()))?;
        stats.dirs += 1;
        Ok(stats)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Err(e) = self.remove_now() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove run dir");
        }
    }
}

/// The pid in a run dir name `run-<pid>-<slot>-<n>-<nanos>`.
fn run_dir_pid(name: &[u8]) -> Option<libc::pid_t> {
    let rest = std::str::from_utf8(name.strip_prefix(b"run-")?).ok()?;
    let mut parts = rest.split('-');
    let pid: libc::pid_t = parts.next()?.parse().ok()?;
    let slot = parts.next()?;
    let n = parts.next()?;
    let nanos = parts.next()?;
    let ok = parts.next().is_none()
        && pid > 0
        && slot.parse::<u32>().is_ok()
        && n.parse::<u64>().is_ok()
        && u32::from_str_radix(nanos, 16).is_ok();
    ok.then_some(pid)
}

/// Seconds since the epoch when process `pid` started, or None when there is no such
/// process. Precise to about a second (`/proc/stat`'s `btime` is whole seconds).
fn process_start(pid: libc::pid_t) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime, clock ticks after boot); the name (field 2) may contain spaces,
    // so count from the last ')', after which field 3 comes first.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(boot as f64 + ticks as f64 / hz as f64)
}

/// Birth time (seconds since the epoch) of `name` in `dir`, not following symlinks.
fn birth_time(dir: libc::c_int, name: &std::ffi::CStr) -> Option<f64> {
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated; statx only writes into `stx`.
    let rc = unsafe {
        libc::statx(
            dir,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BTIME,
            &mut stx,
        )
    };
    (rc == 0 && stx.stx_mask & libc::STATX_BTIME != 0)
        .then(|| stx.stx_btime.tv_sec as f64 + f64::from(stx.stx_btime.tv_nsec) / 1e9)
}

/// Whether the run dir `name` in `base` was left by a process that is gone: its pid is not
/// alive, or the process now holding that pid started after the directory was made (the
/// pid was reused, as in a container whose worker is always PID 1 — our own pid included).
/// The 2 s margin covers `/proc/stat`'s whole-second boot time; when in doubt, keep.
fn is_stale(base: libc::c_int, name: &std::ffi::CStr, pid: libc::pid_t) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    if !exists {
        return true;
    }
    match (process_start(pid), birth_time(base, name)) {
        (Some(started), Some(born)) => born < started - 2.0,
        _ => false,
    }
}

impl crate::Sandbox {
    /// Removes the run directories a crashed or killed worker left under the base directory
    /// (`run-<pid>-...` whose process is gone, see `is_stale`), without following symlinks
    /// and without recursion. Returns how many were removed. Meant for start-up, on a
    /// blocking thread: a leftover can be as large as the biggest run dir a program may
    /// build. Directories of live processes (other workers sharing the base dir, or this
    /// process) are left alone; entries not named like run dirs are never touched.
    pub fn sweep_stale_run_dirs(&self) -> Result<usize, SandboxError> {
        let base = &self.config.base_dir;
        let mut removed = sweep_under(base)?;
        // With the disk budget, each slot's run dirs live on its own file system in
        // `<base>/slot-<N>` (see disk.rs).
        if let Ok(entries) = std::fs::read_dir(base) {
            for entry in entries.flatten() {
                let is_slot = entry.file_name().as_bytes().starts_with(b"slot-")
                    && entry.file_type().is_ok_and(|t| t.is_dir());
                if is_slot {
                    removed += sweep_under(&entry.path())?;
                }
            }
        }
        Ok(removed)
    }
}

/// Sweeps one directory that holds run dirs; see [`crate::Sandbox::sweep_stale_run_dirs`].
fn sweep_under(base: &Path) -> Result<usize, SandboxError> {
    {
        let ctx = || format!("sweep {}", base.display());
        let c = CString::new(base.as_os_str().as_bytes())
            .map_err(|_| SandboxError::InvalidSpec("base dir path contains NUL".into()))?;
        // SAFETY: `c` is a valid C string; open returns a new fd or -1.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(rundir_err(ctx())(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let base_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut removed = 0;
        let mut failed = 0;
        let started = std::time::Instant::now();
        for entry in std::fs::read_dir(base).map_err(rundir_err(ctx()))? {
            let entry = entry.map_err(rundir_err(ctx()))?;
            let name = entry.file_name();
            let Some(pid) = run_dir_pid(name.as_bytes()) else {
                continue;
            };
            let Ok(c_name) = CString::new(name.as_bytes()) else {
                continue;
            };
            if !is_stale(base_fd.as_raw_fd(), &c_name, pid) {
                continue;
            }
            match crate::remove::remove_tree_at(base_fd.as_raw_fd(), &c_name) {
                Ok(_) => removed += 1,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(path = %entry.path().display(), error = %e, "could not remove stale run dir");
                }
            }
        }
        if removed > 0 || failed > 0 {
            tracing::info!(
                base = %base.display(),
                removed,
                failed,
                ms = started.elapsed().as_millis() as u64,
                "removed run dirs left by processes that are gone"
            );
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_names_are_parsed_strictly() {
        assert_eq!(run_dir_pid(b"run-123-4-5-0a1b2c3d"), Some(123));
        assert_eq!(run_dir_pid(b"run-123-4-5"), None);
        assert_eq!(run_dir_pid(b"run-123-4-5-zz"), None);
        assert_eq!(run_dir_pid(b"run-0-4-5-00"), None);
        assert_eq!(run_dir_pid(b"run--1-4-5-00"), None);
        assert_eq!(run_dir_pid(b"other-123-4-5-00"), None);
        assert_eq!(run_dir_pid(b"run-123-4-5-00-x"), None);
    }

    #[test]
    fn this_process_started_recently_enough() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let started = process_start(std::process::id() as libc::pid_t).expect("start");
        assert!(
            started <= now + 2.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
    }
}

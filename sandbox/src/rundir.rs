//! Fresh per-run directories, the only writable place for a sandboxed program.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::SandboxError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh run directory, mode 0700, owned by the slot's uid when the worker is root.
/// Removed (without following symlinks) when dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    slot: u32,
    owner: Option<(libc::uid_t, libc::gid_t)>,
    /// Held open so files are created relative to the directory we made, never a path a
    /// program could have swapped.
    dir_fd: OwnedFd,
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

/// Makes every directory under `path` (not following symlinks) searchable and writable by
/// us, so a program that chmod'ed its dirs to 000 cannot block removal when we are not root.
fn loosen(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                loosen(&entry.path());
            }
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // std::fs::remove_dir_all is symlink-safe on Linux since Rust 1.58.1
        // (CVE-2022-21658): it walks with openat(O_NOFOLLOW) and unlinkat, so a planted
        // symlink is unlinked, never followed. The run dir itself sits in a base directory
        // the program cannot write to, so its own path cannot be swapped.
        if std::fs::remove_dir_all(&self.path).is_err() {
            loosen(&self.path);
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove run dir");
            }
        }
    }
}

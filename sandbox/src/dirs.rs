//! Directories a worker keeps its state in (run directories, slot locks, the compile
//! cache) must be its own: a directory another user made first (`/tmp` is shared) would
//! let that user see, swap or remove our files, and one that root made is simply not
//! writable for a normal user. [`ensure_own_dir`] creates one, or refuses with a message
//! that says whose it is and what to do.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether this process runs as root (and so can drop runs to slot uids, use cgroups,
/// loop-mount slot file systems).
pub fn is_root() -> bool {
    euid() == 0
}

/// Creates `path` (and missing parents) with `mode`, or checks that the existing one is a
/// real directory (not a symlink) owned by this process's uid, then sets `mode` on it.
/// `what` names the directory in the error ("run directory base", "slot lock dir").
pub fn ensure_own_dir(path: &Path, mode: u32, what: &str) -> io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => {}
        Err(e) => {
            // Say whose the nearest existing ancestor is: "Permission denied" alone does
            // not tell that root made /tmp/verdict-slots before.
            let blocker = path
                .ancestors()
                .skip(1)
                .find_map(|a| std::fs::symlink_metadata(a).ok().map(|m| (a, m)));
            let hint = match blocker {
                Some((dir, meta)) if e.kind() == io::ErrorKind::PermissionDenied => format!(
                    " ({} belongs to uid {}; this process runs as uid {})",
                    dir.display(),
                    meta.uid(),
                    euid()
                ),
                _ => String::new(),
            };
            return Err(io::Error::new(
                e.kind(),
                format!("{what} {}: cannot create it: {e}{hint}", path.display()),
            ));
        }
    }
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{what} {}: not a directory (a symlink or a file): refusing to use it",
                path.display()
            ),
        ));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{what} {} belongs to uid {}, not to this process's uid {me}: refusing to use \
                 a directory someone else owns (it may be root's from an earlier run as root, \
                 or another user's). Remove it, or choose another directory",
                path.display(),
                meta.uid()
            ),
        ));
    }
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_accepts_own_dirs_and_refuses_symlinks() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("a/b");
        ensure_own_dir(&dir, 0o700, "test dir").expect("created");
        let meta = std::fs::metadata(&dir).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        ensure_own_dir(&dir, 0o711, "test dir").expect("existing, own");
        let meta = std::fs::metadata(&dir).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o711);
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        let err = ensure_own_dir(&link, 0o700, "test dir").expect_err("symlink refused");
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn refuses_a_directory_owned_by_someone_else() {
        if !is_root() {
            // Only root can make a directory that belongs to another uid.
            eprintln!("note: not root, skipped");
            return;
        }
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("theirs");
        std::fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
        let err = ensure_own_dir(&dir, 0o700, "slot lock dir").expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let text = err.to_string();
        assert!(
            text.contains("belongs to uid 65534") && text.contains("slot lock dir"),
            "{text}"
        );
    }
}

//! Where a worker keeps its run directories, slot locks and compile cache by default.
//!
//! As root (a deployed worker, or the test suite): `/tmp/verdict-runs`, `/tmp/verdict-slots`
//! and `/var/cache/verdict/compile`, shared by every root worker of the machine.
//!
//! As a normal user, nothing of that is writable (and a directory root made first would
//! block us), so each user gets locations of their own:
//! - run directories and slot locks under `$XDG_RUNTIME_DIR/verdict` when that is set (an
//!   absolute path to an existing directory, as systemd's `/run/user/<uid>`), else under
//!   `/tmp/verdict-<uid>` (mode 0700);
//! - the compile cache in `$XDG_CACHE_HOME/verdict`, else `$HOME/.cache/verdict`, else (no
//!   usable home, e.g. a system account) next to the run directories.
//!
//! Every one of them must belong to the worker's uid ([`verdict_sandbox::dirs`]): one that
//! someone else owns is refused at start with a message naming its owner.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The default locations for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    /// The sandbox's base directory of run directories.
    pub run_dir: PathBuf,
    /// The slot lock files.
    pub slot_dir: PathBuf,
    /// The compile cache.
    pub compile_cache_dir: PathBuf,
    /// The per-user directory holding `run_dir` and `slot_dir` (not root only): made 0700
    /// before them.
    pub private_root: Option<PathBuf>,
    /// Why these: logged at start.
    pub reason: String,
}

/// Root's shared defaults.
pub const ROOT_RUN_DIR: &str = "/tmp/verdict-runs";
/// Root's shared slot lock dir.
pub const ROOT_SLOT_DIR: &str = "/tmp/verdict-slots";

impl Locations {
    /// The defaults for this process's uid and environment.
    pub fn for_this_process() -> Locations {
        let var = |name: &str| std::env::var_os(name);
        Locations::compute(
            verdict_sandbox::dirs::euid(),
            var("XDG_RUNTIME_DIR"),
            var("XDG_CACHE_HOME"),
            var("HOME"),
        )
    }

    fn compute(
        uid: u32,
        runtime: Option<OsString>,
        cache_home: Option<OsString>,
        home: Option<OsString>,
    ) -> Locations {
        if uid == 0 {
            return Locations {
                run_dir: PathBuf::from(ROOT_RUN_DIR),
                slot_dir: PathBuf::from(ROOT_SLOT_DIR),
                compile_cache_dir: PathBuf::from(crate::cache::DEFAULT_DIR),
                private_root: None,
                reason: "root: the machine-wide locations".into(),
            };
        }
        let usable = |v: Option<OsString>| {
            v.map(PathBuf::from)
                .filter(|p| p.is_absolute() && p.is_dir())
        };
        let (root, runtime_why) = match usable(runtime) {
            Some(dir) => (dir.join("verdict"), "$XDG_RUNTIME_DIR/verdict"),
            None => (
                PathBuf::from(format!("/tmp/verdict-{uid}")),
                "/tmp/verdict-<uid> ($XDG_RUNTIME_DIR is not set)",
            ),
        };
        let (cache, cache_why) = if let Some(dir) = usable(cache_home) {
            (dir.join("verdict"), "in $XDG_CACHE_HOME/verdict")
        } else if let Some(home) = usable(home) {
            (home.join(".cache").join("verdict"), "in ~/.cache/verdict")
        } else {
            (
                root.join("compile-cache"),
                "next to them (no usable $XDG_CACHE_HOME or $HOME)",
            )
        };
        Locations {
            run_dir: root.join("runs"),
            slot_dir: root.join("slots"),
            compile_cache_dir: cache,
            private_root: Some(root),
            reason: format!(
                "not root (uid {uid}): per-user locations, runs and slot locks under \
                 {runtime_why}, compile cache {cache_why}"
            ),
        }
    }

    /// Makes the per-user directory (0700, ours) when there is one. Call before the
    /// sandbox and the slots are set up when their paths are the defaults.
    pub fn prepare_private_root(&self) -> std::io::Result<()> {
        match &self.private_root {
            Some(root) => verdict_sandbox::dirs::ensure_own_dir(root, 0o700, "per-user dir"),
            None => Ok(()),
        }
    }

    /// Whether `path` lies under the per-user directory.
    pub fn is_private(&self, path: &Path) -> bool {
        self.private_root
            .as_deref()
            .is_some_and(|root| path.starts_with(root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_uses_the_machine_wide_locations() {
        let l = Locations::compute(0, Some("/run/user/0".into()), None, Some("/root".into()));
        assert_eq!(l.run_dir, PathBuf::from("/tmp/verdict-runs"));
        assert_eq!(l.slot_dir, PathBuf::from("/tmp/verdict-slots"));
        assert_eq!(
            l.compile_cache_dir,
            PathBuf::from("/var/cache/verdict/compile")
        );
        assert_eq!(l.private_root, None);
    }

    #[test]
    fn a_normal_user_gets_per_user_locations() {
        let tmp = std::env::temp_dir();
        let runtime = tmp.clone().into_os_string();
        let l = Locations::compute(1000, Some(runtime.clone()), None, None);
        assert_eq!(l.run_dir, tmp.join("verdict/runs"));
        assert_eq!(l.slot_dir, tmp.join("verdict/slots"));
        assert_eq!(l.compile_cache_dir, tmp.join("verdict/compile-cache"));
        assert!(l.is_private(&l.slot_dir));

        // No XDG_RUNTIME_DIR (or a relative or missing one): a dir naming the uid.
        for bad in [None, Some("relative".into()), Some("/no/such/dir".into())] {
            let l = Locations::compute(1000, bad, None, Some(runtime.clone()));
            assert_eq!(l.run_dir, PathBuf::from("/tmp/verdict-1000/runs"));
            assert_eq!(l.slot_dir, PathBuf::from("/tmp/verdict-1000/slots"));
            assert_eq!(l.compile_cache_dir, tmp.join(".cache/verdict"));
        }
        let l = Locations::compute(1000, None, Some(runtime), None);
        assert_eq!(l.compile_cache_dir, tmp.join("verdict"));
        assert!(l.reason.contains("uid 1000"), "{}", l.reason);
    }
}

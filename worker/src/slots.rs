//! Sandbox slots: each concurrent run needs a slot of its own (its uid, cgroup and run
//! directory). Slots are claimed with file locks so that several worker processes on one
//! machine never share one, and a crashed worker's slots free themselves. Workers share
//! a lock dir only when they run as the same uid (`paths.rs` picks a per-user one).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Slots at or above this number are left to tests and benches of the sandbox crate.
pub const MAX_SLOT: u32 = 1000;

/// The slots this process holds, handed out one per running job.
pub struct Slots {
    free: Mutex<Vec<u32>>,
    _locks: Vec<File>,
}

impl Slots {
    /// Claims `count` slots under `lock_dir`, which must be this process's uid's own
    /// directory (made 0700 if missing): a lock dir someone else made (root's
    /// `/tmp/verdict-slots` seen by a normal user) is refused with a message saying so.
    pub fn claim(lock_dir: &Path, count: usize) -> std::io::Result<Arc<Self>> {
        verdict_sandbox::dirs::ensure_own_dir(lock_dir, 0o700, "slot lock dir")?;
        let mut free = Vec::new();
        let mut locks = Vec::new();
        for slot in 0..MAX_SLOT {
            if free.len() == count {
                break;
            }
            let path: PathBuf = lock_dir.join(format!("slot-{slot}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("slot lock {}: {e}", path.display()))
                })?;
            if file.try_lock().is_ok() {
                free.push(slot);
                locks.push(file);
            }
        }
        if free.len() < count {
            return Err(std::io::Error::other(format!(
                "only {} free sandbox slots of {count} wanted",
                free.len()
            )));
        }
        free.reverse();
        Ok(Arc::new(Slots {
            free: Mutex::new(free),
            _locks: locks,
        }))
    }

    /// Takes a free slot; the caller holds a concurrency permit, so one is always free.
    pub fn take(&self) -> Option<u32> {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Returns a slot after its job finished.
    pub fn put(&self, slot: u32) {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_claims_on_one_dir_get_different_slots_and_the_dir_is_private() {
        let base = std::env::temp_dir().join(format!("verdict-slots-test-{}", std::process::id()));
        let dir = base.join("slots");
        let a = Slots::claim(&dir, 2).expect("first claim");
        let b = Slots::claim(&dir, 2).expect("second claim");
        let mut all: Vec<u32> = [a.take(), a.take(), b.take(), b.take()]
            .into_iter()
            .flatten()
            .collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&dir).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        drop((a, b));
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}

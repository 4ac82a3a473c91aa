//! Sandbox slots: each concurrent run needs a slot of its own (its uid, cgroup and run
//! directory). Slots are claimed with file locks so that several worker processes on one
//! machine never share one, and a crashed worker's slots free themselves.

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
    /// Claims `count` slots under `lock_dir`.
    pub fn claim(lock_dir: &Path, count: usize) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(lock_dir)?;
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
                .open(&path)?;
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

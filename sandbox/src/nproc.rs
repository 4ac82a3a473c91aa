//! RLIMIT_NPROC when runs share the worker's uid (not root, or root without the uid drop).
//!
//! The kernel checks RLIMIT_NPROC at fork/clone against *every* task (process or thread)
//! of the real uid, the worker's own threads and the other slots' runs included. Setting it
//! to the run's `processes` made a run that needed threads fail at once (Java:
//! `pthread_create failed (EAGAIN)`), so it was not set at all and nothing limited
//! processes. Now the parent, just before the spawn, counts the uid's tasks that belong to
//! no run in progress (from `/proc`) and sets
//!
//! ```text
//! RLIMIT_NPROC = tasks of the uid outside runs + this run's limit + the limits of the
//!                other runs in progress
//! ```
//!
//! so a run can always start its own `processes` tasks whatever the concurrent runs do, and
//! all runs together stay within the sum of their limits (a fork bomb stops there). What is
//! not exact: a run may borrow what concurrent runs leave unused of their limits (with one
//! run at a time it is exact), and tasks the worker starts during the run (a new blocking
//! thread) come out of the run's share. A task counts as a run's when its session is the
//! run's (every run starts with `setsid`); one that left the session counts as outside.
//! Processes of the uid that are not dumpable (their `/proc/<pid>` belongs to root, e.g.
//! ssh-agent) are not seen: the run gets that many fewer.
//!
//! Root is exempt from RLIMIT_NPROC, so for a root worker without the uid drop this sets
//! nothing; a pids cgroup, when there is one, is exact and replaces all of this.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, PoisonError};

/// The runs in progress under the shared uid.
#[derive(Debug, Default)]
pub(crate) struct SharedUid {
    runs: Mutex<Runs>,
}

#[derive(Debug, Default)]
struct Runs {
    next_id: u64,
    active: Vec<Active>,
}

#[derive(Debug)]
struct Active {
    id: u64,
    /// The run's session id (the pid of its first process); 0 until it is spawned.
    sid: libc::pid_t,
    limit: u64,
}

/// A run's share, released on drop.
pub(crate) struct Reservation<'a> {
    owner: &'a SharedUid,
    id: u64,
    /// The RLIMIT_NPROC value for the run.
    pub(crate) rlimit: u64,
}

impl SharedUid {
    /// Reserves `limit` tasks for a run about to be spawned; returns its RLIMIT_NPROC.
    pub(crate) fn reserve(&self, limit: u64) -> Reservation<'_> {
        let (id, others, sids) = {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            let id = runs.next_id;
            runs.next_id += 1;
            let others = runs
                .active
                .iter()
                .fold(0u64, |sum, r| sum.saturating_add(r.limit));
            let sids: Vec<libc::pid_t> = runs
                .active
                .iter()
                .map(|r| r.sid)
                .filter(|&s| s > 0)
                .collect();
            runs.active.push(Active { id, sid: 0, limit });
            (id, others, sids)
        };
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let outside = tasks_outside(uid, &sids);
        Reservation {
            owner: self,
            id,
            rlimit: outside.saturating_add(limit).saturating_add(others),
        }
    }

    /// Limits of the runs in progress, for tests.
    #[cfg(test)]
    fn reserved(&self) -> u64 {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.active.iter().map(|r| r.limit).sum()
    }
}

impl Reservation<'_> {
    /// Records the run's session id (its first process's pid), so that other runs do not
    /// count its tasks as outside.
    pub(crate) fn spawned(&self, pid: libc::pid_t) {
        let mut runs = self
            .owner
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = runs.active.iter_mut().find(|r| r.id == self.id) {
            r.sid = pid;
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut runs = self
            .owner
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        runs.active.retain(|r| r.id != self.id);
    }
}

/// Tasks (threads included) whose real uid is `uid`, except those in one of `sessions`.
pub(crate) fn tasks_outside(uid: u32, sessions: &[libc::pid_t]) -> u64 {
    let mut total = 0u64;
    scan(uid, |_, status| {
        total = total.saturating_add(counts(&status, uid, sessions))
    });
    total
}

/// How many tasks a process adds to the count.
fn counts(status: &Status, uid: u32, sessions: &[libc::pid_t]) -> u64 {
    if status.real_uid != uid || sessions.contains(&status.sid) {
        0
    } else {
        status.threads.max(1)
    }
}

/// Calls `visit` with the status of every process whose `/proc/<pid>` belongs to `uid`.
/// That directory belongs to a dumpable process's effective uid: only those are opened (a
/// stat each for the others), so a scan costs a fraction of a millisecond for a few
/// hundred processes.
fn scan(uid: u32, mut visit: impl FnMut(libc::pid_t, Status)) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut buf = [0u8; 4096];
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        match entry.metadata() {
            Ok(m) if m.uid() == uid => {}
            _ => continue,
        }
        let Ok(mut file) = std::fs::File::open(entry.path().join("status")) else {
            continue; // exited meanwhile
        };
        let Ok(n) = file.read(&mut buf) else {
            continue;
        };
        if let Some(status) = parse_status(&buf[..n]) {
            visit(pid, status);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status {
    real_uid: u32,
    threads: u64,
    sid: libc::pid_t,
}

/// `Uid:` (real, effective, saved, fs), `Threads:` and `NSsid:` (outermost namespace
/// first: ours) of a `/proc/<pid>/status`.
fn parse_status(text: &[u8]) -> Option<Status> {
    let text = std::str::from_utf8(text).ok()?;
    let mut real_uid = None;
    let mut threads = None;
    let mut sid = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let first = || value.split_whitespace().next();
        match key {
            "Uid" => real_uid = first().and_then(|v| v.parse().ok()),
            "Threads" => threads = first().and_then(|v| v.parse().ok()),
            "NSsid" => sid = first().and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    Some(Status {
        real_uid: real_uid?,
        threads: threads?,
        // Kernels before 4.1 have no NSsid: such tasks simply count as outside.
        sid: sid.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_parsed() {
        let text = b"Name:\tjava\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
                     Uid:\t1000\t1001\t1002\t1003\nGid:\t100\t100\t100\t100\n\
                     NSsid:\t4242\t7\nThreads:\t19\n";
        assert_eq!(
            parse_status(text),
            Some(Status {
                real_uid: 1000,
                threads: 19,
                sid: 4242
            })
        );
        assert_eq!(parse_status(b"Name:\tx\nThreads:\t1\n"), None);
    }

    #[test]
    fn a_process_in_its_own_session_is_seen_and_excluded_by_session() {
        let mut child = std::process::Command::new("setsid")
            .args(["sleep", "30"])
            .spawn()
            .expect("setsid sleep");
        let pid = child.id() as libc::pid_t;
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let mut seen = None;
        for _ in 0..200 {
            scan(uid, |p, status| {
                if p == pid && status.sid == pid {
                    seen = Some(status);
                }
            });
            if seen.is_some() {
                break; // setsid has run
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        let status = seen.expect("the child in its own session");
        assert_eq!(status.real_uid, uid);
        assert_eq!(counts(&status, uid, &[]), 1);
        assert_eq!(counts(&status, uid, &[pid]), 0);
        assert_eq!(counts(&status, uid + 1, &[]), 0);
        let threaded = Status {
            threads: 19,
            ..status
        };
        assert_eq!(counts(&threaded, uid, &[]), 19);
    }

    #[test]
    fn reservations_add_the_other_runs_limits_and_are_released() {
        let shared = SharedUid::default();
        let a = shared.reserve(10);
        let b = shared.reserve(20);
        assert_eq!(shared.reserved(), 30);
        // b's rlimit includes a's limit on top of its own.
        assert!(b.rlimit >= 30, "{}", b.rlimit);
        assert!(a.rlimit >= 10 && a.rlimit < b.rlimit + 10, "{}", a.rlimit);
        drop(a);
        assert_eq!(shared.reserved(), 20);
        drop(b);
        assert_eq!(shared.reserved(), 0);
    }
}

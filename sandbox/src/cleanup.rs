//! Slot cleanup after a run: kill everything the run left behind (every process of the
//! slot uid, atomically, or every pid of the slot's pids cgroup under a shared uid) and,
//! as the subreaper, reap the orphans.

use std::time::{Duration, Instant};

use crate::cgroup::SlotCgroup;
use crate::sys::{self, wait4};
use crate::watch::stat_fields;
use crate::Sandbox;

/// How long we wait for killed leftovers to be reaped.
const REAP_GRACE: Duration = Duration::from_millis(250);

/// Kills and reaps everything the run left behind. Returns how many leftovers were
/// reaped, when any were found.
pub(crate) fn cleanup_slot(
    sb: &Sandbox,
    ids: Option<(u32, u32)>,
    cg: Option<&SlotCgroup>,
) -> Option<usize> {
    let pids_cg = cg.filter(|c| c.has_pids());
    match ids {
        Some((uid, _)) => {
            let alive = pids_cg.and_then(|c| c.tasks_alive());
            if alive == Some(0) {
                return None; // the common case: nothing left, no extra fork
            }
            let signaled = kill_uid(uid);
            if !signaled && alive.is_none() {
                return None;
            }
            if sb.reaper {
                return Some(reap_orphans(uid, pids_cg));
            }
            Some(0)
        }
        None => {
            // Same uid as the worker: kill by the pids cgroup's membership.
            let c = pids_cg?;
            let mut killed = 0;
            for _ in 0..20 {
                let pids = c.list_pids();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    // SAFETY: kill(2) takes no pointers.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                    killed += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (killed > 0).then_some(killed)
        }
    }
}

/// Kills every process of `uid`, atomically, from a helper running as that uid
/// (`kill(-1)` skips the caller and signals everything it may signal). Returns whether
/// anything was signaled.
fn kill_uid(uid: u32) -> bool {
    extern "C" fn killer(arg: *mut libc::c_void) -> libc::c_int {
        let uid = arg as usize as libc::uid_t;
        // SAFETY: raw syscalls and _exit only; this child shares our memory (CLONE_VM) and
        // touches nothing but its own stack.
        unsafe {
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                libc::_exit(2);
            }
            let r = libc::kill(-1, libc::SIGKILL);
            libc::_exit(if r == 0 { 0 } else { 1 })
        }
    }
    let mut stack = [0u8; 16 * 1024];
    // SAFETY: `killer` runs async-signal-safe syscalls on `stack`, which outlives it:
    // CLONE_VFORK suspends us until it has exited. Signals are blocked around the call so
    // no handler of ours runs on the shared memory.
    let pid = unsafe { sys::clone_vfork(killer, &mut stack, uid as usize as *mut libc::c_void) };
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => {
            tracing::warn!("clone for the slot killer failed: {e}");
            return false;
        }
    };
    match wait4(pid) {
        Ok((status, _)) => libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        Err(_) => false,
    }
}

/// Reaps our (subreaper) zombie children that ran as `uid`, until the slot's pids cgroup
/// is empty or a short grace period passes. A child is recognised by its parent pid and
/// its owner uid only, never by its name, which the program controls.
fn reap_orphans(uid: u32, cg: Option<&SlotCgroup>) -> usize {
    let me = std::process::id();
    let give_up = Instant::now() + REAP_GRACE;
    let mut reaped = 0;
    loop {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<libc::pid_t>().ok())
                else {
                    continue;
                };
                // Bytes, not text: the command name in the line is whatever the program
                // set (`PR_SET_NAME`), and one that is not UTF-8 must not hide it from us.
                let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // Fields after the parenthesised comm: state ppid ...
                let Some(mut fields) = stat_fields(&stat) else {
                    continue;
                };
                let (Some(_state), Some(ppid)) = (fields.next(), fields.next()) else {
                    continue;
                };
                if ppid.parse::<u32>().ok() != Some(me) {
                    continue;
                }
                let owner = std::fs::metadata(entry.path())
                    .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
                if owner.ok() != Some(uid) {
                    continue;
                }
                let mut status = 0;
                // SAFETY: waitpid on a specific child pid with a valid status pointer.
                if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                    reaped += 1;
                }
            }
        }
        let done = match cg.and_then(|c| c.tasks_alive()) {
            Some(n) => n == 0,
            None => true,
        };
        if done || Instant::now() >= give_up {
            return reaped;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

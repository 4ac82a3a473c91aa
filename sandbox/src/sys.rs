//! Thin wrappers over the raw syscalls the parent side of a run makes: pipes, fd flags,
//! `clone(CLONE_VM | CLONE_VFORK)`, `wait4`, pidfds and process-group kills.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::SandboxError;

/// A pipe as (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid 2-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::sys("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Ensures a child-side fd is >= 3 so the child's dup2 onto 0..2 never clobbers another.
pub(crate) fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, SandboxError> {
    if fd.as_raw_fd() >= 3 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(SandboxError::sys("fcntl(F_DUPFD_CLOEXEC)"));
    }
    // SAFETY: `new` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Gives a pipe end to (uid, gid).
pub(crate) fn give_to(fd: &OwnedFd, (uid, gid): (u32, u32)) -> Result<(), SandboxError> {
    // SAFETY: fchown on a valid fd we own.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
        return Err(SandboxError::sys("fchown pipe"));
    }
    Ok(())
}

/// Sets `O_NONBLOCK` on `fd`.
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> Result<(), SandboxError> {
    // SAFETY: fcntl on a valid fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(SandboxError::sys("fcntl(F_GETFL)"));
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(SandboxError::sys("fcntl(O_NONBLOCK)"));
    }
    Ok(())
}

/// SIGKILLs the process group `pid` leads.
pub(crate) fn kill_group(pid: libc::pid_t) {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory involved.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

/// A signal set with no signal in it.
pub(crate) fn empty_sigmask() -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it.
    unsafe {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// Runs `entry(arg)` in a child started with `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` on
/// `stack`: no page-table copy, and this thread resumes only once the child has exec'd or
/// exited. All signals are blocked around the call so no handler of ours can run in the
/// child on the shared memory. Returns the child's pid (to reap with [`wait4`]).
///
/// # Safety
/// `entry` runs in our address space, on `stack`: it must only make async-signal-safe
/// calls, touch nothing but its stack and what `arg` points to, and end in execve or
/// `_exit`. `arg` must stay valid until then (it does while this call blocks).
pub(crate) unsafe fn clone_vfork(
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &mut [u8],
    arg: *mut libc::c_void,
) -> io::Result<libc::pid_t> {
    // SAFETY: the stack grows down from one past the end; we align it to 16 bytes.
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) };
    let top = ((top as usize) & !15usize) as *mut libc::c_void;

    // SAFETY: sigset_t is plain old data; the calls fill them.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: per this function's contract, `entry` is safe to run on `stack` (which
    // outlives it: CLONE_VFORK suspends this thread until the child execs or exits) with
    // `arg`.
    let pid = unsafe {
        libc::clone(
            entry,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}

/// Reaps `pid` (blocking, EINTR retried): its wait status and resource usage.
pub(crate) fn wait4(pid: libc::pid_t) -> Result<(libc::c_int, libc::rusage), SandboxError> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return Err(SandboxError::sys("wait4"));
    }
}

/// A `timeval` in whole milliseconds.
pub(crate) fn timeval_ms(t: libc::timeval) -> u64 {
    (t.tv_sec.max(0) as u64) * 1000 + (t.tv_usec.max(0) as u64) / 1000
}

/// A pidfd for `pid` (readable once it exits), when the kernel has pidfd_open.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes no pointers; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fresh fd owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Has `pid` exited (without reaping it)?
pub(crate) fn exited_nowait(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain old data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; WNOWAIT leaves the child reapable.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read for a SIGCHLD siginfo (zero when nothing happened).
    r == 0 && unsafe { info.si_pid() } == pid
}

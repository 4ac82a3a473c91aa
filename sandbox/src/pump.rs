//! The output pump: while the program runs, the parent feeds its stdin, reads its stdout
//! and stderr under one cap, and stops it on cancel, wall time, a limit from the run watch
//! or too much output. One `ppoll` loop over the pidfd and the three pipes.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sys::{
    above_stdio, exited_nowait, give_to, kill_group, pidfd_open, pipe, set_nonblocking,
};
use crate::watch::RunWatch;
use crate::{LimitHit, SandboxError, StreamKind};

/// Cancel flag poll interval.
const CANCEL_TICK: Duration = Duration::from_millis(20);

/// The streams in the order of the output slots (`Pump::outs`, pollfds 1 and 2).
const OUT_KINDS: [StreamKind; 2] = [StreamKind::Stdout, StreamKind::Stderr];

/// The child's ends of its stdio pipes: stdin's read end, stdout's and stderr's write
/// ends, all >= 3 and, under a slot uid, owned by it.
pub(crate) struct ChildEnds {
    pub(crate) stdin_r: OwnedFd,
    pub(crate) stdout_w: OwnedFd,
    pub(crate) stderr_w: OwnedFd,
}

/// The parent's ends of the run's stdio pipes, all non-blocking.
pub(crate) struct ParentEnds {
    stdin_w: OwnedFd,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
}

/// The run's three stdio pipes; `ids`: the slot uid and gid the child runs as.
pub(crate) fn stdio_pipes(
    ids: Option<(u32, u32)>,
) -> Result<(ChildEnds, ParentEnds), SandboxError> {
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let stdin_r = above_stdio(stdin_r)?;
    let stdout_w = above_stdio(stdout_w)?;
    let stderr_w = above_stdio(stderr_w)?;
    if let Some(ids) = ids {
        // A pipe's inode belongs to its creator with mode 0600, so re-opening it through
        // /dev/stdin or /proc/self/fd/N failed with EACCES for the slot uid.
        for fd in [&stdin_r, &stdout_w, &stderr_w] {
            give_to(fd, ids)?;
        }
    }
    set_nonblocking(&stdin_w)?;
    set_nonblocking(&stdout_r)?;
    set_nonblocking(&stderr_r)?;
    Ok((
        ChildEnds {
            stdin_r,
            stdout_w,
            stderr_w,
        },
        ParentEnds {
            stdin_w,
            stdout_r,
            stderr_r,
        },
    ))
}

/// Output accounting: both streams share one cap.
pub(crate) struct Sink<'a> {
    cap: u64,
    total: u64,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) stdout_truncated: bool,
    pub(crate) stderr_truncated: bool,
    on_output: &'a mut dyn FnMut(StreamKind, &[u8]),
}

impl<'a> Sink<'a> {
    /// An empty sink: at most `cap` bytes of stdout + stderr, each chunk also passed to
    /// `on_output` as it arrives.
    pub(crate) fn new(cap: u64, on_output: &'a mut dyn FnMut(StreamKind, &[u8])) -> Sink<'a> {
        Sink {
            cap,
            total: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            on_output,
        }
    }

    /// Returns false when the cap was exceeded.
    fn push(&mut self, kind: StreamKind, data: &[u8]) -> bool {
        let room = self.cap.saturating_sub(self.total);
        let take = (data.len() as u64).min(room) as usize;
        if take > 0 {
            let chunk = &data[..take];
            match kind {
                StreamKind::Stdout => self.stdout.extend_from_slice(chunk),
                StreamKind::Stderr => self.stderr.extend_from_slice(chunk),
            }
            self.total += take as u64;
            (self.on_output)(kind, chunk);
        }
        if take < data.len() {
            match kind {
                StreamKind::Stdout => self.stdout_truncated = true,
                StreamKind::Stderr => self.stderr_truncated = true,
            }
            return false;
        }
        true
    }
}

enum ReadResult {
    Open,
    Eof,
    Overflow,
}

/// Reads what is available on a non-blocking pipe.
fn drain(fd: RawFd, kind: StreamKind, buf: &mut [u8], sink: &mut Sink<'_>) -> ReadResult {
    // Bounded so one chatty stream cannot starve the deadline checks.
    for _ in 0..16 {
        // SAFETY: `buf` is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            if !sink.push(kind, &buf[..n as usize]) {
                return ReadResult::Overflow;
            }
            continue;
        }
        if n == 0 {
            return ReadResult::Eof;
        }
        let e = io::Error::last_os_error().raw_os_error();
        if e == Some(libc::EINTR) {
            continue;
        }
        if e == Some(libc::EAGAIN) {
            return ReadResult::Open;
        }
        return ReadResult::Eof;
    }
    ReadResult::Open
}

/// Everything the pump works on for one run.
pub(crate) struct Pump<'a, 'o> {
    /// The program, our unreaped child, leader of its process group.
    pub(crate) pid: libc::pid_t,
    pub(crate) stdin: &'a [u8],
    pub(crate) pipes: ParentEnds,
    /// The wall-time limit.
    pub(crate) deadline: Instant,
    pub(crate) watch: RunWatch<'a>,
    pub(crate) cancel: &'a AtomicBool,
    pub(crate) sink: &'a mut Sink<'o>,
}

/// The program's stdin, written as fast as the pipe takes it.
struct StdinFeed<'a> {
    /// `None` once everything is written (EOF for the program) or the program closed it.
    pipe: Option<OwnedFd>,
    data: &'a [u8],
    written: usize,
}

impl StdinFeed<'_> {
    /// One write of what is left, when the pipe has room.
    fn write_some(&mut self) {
        let Some(w) = &self.pipe else {
            return;
        };
        let rest = &self.data[self.written..];
        // SAFETY: `rest` is a valid readable buffer of rest.len() bytes.
        let n = unsafe { libc::write(w.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            self.written += n as usize;
            if self.written >= self.data.len() {
                self.pipe = None; // EOF for the program
            }
        } else if n < 0 {
            let e = io::Error::last_os_error().raw_os_error();
            if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                self.pipe = None; // EPIPE: the program closed stdin
            }
        }
    }
}

/// The poll loop. Returns the limit that made us stop early, if any.
pub(crate) fn supervise_io(io: Pump<'_, '_>) -> Option<LimitHit> {
    let Pump {
        pid,
        stdin,
        pipes,
        deadline,
        mut watch,
        cancel,
        sink,
    } = io;
    let pidfd = pidfd_open(pid);
    let mut feed = StdinFeed {
        pipe: (!stdin.is_empty()).then_some(pipes.stdin_w),
        data: stdin,
        written: 0,
    };
    let mut outs: [Option<OwnedFd>; 2] = [Some(pipes.stdout_r), Some(pipes.stderr_r)];
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        if cancel.load(Ordering::Relaxed) {
            kill_group(pid);
            return Some(LimitHit::Cancelled);
        }
        let now = Instant::now();
        if let Some(hit) = watch.check(now) {
            kill_group(pid);
            return Some(hit);
        }
        if now >= deadline {
            kill_group(pid);
            return Some(LimitHit::WallTime);
        }
        let mut timeout = (deadline - now).min(CANCEL_TICK).min(watch.until_next(now));
        // Without a pidfd, notice the exit by polling.
        if pidfd.is_none() {
            if exited_nowait(pid) {
                break;
            }
            timeout = timeout.min(Duration::from_millis(5));
        }

        let mut pfds = poll_set(pidfd.as_ref(), &outs, feed.pipe.as_ref());
        if !ppoll(&mut pfds, timeout) {
            continue;
        }
        if pfds[3].revents != 0 {
            feed.write_some();
        }
        for i in 0..2 {
            if pfds[1 + i].revents == 0 {
                continue;
            }
            if let Some(fd) = &outs[i] {
                match drain(fd.as_raw_fd(), OUT_KINDS[i], &mut buf, sink) {
                    ReadResult::Open => {}
                    ReadResult::Eof => outs[i] = None,
                    ReadResult::Overflow => {
                        kill_group(pid);
                        return Some(LimitHit::Output);
                    }
                }
            }
        }
        if pfds[0].revents != 0 {
            break;
        }
    }
    collect_after_exit(&outs, &mut buf, sink)
}

/// The pollfds of one round: 0 the pidfd, 1 and 2 stdout and stderr, 3 stdin (fd -1
/// entries are ignored by poll).
fn poll_set(
    pidfd: Option<&OwnedFd>,
    outs: &[Option<OwnedFd>; 2],
    stdin_w: Option<&OwnedFd>,
) -> [libc::pollfd; 4] {
    let mut pfds: [libc::pollfd; 4] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    if let Some(p) = pidfd {
        pfds[0] = libc::pollfd {
            fd: p.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
    }
    for (i, o) in outs.iter().enumerate() {
        if let Some(fd) = o {
            pfds[1 + i] = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
        }
    }
    if let Some(w) = stdin_w {
        pfds[3] = libc::pollfd {
            fd: w.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
    }
    pfds
}

/// Waits up to `timeout` for an event on `pfds`. False when the poll failed (interrupted,
/// or after a 1 ms sleep otherwise): the caller starts the next round.
fn ppoll(pfds: &mut [libc::pollfd; 4], timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `pfds` is a valid array of 4 pollfds (fd -1 entries are ignored); `ts` is
    // a valid timespec; no signal mask change.
    let r = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if r < 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            return false;
        }
        // Should not happen; fall back to sleeping a tick.
        std::thread::sleep(Duration::from_millis(1));
        return false;
    }
    true
}

/// The program exited: collect what it wrote, without waiting for EOF (a background
/// process may still hold the pipes; it is killed next).
fn collect_after_exit(
    outs: &[Option<OwnedFd>; 2],
    buf: &mut [u8],
    sink: &mut Sink<'_>,
) -> Option<LimitHit> {
    for i in 0..2 {
        if let Some(fd) = &outs[i] {
            loop {
                match drain(fd.as_raw_fd(), OUT_KINDS[i], buf, sink) {
                    ReadResult::Open => {
                        // drain() stops after 16 reads; go on only if it filled them all.
                        let mut pfd = libc::pollfd {
                            fd: fd.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd, zero timeout.
                        if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0
                            || pfd.revents & libc::POLLIN == 0
                        {
                            break;
                        }
                    }
                    ReadResult::Eof => break,
                    ReadResult::Overflow => return Some(LimitHit::Output),
                }
            }
        }
    }
    None
}

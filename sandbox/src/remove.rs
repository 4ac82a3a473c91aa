//! Removal of a directory tree a hostile program built, without recursion and with memory
//! bounded independently of the tree's depth and width.
//!
//! Why not `std::fs::remove_dir_all`: it recurses once per level. A program can build a
//! chain of 30,000 nested directories in well under a second (`mkdir n; rename c n/d;
//! rename n c` in a loop), and removing it overflowed a 2 MiB tokio worker stack: the whole
//! worker aborted and the run dir stayed on disk.
//!
//! How: a loop over an explicit stack of at most [`MAX_OPEN`] open directories, each with one
//! fixed `getdents64` buffer, so neither the call stack nor the heap grows with the tree.
//! When a directory deeper than that has to be entered, the subtree is instead *moved up* to
//! the top directory (`renameat2(RENAME_NOREPLACE)`, which never follows symlinks and never
//! replaces anything) and removed from there later: a 30,000-deep chain becomes ~1,000
//! chains of [`MAX_OPEN`] levels. Names are never collected: entries are unlinked while the
//! directory is being read (a directory with 100k entries costs one buffer).
//!
//! Symlinks are never followed: every entry is first `unlinkat`ed as a non-directory (which
//! removes a symlink itself), and directories are opened with `O_NOFOLLOW | O_DIRECTORY`
//! relative to the already-open parent. A directory on another device (a mount point) is
//! never entered. When not root, a directory the program made unreadable (mode 0000) or
//! unwritable is given back `0700` through an `O_PATH` handle (the inode we checked, not a
//! name that could be swapped) before it is entered.
//!
//! The program is dead before removal starts (the parent kills everything of the run), but
//! a process still creating files only makes the walk re-read a directory: rescans are
//! counted and the walk gives up with an error after [`MAX_RESCANS`] more than the moved-up
//! subtrees need, instead of spinning.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Open directories at most (and `getdents64` buffers: `MAX_OPEN * BUF_LEN` bytes of heap).
const MAX_OPEN: usize = 32;
/// One `getdents64` batch: ~200 short names.
const BUF_LEN: usize = 8 * 1024;
/// Rescans of the top directory beyond those that moved-up subtrees need, before we give
/// up (something keeps refilling the tree).
const MAX_RESCANS: u64 = 64;

/// What a removal did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoveStats {
    /// Non-directories (files, symlinks, sockets, fifos, ...) unlinked.
    pub files: u64,
    /// Directories removed, the top one included.
    pub dirs: u64,
    /// Subtrees moved up to the top because they were deeper than the open-fd stack.
    pub moved_up: u64,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`; fstat only writes into it.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(last_err());
    }
    Ok(st)
}

fn open_dir_at(parent: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; openat returns a new fd or -1.
    let fd = unsafe {
        libc::openat(
            parent,
            name.as_ptr(),
            flags | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `chmod 0700` of the directory `name` in `parent` without following a symlink and
/// without needing any permission on the directory itself: an `O_PATH` handle pins the
/// inode, and chmod goes through its `/proc/self/fd` link (fchmod refuses `O_PATH` fds).
fn make_accessible(parent: RawFd, name: &CStr) -> io::Result<()> {
    let handle = open_dir_at(parent, name, libc::O_PATH)?;
    let link = format!("/proc/self/fd/{}\0", handle.as_raw_fd());
    // SAFETY: `link` is NUL-terminated and outlives the call.
    if unsafe { libc::chmod(link.as_ptr().cast(), 0o700) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

fn unlink_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; unlinkat touches no memory of ours.
    if unsafe { libc::unlinkat(dir, name.as_ptr(), flags) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

/// One directory being emptied.
struct Level {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Bytes of `buf` filled by the last getdents64, and the next entry's offset in it.
    len: usize,
    pos: usize,
    /// No entry was returned since the listing was (re)started: at its end the directory
    /// was empty.
    fresh: bool,
    /// The name (NUL-terminated) of the subdirectory being emptied one level down.
    entered: Vec<u8>,
}

/// What `Level::next` found.
enum Entry {
    End,
    /// A name in `Walk::name`; true when getdents said it is a directory.
    Name {
        is_dir: bool,
    },
}

impl Level {
    fn new(fd: OwnedFd) -> Level {
        Level {
            fd,
            buf: vec![0; BUF_LEN],
            len: 0,
            pos: 0,
            fresh: true,
            entered: Vec::new(),
        }
    }

    /// The next entry other than `.` and `..`, its name copied into `name`.
    fn next(&mut self, name: &mut Vec<u8>) -> io::Result<Entry> {
        loop {
            if self.pos >= self.len {
                // SAFETY: buf is a writable buffer of buf.len() bytes owned by us; the kernel
                // writes at most that many bytes.
                let n = unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        self.fd.as_raw_fd(),
                        self.buf.as_mut_ptr(),
                        self.buf.len(),
                    )
                };
                if n < 0 {
                    return Err(last_err());
                }
                if n == 0 {
                    return Ok(Entry::End);
                }
                self.len = usize::try_from(n).unwrap_or(0).min(self.buf.len());
                self.pos = 0;
            }
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type;
            // char d_name[]; } -- written by the kernel, but parsed defensively.
            let rec = &self.buf[self.pos..self.len];
            let reclen = match rec.get(16..18) {
                Some(b) => usize::from(u16::from_ne_bytes([b[0], b[1]])),
                None => return Err(io::Error::from_raw_os_error(libc::EIO)),
            };
            if reclen < 20 || reclen > rec.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.pos += reclen;
            let is_dir = rec[18] == libc::DT_DIR;
            let raw = &rec[19..reclen];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let entry = &raw[..end];
            if entry.is_empty() || entry == b"." || entry == b".." {
                continue;
            }
            self.fresh = false;
            name.clear();
            name.extend_from_slice(entry);
            name.push(0);
            return Ok(Entry::Name { is_dir });
        }
    }

    /// Starts the listing again from the top, to see entries added after it started.
    fn rewind(&mut self) -> io::Result<()> {
        // SAFETY: lseek on a directory fd we own rewinds its getdents position.
        if unsafe { libc::lseek(self.fd.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
            return Err(last_err());
        }
        self.len = 0;
        self.pos = 0;
        self.fresh = true;
        Ok(())
    }
}

/// Runs `op` on the directory `dir`; when it fails with EACCES (a program removed our
/// write or search permission on a directory it owns, and we are not root) gives the
/// directory back 0700 and tries once more.
fn retry_writable(dir: RawFd, op: impl Fn() -> io::Result<()>) -> io::Result<()> {
    match op() {
        Err(e) if errno_of(&e) == libc::EACCES => {
            // SAFETY: fchmod on a directory fd we hold open.
            if unsafe { libc::fchmod(dir, 0o700) } != 0 {
                return Err(e);
            }
            op()
        }
        r => r,
    }
}

/// Removes one entry of `dir`: Ok(true) when it is gone, Ok(false) when it is a directory
/// that is not empty.
fn remove_entry(
    dir: RawFd,
    name: &CStr,
    is_dir: bool,
    stats: &mut RemoveStats,
) -> io::Result<bool> {
    if !is_dir {
        // unlinkat without AT_REMOVEDIR removes a symlink itself, never its target, and
        // fails with EISDIR on a directory (d_type may be DT_UNKNOWN on some filesystems).
        match retry_writable(dir, || unlink_at(dir, name, 0)) {
            Ok(()) => {
                stats.files += 1;
                return Ok(true);
            }
            Err(e) if errno_of(&e) == libc::ENOENT => return Ok(true),
            Err(e) if matches!(errno_of(&e), libc::EISDIR | libc::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    match retry_writable(dir, || unlink_at(dir, name, libc::AT_REMOVEDIR)) {
        Ok(()) => {
            stats.dirs += 1;
            Ok(true)
        }
        Err(e) if errno_of(&e) == libc::ENOENT => Ok(true),
        Err(e) if matches!(errno_of(&e), libc::ENOTEMPTY | libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Moves the directory `name` of `from` up into `top` under a fresh name, never replacing
/// anything (RENAME_NOREPLACE) and never following a symlink (rename acts on the entry).
fn move_up(top: RawFd, from: RawFd, name: &CStr, counter: &mut u64) -> io::Result<()> {
    let mut made_accessible = false;
    loop {
        let new = format!(".verdict-rm-{}\0", *counter);
        *counter += 1;
        // SAFETY: both names are NUL-terminated and outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                from,
                name.as_ptr(),
                top,
                new.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = last_err();
        match errno_of(&e) {
            libc::EEXIST => continue,
            // Moving a directory rewrites its `..`, which needs write permission on it.
            libc::EACCES if !made_accessible => {
                make_accessible(from, name)?;
                made_accessible = true;
            }
            _ => return Err(e),
        }
    }
}

/// Empties the directory open as `top` (the directory itself stays), never following
/// symlinks and never leaving its device. See the module documentation.
pub(crate) fn empty_dir(top: &OwnedFd) -> io::Result<RemoveStats> {
    let mut stats = RemoveStats::default();
    // A separate open file description, so our getdents position is our own. Opening "."
    // needs search permission, which the program may have taken away from the top too.
    let raw = top.as_raw_fd();
    let own = match open_dir_at(raw, c".", libc::O_RDONLY) {
        Err(e) if errno_of(&e) == libc::EACCES => {
            // SAFETY: fchmod on a directory fd the caller holds open.
            unsafe { libc::fchmod(raw, 0o700) };
            open_dir_at(raw, c".", libc::O_RDONLY)?
        }
        r => r?,
    };
    let top_raw = own.as_raw_fd();
    let dev = fstat(top_raw)?.st_dev;
    let mut stack = vec![Level::new(own)];
    let mut name: Vec<u8> = Vec::with_capacity(256);
    let mut counter = 0u64;
    let mut rewinds = 0u64;
    loop {
        let depth = stack.len();
        let Some(level) = stack.last_mut() else {
            break;
        };
        let is_dir = match level.next(&mut name)? {
            Entry::Name { is_dir } => is_dir,
            Entry::End if depth == 1 => {
                if level.fresh {
                    return Ok(stats);
                }
                // Subtrees moved up into the top (or entries created meanwhile) are only
                // listed after a rewind.
                rewinds += 1;
                if rewinds > stats.moved_up + MAX_RESCANS {
                    return Err(io::Error::other(
                        "the tree keeps refilling while it is being removed",
                    ));
                }
                level.rewind()?;
                continue;
            }
            Entry::End => {
                stack.pop();
                let Some(parent) = stack.last_mut() else {
                    break;
                };
                let entered = std::mem::take(&mut parent.entered);
                let Ok(c_name) = CStr::from_bytes_with_nul(&entered) else {
                    continue;
                };
                let pfd = parent.fd.as_raw_fd();
                if !remove_entry(pfd, c_name, true, &mut stats)? {
                    // Refilled meanwhile: list the parent again, which enters it again.
                    rewinds += 1;
                    if rewinds > stats.moved_up + MAX_RESCANS {
                        return Err(io::Error::other(
                            "the tree keeps refilling while it is being removed",
                        ));
                    }
                    parent.rewind()?;
                }
                continue;
            }
        };
        let Ok(c_name) = CStr::from_bytes_with_nul(&name) else {
            continue;
        };
        let fd = level.fd.as_raw_fd();
        if remove_entry(fd, c_name, is_dir, &mut stats)? {
            continue;
        }
        // A directory that is not empty: enter it, or move it up when the stack is full.
        if depth >= MAX_OPEN {
            move_up(top_raw, fd, c_name, &mut counter)?;
            stats.moved_up += 1;
            continue;
        }
        let child = match open_dir_at(fd, c_name, libc::O_RDONLY) {
            Ok(c) => c,
            Err(e) if errno_of(&e) == libc::EACCES => {
                make_accessible(fd, c_name)?;
                open_dir_at(fd, c_name, libc::O_RDONLY)?
            }
            Err(e) if errno_of(&e) == libc::ENOENT => continue,
            Err(e) => return Err(e),
        };
        let st = fstat(child.as_raw_fd())?;
        if st.st_dev != dev {
            return Err(io::Error::other(format!(
                "{} is a mount point",
                c_name.to_string_lossy()
            )));
        }
        level.entered = std::mem::take(&mut name);
        name = Vec::with_capacity(256);
        stack.push(Level::new(child));
    }
    Ok(stats)
}

/// Removes the directory `name` of `parent` and everything beneath it (see
/// [`empty_dir`]). A symlink or a file named `name` is unlinked, never followed.
pub(crate) fn remove_tree_at(parent: RawFd, name: &CStr) -> io::Result<RemoveStats> {
    let mut stats = RemoveStats::default();
    if remove_entry(parent, name, false, &mut stats)? {
        return Ok(stats);
    }
    let dir = match open_dir_at(parent, name, libc::O_RDONLY) {
        Ok(d) => d,
        Err(e) if errno_of(&e) == libc::EACCES => {
            make_accessible(parent, name)?;
            open_dir_at(parent, name, libc::O_RDONLY)?
        }
        Err(e) => return Err(e),
    };
    if fstat(dir.as_raw_fd())?.st_mode & 0o700 != 0o700 {
        // SAFETY: fchmod on a directory fd we own.
        unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) };
    }
    let inner = empty_dir(&dir)?;
    drop(dir);
    stats.files += inner.files;
    stats.dirs += inner.dirs;
    stats.moved_up += inner.moved_up;
    retry_writable(parent, || unlink_at(parent, name, libc::AT_REMOVEDIR))?;
    stats.dirs += 1;
    Ok(stats)
}

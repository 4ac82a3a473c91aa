//! The disk budget: each slot's run directories live on a file system of their own.
//!
//! RLIMIT_FSIZE caps one file, but not how many files a run makes, and `fallocate` takes
//! space without writing: one run reserved 2 GiB of the host disk in 10 ms. So when the
//! worker is root, every slot gets a small ext4 file system in a sparse image file
//! (`<base>/images/slot-<N>.img`, loop-mounted `nosuid,nodev` at `<base>/slot-<N>`), sized
//! by [`DiskBudget`]: a run that fills it gets ENOSPC, and the host disk holds at most
//! `slots × bytes` of images, whatever the programs do.
//!
//! Why not a tmpfs: its pages are charged to the run's memory cgroup and cannot be
//! reclaimed, so a program that re-reads its own 120 MB of files under a 256 MB limit
//! would be called MEMORY_LIMIT_EXCEEDED. On ext4 those files are page cache, which the
//! kernel reclaims under the limit as it would on any disk.
//!
//! The file system is made once per slot (the first run of a slot pays ~100 ms of mkfs and
//! mount) and reused after a restart when it is still mounted with the same size; each run
//! costs nothing extra. Without root (or without `mkfs.ext4` or loop devices) the budget is
//! off and only RLIMIT_FSIZE applies; `verdict doctor` says which.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::SandboxError;

/// Written at the root of a slot file system made by this version, with its image size
/// and inode count: one of another layout or size (or made by hand) is made again.
const MARKER: &str = ".verdict-slot-fs-2";

/// The size of each slot's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskBudget {
    /// Bytes a run may store (ext4 metadata comes on top); 0 turns the budget off.
    pub bytes: u64,
    /// Files and directories a run may create.
    pub inodes: u64,
}

impl Default for DiskBudget {
    fn default() -> Self {
        DiskBudget {
            bytes: 512 * 1024 * 1024,
            inodes: 200_000,
        }
    }
}

/// What the budget looks like on this machine (for `verdict doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DiskMode {
    /// Loop-mounted ext4 per slot.
    PerSlot(DiskBudget),
    /// Off, and why.
    Off(String),
}

fn disk_err(context: String) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::RunDir { context, source }
}

/// Decides, once per sandbox, whether per-slot file systems can be made here.
pub(crate) fn mode(budget: DiskBudget, is_root: bool) -> DiskMode {
    if budget.bytes == 0 {
        return DiskMode::Off("disabled by configuration".into());
    }
    if !is_root {
        return DiskMode::Off("not root: no loop mounts; RLIMIT_FSIZE caps each file".into());
    }
    if find_mkfs().is_none() {
        return DiskMode::Off("mkfs.ext4 not found (install e2fsprogs)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return DiskMode::Off("no /dev/loop-control".into());
    }
    DiskMode::PerSlot(budget)
}

fn find_mkfs() -> Option<PathBuf> {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The directory a slot's run directories are created in.
pub(crate) fn slot_dir(base: &Path, slot: u32) -> PathBuf {
    base.join(format!("slot-{slot}"))
}

/// Whether `dir` is the root of a mounted file system (its device differs from its
/// parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (
        std::fs::symlink_metadata(dir),
        dir.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    me.is_dir() && me.dev() != parent.dev()
}

fn run(cmd: &mut Command, what: &str) -> Result<(), SandboxError> {
    let out = cmd.output().map_err(disk_err(format!("{what}: spawn")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(SandboxError::RunDir {
        context: format!(
            "{what}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        source: io::Error::other("command failed"),
    })
}

/// Makes sure the slot's file system is mounted at [`slot_dir`]; returns that directory.
/// Blocking (mkfs and mount run as child processes): call it from the slot's blocking
/// thread, as run directories are.
pub(crate) fn ensure_slot_fs(
    base: &Path,
    slot: u32,
    budget: DiskBudget,
) -> Result<PathBuf, SandboxError> {
    let dir = slot_dir(base, slot);
    // An image of ext4 needs room for its own metadata: the run gets `bytes` of data.
    // (128-byte inodes, block bitmaps, group descriptors and an 8 MiB journal.)
    let image_bytes = budget.bytes + budget.inodes * 128 + budget.bytes / 64 + (10 << 20);
    let marker = dir.join(MARKER);
    let layout = format!("{image_bytes} {}\n", budget.inodes);
    if is_mount_point(&dir) {
        if std::fs::read_to_string(&marker).is_ok_and(|m| m == layout) {
            return Ok(dir);
        }
        // A different size from an earlier configuration: make it again.
        run(
            Command::new("umount").arg("--lazy").arg(&dir),
            "umount old slot fs",
        )?;
    }
    let images = base.join("images");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&images)
        .map_err(disk_err(format!("create {}", images.display())))?;
    std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o700))
        .map_err(disk_err(format!("chmod {}", images.display())))?;
    std::fs::DirBuilder::new()
        .mode(0o711)
        .create(&dir)
        .or_else(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(disk_err(format!("create {}", dir.display())))?;
    let image = images.join(format!("slot-{slot}.img"));
    let _ = std::fs::remove_file(&image);
    let file =
        std::fs::File::create(&image).map_err(disk_err(format!("create {}", image.display())))?;
    // Sparse: the host disk holds only what the run writes.
    file.set_len(image_bytes)
        .map_err(disk_err(format!("size {}", image.display())))?;
    drop(file);
    let mkfs = find_mkfs().ok_or_else(|| SandboxError::RunDir {
        context: "mkfs.ext4 not found".into(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    run(
        Command::new(mkfs)
            .args(["-q", "-F", "-m", "0", "-I", "128", "-J", "size=8", "-N"])
            .arg(budget.inodes.to_string())
            .args([
                // Keep the journal: without one, ext4 refuses to reuse an inode freed in
                // the last 30 s and scans for another (`recently_deleted`), so after a
                // run removed 130k files, creating 30k took 48 s of kernel CPU.
                "-O",
                "^resize_inode",
                "-E",
                "lazy_itable_init=0,nodiscard",
                "-L",
            ])
            .arg(format!("verdict-{slot}"))
            .arg(&image),
        "mkfs.ext4",
    )?;
    run(
        Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
            .arg(&image)
            .arg(&dir),
        "mount slot fs",
    )?;
    // The root of the new file system: slot uids traverse it, never list or write it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .map_err(disk_err(format!("chmod {}", dir.display())))?;
    let lost = dir.join("lost+found");
    let _ = std::fs::remove_dir(&lost);
    std::fs::write(&marker, layout.as_bytes())
        .map_err(disk_err(format!("write {}", marker.display())))?;
    Ok(dir)
}

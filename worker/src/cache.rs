//! The compile cache: compiled artifacts on this machine's disk, keyed by
//! sha256(language id, toolchain version, compile command, source file name, source).
//!
//! Layout: `<dir>/<64 hex key>/files/<artifact>` plus `<dir>/<key>/compile-output`.
//! `<dir>` is mode 0700 and owned by the worker, outside every sandbox's Landlock rules:
//! sandboxed programs can neither read nor write it. Artifacts are copied (never linked)
//! into a run directory, as fresh files owned by the slot.
//!
//! The cache keeps no state in memory: the directory is the index (an entry's mtime is its
//! last use), so every worker process of one machine shares it safely. Entries appear
//! atomically (written under a temporary name, then renamed). Eviction (least recently
//! used first, down to the byte cap) runs after each insertion. A reader that loses a race
//! with eviction simply misses and compiles.
//!
//! Blocking file I/O: call from a blocking thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use verdict_broker::Language;

/// Where the cache lives unless configured otherwise.
pub const DEFAULT_DIR: &str = "/var/cache/verdict/compile";

/// One entry larger than this is not cached.
const MAX_ENTRY_BYTES: u64 = 128 * 1024 * 1024;

/// One compiled file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFile {
    /// A plain file name (no `/`).
    pub name: String,
    pub bytes: Vec<u8>,
    pub executable: bool,
}

/// What a compile produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Artifact {
    pub files: Vec<ArtifactFile>,
    pub compile_output: Option<String>,
}

impl Artifact {
    fn bytes(&self) -> u64 {
        let files: usize = self.files.iter().map(|f| f.bytes.len()).sum();
        (files + self.compile_output.as_ref().map_or(0, String::len)) as u64
    }
}

/// The cache key of `source` in `lang`.
pub fn key(lang: &Language, source: &str) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(lang.id.as_bytes());
    part(lang.detected_version.as_deref().unwrap_or("").as_bytes());
    for arg in lang.compile.iter().flatten() {
        part(arg.as_bytes());
    }
    for (name, value) in &lang.env {
        part(name.as_bytes());
        part(value.as_bytes());
    }
    part(lang.source.as_bytes());
    part(source.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A view of the cache directory.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    cap: u64,
}

fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads a regular file without following a symlink, up to `limit` bytes.
fn read_regular(path: &Path, limit: u64) -> io::Result<Option<(Vec<u8>, u32)>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    // One link only: never a hard link to something outside the run directory.
    if !meta.is_file() || meta.nlink() != 1 || meta.len() > limit {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Ok(None);
    }
    Ok(Some((bytes, meta.permissions().mode())))
}

/// Collects what a compile left in `run_dir`: every top-level regular file except the
/// source. `None` when the result is not cacheable (a subdirectory, a symlink, too big).
pub fn collect(run_dir: &Path, source: &str) -> io::Result<Option<Artifact>> {
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in fs::read_dir(run_dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Ok(None);
        };
        if name == source {
            continue;
        }
        if !entry.file_type()?.is_file() {
            return Ok(None);
        }
        let Some((bytes, mode)) = read_regular(&entry.path(), MAX_ENTRY_BYTES - total)? else {
            return Ok(None);
        };
        total += bytes.len() as u64;
        files.push(ArtifactFile {
            name,
            bytes,
            executable: mode & 0o100 != 0,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(Artifact {
        files,
        compile_output: None,
    }))
}

/// Size in bytes and last use of one entry.
fn entry_size(path: &Path) -> (u64, SystemTime) {
    let used = fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut size = fs::metadata(path.join("compile-output")).map_or(0, |m| m.len());
    if let Ok(files) = fs::read_dir(path.join("files")) {
        size += files
            .flatten()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>();
    }
    (size, used)
}

impl CompileCache {
    /// The cache at `dir`, bounded to `cap` bytes. Nothing is touched until first use.
    pub fn new(dir: PathBuf, cap: u64) -> Self {
        CompileCache { dir, cap }
    }

    /// Creates the directory (0700) when missing; refuses a symlink, and one whose mode we
    /// cannot set (another user's).
    fn prepare(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let meta = fs::symlink_metadata(&self.dir)?;
        if !meta.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                self.dir.display()
            )));
        }
        if meta.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// The artifact stored under `key`, marking it used; `None` on a miss.
    pub fn get(&self, key: &str) -> io::Result<Option<Artifact>> {
        if !is_key(key) {
            return Ok(None);
        }
        let entry = self.dir.join(key);
        let files_dir = entry.join("files");
        let listing = match fs::read_dir(&files_dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut files = Vec::new();
        for f in listing {
            let f = f?;
            let Some(name) = f.file_name().to_str().map(str::to_owned) else {
                return Ok(None);
            };
            let Some((bytes, mode)) = read_regular(&f.path(), MAX_ENTRY_BYTES)? else {
                return Ok(None);
            };
            files.push(ArtifactFile {
                name,
                bytes,
                executable: mode & 0o100 != 0,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let compile_output = match fs::read(entry.join("compile-output")) {
            Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        // Last use: the entry directory's mtime.
        if let Ok(dir) = File::open(&entry) {
            let _ = dir.set_modified(SystemTime::now());
        }
        Ok(Some(Artifact {
            files,
            compile_output,
        }))
    }

    /// Stores `artifact` under `key` (first writer wins), then evicts down to the cap.
    pub fn put(&self, key: &str, artifact: &Artifact) -> io::Result<()> {
        if !is_key(key) || artifact.bytes() > MAX_ENTRY_BYTES.min(self.cap) {
            return Ok(());
        }
        self.prepare()?;
        let entry = self.dir.join(key);
        if entry.exists() {
            return Ok(());
        }
        let tmp = self.dir.join(format!(
            "tmp-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let result = (|| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .and_then(|()| fs::DirBuilder::new().mode(0o700).create(tmp.join("files")))?;
            for f in &artifact.files {
                if f.name.contains('/') || f.name.starts_with('.') {
                    return Err(io::Error::other("bad artifact name"));
                }
                let mode = if f.executable { 0o700 } else { 0o600 };
                let path = tmp.join("files").join(&f.name);
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)?;
                io::Write::write_all(&mut out, &f.bytes)?;
            }
            if let Some(text) = &artifact.compile_output {
                fs::write(tmp.join("compile-output"), text)?;
            }
            fs::rename(&tmp, &entry)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
            // Another worker stored the same key first: that is a success.
            if entry.exists() {
                return Ok(());
            }
        }
        result?;
        self.evict();
        Ok(())
    }

    /// Removes least recently used entries until the total is within the cap.
    fn evict(&self) {
        let Ok(listing) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = listing
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_key))
            .map(|e| {
                let (size, used) = entry_size(&e.path());
                (used, size, e.path())
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, size, path) in entries {
            if total <= self.cap {
                break;
            }
            if fs::remove_dir_all(&path).is_ok() {
                total = total.saturating_sub(size);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lang() -> Language {
        let c = verdict_broker::Catalogue::load(None).unwrap();
        c.get("c").unwrap().clone()
    }

    fn artifact(n: usize) -> Artifact {
        Artifact {
            files: vec![ArtifactFile {
                name: "main".into(),
                bytes: vec![7; n],
                executable: true,
            }],
            compile_output: Some("warning: x".into()),
        }
    }

    #[test]
    fn key_depends_on_every_part() {
        let l = lang();
        let k = key(&l, "int main(){}");
        assert_eq!(k.len(), 64);
        assert_ne!(k, key(&l, "int main(){ }"));
        let mut v = l.clone();
        v.detected_version = Some("gcc 99".into());
        assert_ne!(k, key(&v, "int main(){}"));
        let mut o = l.clone();
        o.compile.as_mut().unwrap().push("-O3".into());
        assert_ne!(k, key(&o, "int main(){}"));
    }

    #[test]
    fn put_get_and_lru_eviction() {
        let dir = std::env::temp_dir().join(format!("verdict-cache-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let cache = CompileCache::new(dir.clone(), 2500);
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        assert_eq!(cache.get(&a).unwrap(), None);
        cache.put(&a, &artifact(1000)).unwrap();
        assert_eq!(cache.get(&a).unwrap(), Some(artifact(1000)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&b, &artifact(1000)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Use `a` again: `b` is now the least recently used.
        assert!(cache.get(&a).unwrap().is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&c, &artifact(1000)).unwrap();
        assert!(cache.get(&a).unwrap().is_some());
        assert!(cache.get(&b).unwrap().is_none(), "LRU entry evicted");
        assert!(cache.get(&c).unwrap().is_some());
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let _ = fs::remove_dir_all(&dir);
    }
}

//! The language catalogue (`languages.toml`): shared data for the server (which languages
//! exist, their limits) and the worker (how to compile and run them).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::Broker;

/// The catalogue shipped with Verdict, used when no file is given.
pub const BUILTIN: &str = include_str!("../../languages.toml");

/// Additions to a submission's limits for one language (Java needs more memory, ...).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitBoost {
    pub extra_cpu_ms: u64,
    pub extra_wall_ms: u64,
    pub extra_memory_kb: u64,
    pub min_processes: u64,
}

/// One language.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Language {
    pub id: String,
    pub name: String,
    /// File name the source is written to in the run directory.
    pub source: String,
    /// Command whose first line of output names the toolchain version.
    pub version: Vec<String>,
    /// Compile command, for compiled languages.
    #[serde(default)]
    pub compile: Option<Vec<String>>,
    pub run: Vec<String>,
    #[serde(default)]
    pub run_limits: LimitBoost,
    #[serde(default)]
    pub compile_limits: LimitBoost,
    /// The Debian package that provides the toolchain (an install hint for operators,
    /// printed by `verdict languages` when the toolchain is missing).
    #[serde(default)]
    pub package: Option<String>,
    /// Extra environment for the compile and run steps, on top of the worker's PATH,
    /// HOME and TMPDIR (both the run directory) and LANG; a name given here wins.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Filled by [`Catalogue::detect_versions`]; empty when the toolchain is missing.
    #[serde(skip)]
    pub detected_version: Option<String>,
    /// Filled by [`Catalogue::detect_versions`]: why the toolchain is unusable, if it is.
    #[serde(skip)]
    pub missing: Option<String>,
}

impl Language {
    /// True when the language has a compile step.
    pub fn compiled(&self) -> bool {
        self.compile.is_some()
    }

    /// Every executable this language needs, for presence checks.
    pub fn toolchain(&self) -> Vec<&str> {
        let mut programs = vec![self.version[0].as_str()];
        if let Some(compile) = &self.compile {
            programs.push(compile[0].as_str());
        }
        if self.run[0].starts_with('/') {
            programs.push(self.run[0].as_str());
        }
        programs
    }

    /// True when [`Catalogue::detect_versions`] found a usable toolchain.
    pub fn available(&self) -> bool {
        self.detected_version.is_some()
    }
}

/// Language id → detected toolchain version: what one worker (or all live workers
/// together) can run. Workers send theirs with every heartbeat.
pub type Toolchains = BTreeMap<String, String>;

/// Why `path` cannot be executed by an unprivileged sandbox uid: it is missing, not a
/// regular file, or it or a directory above it lacks the "other" execute bit (a
/// toolchain under /root, say). `None` when it is fine. Symlinks are followed.
fn unreachable_for_others(path: &str) -> Option<String> {
    let resolved = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(_) => return Some(format!("{path} not found")),
    };
    let meta = match std::fs::metadata(&resolved) {
        Ok(m) => m,
        Err(e) => return Some(format!("{path}: {e}")),
    };
    if !meta.is_file() {
        return Some(format!("{path} is not a file"));
    }
    if meta.permissions().mode() & 0o005 != 0o005 {
        return Some(format!(
            "{path} is not readable and executable by other users (sandbox uids)"
        ));
    }
    for dir in resolved.ancestors().skip(1) {
        let searchable = std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
        if !searchable {
            return Some(format!(
                "{path}: {} is not searchable by other users (sandbox uids)",
                dir.display()
            ));
        }
    }
    None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    language: Vec<Language>,
}

/// Why a catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid catalogue: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid catalogue: {0}")]
    Invalid(String),
}

/// All languages, in file order.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    languages: Vec<Language>,
    index: HashMap<String, usize>,
}

impl Catalogue {
    /// Parses catalogue text, checking ids are unique and commands non-empty.
    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let file: File = toml::from_str(text)?;
        let mut index = HashMap::new();
        for (k, lang) in file.language.iter().enumerate() {
            if lang.run.is_empty()
                || lang.version.is_empty()
                || lang.compile.as_ref().is_some_and(Vec::is_empty)
            {
                return Err(CatalogueError::Invalid(format!(
                    "{}: empty command",
                    lang.id
                )));
            }
            if lang.source.contains('/') || lang.source.starts_with('.') {
                return Err(CatalogueError::Invalid(format!(
                    "{}: source must be a plain file name",
                    lang.id
                )));
            }
            if let Some(name) = lang
                .env
                .keys()
                .find(|name| name.is_empty() || name.contains('=') || name.contains('\0'))
            {
                return Err(CatalogueError::Invalid(format!(
                    "{}: invalid environment variable name {name:?}",
                    lang.id
                )));
            }
            if lang.env.values().any(|v| v.contains('\0')) {
                return Err(CatalogueError::Invalid(format!(
                    "{}: environment value with a NUL byte",
                    lang.id
                )));
            }
            if index.insert(lang.id.clone(), k).is_some() {
                return Err(CatalogueError::Invalid(format!(
                    "duplicate language id {}",
                    lang.id
                )));
            }
        }
        Ok(Catalogue {
            languages: file.language,
            index,
        })
    }

    /// Loads `path`, or the built-in catalogue when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, CatalogueError> {
        match path {
            None => Self::parse(BUILTIN),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                Self::parse(&text)
            }
        }
    }

    /// Checks that each language's programs exist and are executable by sandbox uids,
    /// then runs its version command (trusted toolchains, not user code) and records the
    /// first line; [`Language::missing`] says why when either fails. Blocking: call from a
    /// blocking context.
    pub fn detect_versions(&mut self) {
        for lang in &mut self.languages {
            lang.detected_version = None;
            lang.missing = lang
                .toolchain()
                .into_iter()
                .find_map(unreachable_for_others);
            if lang.missing.is_some() {
                continue;
            }
            let output = std::process::Command::new(&lang.version[0])
                .args(&lang.version[1..])
                .output();
            lang.detected_version = output.ok().filter(|o| o.status.success()).and_then(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .map(|l| l.trim().to_owned())
            });
            if lang.detected_version.is_none() {
                lang.missing = Some(format!("`{}` failed", lang.version.join(" ")));
            }
        }
    }

    /// The languages whose toolchain [`Catalogue::detect_versions`] found, with their
    /// versions: what a worker reports with its heartbeat.
    pub fn toolchains(&self) -> Toolchains {
        self.languages
            .iter()
            .filter_map(|l| Some((l.id.clone(), l.detected_version.clone()?)))
            .collect()
    }

    /// The language with this id.
    pub fn get(&self, id: &str) -> Option<&Language> {
        self.index.get(id).map(|&k| &self.languages[k])
    }

    /// All languages, in catalogue order.
    pub fn languages(&self) -> &[Language] {
        &self.languages
    }

    /// Comma-separated ids, for error messages.
    pub fn ids(&self) -> String {
        self.languages
            .iter()
            .map(|l| l.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How long [`LiveToolchains`] trusts one answer of the broker.
pub const LIVE_TOOLCHAINS_TTL: Duration = Duration::from_millis(500);

/// What the live workers can run, as a server asks it before accepting a submission:
/// one broker round trip per [`LIVE_TOOLCHAINS_TTL`] at most, not one per submit.
#[derive(Debug, Default)]
pub struct LiveToolchains {
    cached: Mutex<Option<(Instant, Option<Arc<Toolchains>>)>>,
}

impl LiveToolchains {
    /// The union of the live workers' toolchains; `None` when no worker is alive (then
    /// nobody can say, and submissions are queued for the next worker as before).
    pub async fn get(&self, broker: &dyn Broker) -> crate::Result<Option<Arc<Toolchains>>> {
        if let Some((at, value)) = self.lock().as_ref() {
            if at.elapsed() < LIVE_TOOLCHAINS_TTL {
                return Ok(value.clone());
            }
        }
        let value = broker.live_toolchains().await?.map(Arc::new);
        *self.lock() = Some((Instant::now(), value.clone()));
        Ok(value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Option<Arc<Toolchains>>)>> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed language ids (design.md).
    const FIXED_IDS: [&str; 16] = [
        "python3",
        "c",
        "cpp",
        "rust",
        "javascript",
        "java",
        "bash",
        "go",
        "typescript",
        "csharp",
        "ruby",
        "php",
        "haskell",
        "pascal",
        "lua",
        "perl",
    ];

    #[test]
    fn builtin_catalogue_has_the_sixteen_languages_each_with_a_package() {
        let c = Catalogue::parse(BUILTIN).expect("builtin parses");
        for id in FIXED_IDS {
            let lang = c.get(id).unwrap_or_else(|| panic!("{id} missing"));
            assert!(lang.package.is_some(), "{id}: no package");
        }
        assert_eq!(c.languages().len(), FIXED_IDS.len());
        assert!(c
            .get("go")
            .is_some_and(|l| l.env.contains_key("CGO_ENABLED")));
        assert!(c.get("java").is_some_and(Language::compiled));
        assert!(!c.get("python3").is_some_and(Language::compiled));
        for lang in c.languages() {
            for program in lang.toolchain() {
                assert!(
                    !program.starts_with("/root"),
                    "{}: {program} is unreachable for sandbox users",
                    lang.id
                );
            }
        }
    }

    #[test]
    fn bad_environment_names_are_rejected() {
        for env in ["{ \"\" = \"x\" }", "{ \"A=B\" = \"x\" }"] {
            let text = format!(
                "[[language]]\nid='a'\nname='A'\nsource='a'\nversion=['x']\nrun=['x']\nenv={env}\n"
            );
            assert!(
                matches!(Catalogue::parse(&text), Err(CatalogueError::Invalid(_))),
                "{env}"
            );
        }
    }

    #[test]
    fn missing_or_unreachable_toolchains_are_unavailable_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("verdict-cat-{}", std::process::id()));
        let private = dir.join("private");
        std::fs::create_dir_all(&private).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let hidden = private.join("tool");
        std::fs::write(&hidden, "#!/bin/sh\necho hidden 1\n").expect("write");
        std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let text = format!(
            "[[language]]\nid='gone'\nname='G'\nsource='a'\nversion=['/nonexistent/x']\nrun=['x']\n\
             [[language]]\nid='hidden'\nname='H'\nsource='a'\nversion=['{}']\nrun=['x']\n\
             [[language]]\nid='sh'\nname='S'\nsource='a'\nversion=['/bin/echo', 'sh 1']\nrun=['/bin/sh']\n",
            hidden.display()
        );
        let mut c = Catalogue::parse(&text).expect("parses");
        c.detect_versions();
        let gone = c.get("gone").expect("gone");
        assert!(!gone.available());
        assert!(gone
            .missing
            .as_deref()
            .is_some_and(|m| m.contains("not found")));
        let hidden = c.get("hidden").expect("hidden");
        assert!(!hidden.available(), "a toolchain in a 0700 directory");
        assert!(hidden
            .missing
            .as_deref()
            .is_some_and(|m| m.contains("not searchable")));
        assert_eq!(
            c.get("sh").and_then(|l| l.detected_version.clone()),
            Some("sh 1".into())
        );
        assert_eq!(
            c.toolchains().into_iter().collect::<Vec<_>>(),
            [("sh".to_owned(), "sh 1".to_owned())]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let text =
            "[[language]]\nid='a'\nname='A'\nsource='a'\nversion=['x']\nrun=['x']\n".repeat(2);
        assert!(matches!(
            Catalogue::parse(&text),
            Err(CatalogueError::Invalid(_))
        ));
    }
}

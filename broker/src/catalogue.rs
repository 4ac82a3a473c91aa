//! The language catalogue (`languages.toml`): shared data for the server (which languages
//! exist, their limits) and the worker (how to compile and run them).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

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
    /// Filled by [`Catalogue::detect_versions`]; empty when the toolchain is missing.
    #[serde(skip)]
    pub detected_version: Option<String>,
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

    /// Runs each language's version command (trusted toolchains, not user code) and
    /// records the first line. Blocking: call from a blocking context.
    pub fn detect_versions(&mut self) {
        for lang in &mut self.languages {
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_has_the_seven_languages() {
        let c = Catalogue::parse(BUILTIN).expect("builtin parses");
        for id in ["python3", "c", "cpp", "rust", "javascript", "java", "bash"] {
            assert!(c.get(id).is_some(), "{id} missing");
        }
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
    fn duplicate_ids_are_rejected() {
        let text =
            "[[language]]\nid='a'\nname='A'\nsource='a'\nversion=['x']\nrun=['x']\n".repeat(2);
        assert!(matches!(
            Catalogue::parse(&text),
            Err(CatalogueError::Invalid(_))
        ));
    }
}

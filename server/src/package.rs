//! Kattis problem packages (the 2025-09 format and the legacy one), read from a directory
//! or a zip into a [`ProblemInput`], then stored like a `putProblem`.
//!
//! What is read: `problem.yaml` (`name` or `title`, `type` / `validation`,
//! `limits.time_limit` / `memory` / `output`, legacy `validator_flags` for the default
//! validator's float tolerance), a legacy `.timelimit` file, `data/sample/**.in` + `.ans`
//! (samples, group "sample", 0 points), `data/secret/**.in` + `.ans` (hidden; a first-level
//! subdirectory is a group, tests right in `secret/` are group "secret"), the group's
//! `test_group.yaml` / `testdata.yaml` (`max_score`, legacy `range`, `grader_flags: min` or
//! `scoring.aggregation: min`), `output_validator/` or `output_validators/*/` (one program
//! in one of our languages, the KATTIS checker), and `statement/*.md` or
//! `problem_statement/*.md`. Everything is read and checked before anything is stored, so a
//! bad package never leaves part of a problem behind.
//!
//! A zip is refused when an entry's path is absolute or has `..`, when it holds a
//! symbolic link or an encrypted entry, when it has more than [`MAX_ENTRIES`] entries,
//! when it unpacks to more than `--max-problem-bytes`, or when an entry over 1 MiB is
//! compressed more than [`MAX_RATIO`] to 1 (a zip bomb). A directory is refused on
//! symbolic links and the same caps.

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use async_graphql::ID;
use serde_norway::Value;
use verdict_broker::{Catalogue, Problem as Stored, SharedProblems};

use crate::error::ApiError;
use crate::problems::{
    CheckerInput, CheckerProgramInput, CheckerProtocol, FileInput, GroupScoring, ProblemInput,
    ProblemTestInput, TestGroupInput,
};
use crate::schema::{CompareMode, LimitsInput};
use crate::validate::InputPolicy;

/// Entries (files and directories) a package may have.
pub const MAX_ENTRIES: usize = 10_000;
/// Largest compression ratio of a zip entry over [`RATIO_FLOOR`] bytes.
pub const MAX_RATIO: u64 = 200;
/// Entries up to this size are not checked for their ratio (small files compress well).
const RATIO_FLOOR: u64 = 1024 * 1024;
/// Points of a problem whose groups name none.
const DEFAULT_POINTS: f64 = 100.0;

/// Why a package cannot be imported; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{file}: {why}")]
    Bad { file: String, why: String },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

fn bad(file: impl Into<String>, why: impl Into<String>) -> PackageError {
    PackageError::Bad {
        file: file.into(),
        why: why.into(),
    }
}

impl From<PackageError> for ApiError {
    fn from(e: PackageError) -> Self {
        ApiError::bad("package", e.to_string())
    }
}

/// Why an import failed: the package, the problem it makes, or the store.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("{0}")]
    Problem(#[from] ApiError),
    #[error("cannot store the problem: {0}")]
    Store(#[from] verdict_broker::BrokerError),
    #[error("the import task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A package's files by their path inside it (`/`-separated, no leading `/`).
#[derive(Debug, Default)]
pub struct Files {
    map: BTreeMap<String, Vec<u8>>,
}

impl Files {
    fn get(&self, path: &str) -> Option<&[u8]> {
        self.map.get(path).map(Vec::as_slice)
    }

    /// Paths under `dir/` (recursively), in order.
    fn under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let prefix = format!("{dir}/");
        self.map
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    fn has_dir(&self, dir: &str) -> bool {
        self.under(dir).next().is_some()
    }

    /// A zip made by zipping the package's folder has every path under one folder: drop it.
    fn strip_root(mut self) -> Files {
        if self.map.contains_key("problem.yaml") {
            return self;
        }
        let Some(first) = self.map.keys().next() else {
            return self;
        };
        let Some((root, _)) = first.split_once('/') else {
            return self;
        };
        let prefix = format!("{root}/");
        if self.map.keys().all(|k| k.starts_with(&prefix))
            && self.map.contains_key(&format!("{prefix}problem.yaml"))
        {
            self.map = std::mem::take(&mut self.map)
                .into_iter()
                .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
                .collect();
        }
        self
    }
}

/// Refuses an entry path that could point outside the package.
fn check_path(name: &str) -> Result<(), PackageError> {
    let unsafe_path = name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.split('/').next().is_some_and(|c| c.contains(':'))
        || name.split('/').any(|c| c == ".." || c == ".");
    if unsafe_path {
        return Err(bad(
            name,
            "absolute paths and `..` are not allowed in a package",
        ));
    }
    Ok(())
}

/// Reads a zip, within the caps (see the module doc).
pub fn read_zip<R: Read + Seek>(reader: R, max_bytes: u64) -> Result<Files, PackageError> {
    let mut archive = zip::ZipArchive::new(reader)
        .map_err(|e| bad("package", format!("not a readable zip archive: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(bad(
            "package",
            format!(
                "{} entries; a package may have at most {MAX_ENTRIES}",
                archive.len()
            ),
        ));
    }
    let mut files = Files::default();
    let mut total = 0u64;
    for k in 0..archive.len() {
        let mut entry = archive
            .by_index(k)
            .map_err(|e| bad(format!("entry {k}"), format!("unreadable: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("entry {k}"), format!("unreadable name: {e}")))?
            .into_owned();
        check_path(&name)?;
        if entry.is_symlink() {
            return Err(bad(&name, "symbolic links are not allowed in a package"));
        }
        if entry.encrypted() {
            return Err(bad(&name, "encrypted entries are not supported"));
        }
        if entry.is_dir() {
            continue;
        }
        let size = entry.size();
        let packed = entry.compressed_size().max(1);
        if size > RATIO_FLOOR && size / packed > MAX_RATIO {
            return Err(bad(
                &name,
                format!(
                    "compressed {}:1 ({packed} bytes unpack to {size}); refused as a zip bomb (at most {MAX_RATIO}:1 above 1 MiB)",
                    size / packed
                ),
            ));
        }
        let over = |name: &str| {
            bad(
                name,
                format!("the package unpacks to more than {max_bytes} bytes (--max-problem-bytes)"),
            )
        };
        if total.saturating_add(size) > max_bytes {
            return Err(over(&name));
        }
        // The declared size may lie: read at most one byte past what is left.
        let mut data = Vec::with_capacity(usize::try_from(size.min(RATIO_FLOOR)).unwrap_or(0));
        (&mut entry)
            .take(max_bytes - total + 1)
            .read_to_end(&mut data)
            .map_err(|source| PackageError::Io {
                file: name.clone(),
                source,
            })?;
        total += data.len() as u64;
        if total > max_bytes {
            return Err(over(&name));
        }
        let name = name.trim_end_matches('/').to_owned();
        if files.map.insert(name.clone(), data).is_some() {
            return Err(bad(&name, "is in the zip twice"));
        }
    }
    Ok(files.strip_root())
}

/// Reads a package directory, within the caps; symbolic links are refused.
pub fn read_dir(root: &Path, max_bytes: u64) -> Result<Files, PackageError> {
    let mut files = Files::default();
    let mut total = 0u64;
    let mut entries = 0usize;
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let io = |source| PackageError::Io {
            file: if rel.is_empty() {
                ".".into()
            } else {
                rel.clone()
            },
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(bad(
                    ".",
                    format!("more than {MAX_ENTRIES} entries in the package"),
                ));
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type().map_err(|source| PackageError::Io {
                file: path.clone(),
                source,
            })?;
            if kind.is_symlink() {
                return Err(bad(&path, "symbolic links are not allowed in a package"));
            } else if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if total.saturating_add(len) > max_bytes {
                    return Err(bad(
                        &path,
                        format!("the package is more than {max_bytes} bytes (--max-problem-bytes)"),
                    ));
                }
                let data = std::fs::read(entry.path()).map_err(|source| PackageError::Io {
                    file: path.clone(),
                    source,
                })?;
                total += data.len() as u64;
                files.map.insert(path, data);
            }
        }
    }
    Ok(files)
}

fn text(path: &str, bytes: &[u8]) -> Result<String, PackageError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| bad(path, "is not UTF-8 text (binary files are not supported)"))
}

fn yaml(path: &str, bytes: &[u8]) -> Result<Value, PackageError> {
    let text = text(path, bytes)?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_norway::from_str(&text).map_err(|e| bad(path, format!("is not valid YAML: {e}")))
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A `name` that is a string, or a map of language to string (2025-09): English first.
fn name_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Mapping(m) => m
            .get("en")
            .and_then(Value::as_str)
            .or_else(|| m.values().find_map(Value::as_str))
            .map(str::to_owned),
        _ => None,
    }
}

/// Words of a `type` (a string or a list, 2025-09) or a legacy `validation`.
fn words(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(|s| s.split_whitespace().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Milliseconds or KiB as a GraphQL Int; refuses what is not a positive number.
fn scaled(file: &str, key: &str, v: &Value, scale: f64) -> Result<i32, PackageError> {
    let n = number(v)
        .filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| bad(file, format!("{key} must be a positive number")))?;
    let scaled = (n * scale).ceil();
    if scaled > f64::from(i32::MAX) {
        return Err(bad(file, format!("{key} {n} is too large")));
    }
    // In range and positive, checked above.
    Ok(scaled as i32)
}

/// Language of a source file by its extension; None for headers and other files.
fn language_of(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "py" => "python3",
        "c" => "c",
        "cc" | "cpp" | "cxx" | "c++" => "cpp",
        "rs" => "rust",
        "js" => "javascript",
        "java" => "java",
        "sh" => "bash",
        "go" => "go",
        "ts" => "typescript",
        "cs" => "csharp",
        "rb" => "ruby",
        "php" => "php",
        "hs" => "haskell",
        "pas" => "pascal",
        "lua" => "lua",
        "pl" => "perl",
        _ => return None,
    })
}

/// Extensions of files that are not programs (kept as the checker's extra files).
fn is_auxiliary(path: &str) -> bool {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    matches!(
        ext.as_str(),
        "h" | "hh" | "hpp" | "hxx" | "inc" | "txt" | "md" | "yaml" | "yml" | "json"
    )
}

/// The output validator as a KATTIS checker, if the package has one.
fn validator(files: &Files, catalogue: &Catalogue) -> Result<Option<CheckerInput>, PackageError> {
    let dir = if files.has_dir("output_validator") {
        "output_validator".to_owned()
    } else if files.has_dir("output_validators") {
        // Legacy: one program, as a subdirectory or as files right in output_validators/.
        let mut dirs: Vec<&str> = Vec::new();
        let mut loose = false;
        for (p, _) in files.under("output_validators") {
            match p["output_validators/".len()..].split_once('/') {
                Some((d, _)) => {
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
                None => loose = true,
            }
        }
        match (dirs.as_slice(), loose) {
            ([one], false) => format!("output_validators/{one}"),
            ([], true) => "output_validators".to_owned(),
            _ => {
                return Err(bad(
                    "output_validators",
                    format!(
                        "holds several validators ({}); one is supported",
                        dirs.join(", ")
                    ),
                ))
            }
        }
    } else {
        return Ok(None);
    };
    let all: Vec<(&str, &[u8])> = files.under(&dir).collect();
    let mut sources: Vec<(&str, &'static str)> = Vec::new();
    for (path, _) in &all {
        let name = &path[dir.len() + 1..];
        if name.contains('/') {
            return Err(bad(
                *path,
                "subdirectories in an output validator are not supported",
            ));
        }
        if matches!(name, "build" | "run") {
            return Err(bad(
                *path,
                "build and run scripts are not supported; give the validator as one source file in a known language",
            ));
        }
        match language_of(name) {
            Some(lang) => sources.push((path, lang)),
            None if is_auxiliary(name) => {}
            None => {
                return Err(bad(
                    *path,
                    format!(
                        "is in no language Verdict knows (valid: {})",
                        catalogue.ids()
                    ),
                ))
            }
        }
    }
    let mut langs: Vec<&str> = sources.iter().map(|(_, l)| *l).collect();
    langs.sort_unstable();
    langs.dedup();
    let lang = match langs.as_slice() {
        [one] => *one,
        [] => {
            return Err(bad(
                dir,
                "has no source file in a known language (.py, .c, .cpp, .java, ...)",
            ))
        }
        _ => {
            return Err(bad(
                dir,
                format!(
                    "has sources in several languages ({}); one is supported",
                    langs.join(", ")
                ),
            ))
        }
    };
    let Some(language) = catalogue.get(lang) else {
        return Err(bad(
            sources[0].0,
            format!("language {lang} is not in this server's catalogue"),
        ));
    };
    let main = match sources.as_slice() {
        [(one, _)] => *one,
        many => {
            let preferred = [
                "validator",
                "output_validator",
                "checker",
                "validate",
                "main",
            ];
            many.iter()
                .map(|(p, _)| *p)
                .find(|p| {
                    let stem = p[dir.len() + 1..].rsplit_once('.').map_or("", |(s, _)| s);
                    preferred.contains(&stem)
                })
                .ok_or_else(|| {
                    bad(
                        &dir,
                        "several source files and none named validator, checker, validate or main",
                    )
                })?
        }
    };
    let mut source = String::new();
    let mut extra = Vec::new();
    for (path, bytes) in &all {
        let content = text(path, bytes)?;
        if *path == main {
            source = content;
        } else {
            let name = path[dir.len() + 1..].to_owned();
            if name == language.source {
                return Err(bad(
                    *path,
                    format!("{name} is where the main source goes; rename it"),
                ));
            }
            extra.push(FileInput { name, content });
        }
    }
    Ok(Some(CheckerInput {
        compare: None,
        epsilon: None,
        program: Some(CheckerProgramInput {
            protocol: CheckerProtocol::Kattis,
            language: ID(lang.to_owned()),
            source,
            files: Some(extra),
        }),
    }))
}

/// A test of a package: its path without `.in`, its input and its answer.
type Pair<'a> = (String, &'a [u8], &'a [u8]);

/// The test pairs under `dir` (recursively), in path order.
fn pairs<'a>(files: &'a Files, dir: &'a str) -> Result<Vec<Pair<'a>>, PackageError> {
    let mut out = Vec::new();
    for (path, input) in files.under(dir) {
        if let Some(stem) = path.strip_suffix(".in") {
            let ans = format!("{stem}.ans");
            let answer = files
                .get(&ans)
                .ok_or_else(|| bad(path, format!("has no answer file {ans}")))?;
            out.push((stem.to_owned(), input, answer));
        } else if let Some(stem) = path.strip_suffix(".ans") {
            if files.get(&format!("{stem}.in")).is_none() {
                return Err(bad(path, format!("has no input file {stem}.in")));
            }
        }
    }
    Ok(out)
}

/// The group's settings file, if any: `test_group.yaml` (2025-09) or `testdata.yaml`.
fn group_settings(files: &Files, dir: &str) -> Result<(String, Value), PackageError> {
    for name in ["test_group.yaml", "testdata.yaml"] {
        let path = format!("{dir}/{name}");
        if let Some(bytes) = files.get(&path) {
            let v = yaml(&path, bytes)?;
            return Ok((path, v));
        }
    }
    Ok((format!("{dir}/test_group.yaml"), Value::Null))
}

/// Points of a group: `max_score`, legacy `range: "min max"`, or `points`.
fn group_points(path: &str, v: &Value) -> Result<Option<f64>, PackageError> {
    let given = v
        .get("max_score")
        .or_else(|| v.get("points"))
        .cloned()
        .or_else(|| {
            v.get("range")
                .and_then(Value::as_str)
                .and_then(|r| r.split_whitespace().nth(1))
                .map(|max| Value::String(max.to_owned()))
        });
    match given {
        None => Ok(None),
        Some(p) => match number(&p) {
            Some(p) if p.is_finite() && p >= 0.0 => Ok(Some(p)),
            _ => Err(bad(path, "max_score must be a number >= 0")),
        },
    }
}

fn aggregation(v: &Value, scoring: bool) -> GroupScoring {
    let min = v
        .get("grader_flags")
        .and_then(Value::as_str)
        .is_some_and(|f| f.split_whitespace().any(|w| w == "min"))
        || v.get("scoring")
            .and_then(|s| s.get("aggregation"))
            .and_then(Value::as_str)
            == Some("min");
    match (min, scoring) {
        (true, _) => GroupScoring::Min,
        (false, true) => GroupScoring::PerTest,
        (false, false) => GroupScoring::AllOrNothing,
    }
}

/// Reads a package's files into the input of a `putProblem` for `id`.
pub fn parse(
    files: &Files,
    id: &str,
    policy: &InputPolicy,
    catalogue: &Catalogue,
) -> Result<ProblemInput, PackageError> {
    let config = match files.get("problem.yaml") {
        Some(bytes) => yaml("problem.yaml", bytes)?,
        None => return Err(bad("problem.yaml", "missing: this is not a Kattis package")),
    };
    let title = config
        .get("name")
        .and_then(name_of)
        .or_else(|| config.get("title").and_then(name_of))
        .ok_or_else(|| bad("problem.yaml", "has no name (or title)"))?;
    let kinds = words(config.get("type"));
    let validation = words(config.get("validation"));
    for unsupported in ["interactive", "multi-pass", "submit-answer"] {
        if kinds.iter().chain(&validation).any(|w| w == unsupported) {
            return Err(bad(
                "problem.yaml",
                format!("{unsupported} problems are not supported yet"),
            ));
        }
    }
    let scoring = kinds.iter().any(|w| w == "scoring") || validation.iter().any(|w| w == "score");

    let mut limits = LimitsInput::default();
    let time = match config.get("limits").and_then(|l| l.get("time_limit")) {
        Some(t) => Some(scaled("problem.yaml", "limits.time_limit", t, 1000.0)?),
        None => match files.get(".timelimit") {
            Some(bytes) => Some(scaled(
                ".timelimit",
                "the time limit",
                &Value::String(text(".timelimit", bytes)?),
                1000.0,
            )?),
            None => None,
        },
    };
    if let Some(cpu) = time {
        limits.cpu_time_ms = Some(cpu);
        let wall = i64::from(cpu) * 2 + 1000;
        let max_wall = i64::try_from(policy.max_limits.wall_time_ms).unwrap_or(i64::MAX);
        limits.wall_time_ms = Some(i32::try_from(wall.min(max_wall)).unwrap_or(i32::MAX));
    }
    if let Some(m) = config.get("limits").and_then(|l| l.get("memory")) {
        limits.memory_kb = Some(scaled("problem.yaml", "limits.memory", m, 1024.0)?);
    }
    if let Some(o) = config.get("limits").and_then(|l| l.get("output")) {
        limits.output_bytes = Some(scaled("problem.yaml", "limits.output", o, 1024.0 * 1024.0)?);
    }

    let statement = ["statement", "problem_statement"]
        .iter()
        .find_map(|dir| {
            let mds: Vec<(&str, &[u8])> = files
                .under(dir)
                .filter(|(p, _)| p.ends_with(".md"))
                .collect();
            ["problem.en.md", "problem.md"]
                .iter()
                .find_map(|want| mds.iter().find(|(p, _)| p.ends_with(&format!("/{want}"))))
                .or_else(|| mds.first())
                .copied()
        })
        .map(|(p, bytes)| text(p, bytes))
        .transpose()?;

    let mut tests = Vec::new();
    let mut groups = Vec::new();
    let samples = pairs(files, "data/sample")?;
    if !samples.is_empty() {
        groups.push((
            TestGroupInput {
                name: "sample".into(),
                points: 0.0,
                scoring: GroupScoring::AllOrNothing,
            },
            true,
        ));
    }
    for (name, input, answer) in samples {
        tests.push(ProblemTestInput {
            stdin: text(&format!("{name}.in"), input)?,
            expected_output: Some(text(&format!("{name}.ans"), answer)?),
            name: Some(name.trim_start_matches("data/").to_owned()),
            sample: true,
            group: Some("sample".into()),
        });
    }
    // Hidden tests: right in secret/ (group "secret"), or in a first-level subdirectory.
    let secret = pairs(files, "data/secret")?;
    if secret.is_empty() {
        return Err(bad(
            "data/secret",
            "has no tests (NAME.in with NAME.ans); a package needs hidden test data",
        ));
    }
    let mut named: Vec<(String, String)> = Vec::new(); // (group, its directory)
    for (name, input, answer) in secret {
        let rest = &name["data/secret/".len()..];
        let (group, dir) = match rest.split_once('/') {
            Some((g, _)) => (g.to_owned(), format!("data/secret/{g}")),
            None => ("secret".to_owned(), "data/secret".to_owned()),
        };
        if group == "sample" {
            return Err(bad(&dir, "a group may not be called \"sample\""));
        }
        if !named.iter().any(|(g, _)| *g == group) {
            named.push((group.clone(), dir));
        }
        tests.push(ProblemTestInput {
            stdin: text(&format!("{name}.in"), input)?,
            expected_output: Some(text(&format!("{name}.ans"), answer)?),
            name: Some(name.trim_start_matches("data/").to_owned()),
            sample: false,
            group: Some(group),
        });
    }
    let (root_path, root) = group_settings(files, "data/secret")?;
    let mut points = Vec::new();
    for (group, dir) in &named {
        let (path, settings) = if dir == "data/secret" {
            (root_path.clone(), root.clone())
        } else {
            group_settings(files, dir)?
        };
        points.push((path.clone(), group_points(&path, &settings)?));
        // A subgroup's aggregation falls back on secret/'s.
        let settings = if settings.is_null() { &root } else { &settings };
        groups.push((
            TestGroupInput {
                name: group.clone(),
                points: 0.0,
                scoring: aggregation(settings, scoring),
            },
            false,
        ));
    }
    let given = points.iter().filter(|(_, p)| p.is_some()).count();
    let hidden: Vec<&mut TestGroupInput> = groups
        .iter_mut()
        .filter(|(_, sample)| !sample)
        .map(|(g, _)| g)
        .collect();
    if given == 0 {
        let total = group_points(&root_path, &root)?.unwrap_or(DEFAULT_POINTS);
        let share = total / hidden.len() as f64;
        for g in hidden {
            g.points = share;
        }
    } else if given < points.len() {
        let missing = points
            .iter()
            .find(|(_, p)| p.is_none())
            .map_or(root_path.clone(), |(path, _)| path.clone());
        return Err(bad(
            missing,
            "has no max_score while other groups have one; give every group its points or none",
        ));
    } else {
        for (g, (_, p)) in hidden.into_iter().zip(&points) {
            g.points = p.unwrap_or(0.0);
        }
    }

    let mut checker = validator(files, catalogue)?;
    if checker.is_none() {
        // The default validator: tokens; a float tolerance in the legacy flags.
        let flags = config
            .get("validator_flags")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>();
        let epsilon = flags.windows(2).find_map(|w| {
            matches!(
                w[0],
                "float_tolerance" | "float_absolute_tolerance" | "float_relative_tolerance"
            )
            .then(|| w[1].parse::<f64>().ok())
            .flatten()
        });
        checker = Some(CheckerInput {
            compare: Some(if epsilon.is_some() {
                CompareMode::Float
            } else {
                CompareMode::Tokens
            }),
            epsilon,
            program: None,
        });
    } else if config
        .get("validator_flags")
        .and_then(Value::as_str)
        .is_some_and(|f| !f.trim().is_empty())
    {
        return Err(bad(
            "problem.yaml",
            "validator_flags for a custom output validator are not supported yet",
        ));
    }

    Ok(ProblemInput {
        id: ID(id.to_owned()),
        title,
        statement,
        limits: Some(limits),
        tests,
        groups: Some(groups.into_iter().map(|(g, _)| g).collect()),
        checker,
    })
}

/// A problem id from a package's file name: lowercase, other characters as `-`.
pub fn default_id(path: &Path) -> String {
    let stem = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
    {
        path.file_stem()
    } else {
        path.file_name()
    };
    stem.map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Reads a package (a directory or a `.zip`) and checks it into a problem version and
/// its data. Blocking: call from `spawn_blocking`.
pub fn build_path(
    path: &Path,
    id: &str,
    policy: &InputPolicy,
    catalogue: &Catalogue,
) -> Result<(Stored, verdict_broker::ProblemUpload), ImportError> {
    let files = if path.is_dir() {
        read_dir(path, policy.max_problem_bytes)?
    } else {
        let file = std::fs::File::open(path).map_err(|source| PackageError::Io {
            file: path.display().to_string(),
            source,
        })?;
        read_zip(std::io::BufReader::new(file), policy.max_problem_bytes)?
    };
    let input = parse(&files, id, policy, catalogue)?;
    Ok(crate::problems::build(input, policy, catalogue)?)
}

/// Reads a zip given in memory (an upload) into a problem version and its data, off the
/// async runtime.
pub async fn build_zip(
    zip: impl AsRef<[u8]> + Send + 'static,
    id: String,
    policy: InputPolicy,
    catalogue: Arc<Catalogue>,
) -> Result<(Stored, verdict_broker::ProblemUpload), ApiError> {
    let task = tokio::task::spawn_blocking(move || {
        let files = read_zip(std::io::Cursor::new(zip.as_ref()), policy.max_problem_bytes)?;
        let input = parse(&files, &id, &policy, &catalogue)?;
        crate::problems::build(input, &policy, &catalogue)
    });
    match task.await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "package import task failed");
            Err(ApiError::Internal)
        }
    }
}

/// Stores a package as a new version of `id`; an unchanged package (same title,
/// statement, limits, tests, groups and checker as the current version) is not stored
/// again, so a restart with `--problems-dir` does not make new versions.
pub async fn import_path(
    path: &Path,
    id: &str,
    store: &SharedProblems,
    policy: &InputPolicy,
    catalogue: &Arc<Catalogue>,
) -> Result<Stored, ImportError> {
    let (path_buf, id_owned, policy_owned, cat) = (
        path.to_path_buf(),
        id.to_owned(),
        policy.clone(),
        Arc::clone(catalogue),
    );
    let (problem, upload) =
        tokio::task::spawn_blocking(move || build_path(&path_buf, &id_owned, &policy_owned, &cat))
            .await??;
    if let Some(current) = store.get(id).await? {
        let same = Stored {
            version: current.version,
            created_at: current.created_at,
            ..problem.clone()
        };
        if same == current {
            return Ok(current);
        }
    }
    Ok(store.put(problem, upload).await?)
}

/// Imports every package under `dir`: each subdirectory with a `problem.yaml` and each
/// `.zip`, as the problem named after it. Stops at the first bad package.
pub async fn import_dir(
    dir: &Path,
    store: &SharedProblems,
    policy: &InputPolicy,
    catalogue: &Arc<Catalogue>,
) -> Result<Vec<Stored>, ImportError> {
    let root = dir.to_path_buf();
    let paths =
        tokio::task::spawn_blocking(move || -> Result<Vec<std::path::PathBuf>, PackageError> {
            let io = |source| PackageError::Io {
                file: root.display().to_string(),
                source,
            };
            let mut paths = Vec::new();
            for entry in std::fs::read_dir(&root).map_err(io)? {
                let path = entry.map_err(io)?.path();
                let zip = path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
                if (path.is_dir() && path.join("problem.yaml").is_file()) || (path.is_file() && zip)
                {
                    paths.push(path);
                } else {
                    tracing::debug!(path = %path.display(), "not a problem package; skipped");
                }
            }
            paths.sort();
            Ok(paths)
        })
        .await??;
    let mut out = Vec::new();
    for path in paths {
        let id = default_id(&path);
        let stored = import_path(&path, &id, store, policy, catalogue)
            .await
            .map_err(|e| match e {
                ImportError::Package(p) => {
                    ImportError::Package(bad(path.display().to_string(), p.to_string()))
                }
                other => other,
            })?;
        tracing::info!(problem = %stored.id, version = stored.version, tests = stored.tests.len(), path = %path.display(), "problem package loaded");
        out.push(stored);
    }
    Ok(out)
}

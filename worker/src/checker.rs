//! Checker programs (KATTIS and TESTLIB protocols): compiled once per problem version on
//! each worker (and kept in the compile cache), run in the sandbox in a run directory of
//! their own, never the contestant's. A checker that does not compile, crashes, times out
//! or answers with an unknown exit code is our failure: the test is INTERNAL_ERROR with a
//! message naming the checker, never a verdict against the contestant.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use verdict_broker::{CheckerProgram, CheckerProtocol, Language, Problem, Verdict};
use verdict_sandbox::RunDir;

use crate::cache::{self, Artifact, ArtifactFile, CompileCache};
use crate::error::WorkerError;
use crate::sandboxed::{boosted, remove_blocking, SharedBytes};
use crate::Worker;

/// The most of a checker's message kept (judgemessage.txt or stderr).
const MESSAGE_CAP: usize = 64 * 1024;

/// A checker ready to run: its language and the files its run directory starts with.
pub(crate) struct CompiledChecker {
    pub lang: Language,
    pub files: Arc<Vec<ArtifactFile>>,
    pub protocol: CheckerProtocol,
    /// "checker (KATTIS, python3) of problem ab v2", for messages and logs.
    pub label: String,
}

/// What the checker said about one test.
pub(crate) enum Checked {
    Judged {
        verdict: Verdict,
        score: Option<f64>,
        message: Option<String>,
    },
    /// Our failure; the text names the checker and says what happened.
    Failed(String),
}

fn label(problem: &Problem, program: &CheckerProgram) -> String {
    format!(
        "checker ({}, {}) of problem {} v{}",
        verdict_broker::wire_name(program.protocol),
        program.language,
        problem.id,
        problem.version
    )
}

/// Reads a regular file the checker wrote (never through a symlink), at most
/// [`MESSAGE_CAP`] bytes; `None` when absent.
fn read_small(path: &Path) -> Option<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MESSAGE_CAP as u64).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The first token of `text` that is a finite number.
fn first_number(text: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|t| t.parse::<f64>().ok().filter(|v| v.is_finite()))
}

fn cap(mut text: String) -> Option<String> {
    if text.len() > MESSAGE_CAP {
        let cut = (0..=MESSAGE_CAP)
            .rev()
            .find(|&k| text.is_char_boundary(k))
            .unwrap_or(0);
        text.truncate(cut);
    }
    let trimmed = text.trim_end();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

impl Worker {
    /// The problem's checker, compiled (once per problem version on this worker; the
    /// compile cache keeps it across restarts). `Ok(Err(why))` when it cannot be built.
    ///
    /// Over 100 lines: one straight sequence (cache lookup, the given files, compile or
    /// not, the artifact, memoise) in which every step can end with its own message
    /// naming the checker; split, each piece would need the whole state handed back.
    pub(crate) async fn compiled_checker(
        &self,
        problem: &Problem,
        program: &CheckerProgram,
        slot: u32,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Result<Arc<CompiledChecker>, String>, WorkerError> {
        let key = (problem.id.clone(), problem.version);
        if let Some(c) = self.problem_cache.checker(&key) {
            return Ok(Ok(c));
        }
        let label = label(problem, program);
        let Some(lang) = self.catalogue.get(&program.language).cloned() else {
            return Ok(Err(format!(
                "{label}: language {} is not in this worker's catalogue",
                program.language
            )));
        };
        let mut given: Vec<ArtifactFile> = program
            .files
            .iter()
            .map(|f| ArtifactFile {
                name: f.name.clone(),
                bytes: f.content.clone().into_bytes(),
                executable: false,
            })
            .collect();
        given.push(ArtifactFile {
            name: lang.source.clone(),
            bytes: program.source.clone().into_bytes(),
            executable: false,
        });
        let files = match &lang.compile {
            None => given,
            Some(compile) => {
                // The cache key covers the source and every file compiled with it.
                let mut keyed = program.source.clone();
                for f in &program.files {
                    keyed.push_str(&format!("\0{}\0{}\0{}", f.name, f.content.len(), f.content));
                }
                let cache_key = cache::key(&lang, &keyed);
                let disk = self
                    .config
                    .compile_cache_dir
                    .clone()
                    .filter(|_| self.config.compile_cache_bytes > 0)
                    .map(|d| CompileCache::new(d, self.config.compile_cache_bytes));
                let hit = match &disk {
                    Some(c) => {
                        let (c, k) = (c.clone(), cache_key.clone());
                        tokio::task::spawn_blocking(move || c.get(&k))
                            .await?
                            .ok()
                            .flatten()
                    }
                    None => None,
                };
                match hit {
                    Some(artifact) => {
                        let mut files = artifact.files;
                        files.extend(given);
                        files
                    }
                    None => {
                        let dir = self.fresh_dir(slot, Arc::new(given.clone())).await?;
                        let limits = boosted(&self.config.compile_limits, &lang.compile_limits);
                        let outcome = self
                            .sandboxed(&dir, compile, &lang.env, Vec::new(), limits, None, cancel)
                            .await;
                        let built = match &outcome {
                            Ok(o) if o.success() => {
                                let path = dir.path().to_path_buf();
                                let source = lang.source.clone();
                                tokio::task::spawn_blocking(move || cache::collect(&path, &source))
                                    .await?
                                    .ok()
                                    .flatten()
                            }
                            _ => None,
                        };
                        remove_blocking(dir).await;
                        let outcome = outcome?;
                        if !outcome.success() {
                            let mut text = String::from_utf8_lossy(&outcome.stderr).into_owned();
                            text.push_str(&String::from_utf8_lossy(&outcome.stdout));
                            let text = cap(text).unwrap_or_default();
                            return Ok(Err(format!("{label} does not compile: {text}")));
                        }
                        let Some(built) = built else {
                            return Ok(Err(format!(
                                "{label}: the compiler left files that cannot be copied"
                            )));
                        };
                        if let Some(disk) = disk {
                            let art = Artifact {
                                files: built.files.clone(),
                                compile_output: None,
                            };
                            let stored =
                                tokio::task::spawn_blocking(move || disk.put(&cache_key, &art))
                                    .await?;
                            if let Err(e) = stored {
                                tracing::warn!(error = %e, "cannot cache the compiled checker");
                            }
                        }
                        let mut files = built.files;
                        // The source again (collect leaves it out); the files are in
                        // `built` already when the compiler left them in place.
                        files.retain(|f| f.name != lang.source);
                        files.push(ArtifactFile {
                            name: lang.source.clone(),
                            bytes: program.source.clone().into_bytes(),
                            executable: false,
                        });
                        files
                    }
                }
            }
        };
        let mut unique: Vec<ArtifactFile> = Vec::with_capacity(files.len());
        for f in files {
            if !unique.iter().any(|u| u.name == f.name) {
                unique.push(f);
            }
        }
        let compiled = Arc::new(CompiledChecker {
            lang,
            files: Arc::new(unique),
            protocol: program.protocol,
            label,
        });
        self.problem_cache.put_checker(key, Arc::clone(&compiled));
        Ok(Ok(compiled))
    }

    /// Runs the checker on one test's data and the contestant's output, in a run
    /// directory of its own.
    ///
    /// Over 100 lines: the two protocols' set-up and the reading of the checker's answer
    /// (limits, signal, exit code, feedback files) share the run directory and the label;
    /// most of the length is the per-cause failure messages.
    pub(crate) async fn run_checker(
        &self,
        checker: &CompiledChecker,
        slot: u32,
        input: &SharedBytes,
        answer: Option<&SharedBytes>,
        output: Vec<u8>,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Checked, WorkerError> {
        let dir: Arc<RunDir> = self.fresh_dir(slot, Arc::clone(&checker.files)).await?;
        let written = {
            let dir = Arc::clone(&dir);
            let input = input.clone();
            let answer = answer.cloned();
            let testlib = checker.protocol == CheckerProtocol::Testlib;
            let output = if testlib { Some(output.clone()) } else { None };
            tokio::task::spawn_blocking(move || -> Result<(), WorkerError> {
                dir.write_file("input", input.as_ref())?;
                dir.write_file("answer", answer.as_ref().map_or(&[][..], |a| a.as_ref()))?;
                if let Some(output) = output {
                    dir.write_file("output", &output)?;
                }
                Ok(())
            })
            .await?
        };
        if let Err(e) = written {
            remove_blocking(dir).await;
            return Err(e);
        }
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut command = checker.lang.run.clone();
        let stdin = match checker.protocol {
            CheckerProtocol::Kattis => {
                // The run directory is the feedback directory: judgemessage.txt and
                // score.txt are read from it afterwards.
                command.extend([path("input"), path("answer"), format!("{}/", path(""))]);
                output
            }
            CheckerProtocol::Testlib => {
                command.extend([path("input"), path("output"), path("answer")]);
                Vec::new()
            }
        };
        let limits = verdict_sandbox::Limits {
            output_bytes: 1024 * 1024,
            ..boosted(&self.config.compile_limits, &checker.lang.run_limits)
        };
        let outcome = self
            .sandboxed(
                &dir,
                &command,
                &checker.lang.env,
                stdin,
                limits,
                None,
                cancel,
            )
            .await;
        let feedback = {
            let base = dir.path().to_path_buf();
            tokio::task::spawn_blocking(move || {
                (
                    read_small(&base.join("judgemessage.txt")),
                    read_small(&base.join("score.txt")),
                )
            })
            .await?
        };
        remove_blocking(dir).await;
        let outcome = outcome?;
        let label = &checker.label;
        if let Some(limit) = outcome.limit {
            if limit == verdict_sandbox::LimitHit::Cancelled {
                return Ok(Checked::Judged {
                    verdict: Verdict::Cancelled,
                    score: None,
                    message: None,
                });
            }
            return Ok(Checked::Failed(format!(
                "{label} exceeded its limits ({limit:?})"
            )));
        }
        if let Some(signal) = outcome.signal {
            return Ok(Checked::Failed(format!(
                "{label} was killed by signal {signal}"
            )));
        }
        let stderr = String::from_utf8_lossy(&outcome.stderr).into_owned();
        let code = outcome.exit_code.unwrap_or(-1);
        let failed = |code: i32| {
            Checked::Failed(format!(
                "{label} exited with {code}, which its protocol does not define: {}",
                cap(stderr.clone()).unwrap_or_default()
            ))
        };
        Ok(match checker.protocol {
            CheckerProtocol::Kattis => {
                let (message, score) = feedback;
                let score = score.as_deref().and_then(first_number);
                match code {
                    42 => Checked::Judged {
                        verdict: Verdict::Accepted,
                        score,
                        message: message.and_then(cap),
                    },
                    43 => Checked::Judged {
                        verdict: Verdict::WrongAnswer,
                        score: Some(score.unwrap_or(0.0)),
                        message: message.and_then(cap),
                    },
                    other => failed(other),
                }
            }
            CheckerProtocol::Testlib => {
                let message = cap(stderr.clone());
                match code {
                    0 => Checked::Judged {
                        verdict: Verdict::Accepted,
                        score: None,
                        message,
                    },
                    1 | 2 => Checked::Judged {
                        verdict: Verdict::WrongAnswer,
                        score: None,
                        message,
                    },
                    7 => {
                        let stdout = String::from_utf8_lossy(&outcome.stdout);
                        match first_number(&stdout).or_else(|| first_number(&stderr)) {
                            Some(s) => {
                                let s = s.clamp(0.0, 1.0);
                                Checked::Judged {
                                    verdict: if s >= 1.0 {
                                        Verdict::Accepted
                                    } else {
                                        Verdict::WrongAnswer
                                    },
                                    score: Some(s),
                                    message,
                                }
                            }
                            None => Checked::Failed(format!(
                                "{label} exited with 7 (partial) but printed no score"
                            )),
                        }
                    }
                    other => failed(other),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_number_is_the_score() {
        assert_eq!(super::first_number("points 0.25 ok"), Some(0.25));
        assert_eq!(super::first_number("none"), None);
        assert_eq!(super::first_number("nan 1"), Some(1.0));
    }
}

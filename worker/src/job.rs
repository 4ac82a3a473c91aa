//! One job, start to end: compile once, run each test, publish every step, store the
//! outcome. Blocking sandbox work runs on tokio's blocking pool.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use verdict_broker::{
    EventKind, Job, Language, LimitBoost, Limits, Signal, Status, Stream, Submission, TestCase,
    TestResult, Verdict,
};
use verdict_sandbox::{Outcome, RunDir, RunSpec, Sandbox, StreamKind};

use crate::cache::{self, Artifact, ArtifactFile, CompileCache};
use crate::error::WorkerError;
use crate::judge;
use crate::Worker;

/// Compiler output kept in `compileOutput`.
const COMPILE_OUTPUT_CAP: usize = 64 * 1024;

pub(crate) fn boosted(limits: &Limits, boost: &LimitBoost) -> verdict_sandbox::Limits {
    verdict_sandbox::Limits {
        cpu_ms: limits.cpu_time_ms + boost.extra_cpu_ms,
        wall_ms: limits.wall_time_ms + boost.extra_wall_ms,
        memory_kb: limits.memory_kb + boost.extra_memory_kb,
        output_bytes: limits.output_bytes,
        processes: limits.processes.max(boost.min_processes),
        ..verdict_sandbox::Limits::default()
    }
}

/// The run's environment: PATH, HOME and TMPDIR (the run directory), LANG, then the
/// language's own `env` table from the catalogue (a name there replaces ours).
fn environment(dir: &RunDir, extra: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let home = dir.path().display().to_string();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), home.clone()),
        ("TMPDIR".into(), home),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    env.retain(|(name, _)| !extra.contains_key(name));
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Resolves `./main` against the run directory; absolute paths stay as they are.
fn program(dir: &RunDir, command: &[String]) -> PathBuf {
    match command[0].strip_prefix("./") {
        Some(local) => dir.path().join(local),
        None => PathBuf::from(&command[0]),
    }
}

/// Test data shared between the cache and the runs that read it (never copied per test).
#[derive(Clone)]
pub(crate) struct SharedBytes(pub Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Turns byte chunks into valid UTF-8 text without splitting a character across events.
#[derive(Default)]
struct Utf8Carry {
    tail: Vec<u8>,
}

impl Utf8Carry {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.tail.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.tail) {
            Ok(_) => self.tail.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.tail.len(),
        };
        let rest = self.tail.split_off(valid);
        let text = String::from_utf8_lossy(&self.tail).into_owned();
        self.tail = rest;
        text
    }
}

impl Worker {
    /// Runs `command` in the sandbox on the blocking pool, forwarding output chunks to
    /// `output` when given.
    #[allow(clippy::too_many_arguments)] // each is one aspect of the run; no natural group
    pub(crate) async fn sandboxed(
        &self,
        dir: &Arc<RunDir>,
        command: &[String],
        env: &BTreeMap<String, String>,
        stdin: impl AsRef<[u8]> + Send + 'static,
        limits: verdict_sandbox::Limits,
        output: Option<mpsc::UnboundedSender<(StreamKind, Vec<u8>)>>,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Outcome, WorkerError> {
        let sandbox: Arc<Sandbox> = Arc::clone(&self.sandbox);
        let dir = Arc::clone(dir);
        let cancel = Arc::clone(cancel);
        let command = command.to_vec();
        let env = environment(&dir, env);
        let outcome = tokio::task::spawn_blocking(move || {
            let spec = RunSpec {
                program: program(&dir, &command),
                args: command[1..].to_vec(),
                env,
                stdin: stdin.as_ref(),
                dir: &dir,
                slot: dir.slot(),
                limits,
            };
            let mut forward = |stream: StreamKind, chunk: &[u8]| {
                if let Some(tx) = &output {
                    let _ = tx.send((stream, chunk.to_vec()));
                }
            };
            sandbox.run(&spec, &mut forward, &cancel)
        })
        .await??;
        Ok(outcome)
    }

    /// Handles one job; errors are ours and become INTERNAL_ERROR in the caller.
    pub(crate) async fn process(&self, job: &Job, slot: u32) -> Result<(), WorkerError> {
        let id = job.submission.id.clone();
        let request = &job.request;
        let lang: Language = self
            .catalogue
            .get(&request.language)
            .cloned()
            .ok_or_else(|| WorkerError::UnknownLanguage(request.language.clone()))?;

        // A final event written by someone else (a cancel, a duplicate run) stops us.
        let cancel = Arc::new(AtomicBool::new(false));
        let mut live = self.broker.subscribe(&id).await?;
        if self
            .broker
            .submission(&id)
            .await?
            .is_none_or(|s| s.status == Status::Finished)
        {
            return Ok(());
        }
        let watcher = {
            let cancel = Arc::clone(&cancel);
            let broker = Arc::clone(&self.broker);
            let id = id.clone();
            tokio::spawn(async move {
                while let Some(signal) = live.recv().await {
                    let finished = match signal {
                        Signal::Event(event) => event.is_final(),
                        Signal::Resync => broker
                            .submission(&id)
                            .await
                            .ok()
                            .flatten()
                            .is_none_or(|s| s.status == Status::Finished),
                    };
                    if finished {
                        cancel.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            })
        };
        let result = self.judge(job, &lang, slot, &cancel).await;
        watcher.abort();
        let mut submission = result?;
        if let Some(pin) = &job.request.problem {
            self.score_problem(&mut submission, pin).await;
        }
        let verdict = submission.verdict.map(verdict_broker::wire_name);
        let verdict = verdict.as_deref().unwrap_or("-");
        if self.broker.finish(&submission).await?.is_some() {
            tracing::info!(verdict, time_ms = submission.time_ms, "judged");
        } else {
            // A cancel (or a duplicate run) finished it first; our outcome is dropped.
            tracing::info!(verdict, "finished elsewhere first; outcome discarded");
        }
        Ok(())
    }

    /// Judges in a build directory that is removed afterwards on a blocking thread, on
    /// every path: a program can leave a tree that takes a second to remove, which must
    /// never run on the async runtime.
    async fn judge(
        &self,
        job: &Job,
        lang: &Language,
        slot: u32,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Submission, WorkerError> {
        let sandbox = Arc::clone(&self.sandbox);
        let build = Arc::new(tokio::task::spawn_blocking(move || sandbox.run_dir(slot)).await??);
        let result = self.judge_in(&build, job, lang, slot, cancel).await;
        remove_blocking(build).await;
        result
    }

    async fn judge_in(
        &self,
        dir: &Arc<RunDir>,
        job: &Job,
        lang: &Language,
        slot: u32,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Submission, WorkerError> {
        let id = &job.submission.id;
        let request = &job.request;
        let mut submission = job.submission.clone();
        submission.started_at = Some(chrono::Utc::now());
        dir.write_file(&lang.source, request.source.as_bytes())?;
        let source_file = ArtifactFile {
            name: lang.source.clone(),
            bytes: request.source.as_bytes().to_vec(),
            executable: false,
        };
        // What every test's fresh run directory starts with; `None`: the compiler left
        // something we cannot copy (a subdirectory, a symlink), so the tests share `dir`.
        let mut program_files: Option<Vec<ArtifactFile>> = Some(vec![source_file.clone()]);

        let cache = self
            .config
            .compile_cache_dir
            .clone()
            .filter(|_| self.config.compile_cache_bytes > 0)
            .map(|d| CompileCache::new(d, self.config.compile_cache_bytes));
        let cache_key = cache
            .as_ref()
            .filter(|_| lang.compiled())
            .map(|_| cache::key(lang, &request.source));
        let cached = match (&cache, &cache_key) {
            (Some(cache), Some(key)) => {
                let (cache, key) = (cache.clone(), key.clone());
                match tokio::task::spawn_blocking(move || cache.get(&key)).await? {
                    Ok(hit) => hit,
                    Err(e) => {
                        tracing::warn!(error = %e, "compile cache unreadable; compiling");
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(artifact) = cached {
            // A cache hit: no compiler runs; the event and the record say so.
            self.broker.publish(id, EventKind::CompileCached).await?;
            submission.compile_cached = true;
            submission.compile_output = artifact.compile_output;
            let mut files = artifact.files;
            files.push(source_file);
            program_files = Some(files);
        } else if let Some(compile) = &lang.compile {
            self.broker.publish(id, EventKind::Compiling).await?;
            let limits = boosted(&self.config.compile_limits, &lang.compile_limits);
            let outcome = self
                .sandboxed(dir, compile, &lang.env, String::new(), limits, None, cancel)
                .await?;
            let mut text = String::from_utf8_lossy(&outcome.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&outcome.stdout));
            if text.len() > COMPILE_OUTPUT_CAP {
                let cut = (0..=COMPILE_OUTPUT_CAP)
                    .rev()
                    .find(|&k| text.is_char_boundary(k))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push_str("\n[compiler output truncated at 64 KiB]");
            }
            if !outcome.success() {
                // Generous: this only picks the message; it is COMPILATION_ERROR anyway.
                let why = match judge::limit_hit(&outcome, limits.cpu_ms, 80) {
                    Some(
                        verdict_sandbox::LimitHit::CpuTime | verdict_sandbox::LimitHit::WallTime,
                    ) => Some("the compiler exceeded its time limit"),
                    Some(verdict_sandbox::LimitHit::Memory) => {
                        Some("the compiler exceeded its memory limit")
                    }
                    Some(verdict_sandbox::LimitHit::Output) => {
                        Some("the compiler exceeded its output limit")
                    }
                    Some(verdict_sandbox::LimitHit::Cancelled) => {
                        submission.finish(Verdict::Cancelled);
                        return Ok(submission);
                    }
                    None => None,
                };
                if let Some(why) = why {
                    text = format!("{why}\n{text}");
                }
                submission.compile_output = Some(text);
                submission.finish(Verdict::CompilationError);
                return Ok(submission);
            }
            submission.compile_output = (!text.is_empty()).then_some(text);
            let run_dir = dir.path().to_path_buf();
            let source = lang.source.clone();
            let built = tokio::task::spawn_blocking(move || cache::collect(&run_dir, &source))
                .await?
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read what the compiler left");
                    None
                });
            program_files = built.as_ref().map(|b| {
                let mut files = b.files.clone();
                files.push(source_file.clone());
                files
            });
            if program_files.is_none() {
                tracing::warn!("compiler output not copyable; the tests share one run dir");
            }
            if let (Some(cache), Some(key), Some(files)) = (cache, cache_key, built) {
                let compile_output = submission.compile_output.clone();
                let stored = tokio::task::spawn_blocking(move || {
                    cache.put(
                        &key,
                        &Artifact {
                            compile_output,
                            ..files
                        },
                    )
                })
                .await?;
                if let Err(e) = stored {
                    tracing::warn!(error = %e, "cannot store the compiled program in the cache");
                }
            }
        }
        let program_files = program_files.map(Arc::new);
        if let Some(pin) = &request.problem {
            return self
                .judge_problem(dir, job, lang, slot, cancel, submission, program_files, pin)
                .await;
        }

        let plain = [TestCase {
            stdin: String::new(),
            expected_output: None,
        }];
        let tests: &[TestCase] = if request.tests.is_empty() {
            &plain
        } else {
            &request.tests
        };
        let total = u32::try_from(tests.len()).unwrap_or(u32::MAX);
        let limits = boosted(&request.limits, &lang.run_limits);
        let compare = judge::Compare {
            mode: request.compare,
            epsilon: request.epsilon.map_or(0.0, |e| e.0),
        };
        let mut overall = Verdict::Accepted;
        for (k, test) in tests.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                overall = Verdict::Cancelled;
                break;
            }
            let index = u32::try_from(k + 1).unwrap_or(u32::MAX);
            self.broker
                .publish(
                    id,
                    EventKind::Running {
                        test: index,
                        tests: total,
                    },
                )
                .await?;
            let (tx, rx) = mpsc::unbounded_channel();
            let forwarder = tokio::spawn(forward_output(
                Arc::clone(&self.broker),
                id.clone(),
                index,
                rx,
            ));
            // Each test starts from a fresh directory: nothing one test wrote reaches the next.
            let test_dir = match &program_files {
                Some(files) => self.fresh_dir(slot, Arc::clone(files)).await?,
                None => Arc::clone(dir),
            };
            let outcome = self
                .sandboxed(
                    &test_dir,
                    &lang.run,
                    &lang.env,
                    test.stdin.clone(),
                    limits,
                    Some(tx),
                    cancel,
                )
                .await;
            if program_files.is_some() {
                remove_blocking(test_dir).await;
            }
            // The sender is gone once the sandbox returned: the forwarder drains and ends.
            let _ = forwarder.await;
            let outcome = outcome?;
            let verdict = judge::verdict(
                &outcome,
                test.expected_output.as_deref(),
                compare,
                limits.cpu_ms,
            );
            let result = test_result(index, verdict, outcome);
            self.broker
                .publish(
                    id,
                    EventKind::TestFinished {
                        result: result.for_event(),
                    },
                )
                .await?;
            submission.tests.push(result);
            if verdict != Verdict::Accepted && overall == Verdict::Accepted {
                overall = verdict;
                if request.stop_on_first_failure || verdict == Verdict::Cancelled {
                    break;
                }
            }
        }
        submission.finish(overall);
        Ok(submission)
    }
}

impl Worker {
    /// A new run directory of `slot` holding `files` (the compiled program and the source).
    pub(crate) async fn fresh_dir(
        &self,
        slot: u32,
        files: Arc<Vec<ArtifactFile>>,
    ) -> Result<Arc<RunDir>, WorkerError> {
        let sandbox = Arc::clone(&self.sandbox);
        let dir = tokio::task::spawn_blocking(move || -> Result<RunDir, WorkerError> {
            let dir = sandbox.run_dir(slot)?;
            for f in files.iter() {
                let mode = if f.executable { 0o700 } else { 0o600 };
                dir.write_file_mode(&f.name, &f.bytes, mode)?;
            }
            Ok(dir)
        })
        .await??;
        Ok(Arc::new(dir))
    }
}

/// Removes a run directory on the blocking pool (never on the runtime: see
/// [`RunDir::remove`]). Problems are logged: the run's result does not depend on them.
pub(crate) async fn remove_blocking(dir: Arc<RunDir>) {
    let removed = tokio::task::spawn_blocking(move || match Arc::try_unwrap(dir) {
        Ok(dir) => dir.remove().map(|_| ()),
        // Still shared (cannot happen once every run on it returned): the last owner's
        // drop removes it; dropping our handle here keeps even that off the runtime.
        Err(shared) => {
            drop(shared);
            Ok(())
        }
    })
    .await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not remove a run dir"),
        Err(e) => tracing::warn!(error = %e, "run dir removal task failed"),
    }
}

/// A test's result from its run: what every test has, whether of a plain submission or
/// of a problem (which adds its name, group, score and checker message on top).
pub(crate) fn test_result(index: u32, verdict: Verdict, outcome: Outcome) -> TestResult {
    TestResult {
        index,
        verdict,
        time_ms: outcome.cpu_ms,
        wall_time_ms: outcome.wall_ms,
        memory_kb: outcome.memory_kb,
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        truncated: outcome.stdout_truncated || outcome.stderr_truncated,
        stdout: into_text(outcome.stdout),
        stderr: into_text(outcome.stderr),
        name: None,
        group: None,
        sample: false,
        checker_message: None,
        score: None,
    }
}

/// Output as text, moving the bytes when they are valid UTF-8 (no second copy of a big
/// output), replacing invalid sequences otherwise.
pub(crate) fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Live output is published at most once per this interval...
const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
/// ...unless this much is waiting (so one event stays small).
const BATCH_BYTES: usize = 64 * 1024;

/// Publishes live output as OutputEvents in batches: a chunk after a quiet spell goes out
/// at once, then at most one event per stream every 50 ms (or per 64 KiB), so a flood
/// makes few events. The sandbox stops delivering output at the output cap.
pub(crate) async fn forward_output(
    broker: verdict_broker::SharedBroker,
    id: String,
    test: u32,
    mut rx: mpsc::UnboundedReceiver<(StreamKind, Vec<u8>)>,
) {
    let mut carry = [Utf8Carry::default(), Utf8Carry::default()];
    let now = tokio::time::Instant::now();
    let mut last = now.checked_sub(BATCH_INTERVAL).unwrap_or(now);
    while let Some(first) = rx.recv().await {
        let mut size = first.1.len();
        let mut batch = vec![first];
        let deadline = last + BATCH_INTERVAL;
        while size < BATCH_BYTES {
            tokio::select! {
                biased;
                more = rx.recv() => match more {
                    Some(more) => {
                        size += more.1.len();
                        batch.push(more);
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let mut text = [String::new(), String::new()];
        for (stream, bytes) in batch {
            let k = usize::from(stream == StreamKind::Stderr);
            text[k].push_str(&carry[k].push(&bytes));
        }
        for (k, text) in text.into_iter().enumerate() {
            let stream = if k == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            // No event above BATCH_BYTES: the fan-out keeps a fixed number of events per
            // submission for slow subscribers, so event size is what bounds its memory.
            for chunk in pieces(&text, BATCH_BYTES) {
                let kind = EventKind::Output {
                    test,
                    stream,
                    chunk: chunk.to_owned(),
                };
                if let Err(e) = broker.publish(&id, kind).await {
                    tracing::warn!(error = %e, submission = %id, "dropping live output chunk");
                }
            }
        }
        last = tokio::time::Instant::now();
    }
}

/// `text` cut into pieces of at most `max` bytes, at character boundaries.
fn pieces(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut.max(rest.chars().next().map_or(1, char::len_utf8)));
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::Utf8Carry;

    #[test]
    fn pieces_respect_the_size_and_character_boundaries() {
        let text = "aé".repeat(10);
        let parts: Vec<&str> = super::pieces(&text, 4).collect();
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| p.len() <= 4 && !p.is_empty()));
        assert_eq!(super::pieces("", 4).count(), 0);
    }

    #[test]
    fn utf8_is_never_split_across_chunks() {
        let mut carry = Utf8Carry::default();
        let bytes = "héllo".as_bytes();
        assert_eq!(carry.push(&bytes[..2]), "h");
        assert_eq!(carry.push(&bytes[2..]), "éllo");
    }
}

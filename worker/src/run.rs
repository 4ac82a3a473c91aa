//! The tests of a plain submission (its own `tests`, or one plain run): each in a fresh
//! run directory, published as it goes, judged by [`crate::judge`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use verdict_broker::{EventKind, Job, Language, Submission, TestCase, TestResult, Verdict};
use verdict_sandbox::{Outcome, RunDir};

use crate::cache::ArtifactFile;
use crate::error::WorkerError;
use crate::judge;
use crate::output::forward_output;
use crate::sandboxed::{boosted, remove_blocking};
use crate::Worker;

/// The test of a submission that gave none: one run on empty stdin, no expected output
/// (accepted when it exits 0). The server already turns a submission without `tests`
/// into this one test, with its `stdin` (server/src/validate.rs, `InputPolicy::check`);
/// this covers a job whose request was built elsewhere with no tests.
fn plain_run() -> TestCase {
    TestCase {
        stdin: String::new(),
        expected_output: None,
    }
}

impl Worker {
    /// Runs the request's tests against the prepared program, in order, and finishes
    /// `submission` with the first verdict that is not ACCEPTED (or ACCEPTED).
    #[allow(clippy::too_many_arguments)] // the compile step's state, handed on
    pub(crate) async fn run_tests(
        &self,
        dir: &Arc<RunDir>,
        job: &Job,
        lang: &Language,
        slot: u32,
        cancel: &Arc<AtomicBool>,
        mut submission: Submission,
        program_files: Option<Arc<Vec<ArtifactFile>>>,
    ) -> Result<Submission, WorkerError> {
        let id = &job.submission.id;
        let request = &job.request;
        let plain = [plain_run()];
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
            let outcome = self
                .run_test(
                    dir,
                    slot,
                    lang,
                    &program_files,
                    test.stdin.clone(),
                    limits,
                    Some((id, index)),
                    cancel,
                )
                .await?;
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

    /// Runs `lang.run` on `stdin` in a fresh run directory holding `program_files` (in
    /// `dir` itself when there are none: the compiler left something not copyable), so
    /// nothing one test wrote reaches the next. With `live` (submission id, test index),
    /// its output is published as it comes; without (a hidden test), never.
    #[allow(clippy::too_many_arguments)] // each is one aspect of the run; no natural group
    pub(crate) async fn run_test(
        &self,
        dir: &Arc<RunDir>,
        slot: u32,
        lang: &Language,
        program_files: &Option<Arc<Vec<ArtifactFile>>>,
        stdin: impl AsRef<[u8]> + Send + 'static,
        limits: verdict_sandbox::Limits,
        live: Option<(&str, u32)>,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Outcome, WorkerError> {
        let (tx, forwarder) = match live {
            Some((id, index)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let forwarder = tokio::spawn(forward_output(
                    Arc::clone(&self.broker),
                    id.to_owned(),
                    index,
                    rx,
                ));
                (Some(tx), Some(forwarder))
            }
            None => (None, None),
        };
        let test_dir = match program_files {
            Some(files) => self.fresh_dir(slot, Arc::clone(files)).await?,
            None => Arc::clone(dir),
        };
        let outcome = self
            .sandboxed(&test_dir, &lang.run, &lang.env, stdin, limits, tx, cancel)
            .await;
        if program_files.is_some() {
            remove_blocking(test_dir).await;
        }
        // The sender is gone once the sandbox returned: the forwarder drains and ends.
        if let Some(forwarder) = forwarder {
            let _ = forwarder.await;
        }
        outcome
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

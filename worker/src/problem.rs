//! Judging a submission against a stored problem version: tests from the problem store
//! (cached on this worker by content hash), the checker, groups and scores.
//!
//! Secrecy: a test's input reaches the program only as its stdin pipe and the expected
//! output never enters the contestant's run directory (it is compared in the worker, or
//! given to the checker in the checker's own run directory). Hidden tests publish no
//! OutputEvent, so their output is in no event log; the server shows it to admins only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use verdict_broker::{
    DataRef, EventKind, Job, Language, Points, Problem, ProblemRef, SharedProblems, Submission,
    TestResult, Verdict,
};
use verdict_sandbox::RunDir;

use crate::cache::ArtifactFile;
use crate::checker::{Checked, CompiledChecker};
use crate::error::WorkerError;
use crate::run::test_result;
use crate::sandboxed::{boosted, SharedBytes};
use crate::{judge, scoring, Worker};

/// One finished run of a problem test, as [`Worker::judge_problem_test`] judges it.
struct JudgedTest<'a> {
    outcome: &'a verdict_sandbox::Outcome,
    /// The run's CPU limit (for [`judge::verdict`]).
    cpu_limit_ms: u64,
    /// The test's 1-based index (for messages).
    index: u32,
}

/// Test data kept in memory per worker, bytes.
const DATA_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// Problem versions (immutable), test data by hash and compiled checkers, per worker.
#[derive(Default)]
pub(crate) struct ProblemCache {
    versions: Mutex<HashMap<(String, u32), Arc<Problem>>>,
    data: Mutex<DataCache>,
    checkers: Mutex<HashMap<(String, u32), Arc<CompiledChecker>>>,
}

#[derive(Default)]
struct DataCache {
    bytes: u64,
    order: VecDeque<String>,
    entries: HashMap<String, SharedBytes>,
}

impl ProblemCache {
    pub(crate) fn checker(&self, key: &(String, u32)) -> Option<Arc<CompiledChecker>> {
        self.checkers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    pub(crate) fn put_checker(&self, key: (String, u32), checker: Arc<CompiledChecker>) {
        self.checkers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, checker);
    }

    async fn problem(
        &self,
        store: &SharedProblems,
        pin: &ProblemRef,
    ) -> Result<Arc<Problem>, WorkerError> {
        let key = (pin.id.clone(), pin.version);
        if let Some(p) = self
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Arc::clone(p));
        }
        let problem = store
            .version(&pin.id, pin.version)
            .await?
            .ok_or_else(|| WorkerError::ProblemMissing(format!("{} v{}", pin.id, pin.version)))?;
        let problem = Arc::new(problem);
        self.versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::clone(&problem));
        Ok(problem)
    }

    async fn data(
        &self,
        store: &SharedProblems,
        data: &DataRef,
    ) -> Result<SharedBytes, WorkerError> {
        if let Some(hit) = self
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .get(&data.hash)
        {
            return Ok(hit.clone());
        }
        let bytes = store
            .data(&data.hash)
            .await?
            .ok_or_else(|| WorkerError::ProblemMissing(format!("test data {}", data.hash)))?;
        let bytes = SharedBytes(bytes);
        let mut cache = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let len = bytes.0.len() as u64;
        if len <= DATA_CACHE_BYTES && !cache.entries.contains_key(&data.hash) {
            while cache.bytes + len > DATA_CACHE_BYTES {
                let Some(old) = cache.order.pop_front() else {
                    break;
                };
                if let Some(gone) = cache.entries.remove(&old) {
                    cache.bytes -= gone.0.len() as u64;
                }
            }
            cache.bytes += len;
            cache.order.push_back(data.hash.clone());
            cache.entries.insert(data.hash.clone(), bytes.clone());
        }
        Ok(bytes)
    }
}

impl Worker {
    /// Runs every test of the pinned problem version against the compiled program.
    ///
    /// Over 100 lines: one loop over the tests whose steps (group skip, data, publish,
    /// run, judge, result) share the loop's state; the run and the judging are already
    /// [`Worker::run_test`] and [`Worker::judge_problem_test`].
    #[allow(clippy::too_many_arguments)] // the compile step's state, handed on
    pub(crate) async fn judge_problem(
        &self,
        dir: &Arc<RunDir>,
        job: &Job,
        lang: &Language,
        slot: u32,
        cancel: &Arc<AtomicBool>,
        mut submission: Submission,
        program_files: Option<Arc<Vec<ArtifactFile>>>,
        pin: &ProblemRef,
    ) -> Result<Submission, WorkerError> {
        let id = &job.submission.id;
        let request = &job.request;
        let problem = self.problem_cache.problem(&self.problems, pin).await?;
        let checker = match &problem.checker.program {
            None => None,
            Some(program) => match self
                .compiled_checker(&problem, program, slot, cancel)
                .await?
            {
                Ok(c) => Some(c),
                Err(why) => {
                    tracing::error!(problem = %problem.id, version = problem.version, "{why}");
                    submission.message = Some(why);
                    submission.finish(Verdict::InternalError);
                    return Ok(submission);
                }
            },
        };
        let total = u32::try_from(problem.tests.len()).unwrap_or(u32::MAX);
        let limits = boosted(&request.limits, &lang.run_limits);
        let compare = judge::Compare {
            mode: problem.checker.compare,
            epsilon: problem.checker.epsilon.map_or(0.0, |e| e.0),
        };
        let mut failed_groups: HashSet<&str> = HashSet::new();
        let mut overall = Verdict::Accepted;
        for (k, test) in problem.tests.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                overall = Verdict::Cancelled;
                break;
            }
            // stopOnFirstFailure skips the rest of the group, not of the submission.
            if request.stop_on_first_failure && failed_groups.contains(test.group.as_str()) {
                continue;
            }
            let index = u32::try_from(k + 1).unwrap_or(u32::MAX);
            let input = self.problem_cache.data(&self.problems, &test.input).await?;
            let answer = match &test.answer {
                Some(a) => Some(self.problem_cache.data(&self.problems, a).await?),
                None => None,
            };
            self.broker
                .publish(
                    id,
                    EventKind::Running {
                        test: index,
                        tests: total,
                    },
                )
                .await?;
            // A hidden test's output is never published live (nor logged).
            let live = test.sample.then_some((id.as_str(), index));
            let outcome = self
                .run_test(
                    dir,
                    slot,
                    lang,
                    &program_files,
                    input.clone(),
                    limits,
                    live,
                    cancel,
                )
                .await?;
            let judged = JudgedTest {
                outcome: &outcome,
                cpu_limit_ms: limits.cpu_ms,
                index,
            };
            let (verdict, score, checker_message) = self
                .judge_problem_test(
                    judged,
                    compare,
                    checker.as_deref(),
                    &input,
                    answer.as_ref(),
                    slot,
                    cancel,
                    &mut submission.message,
                )
                .await?;
            let score = score.unwrap_or(if verdict == Verdict::Accepted {
                1.0
            } else {
                0.0
            });
            let result = TestResult {
                name: test.name.clone(),
                group: Some(test.group.clone()),
                sample: test.sample,
                checker_message,
                score: Some(Points(score)),
                ..test_result(index, verdict, outcome)
            };
            self.broker
                .publish(
                    id,
                    EventKind::TestFinished {
                        result: result.for_event(),
                    },
                )
                .await?;
            submission.tests.push(result);
            if verdict != Verdict::Accepted {
                failed_groups.insert(test.group.as_str());
                if overall == Verdict::Accepted {
                    overall = verdict;
                }
                if verdict == Verdict::Cancelled {
                    break;
                }
            }
        }
        submission.finish(overall);
        Ok(submission)
    }

    /// A problem test's verdict, score and checker message from its run: the limits
    /// first, in the design's order; then the answer (compared here) or the checker. A
    /// checker that fails is our failure: INTERNAL_ERROR, and the first such cause of the
    /// submission is kept in `message`.
    #[allow(clippy::too_many_arguments)] // the test's run, data and checker; no natural group
    async fn judge_problem_test(
        &self,
        run: JudgedTest<'_>,
        compare: judge::Compare,
        checker: Option<&CompiledChecker>,
        input: &SharedBytes,
        answer: Option<&SharedBytes>,
        slot: u32,
        cancel: &Arc<AtomicBool>,
        message: &mut Option<String>,
    ) -> Result<(Verdict, Option<f64>, Option<String>), WorkerError> {
        let (outcome, index) = (run.outcome, run.index);
        let mut verdict = judge::verdict(outcome, None, compare, run.cpu_limit_ms);
        let mut score = None;
        let mut checker_message = None;
        if verdict == Verdict::Accepted {
            match checker {
                None => {
                    if let Some(answer) = answer {
                        if !judge::same_output(&outcome.stdout, answer.as_ref(), compare) {
                            verdict = Verdict::WrongAnswer;
                        }
                    }
                }
                Some(c) => match self
                    .run_checker(c, slot, input, answer, outcome.stdout.clone(), cancel)
                    .await?
                {
                    Checked::Judged {
                        verdict: v,
                        score: s,
                        message,
                    } => {
                        verdict = v;
                        score = s;
                        checker_message = message;
                    }
                    Checked::Failed(why) => {
                        tracing::error!(test = index, "{why}");
                        verdict = Verdict::InternalError;
                        if message.is_none() {
                            *message = Some(format!("test {index}: {why}"));
                        }
                    }
                },
            }
        }
        Ok((verdict, score, checker_message))
    }

    /// Fills the groups and scores of a finished problem submission (any verdict).
    pub(crate) async fn score_problem(&self, submission: &mut Submission, pin: &ProblemRef) {
        match self.problem_cache.problem(&self.problems, pin).await {
            Ok(problem) => {
                let overall = submission.verdict.unwrap_or(Verdict::InternalError);
                let (groups, total) = scoring::score(&problem, &submission.tests, overall);
                submission.groups = groups;
                submission.score = Some(Points(total));
                submission.max_score = Some(Points(problem.max_score()));
            }
            Err(e) => tracing::warn!(error = %e, "cannot score: problem unreadable"),
        }
    }
}

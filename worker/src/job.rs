//! One job, start to end: compile once, run each test, publish every step, store the
//! outcome. Blocking sandbox work runs on tokio's blocking pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use verdict_broker::{Job, Language, Signal, Status, Submission};
use verdict_sandbox::RunDir;

use crate::compile::Prepared;
use crate::error::WorkerError;
use crate::sandboxed::remove_blocking;
use crate::Worker;

impl Worker {
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
        let result = self.evaluate(job, &lang, slot, &cancel).await;
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
    /// Evaluates the submission in a build directory that is removed afterwards on a
    /// blocking thread, on every path: a program can leave a tree that takes a second to
    /// remove, which must never run on the async runtime.
    async fn evaluate(
        &self,
        job: &Job,
        lang: &Language,
        slot: u32,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Submission, WorkerError> {
        let sandbox = Arc::clone(&self.sandbox);
        let build = Arc::new(tokio::task::spawn_blocking(move || sandbox.run_dir(slot)).await??);
        let result = self.evaluate_in(&build, job, lang, slot, cancel).await;
        remove_blocking(build).await;
        result
    }
    /// Compile (or restore from the cache), then run the tests: the problem's when the
    /// submission names one, else its own.
    async fn evaluate_in(
        &self,
        dir: &Arc<RunDir>,
        job: &Job,
        lang: &Language,
        slot: u32,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Submission, WorkerError> {
        let mut submission = job.submission.clone();
        submission.started_at = Some(chrono::Utc::now());
        let program_files = match self
            .compile_or_restore(dir, job, lang, cancel, &mut submission)
            .await?
        {
            Prepared::Program(files) => files.map(Arc::new),
            Prepared::Finished => return Ok(submission),
        };
        match &job.request.problem {
            Some(pin) => {
                self.judge_problem(dir, job, lang, slot, cancel, submission, program_files, pin)
                    .await
            }
            None => {
                self.run_tests(dir, job, lang, slot, cancel, submission, program_files)
                    .await
            }
        }
    }
}

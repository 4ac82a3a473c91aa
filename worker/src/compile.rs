//! The compile step of a job: restore the compiled program from the compile cache, or
//! compile it in the sandbox (and cache it), or decide the submission as
//! COMPILATION_ERROR.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use verdict_broker::{EventKind, Job, Language, Submission, Verdict};
use verdict_sandbox::{LimitHit, Outcome, RunDir};

use crate::cache::{self, Artifact, ArtifactFile, CompileCache};
use crate::error::WorkerError;
use crate::judge;
use crate::sandboxed::boosted;
use crate::Worker;

/// Compiler output kept in `compileOutput`.
const COMPILE_OUTPUT_CAP: usize = 64 * 1024;

/// A failed compile that used at least this percentage of its CPU limit is reported as
/// having exceeded its time limit. Lower than a test run's
/// [`judge::RUN_CPU_LIMIT_PERCENT`] because it is generous on purpose: it only picks the
/// message of a COMPILATION_ERROR (the verdict is the same either way), and a compiler
/// driver (`g++` driving `cc1plus`) reports its child's SIGXCPU death as a plain non-zero
/// exit with less CPU time than the limit on its own account.
const COMPILE_CPU_LIMIT_PERCENT: u64 = 80;

/// The outcome of the compile step.
pub(crate) enum Prepared {
    /// Ready to run. The files every test's fresh run directory starts with (the compiled
    /// program and the source); `None`: the compiler left something we cannot copy (a
    /// subdirectory, a symlink), so the tests share the build directory.
    Program(Option<Vec<ArtifactFile>>),
    /// Decided without running a test (COMPILATION_ERROR, or CANCELLED while compiling):
    /// the submission is finished.
    Finished,
}

impl Worker {
    /// Writes the source into `dir`, then restores the compiled program from the compile
    /// cache or compiles it there. Records `compileCached` / `compileOutput` on
    /// `submission`, and finishes it when the compile failed.
    pub(crate) async fn compile_or_restore(
        &self,
        dir: &Arc<RunDir>,
        job: &Job,
        lang: &Language,
        cancel: &Arc<AtomicBool>,
        submission: &mut Submission,
    ) -> Result<Prepared, WorkerError> {
        let id = &job.submission.id;
        let request = &job.request;
        dir.write_file(&lang.source, request.source.as_bytes())?;
        let source_file = ArtifactFile {
            name: lang.source.clone(),
            bytes: request.source.as_bytes().to_vec(),
            executable: false,
        };
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
        if let Some(artifact) = cached(cache.as_ref(), cache_key.as_deref()).await? {
            // A cache hit: no compiler runs; the event and the record say so.
            self.broker.publish(id, EventKind::CompileCached).await?;
            submission.compile_cached = true;
            submission.compile_output = artifact.compile_output;
            let mut files = artifact.files;
            files.push(source_file);
            return Ok(Prepared::Program(Some(files)));
        }
        let Some(compile) = &lang.compile else {
            // Interpreted: the source is the program.
            return Ok(Prepared::Program(Some(vec![source_file])));
        };
        self.broker.publish(id, EventKind::Compiling).await?;
        let limits = boosted(&self.config.compile_limits, &lang.compile_limits);
        let outcome = self
            .sandboxed(dir, compile, &lang.env, String::new(), limits, None, cancel)
            .await?;
        let mut text = compiler_output(&outcome);
        if !outcome.success() {
            let why = match judge::limit_hit(&outcome, limits.cpu_ms, COMPILE_CPU_LIMIT_PERCENT) {
                Some(LimitHit::CpuTime | LimitHit::WallTime) => {
                    Some("the compiler exceeded its time limit")
                }
                Some(LimitHit::Memory) => Some("the compiler exceeded its memory limit"),
                Some(LimitHit::Output) => Some("the compiler exceeded its output limit"),
                Some(LimitHit::Cancelled) => {
                    submission.finish(Verdict::Cancelled);
                    return Ok(Prepared::Finished);
                }
                None => None,
            };
            if let Some(why) = why {
                text = format!("{why}\n{text}");
            }
            submission.compile_output = Some(text);
            submission.finish(Verdict::CompilationError);
            return Ok(Prepared::Finished);
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
        let program_files = built.as_ref().map(|b| {
            let mut files = b.files.clone();
            files.push(source_file);
            files
        });
        if program_files.is_none() {
            tracing::warn!("compiler output not copyable; the tests share one run dir");
        }
        if let (Some(cache), Some(key), Some(files)) = (cache, cache_key, built) {
            let artifact = Artifact {
                compile_output: submission.compile_output.clone(),
                ..files
            };
            store(cache, key, artifact).await?;
        }
        Ok(Prepared::Program(program_files))
    }
}

/// The cached artifact of `key`, when there is a cache and it has one; an unreadable
/// cache is a miss.
async fn cached(
    cache: Option<&CompileCache>,
    key: Option<&str>,
) -> Result<Option<Artifact>, WorkerError> {
    let (Some(cache), Some(key)) = (cache, key) else {
        return Ok(None);
    };
    let (cache, key) = (cache.clone(), key.to_owned());
    Ok(
        match tokio::task::spawn_blocking(move || cache.get(&key)).await? {
            Ok(hit) => hit,
            Err(e) => {
                tracing::warn!(error = %e, "compile cache unreadable; compiling");
                None
            }
        },
    )
}

/// Stores a compiled program in the cache; a failure is logged, the job goes on.
async fn store(cache: CompileCache, key: String, artifact: Artifact) -> Result<(), WorkerError> {
    let stored = tokio::task::spawn_blocking(move || cache.put(&key, &artifact)).await?;
    if let Err(e) = stored {
        tracing::warn!(error = %e, "cannot store the compiled program in the cache");
    }
    Ok(())
}

/// The compiler's stderr then stdout, as text, cut at [`COMPILE_OUTPUT_CAP`].
fn compiler_output(outcome: &Outcome) -> String {
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
    text
}

//! Running one command in the sandbox from async code: the limits, environment and
//! program path of a run, fresh run directories per test and their removal, all on
//! tokio's blocking pool.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::mpsc;
use verdict_broker::{LimitBoost, Limits};
use verdict_sandbox::{Outcome, RunDir, RunSpec, Sandbox, StreamKind};

use crate::cache::ArtifactFile;
use crate::error::WorkerError;
use crate::Worker;

/// The sandbox limits of a run: the request's (or the compile step's) plus the language's
/// boost from the catalogue; the limits the service does not set (file size, open files,
/// stack) are the sandbox's own defaults.
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

//! The GraphQL schema (design.md, "GraphQL"). Names here are a fixed contract.

use std::sync::Arc;

use async_graphql::{
    Context, Enum, InputObject, Interface, Object, Result, Schema, SimpleObject, Subscription, ID,
};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use verdict_broker::{
    watch, Catalogue, Event, EventKind, Filler, Job, LiveToolchains, SharedBroker, TestCase, Wanted,
};

use async_graphql::ErrorExtensions;

use crate::auth::Caller;
use crate::error::{gql, ApiError};
use crate::metrics::Metrics;
use crate::problems::{
    redact_result, redact_submission, GroupResult, Problem, ProblemInput, Roles,
};
use crate::validate::{InputPolicy, RawSubmit, RequestedLimits};

/// The executable schema type.
pub type VerdictSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// What resolvers need; put into the schema's data once.
pub struct ApiState {
    pub broker: SharedBroker,
    pub catalogue: Arc<Catalogue>,
    /// What the live workers can run (cached briefly): `Language.available` and the
    /// submit check.
    pub live_toolchains: LiveToolchains,
    pub policy: InputPolicy,
    pub metrics: Arc<Metrics>,
    /// Fires on shutdown: WebSockets close with 1001 (subscriptions never `complete`
    /// because of it; clients resubscribe with `afterSeq`).
    pub shutdown: CancellationToken,
    /// Stored problems (problems.rs).
    pub problems: verdict_broker::SharedProblems,
    /// Who may manage problems and see hidden tests.
    pub roles: Roles,
    /// The live verdict feed behind `finishedSubmissions` (feed.rs).
    pub feed: Arc<crate::feed::FeedWatch>,
}

/// Builds the schema around `state`.
pub fn build(state: Arc<ApiState>) -> VerdictSchema {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(state)
        .finish()
}

/// The SDL, as `verdict schema` prints it and `schema.graphql` holds it.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

fn clamp(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "verdict_broker::Status")]
pub enum Status {
    Queued,
    Compiling,
    Running,
    Finished,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "verdict_broker::Verdict")]
pub enum Verdict {
    Accepted,
    WrongAnswer,
    TimeLimitExceeded,
    MemoryLimitExceeded,
    OutputLimitExceeded,
    RuntimeError,
    CompilationError,
    Cancelled,
    InternalError,
}

/// How output is compared with `expectedOutput`.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
#[graphql(remote = "verdict_broker::CompareMode")]
pub enum CompareMode {
    /// Byte for byte.
    Exact,
    /// Trailing whitespace per line and trailing blank lines ignored; CRLF = LF.
    #[default]
    TrimTrailing,
    /// Whitespace-separated tokens equal.
    Tokens,
    /// Like TOKENS, but tokens that are both finite numbers match when the absolute or
    /// the relative error is within `SubmitInput.epsilon` (default 1e-6).
    Float,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "verdict_broker::Stream", name = "Stream")]
pub enum Stream_ {
    Stdout,
    Stderr,
}

/// A language of the catalogue.
pub struct Language(verdict_broker::Language);

#[Object]
impl Language {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The toolchain's version line, as a live worker detected it at its start-up (else as
    /// this server did); "unavailable" when missing.
    async fn version(&self, ctx: &Context<'_>) -> String {
        let s = state(ctx).ok();
        let live = match s {
            Some(s) => s
                .live_toolchains
                .get(s.broker.as_ref())
                .await
                .ok()
                .flatten(),
            None => None,
        };
        live.and_then(|live| live.get(&self.0.id).cloned())
            .or_else(|| self.0.detected_version.clone())
            .unwrap_or_else(|| "unavailable".into())
    }
    async fn compiled(&self) -> bool {
        self.0.compiled()
    }
    /// Whether some live worker has this language's toolchain (false while no worker is
    /// alive). `submit` refuses a language that live workers lack.
    async fn available(&self, ctx: &Context<'_>) -> Result<bool> {
        let s = state(ctx)?;
        let live = s
            .live_toolchains
            .get(s.broker.as_ref())
            .await
            .map_err(gql)?;
        Ok(live.is_some_and(|live| live.contains_key(&self.0.id)))
    }
    /// The Debian package (or other install) that provides the toolchain, from the
    /// catalogue.
    async fn package(&self) -> Option<&str> {
        self.0.package.as_deref()
    }
}

/// Refuses a language that no live worker has the toolchain for. With no live worker at
/// all nobody can tell, so the submission is queued for the next one, as before. A
/// broker failure here is left to `submit` itself to report.
async fn check_toolchain(s: &ApiState, language: &str) -> Result<(), ApiError> {
    match s.live_toolchains.get(s.broker.as_ref()).await {
        Ok(Some(live)) if !live.contains_key(language) => {
            let lang = s.catalogue.get(language);
            let name = lang.map_or(language, |l| l.name.as_str());
            let package = lang
                .and_then(|l| l.package.as_deref())
                .map(|p| format!(" (package: {p})"))
                .unwrap_or_default();
            Err(ApiError::bad(
                "language",
                format!(
                    "language \"{language}\" is unavailable: the {name} toolchain is not \
                     installed on any live worker{package}"
                ),
            ))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the live workers' toolchains");
            Ok(())
        }
    }
}

/// The outcome of one test.
pub struct TestResult(verdict_broker::TestResult);

#[Object]
impl TestResult {
    /// 1-based position in the submission's tests.
    async fn index(&self) -> i32 {
        clamp(u64::from(self.0.index))
    }
    async fn verdict(&self) -> Verdict {
        self.0.verdict.into()
    }
    /// CPU time (user + system) in milliseconds.
    async fn time_ms(&self) -> i32 {
        clamp(self.0.time_ms)
    }
    async fn wall_time_ms(&self) -> i32 {
        clamp(self.0.wall_time_ms)
    }
    /// Peak memory in KiB.
    async fn memory_kb(&self) -> i32 {
        clamp(self.0.memory_kb)
    }
    async fn exit_code(&self) -> Option<i32> {
        self.0.exit_code
    }
    /// The signal number, when the program was killed by one.
    async fn signal(&self) -> Option<i32> {
        self.0.signal
    }
    async fn stdout(&self) -> &str {
        &self.0.stdout
    }
    async fn stderr(&self) -> &str {
        &self.0.stderr
    }
    /// True when stdout or stderr was cut at the output limit.
    async fn truncated(&self) -> bool {
        self.0.truncated
    }
    /// The problem test's name, group and sample flag (problem submissions).
    async fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }
    async fn group(&self) -> Option<&str> {
        self.0.group.as_deref()
    }
    async fn sample(&self) -> bool {
        self.0.sample
    }
    /// What the checker program said; null for a hidden test unless the caller is admin.
    async fn checker_message(&self) -> Option<&str> {
        self.0.checker_message.as_deref()
    }
    /// The test's score in [0, 1] (problem submissions).
    async fn score(&self) -> Option<f64> {
        self.0.score.map(|p| p.0)
    }
}

/// A submission's public record.
pub struct Submission(verdict_broker::Submission);

#[Object]
impl Submission {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn language(&self) -> ID {
        ID(self.0.language.clone())
    }
    async fn status(&self) -> Status {
        self.0.status.into()
    }
    async fn verdict(&self) -> Option<Verdict> {
        self.0.verdict.map(Into::into)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    async fn compile_output(&self) -> Option<&str> {
        self.0.compile_output.as_deref()
    }
    /// One result per test run, in order. With `stopOnFirstFailure`, the tests after the
    /// first failure are skipped: they have no result here (and no RunningEvent or
    /// TestFinishedEvent), so `tests` is shorter than `testCount`.
    async fn tests(&self) -> Vec<TestResult> {
        self.0.tests.iter().cloned().map(TestResult).collect()
    }
    /// Number of tests requested (a plain run counts as one).
    async fn test_count(&self) -> i32 {
        clamp(u64::from(self.0.test_count))
    }
    /// True when the worker found the compiled program in its compile cache and skipped
    /// compiling (its CompilingEvent then says `cached: true`).
    async fn compile_cached(&self) -> bool {
        self.0.compile_cached
    }
    /// The largest CPU time over the tests.
    async fn time_ms(&self) -> Option<i32> {
        self.0.time_ms.map(clamp)
    }
    /// The largest peak memory over the tests.
    async fn memory_kb(&self) -> Option<i32> {
        self.0.memory_kb.map(clamp)
    }
    /// Why it ended as INTERNAL_ERROR or CANCELLED, for humans.
    async fn message(&self) -> Option<&str> {
        self.0.message.as_deref()
    }
    /// The problem and the version it is judged against (pinned at submit).
    async fn problem_id(&self) -> Option<ID> {
        self.0.problem_id.clone().map(ID)
    }
    async fn problem_version(&self) -> Option<i32> {
        self.0.problem_version.map(|v| clamp(u64::from(v)))
    }
    /// The sum of the groups' scores, once finished (problem submissions).
    async fn score(&self) -> Option<f64> {
        self.0.score.map(|p| p.0)
    }
    /// The sum of the groups' points (problem submissions).
    async fn max_score(&self) -> Option<f64> {
        self.0.max_score.map(|p| p.0)
    }
    /// One per group of the problem, once finished.
    async fn groups(&self) -> Vec<GroupResult> {
        self.0.groups.iter().map(GroupResult::from).collect()
    }
}

macro_rules! event_object {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(SimpleObject)]
        pub struct $name {
            pub submission_id: ID,
            pub seq: i32,
            pub at: DateTime<Utc>,
            $($(#[$fdoc])* pub $field: $ty,)*
        }
    };
}

event_object!(
    /// The submission is waiting for a worker.
    QueuedEvent { /// 1-based place in the queue when it was queued.
    position: Option<i32> }
);
event_object!(
    /// Compilation started, or (`cached`) was skipped.
    CompilingEvent {
        /// True when the worker's compile cache held this program (same language,
        /// toolchain version, compile command and source): no compiler runs, and the
        /// first RunningEvent follows at once.
        cached: bool
    }
);
event_object!(
    /// Test `test` of `tests` started.
    RunningEvent { test: i32, tests: i32 }
);
event_object!(
    /// A chunk of a running test's output.
    OutputEvent { test: i32, stream: Stream_, chunk: String }
);

event_object!(
    /// A test finished.
    TestFinishedEvent { result: TestResult }
);
event_object!(
    /// The submission finished; the last event of its stream.
    FinishedEvent { submission: Submission }
);

/// Every status change of a submission; `seq` starts at 1 and grows by one per event.
/// (Variant names are the GraphQL type names, GitHub style: `ClosedEvent`, ...)
#[allow(clippy::enum_variant_names)]
#[derive(Interface)]
#[graphql(
    field(name = "submission_id", ty = "&ID"),
    field(name = "seq", ty = "&i32"),
    field(name = "at", ty = "&DateTime<Utc>")
)]
pub enum SubmissionEvent {
    QueuedEvent(QueuedEvent),
    CompilingEvent(CompilingEvent),
    RunningEvent(RunningEvent),
    OutputEvent(OutputEvent),
    TestFinishedEvent(TestFinishedEvent),
    FinishedEvent(FinishedEvent),
}

impl From<Event> for SubmissionEvent {
    fn from(e: Event) -> Self {
        let (submission_id, seq, at) = (ID(e.submission_id), clamp(e.seq), e.at);
        match e.kind {
            EventKind::Queued { position } => SubmissionEvent::QueuedEvent(QueuedEvent {
                submission_id,
                seq,
                at,
                position: position.map(clamp),
            }),
            EventKind::Compiling => SubmissionEvent::CompilingEvent(CompilingEvent {
                submission_id,
                seq,
                at,
                cached: false,
            }),
            EventKind::CompileCached => SubmissionEvent::CompilingEvent(CompilingEvent {
                submission_id,
                seq,
                at,
                cached: true,
            }),
            EventKind::Running { test, tests } => SubmissionEvent::RunningEvent(RunningEvent {
                submission_id,
                seq,
                at,
                test: clamp(u64::from(test)),
                tests: clamp(u64::from(tests)),
            }),
            EventKind::Output {
                test,
                stream,
                chunk,
            } => SubmissionEvent::OutputEvent(OutputEvent {
                submission_id,
                seq,
                at,
                test: clamp(u64::from(test)),
                stream: stream.into(),
                chunk,
            }),
            EventKind::TestFinished { result } => {
                SubmissionEvent::TestFinishedEvent(TestFinishedEvent {
                    submission_id,
                    seq,
                    at,
                    result: TestResult(result),
                })
            }
            EventKind::Finished { submission } => SubmissionEvent::FinishedEvent(FinishedEvent {
                submission_id,
                seq,
                at,
                submission: Submission(*submission),
            }),
        }
    }
}

/// Resource limits; each optional, server defaults and maxima apply.
#[derive(InputObject, Default)]
pub struct LimitsInput {
    pub cpu_time_ms: Option<i32>,
    pub wall_time_ms: Option<i32>,
    pub memory_kb: Option<i32>,
    pub output_bytes: Option<i32>,
    pub processes: Option<i32>,
}

/// One judged run.
#[derive(InputObject)]
pub struct TestInput {
    pub stdin: String,
    pub expected_output: Option<String>,
}

/// A program to run.
#[derive(InputObject)]
pub struct SubmitInput {
    /// A language id from `languages`, e.g. "python3".
    pub language: ID,
    pub source: String,
    /// Used when `tests` is absent: one run, no expected output.
    pub stdin: Option<String>,
    /// Judged runs, in order, against one compiled program.
    pub tests: Option<Vec<TestInput>>,
    pub limits: Option<LimitsInput>,
    #[graphql(default)]
    pub compare: CompareMode,
    /// Tolerance of compare mode FLOAT (absolute or relative error); only with FLOAT.
    pub epsilon: Option<f64>,
    /// Skip the remaining tests after the first that is not accepted. A skipped test
    /// gets no result: `Submission.tests` ends at the failing test, `testCount` still
    /// says how many were requested.
    #[graphql(default)]
    pub stop_on_first_failure: bool,
    /// Judge against this stored problem's current version (its tests, checker, groups
    /// and limits); then `stdin`, `tests`, `limits`, `compare` and `epsilon` are not given.
    pub problem_id: Option<ID>,
}

/// The shared state. Missing state is our wiring bug, so it is coded INTERNAL: the
/// Guard extension takes any error without a code for async-graphql refusing the
/// client's input (limits.rs, `code_input_errors`), and ours must not look like that.
fn state<'a>(ctx: &Context<'a>) -> Result<&'a Arc<ApiState>> {
    ctx.data::<Arc<ApiState>>().map_err(|e| {
        tracing::error!(error = %e.message, "the schema was built without its state");
        ApiError::Internal.extend()
    })
}

/// The span for work on one submission: every log line inside it carries the id, as the
/// worker's `job` span does, so one id finds a submission's whole story in the logs.
fn span(id: &str) -> tracing::Span {
    tracing::info_span!("request", submission = %id)
}

/// Who is asking (auth.rs); anonymous when the transport set no caller.
fn caller<'a>(ctx: &Context<'a>) -> Caller {
    ctx.data_opt::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous { ip: None })
}

/// A submission the caller may not see is reported exactly like an unknown id. An admin
/// key sees every submission, whoever owns it.
fn visible(
    record: Option<verdict_broker::Submission>,
    caller: &Caller,
    roles: &Roles,
) -> Option<verdict_broker::Submission> {
    record.filter(|r| roles.is_admin(caller) || caller.may_see(r.owner.as_deref()))
}

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The languages this service runs.
    async fn languages(&self, ctx: &Context<'_>) -> Result<Vec<Language>> {
        Ok(state(ctx)?
            .catalogue
            .languages()
            .iter()
            .cloned()
            .map(Language)
            .collect())
    }

    /// A submission by id; null when unknown or expired.
    async fn submission(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Submission>> {
        let s = state(ctx)?;
        async {
            let record = s.broker.submission(&id).await.map_err(gql)?;
            let who = caller(ctx);
            let mut record = visible(record, &who, &s.roles);
            if !s.roles.sees_hidden(&who) {
                record.iter_mut().for_each(redact_submission);
            }
            Ok(record.map(Submission))
        }
        .instrument(span(&id))
        .await
    }

    /// A problem's current version; null when unknown.
    async fn problem(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Problem>> {
        let s = state(ctx)?;
        let stored = s.problems.get(&id).await.map_err(gql)?;
        Ok(stored.map(|stored| Problem {
            stored,
            store: Arc::clone(&s.problems),
        }))
    }

    /// Every problem's current version.
    async fn problems(&self, ctx: &Context<'_>) -> Result<Vec<Problem>> {
        let s = state(ctx)?;
        let all = s.problems.list().await.map_err(gql)?;
        Ok(all
            .into_iter()
            .map(|stored| Problem {
                stored,
                store: Arc::clone(&s.problems),
            })
            .collect())
    }

    /// The queue and the workers right now.
    async fn stats(&self, ctx: &Context<'_>) -> Result<Stats> {
        let stats = state(ctx)?.broker.stats().await.map_err(gql)?;
        Ok(Stats {
            waiting: clamp(stats.waiting),
            pending: clamp(stats.pending),
            workers: stats
                .workers
                .into_iter()
                .map(|w| WorkerStatus {
                    name: w.name,
                    last_heartbeat: w.last_heartbeat,
                    running: clamp(u64::from(w.running)),
                    slots: clamp(u64::from(w.slots)),
                })
                .collect(),
        })
    }
}

/// What the queue holds and who works on it.
#[derive(SimpleObject)]
pub struct Stats {
    /// Jobs no worker has taken yet.
    pub waiting: i32,
    /// Jobs taken but not finished (running, or held by a dead worker until reclaimed).
    pub pending: i32,
    /// Workers with a heartbeat in the last 30 seconds.
    pub workers: Vec<WorkerStatus>,
}

/// A live worker process.
#[derive(SimpleObject)]
pub struct WorkerStatus {
    pub name: String,
    pub last_heartbeat: DateTime<Utc>,
    /// Jobs it runs right now.
    pub running: i32,
    /// Jobs it can run at once.
    pub slots: i32,
}

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Queues a program; returns at once with status QUEUED.
    async fn submit(&self, ctx: &Context<'_>, input: SubmitInput) -> Result<Submission> {
        let s = state(ctx)?;
        let problem_id = input.problem_id.clone();
        caller(ctx)
            .may_submit(problem_id.as_ref().map(|p| p.as_str()))
            .map_err(|why| ApiError::Forbidden(why).extend())?;
        if problem_id.is_some() {
            crate::problems::check_problem_submit(
                input.stdin.is_some(),
                input.tests.is_some(),
                input.limits.is_some(),
                input.epsilon.is_some(),
            )
            .map_err(|e| e.extend())?;
        }
        let limits = input.limits.unwrap_or_default();
        let raw = RawSubmit {
            language: input.language.0,
            source: input.source,
            stdin: input.stdin,
            tests: input.tests.map(|tests| {
                tests
                    .into_iter()
                    .map(|t| TestCase {
                        stdin: t.stdin,
                        expected_output: t.expected_output,
                    })
                    .collect()
            }),
            limits: RequestedLimits {
                cpu_time_ms: limits.cpu_time_ms,
                wall_time_ms: limits.wall_time_ms,
                memory_kb: limits.memory_kb,
                output_bytes: limits.output_bytes,
                processes: limits.processes,
            },
            compare: input.compare.into(),
            epsilon: input.epsilon,
            stop_on_first_failure: input.stop_on_first_failure,
        };
        let mut request = s.policy.check(&s.catalogue, raw).map_err(|e| e.extend())?;
        let pinned = match problem_id {
            Some(pid) => {
                let problem = s.problems.get(&pid).await.map_err(gql)?.ok_or_else(|| {
                    ApiError::bad("problemId", format!("unknown problem \"{}\"", pid.0)).extend()
                })?;
                Some(crate::problems::pin(&mut request, &problem, &s.policy))
            }
            None => None,
        };
        check_toolchain(s, &request.language)
            .await
            .map_err(|e| e.extend())?;
        // Random (v4) ids: an id reveals nothing and cannot be guessed from another.
        let id = uuid::Uuid::new_v4().to_string();
        let owner = caller(ctx).owner().map(str::to_owned);
        let mut submission = verdict_broker::Submission::queued(id, owner, &request);
        if let Some(pinned) = pinned {
            pinned.apply(&mut submission);
        }
        let job = Job {
            submission,
            request,
        };
        let span = span(&job.submission.id);
        async move {
            s.broker.submit(&job).await.map_err(gql)?;
            tracing::info!(
                language = %job.request.language,
                owner = job.submission.owner.as_deref().unwrap_or("-"),
                tests = job.request.tests.len(),
                "submitted"
            );
            s.metrics.submitted();
            Ok(Submission(job.submission))
        }
        .instrument(span)
        .await
    }

    /// Creates a problem, or replaces it with a new version (admin only).
    async fn put_problem(&self, ctx: &Context<'_>, input: ProblemInput) -> Result<Problem> {
        let s = state(ctx)?;
        s.roles
            .require_manage(&caller(ctx))
            .map_err(|e| e.extend())?;
        let (problem, upload) =
            crate::problems::build(input, &s.policy, &s.catalogue).map_err(|e| e.extend())?;
        let stored = s.problems.put(problem, upload).await.map_err(gql)?;
        tracing::info!(problem = %stored.id, version = stored.version, tests = stored.tests.len(), "problem stored");
        Ok(Problem {
            stored,
            store: Arc::clone(&s.problems),
        })
    }

    /// Imports a Kattis problem package (a zip, as a GraphQL multipart upload) as a new
    /// version of problem `id` (admin only). A bad package is BAD_USER_INPUT naming the
    /// file, and nothing of it is stored.
    async fn import_problem(
        &self,
        ctx: &Context<'_>,
        id: ID,
        package: async_graphql::Upload,
    ) -> Result<Problem> {
        let s = state(ctx)?;
        s.roles
            .require_manage(&caller(ctx))
            .map_err(|e| e.extend())?;
        let upload = package.value(ctx).map_err(|e| {
            ApiError::bad("package", format!("cannot read the upload: {e}")).extend()
        })?;
        let (problem, data) = crate::package::build_zip(
            upload.content,
            id.0,
            s.policy.clone(),
            Arc::clone(&s.catalogue),
        )
        .await
        .map_err(|e| e.extend())?;
        let stored = s.problems.put(problem, data).await.map_err(gql)?;
        tracing::info!(problem = %stored.id, version = stored.version, tests = stored.tests.len(), file = %upload.filename, "problem package imported");
        Ok(Problem {
            stored,
            store: Arc::clone(&s.problems),
        })
    }

    /// Deletes a problem (admin only); false when unknown. Submissions already queued
    /// against it are still judged on their version.
    async fn delete_problem(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = state(ctx)?;
        s.roles
            .require_manage(&caller(ctx))
            .map_err(|e| e.extend())?;
        s.problems.delete(&id).await.map_err(gql)
    }

    /// Cancels a submission that has not finished; a finished one is returned unchanged.
    async fn cancel(&self, ctx: &Context<'_>, id: ID) -> Result<Submission> {
        let s = state(ctx)?;
        let who = caller(ctx);
        async {
            let record = s.broker.submission(&id).await.map_err(gql)?;
            let Some(mut record) = visible(record, &who, &s.roles) else {
                return Err(ApiError::NotFound(id.to_string()).extend());
            };
            if record.status != verdict_broker::Status::Finished {
                record.message = Some("cancelled by the client".into());
                record.finish(verdict_broker::Verdict::Cancelled);
                if s.broker.finish(&record).await.map_err(gql)?.is_some() {
                    tracing::info!("cancelled");
                }
            }
            let mut latest = s
                .broker
                .submission(&id)
                .await
                .map_err(gql)?
                .unwrap_or(record);
            if !s.roles.sees_hidden(&who) {
                redact_submission(&mut latest);
            }
            Ok(Submission(latest))
        }
        .instrument(span(&id))
        .await
    }
}

pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Every event of a submission: the past ones replayed, then live ones; completes
    /// after FinishedEvent. `afterSeq` resumes after a reconnect without repeats.
    /// `output: false` opts out of live output: no OutputEvents are sent (their `seq`
    /// numbers are then skipped); the final stdout and stderr are in each TestResult.
    async fn submission_events(
        &self,
        ctx: &Context<'_>,
        id: ID,
        after_seq: Option<i32>,
        #[graphql(default = true)] output: bool,
    ) -> Result<impl Stream<Item = Result<SubmissionEvent>>> {
        let s = state(ctx)?;
        let after = u64::try_from(after_seq.unwrap_or(0).max(0)).unwrap_or(0);
        let span = span(&id);
        let who = caller(ctx);
        let events = async {
            // With API keys, only the owner (or an admin key) may watch; others get the
            // unknown-id error.
            // (On an open API nothing has an owner, so the extra read is skipped.)
            if who.owner().is_some() {
                let record = s.broker.submission(&id).await.map_err(gql)?;
                if visible(record, &who, &s.roles).is_none() {
                    return Err(ApiError::NotFound(id.to_string()).extend());
                }
            }
            let events = watch(Arc::clone(&s.broker), &id, after)
                .await
                .map_err(gql)?;
            tracing::debug!(after, "subscribed");
            Ok(events)
        }
        .instrument(span.clone())
        .await?;
        // Replayed TestFinished and Finished events (and a finished run's chunks) refer
        // to the record: it is read, once, only for what this selection shows.
        let look = ctx.look_ahead();
        let result = look.field("result");
        let wanted = Wanted {
            chunks: look.field("chunk").exists(),
            test_outputs: result.field("stdout").exists() || result.field("stderr").exists(),
            record: look.field("submission").exists(),
        };
        let filler = Filler::new(Arc::clone(&s.broker), wanted);
        let filler = Arc::new(tokio::sync::Mutex::new(filler));
        let guard = s.metrics.subscription();
        let redact = !s.roles.sees_hidden(&who);
        // No `take_until(shutdown)`: a stream that ends on shutdown reads as `complete`
        // without a verdict, and the client never resubscribes. On shutdown the socket
        // closes with 1001 instead (ws.rs) and the client resumes with `afterSeq`.
        Ok(events
            .filter(move |item| {
                let keep =
                    output || !matches!(item, Ok(e) if matches!(e.kind, EventKind::Output { .. }));
                std::future::ready(keep)
            })
            .then(move |item| {
                let filler = Arc::clone(&filler);
                async move {
                    let mut event = item?;
                    filler.lock().await.fill(&mut event).await?;
                    Ok(event)
                }
            })
            .map(move |item| {
                let _alive = &guard;
                item.map(|mut event| {
                    if redact {
                        match &mut event.kind {
                            EventKind::TestFinished { result } => redact_result(result),
                            EventKind::Finished { submission } => redact_submission(submission),
                            _ => {}
                        }
                    }
                    SubmissionEvent::from(event)
                })
                .map_err(|e| span.in_scope(|| gql(e)))
            }))
    }

    /// Every submission that finishes from the moment this starts, as its final record:
    /// the verdict feed (README, "The verdict feed"), served the same way on both
    /// backends. Admin keys only (or anyone on an open API, where hidden tests' data stay
    /// hidden). With `problemId`, only that problem's submissions.
    async fn finished_submissions(
        &self,
        ctx: &Context<'_>,
        problem_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<Submission>>> {
        let s = state(ctx)?;
        let who = caller(ctx);
        if !s.roles.may_manage(&who) {
            return Err(ApiError::Forbidden(
                "finishedSubmissions needs an admin API key (`name:sha256hex:admin`)".into(),
            )
            .extend());
        }
        let redact = !s.roles.sees_hidden(&who);
        let live = s
            .feed
            .live(problem_id.map(|p| p.to_string()))
            .await
            .map_err(gql)?;
        let guard = s.metrics.subscription();
        Ok(live.map(move |item| {
            let _alive = &guard;
            item.map(|mut record| {
                if redact {
                    redact_submission(&mut record);
                }
                Submission(record)
            })
            .map_err(gql)
        }))
    }
}

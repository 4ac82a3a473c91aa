//! The data that travels between server and worker: submissions, jobs and events.
//!
//! Everything here is serde so the same values go through Redis and through the in-memory
//! broker unchanged. GraphQL shapes live in the server; these are the wire and storage forms.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The name a unit enum has on the wire (`"ACCEPTED"`, `"RUNNING"`, ...), as Redis keys,
/// fields and metrics labels spell it: derived from serde so it is written only once.
pub fn wire_name<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// Where a submission is in its life. Moves forward only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Queued,
    Compiling,
    Running,
    Finished,
}

/// The judge's outcome, per test and per submission (design.md, "Verdicts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
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

/// How a test's output is compared with its expected output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareMode {
    Exact,
    #[default]
    TrimTrailing,
    Tokens,
    /// Tokens equal, numbers within `Request::epsilon` (absolute or relative error).
    Float,
}

/// The tolerance of [`CompareMode::Float`]. Compared by bits so `Request` stays `Eq`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epsilon(pub f64);

impl PartialEq for Epsilon {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Epsilon {}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Limits after the server applied its defaults and maxima; the worker trusts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_time_ms: u64,
    pub wall_time_ms: u64,
    pub memory_kb: u64,
    pub output_bytes: u64,
    pub processes: u64,
}

/// One judged run: its input and, optionally, the output it must produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCase {
    pub stdin: String,
    pub expected_output: Option<String>,
}

/// What a worker needs to run a submission. Carried in the job, not in the public record,
/// so the source never leaks through `submission(id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub language: String,
    pub source: String,
    pub tests: Vec<TestCase>,
    pub limits: Limits,
    pub compare: CompareMode,
    /// The tolerance when `compare` is FLOAT.
    #[serde(default)]
    pub epsilon: Option<Epsilon>,
    #[serde(default)]
    pub stop_on_first_failure: bool,
}

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    pub index: u32,
    pub verdict: Verdict,
    pub time_ms: u64,
    pub wall_time_ms: u64,
    pub memory_kb: u64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// True when stdout or stderr was cut at the output limit.
    #[serde(default)]
    pub truncated: bool,
}

/// Most bytes of each output stream carried inside one event (TestFinishedEvent,
/// FinishedEvent). Events are fanned out to every subscriber and kept in the log; large
/// outputs are read once from the record instead.
pub const EVENT_OUTPUT_CAP: usize = 1024 * 1024;

fn cap_text(text: &str) -> (String, bool) {
    if text.len() <= EVENT_OUTPUT_CAP {
        return (text.to_owned(), false);
    }
    let cut = (0..=EVENT_OUTPUT_CAP)
        .rev()
        .find(|&k| text.is_char_boundary(k))
        .unwrap_or(0);
    (text[..cut].to_owned(), true)
}

impl TestResult {
    /// This result with stdout and stderr cut to [`EVENT_OUTPUT_CAP`]; `truncated` is set
    /// when anything was cut.
    pub fn for_event(&self) -> TestResult {
        let (stdout, a) = cap_text(&self.stdout);
        let (stderr, b) = cap_text(&self.stderr);
        TestResult {
            stdout,
            stderr,
            truncated: self.truncated || a || b,
            ..self.clone()
        }
    }
}

/// The public record of a submission, as `submission(id)` and FinishedEvent show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub id: String,
    /// The API key name that owns it, when the server uses keys.
    #[serde(default)]
    pub owner: Option<String>,
    pub language: String,
    pub status: Status,
    pub verdict: Option<Verdict>,
    pub created_at: DateTime<Utc>,
    /// When the worker that finished it began (compile or first test); the queue-wait
    /// and run-time histograms are measured from it.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub compile_output: Option<String>,
    pub tests: Vec<TestResult>,
    pub time_ms: Option<u64>,
    pub memory_kb: Option<u64>,
    /// Number of tests requested (so clients can show "k of n" before results arrive).
    #[serde(default)]
    pub test_count: u32,
    /// Why the submission ended in INTERNAL_ERROR or CANCELLED, for humans.
    #[serde(default)]
    pub message: Option<String>,
    /// True when the compile step was skipped because the worker's compile cache held
    /// the artifact (its CompilingEvent says `cached: true` then).
    #[serde(default)]
    pub compile_cached: bool,
}

impl Submission {
    /// A fresh, queued record.
    pub fn queued(id: String, owner: Option<String>, request: &Request) -> Self {
        Submission {
            id,
            owner,
            language: request.language.clone(),
            status: Status::Queued,
            verdict: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            compile_output: None,
            tests: Vec::new(),
            time_ms: None,
            memory_kb: None,
            test_count: u32::try_from(request.tests.len()).unwrap_or(u32::MAX),
            message: None,
            compile_cached: false,
        }
    }

    /// The copy that travels in FinishedEvent: each test's stdout and stderr cut to
    /// [`EVENT_OUTPUT_CAP`], so events stay small however large the output limit; the
    /// record (`submission(id)`) keeps all of it.
    pub fn for_event(&self) -> Submission {
        let mut copy = self.clone();
        for test in &mut copy.tests {
            *test = test.for_event();
        }
        copy
    }

    /// Marks the record finished with `verdict`, filling the aggregate time and memory.
    pub fn finish(&mut self, verdict: Verdict) {
        self.status = Status::Finished;
        self.verdict = Some(verdict);
        self.finished_at = Some(Utc::now());
        self.time_ms = self.tests.iter().map(|t| t.time_ms).max();
        self.memory_kb = self.tests.iter().map(|t| t.memory_kb).max();
    }
}

/// A unit of work on the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub submission: Submission,
    pub request: Request,
}

/// What happened. `seq` and `at` are assigned by the broker when the event is published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    Queued {
        position: Option<u64>,
    },
    Compiling,
    /// The compiled program came from the worker's compile cache: no compiler ran.
    /// Shown as a CompilingEvent with `cached: true`, so the event order stays fixed.
    CompileCached,
    Running {
        test: u32,
        tests: u32,
    },
    Output {
        test: u32,
        stream: Stream,
        chunk: String,
    },
    TestFinished {
        result: TestResult,
    },
    Finished {
        submission: Box<Submission>,
    },
}

impl EventKind {
    /// The status a submission is in once this event happened, if it changes it.
    pub fn status(&self) -> Option<Status> {
        match self {
            EventKind::Queued { .. } => Some(Status::Queued),
            EventKind::Compiling | EventKind::CompileCached => Some(Status::Compiling),
            EventKind::Running { .. } => Some(Status::Running),
            EventKind::Finished { .. } => Some(Status::Finished),
            EventKind::Output { .. } | EventKind::TestFinished { .. } => None,
        }
    }
}

/// One entry of a submission's event log. `seq` starts at 1 and has no gaps.
///
/// `seq` is the first field on purpose: the Redis script splices the real number into
/// the serialized placeholder `{"seq":0,` without parsing the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub submission_id: String,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// True for the event that ends a submission's stream.
    pub fn is_final(&self) -> bool {
        matches!(self.kind, EventKind::Finished { .. })
    }
}

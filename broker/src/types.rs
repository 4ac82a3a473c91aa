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
    /// Judged against this stored problem version: the worker reads its tests, checker
    /// and groups from the problem store (`tests` is empty then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<crate::problems::ProblemRef>,
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
    /// The problem test's name, group and sample flag (problem submissions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sample: bool,
    /// What the checker program said (its feedback or stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker_message: Option<String>,
    /// The test's score in [0, 1] (problem submissions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<crate::problems::Points>,
}

/// Most bytes of each output stream carried inside one event (TestFinishedEvent,
/// FinishedEvent, where [`FINISHED_EVENT_OUTPUT_CAP`] may cut further). Events are fanned out to every subscriber and kept in the log; large
/// outputs are read once from the record instead.
pub const EVENT_OUTPUT_CAP: usize = 1024 * 1024;

/// Most bytes of output, all tests together, in one FinishedEvent: each stream of each
/// test gets an equal share (at most [`EVENT_OUTPUT_CAP`], at least
/// [`MIN_STREAM_SHARE`]), so a 16-test submission does not send one 32 MiB WebSocket
/// message (more than common clients accept in a frame).
pub const FINISHED_EVENT_OUTPUT_CAP: usize = 4 * 1024 * 1024;

/// The smallest share of a stream in FinishedEvent, however many tests there are.
const MIN_STREAM_SHARE: usize = 4 * 1024;

fn cap_text_to(text: &str, cap: usize) -> (String, bool) {
    if text.len() <= cap {
        return (text.to_owned(), false);
    }
    let cut = (0..=cap)
        .rev()
        .find(|&k| text.is_char_boundary(k))
        .unwrap_or(0);
    (text[..cut].to_owned(), true)
}

impl TestResult {
    /// This result without stdout and stderr (what the log's TestFinishedEvent keeps).
    pub fn without_output(&self) -> TestResult {
        TestResult {
            stdout: String::new(),
            stderr: String::new(),
            ..self.clone()
        }
    }

    /// This result with stdout and stderr cut to [`EVENT_OUTPUT_CAP`]; `truncated` is set
    /// when anything was cut.
    pub fn for_event(&self) -> TestResult {
        self.for_event_within(EVENT_OUTPUT_CAP)
    }

    /// Like [`TestResult::for_event`] with each stream cut to `cap` bytes.
    fn for_event_within(&self, cap: usize) -> TestResult {
        let (stdout, a) = cap_text_to(&self.stdout, cap);
        let (stderr, b) = cap_text_to(&self.stderr, cap);
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
    /// The problem and version it is judged against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_version: Option<u32>,
    /// Sum of the groups' scores, and of their points (problem submissions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<crate::problems::Points>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_score: Option<crate::problems::Points>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<crate::problems::GroupResult>,
    /// 1-based indices of the hidden (non-sample) tests: their inputs and outputs are
    /// shown to admins only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden_tests: Vec<u32>,
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
            problem_id: request.problem.as_ref().map(|p| p.id.clone()),
            problem_version: request.problem.as_ref().map(|p| p.version),
            score: None,
            max_score: None,
            groups: Vec::new(),
            hidden_tests: Vec::new(),
        }
    }

    /// The copy that travels in FinishedEvent: each test's stdout and stderr cut to an
    /// equal share of [`FINISHED_EVENT_OUTPUT_CAP`] (at most [`EVENT_OUTPUT_CAP`]), so
    /// events stay small however large the output limit and however many tests; the
    /// record (`submission(id)`) keeps all of it.
    pub fn for_event(&self) -> Submission {
        let streams = 2 * self.tests.len().max(1);
        let share = (FINISHED_EVENT_OUTPUT_CAP / streams).clamp(MIN_STREAM_SHARE, EVENT_OUTPUT_CAP);
        let mut copy = self.clone();
        for test in &mut copy.tests {
            *test = test.for_event_within(share);
        }
        copy
    }

    /// What the log's FinishedEvent holds in place of the record: nothing (an empty id;
    /// it is not serialized). [`Event::fill`] puts the record back.
    pub fn reference() -> Box<Submission> {
        Box::new(Submission {
            id: String::new(),
            owner: None,
            language: String::new(),
            status: Status::Finished,
            verdict: None,
            created_at: DateTime::UNIX_EPOCH,
            started_at: None,
            finished_at: None,
            compile_output: None,
            tests: Vec::new(),
            time_ms: None,
            memory_kb: None,
            test_count: 0,
            message: None,
            compile_cached: false,
            problem_id: None,
            problem_version: None,
            score: None,
            max_score: None,
            groups: Vec::new(),
            hidden_tests: Vec::new(),
        })
    }

    /// True for [`Submission::reference`].
    #[allow(clippy::borrowed_box)] // the signature serde's skip_serializing_if needs
    pub fn is_reference(s: &Box<Submission>) -> bool {
        s.id.is_empty()
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
        /// Left out of the log's copy ([`Event::outputs_in_record`]): the final record is
        /// exactly what the live event carried (cut to [`EVENT_OUTPUT_CAP`] a stream).
        #[serde(
            default = "Submission::reference",
            skip_serializing_if = "Submission::is_reference"
        )]
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
    /// True for the log's copy of a TestFinishedEvent or FinishedEvent: its outputs
    /// (each test's stdout and stderr, the compile output) are not in it but in the
    /// record, where they are stored once ([`Event::stored`]). Read them with
    /// [`crate::Broker::outputs`] (or [`crate::fill`]) before showing the event. Live
    /// events (Pub/Sub, the returned value of `publish` and `finish`) are complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outputs_in_record: bool,
    /// For the log's copy of an OutputEvent of a finished submission whose chunk is the
    /// record's text of that test and stream at `[offset, offset + len)` (bytes): the
    /// chunk is left out (`outputs_in_record`), the record has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<[usize; 2]>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// True for the event that ends a submission's stream.
    pub fn is_final(&self) -> bool {
        matches!(self.kind, EventKind::Finished { .. })
    }

    /// The copy the event log keeps: a TestFinishedEvent without its result's stdout and
    /// stderr, a FinishedEvent without the record (which is all it carries), marked
    /// [`Event::outputs_in_record`]. Other events are kept as they are (OutputEvents
    /// become references only once the final record holds their text: [`Event::chunk_ref`]).
    pub fn stored(&self) -> Event {
        let kind = match &self.kind {
            EventKind::TestFinished { result } => EventKind::TestFinished {
                result: result.without_output(),
            },
            EventKind::Finished { .. } => EventKind::Finished {
                submission: Submission::reference(),
            },
            _ => return self.clone(),
        };
        Event {
            seq: self.seq,
            submission_id: self.submission_id.clone(),
            at: self.at,
            outputs_in_record: true,
            slice: None,
            kind,
        }
    }

    /// The log's copy of this OutputEvent once the record holds its chunk at `offset`
    /// of the same test and stream.
    pub fn chunk_ref(&self, offset: usize) -> Option<Event> {
        let EventKind::Output {
            test,
            stream,
            chunk,
        } = &self.kind
        else {
            return None;
        };
        Some(Event {
            seq: self.seq,
            submission_id: self.submission_id.clone(),
            at: self.at,
            outputs_in_record: true,
            slice: Some([offset, chunk.len()]),
            kind: EventKind::Output {
                test: *test,
                stream: *stream,
                chunk: String::new(),
            },
        })
    }

    /// Puts the outputs back into a stored event from what the record holds, exactly as
    /// the live event carried them (cut to [`EVENT_OUTPUT_CAP`] a stream). An event that
    /// is not stored by reference, or whose outputs are gone, is left as it is.
    pub fn fill(&mut self, outputs: &Outputs) {
        if !self.outputs_in_record {
            return;
        }
        match (&mut self.kind, outputs) {
            (EventKind::TestFinished { result }, Outputs::Test(full)) => {
                *result = TestResult {
                    stdout: full.stdout.clone(),
                    stderr: full.stderr.clone(),
                    ..result.clone()
                }
                .for_event();
            }
            (EventKind::TestFinished { result }, Outputs::Record(record)) => {
                if let Some(full) = record.tests.iter().find(|t| t.index == result.index) {
                    *result = TestResult {
                        stdout: full.stdout.clone(),
                        stderr: full.stderr.clone(),
                        ..result.clone()
                    }
                    .for_event();
                } else {
                    return;
                }
            }
            (
                EventKind::Output {
                    test,
                    stream,
                    chunk,
                },
                Outputs::Record(record),
            ) => {
                let Some([offset, len]) = self.slice else {
                    return;
                };
                let Some(full) = record.tests.iter().find(|t| t.index == *test) else {
                    return;
                };
                let text = match stream {
                    Stream::Stdout => &full.stdout,
                    Stream::Stderr => &full.stderr,
                };
                let Some(part) = offset
                    .checked_add(len)
                    .and_then(|end| text.get(offset..end))
                else {
                    return;
                };
                part.clone_into(chunk);
                self.slice = None;
            }
            (EventKind::Finished { submission }, Outputs::Record(record)) => {
                **submission = record.for_event();
            }
            _ => return,
        }
        self.outputs_in_record = false;
    }
}

/// Where the outputs of a stored event are, as [`crate::Broker::outputs`] finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outputs {
    /// The result of one finished test of a submission still running.
    Test(TestResult),
    /// The final record: every test's output and the compile output.
    Record(Submission),
    /// Expired, evicted, or never stored.
    Gone,
}

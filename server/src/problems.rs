//! Problems over GraphQL: the types, `putProblem` validation, roles and secrecy.
//!
//! Secrecy: a test that is not a sample is hidden. A caller who is not an admin key never
//! gets a hidden test's stdin or expected output (the Problem type shows samples only),
//! nor the program's stdout, stderr or checker message on it ([`redact_submission`],
//! [`redact_result`]; the worker publishes no OutputEvent for hidden tests at all).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use async_graphql::{Enum, InputObject, Object, Result, SimpleObject, ID};
use verdict_broker::{
    Catalogue, Checker, CheckerFile, CheckerProgram, Epsilon, Limits, Points, Problem as Stored,
    ProblemTest, ProblemUpload, SharedProblems, TestGroup as StoredGroup,
};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::schema::{CompareMode, LimitsInput};
use crate::validate::InputPolicy;

/// Tests one problem may have.
pub const MAX_PROBLEM_TESTS: usize = 1000;

/// Who may manage problems and see hidden tests.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    /// No keys configured (open loopback mode): every caller may manage problems.
    pub open: bool,
    /// Names of the keys configured as `name:sha256hex:admin`.
    pub admins: Arc<HashSet<String>>,
}

impl Roles {
    /// An admin key.
    pub fn is_admin(&self, caller: &Caller) -> bool {
        caller
            .owner()
            .is_some_and(|name| self.admins.contains(name))
    }

    /// May put, import and delete problems: an admin key, or anyone on an open API.
    pub fn may_manage(&self, caller: &Caller) -> bool {
        self.open || self.is_admin(caller)
    }

    /// Sees hidden tests' data and outputs: admin keys only (an open API keeps the
    /// secrecy rules: being allowed to manage is not being allowed to read answers).
    pub fn sees_hidden(&self, caller: &Caller) -> bool {
        self.is_admin(caller)
    }

    /// FORBIDDEN unless the caller may manage problems.
    pub fn require_manage(&self, caller: &Caller) -> Result<(), ApiError> {
        if self.may_manage(caller) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "managing problems needs an admin API key (`name:sha256hex:admin`)".into(),
            ))
        }
    }
}

/// True for a result of a hidden problem test.
pub fn is_hidden(result: &verdict_broker::TestResult) -> bool {
    result.group.is_some() && !result.sample
}

/// A hidden test's result as a non-admin caller sees it: no output, no checker message.
pub fn redact_result(result: &mut verdict_broker::TestResult) {
    if is_hidden(result) {
        result.stdout.clear();
        result.stderr.clear();
        result.checker_message = None;
    }
}

/// A submission record as a non-admin caller sees it.
pub fn redact_submission(submission: &mut verdict_broker::Submission) {
    for test in &mut submission.tests {
        redact_result(test);
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
#[graphql(remote = "verdict_broker::GroupScoring")]
pub enum GroupScoring {
    /// All the points when every test of the group is accepted, else 0.
    #[default]
    AllOrNothing,
    /// points x (sum of test scores) / tests.
    PerTest,
    /// points x the smallest test score.
    Min,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "verdict_broker::CheckerProtocol")]
pub enum CheckerProtocol {
    /// Kattis output validator: `checker input answer feedback_dir < output`; exit 42
    /// accepted, 43 wrong; `feedback_dir/judgemessage.txt` is the message, `score.txt`
    /// the test's score (0..1).
    Kattis,
    /// testlib: `checker input output answer`; exit 0 accepted, 1 and 2 wrong, 7 partial
    /// (score 0..1 = the first number in the checker's stdout); stderr is the message.
    Testlib,
}

/// A file compiled with the checker, e.g. `testlib.h`.
#[derive(InputObject)]
pub struct FileInput {
    pub name: String,
    pub content: String,
}

#[derive(InputObject)]
pub struct CheckerProgramInput {
    pub protocol: CheckerProtocol,
    pub language: ID,
    pub source: String,
    pub files: Option<Vec<FileInput>>,
}

/// A built-in compare mode, or a checker program.
#[derive(InputObject)]
pub struct CheckerInput {
    pub compare: Option<CompareMode>,
    pub epsilon: Option<f64>,
    pub program: Option<CheckerProgramInput>,
}

#[derive(InputObject)]
pub struct ProblemTestInput {
    pub name: Option<String>,
    pub stdin: String,
    pub expected_output: Option<String>,
    #[graphql(default)]
    pub sample: bool,
    pub group: Option<String>,
}

#[derive(InputObject)]
pub struct TestGroupInput {
    pub name: String,
    pub points: f64,
    #[graphql(default)]
    pub scoring: GroupScoring,
}

#[derive(InputObject)]
pub struct ProblemInput {
    /// `[a-z0-9][a-z0-9_-]{0,63}`
    pub id: ID,
    pub title: String,
    /// Markdown.
    pub statement: Option<String>,
    /// Per test; server defaults and maxima apply.
    pub limits: Option<LimitsInput>,
    pub tests: Vec<ProblemTestInput>,
    /// Absent: one group "all" with every test, 100 points, ALL_OR_NOTHING.
    pub groups: Option<Vec<TestGroupInput>>,
    /// Absent: compare TRIM_TRAILING.
    pub checker: Option<CheckerInput>,
}

/// A problem's current version as anyone may see it: samples only.
pub struct Problem {
    pub stored: Stored,
    pub store: SharedProblems,
}

#[Object]
impl Problem {
    async fn id(&self) -> ID {
        ID(self.stored.id.clone())
    }
    /// 1 for the first putProblem or importProblem of this id, then one more each time.
    async fn version(&self) -> i32 {
        i32::try_from(self.stored.version).unwrap_or(i32::MAX)
    }
    async fn title(&self) -> &str {
        &self.stored.title
    }
    async fn statement(&self) -> Option<&str> {
        self.stored.statement.as_deref()
    }
    async fn test_count(&self) -> i32 {
        i32::try_from(self.stored.tests.len()).unwrap_or(i32::MAX)
    }
    /// The sample tests with their data (hidden tests are never shown).
    async fn samples(&self) -> Result<Vec<SampleTest>> {
        let mut out = Vec::new();
        for t in self.stored.tests.iter().filter(|t| t.sample) {
            let stdin = self.text(&t.input.hash).await?;
            let expected_output = match &t.answer {
                Some(a) => Some(self.text(&a.hash).await?),
                None => None,
            };
            out.push(SampleTest {
                name: t.name.clone(),
                stdin,
                expected_output,
            });
        }
        Ok(out)
    }
    async fn groups(&self) -> Vec<TestGroup> {
        self.stored
            .groups
            .iter()
            .map(|g| TestGroup {
                name: g.name.clone(),
                points: g.points.0,
                test_count: i32::try_from(self.stored.group_size(&g.name)).unwrap_or(i32::MAX),
            })
            .collect()
    }
    /// The sum of the groups' points.
    async fn max_score(&self) -> f64 {
        self.stored.max_score()
    }
    /// Bytes of test data this version refers to (each distinct file once).
    async fn data_bytes(&self) -> f64 {
        self.stored.data_bytes() as f64
    }
}

impl Problem {
    async fn text(&self, hash: &str) -> Result<String> {
        match self.store.data(hash).await {
            Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Ok(None) => {
                tracing::error!(problem = %self.stored.id, hash, "sample data missing");
                Err(async_graphql::ErrorExtensions::extend(&ApiError::Internal))
            }
            Err(e) => Err(crate::error::gql(e)),
        }
    }
}

#[derive(SimpleObject)]
pub struct SampleTest {
    pub name: Option<String>,
    pub stdin: String,
    pub expected_output: Option<String>,
}

#[derive(SimpleObject)]
pub struct TestGroup {
    pub name: String,
    pub points: f64,
    pub test_count: i32,
}

#[derive(SimpleObject)]
pub struct GroupResult {
    pub name: String,
    pub verdict: crate::schema::Verdict,
    pub score: f64,
    pub max_score: f64,
}

impl From<&verdict_broker::GroupResult> for GroupResult {
    fn from(g: &verdict_broker::GroupResult) -> Self {
        GroupResult {
            name: g.name.clone(),
            verdict: g.verdict.into(),
            score: g.score.0,
            max_score: g.max_score.0,
        }
    }
}

/// `[a-z0-9][a-z0-9_-]{0,63}`
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad(
            "id",
            format!("problem id \"{id}\" must match [a-z0-9][a-z0-9_-]{{0,63}}"),
        ))
    }
}

/// The problem's limits: the server's defaults for what is not given, refused above its
/// maxima.
fn limits(policy: &InputPolicy, input: Option<&LimitsInput>) -> Result<Limits, ApiError> {
    let d = policy.default_limits;
    let m = policy.max_limits;
    let one = |field: &'static str, v: Option<i32>, default: u64, max: u64| match v {
        None => Ok(default.min(max)),
        Some(v) if v >= 1 && u64::try_from(v).is_ok_and(|v| v <= max) => {
            Ok(u64::try_from(v).unwrap_or(default))
        }
        Some(v) => Err(ApiError::bad(
            field,
            format!("limits.{field} is {v}; it must be between 1 and {max}"),
        )),
    };
    let Some(l) = input else {
        return Ok(d);
    };
    Ok(Limits {
        cpu_time_ms: one("cpuTimeMs", l.cpu_time_ms, d.cpu_time_ms, m.cpu_time_ms)?,
        wall_time_ms: one("wallTimeMs", l.wall_time_ms, d.wall_time_ms, m.wall_time_ms)?,
        memory_kb: one("memoryKb", l.memory_kb, d.memory_kb, m.memory_kb)?,
        output_bytes: one(
            "outputBytes",
            l.output_bytes,
            d.output_bytes,
            m.output_bytes,
        )?,
        processes: one("processes", l.processes, d.processes, m.processes)?,
    })
}

fn safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Checks `input` and turns it into a problem version (without its number) and the data
/// it stores. Every refusal is BAD_USER_INPUT naming the field.
pub fn build(
    input: ProblemInput,
    policy: &InputPolicy,
    catalogue: &Catalogue,
) -> Result<(Stored, ProblemUpload), ApiError> {
    let id = input.id.0;
    check_id(&id)?;
    if input.title.trim().is_empty() || input.title.len() > 256 {
        return Err(ApiError::bad(
            "title",
            "title must be 1 to 256 bytes and not blank",
        ));
    }
    if input.tests.is_empty() {
        return Err(ApiError::bad("tests", "a problem needs at least one test"));
    }
    if input.tests.len() > MAX_PROBLEM_TESTS {
        return Err(ApiError::bad(
            "tests",
            format!(
                "{} tests given; a problem may have at most {MAX_PROBLEM_TESTS}",
                input.tests.len()
            ),
        ));
    }
    let mut limits = limits(policy, input.limits.as_ref())?;
    // Every test's output must fit what the broker keeps of one submission.
    let cap = policy.max_retained_bytes_per_submission;
    let n = input.tests.len() as u64;
    if cap > 0 && limits.output_bytes.saturating_mul(n) > cap {
        if input.limits.as_ref().and_then(|l| l.output_bytes).is_some() {
            return Err(ApiError::bad(
                "outputBytes",
                format!(
                    "limits.outputBytes x {n} tests is over the {cap} bytes one submission may keep; at most {} per test",
                    cap / n
                ),
            ));
        }
        limits.output_bytes = (cap / n).max(1);
    }
    let groups: Vec<StoredGroup> = match input.groups {
        None => vec![StoredGroup {
            name: "all".into(),
            points: Points(100.0),
            scoring: verdict_broker::GroupScoring::AllOrNothing,
        }],
        Some(groups) => {
            if groups.is_empty() {
                return Err(ApiError::bad(
                    "groups",
                    "groups is empty; omit it for one group",
                ));
            }
            let mut seen = BTreeSet::new();
            let mut out = Vec::new();
            for g in groups {
                if g.name.is_empty() || g.name.len() > 64 || !seen.insert(g.name.clone()) {
                    return Err(ApiError::bad(
                        "groups",
                        format!("group name \"{}\" must be 1 to 64 bytes and unique", g.name),
                    ));
                }
                if !g.points.is_finite() || g.points < 0.0 {
                    return Err(ApiError::bad(
                        "points",
                        format!("group \"{}\": points must be a number >= 0", g.name),
                    ));
                }
                out.push(StoredGroup {
                    name: g.name,
                    points: Points(g.points),
                    scoring: g.scoring.into(),
                });
            }
            out
        }
    };
    let mut upload = ProblemUpload::default();
    let mut tests = Vec::with_capacity(input.tests.len());
    for (k, t) in input.tests.into_iter().enumerate() {
        let group = match t.group {
            Some(g) => g,
            None if groups.len() == 1 => groups[0].name.clone(),
            None => {
                return Err(ApiError::bad(
                    "group",
                    format!("tests[{k}] has no group; with several groups each test names one"),
                ))
            }
        };
        if !groups.iter().any(|g| g.name == group) {
            return Err(ApiError::bad(
                "group",
                format!("tests[{k}]: group \"{group}\" is not in groups"),
            ));
        }
        if t.name.as_ref().is_some_and(|n| n.len() > 256) {
            return Err(ApiError::bad(
                "name",
                format!("tests[{k}]: name over 256 bytes"),
            ));
        }
        let input = upload.add(t.stdin.into_bytes());
        let answer = t.expected_output.map(|a| upload.add(a.into_bytes()));
        tests.push(ProblemTest {
            name: t.name,
            group,
            sample: t.sample,
            input,
            answer,
        });
    }
    for g in &groups {
        if !tests.iter().any(|t| t.group == g.name) {
            return Err(ApiError::bad(
                "groups",
                format!("group \"{}\" has no tests", g.name),
            ));
        }
    }
    if upload.bytes() > policy.max_problem_bytes {
        return Err(ApiError::bad(
            "tests",
            format!(
                "the test data is {} bytes; a problem may have at most {} (--max-problem-bytes)",
                upload.bytes(),
                policy.max_problem_bytes
            ),
        ));
    }
    let checker = match input.checker {
        None => Checker::default(),
        Some(c) => {
            let compare: verdict_broker::CompareMode = c.compare.unwrap_or_default().into();
            let epsilon = match (compare, c.epsilon) {
                (verdict_broker::CompareMode::Float, e) => {
                    let e = e.unwrap_or(crate::validate::DEFAULT_EPSILON);
                    if !e.is_finite() || e < 0.0 {
                        return Err(ApiError::bad("epsilon", "epsilon must be a number >= 0"));
                    }
                    Some(Epsilon(e))
                }
                (_, Some(_)) => {
                    return Err(ApiError::bad(
                        "epsilon",
                        "epsilon applies to compare mode FLOAT only",
                    ))
                }
                (_, None) => None,
            };
            let program = match c.program {
                None => None,
                Some(p) => Some(checker_program(p, catalogue)?),
            };
            Checker {
                compare,
                epsilon,
                program,
            }
        }
    };
    if checker.program.is_none() {
        if let Some(k) = tests.iter().position(|t| t.answer.is_none()) {
            return Err(ApiError::bad(
                "expectedOutput",
                format!("tests[{k}] has no expectedOutput and the problem has no checker program"),
            ));
        }
    }
    Ok((
        Stored {
            id,
            version: 0,
            title: input.title,
            statement: input.statement,
            limits,
            tests,
            groups,
            checker,
            created_at: chrono::Utc::now(),
        },
        upload,
    ))
}

fn checker_program(
    p: CheckerProgramInput,
    catalogue: &Catalogue,
) -> Result<CheckerProgram, ApiError> {
    let Some(lang) = catalogue.get(&p.language) else {
        return Err(ApiError::bad(
            "language",
            format!(
                "checker language \"{}\" is unknown; valid ids: {}",
                p.language.0,
                catalogue.ids()
            ),
        ));
    };
    let mut files = Vec::new();
    for f in p.files.unwrap_or_default() {
        if !safe_file_name(&f.name) || f.name == lang.source {
            return Err(ApiError::bad(
                "files",
                format!(
                    "checker file name \"{}\" must be a plain name ([A-Za-z0-9._-]) other than {}",
                    f.name, lang.source
                ),
            ));
        }
        files.push(CheckerFile {
            name: f.name,
            content: f.content,
        });
    }
    if p.source.is_empty() {
        return Err(ApiError::bad("source", "the checker source is empty"));
    }
    Ok(CheckerProgram {
        protocol: p.protocol.into(),
        language: p.language.0,
        source: p.source,
        files,
    })
}

/// With `problemId`, the tests, limits and compare mode come from the problem.
pub fn check_problem_submit(
    stdin: bool,
    tests: bool,
    limits: bool,
    epsilon: bool,
) -> Result<(), ApiError> {
    for (given, field) in [
        (stdin, "stdin"),
        (tests, "tests"),
        (limits, "limits"),
        (epsilon, "epsilon"),
    ] {
        if given {
            return Err(ApiError::bad(
                field,
                format!("{field} cannot be given with problemId: the problem sets it"),
            ));
        }
    }
    Ok(())
}

/// What the queued record learns from the problem at submit.
pub struct Pinned {
    test_count: u32,
    hidden: Vec<u32>,
    max_score: f64,
}

impl Pinned {
    pub fn apply(self, submission: &mut verdict_broker::Submission) {
        submission.test_count = self.test_count;
        submission.hidden_tests = self.hidden;
        submission.max_score = Some(Points(self.max_score));
    }
}

/// Pins `request` to `problem`'s version: the worker reads the tests from the store; the
/// limits are the problem's, within today's server maxima.
pub fn pin(
    request: &mut verdict_broker::Request,
    problem: &Stored,
    policy: &InputPolicy,
) -> Pinned {
    let m = policy.max_limits;
    let l = problem.limits;
    request.tests = Vec::new();
    request.limits = Limits {
        cpu_time_ms: l.cpu_time_ms.min(m.cpu_time_ms),
        wall_time_ms: l.wall_time_ms.min(m.wall_time_ms),
        memory_kb: l.memory_kb.min(m.memory_kb),
        output_bytes: l.output_bytes.min(m.output_bytes),
        processes: l.processes.min(m.processes),
    };
    request.compare = problem.checker.compare;
    request.epsilon = problem.checker.epsilon;
    request.problem = Some(problem.reference());
    Pinned {
        test_count: u32::try_from(problem.tests.len()).unwrap_or(u32::MAX),
        hidden: problem
            .tests
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.sample)
            .map(|(k, _)| u32::try_from(k + 1).unwrap_or(u32::MAX))
            .collect(),
        max_score: problem.max_score(),
    }
}

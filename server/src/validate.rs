//! Turns a client's SubmitInput into a trusted Request: defaults filled, maxima enforced,
//! every rejection naming the field and the allowed range.

use verdict_broker::{Catalogue, CompareMode, Epsilon, Limits, Request, TestCase};

use crate::error::ApiError;

/// Server-side defaults and maxima (configurable).
#[derive(Debug, Clone)]
pub struct InputPolicy {
    pub default_limits: Limits,
    pub max_limits: Limits,
    pub max_source_bytes: usize,
    pub max_stdin_bytes: usize,
    /// All expected outputs together.
    pub max_expected_bytes: usize,
    pub max_tests: usize,
    /// Output one submission may make over all its tests (tests x outputBytes), bytes;
    /// the broker keeps at most this much of a submission (record and events), so input
    /// asking for more is refused here rather than silently cut later. 0 = no check.
    pub max_retained_bytes_per_submission: u64,
    /// Test data one problem may store (`--max-problem-bytes`), bytes.
    pub max_problem_bytes: u64,
}

/// Default of [`InputPolicy::max_problem_bytes`]: 64 MiB.
pub const DEFAULT_MAX_PROBLEM_BYTES: u64 = 64 * 1024 * 1024;

/// The tolerance of compare mode FLOAT when the client gives none.
pub const DEFAULT_EPSILON: f64 = 1e-6;

impl InputPolicy {
    /// Run limits of a submission that names none: the one source of these numbers (the
    /// `verdict` binary's `--default-*` flags default to them).
    pub const DEFAULT_LIMITS: Limits = Limits {
        cpu_time_ms: 2_000,
        wall_time_ms: 5_000,
        memory_kb: 256 * 1024,
        output_bytes: 1024 * 1024,
        processes: 64,
    };

    /// The largest run limits a submission may ask for (the `--max-*` flags' defaults).
    pub const MAX_LIMITS: Limits = Limits {
        cpu_time_ms: 15_000,
        wall_time_ms: 30_000,
        memory_kb: 1024 * 1024,
        output_bytes: 64 * 1024 * 1024,
        processes: 256,
    };
}

impl Default for InputPolicy {
    fn default() -> Self {
        InputPolicy {
            default_limits: Self::DEFAULT_LIMITS,
            max_limits: Self::MAX_LIMITS,
            max_source_bytes: 256 * 1024,
            max_stdin_bytes: 8 * 1024 * 1024,
            max_expected_bytes: 64 * 1024 * 1024,
            max_tests: 100,
            max_retained_bytes_per_submission: verdict_broker::DEFAULT_MAX_RETAINED_PER_SUBMISSION,
            max_problem_bytes: DEFAULT_MAX_PROBLEM_BYTES,
        }
    }
}

/// Requested limits, each optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestedLimits {
    pub cpu_time_ms: Option<i32>,
    pub wall_time_ms: Option<i32>,
    pub memory_kb: Option<i32>,
    pub output_bytes: Option<i32>,
    pub processes: Option<i32>,
}

/// The raw input, already shaped by GraphQL.
#[derive(Debug, Clone)]
pub struct RawSubmit {
    pub language: String,
    pub source: String,
    pub stdin: Option<String>,
    pub tests: Option<Vec<TestCase>>,
    pub limits: RequestedLimits,
    pub compare: CompareMode,
    pub epsilon: Option<f64>,
    pub stop_on_first_failure: bool,
}

fn limit(
    field: &'static str,
    requested: Option<i32>,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match requested {
        None => Ok(default),
        Some(v) if v >= 1 && (v as u64) <= max => Ok(v as u64),
        Some(v) => Err(ApiError::bad(
            field,
            format!("limits.{field} is {v}; it must be between 1 and {max}"),
        )),
    }
}

impl InputPolicy {
    /// Checks and completes `raw`; the first problem found is reported.
    pub fn check(&self, catalogue: &Catalogue, raw: RawSubmit) -> Result<Request, ApiError> {
        if catalogue.get(&raw.language).is_none() {
            return Err(ApiError::bad(
                "language",
                format!(
                    "unknown language \"{}\"; valid ids: {}",
                    raw.language,
                    catalogue.ids()
                ),
            ));
        }
        if raw.source.len() > self.max_source_bytes {
            return Err(ApiError::bad(
                "source",
                format!(
                    "source is {} bytes; the maximum is {} bytes",
                    raw.source.len(),
                    self.max_source_bytes
                ),
            ));
        }
        let tests = match (raw.tests, raw.stdin) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "stdin",
                    "give either stdin (one plain run) or tests, not both",
                ));
            }
            (Some(tests), None) => {
                if tests.is_empty() {
                    return Err(ApiError::bad(
                        "tests",
                        "tests is empty; omit it for a plain run",
                    ));
                }
                tests
            }
            // A plain run: one test, no expected output (the worker falls back to the same
            // for a request with no tests, worker/src/run.rs `plain_run`).
            (None, stdin) => vec![TestCase {
                stdin: stdin.unwrap_or_default(),
                expected_output: None,
            }],
        };
        if tests.len() > self.max_tests {
            return Err(ApiError::bad(
                "tests",
                format!(
                    "{} tests given; the maximum is {}",
                    tests.len(),
                    self.max_tests
                ),
            ));
        }
        let stdin_total: usize = tests.iter().map(|t| t.stdin.len()).sum();
        if stdin_total > self.max_stdin_bytes {
            return Err(ApiError::bad(
                "stdin",
                format!(
                    "stdin totals {stdin_total} bytes; the maximum is {} bytes",
                    self.max_stdin_bytes
                ),
            ));
        }
        let expected_total: usize = tests
            .iter()
            .filter_map(|t| t.expected_output.as_ref())
            .map(String::len)
            .sum();
        if expected_total > self.max_expected_bytes {
            return Err(ApiError::bad(
                "expectedOutput",
                format!(
                    "expected outputs total {expected_total} bytes; the maximum is {} bytes",
                    self.max_expected_bytes
                ),
            ));
        }
        let epsilon = match (raw.compare, raw.epsilon) {
            (CompareMode::Float, None) => Some(Epsilon(DEFAULT_EPSILON)),
            (CompareMode::Float, Some(e)) if e.is_finite() && (0.0..1.0).contains(&e) => {
                Some(Epsilon(e))
            }
            (CompareMode::Float, Some(e)) => {
                return Err(ApiError::bad(
                    "epsilon",
                    format!("epsilon is {e}; it must be at least 0 and below 1"),
                ));
            }
            (_, None) => None,
            (_, Some(_)) => {
                return Err(ApiError::bad(
                    "epsilon",
                    "epsilon applies only to compare mode FLOAT",
                ));
            }
        };
        let (d, m, r) = (&self.default_limits, &self.max_limits, &raw.limits);
        let mut limits = Limits {
            cpu_time_ms: limit("cpuTimeMs", r.cpu_time_ms, d.cpu_time_ms, m.cpu_time_ms)?,
            wall_time_ms: limit("wallTimeMs", r.wall_time_ms, d.wall_time_ms, m.wall_time_ms)?,
            memory_kb: limit("memoryKb", r.memory_kb, d.memory_kb, m.memory_kb)?,
            output_bytes: limit(
                "outputBytes",
                r.output_bytes,
                d.output_bytes,
                m.output_bytes,
            )?,
            processes: limit("processes", r.processes, d.processes, m.processes)?,
        };
        let cap = self.max_retained_bytes_per_submission;
        let runs = tests.len() as u64;
        let total = runs.saturating_mul(limits.output_bytes);
        if cap > 0 && total > cap {
            let most = (cap / runs.max(1)).max(1);
            if r.output_bytes.is_some() {
                return Err(ApiError::bad(
                    "outputBytes",
                    format!(
                        "{runs} tests x limits.outputBytes {} = {total} bytes of output, over the \
                         {cap} bytes this server keeps per submission; ask for at most {most} \
                         outputBytes, or send fewer tests",
                        limits.output_bytes
                    ),
                ));
            }
            // The client left the limit to us: the default shrinks to fit instead.
            limits.output_bytes = most;
        }
        Ok(Request {
            language: raw.language,
            source: raw.source,
            tests,
            limits,
            compare: raw.compare,
            epsilon,
            stop_on_first_failure: raw.stop_on_first_failure,
            problem: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(tests: usize, output_bytes: Option<i32>) -> RawSubmit {
        RawSubmit {
            language: "python3".into(),
            source: "print(1)".into(),
            stdin: None,
            tests: Some(vec![
                TestCase {
                    stdin: String::new(),
                    expected_output: None,
                };
                tests
            ]),
            limits: RequestedLimits {
                output_bytes,
                ..RequestedLimits::default()
            },
            compare: CompareMode::TrimTrailing,
            epsilon: None,
            stop_on_first_failure: false,
        }
    }

    #[test]
    fn output_over_the_retained_cap_is_refused_naming_the_field() {
        let catalogue = Catalogue::load(None).expect("catalogue");
        let policy = InputPolicy::default();
        let err = policy
            .check(&catalogue, raw(16, Some(32 * 1024 * 1024)))
            .expect_err("16 x 32 MiB is over 64 MiB");
        let text = format!("{err:?}");
        assert!(
            text.contains("outputBytes") && text.contains("4194304"),
            "{text}"
        );
        let ok = policy
            .check(&catalogue, raw(16, Some(4 * 1024 * 1024)))
            .expect("16 x 4 MiB fits");
        assert_eq!(ok.limits.output_bytes, 4 * 1024 * 1024);
        // Left to the server, the default shrinks to fit: 100 x 1 MiB would not.
        let fitted = policy.check(&catalogue, raw(100, None)).expect("default");
        assert_eq!(fitted.limits.output_bytes, 64 * 1024 * 1024 / 100);
    }
}

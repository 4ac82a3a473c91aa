//! Verdict rules (docs/design.md, "Verdicts") and output comparison.

use verdict_broker::{CompareMode, Verdict};
use verdict_sandbox::{LimitHit, Outcome};

/// How one test's output is compared: the mode and, for FLOAT, the tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Compare {
    pub mode: CompareMode,
    /// Absolute or relative error allowed between numbers (FLOAT only).
    pub epsilon: f64,
}

impl From<CompareMode> for Compare {
    fn from(mode: CompareMode) -> Self {
        Compare { mode, epsilon: 0.0 }
    }
}

/// The limit that ended a run: the sandbox's finding, or CPU time when the run ended
/// abnormally with its CPU time within `percent`% of the limit. (RLIMIT_CPU is per
/// process and tick-accounted: a child that hits it dies of SIGXCPU while the parent,
/// e.g. `g++` driving `cc1plus`, just exits non-zero, and the precise CPU time the parent
/// reaped can read a little under the limit: 920 ms at 1 s measured here.)
pub fn limit_hit(outcome: &Outcome, cpu_limit_ms: u64, percent: u64) -> Option<LimitHit> {
    outcome.limit.or_else(|| {
        let abnormal = outcome.signal.is_some() || outcome.exit_code != Some(0);
        (abnormal && outcome.cpu_ms.saturating_mul(100) >= cpu_limit_ms.saturating_mul(percent))
            .then_some(LimitHit::CpuTime)
    })
}

/// A test run that ended abnormally (a signal, a non-zero exit) after using at least this
/// percentage of its CPU limit is TIME_LIMIT_EXCEEDED rather than RUNTIME_ERROR: the CPU
/// time read for a run killed at the limit can fall a little short of it (see
/// [`limit_hit`]: 920 ms at 1 s), while a crash well below the limit stays a runtime
/// error. (The compile step is more generous, see `compile.rs`.)
pub(crate) const RUN_CPU_LIMIT_PERCENT: u64 = 90;

/// The verdict of one run, in the design's order of precedence.
pub fn verdict(
    outcome: &Outcome,
    expected: Option<&str>,
    compare: impl Into<Compare>,
    cpu_limit_ms: u64,
) -> Verdict {
    let compare = compare.into();
    match limit_hit(outcome, cpu_limit_ms, RUN_CPU_LIMIT_PERCENT) {
        Some(LimitHit::CpuTime | LimitHit::WallTime) => return Verdict::TimeLimitExceeded,
        Some(LimitHit::Memory) => return Verdict::MemoryLimitExceeded,
        Some(LimitHit::Output) => return Verdict::OutputLimitExceeded,
        Some(LimitHit::Cancelled) => return Verdict::Cancelled,
        None => {}
    }
    if outcome.signal.is_some() || outcome.exit_code != Some(0) {
        return Verdict::RuntimeError;
    }
    match expected {
        Some(expected) if !same_output(&outcome.stdout, expected.as_bytes(), compare) => {
            Verdict::WrongAnswer
        }
        _ => Verdict::Accepted,
    }
}

/// Compares without copying either side: each mode walks both buffers once, in step,
/// and stops at the first difference (a 64 MB output is never held twice).
pub fn same_output(actual: &[u8], expected: &[u8], compare: impl Into<Compare>) -> bool {
    let compare = compare.into();
    match compare.mode {
        CompareMode::Exact => actual == expected,
        CompareMode::TrimTrailing => lines(actual).eq(lines(expected)),
        CompareMode::Tokens => tokens(actual).eq(tokens(expected)),
        CompareMode::Float => {
            let mut a = tokens(actual);
            let mut e = tokens(expected);
            loop {
                match (a.next(), e.next()) {
                    (None, None) => return true,
                    (Some(x), Some(y)) if close(x, y, compare.epsilon) => {}
                    _ => return false,
                }
            }
        }
    }
}

/// Equal tokens, or two finite numbers whose absolute error or whose error relative to
/// the expected value is at most `epsilon` (what judges call "1e-6 absolute or relative").
fn close(actual: &[u8], expected: &[u8], epsilon: f64) -> bool {
    if actual == expected {
        return true;
    }
    let (Some(x), Some(y)) = (number(actual), number(expected)) else {
        return false;
    };
    let error = (x - y).abs();
    let tolerance = epsilon.max(epsilon * y.abs());
    // A hair of slack so that 1.000001 vs 1 passes at 1e-6 despite binary rounding.
    error <= tolerance * (1.0 + 1e-9)
}

/// A finite decimal number (digits, sign, point, exponent); "nan", "inf" and hex are not.
fn number(token: &[u8]) -> Option<f64> {
    if token.len() > 64
        || !token
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    std::str::from_utf8(token)
        .ok()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

/// Lines with `\r\n` as `\n`, trailing whitespace removed, trailing blank lines dropped.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = trim_end(text);
    let mut parts = trimmed.split(|&b| b == b'\n').map(trim_end);
    // `split` on an empty slice yields one empty line; treat empty output as no lines.
    let empty = trimmed.is_empty();
    std::iter::from_fn(move || if empty { None } else { parts.next() })
}

fn trim_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &s[..end]
}

fn tokens(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_trailing_ignores_trailing_space_crlf_and_blank_lines() {
        assert!(same_output(
            b"1 2  \r\n3\n\n\n",
            b"1 2\n3",
            CompareMode::TrimTrailing
        ));
        assert!(!same_output(
            b"1  2\n3",
            b"1 2\n3",
            CompareMode::TrimTrailing
        ));
        assert!(
            !same_output(b"\n1", b"1", CompareMode::TrimTrailing),
            "leading blank lines count"
        );
        assert!(same_output(b"", b"\n \n", CompareMode::TrimTrailing));
        assert!(!same_output(b"", b"0", CompareMode::TrimTrailing));
    }

    #[test]
    fn exact_is_byte_for_byte() {
        assert!(same_output(b"a\n", b"a\n", CompareMode::Exact));
        assert!(!same_output(b"a\n", b"a", CompareMode::Exact));
    }

    #[test]
    fn tokens_ignore_all_whitespace_layout() {
        assert!(same_output(b"1\n2   3\t\n", b"1 2 3", CompareMode::Tokens));
        assert!(!same_output(b"1 23", b"1 2 3", CompareMode::Tokens));
    }

    #[test]
    fn float_allows_absolute_or_relative_error() {
        let f = |epsilon| Compare {
            mode: CompareMode::Float,
            epsilon,
        };
        assert!(same_output(b"1.000001 2\n", b"1 2", f(1e-6)));
        assert!(!same_output(b"1.00001 2\n", b"1 2", f(1e-6)));
        // Relative: 1e9 vs 1e9+100 is within 1e-6 relative error.
        assert!(same_output(b"1000000100", b"1e9", f(1e-6)));
        assert!(!same_output(b"1000010000", b"1e9", f(1e-6)));
        assert!(same_output(b"-0.0", b"0", f(0.0)));
        assert!(same_output(b"abc 3.14", b"abc 3.1400001", f(1e-6)));
        assert!(!same_output(b"abd 3.14", b"abc 3.14", f(1e-6)));
        assert!(!same_output(b"nan", b"nan1", f(1e-6)));
        assert!(same_output(b"nan", b"nan", f(1e-6)), "equal tokens match");
        assert!(!same_output(b"1 2", b"1 2 3", f(1e-6)));
        assert!(!same_output(b"inf", b"1e308", f(1.0 - 1e-9)));
    }

    #[test]
    fn trim_trailing_edge_cases() {
        let t = CompareMode::TrimTrailing;
        assert!(same_output(b"a\r\nb\r\n", b"a\nb", t));
        assert!(
            same_output(b"a\nb", b"a\nb\n\n\n", t),
            "no trailing newline"
        );
        assert!(same_output(b"", b"", t));
        assert!(same_output(b"\n\n", b"", t), "empty expected output");
        assert!(!same_output(b"a", b"", t));
        assert!(
            !same_output(b"a\n\nb", b"a\nb", t),
            "inner blank lines count"
        );
    }

    #[test]
    fn an_abnormal_end_at_the_cpu_limit_is_a_time_limit() {
        let o = Outcome {
            exit_code: Some(4),
            cpu_ms: 990,
            ..Outcome::default()
        };
        assert_eq!(
            verdict(&o, None, CompareMode::Exact, 1000),
            Verdict::TimeLimitExceeded
        );
        let fine = Outcome {
            exit_code: Some(0),
            cpu_ms: 990,
            ..Outcome::default()
        };
        assert_eq!(
            verdict(&fine, None, CompareMode::Exact, 1000),
            Verdict::Accepted
        );
        assert_eq!(
            verdict(&o, None, CompareMode::Exact, 2000),
            Verdict::RuntimeError
        );
    }

    #[test]
    fn precedence_follows_the_design() {
        let mut o = Outcome {
            exit_code: Some(1),
            limit: Some(LimitHit::WallTime),
            ..Outcome::default()
        };
        assert_eq!(
            verdict(&o, None, CompareMode::Exact, 1000),
            Verdict::TimeLimitExceeded
        );
        o.limit = Some(LimitHit::Memory);
        assert_eq!(
            verdict(&o, None, CompareMode::Exact, 1000),
            Verdict::MemoryLimitExceeded
        );
        o.limit = Some(LimitHit::Output);
        assert_eq!(
            verdict(&o, None, CompareMode::Exact, 1000),
            Verdict::OutputLimitExceeded
        );
        o.limit = None;
        assert_eq!(
            verdict(&o, None, CompareMode::Exact, 1000),
            Verdict::RuntimeError
        );
        o.exit_code = Some(0);
        o.stdout = b"42\n".to_vec();
        assert_eq!(
            verdict(&o, Some("41"), CompareMode::TrimTrailing, 1000),
            Verdict::WrongAnswer
        );
        assert_eq!(
            verdict(&o, Some("42"), CompareMode::TrimTrailing, 1000),
            Verdict::Accepted
        );
        assert_eq!(
            verdict(&o, None, CompareMode::TrimTrailing, 1000),
            Verdict::Accepted
        );
    }
}

//! Verdict rules (design.md, "Verdicts") and output comparison.

use verdict_broker::{CompareMode, Verdict};
use verdict_sandbox::{LimitHit, Outcome};

/// The verdict of one run, in the design's order of precedence.
pub fn verdict(outcome: &Outcome, expected: Option<&str>, mode: CompareMode) -> Verdict {
    match outcome.limit {
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
        Some(expected) if !same_output(&outcome.stdout, expected.as_bytes(), mode) => {
            Verdict::WrongAnswer
        }
        _ => Verdict::Accepted,
    }
}

/// Compares without copying either side: each mode walks both buffers once.
pub fn same_output(actual: &[u8], expected: &[u8], mode: CompareMode) -> bool {
    match mode {
        CompareMode::Exact => actual == expected,
        CompareMode::TrimTrailing => lines(actual).eq(lines(expected)),
        CompareMode::Tokens => tokens(actual).eq(tokens(expected)),
    }
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
    fn precedence_follows_the_design() {
        let mut o = Outcome {
            exit_code: Some(1),
            limit: Some(LimitHit::WallTime),
            ..Outcome::default()
        };
        assert_eq!(
            verdict(&o, None, CompareMode::Exact),
            Verdict::TimeLimitExceeded
        );
        o.limit = Some(LimitHit::Memory);
        assert_eq!(
            verdict(&o, None, CompareMode::Exact),
            Verdict::MemoryLimitExceeded
        );
        o.limit = Some(LimitHit::Output);
        assert_eq!(
            verdict(&o, None, CompareMode::Exact),
            Verdict::OutputLimitExceeded
        );
        o.limit = None;
        assert_eq!(verdict(&o, None, CompareMode::Exact), Verdict::RuntimeError);
        o.exit_code = Some(0);
        o.stdout = b"42\n".to_vec();
        assert_eq!(
            verdict(&o, Some("41"), CompareMode::TrimTrailing),
            Verdict::WrongAnswer
        );
        assert_eq!(
            verdict(&o, Some("42"), CompareMode::TrimTrailing),
            Verdict::Accepted
        );
        assert_eq!(
            verdict(&o, None, CompareMode::TrimTrailing),
            Verdict::Accepted
        );
    }
}

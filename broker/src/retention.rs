//! How much program output one submission may keep, and how it is cut to fit.
//!
//! A submission's output is held twice or three times over: in live OutputEvents, in
//! TestFinishedEvents (up to 1 MiB a stream), and in the final record with its
//! FinishedEvent copy. Both backends keep all of it until the TTL, so the per-submission
//! budget is enforced where those are written: the log may spend half of it on
//! output-bearing events, the final write gets whatever is left. Each backend measures
//! in its own unit (JSON bytes on Redis, an estimate of heap bytes in memory); the
//! cutting is shared here.

use crate::types::{EventKind, Submission, TestResult};

/// The share of the budget output-bearing log events may use; the rest is kept for the
/// final record, which is what `submission(id)` serves and must not lose to live chunks.
pub(crate) fn log_share(cap: u64) -> u64 {
    cap / 2
}

/// Whether an event carries program output (and so is subject to the log's share).
pub(crate) fn carries_output(kind: &EventKind) -> bool {
    match kind {
        EventKind::Output { chunk, .. } => !chunk.is_empty(),
        EventKind::TestFinished { result } => {
            !result.stdout.is_empty() || !result.stderr.is_empty()
        }
        _ => false,
    }
}

fn text_len(tests: &[TestResult]) -> usize {
    tests.iter().map(|t| t.stdout.len() + t.stderr.len()).sum()
}

/// Cuts `text` to at most `max` bytes at a character boundary; true when it cut.
fn cut(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let at = (0..=max)
        .rev()
        .find(|&k| text.is_char_boundary(k))
        .unwrap_or(0);
    text.truncate(at);
    text.shrink_to_fit();
    true
}

/// Cuts the tests' stdout and stderr so they total at most `allowance` bytes, shared
/// fairly: every stream gets an equal part, and what short streams leave over goes to the
/// long ones (so one huge stream never starves the others). Cut results are `truncated`.
pub(crate) fn cut_outputs(tests: &mut [TestResult], allowance: usize) {
    if text_len(tests) <= allowance {
        return;
    }
    let mut lens: Vec<usize> = tests
        .iter()
        .flat_map(|t| [t.stdout.len(), t.stderr.len()])
        .collect();
    lens.sort_unstable();
    // Water-filling: the largest per-stream level whose total stays within the allowance.
    let mut left = allowance;
    let mut level = 0;
    for (k, &len) in lens.iter().enumerate() {
        let streams = lens.len() - k;
        if len.saturating_mul(streams) <= left {
            left -= len;
            level = len;
        } else {
            level = left / streams;
            break;
        }
    }
    for test in tests.iter_mut() {
        let a = cut(&mut test.stdout, level);
        let b = cut(&mut test.stderr, level);
        test.truncated |= a || b;
    }
}

/// Cuts `tests` until `measure` says they take at most `room`. False when they do not fit
/// even with no output at all (the caller then writes them anyway, without output: the
/// non-output part is bounded by the test count).
pub(crate) fn fit_tests(
    tests: &mut [TestResult],
    room: usize,
    mut measure: impl FnMut(&[TestResult]) -> usize,
) -> bool {
    for _ in 0..6 {
        let size = measure(tests);
        if size <= room {
            return true;
        }
        let text = text_len(tests);
        if text == 0 {
            return false;
        }
        // Serialization may make a byte of output bigger (JSON escapes), so scale the
        // text by how far over the measure is; a little under, so few rounds do.
        let scaled = u128::from(text as u64) * u128::from(room as u64) / u128::from(size as u64);
        let target = usize::try_from(scaled).unwrap_or(0);
        cut_outputs(tests, target.saturating_sub(target / 64 + 16));
    }
    cut_outputs(tests, 0);
    measure(tests) <= room
}

/// [`fit_tests`] for the final record: cuts its tests' outputs until `measure` of the
/// record fits `room`.
pub(crate) fn fit_submission(
    submission: &mut Submission,
    room: usize,
    measure: impl Fn(&Submission) -> usize,
) -> bool {
    let mut tests = std::mem::take(&mut submission.tests);
    let mut probe = Submission {
        tests: Vec::new(),
        ..submission.clone()
    };
    let fits = fit_tests(&mut tests, room, |t| {
        probe.tests = t.to_vec();
        measure(&probe)
    });
    submission.tests = tests;
    fits
}

/// The most the default budget ([`default_max_retained_mb`]) gives, whatever the RAM.
pub const MAX_DEFAULT_RETAINED_MB: u64 = 1024;

/// Fallback when the machine's memory cannot be read (no `/proc/meminfo`).
const FALLBACK_RETAINED_MB: u64 = 512;

/// Default of `--max-retained-mb`: a quarter of the machine's RAM (`MemTotal` in
/// `/proc/meminfo`), at most [`MAX_DEFAULT_RETAINED_MB`]; 512 when it cannot be read.
pub fn default_max_retained_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| budget_from_meminfo(&text))
        .unwrap_or(FALLBACK_RETAINED_MB)
}

/// A quarter of `MemTotal` in MiB, capped at [`MAX_DEFAULT_RETAINED_MB`] and at least 1.
fn budget_from_meminfo(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024 / 4).clamp(1, MAX_DEFAULT_RETAINED_MB))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Verdict;

    fn result(stdout: usize, stderr: usize) -> TestResult {
        TestResult {
            index: 1,
            verdict: Verdict::Accepted,
            time_ms: 0,
            wall_time_ms: 0,
            memory_kb: 0,
            exit_code: Some(0),
            signal: None,
            stdout: "o".repeat(stdout),
            stderr: "é".repeat(stderr / 2),
            truncated: false,
            name: None,
            group: None,
            sample: false,
            checker_message: None,
            score: None,
        }
    }

    #[test]
    fn outputs_are_shared_fairly_and_marked() {
        let mut tests = vec![result(10, 0), result(1000, 0), result(1000, 400)];
        cut_outputs(&mut tests, 1010);
        let total = text_len(&tests);
        assert!(
            (1000..=1010).contains(&total),
            "{total}: the rest is shared"
        );
        assert_eq!(tests[0].stdout.len(), 10);
        assert!(!tests[0].truncated);
        assert_eq!(tests[1].stdout.len(), 333);
        assert!(tests[1].truncated && tests[2].truncated);
        assert!(
            tests[2].stderr.len() <= 334 && tests[2].stderr.is_char_boundary(tests[2].stderr.len())
        );
    }

    #[test]
    fn fitting_converges_on_a_measure_with_escapes() {
        let mut tests = vec![result(5000, 0), result(5000, 0)];
        // Every byte costs six, as a control character does in JSON.
        let fits = fit_tests(&mut tests, 6000, |t| 100 + 6 * text_len(t));
        assert!(fits);
        let size = 100 + 6 * text_len(&tests);
        assert!(size <= 6000 && size > 4000, "{size}");
        let fits = fit_tests(&mut tests, 50, |t| 100 + text_len(t));
        assert!(!fits);
        assert_eq!(text_len(&tests), 0);
    }

    #[test]
    fn default_budget_is_a_quarter_of_ram_at_most_a_gib() {
        let meminfo = |kib: u64| format!("MemFree: 1 kB\nMemTotal:       {kib} kB\n");
        assert_eq!(budget_from_meminfo(&meminfo(2 * 1024 * 1024)), Some(512));
        assert_eq!(budget_from_meminfo(&meminfo(24_683_664)), Some(1024));
        assert_eq!(budget_from_meminfo(&meminfo(1000)), Some(1));
        assert_eq!(budget_from_meminfo("MemTotal: lots"), None);
        assert_eq!(budget_from_meminfo(""), None);
        let default = default_max_retained_mb();
        assert!(
            (1..=MAX_DEFAULT_RETAINED_MB).contains(&default),
            "{default}"
        );
    }
}

//! Scores of a problem submission: per group, from the test results (issue 15,
//! "Scoring"). A test's score is in [0, 1]: its checker's partial score, else 1 when
//! accepted and 0 when not. A test without a result (skipped by stopOnFirstFailure, or
//! never run) scores 0.

use verdict_broker::{GroupResult, GroupScoring, Points, Problem, TestResult, Verdict};

/// The score a test earns.
pub fn test_score(result: &TestResult) -> f64 {
    match result.score {
        Some(p) => p.0.clamp(0.0, 1.0),
        None if result.verdict == Verdict::Accepted => 1.0,
        None => 0.0,
    }
}

/// Per-group results and the total, for `results` (by 1-based index into the
/// problem's tests). `overall` is the submission's verdict, used for a group none of
/// whose tests ran (a compilation error, a cancel).
pub fn score(
    problem: &Problem,
    results: &[TestResult],
    overall: Verdict,
) -> (Vec<GroupResult>, f64) {
    let mut groups = Vec::with_capacity(problem.groups.len());
    let mut total = 0.0;
    for g in &problem.groups {
        let mut n = 0usize;
        let mut sum = 0.0;
        let mut min = f64::INFINITY;
        let mut all_accepted = true;
        let mut verdict = None;
        let mut missing = false;
        for (k, t) in problem.tests.iter().enumerate() {
            if t.group != g.name {
                continue;
            }
            n += 1;
            let index = u32::try_from(k + 1).unwrap_or(u32::MAX);
            match results.iter().find(|r| r.index == index) {
                Some(r) => {
                    let s = test_score(r);
                    sum += s;
                    min = min.min(s);
                    if r.verdict != Verdict::Accepted {
                        all_accepted = false;
                        verdict.get_or_insert(r.verdict);
                    }
                }
                None => {
                    missing = true;
                    all_accepted = false;
                    min = 0.0;
                }
            }
        }
        let verdict = verdict.unwrap_or(if missing { overall } else { Verdict::Accepted });
        let points = g.points.0;
        let earned = if n == 0 {
            0.0
        } else {
            match g.scoring {
                GroupScoring::AllOrNothing if all_accepted => points,
                GroupScoring::AllOrNothing => 0.0,
                GroupScoring::PerTest => points * sum / n as f64,
                GroupScoring::Min => points * min.clamp(0.0, 1.0),
            }
        };
        total += earned;
        groups.push(GroupResult {
            name: g.name.clone(),
            verdict,
            score: Points(earned),
            max_score: g.points,
        });
    }
    (groups, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use verdict_broker::{Checker, DataRef, Limits, ProblemTest, TestGroup};

    fn problem(scoring: GroupScoring) -> Problem {
        let data = DataRef {
            hash: String::new(),
            len: 0,
        };
        let test = |group: &str| ProblemTest {
            name: None,
            group: group.into(),
            sample: false,
            input: data.clone(),
            answer: Some(data.clone()),
        };
        Problem {
            id: "p".into(),
            version: 1,
            title: "p".into(),
            statement: None,
            limits: Limits {
                cpu_time_ms: 1,
                wall_time_ms: 1,
                memory_kb: 1,
                output_bytes: 1,
                processes: 1,
            },
            tests: vec![test("a"), test("a"), test("b"), test("b")],
            groups: vec![
                TestGroup {
                    name: "a".into(),
                    points: Points(30.0),
                    scoring,
                },
                TestGroup {
                    name: "b".into(),
                    points: Points(70.0),
                    scoring,
                },
            ],
            checker: Checker::default(),
            created_at: chrono::Utc::now(),
        }
    }

    fn result(index: u32, verdict: Verdict, score: Option<f64>) -> TestResult {
        TestResult {
            index,
            verdict,
            time_ms: 0,
            wall_time_ms: 0,
            memory_kb: 0,
            exit_code: Some(0),
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            name: None,
            group: None,
            sample: false,
            checker_message: None,
            score: score.map(Points),
        }
    }

    #[test]
    fn all_or_nothing_per_test_and_min() {
        let ac = Verdict::Accepted;
        let wa = Verdict::WrongAnswer;
        let rs = [
            result(1, ac, None),
            result(2, ac, None),
            result(3, ac, None),
            result(4, wa, Some(0.5)),
        ];
        let (g, total) = score(&problem(GroupScoring::AllOrNothing), &rs, wa);
        assert_eq!(total, 30.0);
        assert_eq!(g[1].verdict, wa);
        assert_eq!(g[0].verdict, ac);
        let (_, total) = score(&problem(GroupScoring::PerTest), &rs, wa);
        assert!((total - (30.0 + 70.0 * 0.75)).abs() < 1e-9, "{total}");
        let (_, total) = score(&problem(GroupScoring::Min), &rs, wa);
        assert!((total - (30.0 + 35.0)).abs() < 1e-9, "{total}");
        // A skipped test scores 0; a group none of whose tests ran takes the overall verdict.
        let (g, total) = score(
            &problem(GroupScoring::PerTest),
            &rs[..1],
            Verdict::CompilationError,
        );
        assert!((total - 15.0).abs() < 1e-9, "{total}");
        assert_eq!(g[1].verdict, Verdict::CompilationError);
    }
}

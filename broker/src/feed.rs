//! The verdict feed: every submission's final record, appended once, at its first final
//! write (the write that wins: a cancel, or the worker's result). On Redis it is the stream
//! `<namespace>:finished` (appended by the finish script itself, so atomically with the
//! final write), capped with `MAXLEN ~` [`crate::BrokerSettings::feed_max_len`]; the
//! embedded broker keeps the same entries in memory. Other services read the Redis stream
//! with their own consumer group (README, "The verdict feed").

use crate::types::{wire_name, Submission};

/// Default of [`crate::BrokerSettings::feed_max_len`].
pub const DEFAULT_FEED_MAX_LEN: u64 = 100_000;

/// One feed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// The entry id (a stream id on Redis, `<n>-0` in memory); read on after it.
    pub id: String,
    pub submission: Submission,
}

/// The stream entry's fields other than `submission` (the record's JSON), in order:
/// `id`, `owner`, `problemId`, `verdict`, `score`, `maxScore`, `finishedAt` (RFC 3339).
/// Absent values are empty strings.
pub fn fields(s: &Submission) -> Vec<String> {
    let points = |p: &Option<crate::problems::Points>| {
        p.as_ref()
            .and_then(|p| serde_json::to_value(p).ok())
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    vec![
        "id".into(),
        s.id.clone(),
        "owner".into(),
        s.owner.clone().unwrap_or_default(),
        "problemId".into(),
        s.problem_id.clone().unwrap_or_default(),
        "verdict".into(),
        s.verdict.map(wire_name).unwrap_or_default(),
        "score".into(),
        points(&s.score),
        "maxScore".into(),
        points(&s.max_score),
        "finishedAt".into(),
        s.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
    ]
}

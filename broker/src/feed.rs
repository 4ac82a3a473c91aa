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

/// How a member of a consumer group reads the feed ([`crate::Broker::feed_group_read`]),
/// Redis's model on both backends: an entry handed to a member stays *pending* in the
/// group until it is acknowledged, so a member that dies does not lose it.
///
/// A group is created at the feed's end when it is first read: it sees what finishes
/// from then on, not the backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedRead {
    /// This member's own pending entries with ids after `after` (`"0"`: all of them), as
    /// after a restart (XREADGROUP with an id).
    Pending { after: String },
    /// Entries no member has been given yet, waiting up to `wait` for one (XREADGROUP `>`).
    New { wait: std::time::Duration },
    /// Entries pending under any member for at least `min_idle`, claimed for this one
    /// (XAUTOCLAIM): the work of a member that is gone.
    Stale { min_idle: std::time::Duration },
}

/// What a group read returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedBatch {
    pub entries: Vec<FeedEntry>,
    /// Ids of entries handed over whose record is gone (trimmed from the feed, or
    /// expired): nothing to deliver; acknowledge them.
    pub gone: Vec<String>,
    /// The last id the read covered (for paging through [`FeedRead::Pending`]); `None`
    /// when the read found nothing.
    pub last_id: Option<String>,
}

//! Each output byte stored once. While a test runs, its live OutputEvent chunks are the
//! only copy of its output. When the final record is written with every test's stdout
//! and stderr, the log's chunks of the run the record holds become references into it
//! (`slice`), once checked to be exactly the record's text at those offsets; a chunk
//! that does not match (another run's, or cut differently) stays as it is.

use std::collections::HashMap;
use std::hash::Hasher;

use crate::types::{Stream, Submission};

/// Chunks shorter than this stay in the log: a reference would not be smaller.
const MIN_REFERENCED: usize = 64;

/// A logged OutputEvent, as much as the check needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunk {
    pub seq: u64,
    pub test: u32,
    pub stream: Stream,
    pub len: usize,
    pub hash: u64,
}

/// A fixed-key hash of a chunk's text (the same in every process).
pub(crate) fn hash(text: &str) -> u64 {
    #[allow(deprecated)] // SipHasher: keys fixed on purpose, stable across processes
    let mut h = std::hash::SipHasher::new();
    h.write(text.as_bytes());
    h.finish()
}

/// `(seq, offset)` of each chunk whose test and stream's chunks, in seq order, are
/// together a prefix of that stream in `record`. `chunks` are of one run, in seq order.
pub(crate) fn offsets(chunks: &[Chunk], record: &Submission) -> Vec<(u64, usize)> {
    let mut groups: HashMap<(u32, bool), Vec<&Chunk>> = HashMap::new();
    for c in chunks {
        groups
            .entry((c.test, c.stream == Stream::Stderr))
            .or_default()
            .push(c);
    }
    let mut out = Vec::new();
    for ((test, stderr), group) in groups {
        let Some(result) = record.tests.iter().find(|t| t.index == test) else {
            continue;
        };
        let text = if stderr {
            &result.stderr
        } else {
            &result.stdout
        };
        let mut offset: usize = 0;
        let mut refs = Vec::with_capacity(group.len());
        let all = group.iter().all(|c| {
            let matches = offset
                .checked_add(c.len)
                .and_then(|end| text.get(offset..end))
                .is_some_and(|part| hash(part) == c.hash);
            refs.push((c.seq, offset));
            offset += c.len;
            matches
        });
        if all {
            // A reference costs about 40 bytes: shorter chunks stay as they are.
            out.extend(
                refs.into_iter()
                    .zip(&group)
                    .filter(|(_, c)| c.len >= MIN_REFERENCED)
                    .map(|(r, _)| r),
            );
        }
    }
    out.sort_unstable();
    out
}

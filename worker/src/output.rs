//! Live output: a run's stdout and stderr chunks published as OutputEvents, in batches,
//! as valid UTF-8 and in events of bounded size.

use tokio::sync::mpsc;
use verdict_broker::{EventKind, Stream};
use verdict_sandbox::StreamKind;

/// Turns byte chunks into valid UTF-8 text without splitting a character across events.
#[derive(Default)]
struct Utf8Carry {
    tail: Vec<u8>,
}

impl Utf8Carry {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.tail.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.tail) {
            Ok(_) => self.tail.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.tail.len(),
        };
        let rest = self.tail.split_off(valid);
        let text = String::from_utf8_lossy(&self.tail).into_owned();
        self.tail = rest;
        text
    }
}

/// Live output is published at most once per this interval...
const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
/// ...unless this much is waiting (so one event stays small).
const BATCH_BYTES: usize = 64 * 1024;

/// Publishes live output as OutputEvents in batches: a chunk after a quiet spell goes out
/// at once, then at most one event per stream every 50 ms (or per 64 KiB), so a flood
/// makes few events. The sandbox stops delivering output at the output cap.
pub(crate) async fn forward_output(
    broker: verdict_broker::SharedBroker,
    id: String,
    test: u32,
    mut rx: mpsc::UnboundedReceiver<(StreamKind, Vec<u8>)>,
) {
    let mut carry = [Utf8Carry::default(), Utf8Carry::default()];
    let now = tokio::time::Instant::now();
    let mut last = now.checked_sub(BATCH_INTERVAL).unwrap_or(now);
    while let Some(first) = rx.recv().await {
        let mut size = first.1.len();
        let mut batch = vec![first];
        let deadline = last + BATCH_INTERVAL;
        while size < BATCH_BYTES {
            tokio::select! {
                biased;
                more = rx.recv() => match more {
                    Some(more) => {
                        size += more.1.len();
                        batch.push(more);
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let mut text = [String::new(), String::new()];
        for (stream, bytes) in batch {
            let k = usize::from(stream == StreamKind::Stderr);
            text[k].push_str(&carry[k].push(&bytes));
        }
        for (k, text) in text.into_iter().enumerate() {
            let stream = if k == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            // No event above BATCH_BYTES: the fan-out keeps a fixed number of events per
            // submission for slow subscribers, so event size is what bounds its memory.
            for chunk in pieces(&text, BATCH_BYTES) {
                let kind = EventKind::Output {
                    test,
                    stream,
                    chunk: chunk.to_owned(),
                };
                if let Err(e) = broker.publish(&id, kind).await {
                    tracing::warn!(error = %e, submission = %id, "dropping live output chunk");
                }
            }
        }
        last = tokio::time::Instant::now();
    }
}

/// `text` cut into pieces of at most `max` bytes, at character boundaries.
fn pieces(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut.max(rest.chars().next().map_or(1, char::len_utf8)));
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::Utf8Carry;

    #[test]
    fn pieces_respect_the_size_and_character_boundaries() {
        let text = "aé".repeat(10);
        let parts: Vec<&str> = super::pieces(&text, 4).collect();
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| p.len() <= 4 && !p.is_empty()));
        assert_eq!(super::pieces("", 4).count(), 0);
    }

    #[test]
    fn utf8_is_never_split_across_chunks() {
        let mut carry = Utf8Carry::default();
        let bytes = "héllo".as_bytes();
        assert_eq!(carry.push(&bytes[..2]), "h");
        assert_eq!(carry.push(&bytes[2..]), "éllo");
    }
}

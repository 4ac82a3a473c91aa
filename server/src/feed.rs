//! The live verdict feed behind `finishedSubmissions`.
//!
//! One task per server process follows the broker's feed with a blocking read (Redis
//! XREAD BLOCK, or the embedded broker's wake-up) and publishes how far the feed reaches.
//! Each subscriber then reads from the broker the entries after the last one it sent,
//! so a slow subscriber neither loses an entry (the feed keeps `--feed-max-len` of them)
//! nor holds up the others, and a thousand subscribers cost one blocking read.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use verdict_broker::{BrokerError, SharedBroker, Submission};

/// Entries read per broker call.
const PAGE: usize = 100;
/// How long the follower's blocking read lasts before it looks at shutdown again.
const FOLLOW_WAIT: Duration = Duration::from_secs(5);

/// Shared by every `finishedSubmissions` subscription of this process.
pub struct FeedWatch {
    broker: SharedBroker,
    shutdown: CancellationToken,
    /// The id of the newest entry the follower saw; started by the first subscriber.
    latest: OnceLock<watch::Sender<String>>,
}

impl FeedWatch {
    pub fn new(broker: SharedBroker, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(FeedWatch {
            broker,
            shutdown,
            latest: OnceLock::new(),
        })
    }

    fn receiver(&self) -> watch::Receiver<String> {
        self.latest
            .get_or_init(|| {
                let (tx, _) = watch::channel(String::new());
                tokio::spawn(follow(
                    Arc::clone(&self.broker),
                    tx.clone(),
                    self.shutdown.clone(),
                ));
                tx
            })
            .subscribe()
    }

    /// Every submission that finishes from now on (of `problem`, when given), in feed
    /// order. Ends with an error if the broker fails.
    pub async fn live(
        &self,
        problem: Option<String>,
    ) -> Result<impl Stream<Item = Result<Submission, BrokerError>> + use<>, BrokerError> {
        // The receiver exists before the starting point is read, so an entry appended
        // after that point always wakes this subscriber.
        let wake = self.receiver();
        let start = self.broker.feed_end().await?;
        let state = Follower {
            broker: Arc::clone(&self.broker),
            last: start,
            wake,
            ready: VecDeque::new(),
            problem,
            failed: false,
        };
        Ok(futures_util::stream::unfold(state, Follower::next))
    }
}

struct Follower {
    broker: SharedBroker,
    last: String,
    wake: watch::Receiver<String>,
    ready: VecDeque<Submission>,
    problem: Option<String>,
    failed: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<Submission, BrokerError>, Self)> {
        loop {
            if let Some(s) = self.ready.pop_front() {
                return Some((Ok(s), self));
            }
            if self.failed {
                return None;
            }
            match self.broker.finished_after(&self.last, PAGE).await {
                Err(e) => {
                    self.failed = true;
                    return Some((Err(e), self));
                }
                Ok(entries) if entries.is_empty() => {
                    // The follower stopped (shutdown): so does the stream.
                    self.wake.changed().await.ok()?;
                }
                Ok(entries) => {
                    for entry in entries {
                        self.last = entry.id;
                        let wanted = self
                            .problem
                            .as_ref()
                            .is_none_or(|p| entry.submission.problem_id.as_ref() == Some(p));
                        if wanted {
                            self.ready.push_back(entry.submission);
                        }
                    }
                }
            }
        }
    }
}

/// The follower task: a blocking read of the feed, over and over, publishing the newest id.
async fn follow(broker: SharedBroker, tx: watch::Sender<String>, shutdown: CancellationToken) {
    let mut last = None;
    while !shutdown.is_cancelled() {
        let after = match &last {
            Some(id) => Ok(String::clone(id)),
            None => broker.feed_end().await,
        };
        let read = match after {
            Ok(after) => {
                last = Some(after.clone());
                tokio::select! {
                    r = broker.feed_wait(&after, PAGE, FOLLOW_WAIT) => r,
                    () = shutdown.cancelled() => break,
                }
            }
            Err(e) => Err(e),
        };
        match read {
            Ok(entries) => {
                if let Some(newest) = entries.last() {
                    last = Some(newest.id.clone());
                    tx.send_replace(newest.id.clone());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "finishedSubmissions: reading the verdict feed failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
}

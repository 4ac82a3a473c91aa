//! Putting stored events' outputs back for one subscriber, reading the record at most
//! once it is final (a final record never changes), and only for what the subscriber
//! asks for.

use crate::error::Result;
use crate::types::{Event, EventKind, Outputs};
use crate::SharedBroker;

/// Which outputs a subscriber wants (its GraphQL selection, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// OutputEvent `chunk`.
    pub chunks: bool,
    /// TestFinishedEvent `result { stdout stderr }`.
    pub test_outputs: bool,
    /// FinishedEvent `submission`.
    pub record: bool,
}

impl Wanted {
    /// Everything: each event reads exactly as it did live.
    pub const ALL: Wanted = Wanted {
        chunks: true,
        test_outputs: true,
        record: true,
    };
}

/// Fills the stored events of one submission's stream ([`Event::outputs_in_record`]).
pub struct Filler {
    broker: SharedBroker,
    wanted: Wanted,
    /// The final record, once read.
    record: Option<Outputs>,
}

impl Filler {
    pub fn new(broker: SharedBroker, wanted: Wanted) -> Self {
        Filler {
            broker,
            wanted,
            record: None,
        }
    }

    /// Fills `event` in if it is stored by reference and its outputs are wanted; others
    /// pass unchanged (what is not wanted stays empty).
    pub async fn fill(&mut self, event: &mut Event) -> Result<()> {
        if !event.outputs_in_record {
            return Ok(());
        }
        let test = match &event.kind {
            EventKind::Output { .. } if self.wanted.chunks => None,
            EventKind::TestFinished { result } if self.wanted.test_outputs => Some(result.index),
            EventKind::Finished { .. } if self.wanted.record => None,
            _ => return Ok(()),
        };
        if let Some(record) = &self.record {
            event.fill(record);
            if !event.outputs_in_record {
                return Ok(());
            }
        }
        let outputs = self.broker.outputs(&event.submission_id, test).await?;
        event.fill(&outputs);
        if matches!(outputs, Outputs::Record(_)) {
            self.record = Some(outputs);
        }
        Ok(())
    }
}

//! Consumer groups on the verdict feed stream `<namespace>:finished` (feed.rs,
//! [`FeedRead`]): Redis's own stream groups. New entries come from a blocking XREADGROUP
//! on a connection of its own (a webhook sender's wait must not hold up the broker's
//! other commands); own pending entries from XREADGROUP with an id; abandoned ones from
//! XAUTOCLAIM; XACK ends them.

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

use super::RedisBroker;
use crate::error::{BrokerError, Result};
use crate::feed::{FeedBatch, FeedEntry, FeedRead};
use crate::types::Submission;

/// One stream entry of a group read: `[id, [field, value, ...]]`, or `[id, nil]` when
/// the entry was trimmed from the stream while pending.
fn entry(value: Value, batch: &mut FeedBatch) -> Result<()> {
    let mut parts = value.into_array().into_iter();
    let Some(id) = parts.next().and_then(Value::into_string) else {
        return Err(BrokerError::Protocol("a feed entry without an id".into()));
    };
    batch.last_id = Some(id.clone());
    let mut record = None;
    let mut fields = parts
        .next()
        .map(Value::into_array)
        .unwrap_or_default()
        .into_iter();
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        if k.as_str().as_deref() == Some("submission") {
            record = v.into_string();
        }
    }
    match record {
        Some(json) => {
            let submission: Submission = serde_json::from_str(&json)?;
            batch.entries.push(FeedEntry { id, submission });
        }
        None => batch.gone.push(id),
    }
    Ok(())
}

/// The entries of an XREADGROUP reply: nil, or `[[stream, [entry, ...]]]`.
fn read_reply(reply: Value) -> Result<FeedBatch> {
    let mut batch = FeedBatch::default();
    let entries = reply
        .into_array()
        .into_iter()
        .next()
        .and_then(|stream| stream.into_array().into_iter().nth(1))
        .map(Value::into_array)
        .unwrap_or_default();
    for e in entries {
        entry(e, &mut batch)?;
    }
    Ok(batch)
}

impl RedisBroker {
    /// Creates `group` at the feed's end unless this process already did (or it exists).
    async fn ensure_feed_group(&self, group: &str) -> Result<()> {
        let known = self
            .feed_groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(group);
        if known {
            return Ok(());
        }
        let created: std::result::Result<Value, Error> = self
            .client
            .xgroup_create(self.names.finished(), group, "$", true)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.details().contains("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        self.feed_groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(group.to_owned());
        Ok(())
    }

    pub(super) async fn group_read(
        &self,
        group: &str,
        consumer: &str,
        read: &FeedRead,
        count: usize,
    ) -> Result<FeedBatch> {
        self.ensure_feed_group(group).await?;
        let key = self.names.finished();
        let count = count.max(1).to_string();
        match read {
            FeedRead::Pending { after } => {
                let args = vec![
                    "GROUP", group, consumer, "COUNT", &count, "STREAMS", &key, after,
                ];
                let reply: Value = self
                    .client
                    .custom(
                        CustomCommand::new("XREADGROUP", ClusterHash::Custom(0), false),
                        args,
                    )
                    .await?;
                read_reply(reply)
            }
            FeedRead::New { wait } => {
                let client = self.feed_blocking_client().await?;
                let block = wait.as_millis().max(1).to_string();
                let args = vec![
                    "GROUP", group, consumer, "COUNT", &count, "BLOCK", &block, "STREAMS", &key,
                    ">",
                ];
                let reply: Value = client
                    .custom(
                        CustomCommand::new("XREADGROUP", ClusterHash::Custom(0), true),
                        args,
                    )
                    .await?;
                read_reply(reply)
            }
            FeedRead::Stale { min_idle } => {
                let idle = min_idle.as_millis().to_string();
                let args = vec![key.as_str(), group, consumer, &idle, "0-0", "COUNT", &count];
                let reply: Value = self
                    .client
                    .custom(
                        CustomCommand::new("XAUTOCLAIM", ClusterHash::Custom(0), false),
                        args,
                    )
                    .await?;
                // [next cursor, [entry, ...], [deleted id, ...]]
                let mut parts = reply.into_array().into_iter().skip(1);
                let mut batch = FeedBatch::default();
                for e in parts.next().map(Value::into_array).unwrap_or_default() {
                    entry(e, &mut batch)?;
                }
                for gone in parts.next().map(Value::into_array).unwrap_or_default() {
                    if let Some(id) = gone.into_string() {
                        batch.gone.push(id);
                    }
                }
                Ok(batch)
            }
        }
    }

    /// The newest entry's id (XREVRANGE), `"0"` when the stream is empty or missing.
    pub(super) async fn last_feed_id(&self) -> Result<String> {
        let newest: Vec<(String, std::collections::HashMap<String, String>)> = self
            .client
            .xrevrange(self.names.finished(), "+", "-", Some(1))
            .await?;
        Ok(newest
            .into_iter()
            .next()
            .map_or_else(|| "0".to_owned(), |(id, _)| id))
    }

    /// XREAD BLOCK after `after`, on a connection of its own.
    pub(super) async fn wait_feed(
        &self,
        after: &str,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<FeedEntry>> {
        let client = self.feed_watch_client().await?;
        let key = self.names.finished();
        let count = limit.max(1).to_string();
        let block = wait.as_millis().max(1).to_string();
        let args = vec!["COUNT", &count, "BLOCK", &block, "STREAMS", &key, after];
        let reply: Value = client
            .custom(
                CustomCommand::new("XREAD", ClusterHash::Custom(0), true),
                args,
            )
            .await?;
        Ok(read_reply(reply)?.entries)
    }

    pub(super) async fn group_ack(&self, group: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: Value = self
            .client
            .xack(self.names.finished(), group, ids.to_vec())
            .await?;
        Ok(())
    }
}

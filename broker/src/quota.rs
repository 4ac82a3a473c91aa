//! Per-caller quotas that every server shares through Redis: the submit rate and the
//! number of open WebSocket connections. (The third quota, unfinished submissions per
//! key, lives in the submit and finish scripts of the Redis backend.)
//!
//! Connections are counted per server instance: `{ns}:wsconn:{bucket}` is a hash of
//! instance → open connections of that caller on that instance, and each instance keeps
//! `{ns}:alive:{instance}` alive while it runs. Counting per instance rather than one
//! shared integer is what makes a crashed server's connections disappear from the count
//! (its alive key expires and the next check drops its field) instead of leaking forever.
//! Each instance also re-writes its own fields from its local count every
//! [`REFRESH`], so a decrement lost while Redis was unreachable heals itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;

use crate::error::Result;

/// The submit window: at most `limit` submits per caller per window, starting at the
/// caller's first submit. Fixed windows rather than a token bucket, because one atomic
/// INCR per submit is all it costs.
const RATE_WINDOW_MS: u64 = 60_000;

/// How often an instance refreshes its alive key and re-writes its connection counts.
pub const REFRESH: Duration = Duration::from_secs(10);

/// An instance whose alive key is older than this is presumed gone.
const ALIVE_MS: u64 = 30_000;

/// KEYS[1] the caller's counter, ARGV[1] the window (ms). Returns {count, ms left}.
const RATE_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
";

/// KEYS[1] the caller's hash (instance → open), KEYS[2] this instance's alive key.
/// ARGV[1] this instance, ARGV[2] the maximum (0 = none), ARGV[3] the alive-key prefix,
/// ARGV[4] the alive TTL (ms). Returns {opened (0/1), open after}.
/// The other instances' alive keys are read by name, which single-node Redis (what we
/// support) allows; Redis Cluster would need them in KEYS.
const OPEN_LUA: &str = r"
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
local total = 0
local rows = redis.call('HGETALL', KEYS[1])
for i = 1, #rows, 2 do
  local instance, n = rows[i], tonumber(rows[i + 1])
  if instance == ARGV[1] or redis.call('EXISTS', ARGV[3] .. instance) == 1 then
    total = total + n
  else
    redis.call('HDEL', KEYS[1], instance)
  end
end
local max = tonumber(ARGV[2])
if max > 0 and total >= max then return {0, total} end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return {1, total + 1}
";

/// KEYS[1] the caller's hash, ARGV[1] this instance.
const CLOSE_LUA: &str = r"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
";

/// The outcome of [`RedisQuota::open_connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionCount {
    /// Counted; the caller now has this many open across all servers.
    Opened(u64),
    /// Refused: the caller already has this many open.
    Full(u64),
}

/// Quotas counted in Redis. Cheap to share behind an `Arc`.
pub struct RedisQuota {
    client: Client,
    rate: Script,
    open: Script,
    close: Script,
    ns: String,
    instance: String,
    /// This instance's open connections per caller: the truth the refresh re-writes.
    local: Mutex<HashMap<String, u64>>,
}

impl RedisQuota {
    /// Connects to the Redis at `url`; keys live under `namespace:`. Refreshes this
    /// instance's alive key every [`REFRESH`] until the returned handle is dropped.
    pub async fn connect(url: &str, namespace: &str) -> Result<Arc<Self>> {
        let config = Config::from_url(url)?;
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(2);
            })
            .build()?;
        client.init().await?;
        let quota = Arc::new(RedisQuota {
            client,
            rate: Script::from_lua(RATE_LUA),
            open: Script::from_lua(OPEN_LUA),
            close: Script::from_lua(CLOSE_LUA),
            ns: namespace.to_owned(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            local: Mutex::new(HashMap::new()),
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&quota)));
        Ok(quota)
    }

    fn connections_key(&self, bucket: &str) -> String {
        format!("{}:wsconn:{bucket}", self.ns)
    }

    fn alive_prefix(&self) -> String {
        format!("{}:alive:", self.ns)
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one submit of `bucket`; `Err(wait)` when it already made `limit` in this
    /// window.
    pub async fn take_submit(
        &self,
        bucket: &str,
        limit: u32,
    ) -> Result<std::result::Result<(), Duration>> {
        let (count, left): (u64, u64) = self
            .rate
            .evalsha_with_reload(
                &self.client,
                vec![format!("{}:rate:{bucket}", self.ns)],
                vec![RATE_WINDOW_MS.to_string()],
            )
            .await?;
        Ok(if count <= u64::from(limit) {
            Ok(())
        } else {
            Err(Duration::from_millis(left.max(1)))
        })
    }

    /// Counts a WebSocket connection of `bucket` unless it already has `max` open on all
    /// servers together (0 = no maximum). Pair each `Opened` with [`Self::close_connection`].
    pub async fn open_connection(&self, bucket: &str, max: usize) -> Result<ConnectionCount> {
        let alive = format!("{}{}", self.alive_prefix(), self.instance);
        let (opened, open): (u64, u64) = self
            .open
            .evalsha_with_reload(
                &self.client,
                vec![self.connections_key(bucket), alive],
                vec![
                    self.instance.clone(),
                    max.to_string(),
                    self.alive_prefix(),
                    ALIVE_MS.to_string(),
                ],
            )
            .await?;
        if opened == 1 {
            *self.local().entry(bucket.to_owned()).or_insert(0) += 1;
            Ok(ConnectionCount::Opened(open))
        } else {
            Ok(ConnectionCount::Full(open))
        }
    }

    /// Releases a connection counted by [`Self::open_connection`]. The local count drops
    /// even when Redis is unreachable; the next refresh writes it back.
    pub async fn close_connection(&self, bucket: &str) -> Result<()> {
        if let Some(n) = self.local().get_mut(bucket) {
            *n = n.saturating_sub(1);
        }
        let _: i64 = self
            .close
            .evalsha_with_reload(
                &self.client,
                vec![self.connections_key(bucket)],
                vec![self.instance.clone()],
            )
            .await?;
        Ok(())
    }

    /// Keeps this instance alive and re-writes its counts (dropping callers at zero).
    async fn refresh(&self) -> Result<()> {
        let alive = format!("{}{}", self.alive_prefix(), self.instance);
        let _: () = self
            .client
            .set(
                alive,
                "1",
                Some(Expiration::PX(i64::try_from(ALIVE_MS).unwrap_or(i64::MAX))),
                None,
                false,
            )
            .await?;
        let counts: Vec<(String, u64)> = {
            let mut local = self.local();
            let counts = local.iter().map(|(k, v)| (k.clone(), *v)).collect();
            local.retain(|_, n| *n > 0);
            counts
        };
        for (bucket, n) in counts {
            let key = self.connections_key(&bucket);
            if n == 0 {
                let _: i64 = self.client.hdel(key, &self.instance).await?;
            } else {
                let _: i64 = self.client.hset(key, (&self.instance, n)).await?;
            }
        }
        Ok(())
    }
}

async fn refresh_loop(quota: Weak<RedisQuota>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(quota) = quota.upgrade() else {
            return;
        };
        if let Err(e) = quota.refresh().await {
            tracing::warn!(error = %e, "cannot refresh shared connection counts");
        }
    }
}

//! The distributed backend on Redis (fred 10).
//!
//! Keys, per submission `{id}`:
//! - `verdict:sub:{id}`: hash with `record` (JSON), `status`, `seq` (last event number),
//!   `done` (set once by the first final write), `bytes` (what the log and the results
//!   hold, for the per-submission cap) and `t:{k}`: test k's result with its output,
//!   from its TestFinishedEvent until the final record holds it;
//! - `verdict:log:{id}`: list of event JSON, index = seq - 1, as stored: TestFinishedEvent
//!   and FinishedEvent without their outputs (`outputs_in_record`), which are in `t:{k}`
//!   or the record, so each output byte is kept once;
//! - channel `verdict:ch:{id}`: the complete event JSON, published live.
//!
//! The job queue is the stream `verdict:jobs`, read through the consumer group
//! `verdict-workers`. Each write that makes an event (submit, publish, finish) is one Lua
//! script, so seq assignment, log append, status update and PUBLISH are atomic.
//!
//! Connections per process: one command client, one subscriber client (servers and
//! workers that watch), and for workers one dedicated client for blocking XREADGROUP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};

mod feed_group;
use tokio::sync::{mpsc, OnceCell};

use crate::error::{BrokerError, Result};
use crate::hub::{Control, Hub, LiveEvents, HUB_CAPACITY};
use crate::latency::{micros, Histogram, JobLatency};
use crate::once;
use crate::retention;
use crate::types::{wire_name, Event, EventKind, Job, Outputs, Submission, TestResult};
use crate::{Broker, BrokerSettings, Delivery, QueueStats, Toolchains, WorkerInfo, WORKER_STALE};

const GROUP: &str = "workers";
/// Length of the placeholder prefix `{"seq":0` that the scripts replace.
const SEQ_PLACEHOLDER: &str = "{\"seq\":0";

/// Key and channel names under one namespace, so several deployments (or test runs) can
/// share a Redis without seeing each other.
#[derive(Debug, Clone)]
struct Names {
    ns: String,
}

impl Names {
    fn record(&self, id: &str) -> String {
        format!("{}:sub:{id}", self.ns)
    }
    fn log(&self, id: &str) -> String {
        format!("{}:log:{id}", self.ns)
    }
    fn channel(&self, id: &str) -> String {
        format!("{}:ch:{id}", self.ns)
    }
    fn jobs(&self) -> String {
        format!("{}:jobs", self.ns)
    }
    fn workers(&self) -> String {
        format!("{}:workers", self.ns)
    }
    /// Prefix of the per-worker alive keys (`{ns}:alive-worker:{consumer}`), which expire
    /// [`BrokerSettings::worker_alive`] after the worker's last sign of life.
    fn alive_prefix(&self) -> String {
        format!("{}:alive-worker:", self.ns)
    }
    /// Unfinished submissions of one API key (the per-key quota's counter).
    fn unfinished(&self, owner: Option<&str>) -> String {
        format!("{}:unfinished:{}", self.ns, owner.unwrap_or("-"))
    }
    /// The verdict feed (feed.rs).
    fn finished(&self) -> String {
        format!("{}:finished", self.ns)
    }
    /// Finished submissions by verdict, for metrics.
    fn verdicts(&self) -> String {
        format!("{}:verdicts", self.ns)
    }
    /// Latency histograms (`q:` queue wait, `r:` run; bucket index or `sum`).
    fn latency(&self) -> String {
        format!("{}:latency", self.ns)
    }
}

/// Queues a submission: its record, its first event (QueuedEvent, with its position) in
/// the log and on the channel, and the job on the stream, unless the queue or the
/// owner's quota is full.
/// KEYS[1] the record hash, KEYS[2] the event log, KEYS[3] the jobs stream, KEYS[4] the
/// owner's unfinished counter. ARGV[1] the submission record JSON, ARGV[2] the
/// QueuedEvent JSON (`{"seq":0` prefix and `"position":null` filled in here), ARGV[3] the
/// channel, ARGV[4] the TTL (s), ARGV[5] the job JSON, ARGV[6] the queue maximum
/// (0 = none), ARGV[7] the consumer group, ARGV[8] the owner's maximum of unfinished
/// submissions (0 = none), ARGV[9] '1' when the submission has an owner.
/// Returns {0, position}, {1, jobs waiting} (queue full) or {2, owner's unfinished}.
const SUBMIT_LUA: &str = r#"
local max = tonumber(ARGV[6])
local pending = redis.call('XPENDING', KEYS[3], ARGV[7])[1]
local waiting = redis.call('XLEN', KEYS[3]) - pending
if max > 0 and waiting >= max then return {1, waiting} end
if ARGV[9] == '1' then
  local busy = tonumber(redis.call('GET', KEYS[4]) or '0')
  local cap = tonumber(ARGV[8])
  if cap > 0 and busy >= cap then return {2, busy} end
  redis.call('INCR', KEYS[4])
end
local position = waiting + 1
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', 'QUEUED', 'seq', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
local ev = '{"seq":1' .. string.sub(string.gsub(ARGV[2], '"position":null', '"position":' .. position, 1), 9)
redis.call('RPUSH', KEYS[2], ev)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('XADD', KEYS[3], '*', 'job', ARGV[5])
redis.call('PUBLISH', ARGV[3], ev)
return {0, position}
"#;

/// Renews a lease only if this consumer still holds it (XCLAIM alone would steal it back
/// from a worker that reclaimed it after our lease expired). Renewing also proves the
/// worker alive (KEYS[2], ARGV[4] ms), so a live owner's jobs are never taken early.
/// KEYS[1] the jobs stream, KEYS[2] this worker's alive key. ARGV[1] the consumer group,
/// ARGV[2] this consumer, ARGV[3] the entry id, ARGV[4] the alive TTL (ms).
/// Returns 1 when the lease was renewed, 0 when another consumer holds it.
const RENEW_LUA: &str = r#"
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"#;

/// A heartbeat: the worker registry entry (for `stats`) and the alive key, in one trip.
/// KEYS[1] the worker registry hash, KEYS[2] this worker's alive key. ARGV[1] this
/// consumer, ARGV[2] its WorkerInfo JSON, ARGV[3] the alive TTL (ms). Returns 1.
const HEARTBEAT_LUA: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
return 1
"#;

/// The registry entries (KEYS[1]) of the workers whose alive key (prefix ARGV[1]) still
/// exists: the alive key's TTL is Redis's clock, so no skew between machines matters.
/// KEYS[1] the worker registry hash. ARGV[1] the alive-key prefix. Returns the live
/// workers' WorkerInfo JSONs.
const LIVE_WORKERS_LUA: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  if redis.call('EXISTS', ARGV[1] .. all[i]) == 1 then live[#live + 1] = all[i + 1] end
end
return live
"#;

/// Finds one job to take back for consumer ARGV[2], and refreshes its alive key.
/// First the jobs of workers whose alive key expired (dead: they neither heartbeat nor
/// renew), once idle for the alive time ARGV[4] ms; XCLAIM with that minimum idle time
/// refuses an entry its owner renewed meanwhile. Then, as before, any entry idle past the
/// visibility timeout ARGV[5] ms (a live worker that stopped renewing one job).
/// KEYS[1] the jobs stream. ARGV[1] the consumer group, ARGV[2] this consumer, ARGV[3] the
/// alive-key prefix, ARGV[4] the alive time (ms), ARGV[5] the visibility timeout (ms).
/// Returns {id, [field, value, ...], times delivered before, dead owner or ''} or {}.
const RECLAIM_LUA: &str = r#"
redis.call('SET', ARGV[3] .. ARGV[2], '1', 'PX', ARGV[4])
local owners = redis.call('XPENDING', KEYS[1], ARGV[1])[4]
if owners then
  for _, row in ipairs(owners) do
    local owner = row[1]
    if owner ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. owner) == 0 then
      local rows = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[4], '-', '+', 1, owner)
      if #rows > 0 then
        local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], rows[1][1])
        local e = got[1]
        if e then return {e[1], e[2], rows[1][4], owner} end
      end
    end
  end
end
local auto = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[5], '0-0', 'COUNT', 1)
local e = auto[2][1]
if e then
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
  return {e[1], e[2], p[1][4] - 1, ''}
end
return {}
"#;

/// Appends the stored event ARGV[1] and publishes the live one: ARGV[6] ('' = the
/// stored one), followed by the result JSON ARGV[8] and `}` when ARGV[9] is '1' (so the
/// output travels once). ARGV[7]: the index k of a finished test, whose result ARGV[8]
/// goes to the record's `t:k` field ('' = none).
/// KEYS[1] the record hash, KEYS[2] the event log. ARGV[1] the stored event JSON (its
/// `{"seq":0` prefix replaced here), ARGV[2] the channel, ARGV[3] the new status
/// ('' = unchanged), ARGV[4] the TTL (s), ARGV[5] the most bytes the log may hold with
/// this event (0 = no check; the record's `bytes` field counts the log's bytes),
/// ARGV[6] the live event JSON, ARGV[7] the finished test's index, ARGV[8] its result
/// JSON, ARGV[9] '1' when the live event ends with ARGV[8] (see `live_json`).
/// Returns {seq}, {0} (already finished), {-1} (no such submission) or {-2, bytes in
/// the log} (over ARGV[5]; nothing written).
const PUBLISH_LUA: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'record') == 0 then return {-1} end
if redis.call('HGET', KEYS[1], 'done') == '1' then return {0} end
local limit = tonumber(ARGV[5])
if limit > 0 then
  local used = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
  if used + #ARGV[1] + #ARGV[8] > limit then return {-2, used} end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local head = '{"seq":' .. seq
local ev = head .. string.sub(ARGV[1], 9)
redis.call('HINCRBY', KEYS[1], 'bytes', #ev + #ARGV[8])
redis.call('RPUSH', KEYS[2], ev)
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 't:' .. ARGV[7], ARGV[8]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[3]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local live = ev
if ARGV[6] ~= '' then
  live = head .. string.sub(ARGV[6], 9)
  if ARGV[9] == '1' then live = live .. ARGV[8] .. '}' end
end
redis.call('PUBLISH', ARGV[2], live)
return {seq}
"#;

/// ARGV[11]: the most bytes the log, the final record and FinishedEvent may take
/// together (0 = no check); over it the reply is {-2, bytes in the log} and nothing is
/// written, so the caller can cut the record and try again. ARGV[1] is the stored
/// FinishedEvent (no outputs); the live one is ARGV[12], followed by the record ARGV[3]
/// and `}` when ARGV[13] is '1'. ARGV[14] = n, ARGV[15..14+n]: the indices of the tests
/// the record holds, whose `t:k` results it replaces; then pairs (log index, JSON) of
/// OutputEvents that become references into the record (see `once`).
/// KEYS[1] the record hash, KEYS[2] the event log, KEYS[3] the owner's unfinished
/// counter, KEYS[4] the verdict counts, KEYS[5] the latency histograms, KEYS[6] the
/// verdict feed stream (feed.rs; its MAXLEN and the JSON array of the entry's fields but
/// `submission` are the last two ARGV, after the pairs). ARGV[1] the
/// stored FinishedEvent JSON, ARGV[2] the channel, ARGV[3] the final record JSON, ARGV[4]
/// the TTL (s), ARGV[5] the verdict, ARGV[6] '1' when the submission has an owner,
/// ARGV[7]/ARGV[8] the queue-wait bucket and µs ('' = none), ARGV[9]/ARGV[10] the run's,
/// ARGV[11] the byte budget, ARGV[12] the live FinishedEvent JSON, ARGV[13] '1' when it
/// ends with ARGV[3], ARGV[14] = n, then the test indices and (log index, JSON) pairs.
/// Returns {seq}, {0} (already finished), {-1} (no such submission) or {-2, bytes in
/// the log} (over ARGV[11]; nothing written).
const FINISH_LUA: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'record') == 0 then return {-1} end
if redis.call('HGET', KEYS[1], 'done') == '1' then return {0} end
local limit = tonumber(ARGV[11])
local n = tonumber(ARGV[14])
if limit > 0 then
  local used = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
  for i = 15, 14 + n do used = used - redis.call('HSTRLEN', KEYS[1], 't:' .. ARGV[i]) end
  if used + #ARGV[1] + #ARGV[3] > limit then return {-2, used} end
end
redis.call('HSET', KEYS[1], 'done', '1')
for i = 15, 14 + n do redis.call('HDEL', KEYS[1], 't:' .. ARGV[i]) end
for i = 15 + n, #ARGV - 3, 2 do redis.call('LSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
local feed = cjson.decode(ARGV[#ARGV])
table.insert(feed, 'submission')
table.insert(feed, ARGV[3])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[#ARGV - 1], '*', unpack(feed))
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local head = '{"seq":' .. seq
local ev = head .. string.sub(ARGV[1], 9)
redis.call('RPUSH', KEYS[2], ev)
redis.call('HSET', KEYS[1], 'record', ARGV[3], 'status', 'FINISHED')
if ARGV[6] == '1' then
  if redis.call('DECR', KEYS[3]) <= 0 then redis.call('DEL', KEYS[3]) end
end
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
if ARGV[7] ~= '' then
  redis.call('HINCRBY', KEYS[5], 'q:' .. ARGV[7], 1)
  redis.call('HINCRBY', KEYS[5], 'q:sum', ARGV[8])
end
if ARGV[9] ~= '' then
  redis.call('HINCRBY', KEYS[5], 'r:' .. ARGV[9], 1)
  redis.call('HINCRBY', KEYS[5], 'r:sum', ARGV[10])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local live = head .. string.sub(ARGV[12], 9)
if ARGV[13] == '1' then live = live .. ARGV[3] .. '}' end
redis.call('PUBLISH', ARGV[2], live)
return {seq}
"#;

/// The outcome of an event-writing script.
enum Appended {
    /// Stored and published with this seq.
    Stored(u64),
    /// Someone else's final write came first; nothing was written.
    Finished,
    /// It would take the submission past its retained-bytes budget; nothing was
    /// written. The log holds this many bytes.
    OverBudget(u64),
}

/// How to reach Redis and how this process uses it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Prefix of every key and channel (default `verdict`).
    pub namespace: String,
    pub broker: BrokerSettings,
}

/// Redis-backed broker. Cheap to share behind an `Arc`.
pub struct RedisBroker {
    client: Client,
    subscriber: SubscriberClient,
    /// Created on first `next_job`, so servers never open it.
    blocking: OnceCell<Client>,
    /// The verdict feed's blocking group reads (webhooks), created on first use.
    feed_blocking: OnceCell<Client>,
    /// The verdict feed's blocking reads for live readers (`finishedSubmissions`).
    feed_watch: OnceCell<Client>,
    /// Feed consumer groups this process made sure exist.
    feed_groups: std::sync::Mutex<std::collections::HashSet<String>>,
    config: Config,
    names: Names,
    hub: Arc<Hub>,
    settings: BrokerSettings,
    submit_script: Script,
    publish_script: Script,
    finish_script: Script,
    renew_script: Script,
    heartbeat_script: Script,
    live_workers_script: Script,
    reclaim_script: Script,
    /// Entries pending under this process's own consumer names when it first asked for
    /// work: left by an earlier process of the same name (a container restarted with
    /// the same hostname and pid), handed out before anything else. (id, times delivered)
    inherited: std::sync::Mutex<HashMap<String, std::collections::VecDeque<(String, u64)>>>,
    /// When this process last looked for expired leases (XAUTOCLAIM), to do it ~1/s.
    last_reclaim: std::sync::Mutex<Option<std::time::Instant>>,
    /// Reconnects of any of this process's Redis connections, for /metrics.
    reconnects: Arc<AtomicU64>,
    /// The OutputEvents this process logged per unfinished submission (see [`once`]).
    chunks: std::sync::Mutex<HashMap<String, TrackedChunks>>,
}

type TrackedChunks = Vec<(once::Chunk, chrono::DateTime<Utc>)>;

/// Unfinished submissions whose chunks one process tracks at most.
const TRACKED_MAX: usize = 4096;

/// Counts `client`'s reconnects into `counter` for as long as the client lives.
fn count_reconnects(client: &impl EventInterface, counter: &Arc<AtomicU64>) {
    let mut rx = client.reconnect_rx();
    let counter = Arc::clone(counter);
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(server) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%server, "reconnected to Redis");
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

fn builder(config: &Config) -> Builder {
    let mut builder = Builder::from_config(config.clone());
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(5);
            // fred's default of 32 makes a busy subscriber lag; lag is handled anyway.
            p.broadcast_channel_capacity = 4096;
        });
    builder
}

impl RedisBroker {
    /// Connects (command and subscriber clients) and makes sure the consumer group exists.
    pub async fn connect(settings: RedisSettings) -> Result<Arc<Self>> {
        let config = Config::from_url(&settings.url)?;
        let client = builder(&config).build()?;
        client.init().await?;
        let subscriber = builder(&config).build_subscriber_client()?;
        subscriber.init().await?;
        // Re-subscribes every tracked channel after a reconnect; runs for the client's life.
        drop(subscriber.manage_subscriptions());

        let names = Names {
            ns: settings.namespace.clone(),
        };
        let reconnects = Arc::new(AtomicU64::new(0));
        count_reconnects(&client, &reconnects);
        count_reconnects(&subscriber, &reconnects);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let hub = Hub::new(HUB_CAPACITY, Some(control_tx));
        let broker = Arc::new(RedisBroker {
            client,
            subscriber,
            blocking: OnceCell::new(),
            feed_blocking: OnceCell::new(),
            feed_watch: OnceCell::new(),
            feed_groups: std::sync::Mutex::new(std::collections::HashSet::new()),
            config,
            names: names.clone(),
            hub,
            settings: settings.broker,
            submit_script: Script::from_lua(SUBMIT_LUA),
            publish_script: Script::from_lua(PUBLISH_LUA),
            finish_script: Script::from_lua(FINISH_LUA),
            renew_script: Script::from_lua(RENEW_LUA),
            heartbeat_script: Script::from_lua(HEARTBEAT_LUA),
            live_workers_script: Script::from_lua(LIVE_WORKERS_LUA),
            reclaim_script: Script::from_lua(RECLAIM_LUA),
            inherited: std::sync::Mutex::new(HashMap::new()),
            last_reclaim: std::sync::Mutex::new(None),
            reconnects,
            chunks: std::sync::Mutex::new(HashMap::new()),
        });
        broker.ensure_group().await?;
        tokio::spawn(control_loop(
            broker.subscriber.clone(),
            Arc::clone(&broker.hub),
            names,
            control_rx,
        ));
        tokio::spawn(message_loop(
            broker.subscriber.clone(),
            Arc::clone(&broker.hub),
        ));
        Ok(broker)
    }

    async fn ensure_group(&self) -> Result<()> {
        let created: std::result::Result<Value, Error> = self
            .client
            .xgroup_create(self.names.jobs(), GROUP, "$", true)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn blocking_client(&self) -> Result<&Client> {
        self.dedicated(&self.blocking).await
    }

    async fn feed_blocking_client(&self) -> Result<&Client> {
        self.dedicated(&self.feed_blocking).await
    }

    async fn feed_watch_client(&self) -> Result<&Client> {
        self.dedicated(&self.feed_watch).await
    }

    /// A connection of its own for blocking reads, without a command timeout.
    async fn dedicated<'a>(&'a self, cell: &'a OnceCell<Client>) -> Result<&'a Client> {
        cell.get_or_try_init(|| async {
            let client = builder(&self.config)
                .with_performance_config(|p| p.default_command_timeout = Duration::ZERO)
                .build()?;
            client.init().await?;
            count_reconnects(&client, &self.reconnects);
            Ok::<_, BrokerError>(client)
        })
        .await
    }

    fn ttl_secs(&self) -> String {
        self.settings.ttl.as_secs().max(1).to_string()
    }

    fn placeholder(event: &Event) -> Result<String> {
        let json = serde_json::to_string(event)?;
        debug_assert!(json.starts_with(SEQ_PLACEHOLDER));
        Ok(json)
    }

    /// The live event's placeholder JSON for a script that also gets `part` (a result or
    /// record JSON): when the live event ends with `part` and `}`, only what comes before
    /// it, and "1" (the script appends `part` and `}`), so the output travels once; else
    /// all of it and "0".
    fn live_json(event: &Event, part: &str) -> Result<(String, String)> {
        let mut json = Self::placeholder(event)?;
        let body = json.len().saturating_sub(1);
        if json.ends_with('}')
            && json[..body].ends_with(part)
            && body - part.len() >= SEQ_PLACEHOLDER.len()
        {
            json.truncate(body - part.len());
            return Ok((json, "1".to_owned()));
        }
        Ok((json, "0".to_owned()))
    }

    /// The publish script's arguments after the status: the stored event, and for a
    /// finished test its index and result (whole: the record side keeps it).
    fn publish_args(event: &Event, limit: u64) -> Result<(String, Vec<String>)> {
        let stored = Self::placeholder(&event.stored())?;
        let EventKind::TestFinished { result } = &event.kind else {
            let rest = vec![
                limit.to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ];
            return Ok((stored, rest));
        };
        let full = serde_json::to_string(result)?;
        let live = Event {
            kind: EventKind::TestFinished {
                result: result.for_event(),
            },
            ..event.clone()
        };
        let (live, concat) = Self::live_json(&live, &full)?;
        Ok((
            stored,
            vec![
                limit.to_string(),
                live,
                result.index.to_string(),
                full,
                concat,
            ],
        ))
    }
}

/// Executes SUBSCRIBE/UNSUBSCRIBE in request order (see `hub::Control`).
async fn control_loop(
    subscriber: SubscriberClient,
    hub: Arc<Hub>,
    names: Names,
    mut rx: mpsc::UnboundedReceiver<Control>,
) {
    while let Some(control) = rx.recv().await {
        match control {
            Control::Subscribe(id, done) => {
                if let Err(e) = subscriber.subscribe(names.channel(&id)).await {
                    // manage_subscriptions re-subscribes after reconnect; the watcher's
                    // periodic log check covers the meantime.
                    tracing::warn!(error = %e, submission = %id, "subscribe failed");
                }
                let _ = done.send(true);
            }
            Control::Unsubscribe(id) => {
                if !hub.is_watched(&id) {
                    if let Err(e) = subscriber.unsubscribe(names.channel(&id)).await {
                        tracing::warn!(error = %e, submission = %id, "unsubscribe failed");
                    }
                }
            }
        }
    }
}

/// Reads the one Pub/Sub connection and fans out. Never stops on lag: lag and reconnects
/// turn into `Resync` for every local watcher, which re-reads its log.
async fn message_loop(subscriber: SubscriberClient, hub: Arc<Hub>) {
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    let parsed = message.value.as_bytes().map(serde_json::from_slice::<Event>);
                    match parsed {
                        Some(Ok(event)) => hub.deliver(event),
                        Some(Err(e)) => tracing::error!(error = %e, channel = %message.channel, "unparsable event"),
                        None => tracing::error!(channel = %message.channel, "non-bytes pubsub message"),
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "pubsub receiver lagged; resyncing watchers from the log");
                    hub.resync_all();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    // fred replaces its channels on some reconnect paths; take the new one.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    messages = subscriber.message_rx();
                    hub.resync_all();
                }
            },
            reconnect = reconnects.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = reconnect {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    reconnects = subscriber.reconnect_rx();
                }
                tracing::info!("pubsub reconnected; resyncing watchers from the log");
                hub.resync_all();
            }
        }
    }
}

impl RedisBroker {
    /// Runs an event-writing script (publish or finish): it assigns the seq, appends to
    /// the log and publishes, atomically. `json` is the event's placeholder JSON; `extra`
    /// is the script's third argument (the new status, or the final record).
    async fn append_event(
        &self,
        script: &Script,
        id: &str,
        json: String,
        extra: String,
        more_keys: Vec<String>,
        more_args: Vec<String>,
    ) -> Result<Appended> {
        let mut keys = vec![self.names.record(id), self.names.log(id)];
        keys.extend(more_keys);
        let mut args = vec![json, self.names.channel(id), extra, self.ttl_secs()];
        args.extend(more_args);
        let reply: Vec<i64> = script.evalsha_with_reload(&self.client, keys, args).await?;
        match (reply.first().copied(), reply.get(1).copied()) {
            (Some(-1), _) => Err(BrokerError::NotFound(id.to_owned())),
            (Some(0), _) => Ok(Appended::Finished),
            (Some(-2), Some(used)) => Ok(Appended::OverBudget(used.unsigned_abs())),
            (Some(n), _) if n > 0 => Ok(Appended::Stored(n.unsigned_abs())),
            _ => Err(BrokerError::Closed),
        }
    }

    /// Notes an OutputEvent this process logged, so the final write can turn it into a
    /// reference into the record; a RunningEvent starts its test's run afresh.
    fn track(&self, event: &Event) {
        let mut chunks = self
            .chunks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &event.kind {
            EventKind::Output {
                test,
                stream,
                chunk,
            } => {
                if !chunks.contains_key(&event.submission_id) && chunks.len() >= TRACKED_MAX {
                    // Submissions this process never finished (crashed runs): forget one.
                    if let Some(old) = chunks.keys().next().cloned() {
                        chunks.remove(&old);
                    }
                }
                chunks
                    .entry(event.submission_id.clone())
                    .or_default()
                    .push((
                        once::Chunk {
                            seq: event.seq,
                            test: *test,
                            stream: *stream,
                            len: chunk.len(),
                            hash: once::hash(chunk),
                        },
                        event.at,
                    ));
            }
            EventKind::Running { test, .. } => {
                if let Some(list) = chunks.get_mut(&event.submission_id) {
                    list.retain(|(c, _)| c.test != *test);
                }
            }
            _ => {}
        }
    }

    fn forget_chunks(&self, id: &str) {
        self.chunks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }

    /// The finish script's (log index, reference JSON) pairs for the chunks this process
    /// logged that are exactly the record's text.
    fn chunk_refs(&self, record: &Submission) -> Result<Vec<String>> {
        let list: Vec<(once::Chunk, chrono::DateTime<Utc>)> = self
            .chunks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&record.id)
            .cloned()
            .unwrap_or_default();
        if list.is_empty() {
            return Ok(Vec::new());
        }
        let plain: Vec<once::Chunk> = list.iter().map(|(c, _)| *c).collect();
        let at: HashMap<u64, (once::Chunk, chrono::DateTime<Utc>)> =
            list.into_iter().map(|(c, t)| (c.seq, (c, t))).collect();
        let mut args = Vec::new();
        for (seq, offset) in once::offsets(&plain, record) {
            let Some((c, at)) = at.get(&seq) else {
                continue;
            };
            let reference = Event {
                seq,
                submission_id: record.id.clone(),
                at: *at,
                outputs_in_record: true,
                slice: Some([offset, c.len]),
                kind: EventKind::Output {
                    test: c.test,
                    stream: c.stream,
                    chunk: String::new(),
                },
            };
            args.push(seq.saturating_sub(1).to_string());
            args.push(serde_json::to_string(&reference)?);
        }
        Ok(args)
    }

    fn cap(&self) -> u64 {
        self.settings.max_retained_bytes_per_submission
    }

    /// Hands out a dead worker's job first, else a new job.
    async fn take_job(&self, consumer: &str, wait: Duration) -> Result<Option<Delivery>> {
        if let Some(delivery) = self.inherited(consumer).await? {
            return Ok(Some(delivery));
        }
        if let Some(delivery) = self.reclaim(consumer).await? {
            return Ok(Some(delivery));
        }
        let client = self.blocking_client().await?;
        let jobs = self.names.jobs();
        // Wake at least once a second so expired leases are noticed while idle.
        let block_ms = wait.as_millis().clamp(1, 1000).to_string();
        let args = vec![
            "GROUP", GROUP, consumer, "COUNT", "1", "BLOCK", &block_ms, "STREAMS", &jobs, ">",
        ];
        let reply: Value = client
            .custom(
                CustomCommand::new("XREADGROUP", ClusterHash::Custom(0), true),
                args,
            )
            .await?;
        // Reply: nil, or [[stream, [[id, [field, value...]]]]] (RESP2 array form).
        let entry = reply
            .into_array()
            .into_iter()
            .next()
            .and_then(|stream| stream.into_array().into_iter().nth(1))
            .and_then(|entries| entries.into_array().into_iter().next());
        let Some((id, job)) = entry.and_then(parse_stream_entry) else {
            return Ok(None);
        };
        let job: Job = serde_json::from_str(&job)?;
        Ok(Some(Delivery {
            id,
            consumer: consumer.to_owned(),
            job,
            redeliveries: 0,
        }))
    }

    /// Takes back one job of a dead worker: see [`RECLAIM_LUA`]. At most once a second
    /// per process unless the last look found one (more may be waiting).
    async fn reclaim(&self, consumer: &str) -> Result<Option<Delivery>> {
        {
            let mut last = self
                .last_reclaim
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = std::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
                return Ok(None);
            }
            *last = Some(now);
        }
        let alive = self.settings.worker_alive.as_millis().max(1).to_string();
        let idle = self.settings.visibility_timeout.as_millis().to_string();
        let reply: Value = self
            .reclaim_script
            .evalsha_with_reload(
                &self.client,
                vec![self.names.jobs()],
                vec![
                    GROUP.to_owned(),
                    consumer.to_owned(),
                    self.names.alive_prefix(),
                    alive,
                    idle,
                ],
            )
            .await?;
        // {id, [field, value...], times delivered before, dead owner or ""} or {}
        let mut row = reply.into_array().into_iter();
        let (Some(id), Some(fields), Some(delivered), owner) =
            (row.next(), row.next(), row.next(), row.next())
        else {
            return Ok(None);
        };
        let Some((id, job)) = parse_stream_entry(Value::Array(vec![id, fields])) else {
            return Ok(None);
        };
        // Look again soon: more may have expired with the same worker.
        *self
            .last_reclaim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let delivered = delivered.as_u64().unwrap_or(1);
        let job: Job = serde_json::from_str(&job)?;
        let owner = owner.and_then(|o| o.into_string()).unwrap_or_default();
        if owner.is_empty() {
            tracing::warn!(submission = %job.submission.id, delivered, "reclaimed a job whose lease expired");
        } else {
            tracing::warn!(submission = %job.submission.id, delivered, %owner, "reclaimed a job from a worker that stopped heartbeating");
        }
        Ok(Some(Delivery {
            id,
            consumer: consumer.to_owned(),
            job,
            redeliveries: delivered,
        }))
    }

    /// Hands out, once, each entry that was pending under `consumer` before this process
    /// first asked for work as `consumer`: they belong to a dead earlier process of the
    /// same name, whose alive key this process keeps fresh, so [`Self::reclaim`] would
    /// only find them after the visibility timeout.
    async fn inherited(&self, consumer: &str) -> Result<Option<Delivery>> {
        let known = self
            .inherited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(consumer);
        if !known {
            let jobs = self.names.jobs();
            let rows: Value = self
                .client
                .custom(
                    CustomCommand::new("XPENDING", ClusterHash::FirstKey, false),
                    vec![jobs.as_str(), GROUP, "-", "+", "1000", consumer],
                )
                .await?;
            // [[id, consumer, idle ms, times delivered], ...]
            let found: std::collections::VecDeque<(String, u64)> = rows
                .into_array()
                .into_iter()
                .filter_map(|row| {
                    let mut row = row.into_array().into_iter();
                    let id = row.next()?.into_string()?;
                    let delivered = row.nth(2)?.as_u64()?;
                    Some((id, delivered))
                })
                .collect();
            if !found.is_empty() {
                tracing::warn!(
                    consumer,
                    jobs = found.len(),
                    "taking back jobs an earlier process of this name left running"
                );
            }
            self.inherited
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(consumer.to_owned())
                .or_insert(found);
        }
        loop {
            let next = self
                .inherited
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(consumer)
                .and_then(std::collections::VecDeque::pop_front);
            let Some((id, delivered)) = next else {
                return Ok(None);
            };
            let jobs = self.names.jobs();
            // XCLAIM to ourselves: counts the delivery and resets the idle time.
            let reply: Value = self
                .client
                .custom(
                    CustomCommand::new("XCLAIM", ClusterHash::FirstKey, false),
                    vec![jobs.as_str(), GROUP, consumer, "0", id.as_str()],
                )
                .await?;
            let entry = reply.into_array().into_iter().next();
            let Some((id, job)) = entry.and_then(parse_stream_entry) else {
                continue; // acked or deleted meanwhile
            };
            let job: Job = serde_json::from_str(&job)?;
            return Ok(Some(Delivery {
                id,
                consumer: consumer.to_owned(),
                job,
                redeliveries: delivered,
            }));
        }
    }
}

/// (entry id, job) of an XREADGROUP / XAUTOCLAIM entry: `[id, [field, value, ...]]`.
fn parse_stream_entry(value: Value) -> Option<(String, String)> {
    let mut entry = value.into_array().into_iter();
    let id = entry.next()?.into_string()?;
    let fields = entry.next()?.into_array();
    let mut job = None;
    let mut iter = fields.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        if k.as_str().as_deref() == Some("job") {
            job = v.into_string();
        }
    }
    Some((id, job?))
}

#[async_trait]
impl Broker for RedisBroker {
    async fn submit(&self, job: &Job) -> Result<Event> {
        if !self.client.is_connected() {
            return Err(BrokerError::Unavailable);
        }
        let id = &job.submission.id;
        let mut event = Event {
            seq: 0,
            submission_id: id.clone(),
            at: Utc::now(),
            outputs_in_record: false,
            slice: None,
            kind: EventKind::Queued { position: None },
        };
        let record = serde_json::to_string(&job.submission)?;
        let placeholder = Self::placeholder(&event)?;
        let job_json = serde_json::to_string(job)?;
        let owner = job.submission.owner.as_deref();
        let reply: Vec<i64> = self
            .submit_script
            .evalsha_with_reload(
                &self.client,
                vec![
                    self.names.record(id),
                    self.names.log(id),
                    self.names.jobs(),
                    self.names.unfinished(owner),
                ],
                vec![
                    record,
                    placeholder,
                    self.names.channel(id),
                    self.ttl_secs(),
                    job_json,
                    self.settings.max_queue.to_string(),
                    GROUP.to_owned(),
                    owner
                        .map_or(0, |o| self.settings.unfinished_cap(o))
                        .to_string(),
                    if owner.is_some() { "1" } else { "0" }.to_owned(),
                ],
            )
            .await?;
        let (code, position) = (reply.first().copied(), reply.get(1).copied().unwrap_or(0));
        match code {
            Some(0) => {}
            Some(1) => return Err(BrokerError::QueueFull(position.unsigned_abs())),
            Some(2) => return Err(BrokerError::OwnerBusy(position.unsigned_abs())),
            _ => return Err(BrokerError::Closed),
        }
        event.seq = 1;
        event.kind = EventKind::Queued {
            position: Some(position.unsigned_abs()),
        };
        Ok(event)
    }

    async fn submission(&self, id: &str) -> Result<Option<Submission>> {
        let (record, status): (Option<String>, Option<String>) = self
            .client
            .hmget(self.names.record(id), vec!["record", "status"])
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let mut submission: Submission = serde_json::from_str(&record)?;
        if let Some(status) = status {
            if let Ok(status) = serde_json::from_value(serde_json::Value::String(status)) {
                submission.status = status;
            }
        }
        Ok(Some(submission))
    }

    async fn publish(&self, id: &str, kind: EventKind) -> Result<Option<Event>> {
        let status = kind.status().map(wire_name).unwrap_or_default();
        let cap = self.cap();
        let mut limit = if cap > 0 && retention::carries_output(&kind) {
            retention::log_share(cap)
        } else {
            0
        };
        let mut event = Event {
            seq: 0,
            submission_id: id.to_owned(),
            at: Utc::now(),
            outputs_in_record: false,
            slice: None,
            kind,
        };
        loop {
            let (json, args) = Self::publish_args(&event, limit)?;
            let outcome = self
                .append_event(&self.publish_script, id, json, status.clone(), vec![], args)
                .await?;
            let used = match outcome {
                Appended::Stored(seq) => {
                    event.seq = seq;
                    self.track(&event);
                    // What subscribers were sent.
                    if let EventKind::TestFinished { result } = &mut event.kind {
                        *result = result.for_event();
                    }
                    return Ok(Some(event));
                }
                Appended::Finished => return Ok(None),
                Appended::OverBudget(used) => used,
            };
            let mut probe = event.clone();
            let EventKind::TestFinished { result } = &mut event.kind else {
                // Live output over the budget is not kept: the record has it.
                return Ok(None);
            };
            // Cut the result's output to the room left and store it unchecked (a
            // racing writer may take a little of the room meanwhile); when nothing fits,
            // without output: it is small and bounded by the test count.
            let room = usize::try_from(limit.saturating_sub(used)).unwrap_or(usize::MAX);
            let fits = retention::fit_tests(std::slice::from_mut(result), room, |t| {
                if let (EventKind::TestFinished { result }, Some(t)) = (&mut probe.kind, t.first())
                {
                    *result = t.clone();
                }
                serde_json::to_string(&probe).map_or(usize::MAX, |j| j.len())
            });
            if !fits {
                retention::cut_outputs(std::slice::from_mut(result), 0);
            }
            limit = 0;
        }
    }

    async fn finish(&self, submission: &Submission) -> Result<Option<Event>> {
        let id = &submission.id;
        let mut last = submission.clone();
        last.status = crate::types::Status::Finished;
        let record = serde_json::to_string(&last)?;
        let mut event = Event {
            seq: 0,
            submission_id: id.clone(),
            at: Utc::now(),
            outputs_in_record: false,
            slice: None,
            kind: EventKind::Finished {
                submission: Box::new(last.for_event()),
            },
        };
        let verdict = last.verdict.map(wire_name).unwrap_or_default();
        let owner = submission.owner.as_deref();
        let cap = self.cap();
        let keys = vec![
            self.names.unfinished(owner),
            self.names.verdicts(),
            self.names.latency(),
            self.names.finished(),
        ];
        let mut args = vec![verdict, if owner.is_some() { "1" } else { "0" }.to_owned()];
        let latency = JobLatency::of(&last);
        for d in [latency.queued, latency.run] {
            match d {
                Some(d) => {
                    args.push(Histogram::bucket_of(d).to_string());
                    args.push(micros(d).to_string());
                }
                None => args.extend([String::new(), String::new()]),
            }
        }
        let mut limit = cap;
        let mut record = record;
        loop {
            let json = Self::placeholder(&event.stored())?;
            let (live, concat) = Self::live_json(&event, &record)?;
            let mut more = args.clone();
            more.extend([limit.to_string(), live, concat]);
            more.push(last.tests.len().to_string());
            more.extend(last.tests.iter().map(|t| t.index.to_string()));
            more.extend(self.chunk_refs(&last)?);
            // The verdict feed's entry (feed.rs): MAXLEN, then the fields but the record.
            more.push(self.settings.feed_max_len.max(1).to_string());
            more.push(serde_json::to_string(&crate::feed::fields(&last))?);
            let outcome = self
                .append_event(&self.finish_script, id, json, record, keys.clone(), more)
                .await?;
            let used = match outcome {
                Appended::Stored(seq) => {
                    self.forget_chunks(id);
                    let mut event = event;
                    event.seq = seq;
                    return Ok(Some(event));
                }
                Appended::Finished => {
                    self.forget_chunks(id);
                    return Ok(None);
                }
                Appended::OverBudget(used) => used,
            };
            // Cut the record's outputs so it and its FinishedEvent fit what the log
            // left; the second attempt is unchecked, so the final write always happens.
            let room = usize::try_from(cap.saturating_sub(used)).unwrap_or(usize::MAX);
            let (sid, at) = (event.submission_id.clone(), event.at);
            let measure = |s: &Submission| {
                let event = Event {
                    seq: 0,
                    submission_id: sid.clone(),
                    at,
                    outputs_in_record: true,
                    slice: None,
                    kind: EventKind::Finished {
                        submission: Submission::reference(),
                    },
                };
                let record = serde_json::to_string(s).map_or(usize::MAX, |j| j.len());
                let event = Self::placeholder(&event).map_or(usize::MAX, |j| j.len());
                record.saturating_add(event)
            };
            retention::fit_submission(&mut last, room, measure);
            tracing::warn!(submission = %id, room, "final record over the retained-output budget; outputs cut");
            event.kind = EventKind::Finished {
                submission: Box::new(last.for_event()),
            };
            record = serde_json::to_string(&last)?;
            limit = 0;
        }
    }

    async fn outputs(&self, id: &str, test: Option<u32>) -> Result<Outputs> {
        let field = test.map_or_else(String::new, |k| format!("t:{k}"));
        let (result, record, done): (Option<String>, Option<String>, Option<String>) = self
            .client
            .hmget(
                self.names.record(id),
                vec![field.as_str(), "record", "done"],
            )
            .await?;
        if let Some(result) = result.filter(|_| test.is_some()) {
            return Ok(Outputs::Test(serde_json::from_str::<TestResult>(&result)?));
        }
        match (record, done.as_deref()) {
            (Some(record), Some("1")) => Ok(Outputs::Record(serde_json::from_str(&record)?)),
            _ => Ok(Outputs::Gone),
        }
    }

    async fn finished_after(&self, after: &str, limit: usize) -> Result<Vec<crate::FeedEntry>> {
        let start = if after == "0" {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let count = u64::try_from(limit.max(1)).unwrap_or(u64::MAX);
        let entries: Vec<(String, HashMap<String, String>)> = self
            .client
            .xrange(self.names.finished(), start, "+", Some(count))
            .await?;
        entries
            .into_iter()
            .map(|(id, mut fields)| {
                let record = fields.remove("submission").unwrap_or_default();
                Ok(crate::FeedEntry {
                    id,
                    submission: serde_json::from_str(&record)?,
                })
            })
            .collect()
    }

    async fn feed_group_read(
        &self,
        group: &str,
        consumer: &str,
        read: crate::FeedRead,
        count: usize,
    ) -> Result<crate::FeedBatch> {
        match self.group_read(group, consumer, &read, count).await {
            // Redis lost the group (a restart without persistence): make it again.
            Err(BrokerError::Redis(e)) if e.details().contains("NOGROUP") => {
                self.feed_groups
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(group);
                self.group_read(group, consumer, &read, count).await
            }
            other => other,
        }
    }

    async fn feed_group_ack(&self, group: &str, ids: &[String]) -> Result<()> {
        self.group_ack(group, ids).await
    }

    async fn feed_end(&self) -> Result<String> {
        self.last_feed_id().await
    }

    async fn feed_wait(
        &self,
        after: &str,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<crate::FeedEntry>> {
        self.wait_feed(after, limit, wait).await
    }

    async fn events_after(&self, id: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        let start = i64::try_from(after).unwrap_or(i64::MAX);
        let stop = start.saturating_add(i64::try_from(limit.max(1)).unwrap_or(i64::MAX) - 1);
        let raw: Vec<String> = self.client.lrange(self.names.log(id), start, stop).await?;
        raw.iter()
            .map(|s| serde_json::from_str(s).map_err(BrokerError::from))
            .collect()
    }

    async fn subscribe(&self, id: &str) -> Result<LiveEvents> {
        Ok(self.hub.join(id).await)
    }

    async fn next_job(&self, consumer: &str, wait: Duration) -> Result<Option<Delivery>> {
        match self.take_job(consumer, wait).await {
            Err(BrokerError::Redis(e)) if e.details().contains("NOGROUP") => {
                // Redis lost the group (restart without persistence): make it again.
                self.ensure_group().await?;
                Ok(None)
            }
            other => other,
        }
    }

    async fn renew(&self, delivery: &Delivery) -> Result<bool> {
        let held: i64 = self
            .renew_script
            .evalsha_with_reload(
                &self.client,
                vec![
                    self.names.jobs(),
                    format!("{}{}", self.names.alive_prefix(), delivery.consumer),
                ],
                vec![
                    GROUP.to_owned(),
                    delivery.consumer.clone(),
                    delivery.id.clone(),
                    self.settings.worker_alive.as_millis().max(1).to_string(),
                ],
            )
            .await?;
        Ok(held == 1)
    }

    async fn heartbeat(
        &self,
        consumer: &str,
        running: u32,
        slots: u32,
        toolchains: &Toolchains,
    ) -> Result<()> {
        let info = WorkerInfo {
            name: consumer.to_owned(),
            last_heartbeat: Utc::now(),
            running,
            slots,
            toolchains: Some(toolchains.clone()),
        };
        let _: i64 = self
            .heartbeat_script
            .evalsha_with_reload(
                &self.client,
                vec![
                    self.names.workers(),
                    format!("{}{consumer}", self.names.alive_prefix()),
                ],
                vec![
                    consumer.to_owned(),
                    serde_json::to_string(&info)?,
                    self.settings.worker_alive.as_millis().max(1).to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn live_toolchains(&self) -> Result<Option<Toolchains>> {
        // As in `submit`: while Redis is down, say so at once instead of waiting for the
        // command timeout (submit asks this first).
        if !self.client.is_connected() {
            return Err(BrokerError::Unavailable);
        }
        let live: Vec<String> = self
            .live_workers_script
            .evalsha_with_reload(
                &self.client,
                vec![self.names.workers()],
                vec![self.names.alive_prefix()],
            )
            .await?;
        if live.is_empty() {
            return Ok(None);
        }
        let mut all = Toolchains::new();
        for json in live {
            // A live worker whose entry we cannot read or that does not report its
            // toolchains (another version) might run anything: nobody can tell.
            let Some(toolchains) = serde_json::from_str::<WorkerInfo>(&json)
                .ok()
                .and_then(|info| info.toolchains)
            else {
                return Ok(None);
            };
            for (id, version) in toolchains {
                all.entry(id).or_insert(version);
            }
        }
        Ok(Some(all))
    }

    async fn stats(&self) -> Result<QueueStats> {
        let jobs = self.names.jobs();
        let len: u64 = self.client.xlen(&jobs).await?;
        let summary: Value = self
            .client
            .custom(
                CustomCommand::new("XPENDING", ClusterHash::FirstKey, false),
                vec![jobs.as_str(), GROUP],
            )
            .await?;
        let pending = summary
            .into_array()
            .into_iter()
            .next()
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let raw: HashMap<String, String> = self.client.hgetall(self.names.workers()).await?;
        let cutoff = Utc::now() - chrono::Duration::from_std(WORKER_STALE).unwrap_or_default();
        let mut workers = Vec::new();
        for (name, json) in raw {
            match serde_json::from_str::<WorkerInfo>(&json) {
                Ok(info) if info.last_heartbeat >= cutoff => workers.push(info),
                _ => {
                    let _: i64 = self.client.hdel(self.names.workers(), name).await?;
                }
            }
        }
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        let raw: HashMap<String, String> = self.client.hgetall(self.names.verdicts()).await?;
        let mut verdicts: Vec<(String, u64)> = raw
            .into_iter()
            .filter_map(|(k, v)| v.parse().ok().map(|n| (k, n)))
            .collect();
        verdicts.sort();
        let raw: HashMap<String, u64> = self.client.hgetall(self.names.latency()).await?;
        let histogram = |prefix: &str| {
            let mut h = Histogram::default();
            for (i, n) in h.counts.iter_mut().enumerate() {
                *n = raw.get(&format!("{prefix}:{i}")).copied().unwrap_or(0);
            }
            h.sum_us = raw.get(&format!("{prefix}:sum")).copied().unwrap_or(0);
            h
        };
        // What operators size `maxmemory` by, and the bound itself.
        let info: String = self
            .client
            .custom(
                CustomCommand::new_static("INFO", ClusterHash::Random, false),
                vec!["memory"],
            )
            .await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Ok(QueueStats {
            retained_bytes: field("used_memory"),
            retained_budget_bytes: field("maxmemory"),
            waiting: len.saturating_sub(pending),
            pending,
            workers,
            verdicts,
            queue_wait: histogram("q"),
            run_time: histogram("r"),
        })
    }

    async fn ack(&self, delivery: &Delivery) -> Result<()> {
        let _: i64 = self
            .client
            .xack(self.names.jobs(), GROUP, delivery.id.as_str())
            .await?;
        let _: i64 = self
            .client
            .xdel(self.names.jobs(), delivery.id.as_str())
            .await?;
        Ok(())
    }

    async fn queue_len(&self) -> Result<u64> {
        Ok(self.client.xlen(self.names.jobs()).await?)
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.client.ping(None).await?;
        Ok(())
    }

    fn watched(&self) -> usize {
        self.hub.watched()
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

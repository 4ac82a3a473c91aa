//! Abuse limits and quotas: per-caller submit rate (token bucket), WebSocket connections
//! per IP, subscriptions per connection, request size, and the schema's query depth and
//! complexity limits. Also the schema extension that enforces the submit rate and times
//! submits for /metrics.
//!
//! On Redis, the submit rate and the WebSocket connections per key are counted in Redis
//! ([`RedisQuota`]), so all servers share one count per caller; standalone, in process.
//! The other counters (connections per IP, operations per connection) are per process:
//! an IP's connections reach one server through the load balancer's affinity at best,
//! and a connection lives on one server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextResolve,
    NextValidation, ResolveInfo,
};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use async_graphql::{
    ErrorExtensions, ServerError, ServerResult, ValidationResult, Value, Variables,
};

use verdict_broker::{ConnectionCount, RedisQuota};

use crate::auth::{ApiKeys, Caller};
use crate::error::ApiError;
use crate::metrics::{Metrics, Operation, Outcome};
use crate::validate::InputPolicy;

/// Tunable limits; `Default` is the production default.
#[derive(Clone)]
pub struct ApiLimits {
    /// Count submits and WebSocket connections per key in Redis, shared by every server
    /// (None: in this process).
    pub shared: Option<Arc<RedisQuota>>,
    /// Submits per minute per key (per IP when the API is open); 0 = unlimited.
    pub submits_per_minute: u32,
    /// Submits allowed at once before the rate applies (default: one minute's worth).
    pub submit_burst: Option<u32>,
    /// Open WebSocket connections per client IP; 0 = unlimited.
    pub max_ws_per_ip: usize,
    /// Open WebSocket connections per API key (all servers, when `shared`); 0 = unlimited.
    pub max_ws_per_key: usize,
    /// Concurrent operations per WebSocket connection.
    pub max_subscriptions_per_connection: usize,
    /// graphql-ws: close with 4408 when no connection_init arrives within this time.
    pub connection_init_timeout: Duration,
    /// graphql-ws: the server's keep-alive ping (or legacy `ka`) interval.
    pub keepalive: Duration,
    /// Largest GraphQL-over-HTTP body; None = source + stdin + expected caps + 1 MiB.
    pub max_body_bytes: Option<usize>,
    /// Largest WebSocket message; None = same as the body cap.
    pub max_ws_message_bytes: Option<usize>,
    /// Query depth limit (introspection needs about 13).
    pub max_depth: usize,
    /// Query complexity limit (one per field; aliases count).
    pub max_complexity: usize,
    /// Directives per field.
    pub max_directives: usize,
    /// Aliased fields per document. Complexity already bounds breadth; this stops the
    /// cheap-per-field amplification aliases allow (the same resolver many times under
    /// different names). 0 = unlimited.
    pub max_aliases: usize,
    /// Allow schema introspection (`__schema`, `__type`); switch off in production if
    /// the schema should not be browsable.
    pub introspection: bool,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            shared: None,
            submits_per_minute: 120,
            submit_burst: None,
            max_ws_per_ip: 1024,
            max_ws_per_key: 1024,
            max_subscriptions_per_connection: 100,
            connection_init_timeout: Duration::from_secs(3),
            keepalive: Duration::from_secs(15),
            max_body_bytes: None,
            max_ws_message_bytes: None,
            max_depth: 16,
            max_complexity: 1000,
            max_directives: 8,
            max_aliases: 30,
            introspection: true,
        }
    }
}

impl ApiLimits {
    /// The body cap for `policy`: everything a valid submit may carry plus 1 MiB of JSON.
    pub fn body_bytes(&self, policy: &InputPolicy) -> usize {
        self.max_body_bytes.unwrap_or_else(|| {
            policy
                .max_source_bytes
                .saturating_add(policy.max_stdin_bytes)
                .saturating_add(policy.max_expected_bytes)
                .saturating_add(1024 * 1024)
        })
    }

    pub fn ws_message_bytes(&self, policy: &InputPolicy) -> usize {
        self.max_ws_message_bytes
            .unwrap_or_else(|| self.body_bytes(policy))
    }
}

/// Authentication plus the limit state shared by HTTP and WebSocket handlers.
pub struct Access {
    pub keys: ApiKeys,
    pub limits: ApiLimits,
    submits: TokenBuckets,
    ws_per_ip: Mutex<HashMap<IpAddr, usize>>,
    ws_per_key: Mutex<HashMap<Arc<str>, usize>>,
}

impl Access {
    pub fn new(keys: ApiKeys, limits: ApiLimits) -> Self {
        let burst = limits.submit_burst.unwrap_or(limits.submits_per_minute);
        Access {
            submits: TokenBuckets::new(limits.submits_per_minute, burst),
            keys,
            limits,
            ws_per_ip: Mutex::new(HashMap::new()),
            ws_per_key: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one submit from `caller`'s bucket, or says how long to wait.
    pub async fn take_submit(&self, caller: &Caller) -> Result<(), Duration> {
        let bucket = caller.bucket();
        let limit = self
            .limits
            .submit_burst
            .unwrap_or(self.limits.submits_per_minute);
        match &self.limits.shared {
            Some(redis) if self.limits.submits_per_minute > 0 => {
                match redis.take_submit(&bucket, limit).await {
                    Ok(verdict) => verdict,
                    Err(e) => {
                        // Redis trouble must not stop submits that Redis may still take;
                        // fall back to this process's count.
                        tracing::warn!(error = %e, "shared rate counter unavailable");
                        self.submits.take(&bucket)
                    }
                }
            }
            _ => self.submits.take(&bucket),
        }
    }

    /// Counts a WebSocket connection from `ip` until the guard drops; None when `ip`
    /// already has the maximum open.
    pub fn ws_connection(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<WsSlot> {
        let Some(ip) = ip else {
            return Some(WsSlot(None));
        };
        let max = self.limits.max_ws_per_ip;
        let mut map = self.ws_per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(ip).or_insert(0);
        if max > 0 && *open >= max {
            return None;
        }
        *open += 1;
        Some(WsSlot(Some((Arc::clone(self), ip))))
    }
}

impl Access {
    /// Counts an authenticated WebSocket connection against its key until the guard
    /// drops; None when the key already has the maximum open (on all servers, when the
    /// count is shared). Anonymous callers are counted per IP at the upgrade instead.
    pub async fn ws_key_connection(self: &Arc<Self>, caller: &Caller) -> Option<KeySlot> {
        let Caller::Key { name } = caller else {
            return Some(KeySlot(None));
        };
        let max = self.limits.max_ws_per_key;
        if let Some(shared) = &self.limits.shared {
            let bucket = caller.bucket();
            match shared.open_connection(&bucket, max).await {
                Ok(ConnectionCount::Opened(_)) => {
                    return Some(KeySlot(Some(Counted::Shared(Arc::clone(shared), bucket))));
                }
                Ok(ConnectionCount::Full(_)) => return None,
                Err(e) => {
                    // As for the submit rate: Redis trouble falls back to this process.
                    tracing::warn!(error = %e, "shared connection count unavailable");
                }
            }
        }
        let mut map = self.ws_per_key.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(Arc::clone(name)).or_insert(0);
        if max > 0 && *open >= max {
            return None;
        }
        *open += 1;
        Some(KeySlot(Some(Counted::Local(
            Arc::clone(self),
            Arc::clone(name),
        ))))
    }
}

/// Where a key's connection was counted.
enum Counted {
    Local(Arc<Access>, Arc<str>),
    Shared(Arc<RedisQuota>, String),
}

/// One open WebSocket connection, counted against its API key.
pub struct KeySlot(Option<Counted>);

impl Drop for KeySlot {
    fn drop(&mut self) {
        match self.0.take() {
            Some(Counted::Local(access, name)) => {
                let mut map = access.ws_per_key.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(open) = map.get_mut(&name) {
                    *open = open.saturating_sub(1);
                    if *open == 0 {
                        map.remove(&name);
                    }
                }
            }
            Some(Counted::Shared(quota, bucket)) => {
                // Drop cannot wait: release in the background (a failure heals at the
                // quota's next refresh).
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if let Err(e) = quota.close_connection(&bucket).await {
                            tracing::warn!(error = %e, "cannot release a shared connection count");
                        }
                    });
                }
            }
            None => {}
        }
    }
}

/// One open WebSocket connection, counted against its IP.
pub struct WsSlot(Option<(Arc<Access>, IpAddr)>);

impl Drop for WsSlot {
    fn drop(&mut self) {
        if let Some((access, ip)) = self.0.take() {
            let mut map = access.ws_per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(open) = map.get_mut(&ip) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Token buckets by name: `burst` tokens, refilled at `per_minute` per minute.
struct TokenBuckets {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Buckets kept before full ones are forgotten (a full bucket is the same as none).
const MAX_BUCKETS: usize = 100_000;

impl TokenBuckets {
    fn new(per_minute: u32, burst: u32) -> Self {
        TokenBuckets {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, name: &str) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.per_second, self.burst);
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = map.entry(name.to_owned()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

/// The mutation root's GraphQL type name (schema.graphql).
const MUTATION_TYPE: &str = "MutationRoot";

/// Schema extension: rate-limits `submit`, times it, and counts requests by operation
/// type and outcome.
pub(crate) struct Guard {
    pub access: Arc<Access>,
    pub metrics: Arc<Metrics>,
}

impl ExtensionFactory for Guard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(GuardExtension {
            access: Arc::clone(&self.access),
            metrics: Arc::clone(&self.metrics),
            operation: Mutex::new(None),
            short_strings: Mutex::new(HashMap::new()),
        })
    }
}

struct GuardExtension {
    access: Arc<Access>,
    metrics: Arc<Metrics>,
    operation: Mutex<Option<Operation>>,
    /// Short string variables (and `language` inside object variables), so that a
    /// submit's language can be read for /metrics without cloning large variables.
    short_strings: Mutex<HashMap<String, String>>,
}

/// Longest variable kept for [`GuardExtension::short_strings`] (language ids are short).
const SHORT: usize = 64;

impl GuardExtension {
    /// The language of a `submit(input: ...)` field, from a literal or variables.
    fn submit_language(&self, field: &async_graphql::parser::types::Field) -> Option<String> {
        use async_graphql::{Name, Value};
        let strings = self.short_strings.lock().unwrap_or_else(|p| p.into_inner());
        // Resolve variables from what parse_query kept: a short string, or an input
        // object's `language`.
        let lookup = |name: Name| -> Result<Value, ()> {
            if let Some(s) = strings.get(name.as_str()) {
                return Ok(Value::String(s.clone()));
            }
            let mut object = async_graphql::indexmap::IndexMap::new();
            if let Some(s) = strings.get(&format!("{name}.language")) {
                object.insert(Name::new("language"), Value::String(s.clone()));
            }
            Ok(Value::Object(object))
        };
        let input = field
            .get_argument("input")?
            .node
            .clone()
            .into_const_with(lookup);
        match input.ok()? {
            Value::Object(input) => match input.get("language")? {
                Value::String(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A query the server will not run (unparsable, invalid, too deep, too complex, too many
/// aliases) is the client's input error: BAD_USER_INPUT, like every other refusal of
/// input, so clients branch on one code.
fn coded(mut error: ServerError) -> ServerError {
    let ext = error.extensions.get_or_insert_with(Default::default);
    if ext.get("code").is_none() {
        ext.set("code", "BAD_USER_INPUT");
    }
    error
}

/// Aliased fields in the document's operations and fragment definitions (each fragment
/// counted once; spreading it again costs complexity, not aliases).
fn count_aliases(doc: &ExecutableDocument) -> usize {
    use async_graphql::parser::types::{Selection, SelectionSet};
    fn walk(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(f) => {
                    usize::from(f.node.alias.is_some()) + walk(&f.node.selection_set.node)
                }
                Selection::InlineFragment(f) => walk(&f.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let operations: usize = doc
        .operations
        .iter()
        .map(|(_, op)| walk(&op.node.selection_set.node))
        .sum();
    let fragments: usize = doc
        .fragments
        .values()
        .map(|f| walk(&f.node.selection_set.node))
        .sum();
    operations + fragments
}

fn operation_of(doc: &ExecutableDocument, name: Option<&str>) -> Option<Operation> {
    let ty = match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => op.node.ty,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name)?.node.ty,
        (DocumentOperations::Multiple(ops), None) => ops.values().next()?.node.ty,
    };
    Some(match ty {
        OperationType::Query => Operation::Query,
        OperationType::Mutation => Operation::Mutation,
        OperationType::Subscription => Operation::Subscription,
    })
}

#[async_graphql::async_trait::async_trait]
impl Extension for GuardExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await.map_err(coded)?;
        let max = self.access.limits.max_aliases;
        if max > 0 {
            let aliases = count_aliases(&doc);
            if aliases > max {
                return Err(coded(ServerError::new(
                    format!("the query has {aliases} aliased fields; at most {max} are allowed"),
                    None,
                )));
            }
        }
        {
            let mut strings = self.short_strings.lock().unwrap_or_else(|p| p.into_inner());
            for (name, value) in variables.iter() {
                match value {
                    async_graphql::Value::String(s) if s.len() <= SHORT => {
                        strings.insert(name.to_string(), s.clone());
                    }
                    async_graphql::Value::Object(obj) => {
                        if let Some(async_graphql::Value::String(s)) = obj.get("language") {
                            if s.len() <= SHORT {
                                strings.insert(format!("{name}.language"), s.clone());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        // The operation name is not passed here; the first operation is a fine label.
        *self.operation.lock().unwrap_or_else(|p| p.into_inner()) = operation_of(&doc, None);
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx)
            .await
            .map_err(|errors| errors.into_iter().map(coded).collect())
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> async_graphql::Response {
        let mut response = next.run(ctx, operation_name).await;
        // Over HTTP, a refused submit also gets the standard Retry-After header.
        let retry_after = response.errors.iter().find_map(|e| {
            let ext = e.extensions.as_ref()?;
            match (ext.get("code"), ext.get("retryAfter")) {
                (Some(Value::String(code)), Some(Value::Number(secs)))
                    if code == "RATE_LIMITED" =>
                {
                    secs.as_u64()
                }
                _ => None,
            }
        });
        if let Some(secs) = retry_after {
            if let Ok(value) = secs.to_string().parse() {
                response
                    .http_headers
                    .insert(axum::http::header::RETRY_AFTER, value);
            }
        }
        let op = *self.operation.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = if response.errors.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        self.metrics
            .request(op.unwrap_or(Operation::Query), outcome);
        response
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        // `submit` is the only root field of the mutation type by that name.
        let is_submit = info.name == "submit"
            && info.path_node.parent.is_none()
            && info.parent_type == MUTATION_TYPE;
        if !is_submit {
            return next.run(ctx, info).await;
        }
        let anonymous = Caller::Anonymous { ip: None };
        let caller = ctx.data_opt::<Caller>().unwrap_or(&anonymous);
        if let Err(wait) = self.access.take_submit(caller).await {
            self.metrics.rate_limited();
            let mut err: ServerError = ApiError::RateLimited { retry_after: wait }
                .extend()
                .into_server_error(info.field.name.pos);
            err.path = vec![async_graphql::PathSegment::Field(
                info.alias.unwrap_or(info.name).to_owned(),
            )];
            return Err(err);
        }
        let language = self.submit_language(info.field);
        let started = Instant::now();
        let result = next.run(ctx, info).await;
        self.metrics.submit_latency(started.elapsed());
        if let (Ok(_), Some(language)) = (&result, language) {
            // Only accepted submits count, so the label is a catalogue language.
            self.metrics.submitted_in(&language);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_waits() {
        let b = TokenBuckets::new(60, 3);
        for _ in 0..3 {
            assert!(b.take("a").is_ok());
        }
        let wait = b.take("a").expect_err("4th must wait");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(b.take("b").is_ok(), "buckets are per name");
    }

    #[test]
    fn unlimited_when_zero() {
        let b = TokenBuckets::new(0, 0);
        for _ in 0..1000 {
            assert!(b.take("a").is_ok());
        }
    }
}

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
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextRequest, NextResolve, NextSubscribe, NextValidation, ResolveInfo,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{
    ErrorExtensions, Request, Response, ServerError, ServerResult, ValidationResult, Value,
    Variables,
};
use futures_util::stream::{BoxStream, StreamExt};

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
    /// Submits per minute per end user (`user:<sub>`, a JWT); 0 = unlimited. Lower than
    /// a key's: a key is a platform's backend, a user is one person.
    pub user_submits_per_minute: u32,
    /// Open WebSocket connections per end user (all servers, when `shared`).
    pub max_ws_per_user: usize,
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
    /// `--cors-origin`: browser origins (`https://site.example`) answered with CORS
    /// headers, preflights included. Empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// `--ws-allowed-origin`: the origins a WebSocket upgrade may come from. Empty: any
    /// (a request without `Origin`, from a non-browser client, is always let through).
    pub ws_allowed_origins: Vec<String>,
    /// Allow schema introspection (`__schema`, `__type`); switch off in production if
    /// the schema should not be browsable.
    pub introspection: bool,
    /// Longest GraphQL document (the `query` text), bytes. Parsing is linear but not
    /// cheap (pest), and the body cap is sized for large variables, not for documents;
    /// None = the source cap plus 1 MiB, so a source inlined as a literal still fits.
    pub max_query_bytes: Option<usize>,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            shared: None,
            submits_per_minute: 120,
            user_submits_per_minute: 30,
            cors_origins: Vec::new(),
            ws_allowed_origins: Vec::new(),
            max_ws_per_user: 8,
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
            max_query_bytes: None,
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

    /// The document cap for `policy` (see [`ApiLimits::max_query_bytes`]).
    pub fn query_bytes(&self, policy: &InputPolicy) -> usize {
        self.max_query_bytes
            .unwrap_or_else(|| policy.max_source_bytes.saturating_add(1024 * 1024))
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
    user_submits: TokenBuckets,
    ws_per_ip: Mutex<HashMap<IpAddr, usize>>,
    ws_per_key: Mutex<HashMap<Arc<str>, usize>>,
}

impl Access {
    pub fn new(keys: ApiKeys, limits: ApiLimits) -> Self {
        let burst = limits.submit_burst.unwrap_or(limits.submits_per_minute);
        Access {
            submits: TokenBuckets::new(limits.submits_per_minute, burst),
            user_submits: TokenBuckets::new(
                limits.user_submits_per_minute,
                limits.user_submits_per_minute,
            ),
            keys,
            limits,
            ws_per_ip: Mutex::new(HashMap::new()),
            ws_per_key: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one submit from `caller`'s bucket, or says how long to wait.
    pub async fn take_submit(&self, caller: &Caller) -> Result<(), Duration> {
        let bucket = caller.bucket();
        let user = matches!(caller, Caller::User { .. });
        let (rate, limit, local) = if user {
            let rate = self.limits.user_submits_per_minute;
            (rate, rate, &self.user_submits)
        } else {
            let rate = self.limits.submits_per_minute;
            (
                rate,
                self.limits.submit_burst.unwrap_or(rate),
                &self.submits,
            )
        };
        match &self.limits.shared {
            Some(redis) if rate > 0 => {
                match redis.take_submit(&bucket, limit).await {
                    Ok(verdict) => verdict,
                    Err(e) => {
                        // Redis trouble must not stop submits that Redis may still take;
                        // fall back to this process's count.
                        tracing::warn!(error = %e, "shared rate counter unavailable");
                        local.take(&bucket)
                    }
                }
            }
            _ => local.take(&bucket),
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
        // End users are counted like keys, under their owner name (`user:<sub>`).
        let name = match caller {
            Caller::Key { name } | Caller::User { owner: name, .. } => name,
            Caller::Anonymous { .. } => return Some(KeySlot(None)),
        };
        let max = if matches!(caller, Caller::User { .. }) {
            self.limits.max_ws_per_user
        } else {
            self.limits.max_ws_per_key
        };
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

/// Schema extension: refuses oversized and exponentially expanding documents before
/// async-graphql walks them, gives every input error a code, rate-limits `submit`, times
/// it, and counts requests by operation type and outcome.
pub(crate) struct Guard {
    pub access: Arc<Access>,
    pub metrics: Arc<Metrics>,
    /// Longest document accepted, bytes ([`ApiLimits::query_bytes`]).
    pub max_query_bytes: usize,
}

impl ExtensionFactory for Guard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(GuardExtension {
            access: Arc::clone(&self.access),
            metrics: Arc::clone(&self.metrics),
            max_query_bytes: self.max_query_bytes,
            operation: Mutex::new(None),
            short_strings: Mutex::new(HashMap::new()),
        })
    }
}

struct GuardExtension {
    access: Arc<Access>,
    metrics: Arc<Metrics>,
    max_query_bytes: usize,
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

/// Gives every error without a code BAD_USER_INPUT. Our own errors always carry a code
/// (ApiError, and `coded` above), so an error without one is async-graphql refusing the
/// request's input where no hook of ours sees it first: an Int argument outside 32 bits
/// or an undefined variable (found while resolving the field), an unknown or missing
/// operation name, a subscription sent over HTTP.
fn code_input_errors(errors: &mut Vec<ServerError>) {
    for error in std::mem::take(errors) {
        errors.push(coded(error));
    }
}

/// Why a document is refused before async-graphql expands it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DocumentRefusal {
    #[error("the query document is {len} bytes; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("fragment `{0}` spreads itself (directly or through other fragments)")]
    FragmentCycle(String),
    #[error("the query has {spreads} fragment spreads; at most {max} are allowed")]
    TooManySpreads { spreads: usize, max: usize },
    #[error(
        "the query has more than {max} selections once its fragments are spread out; \
         at most {max} are allowed"
    )]
    TooComplex { max: usize },
}

impl DocumentRefusal {
    fn into_server_error(self) -> ServerError {
        coded(ServerError::new(self.to_string(), None))
    }
}

/// One selection set's own selections (fields, inline fragments and spreads, at every
/// nesting level) and the fragments it spreads, in order and with repeats.
struct Body<'a> {
    own: usize,
    spreads: Vec<&'a str>,
}

impl<'a> Body<'a> {
    fn of(set: &'a SelectionSet) -> Self {
        fn walk<'a>(set: &'a SelectionSet, body: &mut Body<'a>) {
            for item in &set.items {
                body.own = body.own.saturating_add(1);
                match &item.node {
                    Selection::Field(f) => walk(&f.node.selection_set.node, body),
                    Selection::InlineFragment(f) => walk(&f.node.selection_set.node, body),
                    Selection::FragmentSpread(s) => {
                        body.spreads.push(s.node.fragment_name.node.as_str());
                    }
                }
            }
        }
        // Recursion depth is the selection nesting, which the parser already bounds.
        let mut body = Body {
            own: 0,
            spreads: Vec::new(),
        };
        walk(set, &mut body);
        body
    }
}

/// How many selections each operation has once every fragment spread is replaced by the
/// fragment's selections, the work async-graphql's depth, directive and complexity
/// checks do (they walk the expansion). Each fragment F0 { ...F1 ...F1 } doubles it, so
/// a 1 KB document expands to millions: the count is computed here instead in time
/// linear in the document, each fragment's expansion once (memoized over the fragment
/// graph, depth-first with an explicit stack, so a long chain cannot overflow ours).
///
/// Refuses: a fragment cycle; more than `max` spreads in the document; any operation
/// or fragment (used or not: validation visits every one) expanding to more than `max`
/// selections. A spread counts as a selection, so a fragment of spreads of unknown
/// fragments costs too. Returns the largest operation's expansion.
pub(crate) fn check_expansion(
    doc: &ExecutableDocument,
    max: usize,
) -> Result<usize, DocumentRefusal> {
    enum Seen {
        New,
        OnStack,
        Done(usize),
    }
    let names: Vec<&str> = doc.fragments.keys().map(|n| n.as_str()).collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let bodies: Vec<Body> = doc
        .fragments
        .values()
        .map(|f| Body::of(&f.node.selection_set.node))
        .collect();
    let operations: Vec<Body> = doc
        .operations
        .iter()
        .map(|(_, op)| Body::of(&op.node.selection_set.node))
        .collect();
    let spreads = bodies
        .iter()
        .chain(&operations)
        .fold(0usize, |n, b| n.saturating_add(b.spreads.len()));
    if spreads > max {
        return Err(DocumentRefusal::TooManySpreads { spreads, max });
    }
    let mut seen: Vec<Seen> = names.iter().map(|_| Seen::New).collect();
    // (fragment, next spread to follow, expansion so far)
    let mut stack: Vec<(usize, usize, usize)> = Vec::new();
    for start in 0..bodies.len() {
        if !matches!(seen[start], Seen::New) {
            continue;
        }
        seen[start] = Seen::OnStack;
        stack.push((start, 0, bodies[start].own));
        while let Some(top) = stack.last_mut() {
            let (fragment, next, total) = *top;
            if let Some(name) = bodies[fragment].spreads.get(next) {
                top.1 += 1;
                // An unknown fragment is validation's to report; it expands to nothing.
                let Some(&target) = index.get(name) else {
                    continue;
                };
                match seen[target] {
                    Seen::Done(n) => top.2 = total.saturating_add(n),
                    Seen::OnStack => return Err(DocumentRefusal::FragmentCycle(name.to_string())),
                    Seen::New => {
                        seen[target] = Seen::OnStack;
                        stack.push((target, 0, bodies[target].own));
                    }
                }
            } else {
                stack.pop();
                if total > max {
                    return Err(DocumentRefusal::TooComplex { max });
                }
                seen[fragment] = Seen::Done(total);
                if let Some(parent) = stack.last_mut() {
                    parent.2 = parent.2.saturating_add(total);
                }
            }
        }
    }
    let mut largest = 0;
    for op in &operations {
        let total = op.spreads.iter().fold(op.own, |total, name| {
            let n = match index.get(name).map(|&i| &seen[i]) {
                Some(Seen::Done(n)) => *n,
                _ => 0,
            };
            total.saturating_add(n)
        });
        if total > max {
            return Err(DocumentRefusal::TooComplex { max });
        }
        largest = largest.max(total);
    }
    Ok(largest)
}

/// Aliased fields in the document's operations and fragment definitions (each fragment
/// counted once; spreading it again costs complexity, not aliases).
fn count_aliases(doc: &ExecutableDocument) -> usize {
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
    /// Over HTTP, every response passes here: errors async-graphql made without a code
    /// get one.
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        code_input_errors(&mut response.errors);
        response
    }

    /// Over graphql-ws, every response (of any operation type) passes here.
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
            .map(|mut response| {
                code_input_errors(&mut response.errors);
                response
            })
            .boxed()
    }

    /// Runs before async-graphql's own parse step, which also runs its recursion-depth
    /// and directive checks: both walk every fragment spread, so the expansion must be
    /// bounded first. The document is parsed once, here, and handed on parsed.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let (len, max) = (request.query.len(), self.max_query_bytes);
        if len > max {
            return Err(DocumentRefusal::TooLong { len, max }.into_server_error());
        }
        let doc = request.parsed_query().map_err(coded)?;
        check_expansion(doc, self.access.limits.max_complexity)
            .map_err(DocumentRefusal::into_server_error)?;
        next.run(ctx, request).await
    }

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

    /// `levels` fragments, each spreading the next twice: 2^levels leaves.
    fn bomb(levels: usize) -> String {
        let mut doc = String::from("query { languages { ...F0 } }");
        for i in 0..levels {
            doc.push_str(&format!(
                " fragment F{i} on Language {{ ...F{n} ...F{n} }}",
                n = i + 1
            ));
        }
        doc.push_str(&format!(" fragment F{levels} on Language {{ id }}"));
        doc
    }

    fn expansion(doc: &str, max: usize) -> Result<usize, DocumentRefusal> {
        let doc = async_graphql::parser::parse_query(doc).expect("test documents parse");
        check_expansion(&doc, max)
    }

    #[test]
    fn expansion_counts_fields_inline_fragments_and_spreads() {
        // languages, id, name, the inline fragment and its compiled.
        assert_eq!(
            expansion(
                "{ languages { id name ... on Language { compiled } } }",
                100
            ),
            Ok(5)
        );
        // languages + spread + F (id) twice over: 1 + 2 * (1 + 1).
        assert_eq!(
            expansion(
                "{ languages { ...F ...F } } fragment F on Language { id }",
                100
            ),
            Ok(5)
        );
        // A spread of an unknown fragment costs itself (validation reports it).
        assert_eq!(expansion("{ languages { ...Nope } }", 100), Ok(2));
        // The largest operation counts.
        assert_eq!(
            expansion(
                "query A { languages { id } } query B { languages { id name } }",
                100
            ),
            Ok(3)
        );
    }

    #[test]
    fn a_fragment_bomb_is_measured_without_expanding_it() {
        // 3 levels: F3 = 1, F2 = 2 + 2, F1 = 2 + 2*4, F0 = 2 + 2*10; + languages + spread.
        assert_eq!(expansion(&bomb(3), 1000), Ok(24));
        // 60 levels would be 2^60 selections: refused at once, and it does not overflow.
        let start = std::time::Instant::now();
        assert_eq!(
            expansion(&bomb(60), 1000),
            Err(DocumentRefusal::TooComplex { max: 1000 })
        );
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
        // An unused bomb is refused too: validation would walk it.
        let unused = bomb(40).replace(
            "query { languages { ...F0 } }",
            "query A { languages { id } } query U { languages { ...F40 } }",
        );
        assert_eq!(
            expansion(&unused, 1000),
            Err(DocumentRefusal::TooComplex { max: 1000 })
        );
    }

    #[test]
    fn fragment_cycles_and_spread_floods_are_refused() {
        // Which fragment is named depends on where the walk starts.
        let two = expansion(
            "{ languages { ...A } } fragment A on Language { ...B } \
             fragment B on Language { id ...A }",
            1000,
        );
        assert!(
            matches!(two, Err(DocumentRefusal::FragmentCycle(_))),
            "{two:?}"
        );
        let cycle = expansion(
            "{ languages { ...A } } fragment A on Language { id ...A }",
            1000,
        );
        assert_eq!(cycle, Err(DocumentRefusal::FragmentCycle("A".into())));
        let flood = format!(
            "{{ languages {{ {} }} }} fragment F on Language {{ id }}",
            "...F ".repeat(1001)
        );
        assert_eq!(
            expansion(&flood, 1000),
            Err(DocumentRefusal::TooManySpreads {
                spreads: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn unlimited_when_zero() {
        let b = TokenBuckets::new(0, 0);
        for _ in 0..1000 {
            assert!(b.take("a").is_ok());
        }
    }
}

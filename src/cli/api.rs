//! API access flags: keys, quotas and abuse limits, end-user tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::redact::redact;
use crate::BoxError;

/// API access: keys, quotas and abuse limits (server/src/{auth,limits}.rs).
#[derive(Args, Clone)]
pub(crate) struct ApiArgs {
    /// API keys file: `name:sha256hex` per line (`printf %s KEY | sha256sum`). With no
    /// keys the API is open, which is allowed only on a loopback address.
    #[arg(long = "api-keys", env = "VERDICT_API_KEYS_FILE")]
    pub(crate) api_keys_file: Option<PathBuf>,
    /// API keys inline, as `name:sha256hex,name2:sha256hex` (added to the file's).
    #[arg(
        long = "api-key-digests",
        env = "VERDICT_API_KEYS",
        hide_env_values = true
    )]
    pub(crate) api_keys: Option<String>,
    /// Serve an open API (no keys) on a non-loopback address anyway.
    #[arg(long, env = "VERDICT_INSECURE_NO_AUTH")]
    pub(crate) insecure_no_auth: bool,
    /// Submits per minute per key (per IP when open); 0 = unlimited.
    #[arg(long, env = "VERDICT_SUBMITS_PER_MINUTE", default_value_t = 120)]
    pub(crate) submits_per_minute: u32,
    /// Open WebSocket connections per client IP; 0 = unlimited.
    #[arg(long, env = "VERDICT_MAX_WS_PER_IP", default_value_t = 1024)]
    pub(crate) max_ws_per_ip: usize,
    /// Open WebSocket connections per API key (on all servers together when on Redis);
    /// 0 = unlimited.
    #[arg(long, env = "VERDICT_MAX_WS_PER_KEY", default_value_t = 1024)]
    pub(crate) max_ws_per_key: usize,
    /// Answer CORS preflights and set CORS headers for this browser origin (repeatable,
    /// e.g. `--cors-origin https://challenge.example`). Without it: no CORS headers.
    #[arg(
        long = "cors-origin",
        env = "VERDICT_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub(crate) cors_origins: Vec<String>,
    /// Accept WebSocket upgrades only from this origin (repeatable); requests without an
    /// `Origin` header (non-browser clients) are unaffected. Without it: any origin.
    #[arg(
        long = "ws-allowed-origin",
        env = "VERDICT_WS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub(crate) ws_allowed_origins: Vec<String>,
    /// Submits per minute per end user (a JWT's `sub`); 0 = unlimited.
    #[arg(long, env = "VERDICT_USER_SUBMITS_PER_MINUTE", default_value_t = 30)]
    pub(crate) user_submits_per_minute: u32,
    /// Open WebSocket connections per end user (on all servers together on Redis);
    /// 0 = unlimited.
    #[arg(long, env = "VERDICT_USER_MAX_WS", default_value_t = 8)]
    pub(crate) user_max_ws: usize,
    /// Concurrent operations per WebSocket connection.
    #[arg(
        long,
        env = "VERDICT_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub(crate) max_subscriptions_per_connection: usize,
    /// graphql-ws: close with 4408 when connection_init has not arrived after this, ms.
    #[arg(long, env = "VERDICT_WS_INIT_TIMEOUT_MS", default_value_t = 3_000)]
    pub(crate) ws_init_timeout_ms: u64,
    /// graphql-ws: server keep-alive ping interval, ms.
    #[arg(long, env = "VERDICT_WS_KEEPALIVE_MS", default_value_t = 15_000)]
    pub(crate) ws_keepalive_ms: u64,
    /// Largest request body, bytes (default: the input caps plus 1 MiB).
    #[arg(long, env = "VERDICT_MAX_BODY_BYTES")]
    pub(crate) max_body_bytes: Option<usize>,
    /// Query depth and complexity limits.
    #[arg(long, env = "VERDICT_MAX_QUERY_DEPTH", default_value_t = 16)]
    pub(crate) max_query_depth: usize,
    #[arg(long, env = "VERDICT_MAX_QUERY_COMPLEXITY", default_value_t = 1000)]
    pub(crate) max_query_complexity: usize,
    /// Aliased fields per query document; 0 = unlimited.
    #[arg(long, env = "VERDICT_MAX_QUERY_ALIASES", default_value_t = 30)]
    pub(crate) max_query_aliases: usize,
    /// Longest GraphQL document (the `query` text), bytes (default: the source cap plus
    /// 1 MiB; large inputs belong in variables).
    #[arg(long, env = "VERDICT_MAX_QUERY_BYTES")]
    pub(crate) max_query_bytes: Option<usize>,
    /// Refuse schema introspection (`__schema`, `__type`).
    #[arg(long, env = "VERDICT_NO_INTROSPECTION")]
    pub(crate) no_introspection: bool,
    #[command(flatten)]
    pub(crate) jwt: JwtArgs,
}

/// End-user tokens (server/src/jwt.rs): a platform's backend mints them per user.
#[derive(Args, Clone)]
pub(crate) struct JwtArgs {
    /// File holding the HS256 shared secret for end-user JWTs.
    #[arg(long, env = "VERDICT_JWT_HS256_SECRET_FILE")]
    pub(crate) jwt_hs256_secret_file: Option<PathBuf>,
    /// Public keys for end-user JWTs (RS256, ES256, EdDSA by `kid`): a PEM file or a
    /// JWKS JSON file.
    #[arg(long, env = "VERDICT_JWT_PUBLIC_KEYS")]
    pub(crate) jwt_public_keys: Option<PathBuf>,
    /// Required `iss` of end-user JWTs, when set.
    #[arg(long, env = "VERDICT_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,
    /// Required `aud` of end-user JWTs, when set.
    #[arg(long, env = "VERDICT_JWT_AUDIENCE")]
    pub(crate) jwt_audience: Option<String>,
    /// End-user tokens may submit to problems only (no free-form runs).
    #[arg(long, env = "VERDICT_JWT_PROBLEMS_ONLY")]
    pub(crate) jwt_problems_only: bool,
}

impl JwtArgs {
    pub(crate) fn verifier(&self) -> Result<verdict_server::jwt::JwtVerifier, BoxError> {
        let mut v = verdict_server::jwt::JwtVerifier::new()
            .with_issuer(self.jwt_issuer.clone())
            .with_audience(self.jwt_audience.clone())
            .with_problems_only(self.jwt_problems_only);
        if let Some(path) = &self.jwt_hs256_secret_file {
            v = v.load_hs256_secret(path)?;
        }
        if let Some(path) = &self.jwt_public_keys {
            v = v.load_public_keys(path)?;
        }
        if v.is_configured() {
            tracing::info!(algorithms = ?v.algorithms(), "end-user tokens accepted");
        }
        Ok(v)
    }
}

impl ApiArgs {
    pub(crate) fn keys(&self, listen: SocketAddr) -> Result<verdict_server::ApiKeys, BoxError> {
        let mut text = String::new();
        if let Some(path) = &self.api_keys_file {
            text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read API keys {}: {e}", path.display()))?;
        }
        if let Some(inline) = &self.api_keys {
            text.push('\n');
            text.push_str(inline);
        }
        let keys = verdict_server::ApiKeys::parse(&text)?.with_jwt(self.jwt.verifier()?);
        if keys.is_open() && !listen.ip().is_loopback() {
            if !self.insecure_no_auth {
                return Err(format!(
                    "{listen} is not a loopback address: configure API keys (--api-keys) or pass --insecure-no-auth"
                )
                .into());
            }
            tracing::warn!(%listen, "serving an open API without keys (--insecure-no-auth)");
        }
        tracing::info!(keys = keys.len(), "API keys loaded");
        Ok(keys)
    }

    pub(crate) async fn limits(
        &self,
        redis: Option<(&str, &str)>,
    ) -> Result<verdict_server::ApiLimits, BoxError> {
        let shared = match redis {
            Some((url, namespace)) => Some(
                verdict_broker::RedisQuota::connect(url, namespace)
                    .await
                    .map_err(|e| format!("cannot connect to Redis at {}: {e}", redact(url)))?,
            ),
            None => None,
        };
        Ok(verdict_server::ApiLimits {
            shared,
            submits_per_minute: self.submits_per_minute,
            max_ws_per_ip: self.max_ws_per_ip,
            max_ws_per_key: self.max_ws_per_key,
            user_submits_per_minute: self.user_submits_per_minute,
            max_ws_per_user: self.user_max_ws,
            cors_origins: self.cors_origins.clone(),
            ws_allowed_origins: self.ws_allowed_origins.clone(),
            max_subscriptions_per_connection: self.max_subscriptions_per_connection,
            connection_init_timeout: Duration::from_millis(self.ws_init_timeout_ms),
            keepalive: Duration::from_millis(self.ws_keepalive_ms),
            max_body_bytes: self.max_body_bytes,
            max_depth: self.max_query_depth,
            max_complexity: self.max_query_complexity,
            max_aliases: self.max_query_aliases,
            max_query_bytes: self.max_query_bytes,
            introspection: !self.no_introspection,
            ..verdict_server::ApiLimits::default()
        })
    }
}

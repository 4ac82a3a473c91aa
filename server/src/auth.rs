//! API keys: who is calling. Keys are configured as `name:sha256hex` lines (a file, or the
//! environment) and only their SHA-256 digests are kept in memory, so a leaked config or
//! core dump does not leak usable keys. A request presents the key itself, in
//! `Authorization: Bearer KEY` (HTTP) or in the graphql-ws `connection_init` payload
//! (`{"authorization": "Bearer KEY"}`).
//!
//! With no keys configured the API is open: every caller is anonymous, identified only by
//! its IP address (for rate limits), and submissions have no owner.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The configured keys, by digest.
#[derive(Default, Clone)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Arc<str>>,
    /// Names of the keys whose line ends in `:admin` (they manage problems and see
    /// hidden tests).
    admins: std::collections::HashSet<String>,
    /// End-user tokens (jwt.rs), when configured.
    jwt: Option<Arc<crate::jwt::JwtVerifier>>,
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The API is open (no keys configured); `ip` is the peer address.
    Anonymous { ip: Option<IpAddr> },
    /// Authenticated by the key named `name`.
    Key { name: Arc<str> },
    /// An end user, by a verified JWT (jwt.rs); `owner` is `user:<sub>`.
    User {
        owner: Arc<str>,
        /// The token's `exp` (unix seconds).
        exp: u64,
        /// The token's `verdict.problems` claim, when present: the only problems it may
        /// submit to.
        problems: Option<Arc<[String]>>,
        /// May it make free-form runs (no `problemId`)? Not with `--jwt-problems-only`.
        free_runs: bool,
    },
}

impl Caller {
    /// The owner recorded on this caller's submissions (None when the API is open).
    pub fn owner(&self) -> Option<&str> {
        match self {
            Caller::Anonymous { .. } => None,
            Caller::Key { name } => Some(name),
            Caller::User { owner, .. } => Some(owner),
        }
    }

    /// May this caller see a submission owned by `owner`? Anonymous callers see only
    /// ownerless submissions; a key sees only its own.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.owner() == owner
    }

    /// May this caller submit to `problem` (`None`: a free-form run)? Keys and an open
    /// API may; an end-user token within its `verdict.problems` claim and
    /// `--jwt-problems-only`. The error says which rule refused it.
    pub fn may_submit(&self, problem: Option<&str>) -> Result<(), String> {
        let Caller::User {
            problems,
            free_runs,
            ..
        } = self
        else {
            return Ok(());
        };
        match problem {
            None if !free_runs => {
                Err("this token may only submit to problems (free-form runs are off: --jwt-problems-only)".into())
            }
            Some(p) if problems.as_ref().is_some_and(|list| !list.iter().any(|x| x == p)) => {
                Err(format!("this token may not submit to problem \"{p}\" (its verdict.problems claim)"))
            }
            _ => Ok(()),
        }
    }

    /// The rate-limit bucket: the key name, else the IP address.
    pub fn bucket(&self) -> String {
        match self {
            Caller::Key { name } => format!("key:{name}"),
            Caller::User { owner, .. } => owner.to_string(),
            Caller::Anonymous { ip: Some(ip) } => format!("ip:{ip}"),
            Caller::Anonymous { ip: None } => "ip:unknown".into(),
        }
    }
}

/// Why a presented credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the token is refused: {0}")]
    Token(#[from] crate::jwt::JwtError),
}

/// A key file could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("API keys: {0}")]
pub struct KeyFileError(String);

impl ApiKeys {
    /// No keys: the API is open.
    pub fn open() -> Self {
        ApiKeys::default()
    }

    /// True when no keys and no end-user tokens are configured.
    pub fn is_open(&self) -> bool {
        self.by_digest.is_empty() && self.jwt.is_none()
    }

    /// Also accepts end-user tokens verified by `verifier` (ignored when it has no key).
    pub fn with_jwt(mut self, verifier: crate::jwt::JwtVerifier) -> Self {
        self.jwt = verifier.is_configured().then(|| Arc::new(verifier));
        self
    }

    /// Number of configured keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// True when no keys are configured (same as [`ApiKeys::is_open`]).
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Parses `name:sha256hex` entries, one per line or separated by commas; blank lines
    /// and `#` comments are ignored. Generate a digest with
    /// `printf %s "$KEY" | sha256sum`.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut keys = ApiKeys::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default();
            for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let Some((name, hex)) = entry.split_once(':') else {
                    return Err(KeyFileError(format!(
                        "line {}: expected `name:sha256hex`",
                        n + 1
                    )));
                };
                let name = name.trim();
                let (hex, admin) = match hex.trim().split_once(':') {
                    Some((hex, role)) if role.trim() == "admin" => (hex, true),
                    Some((_, role)) => {
                        return Err(KeyFileError(format!(
                            "line {}: `{name}`: unknown role `{}` (the only role is `admin`)",
                            n + 1,
                            role.trim()
                        )))
                    }
                    None => (hex, false),
                };
                if name.is_empty() {
                    return Err(KeyFileError(format!("line {}: empty key name", n + 1)));
                }
                let digest = decode_digest(hex.trim()).ok_or_else(|| {
                    KeyFileError(format!(
                        "line {}: `{name}`: the digest must be 64 hex digits (sha256)",
                        n + 1
                    ))
                })?;
                if admin {
                    keys.admins.insert(name.to_owned());
                }
                if keys.by_digest.insert(digest, name.into()).is_some() {
                    return Err(KeyFileError(format!(
                        "line {}: the same key is configured twice",
                        n + 1
                    )));
                }
            }
        }
        Ok(keys)
    }

    /// Reads [`ApiKeys::parse`] entries from a file.
    pub fn load(path: &std::path::Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyFileError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Names of the admin keys (`name:sha256hex:admin`).
    pub fn admins(&self) -> std::collections::HashSet<String> {
        self.admins.clone()
    }

    /// Adds a key given in clear (for tests and tools); only its digest is kept.
    pub fn with_key(mut self, name: &str, key: &str) -> Self {
        self.by_digest.insert(digest(key), name.into());
        self
    }

    /// Identifies a caller from a credential (`Bearer KEY`, or the bare key).
    pub fn authenticate(
        &self,
        credential: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        if self.is_open() {
            // Open API: a stray Authorization header (e.g. from a shared client) is ignored.
            return Ok(Caller::Anonymous { ip });
        }
        let credential = credential.map(str::trim).filter(|c| !c.is_empty());
        let Some(credential) = credential else {
            return Err(AuthError::Missing);
        };
        let key = match credential.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            Some(_) => return Err(AuthError::Invalid),
            None => credential,
        };
        // A JWT has three dot-separated base64url parts; an API key has no dots.
        if crate::jwt::looks_like_jwt(key) {
            let Some(jwt) = &self.jwt else {
                return Err(AuthError::Invalid);
            };
            let user = jwt.verify(key)?;
            return Ok(Caller::User {
                owner: format!("user:{}", user.sub).into(),
                exp: user.exp,
                problems: user.problems.map(Into::into),
                free_runs: !jwt.problems_only(),
            });
        }
        // A lookup by digest: comparing digests, not keys, so timing reveals nothing
        // usable about a key.
        match self.by_digest.get(&digest(key)) {
            Some(name) => Ok(Caller::Key {
                name: Arc::clone(name),
            }),
            None => Err(AuthError::Invalid),
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn decode_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(key: &str) -> String {
        digest(key).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn parses_lines_and_authenticates_by_digest() {
        let text = format!(
            "# keys\nalice:{}\n\nbob:{}  # bob's\n",
            hex("secret-a"),
            hex("secret-b")
        );
        let keys = ApiKeys::parse(&text).expect("parse");
        assert_eq!(keys.len(), 2);
        let alice = keys.authenticate(Some("Bearer secret-a"), None);
        assert_eq!(
            alice.map(|c| c.owner().map(str::to_owned)),
            Ok(Some("alice".into()))
        );
        assert_eq!(
            keys.authenticate(Some("bearer secret-b"), None)
                .map(|c| c.bucket()),
            Ok("key:bob".into())
        );
        assert_eq!(keys.authenticate(None, None), Err(AuthError::Missing));
        assert_eq!(
            keys.authenticate(Some("Bearer nope"), None),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            keys.authenticate(Some("Basic secret-a"), None),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn an_admin_suffix_makes_an_admin_key() {
        let text = format!("root:{}:admin\nuser:{}\n", hex("r"), hex("u"));
        let keys = ApiKeys::parse(&text).expect("parse");
        assert_eq!(keys.len(), 2);
        assert!(keys.admins().contains("root"));
        assert!(!keys.admins().contains("user"));
        assert!(ApiKeys::parse(&format!("x:{}:boss", hex("x"))).is_err());
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(ApiKeys::parse("alice").is_err());
        assert!(ApiKeys::parse("alice:1234").is_err());
        assert!(ApiKeys::parse(&format!(":{}", hex("k"))).is_err());
    }

    #[test]
    fn open_api_is_anonymous() {
        let keys = ApiKeys::open();
        let c = keys.authenticate(Some("Bearer whatever"), None);
        assert_eq!(c, Ok(Caller::Anonymous { ip: None }));
    }
}

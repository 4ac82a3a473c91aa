//! End-user tokens (JWT), verified with the `jsonwebtoken` crate: a coding-challenge
//! platform's backend mints a short-lived token per user and the user's browser talks to
//! Verdict directly. The token travels like an API key (`Authorization: Bearer <jwt>`, or
//! the graphql-ws `connection_init` payload); [`looks_like_jwt`] tells the two apart by
//! shape. A token's submissions belong to `user:<sub>`.
//!
//! Keys: an HS256 shared secret (`--jwt-hs256-secret-file`) and/or public keys
//! (`--jwt-public-keys`, PEM or JWKS) for RS256, ES256 and EdDSA, chosen by `kid`. The
//! algorithm a token may use is decided by the configured key, never by the token's
//! header alone: an HS256 token is refused where only public keys are configured (the
//! classic key confusion), and `alg: none` is never accepted.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{
    decode, decode_header, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

/// Seconds of clock skew tolerated on `exp`.
pub const LEEWAY_SECS: u64 = 5;

/// A configuration or key file problem (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: the HS256 secret is empty")]
    EmptySecret { path: String },
    #[error("{path}: {message}")]
    Keys { path: String, message: String },
}

/// Why a presented token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is malformed, or its `alg` is not one Verdict knows")]
    Malformed,
    #[error("the token's algorithm is not accepted here")]
    Algorithm,
    #[error("no configured key matches the token's `kid`")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(String),
    #[error("the token's claims are not valid")]
    Claims,
}

/// The claims Verdict reads. `sub` and `exp` are required.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    // Defaults, so that a missing one is reported by the validation as a missing claim
    // rather than as bad JSON.
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub exp: u64,
    /// Optional `{"verdict": {"problems": [...]}}`: the problems this token may submit to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictClaims>,
}

/// The `verdict` claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerdictClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub sub: String,
    /// Unix seconds.
    pub exp: u64,
    pub problems: Option<Vec<String>>,
}

/// A public key from `--jwt-public-keys`.
#[derive(Clone)]
struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// What verifies end-user tokens.
#[derive(Clone, Default)]
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    public: Vec<PublicKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// `--jwt-problems-only`: tokens may submit to problems only, not free-form runs.
    problems_only: bool,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("public_keys", &self.public.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Does `credential` have a JWT's shape (three base64url segments, the first a JSON
/// object)? API keys never do: they have no dots.
pub fn looks_like_jwt(credential: &str) -> bool {
    let mut parts = credential.split('.');
    let shaped = (0..3).all(|_| {
        parts.next().is_some_and(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    }) && parts.next().is_none();
    // `{"` base64url-encodes to `eyJ` (and `{ "` to `eyB`, `{\n` to `ewo`).
    shaped && credential.starts_with("ey")
}

impl JwtVerifier {
    /// No keys: every token is refused.
    pub fn new() -> Self {
        JwtVerifier::default()
    }

    /// True when some key is configured.
    pub fn is_configured(&self) -> bool {
        self.hs256.is_some() || !self.public.is_empty()
    }

    /// Accepts HS256 tokens signed with `secret`.
    pub fn with_hs256_secret(mut self, secret: &[u8]) -> Self {
        self.hs256 = Some(DecodingKey::from_secret(secret));
        self
    }

    /// Checks `iss` (required when set).
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Checks `aud` (required when set).
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self
    }

    /// `--jwt-problems-only`: a token may make problem submissions only, so a platform
    /// that hands tokens to its users does not also hand them a free code runner.
    pub fn with_problems_only(mut self, on: bool) -> Self {
        self.problems_only = on;
        self
    }

    /// True with `--jwt-problems-only`.
    pub fn problems_only(&self) -> bool {
        self.problems_only
    }

    /// Reads the HS256 secret file (surrounding whitespace is trimmed).
    pub fn load_hs256_secret(self, path: &Path) -> Result<Self, JwtConfigError> {
        let secret = read_secret(path)?;
        Ok(self.with_hs256_secret(&secret))
    }

    /// Reads public keys: a JWKS JSON document (`{"keys": [...]}`), or one or more PEM
    /// public keys (RSA, EC P-256 or Ed25519; PEM keys have no `kid`).
    pub fn load_public_keys(mut self, path: &Path) -> Result<Self, JwtConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| JwtConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let keys = parse_public_keys(&text).map_err(|message| JwtConfigError::Keys {
            path: path.display().to_string(),
            message,
        })?;
        self.public.extend(keys);
        Ok(self)
    }

    /// The algorithms some configured key accepts (for logs and the README).
    pub fn algorithms(&self) -> Vec<String> {
        let mut algs: Vec<String> = self
            .hs256
            .iter()
            .map(|_| "HS256".to_owned())
            .chain(self.public.iter().map(|k| format!("{:?}", k.alg)))
            .collect();
        algs.sort();
        algs.dedup();
        algs
    }

    /// Verifies a token: signature by a configured key of the header's algorithm, `exp`,
    /// `sub`, and `iss`/`aud` when configured.
    pub fn verify(&self, token: &str) -> Result<User, JwtError> {
        // An unknown `alg` (including "none") does not even parse as a Header.
        let header = decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => JwtError::Algorithm,
            _ => JwtError::Malformed,
        })?;
        let key = self.key_for(&header)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["sub", "exp"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        let data = decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => JwtError::Signature,
                K::ExpiredSignature => JwtError::Expired,
                K::InvalidIssuer => JwtError::Issuer,
                K::InvalidAudience => JwtError::Audience,
                K::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
                K::InvalidAlgorithm | K::InvalidAlgorithmName => JwtError::Algorithm,
                K::Json(_) => JwtError::Claims,
                _ => JwtError::Malformed,
            }
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(JwtError::MissingClaim("sub".into()));
        }
        Ok(User {
            sub: claims.sub,
            exp: claims.exp,
            problems: claims.verdict.and_then(|v| v.problems),
        })
    }

    /// The key a token must be signed with: chosen by the configuration for the header's
    /// algorithm, and by `kid` among public keys.
    fn key_for(&self, header: &Header) -> Result<&DecodingKey, JwtError> {
        match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().ok_or(JwtError::Algorithm),
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                let same_alg = || self.public.iter().filter(|k| k.alg == header.alg);
                if same_alg().next().is_none() {
                    return Err(JwtError::Algorithm);
                }
                let by_kid = header
                    .kid
                    .as_deref()
                    .and_then(|kid| same_alg().find(|k| k.kid.as_deref() == Some(kid)));
                // Without a kid match: a key without a kid (PEM), when there is exactly
                // one such key for the algorithm.
                let found = by_kid.or_else(|| {
                    let mut anonymous = same_alg().filter(|k| k.kid.is_none());
                    match (anonymous.next(), anonymous.next()) {
                        (Some(k), None) => Some(k),
                        _ => None,
                    }
                });
                found.map(|k| &k.key).ok_or(JwtError::UnknownKey)
            }
            _ => Err(JwtError::Algorithm),
        }
    }
}

/// Reads a secret file, trimmed; an empty one is an error.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, JwtConfigError> {
    let text = std::fs::read(path).map_err(|error| JwtConfigError::Read {
        path: path.display().to_string(),
        error,
    })?;
    let secret = text.trim_ascii().to_vec();
    if secret.is_empty() {
        return Err(JwtConfigError::EmptySecret {
            path: path.display().to_string(),
        });
    }
    Ok(secret)
}

/// Signs an HS256 token for `sub` valid for `ttl_secs` (the `verdict token` command and
/// tests).
pub fn sign_hs256(
    secret: &[u8],
    sub: &str,
    ttl_secs: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let exp = jsonwebtoken::get_current_timestamp().saturating_add(ttl_secs);
    let mut claims = serde_json::json!({ "sub": sub, "exp": exp });
    if let Some(iss) = issuer {
        claims["iss"] = iss.into();
    }
    if let Some(aud) = audience {
        claims["aud"] = aud.into();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

fn parse_public_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    if text.trim_start().starts_with('{') {
        let set: JwkSet =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        return set
            .keys
            .iter()
            .enumerate()
            .map(|(i, jwk)| {
                let alg = jwk_algorithm(jwk).ok_or_else(|| {
                    format!(
                        "key {i}: only RS256, ES256 (P-256) and EdDSA (Ed25519) keys are supported"
                    )
                })?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
                Ok(PublicKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect();
    }
    let blocks = pem_blocks(text);
    if blocks.is_empty() {
        return Err("neither a JWKS document nor PEM public keys".into());
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let bytes = block.as_bytes();
            let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
                (Algorithm::ES256, key)
            } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
                (Algorithm::EdDSA, key)
            } else {
                return Err(format!(
                    "PEM block {}: not an RSA, EC or Ed25519 public key",
                    i + 1
                ));
            };
            Ok(PublicKey {
                kid: None,
                alg,
                key,
            })
        })
        .collect()
}

/// The algorithm a JWK is for: its `alg` when given (one of ours), else its key type.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Some(by_type),
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Some(by_type),
        Some(KeyAlgorithm::EdDSA) if by_type == Algorithm::EdDSA => Some(by_type),
        Some(_) => None,
    }
}

/// Splits a file into its `-----BEGIN ...-----` … `-----END ...-----` blocks.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END ") {
            if let Some(block) = current.take() {
                blocks.push(block);
            }
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn tells_a_jwt_from_a_key_by_shape() {
        let token = sign_hs256(SECRET, "alice", 60, None, None).expect("sign");
        assert!(looks_like_jwt(&token));
        assert!(!looks_like_jwt("sk_live_0123456789"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("ey.a.b.c"));
        assert!(!looks_like_jwt("eyJ.a b.c"));
    }

    #[test]
    fn verifies_hs256_and_refuses_the_rest() {
        let v = JwtVerifier::new().with_hs256_secret(SECRET);
        let ok = sign_hs256(SECRET, "alice", 60, None, None).expect("sign");
        assert_eq!(v.verify(&ok).map(|u| u.sub), Ok("alice".into()));
        let wrong = sign_hs256(b"another secret", "alice", 60, None, None).expect("sign");
        assert_eq!(v.verify(&wrong), Err(JwtError::Signature));
        // exp in the past, beyond the leeway.
        let claims = serde_json::json!({ "sub": "alice", "exp": 1_000 });
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        assert_eq!(v.verify(&old), Err(JwtError::Expired));
        // No sub.
        let claims = serde_json::json!({ "exp": jsonwebtoken::get_current_timestamp() + 600 });
        let nosub = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        assert!(matches!(v.verify(&nosub), Err(JwtError::MissingClaim(_))));
        // alg none: header {"alg":"none","typ":"JWT"}.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        // `none` is no `Algorithm`: the header itself does not parse.
        assert_eq!(v.verify(none), Err(JwtError::Malformed));
        assert_eq!(v.verify("eyJ.x.y"), Err(JwtError::Malformed));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_set() {
        let v = JwtVerifier::new()
            .with_hs256_secret(SECRET)
            .with_issuer(Some("https://platform".into()))
            .with_audience(Some("verdict".into()));
        let good =
            sign_hs256(SECRET, "a", 60, Some("https://platform"), Some("verdict")).expect("sign");
        assert!(v.verify(&good).is_ok());
        let iss = sign_hs256(SECRET, "a", 60, Some("https://evil"), Some("verdict")).expect("sign");
        assert_eq!(v.verify(&iss), Err(JwtError::Issuer));
        let aud = sign_hs256(SECRET, "a", 60, Some("https://platform"), Some("x")).expect("sign");
        assert_eq!(v.verify(&aud), Err(JwtError::Audience));
        let none = sign_hs256(SECRET, "a", 60, None, None).expect("sign");
        assert!(matches!(v.verify(&none), Err(JwtError::MissingClaim(_))));
    }

    #[test]
    fn hs256_is_refused_where_only_public_keys_are_configured() {
        let v = JwtVerifier::default();
        let token = sign_hs256(SECRET, "a", 60, None, None).expect("sign");
        assert_eq!(v.verify(&token), Err(JwtError::Algorithm));
    }
}

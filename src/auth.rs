//! OAuth 2.0 bearer tokens: HS256 with a configured (or generated) secret, RS256/ES256 with
//! keys from a JWKS URL. `iss`, `aud`, `exp` and `nbf` are always checked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{AuthSettings, Settings};
use crate::formats::input::UserId;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A person uploading their own data and managing their consent.
    Upload,
    /// A downstream service reading stored packages.
    Read,
    /// Operators.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upload => "udim:upload",
            Self::Read => "udim:read",
            Self::Admin => "udim:admin",
        }
    }
}

/// The authenticated caller. Every query is scoped to `subject`.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: UserId,
    scopes: HashSet<String>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope.as_str())
    }
}

/// Why a token was refused. The message is safe to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the identity provider's keys could not be fetched")]
    JwksUnavailable,
}

/// RFC 7519 §4.1.3: one audience as a string, or several as an array (jsonwebtoken's
/// validation checks ours is among them).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// Some identity providers send scopes as an array instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scp: Option<Vec<String>>,
    iss: String,
    aud: Audience,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Keys from a JWKS URL. A token whose `kid` is known is checked against the cached set
/// without waiting on anything. An unknown `kid`, or a set older than `MAX_AGE`, asks for a
/// refresh: one fetch at a time (the others wait for its outcome rather than fetch again), at
/// most one per `MIN_REFRESH` so random kids cannot make the service flood the identity
/// provider, and after failures less and less often (doubling up to `MAX_BACKOFF`), so an
/// outage at the identity provider costs one bounded fetch now and then, not one per request.
struct JwksCache {
    url: String,
    client: reqwest::Client,
    /// Swapped whole after a fetch; never held across an await.
    keys: std::sync::RwLock<Arc<KeySet>>,
    /// Held by the one refresh in flight.
    refresh: tokio::sync::Mutex<RefreshState>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// Failed fetches since the last success.
    failures: u32,
}

const MIN_REFRESH: Duration = Duration::from_secs(2);
const MAX_AGE: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A JWKS fetch that takes longer is given up (and counts as a failure).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

impl RefreshState {
    /// Whether a fetch may start now: `MIN_REFRESH` after the last attempt, doubling per
    /// failure since the last success.
    fn may_fetch(&self, now: Instant) -> bool {
        let wait = MIN_REFRESH.saturating_mul(1 << self.failures.min(6)).min(MAX_BACKOFF);
        self.last_attempt.is_none_or(|t| now.duration_since(t) >= wait)
    }
}

impl JwksCache {
    fn new(url: String, client: reqwest::Client) -> Self {
        Self {
            url,
            client,
            keys: std::sync::RwLock::new(Arc::default()),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn key(&self, kid: &str) -> Result<(Algorithm, DecodingKey), AuthError> {
        let seen = self.current();
        let fresh = seen.fetched_at.is_some_and(|t| t.elapsed() < MAX_AGE);
        if let (true, Some(found)) = (fresh, seen.keys.get(kid)) {
            return Ok(found.clone());
        }
        let mut refresh = self.refresh.lock().await;
        let latest = self.current();
        // Another request's refresh finished while this one waited: its answer is ours.
        let refreshed_meanwhile = latest.fetched_at != seen.fetched_at;
        let set = if !refreshed_meanwhile && refresh.may_fetch(Instant::now()) {
            refresh.last_attempt = Some(Instant::now());
            match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
                Ok(Ok(keys)) => {
                    refresh.failures = 0;
                    let set = Arc::new(KeySet {
                        keys,
                        fetched_at: Some(Instant::now()),
                    });
                    *self.keys.write().unwrap_or_else(|e| e.into_inner()) = set.clone();
                    set
                }
                failed => {
                    refresh.failures = refresh.failures.saturating_add(1);
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {FETCH_TIMEOUT:?}"),
                    };
                    tracing::warn!(error, url = %self.url, failures = refresh.failures, "JWKS refresh failed");
                    latest
                }
            }
        } else {
            latest
        };
        drop(refresh);
        match set.keys.get(kid) {
            Some(found) => Ok(found.clone()),
            None if set.fetched_at.is_none() => Err(AuthError::JwksUnavailable),
            None => Err(AuthError::UnknownKey),
        }
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, (Algorithm, DecodingKey)>> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (&jwk.common.key_id, jwk.common.key_algorithm) else {
                continue;
            };
            let Ok(alg) = Algorithm::try_from(alg) else { continue };
            if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid.clone(), (alg, key));
            }
        }
        Ok(keys)
    }
}

/// Verifies bearer tokens and, for local use, mints HS256 ones.
pub struct Authenticator {
    issuer: String,
    audience: String,
    leeway: u64,
    token_ttl: u64,
    hs256: Option<SecretString>,
    jwks: Option<JwksCache>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("hs256", &self.hs256.is_some())
            .field("jwks_url", &self.jwks.as_ref().map(|j| &j.url))
            .finish()
    }
}

impl Authenticator {
    /// Builds the authenticator. With neither an HS256 secret nor a JWKS URL configured, a
    /// secret is generated into `data_dir` on first use (the embedded default), so `udim
    /// token` and the server agree with no configuration.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let auth: &AuthSettings = &settings.auth;
        let hs256 = match (&auth.hs256_secret, &auth.jwks_url) {
            (Some(secret), _) => {
                anyhow::ensure!(
                    secret.expose_secret().len() >= 32,
                    "configuration error: `auth.hs256_secret` must be at least 32 bytes"
                );
                Some(secret.clone())
            }
            (None, Some(_)) => None,
            (None, None) => {
                let path = settings.hs256_secret_file();
                // 32 random bytes, hex: the same bound a configured secret must meet.
                let bytes = udim_local::secret_file::load_or_create(&path, 32, || {
                    let mut raw = [0u8; 32];
                    aws_lc_rs::rand::fill(&mut raw).expect("the system random generator failed");
                    hex::encode(raw).into_bytes()
                })
                .map_err(|e| anyhow::anyhow!("cannot read or create the HS256 secret {}: {e}", path.display()))?;
                Some(SecretString::from(String::from_utf8(bytes)?.trim().to_owned()))
            }
        };
        let jwks = match &auth.jwks_url {
            Some(url) => Some(JwksCache::new(
                url.clone(),
                reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?,
            )),
            None => None,
        };
        Ok(Self {
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: auth.leeway_secs,
            token_ttl: auth.token_ttl_secs,
            hs256,
            jwks,
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v
    }

    /// Verifies a bearer token and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (alg, key) = match header.alg {
            Algorithm::HS256 => {
                let secret = self.hs256.as_ref().ok_or(AuthError::UnknownKey)?;
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                )
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::UnknownKey)?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AuthError::Invalid("no `kid`".into()))?;
                let (alg, key) = jwks.key(kid).await?;
                if alg != header.alg {
                    return Err(AuthError::Invalid("algorithm does not match the key".into()));
                }
                (alg, key)
            }
            other => return Err(AuthError::Invalid(format!("algorithm {other:?} is not accepted"))),
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation(alg))
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let subject = UserId::parse(&claims.sub).map_err(|why| AuthError::Invalid(format!("`sub` {why}")))?;
        let mut scopes: HashSet<String> = claims
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        scopes.extend(claims.scp.unwrap_or_default());
        Ok(Principal { subject, scopes })
    }

    /// Mints an HS256 token (only when an HS256 secret is configured or generated).
    pub fn mint(&self, subject: &str, scopes: &[String]) -> anyhow::Result<String> {
        let secret = self
            .hs256
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no HS256 secret is configured; tokens come from the identity provider"))?;
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: subject.to_owned(),
            scope: Some(scopes.join(" ")),
            scp: None,
            iss: self.issuer.clone(),
            aud: Audience::One(self.audience.clone()),
            exp: now + self.token_ttl,
            nbf: Some(now),
            iat: Some(now),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_wait_longer_after_each_failure_up_to_a_minute() {
        let start = Instant::now();
        let after = |failures, secs| {
            RefreshState {
                last_attempt: Some(start),
                failures,
            }
            .may_fetch(start + Duration::from_secs(secs))
        };
        assert!(RefreshState::default().may_fetch(start), "the first fetch");
        assert!(!after(0, 1) && after(0, 2), "2 s after a success");
        assert!(!after(1, 3) && after(1, 4), "4 s after one failure");
        assert!(!after(2, 7) && after(2, 8), "8 s after two");
        assert!(!after(30, 59) && after(30, 60), "never more than a minute");
    }
}

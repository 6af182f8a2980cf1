//! OAuth 2.0 bearer tokens: HS256 with a configured (or generated) secret, RS256/ES256 with
//! keys from a JWKS URL. `iss`, `aud`, `exp` and `nbf` are always checked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
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

/// Keys from a JWKS URL. A token whose `kid` is in the fetched set is checked against it
/// without waiting on anything, however old the set is; a set older than `refresh_after` is
/// refreshed in the background. An unknown `kid` waits for a refresh: one fetch at a time
/// (requests that waited for one take its outcome, as the back-off runs from its end), at most one per
/// `MIN_REFRESH` so random kids cannot make the service flood the identity provider, and
/// after failures less and less often (doubling up to `MAX_BACKOFF`), so an outage at the
/// identity provider costs one bounded fetch now and then, not one per request. An attempt is
/// stamped and counted as a failure before its fetch starts, so a request cancelled mid-fetch
/// still backs off, and stamped again when it ends, so the back-off runs from its outcome.
struct JwksCache {
    url: String,
    client: reqwest::Client,
    refresh_after: Duration,
    /// Swapped whole after a good fetch; never held across an await.
    keys: std::sync::RwLock<Arc<KeySet>>,
    /// Held by the one refresh in flight.
    refresh: Arc<tokio::sync::Mutex<RefreshState>>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// Fetches since the last good one (the one in flight included).
    failures: u32,
}

const MIN_REFRESH: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A JWKS fetch that takes longer is given up (and counts as a failure).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

impl RefreshState {
    /// Whether a fetch may start now: `MIN_REFRESH` after the last attempt, doubling per
    /// failure since the last good fetch, except while no key was ever fetched (then every
    /// `MIN_REFRESH`: nothing can be verified until one arrives).
    fn may_fetch(&self, now: Instant, have_keys: bool) -> bool {
        let doublings = if have_keys { self.failures.min(6) } else { 0 };
        let wait = MIN_REFRESH.saturating_mul(1 << doublings).min(MAX_BACKOFF);
        self.last_attempt.is_none_or(|t| now.duration_since(t) >= wait)
    }
}

impl JwksCache {
    fn new(url: String, client: reqwest::Client, refresh_after: Duration) -> Self {
        Self {
            url,
            client,
            refresh_after,
            keys: std::sync::RwLock::new(Arc::default()),
            refresh: Arc::new(tokio::sync::Mutex::new(RefreshState::default())),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn key(self: &Arc<Self>, kid: &str) -> Result<(Algorithm, DecodingKey), AuthError> {
        let seen = self.current();
        if let Some(found) = seen.keys.get(kid) {
            if seen.fetched_at.is_none_or(|t| t.elapsed() >= self.refresh_after) {
                self.refresh_in_background();
            }
            return Ok(found.clone());
        }
        let mut refresh = self.refresh.lock().await;
        if refresh.may_fetch(Instant::now(), self.current().fetched_at.is_some()) {
            self.attempt(&mut refresh).await;
        }
        let failing = refresh.failures > 0;
        drop(refresh);
        let set = self.current();
        match set.keys.get(kid) {
            Some(found) => Ok(found.clone()),
            // Nothing to check against, or perhaps a key the identity provider rotated in
            // while it cannot be asked: "retry later", not "bad token".
            None if set.fetched_at.is_none() || failing => Err(AuthError::JwksUnavailable),
            None => Err(AuthError::UnknownKey),
        }
    }

    /// Starts a refresh on its own task unless one is running or the back-off forbids it.
    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(mut refresh) = self.refresh.clone().try_lock_owned() else {
            return;
        };
        if !refresh.may_fetch(Instant::now(), self.current().fetched_at.is_some()) {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move { cache.attempt(&mut refresh).await });
    }

    /// One fetch. The set is replaced only by a good one: an error, a timeout or a set with
    /// no usable key leaves the cached keys in use.
    async fn attempt(&self, refresh: &mut RefreshState) {
        refresh.last_attempt = Some(Instant::now());
        refresh.failures = refresh.failures.saturating_add(1);
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await;
        // Stamped again at the end: the back-off runs from the outcome, so a request that
        // waited through a slow failed fetch does not start the next one at once.
        refresh.last_attempt = Some(Instant::now());
        let error = match fetched {
            Ok(Ok(keys)) if !keys.is_empty() => {
                refresh.failures = 0;
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                });
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = set;
                return;
            }
            Ok(Ok(_)) => "the key set holds no usable RS256 or ES256 key".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {FETCH_TIMEOUT:?}"),
        };
        tracing::warn!(error, url = %self.url, failures = refresh.failures, "JWKS refresh failed");
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
            let Some(kid) = &jwk.common.key_id else { continue };
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let Some(alg) = signing_algorithm(jwk) else { continue };
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
    jwks: Option<Arc<JwksCache>>,
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
            Some(url) => Some(Arc::new(JwksCache::new(
                url.clone(),
                reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?,
                Duration::from_secs(auth.jwks_refresh_secs),
            ))),
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

    /// Fetches the identity provider's keys in the background, so the first requests do not
    /// wait for them (needs a Tokio runtime; a no-op without a JWKS URL).
    pub fn prefetch_keys(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.refresh_in_background();
        }
    }

    /// Verifies a bearer token and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if names_critical_extensions(token) {
            return Err(AuthError::Invalid(
                "the header's `crit` names extensions this service does not understand".into(),
            ));
        }
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

/// The algorithm a JWK verifies, of those accepted (RS256, ES256): its `alg`, or, since `alg`
/// is optional (RFC 7517 §4.4), the one its key type allows here.
fn signing_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let alg = match jwk.common.key_algorithm {
        Some(alg) => Algorithm::try_from(alg).ok()?,
        None => match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
            _ => return None,
        },
    };
    matches!(alg, Algorithm::RS256 | Algorithm::ES256).then_some(alg)
}

/// Whether the token's header carries `crit` (RFC 7515 §4.1.11): it names extensions a
/// verifier must understand, and this one understands none, so such a token is refused,
/// whatever it names. (jsonwebtoken ignores header fields it does not know.)
fn names_critical_extensions(token: &str) -> bool {
    use base64::Engine as _;
    let segment = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok())
        .is_some_and(|header| header.contains_key("crit"))
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
            .may_fetch(start + Duration::from_secs(secs), true)
        };
        assert!(RefreshState::default().may_fetch(start, false), "the first fetch");
        assert!(!after(0, 1) && after(0, 2), "2 s after a success");
        assert!(!after(1, 3) && after(1, 4), "4 s after one failure");
        assert!(!after(2, 7) && after(2, 8), "8 s after two");
        assert!(!after(30, 59) && after(30, 60), "never more than a minute");
        let keyless = RefreshState {
            last_attempt: Some(start),
            failures: 30,
        };
        assert!(
            keyless.may_fetch(start + Duration::from_secs(2), false),
            "every 2 s while no key was ever fetched"
        );
    }
}

//! Bearer tokens from an identity provider: ES256 and RS256 keys from a JWKS URL (served by
//! the test over real HTTP), refreshed on an unknown `kid`; `iss`, `aud`, `exp` and `nbf`
//! enforced; HS256 refused when no secret is configured.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use common::{Db, Options, TestApp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn es256_key(kid: &str) -> SigningKey {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    assert_eq!(point[0], 0x04, "uncompressed point");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    SigningKey {
        kid: kid.into(),
        algorithm: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..65]),
        }),
    }
}

/// The DER value that begins `der` (tag, length, contents) and what follows it.
fn der_value(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (tag, first) = (der[0], der[1] as usize);
    let (len, start) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        (der[2..2 + n].iter().fold(0, |len, b| len << 8 | *b as usize), 2 + n)
    };
    (tag, &der[start..start + len], &der[start + len..])
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`, which is what jsonwebtoken
/// takes for RS256: the SEQUENCE's third element, an OCTET STRING.
fn pkcs1_of(pkcs8: &[u8]) -> &[u8] {
    let (_, info, _) = der_value(pkcs8);
    let (_, _version, rest) = der_value(info);
    let (_, _algorithm, rest) = der_value(rest);
    let (tag, private_key, _) = der_value(rest);
    assert_eq!(tag, 0x04, "an OCTET STRING");
    private_key
}

fn rs256_key(kid: &str) -> SigningKey {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = pair.as_der().unwrap();
    let public = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    let unsigned = |bytes: &[u8]| bytes.iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    SigningKey {
        kid: kid.into(),
        algorithm: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(pkcs1_of(pkcs8.as_ref())),
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64.encode(unsigned(&public.n)), "e": b64.encode(unsigned(&public.e)),
        }),
    }
}

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

fn sign(key: &SigningKey, claims: Value) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn claims(sub: &str) -> Value {
    json!({
        "sub": sub, "scope": "udim:upload", "iss": "https://idp.test", "aud": "udim",
        "exp": now() + 300, "nbf": now() - 5, "iat": now(),
    })
}

/// A JWKS endpoint whose key set the test can change.
async fn jwks_server(keys: Arc<Mutex<Vec<Value>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.lock().unwrap().clone();
            async move { axum::Json(json!({ "keys": keys })) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/jwks.json")
}

async fn status_with(app: &TestApp, token: &str) -> u16 {
    app.get_json(token, "/v1/consents").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_provider_tokens_are_verified_against_the_jwks() {
    let first = es256_key("key-1");
    let rsa = rs256_key("rsa-1");
    // `alg` is optional in a JWK: the key type says what it verifies.
    let (rsa_bare, ec_bare) = (rs256_key("rsa-bare"), es256_key("ec-bare"));
    let bare = |key: &SigningKey| {
        let mut jwk = key.jwk.clone();
        jwk.as_object_mut().unwrap().remove("alg");
        jwk
    };
    // A key published for encryption verifies nothing.
    let for_encryption = es256_key("enc-1");
    let mut enc_jwk = for_encryption.jwk.clone();
    enc_jwk["use"] = json!("enc");
    let keys = Arc::new(Mutex::new(vec![
        first.jwk.clone(),
        rsa.jwk.clone(),
        bare(&rsa_bare),
        bare(&ec_bare),
        enc_jwk,
    ]));
    let url = jwks_server(keys.clone()).await;
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(move |s| {
                s.auth.jwks_url = Some(url);
                s.auth.issuer = "https://idp.test".into();
                s.auth.leeway_secs = 5;
            })),
            ..Options::default()
        },
    )
    .await;

    assert_eq!(status_with(&app, &sign(&first, claims("alice"))).await, 200);
    assert_eq!(status_with(&app, &sign(&rsa, claims("alice"))).await, 200, "RS256");
    assert_eq!(
        status_with(&app, &sign(&rsa_bare, claims("alice"))).await,
        200,
        "an RSA key without `alg`"
    );
    assert_eq!(
        status_with(&app, &sign(&ec_bare, claims("alice"))).await,
        200,
        "a P-256 key without `alg`"
    );
    assert_eq!(
        status_with(&app, &sign(&for_encryption, claims("alice"))).await,
        401,
        "a key for encryption"
    );
    let rsa_impostor = rs256_key("rsa-1");
    assert_eq!(
        status_with(&app, &sign(&rsa_impostor, claims("alice"))).await,
        401,
        "RS256 signed by another key"
    );
    let mut rsa_expired = claims("alice");
    rsa_expired["exp"] = json!(now() - 60);
    assert_eq!(status_with(&app, &sign(&rsa, rsa_expired)).await, 401, "RS256 expired");

    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 60);
    assert_eq!(status_with(&app, &sign(&first, expired)).await, 401, "expired");
    let mut early = claims("alice");
    early["nbf"] = json!(now() + 60);
    assert_eq!(status_with(&app, &sign(&first, early)).await, 401, "not yet valid");
    let mut audience = claims("alice");
    audience["aud"] = json!("someone-else");
    assert_eq!(status_with(&app, &sign(&first, audience)).await, 401, "wrong audience");
    let mut issuer = claims("alice");
    issuer["iss"] = json!("https://evil.test");
    assert_eq!(status_with(&app, &sign(&first, issuer)).await, 401, "wrong issuer");

    let impostor = es256_key("key-1");
    assert_eq!(
        status_with(&app, &sign(&impostor, claims("alice"))).await,
        401,
        "signed by another key"
    );

    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("alice"),
        &EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    assert_eq!(
        status_with(&app, &hs256).await,
        401,
        "HS256 without a configured secret"
    );
    assert!(
        udim::auth::Authenticator::from_settings(&app.settings)
            .unwrap()
            .mint("alice", &[])
            .is_err(),
        "no local minting when tokens come from an identity provider"
    );

    // Key rotation at the identity provider: an unknown kid triggers a refresh, as soon as
    // the refresh interval since the last fetch allows.
    let second = es256_key("key-2");
    keys.lock().unwrap().push(second.jwk.clone());
    let rotated = sign(&second, claims("alice"));
    let mut status = status_with(&app, &rotated).await;
    for _ in 0..60 {
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        status = status_with(&app, &rotated).await;
    }
    assert_eq!(status, 200, "rotated key accepted");
    app.stop().await;
}

/// A generated HS256 secret that is empty (a crash before this fix, a full disk) must stop
/// start-up: jsonwebtoken would otherwise verify tokens signed with the empty key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_short_secret_file_stops_start_up() {
    use std::os::unix::fs::PermissionsExt;
    for (file, contents) in [("jwt-hs256", ""), ("jwt-hs256", "short"), ("ledger-signing-key", "")] {
        let dir = tempfile::tempdir().unwrap();
        let (settings, pg) = common::settings_for(Db::Sqlite, dir.path()).await;
        assert!(pg.is_none());
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join(file), contents).unwrap();
        std::fs::set_permissions(secrets.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = match udim::startup::Application::build(settings).await {
            Ok(_) => panic!("the service started with a {} byte {file}", contents.len()),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(file) && err.contains("fewer than"), "{err}");
    }
}

/// `key` under another `kid`, one the identity provider never published.
fn with_kid(key: &SigningKey, kid: &str) -> SigningKey {
    SigningKey {
        kid: kid.into(),
        algorithm: key.algorithm,
        encoding: key.encoding.clone(),
        jwk: key.jwk.clone(),
    }
}

/// How a [`counting_jwks_server`] answers.
#[derive(Clone, Default)]
struct Idp {
    fetches: Arc<std::sync::atomic::AtomicUsize>,
    /// Answer 500 at once.
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// Answer nothing for 30 s.
    hanging: Arc<std::sync::atomic::AtomicBool>,
}

impl Idp {
    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A JWKS endpoint like [`jwks_server`] that counts its fetches and can fail or hang.
async fn counting_jwks_server(keys: Arc<Mutex<Vec<Value>>>, idp: Idp) -> String {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            idp.fetches.fetch_add(1, Ordering::SeqCst);
            let (failing, hanging) = (idp.failing.load(Ordering::SeqCst), idp.hanging.load(Ordering::SeqCst));
            let keys = keys.lock().unwrap().clone();
            async move {
                if hanging {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                if failing {
                    Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                } else {
                    Ok(axum::Json(json!({ "keys": keys })))
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/jwks.json")
}

async fn app_with_idp(url: String, refresh_secs: u64) -> TestApp {
    TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(move |s| {
                s.auth.jwks_url = Some(url);
                s.auth.issuer = "https://idp.test".into();
                s.auth.jwks_refresh_secs = refresh_secs;
            })),
            ..Options::default()
        },
    )
    .await
}

/// A key set past its refresh age while the identity provider hangs: tokens with a known
/// `kid` are answered at once from the cached set (the refresh runs in the background), and
/// tokens with an unknown one wait for that one refresh, never start another, and get 503
/// ("retry later"), not 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_keys_never_wait_on_a_hung_identity_provider() {
    let rsa = rs256_key("rsa-1");
    let idp = Idp::default();
    let url = counting_jwks_server(Arc::new(Mutex::new(vec![rsa.jwk.clone()])), idp.clone()).await;
    let app = app_with_idp(url, 1).await;
    let good = sign(&rsa, claims("alice"));
    assert_eq!(status_with(&app, &good).await, 200);

    idp.hanging.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = idp.fetches();
    for _ in 0..10 {
        let started = std::time::Instant::now();
        assert_eq!(status_with(&app, &good).await, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a known kid waited {:?}",
            started.elapsed()
        );
    }
    common::eventually("the stale set is being refreshed", || async { idp.fetches() > before }).await;
    let unknown = (0..20).map(|i| {
        app.http
            .get(format!("{}/v1/consents", app.base))
            .bearer_auth(sign(&with_kid(&rsa, &format!("new-{i}")), claims("alice")))
    });
    let statuses = common::concurrent_statuses(unknown).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(idp.fetches() - before, 1, "one refresh for all of them");
    app.stop().await;
}

/// The token attacks a public endpoint sees, each refused with 401 (403 for a missing
/// scope): `alg: none`, HS256 signed with the RS256 key's public half, a tampered signature,
/// a floods of unknown `kid`s (which must not become a flood of JWKS fetches), and an
/// identity-provider outage (cached keys keep working; refreshes back off). An `aud` array
/// that names this service is accepted, as RFC 7519 allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_refused_without_a_refresh_storm() {
    use std::sync::atomic::Ordering;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let rsa = rs256_key("rsa-1");
    let idp = Idp::default();
    let url = counting_jwks_server(Arc::new(Mutex::new(vec![rsa.jwk.clone()])), idp.clone()).await;
    let app = app_with_idp(url, 300).await;
    let good = sign(&rsa, claims("alice"));
    assert_eq!(status_with(&app, &good).await, 200);

    let unsigned = format!(
        "{}.{}.",
        b64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        b64.encode(claims("alice").to_string())
    );
    assert_eq!(status_with(&app, &unsigned).await, 401, "alg: none");

    // Well signed, but naming a critical extension nobody here understands (RFC 7515 §4.1.11).
    let critical_header =
        json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT", "crit": ["x-mandate"], "x-mandate": true});
    let signing_input = format!(
        "{}.{}",
        b64.encode(critical_header.to_string()),
        b64.encode(claims("alice").to_string())
    );
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &rsa.encoding, Algorithm::RS256).unwrap();
    let critical = format!("{signing_input}.{signature}");
    assert_eq!(
        status_with(&app, &critical).await,
        401,
        "crit names an unknown extension"
    );

    // RFC 6750 §3.1: an invalid token is named so; a missing one gets the bare challenge.
    let challenge = |token: Option<&str>| {
        let request = app.http.get(format!("{}/v1/consents", app.base));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            response.headers()["www-authenticate"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(challenge(Some(&unsigned)).await, "Bearer error=\"invalid_token\"");
    assert_eq!(challenge(None).await, "Bearer");

    // The classic confusion: HS256 with the RSA public key (as its JWK's modulus, and as the
    // JWK's JSON text) as the HMAC secret.
    for secret in [
        rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec(),
        rsa.jwk.to_string().into_bytes(),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let confused = jsonwebtoken::encode(&header, &claims("alice"), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(
            status_with(&app, &confused).await,
            401,
            "HS256 keyed with the public key"
        );
    }

    let (signed, signature) = good.rsplit_once('.').unwrap();
    let mut flipped = b64.decode(signature).unwrap();
    flipped[0] ^= 1;
    let tampered = format!("{signed}.{}", b64.encode(&flipped));
    assert_eq!(status_with(&app, &tampered).await, 401, "tampered signature");
    let mut other_claims = claims("mallory");
    other_claims["scope"] = json!("udim:upload udim:admin");
    let swapped = format!(
        "{}.{}.{signature}",
        signed.split('.').next().unwrap(),
        b64.encode(other_claims.to_string())
    );
    assert_eq!(
        status_with(&app, &swapped).await,
        401,
        "claims swapped under a valid signature"
    );

    let mut unscoped = claims("alice");
    unscoped["scope"] = json!("udim:read");
    let unscoped = sign(&rsa, unscoped);
    assert_eq!(status_with(&app, &unscoped).await, 403, "missing scope");
    let refused = app
        .http
        .get(format!("{}/v1/consents", app.base))
        .bearer_auth(&unscoped)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Bearer error=\"insufficient_scope\", scope=\"udim:upload\"",
        "the scope it lacks is named"
    );

    let mut audiences = claims("alice");
    audiences["aud"] = json!(["another-service", "udim"]);
    assert_eq!(
        status_with(&app, &sign(&rsa, audiences)).await,
        200,
        "an aud array naming us"
    );
    let mut not_ours = claims("alice");
    not_ours["aud"] = json!(["another-service", "a-third"]);
    assert_eq!(
        status_with(&app, &sign(&rsa, not_ours)).await,
        401,
        "an aud array without us"
    );

    // A flood of random kids, all at once, when a refresh is due: every one refused, and
    // the identity provider asked once however many there are (once more for every 2 s the
    // flood lasts on a loaded machine: the bound is one refresh per 2 s).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = idp.fetches();
    let flooded = std::time::Instant::now();
    let flood = (0..300).map(|i| {
        let forged = with_kid(&rsa, &format!("random-{i}"));
        app.http
            .get(format!("{}/v1/consents", app.base))
            .bearer_auth(sign(&forged, claims("alice")))
    });
    let statuses = common::concurrent_statuses(flood).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let asked = idp.fetches() - before;
    let allowed = 1 + flooded.elapsed().as_secs() as usize / 2;
    assert!(
        asked <= allowed,
        "300 unknown kids made {asked} JWKS fetches in {:?}",
        flooded.elapsed()
    );
    assert_eq!(
        status_with(&app, &good).await,
        200,
        "the known key kept working throughout"
    );

    // The identity provider goes down: the cached key still verifies, and unknown kids do not
    // make one fetch each (the retries back off).
    idp.failing.store(true, Ordering::SeqCst);
    let before = idp.fetches();
    let started = std::time::Instant::now();
    let mut unknown = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let forged = with_kid(&rsa, &format!("outage-{unknown}"));
        assert!(
            matches!(status_with(&app, &sign(&forged, claims("alice"))).await, 401 | 503),
            "refused: 401 before the first failed refresh, 503 (retry later) after"
        );
        assert_eq!(status_with(&app, &good).await, 200, "cached keys survive the outage");
        unknown += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = idp.fetches() - before;
    // A fetch at most 2 s after the last one, the next 4 s after that failure, the third 8 s
    // after the second: at most two in 7 s (without the back-off there would be four).
    assert!(
        unknown > 50 && asked <= 2,
        "{unknown} unknown kids in an outage made {asked} fetches"
    );
    app.stop().await;
}

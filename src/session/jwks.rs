//! A cached JSON Web Key Set: used for the app's identity provider (session JWTs)
//! and for the Corti realm's keys (checking granted tokens).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Mutex, RwLock};

/// How a key set is kept fresh.
#[derive(Debug, Clone, Copy)]
pub struct JwksPolicy {
    /// Keys are refreshed behind a lookup once this old.
    pub refresh_after: Duration,
    /// An unknown `kid` triggers a refetch at most this often.
    pub min_refetch_interval: Duration,
    /// When the JWKS cannot be fetched, the last good keys are used this long.
    pub max_stale: Duration,
}

impl Default for JwksPolicy {
    fn default() -> Self {
        Self {
            refresh_after: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(3),
            max_stale: Duration::from_secs(3600),
        }
    }
}

/// A verification key with the algorithms it may be used with.
#[derive(Clone)]
pub struct VerifyingKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("no key with this kid")]
    UnknownKid,
    #[error("key set unavailable: {0}")]
    Unavailable(String),
}

struct Cached {
    keys: Vec<(Option<String>, VerifyingKey)>,
    fetched_at: Instant,
}

/// A JWKS fetched over HTTP and cached.
pub struct JwksCache {
    url: String,
    http: reqwest::Client,
    policy: JwksPolicy,
    cached: RwLock<Option<Cached>>,
    last_attempt: Mutex<Option<Instant>>,
    /// 1 while the last refresh failed and the last good keys are in use.
    stale: Gauge,
    /// Whether a fetch ever gave usable keys: until then nothing can be verified.
    ever_loaded: AtomicBool,
}

impl JwksCache {
    pub fn new(url: String, http: reqwest::Client, policy: JwksPolicy) -> Arc<Self> {
        Arc::new(Self {
            url,
            http,
            policy,
            cached: RwLock::new(None),
            last_attempt: Mutex::new(None),
            stale: Gauge::default(),
            ever_loaded: AtomicBool::new(false),
        })
    }

    /// Whether some fetch has ever given usable keys (a JWKS URL that answers 404 from
    /// the start never does: the service is then not ready).
    pub fn ever_loaded(&self) -> bool {
        self.ever_loaded.load(Ordering::Acquire)
    }

    /// The URL the keys are fetched from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the key set now, whatever its age and however recently it was fetched
    /// (SIGHUP, start-up, `check-config --probe`); returns how many usable keys it has.
    pub async fn refresh_now(&self) -> Result<usize, JwksError> {
        let mut last = self.last_attempt.lock().await;
        *last = None;
        self.refetch_locked(&mut last).await?;
        let guard = self.cached.read().await;
        let count = guard.as_ref().map_or(0, |c| c.keys.len());
        if count == 0 {
            return Err(JwksError::Unavailable(
                "the key set has no usable key".into(),
            ));
        }
        Ok(count)
    }

    /// The "serving stale keys" flag, for `/metrics`.
    pub fn stale_gauge(&self) -> Gauge {
        self.stale.clone()
    }

    /// The key for `kid` (or the only key when the token names none).
    pub async fn key(self: &Arc<Self>, kid: Option<&str>) -> Result<VerifyingKey, JwksError> {
        let (found, fresh) = self.lookup(kid).await;
        match (found, fresh) {
            (Some(key), true) => return Ok(key),
            (Some(key), false) => {
                // Known but due for a refresh: answer now, refresh behind the request,
                // so a slow identity provider never holds up a session check.
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    if let Ok(mut last) = this.last_attempt.try_lock() {
                        let _ = this.refetch_locked(&mut last).await;
                    }
                });
                return Ok(key);
            }
            (None, _) => {}
        }
        // Unknown kid or empty cache: refetch (rate-limited), then look again.
        let refetch = self.refetch().await;
        match self.lookup(kid).await {
            (Some(key), _) => Ok(key),
            // "Unknown kid" is only an answer when there are keys to know it by: an
            // identity provider that is down must not look like a signed-out user.
            (None, _) if !self.has_usable_keys().await => Err(no_keys(refetch)),
            (None, _) => Err(JwksError::UnknownKid),
        }
    }

    /// Makes sure usable keys are cached, fetching them (rate-limited) when none are;
    /// so a caller can refuse before doing work that needs a key to finish.
    pub async fn ensure_keys(&self) -> Result<(), JwksError> {
        if self.has_usable_keys().await {
            return Ok(());
        }
        let refetch = self.refetch().await;
        if self.has_usable_keys().await {
            Ok(())
        } else {
            Err(no_keys(refetch))
        }
    }

    /// Whether some key, not older than the grace period, is cached.
    async fn has_usable_keys(&self) -> bool {
        let guard = self.cached.read().await;
        guard
            .as_ref()
            .is_some_and(|c| !c.keys.is_empty() && c.fetched_at.elapsed() < self.policy.max_stale)
    }

    /// Returns the key if cached and usable, and whether the cache is still fresh.
    async fn lookup(&self, kid: Option<&str>) -> (Option<VerifyingKey>, bool) {
        let guard = self.cached.read().await;
        let Some(cached) = guard.as_ref() else {
            return (None, false);
        };
        let age = cached.fetched_at.elapsed();
        if age >= self.policy.max_stale {
            return (None, false);
        }
        let key = match kid {
            Some(kid) => cached
                .keys
                .iter()
                .find(|(k, _)| k.as_deref() == Some(kid))
                .map(|(_, v)| v.clone()),
            None if cached.keys.len() == 1 => cached.keys.first().map(|(_, v)| v.clone()),
            None => None,
        };
        (key, age < self.policy.refresh_after)
    }

    async fn refetch(&self) -> Result<(), JwksError> {
        let mut last = self.last_attempt.lock().await;
        self.refetch_locked(&mut last).await
    }

    /// Refetches unless one was tried within `min_refetch_interval`.
    async fn refetch_locked(&self, last: &mut Option<Instant>) -> Result<(), JwksError> {
        if let Some(at) = *last {
            if at.elapsed() < self.policy.min_refetch_interval {
                return Ok(());
            }
        }
        *last = Some(Instant::now());
        let set = self.fetch().await;
        match set {
            Ok(keys) => {
                if !keys.is_empty() {
                    self.ever_loaded.store(true, Ordering::Release);
                }
                *self.cached.write().await = Some(Cached {
                    keys,
                    fetched_at: Instant::now(),
                });
                self.stale.set(0);
                Ok(())
            }
            Err(e) => {
                if self.ever_loaded() {
                    tracing::warn!(jwks_url = %crate::config::redact_url(&self.url), error = %e, "could not refresh JWKS; keeping the last good keys");
                } else {
                    tracing::error!(jwks_url = %crate::config::redact_url(&self.url), error = %e, "could not fetch JWKS; no key has been loaded yet, so no token it signs can be checked");
                }
                self.stale.set(1);
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<(Option<String>, VerifyingKey)>, JwksError> {
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| JwksError::Unavailable(without_url(e)))?;
        if !response.status().is_success() {
            return Err(JwksError::Unavailable(format!(
                "status {}",
                response.status().as_u16()
            )));
        }
        let body = read_capped(response, MAX_JWKS_BYTES).await?;
        Ok(parse_key_set(&body, &self.url)?
            .iter()
            .filter_map(verifying_key)
            .collect())
    }
}

/// Why no usable key exists after a refetch attempt.
fn no_keys(refetch: Result<(), JwksError>) -> JwksError {
    match refetch {
        Err(e) => e,
        Ok(()) => JwksError::Unavailable(
            "no usable key (the last fetch failed or had none; refetch paused)".into(),
        ),
    }
}

/// Largest JWKS body read; real sets are a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, JwksError> {
    let too_large = || JwksError::Unavailable(format!("body is larger than {max} bytes"));
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| JwksError::Unavailable(without_url(e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The keys of a JWKS, one by one: a key of a type or curve this service cannot use
/// (an Ed448 key, a future `kty`) is skipped and logged, so it never takes the other
/// keys down with it at the next rotation.
fn parse_key_set(body: &[u8], url: &str) -> Result<Vec<Jwk>, JwksError> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(body)
        .map_err(|_| JwksError::Unavailable("body is not a JWKS".into()))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for raw in set.keys {
        match serde_json::from_value::<Jwk>(raw.clone()) {
            Ok(jwk) => keys.push(jwk),
            Err(e) => {
                let field = |name: &str| {
                    raw.get(name)
                        .and_then(|v| v.as_str())
                        .unwrap_or("-")
                        .chars()
                        .take(64)
                        .collect::<String>()
                };
                tracing::warn!(
                    jwks_url = %crate::config::redact_url(url),
                    kid = %field("kid"),
                    kty = %field("kty"),
                    crv = %field("crv"),
                    error = %e,
                    "skipping a JWKS key this service cannot use"
                );
            }
        }
    }
    Ok(keys)
}

fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

/// Which algorithms a JWK may verify: from its own `alg` when given, else its key type.
/// Symmetric (`oct`) keys in a public JWKS are ignored: they would let anyone who
/// can read the set forge tokens.
fn verifying_key(jwk: &Jwk) -> Option<(Option<String>, VerifyingKey)> {
    use jsonwebtoken::jwk::AlgorithmParameters;
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    if let Some(usage) = &jwk.common.public_key_use {
        if *usage != jsonwebtoken::jwk::PublicKeyUse::Signature {
            return None;
        }
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let family_algs = key.family().algorithms().to_vec();
    let algorithms = match jwk.common.key_algorithm.map(|a| a.to_string()) {
        Some(named) => {
            let alg: Algorithm = named.parse().ok()?;
            if !family_algs.contains(&alg) {
                return None;
            }
            vec![alg]
        }
        None => family_algs,
    };
    Some((jwk.common.key_id.clone(), VerifyingKey { key, algorithms }))
}

/// SIGHUP fetches the key set at once, so a key the identity provider withdrew stops
/// being accepted without waiting for the refresh interval.
pub struct RefetchOnReload(pub Arc<JwksCache>);

impl crate::reload::Reloadable for RefetchOnReload {
    fn name(&self) -> String {
        "SESSION_JWKS_URL".into()
    }

    fn paths(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    /// Starts the fetch and returns: its outcome is logged by the fetch itself.
    fn reload(&self) -> Result<(), String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "no runtime to fetch the key set on".to_owned())?;
        let cache = self.0.clone();
        runtime.spawn(async move {
            if let Ok(keys) = cache.refresh_now().await {
                tracing::info!(jwks_url = %cache.url(), keys, "session keys fetched again");
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn jwk(kid: &str) -> serde_json::Value {
        // A syntactically valid RSA public key (n is arbitrary but well-formed).
        json!({"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
               "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
               "e": "AQAB"})
    }

    fn policy(refresh_after: Duration, max_stale: Duration) -> JwksPolicy {
        JwksPolicy {
            refresh_after,
            min_refetch_interval: Duration::ZERO,
            max_stale,
        }
    }

    #[tokio::test]
    async fn keeps_the_last_good_keys_through_an_outage_for_a_bounded_time() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [jwk("k1")]})))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let cache = JwksCache::new(
            server.uri(),
            reqwest::Client::new(),
            policy(Duration::ZERO, Duration::from_millis(400)),
        );

        assert!(cache.key(Some("k1")).await.is_ok());
        // Stale and the IdP is down: the last good key still verifies...
        assert!(cache.key(Some("k1")).await.is_ok());
        // ...until it is older than the bound.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(
            cache.key(Some("k1")).await,
            Err(JwksError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn the_stale_gauge_is_up_while_a_refresh_fails_and_down_after_one_succeeds() {
        let server = MockServer::start().await;
        for status in [200, 503, 200] {
            Mock::given(method("GET"))
                .respond_with(
                    ResponseTemplate::new(status).set_body_json(json!({"keys": [jwk("k1")]})),
                )
                .up_to_n_times(1)
                .mount(&server)
                .await;
        }
        let cache = JwksCache::new(
            server.uri(),
            reqwest::Client::new(),
            policy(Duration::from_secs(300), Duration::from_secs(3600)),
        );
        let stale = cache.stale_gauge();

        assert!(cache.key(Some("k1")).await.is_ok());
        assert_eq!(stale.get(), 0);
        // An unknown kid refetches; the identity provider is down.
        assert!(cache.key(Some("k2")).await.is_err());
        assert_eq!(stale.get(), 1, "serving the last good keys");
        assert!(cache.key(Some("k2")).await.is_err());
        assert_eq!(stale.get(), 0, "refreshed again");
    }

    #[tokio::test]
    async fn without_usable_keys_every_lookup_is_unavailable_even_when_a_refetch_is_paused() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let cache = JwksCache::new(
            server.uri(),
            reqwest::Client::new(),
            JwksPolicy {
                min_refetch_interval: Duration::from_secs(60),
                ..JwksPolicy::default()
            },
        );
        for _ in 0..3 {
            assert!(matches!(
                cache.key(Some("k1")).await,
                Err(JwksError::Unavailable(_))
            ));
            assert!(cache.ensure_keys().await.is_err());
        }
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn keys_past_the_grace_period_are_unavailable_not_unknown() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [jwk("k1")]})))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let cache = JwksCache::new(
            server.uri(),
            reqwest::Client::new(),
            JwksPolicy {
                refresh_after: Duration::ZERO,
                min_refetch_interval: Duration::from_millis(300),
                max_stale: Duration::from_millis(200),
            },
        );
        assert!(cache.key(Some("k1")).await.is_ok());
        assert!(cache.ensure_keys().await.is_ok());
        tokio::time::sleep(Duration::from_millis(350)).await;
        // The first lookup refetches and fails; the next ones fall in the pause.
        for kid in [Some("k1"), Some("k2"), None] {
            assert!(
                matches!(cache.key(kid).await, Err(JwksError::Unavailable(_))),
                "{kid:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_key_set_without_one_usable_key_is_unavailable() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": []})))
            .mount(&server)
            .await;
        let cache = JwksCache::new(server.uri(), reqwest::Client::new(), JwksPolicy::default());
        assert!(matches!(
            cache.key(Some("k1")).await,
            Err(JwksError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn ignores_symmetric_keys_in_a_public_key_set() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [
                {"kid": "oct", "kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}
            ]})))
            .mount(&server)
            .await;
        let cache = JwksCache::new(
            server.uri(),
            reqwest::Client::new(),
            policy(Duration::from_secs(60), Duration::from_secs(60)),
        );
        // Not used: with no other key, the set has no usable key at all.
        assert!(matches!(
            cache.key(Some("oct")).await,
            Err(JwksError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn an_unusable_key_is_skipped_and_the_others_still_verify() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [
                {"kid": "ed448", "kty": "OKP", "crv": "Ed448", "x": "X9dEm1m0Yf0s54fsYWrUah2hNCSFpw4fig6nXYDpZ3jt8SR2m0bHBhvWeD3x5Q9s0foavq_oJWGA", "use": "sig"},
                {"kid": "future", "kty": "PQC", "alg": "ML-DSA-65", "pub": "AAAA"},
                {"kid": "no-kty"},
                "not even an object",
                jwk("k1")
            ]})))
            .mount(&server)
            .await;
        let cache = JwksCache::new(
            server.uri(),
            reqwest::Client::new(),
            policy(Duration::from_secs(60), Duration::from_secs(60)),
        );
        assert!(cache.key(Some("k1")).await.is_ok());
        assert!(matches!(
            cache.key(Some("ed448")).await,
            Err(JwksError::UnknownKid)
        ));
    }

    #[tokio::test]
    async fn a_jwks_body_over_the_cap_is_refused() {
        let server = MockServer::start().await;
        let pad = "x".repeat(MAX_JWKS_BYTES);
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"keys": [jwk("k1")], "pad": pad})),
            )
            .mount(&server)
            .await;
        let cache = JwksCache::new(
            server.uri(),
            reqwest::Client::new(),
            policy(Duration::from_secs(60), Duration::from_secs(60)),
        );
        assert!(matches!(
            cache.key(Some("k1")).await,
            Err(JwksError::Unavailable(_))
        ));
    }
}

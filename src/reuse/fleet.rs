//! Reuse and single-flight shared by every replica through Redis.
//!
//! A live token is stored in Redis encrypted with XChaCha20-Poly1305 under a key derived
//! from `TOKEN_CACHE_KEY`, bound (as associated data) to the Redis key it is stored
//! under, with a TTL of its remaining life. Redis keys are keyed hashes of (tenant,
//! subject, scope), so nothing readable (no token, no subject) is ever in Redis.
//!
//! Each entry is also bound to the subject's deny generation (and a fleet-wide one for
//! `*`), counters in Redis that a deny moves: an entry copied before a deny and written
//! back after its lift no longer opens. (Someone who can write Redis could also put the
//! old counter back; the counters only ever grow, so that takes a deliberate rollback
//! of two keys, and a replayed token still dies with its own short life.)
//!
//! Single-flight across replicas: the replica that wins a short `SET NX PX` lock calls
//! upstream and stores the token; the others poll for it for a bounded time. A lock
//! whose owner died expires and a waiter takes over.
//!
//! Redis is a dependency the service can live without: when a call fails or is slow,
//! reuse falls back to this replica's own cache and single-flight (logged once, and
//! the `token_vendor_token_cache_redis_fallback` gauge goes to 1), a background probe
//! pings Redis until it answers, and reuse returns to the fleet by itself.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use redis::aio::ConnectionManager;
use redis::Script;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;

use super::{FetchError, ReuseKey};
use crate::corti::GrantedToken;
use crate::corti::Tenant;
use crate::metrics::Metrics;
use crate::redis_link::{self, RedisHealth, RedisUser, CALL_TIMEOUT};
use crate::scope::RequestedScope;
use crate::session::Subject;

/// First pause before probing a Redis that failed; it doubles after each failed probe...
const PROBE_FIRST: Duration = Duration::from_millis(500);
/// ...up to this.
const PROBE_MAX: Duration = Duration::from_secs(5);
/// How often a replica waiting on another's upstream call looks for its token.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// The lock outlives the longest upstream call by this much.
const LOCK_SLACK: Duration = Duration::from_secs(1);
/// Prefix of every key this module writes; `v1` names the value format.
const KEY_PREFIX: &str = "token-vendor:tok:v1";
/// How long a deny generation outlives its last change: far past any token's life, so
/// an entry sealed before the counter existed has expired by the time it goes.
const GENERATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const NONCE_LEN: usize = 24;

/// Deletes the lock only if this replica still holds it.
const UNLOCK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The associated data an entry is sealed with: the Redis key it is stored under and
/// the deny generations (of its subject, of everyone) when it was stored. An entry
/// written anywhere else, or before a deny, does not open.
fn bound_to(token_key: &str, subject: Option<u64>, everyone: Option<u64>) -> String {
    format!(
        "{token_key}|gen:{}|all:{}",
        subject.unwrap_or(0),
        everyone.unwrap_or(0)
    )
}

/// Why the fleet cache could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FleetSetupError(String);

/// A Redis failure; the caller falls back to this replica alone.
struct Unavailable;

/// The Redis side of token reuse.
pub struct FleetCache {
    conn: ConnectionManager,
    cipher: XChaCha20Poly1305,
    /// Keys the HMAC that names a (tenant, subject, scope) in Redis.
    names: [u8; 32],
    lock_ttl: Duration,
    unlock: Script,
    health: RedisHealth,
    metrics: Arc<Metrics>,
    weak: Weak<FleetCache>,
}

/// The Redis keys of one (tenant, subject, scope).
struct Names {
    token: String,
    /// Derived with the key from the token's name, so nobody without the key can
    /// name (and plant) it.
    lock: String,
    /// The (tenant, subject)'s deny generation.
    generation: String,
}

/// The fleet-wide deny generation, moved by `*`.
fn everyone_generation() -> String {
    format!("{KEY_PREFIX}:gen:everyone")
}

/// What is encrypted; never stored in the clear.
#[derive(Serialize, Deserialize)]
struct Sealed {
    #[serde(rename = "t")]
    access_token: String,
    #[serde(rename = "e")]
    expires_at: i64,
    #[serde(rename = "s")]
    scope: String,
}

impl FleetCache {
    /// Prepares a connection that is opened on first use and re-opened after failures,
    /// so the service starts even while Redis is down. `longest_fetch` bounds one
    /// upstream call; the lock lives a little longer.
    pub fn connect(
        url: &str,
        key: &SecretString,
        longest_fetch: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, FleetSetupError> {
        let conn = redis_link::lazy_connection(url).map_err(FleetSetupError)?;
        let cipher =
            XChaCha20Poly1305::new(&derive(key, b"token-vendor fleet cache: encryption").into());
        let names = derive(key, b"token-vendor fleet cache: key names");
        Ok(Arc::new_cyclic(|weak| Self {
            conn,
            cipher,
            names,
            lock_ttl: longest_fetch + LOCK_SLACK,
            unlock: Script::new(UNLOCK_LUA),
            health: RedisHealth::new(PROBE_FIRST, PROBE_MAX),
            metrics,
            weak: weak.clone(),
        }))
    }

    /// Whether the last call to Redis worked.
    pub fn healthy(&self) -> bool {
        self.health.healthy()
    }

    /// A live token any replica stored for `key`, else the result of `fetch` run by
    /// exactly one replica at a time. The flag says whether `fetch` ran here.
    /// Without Redis, `fetch` runs here at once.
    pub async fn get_or_fetch<F>(
        &self,
        key: &ReuseKey,
        min_ttl: Duration,
        fetch: F,
    ) -> Result<(GrantedToken, bool), FetchError>
    where
        F: Future<Output = Result<GrantedToken, FetchError>>,
    {
        let names = self.names(key);
        let give_up_at = Instant::now() + self.lock_ttl + CALL_TIMEOUT;
        let held = loop {
            if !self.healthy() {
                break None;
            }
            match self.lookup(&names, min_ttl).await {
                Ok(Some(token)) => return Ok((token, false)),
                Ok(None) => {}
                Err(Unavailable) => break None,
            }
            match self.try_lock(&names).await {
                Ok(Some(lock)) => {
                    // The winner before us may have stored its token and let go between
                    // our look and our lock.
                    if let Ok(Some(token)) = self.lookup(&names, min_ttl).await {
                        self.release(&names, &lock).await;
                        return Ok((token, false));
                    }
                    break Some(lock);
                }
                Ok(None) => {}
                Err(Unavailable) => break None,
            }
            if Instant::now() >= give_up_at {
                tracing::warn!("token cache: another replica's token request did not finish in time; requesting one here");
                break None;
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        let result = fetch.await;
        if let Some(lock) = held {
            if let Ok(token) = &result {
                self.store(&names, token).await;
            }
            self.release(&names, &lock).await;
        }
        result.map(|token| (token, true))
    }

    /// Deletes every token of `subject` at `tenant` from Redis, for each scope set.
    /// Best effort: without Redis, a stored token still expires with its own life.
    pub async fn forget(&self, subject: &Subject, tenant: &Tenant) {
        let generation = self.subject_generation(subject, tenant);
        self.bump(&generation).await;
        let keys: Vec<String> = RequestedScope::every()
            .map(|scope| {
                self.names(&ReuseKey {
                    subject: subject.clone(),
                    scope,
                    tenant: tenant.clone(),
                })
                .token
            })
            .collect();
        let mut conn = self.conn.clone();
        let _ = self
            .call(redis::cmd("DEL").arg(keys).query_async::<i64>(&mut conn))
            .await;
    }

    /// Deletes every token this service stored in Redis (`*` on the deny list), in
    /// batches found with `SCAN`. Best effort, as [`FleetCache::forget`].
    pub async fn forget_everyone(&self) {
        self.bump(&everyone_generation()).await;
        let pattern = format!("{KEY_PREFIX}:token:*");
        let mut cursor: u64 = 0;
        loop {
            let mut conn = self.conn.clone();
            let page: Result<(u64, Vec<String>), Unavailable> = self
                .call(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut conn),
                )
                .await;
            let Ok((next, keys)) = page else { return };
            if !keys.is_empty() {
                let mut conn = self.conn.clone();
                let _ = self
                    .call(redis::cmd("DEL").arg(keys).query_async::<i64>(&mut conn))
                    .await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }

    /// A keyed hash of `parts`, each length-prefixed so no two different lists give
    /// the same input.
    fn keyed_id(&self, parts: &[&str]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.names)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    fn subject_generation(&self, subject: &Subject, tenant: &Tenant) -> String {
        let id = self.keyed_id(&["generation", tenant.as_str(), subject.as_str()]);
        format!("{KEY_PREFIX}:gen:{id}")
    }

    fn names(&self, key: &ReuseKey) -> Names {
        let id = self.keyed_id(&[
            key.tenant.as_str(),
            key.subject.as_str(),
            &key.scope.to_oauth_string(),
        ]);
        let lock = self.keyed_id(&["lock", &id]);
        Names {
            token: format!("{KEY_PREFIX}:token:{id}"),
            lock: format!("{KEY_PREFIX}:lock:{lock}"),
            generation: self.subject_generation(&key.subject, &key.tenant),
        }
    }

    /// Moves a deny generation (best effort, as the deletes that follow).
    async fn bump(&self, generation: &str) {
        let mut conn = self.conn.clone();
        let _ = self
            .call(
                redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg(generation)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(generation)
                    .arg(millis(GENERATION_TTL))
                    .ignore()
                    .query_async::<()>(&mut conn),
            )
            .await;
    }

    /// What an entry is bound to besides its key: both deny generations now.
    async fn binding(&self, names: &Names) -> Result<String, Unavailable> {
        let mut conn = self.conn.clone();
        let (subject, everyone): (Option<u64>, Option<u64>) = self
            .call(
                redis::cmd("MGET")
                    .arg(&names.generation)
                    .arg(everyone_generation())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(bound_to(&names.token, subject, everyone))
    }

    async fn lookup(
        &self,
        names: &Names,
        min_ttl: Duration,
    ) -> Result<Option<GrantedToken>, Unavailable> {
        let mut conn = self.conn.clone();
        let (sealed, subject, everyone): (Option<Vec<u8>>, Option<u64>, Option<u64>) = self
            .call(
                redis::cmd("MGET")
                    .arg(&names.token)
                    .arg(&names.generation)
                    .arg(everyone_generation())
                    .query_async(&mut conn),
            )
            .await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let binding = bound_to(&names.token, subject, everyone);
        let Some(token) = self.open(&binding, &sealed) else {
            // Written with another key, before a deny, or altered: never trusted, and
            // replaced.
            tracing::warn!(
                "token cache: a cached token did not open with TOKEN_CACHE_KEY and the current deny generation; ignoring it"
            );
            return Ok(None);
        };
        Ok((token.expires_at - OffsetDateTime::now_utc() >= min_ttl).then_some(token))
    }

    async fn try_lock(&self, names: &Names) -> Result<Option<String>, Unavailable> {
        let owner = hex::encode(rand::random::<[u8; 16]>());
        let mut conn = self.conn.clone();
        let set: Option<String> = self
            .call(
                redis::cmd("SET")
                    .arg(&names.lock)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(self.lock_ttl))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.map(|_| owner))
    }

    async fn release(&self, names: &Names, owner: &str) {
        let mut conn = self.conn.clone();
        let mut call = self.unlock.key(&names.lock);
        call.arg(owner);
        // A lock left behind expires by itself.
        let _ = self.call(call.invoke_async::<i64>(&mut conn)).await;
    }

    async fn store(&self, names: &Names, token: &GrantedToken) {
        let left = token.expires_at - OffsetDateTime::now_utc();
        let Ok(left) = Duration::try_from(left) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        let Ok(binding) = self.binding(names).await else {
            return;
        };
        let Some(sealed) = self.seal(&binding, token) else {
            return;
        };
        let mut conn = self.conn.clone();
        let _ = self
            .call(
                redis::cmd("SET")
                    .arg(&names.token)
                    .arg(sealed)
                    .arg("PX")
                    .arg(millis(left))
                    .query_async::<()>(&mut conn),
            )
            .await;
    }

    /// `binding`: the associated data, from [`bound_to`].
    fn seal(&self, binding: &str, token: &GrantedToken) -> Option<Vec<u8>> {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(&Sealed {
                access_token: token.access_token.expose_secret().to_owned(),
                expires_at: token.expires_at.unix_timestamp(),
                scope: token.scope.clone(),
            })
            .ok()?,
        );
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: binding.as_bytes(),
                },
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Some(out)
    }

    fn open(&self, binding: &str, sealed: &[u8]) -> Option<GrantedToken> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let plain = zeroize::Zeroizing::new(
            self.cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: binding.as_bytes(),
                    },
                )
                .ok()?,
        );
        let sealed: Sealed = serde_json::from_slice(&plain).ok()?;
        Some(GrantedToken {
            access_token: SecretString::from(sealed.access_token),
            expires_at: OffsetDateTime::from_unix_timestamp(sealed.expires_at).ok()?,
            scope: sealed.scope,
        })
    }

    /// One Redis call within [`CALL_TIMEOUT`]; a failure switches to per-replica reuse.
    async fn call<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        let result = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()));
        result.map_err(|reason| {
            self.fall_back(&reason);
            Unavailable
        })
    }

    fn fall_back(&self, reason: &str) {
        redis_link::fall_back(self, &self.weak, reason);
    }
}

impl RedisUser for FleetCache {
    fn health(&self) -> &RedisHealth {
        &self.health
    }

    /// A write that expires at once, as the cache writes: a Redis that answers PING but
    /// refuses writes (out of memory, a read-only replica) is not back.
    async fn probe(&self) -> bool {
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(format!("{KEY_PREFIX}:probe"))
            .arg(1)
            .arg("PX")
            .arg(1);
        matches!(
            tokio::time::timeout(CALL_TIMEOUT, set.query_async::<()>(&mut conn)).await,
            Ok(Ok(()))
        )
    }

    fn report(&self, healthy: bool, reason: &str) {
        if healthy {
            tracing::info!(
                "token cache: Redis is reachable again; tokens are shared by the fleet again"
            );
        } else {
            tracing::warn!(
                error = %reason,
                "token cache: Redis is unreachable; reusing tokens per replica until it is back"
            );
        }
        self.metrics.token_cache_fallback(!healthy);
    }
}

/// A 32-byte key for one purpose, from `TOKEN_CACHE_KEY` (any length ≥ 32).
fn derive(key: &SecretString, purpose: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(purpose);
    mac.finalize().into_bytes().into()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(secret: &str) -> Arc<FleetCache> {
        FleetCache::connect(
            "redis://127.0.0.1:1",
            &SecretString::from(secret.to_owned()),
            Duration::from_secs(1),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    fn key(subject: &str) -> ReuseKey {
        ReuseKey {
            subject: Subject::parse(subject).unwrap(),
            scope: RequestedScope::parse("transcribe").unwrap(),
            tenant: Tenant::parse("base").unwrap(),
        }
    }

    fn token() -> GrantedToken {
        GrantedToken {
            access_token: SecretString::from("eyJfake.token.value".to_owned()),
            expires_at: OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap(),
            scope: "openid transcribe".into(),
        }
    }

    const KEY: &str = "fake-token-cache-key-0123456789abcdef";

    #[tokio::test]
    async fn a_sealed_token_is_unreadable_and_opens_only_under_its_own_name_and_key() {
        let c = cache(KEY);
        let alice = c.names(&key("alice"));
        let bob = c.names(&key("bob"));
        let sealed = c.seal(&alice.token, &token()).unwrap();

        let haystack = String::from_utf8_lossy(&sealed);
        assert!(!haystack.contains("eyJfake"));
        assert!(!alice.token.contains("alice"));
        let opened = c.open(&alice.token, &sealed).unwrap();
        assert_eq!(opened.access_token.expose_secret(), "eyJfake.token.value");
        assert_eq!(opened.expires_at, token().expires_at);
        assert!(c.open(&bob.token, &sealed).is_none(), "bound to its key");
        let other = cache("fake-another-token-cache-key-0123456789");
        assert!(
            other.open(&alice.token, &sealed).is_none(),
            "needs the same key"
        );
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(c.open(&alice.token, &altered).is_none(), "altered");

        let before = bound_to(&alice.token, Some(1), None);
        let sealed = c.seal(&before, &token()).unwrap();
        assert!(c.open(&before, &sealed).is_some());
        assert!(
            c.open(&bound_to(&alice.token, Some(2), None), &sealed)
                .is_none(),
            "a deny of the subject moved its generation"
        );
        assert!(
            c.open(&bound_to(&alice.token, Some(1), Some(1)), &sealed)
                .is_none(),
            "a deny of everyone moved the fleet's generation"
        );
        let id = alice.token.rsplit(':').next().unwrap();
        assert!(
            !alice.lock.contains(id),
            "the lock is not named after the token"
        );
    }

    #[tokio::test]
    async fn without_redis_the_fetch_runs_here_and_the_fallback_is_reported() {
        let c = cache(KEY);
        let (t, fetched_here) = c
            .get_or_fetch(&key("alice"), Duration::from_secs(60), async {
                Ok(token())
            })
            .await
            .unwrap();
        assert!(fetched_here);
        assert_eq!(t.access_token.expose_secret(), "eyJfake.token.value");
        assert!(!c.healthy());
        assert!(c
            .metrics
            .render()
            .contains("token_vendor_token_cache_redis_fallback 1"));
    }
}

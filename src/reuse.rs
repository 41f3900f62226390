//! Per-user token reuse and single-flight.
//!
//! A token granted to a user for a scope is handed back to the same user for the same
//! scope and tenant while it still has at least `TOKEN_REUSE_MIN_TTL` to live, so a page
//! that asks again (or many tabs at once) cost no upstream call. Concurrent identical
//! requests share one upstream call: the first starts it in a task of its own, the
//! others wait on it, and every one of them gets its token or its error; the call is
//! not cancelled when the requester goes away, and a lost task still answers everyone.
//!
//! Tokens are keyed by the exact subject, never by a hash, so one user's token can
//! never reach another.
//!
//! With a [`FleetCache`] (Redis and `TOKEN_CACHE_KEY`), this replica's one call for a
//! key first looks in Redis and takes part in the fleet's single-flight ([`fleet`]), so
//! replicas behind a load balancer make one upstream call between them.

pub mod fleet;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::background::{lock, spawn_while_alive};
use crate::corti::Tenant;
use crate::corti::{GrantedToken, UpstreamError};
use crate::scope::RequestedScope;
use crate::session::Subject;

pub use self::fleet::FleetCache;

/// Most live tokens held at once (a Corti token is about 1.5 KiB).
pub const MAX_LIVE_TOKENS: usize = 20_000;
/// How often expired tokens are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Whose token, for what.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReuseKey {
    pub subject: Subject,
    pub scope: RequestedScope,
    pub tenant: Tenant,
}

/// Why a shared upstream call produced no token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the service's budget of upstream calls is spent")]
    Budget { retry_after: Duration },
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This request made the upstream call.
    Fetched,
    /// This request waited on an identical request's call.
    Joined,
    /// A live token held from an earlier call.
    Cached,
    /// A live token another replica fetched, read from Redis.
    Fleet,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fetched => "fetched",
            Source::Joined => "joined",
            Source::Cached => "cached",
            Source::Fleet => "fleet",
        }
    }
}

/// The token, and whether it came from Redis (another replica's call) rather than
/// from this replica's own upstream call.
type Flight = Shared<BoxFuture<'static, Result<(GrantedToken, bool), FetchError>>>;

#[derive(Default)]
struct State {
    live: HashMap<ReuseKey, GrantedToken>,
    /// Calls in flight, each with an id so a finished call removes only itself.
    flights: HashMap<ReuseKey, (u64, Flight)>,
}

static NEXT_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// The live-token cache and the in-flight calls.
pub struct TokenReuse {
    /// Zero turns caching off; single-flight stays on.
    min_ttl: Duration,
    state: Arc<Mutex<State>>,
    fleet: Option<Arc<FleetCache>>,
}

impl TokenReuse {
    /// Inside a Tokio runtime, also sweeps expired tokens out of memory periodically.
    pub fn new(min_ttl: Duration) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        if !min_ttl.is_zero() {
            let weak = Arc::downgrade(&state);
            spawn_while_alive(SWEEP_EVERY, move || {
                let state = weak.upgrade()?;
                let now = OffsetDateTime::now_utc();
                lock(&state)
                    .live
                    .retain(|_, t| t.expires_at - now >= min_ttl);
                Some(std::future::ready(()))
            });
        }
        Self {
            min_ttl,
            state,
            fleet: None,
        }
    }

    /// Shares reuse and single-flight with every replica through Redis. Without
    /// reuse (`TOKEN_REUSE_MIN_TTL=0`) there is nothing to share.
    pub fn with_fleet(mut self, fleet: Option<Arc<FleetCache>>) -> Self {
        self.fleet = fleet.filter(|_| !self.min_ttl.is_zero());
        self
    }

    /// A live token for `key`, the result of an identical call in flight, or the result
    /// of the future `fetch` makes, run once in its own task for every concurrent caller.
    /// `fetch` is called only when a call starts: the upstream call's future is large,
    /// and a reuse should neither build nor move it.
    #[tracing::instrument(name = "reuse.lookup", skip_all, fields(source = tracing::field::Empty))]
    pub async fn get_or_fetch<M, F>(
        &self,
        key: ReuseKey,
        fetch: M,
    ) -> Result<(GrantedToken, Source), FetchError>
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<GrantedToken, FetchError>> + Send + 'static,
    {
        let (flight, source) = {
            let mut state = lock(&self.state);
            if let Some(token) = state.live.get(&key) {
                if self.still_good(token, OffsetDateTime::now_utc()) {
                    tracing::Span::current().record("source", Source::Cached.as_str());
                    return Ok((token.clone(), Source::Cached));
                }
                state.live.remove(&key);
            }
            match state.flights.get(&key) {
                Some((_, flight)) => (flight.clone(), Source::Joined),
                None => {
                    let id = NEXT_FLIGHT.fetch_add(1, Ordering::Relaxed);
                    let flight = self.start(id, key.clone(), fetch());
                    state.flights.insert(key, (id, flight.clone()));
                    (flight, Source::Fetched)
                }
            }
        };
        let result = flight.await.map(|(token, fetched_here)| match source {
            Source::Fetched if !fetched_here => (token, Source::Fleet),
            source => (token, source),
        });
        if let Ok((_, source)) = &result {
            tracing::Span::current().record("source", source.as_str());
        }
        result
    }

    fn start<F>(&self, id: u64, key: ReuseKey, fetch: F) -> Flight
    where
        F: Future<Output = Result<GrantedToken, FetchError>> + Send + 'static,
    {
        let guard = FlightGuard {
            state: Arc::downgrade(&self.state),
            id,
            key,
        };
        let min_ttl = self.min_ttl;
        let fleet = self.fleet.clone();
        let call = async move {
            let result = match fleet {
                Some(fleet) => fleet.get_or_fetch(&guard.key, min_ttl, fetch).await,
                None => fetch.await.map(|token| (token, true)),
            };
            if let (Ok((token, _)), Some(state)) = (&result, guard.state.upgrade()) {
                let mut state = lock(&state);
                // The flight leaves the map as the token enters it, so no request sees
                // neither and starts a second call.
                guard.remove_from(&mut state);
                if !min_ttl.is_zero() && token.expires_at - OffsetDateTime::now_utc() >= min_ttl {
                    make_room(&mut state.live, min_ttl);
                    if state.live.len() < MAX_LIVE_TOKENS {
                        state.live.insert(guard.key.clone(), token.clone());
                    }
                }
            }
            result
        };
        // The call belongs to the trace of the request that started it.
        let task = tokio::spawn(call.in_current_span());
        async move {
            task.await.unwrap_or_else(|_| {
                Err(FetchError::Upstream(UpstreamError::Unreachable(
                    "the token request was lost".into(),
                )))
            })
        }
        .boxed()
        .shared()
    }

    fn still_good(&self, token: &GrantedToken, now: OffsetDateTime) -> bool {
        !self.min_ttl.is_zero() && token.expires_at - now >= self.min_ttl
    }

    /// Drops every live token of `subject` at `tenant`, here and (with a fleet) in
    /// Redis, so a denied or revoked user is never handed one again. Calls in flight
    /// still answer their waiters.
    pub async fn forget(&self, subject: &Subject, tenant: &Tenant) {
        lock(&self.state)
            .live
            .retain(|k, _| !(k.subject == *subject && k.tenant == *tenant));
        if let Some(fleet) = &self.fleet {
            fleet.forget(subject, tenant).await;
        }
    }

    /// Drops every live token of everyone, here and (with a fleet) in Redis: `*` on
    /// the deny list.
    pub async fn forget_everyone(&self) {
        lock(&self.state).live.clear();
        if let Some(fleet) = &self.fleet {
            fleet.forget_everyone().await;
        }
    }

    /// Live tokens held now.
    pub fn live_tokens(&self) -> usize {
        lock(&self.state).live.len()
    }
}

/// Takes the flight out of the map however its task ends (even by panic), so a later
/// request never joins a call that will not answer.
struct FlightGuard {
    state: Weak<Mutex<State>>,
    id: u64,
    key: ReuseKey,
}

impl FlightGuard {
    fn remove_from(&self, state: &mut State) {
        if state
            .flights
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
        {
            state.flights.remove(&self.key);
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            self.remove_from(&mut lock(&state));
        }
    }
}

/// At capacity, drops tokens too short-lived to hand out, then the soonest to expire
/// down to [`REFILL_TO`] of the capacity: the scan is paid once per many inserts, not
/// on every insert while the cache stays full (with more users than it holds, that
/// scan of every entry under the lock was most of a vend's time).
fn make_room(live: &mut HashMap<ReuseKey, GrantedToken>, min_ttl: Duration) {
    make_room_within(live, min_ttl, MAX_LIVE_TOKENS);
}

/// The share of the capacity left after making room: 7/8.
const REFILL_TO: (usize, usize) = (7, 8);

fn make_room_within(live: &mut HashMap<ReuseKey, GrantedToken>, min_ttl: Duration, max: usize) {
    if live.len() < max {
        return;
    }
    let now = OffsetDateTime::now_utc();
    live.retain(|_, t| t.expires_at - now >= min_ttl);
    let keep = max * REFILL_TO.0 / REFILL_TO.1;
    if live.len() > keep {
        let mut by_expiry: Vec<(OffsetDateTime, ReuseKey)> = live
            .iter()
            .map(|(k, t)| (t.expires_at, k.clone()))
            .collect();
        let drop = by_expiry.len() - keep;
        by_expiry.select_nth_unstable_by_key(drop - 1, |(expires, _)| *expires);
        for (_, key) in &by_expiry[..drop] {
            live.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::{ExposeSecret, SecretString};
    use std::sync::atomic::AtomicUsize;

    fn key(subject: &str) -> ReuseKey {
        ReuseKey {
            subject: Subject::parse(subject).unwrap(),
            scope: RequestedScope::parse("transcribe").unwrap(),
            tenant: Tenant::parse("base").unwrap(),
        }
    }

    fn token(name: &str, lifetime: i64) -> GrantedToken {
        GrantedToken {
            access_token: SecretString::from(name.to_owned()),
            expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(lifetime),
            scope: "openid transcribe".into(),
        }
    }

    #[tokio::test]
    async fn a_live_token_is_reused_for_the_same_user_only() {
        let reuse = TokenReuse::new(Duration::from_secs(60));
        let (a, src) = reuse
            .get_or_fetch(key("alice"), || async { Ok(token("t1", 300)) })
            .await
            .unwrap();
        assert_eq!(src, Source::Fetched);
        let (again, src) = reuse
            .get_or_fetch(key("alice"), || async { Ok(token("t2", 300)) })
            .await
            .unwrap();
        assert_eq!(src, Source::Cached);
        assert_eq!(
            again.access_token.expose_secret(),
            a.access_token.expose_secret()
        );
        let (bob, src) = reuse
            .get_or_fetch(key("bob"), || async { Ok(token("t3", 300)) })
            .await
            .unwrap();
        assert_eq!(src, Source::Fetched);
        assert_eq!(bob.access_token.expose_secret(), "t3");
    }

    #[tokio::test]
    async fn a_token_below_the_minimum_lifetime_is_replaced() {
        let reuse = TokenReuse::new(Duration::from_secs(60));
        reuse
            .get_or_fetch(key("alice"), || async { Ok(token("short", 30)) })
            .await
            .unwrap();
        let (t, src) = reuse
            .get_or_fetch(key("alice"), || async { Ok(token("long", 300)) })
            .await
            .unwrap();
        assert_eq!(src, Source::Fetched);
        assert_eq!(t.access_token.expose_secret(), "long");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_call_and_its_error() {
        let reuse = Arc::new(TokenReuse::new(Duration::from_secs(60)));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut waiters = Vec::new();
        for _ in 0..50 {
            let reuse = reuse.clone();
            let calls = calls.clone();
            waiters.push(tokio::spawn(async move {
                reuse
                    .get_or_fetch(key("alice"), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(FetchError::Upstream(UpstreamError::Timeout))
                    })
                    .await
            }));
        }
        for w in waiters {
            assert!(matches!(
                w.await.unwrap(),
                Err(FetchError::Upstream(UpstreamError::Timeout))
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(reuse.state.lock().unwrap().flights.is_empty());
    }

    #[tokio::test]
    async fn a_panicking_call_still_answers_and_clears_its_flight() {
        let reuse = TokenReuse::new(Duration::from_secs(60));
        let result = reuse
            .get_or_fetch(key("alice"), || async {
                if true {
                    panic!("boom");
                }
                Ok(token("never", 300))
            })
            .await;
        assert!(matches!(result, Err(FetchError::Upstream(_))));
        let (t, _) = reuse
            .get_or_fetch(key("alice"), || async { Ok(token("ok", 300)) })
            .await
            .unwrap();
        assert_eq!(t.access_token.expose_secret(), "ok");
    }

    #[tokio::test]
    async fn a_forgotten_subject_gets_no_held_token_and_others_keep_theirs() {
        let reuse = TokenReuse::new(Duration::from_secs(60));
        for user in ["alice", "bob"] {
            reuse
                .get_or_fetch(key(user), || async { Ok(token("old", 300)) })
                .await
                .unwrap();
        }
        reuse
            .forget(&key("alice").subject, &key("alice").tenant)
            .await;
        let (t, src) = reuse
            .get_or_fetch(key("alice"), || async { Ok(token("new", 300)) })
            .await
            .unwrap();
        assert_eq!(
            (t.access_token.expose_secret(), src),
            ("new", Source::Fetched)
        );
        let (_, src) = reuse
            .get_or_fetch(key("bob"), || async { Ok(token("new", 300)) })
            .await
            .unwrap();
        assert_eq!(src, Source::Cached);
    }

    #[tokio::test]
    async fn zero_minimum_lifetime_turns_reuse_off() {
        let reuse = TokenReuse::new(Duration::ZERO);
        reuse
            .get_or_fetch(key("alice"), || async { Ok(token("t1", 300)) })
            .await
            .unwrap();
        let (t, src) = reuse
            .get_or_fetch(key("alice"), || async { Ok(token("t2", 300)) })
            .await
            .unwrap();
        assert_eq!(src, Source::Fetched);
        assert_eq!(t.access_token.expose_secret(), "t2");
        assert_eq!(reuse.live_tokens(), 0);
    }

    #[test]
    fn a_full_cache_drops_the_soonest_to_expire_in_one_sweep() {
        let mut live = HashMap::new();
        for i in 0..16 {
            live.insert(key(&format!("u{i}")), token("t", 100 + i));
        }
        make_room_within(&mut live, Duration::from_secs(60), 16);
        assert_eq!(live.len(), 14, "down to 7/8 of the capacity");
        assert!(!live.contains_key(&key("u0")) && !live.contains_key(&key("u1")));
        assert!(live.contains_key(&key("u2")) && live.contains_key(&key("u15")));
        // Below capacity nothing moves.
        make_room_within(&mut live, Duration::from_secs(60), 16);
        assert_eq!(live.len(), 14);
    }
}

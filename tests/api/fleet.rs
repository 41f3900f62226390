//! Replicas sharing one Redis and `TOKEN_CACHE_KEY` behave as one service toward Corti:
//! one upstream call and one token for a herd spread over all of them, and a Redis
//! outage leaves every replica vending on its own until Redis is back.
//!
//! `TEST_REDIS_URL` names a running Redis for the herd test; the outage test starts and
//! stops its own `redis-server`. Under `CI=true` both are required.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::support::own_redis::{free_port, redis_server_available, OwnRedis};
use crate::support::{
    cli, redis_url, required_or_skip, unique_user, Backend, Limits, Secrets, Store, TestApp,
    TestDb, Upstream,
};
use futures_util::future::join_all;
use serde_json::Value;
use token_vendor::dev::random_hex;

const LIFETIME: Duration = Duration::from_secs(300);

/// `n` replicas on one Redis and one cache key; the first runs the upstream stand-in.
async fn replicas(n: usize, redis: &str, cache_key: &str) -> Vec<TestApp> {
    replicas_on(n, redis, cache_key, None).await
}

/// As [`replicas`], every replica writing its audit chain to `db` when given.
async fn replicas_on(n: usize, redis: &str, cache_key: &str, db: Option<&TestDb>) -> Vec<TestApp> {
    let secrets = Secrets::fresh();
    let env = [("REDIS_URL", redis), ("TOKEN_CACHE_KEY", cache_key)];
    let store = || db.map(Store::db).unwrap_or(Store::Memory);
    let first = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .store(store())
        .envs(env)
        .secrets(secrets.clone())
        .spawn()
        .await;
    let upstream = first
        .standin
        .as_ref()
        .map(|s| s.base_url().to_owned())
        .expect("the first replica runs the stand-in");
    let mut all = vec![first];
    for _ in 1..n {
        all.push(replica_of(&upstream, env, &secrets, store()).await);
    }
    all
}

async fn replica_of(
    upstream: &str,
    env: [(&str, &str); 2],
    secrets: &Secrets,
    store: Store,
) -> TestApp {
    TestApp::builder()
        .upstream(Upstream::Url(upstream.to_owned()))
        .limits(Limits::Off)
        .store(store)
        .envs(env)
        .secrets(secrets.clone())
        .spawn()
        .await
}

fn fresh_cache_key() -> String {
    format!("fake-token-cache-key-{}", random_hex(16))
}

async fn token_from(app: &TestApp, session: &str) -> String {
    let response = app.vend_transcribe(session).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("a JSON body");
    body["accessToken"]
        .as_str()
        .expect("an accessToken")
        .to_owned()
}

fn upstream_calls(first: &TestApp) -> usize {
    first
        .standin
        .as_ref()
        .map(|s| s.token_calls())
        .expect("the first replica runs the stand-in")
}

#[tokio::test]
async fn a_herd_spread_over_three_replicas_makes_one_upstream_call_and_gets_one_token() {
    // Arrange
    let Some(url) = redis_url() else {
        return;
    };
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let key = fresh_cache_key();
    let fleet = replicas_on(3, &url, &key, Some(&db)).await;
    let user = unique_user();
    let session = fleet[0].session(&user);

    // Act: 150 concurrent requests of one user, round robin over the replicas
    let herd = (0..150).map(|i| token_from(&fleet[i % fleet.len()], &session));
    let tokens: BTreeSet<String> = join_all(herd).await.into_iter().collect();

    // Assert
    assert_eq!(tokens.len(), 1, "every request got the same token");
    assert_eq!(upstream_calls(&fleet[0]), 1);

    // Act: later, a replica that took no part asks for the same user
    let upstream = fleet[0]
        .standin
        .as_ref()
        .map(|s| s.base_url().to_owned())
        .unwrap_or_default();
    let late = replica_of(
        &upstream,
        [
            ("REDIS_URL", url.as_str()),
            ("TOKEN_CACHE_KEY", key.as_str()),
        ],
        &fleet[0].secrets,
        Store::db(&db),
    )
    .await;
    let again = token_from(&late, &session).await;

    // Assert: the same token, and no new upstream call
    assert!(tokens.contains(&again));
    assert_eq!(upstream_calls(&fleet[0]), 1);
    assert_eq!(
        late.metric("token_vendor_token_cache_fleet_hits_total")
            .await,
        1.0
    );
    assert_eq!(
        late.metric("token_vendor_token_cache_redis_fallback").await,
        0.0
    );

    // Assert: the audit chains of all replicas verify together, one issued and the
    // rest reused
    let verify = cli(&db.url, &["audit", "verify"], &[]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let events = late.all_events().await;
    let outcomes = |o: &str| events.iter().filter(|e| e["outcome"] == o).count();
    assert_eq!(outcomes("issued"), 1, "{events:?}");
    assert_eq!(outcomes("reused"), 150);
    db.cleanup().await;
}

#[tokio::test]
async fn the_token_in_redis_is_unreadable_and_another_key_cannot_use_it() {
    // Arrange
    if required_or_skip("redis-server on PATH", redis_server_available()).is_none() {
        return;
    }
    let redis = OwnRedis::start(free_port()).expect("redis-server starts");
    redis.wait_ready().await;
    let url = redis.url();
    let fleet = replicas(1, &url, &fresh_cache_key()).await;
    let user = unique_user();
    let session = fleet[0].session(&user);

    // Act
    let token = token_from(&fleet[0], &session).await;
    let keys = redis.keys("token-vendor:tok:*").await;
    let values = redis.dump_values(&keys).await;
    let other_key = replicas(1, &url, &fresh_cache_key()).await;
    let other_session = other_key[0].signer.session(&user);
    let other = token_from(&other_key[0], &other_session).await;

    // Assert: nothing readable in Redis, and a replica with another key does not reuse
    assert_eq!(keys.len(), 1, "one cached token: {keys:?}");
    assert!(!keys[0].contains(&user));
    let (header, payload) = {
        let mut parts = token.split('.');
        (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        )
    };
    for value in &values {
        let text = String::from_utf8_lossy(value);
        assert!(!text.contains(&header[..header.len().min(16)]));
        assert!(!text.contains(&payload[..payload.len().min(16)]));
        assert!(!text.contains(&user));
    }
    assert_ne!(other, token);
}

#[tokio::test]
async fn a_redis_outage_leaves_every_replica_vending_and_the_fleet_heals_by_itself() {
    // Arrange
    if required_or_skip("redis-server on PATH", redis_server_available()).is_none() {
        return;
    }
    let port = free_port();
    let redis = OwnRedis::start(port).expect("redis-server starts");
    redis.wait_ready().await;
    let url = redis.url();
    let fleet = replicas(3, &url, &fresh_cache_key()).await;
    let session = fleet[0].session(&unique_user());
    let before = token_from(&fleet[0], &session).await;

    // Act: Redis goes away; a new user asks every replica
    redis.stop();
    let during_session = fleet[0].session(&unique_user());
    let mut during = Vec::new();
    for app in &fleet {
        let response = app.vend_transcribe(&during_session).await;
        during.push(response.status().as_u16());
    }

    // Assert: every replica kept answering, each on its own, and says so
    assert_eq!(during, [200, 200, 200]);
    for app in &fleet {
        assert_eq!(
            app.metric("token_vendor_token_cache_redis_fallback").await,
            1.0
        );
    }

    // Act: Redis comes back on the same address (empty)
    let redis = OwnRedis::start(port).expect("redis-server restarts");
    redis.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for app in &fleet {
        while app.metric("token_vendor_token_cache_redis_fallback").await != 0.0 {
            assert!(Instant::now() < deadline, "reuse did not return to Redis");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let calls = upstream_calls(&fleet[0]);
    let after_session = fleet[0].session(&unique_user());
    let first = token_from(&fleet[1], &after_session).await;
    let second = token_from(&fleet[2], &after_session).await;

    // Assert: fleet mode again: one call, one token across replicas
    assert_eq!(first, second);
    assert_eq!(upstream_calls(&fleet[0]), calls + 1);
    assert_ne!(before, first);
}

/// Calls per Redis command since the last reset (`INFO commandstats`).
async fn command_calls(redis: &OwnRedis, reset: bool) -> Vec<(String, u64)> {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    if reset {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .expect("CONFIG RESETSTAT");
    }
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "info" | "config" | "ping" | "hello" | "client"
            )
        })
        .collect()
}

#[tokio::test]
async fn a_reuse_costs_one_redis_get_on_another_replica_and_none_on_the_same_one() {
    // Arrange
    if required_or_skip("redis-server on PATH", redis_server_available()).is_none() {
        return;
    }
    let redis = OwnRedis::start(free_port()).expect("redis-server starts");
    redis.wait_ready().await;
    let fleet = replicas(2, &redis.url(), &fresh_cache_key()).await;
    let session = fleet[0].session(&unique_user());
    let first = token_from(&fleet[0], &session).await;
    command_calls(&redis, true).await;

    // Act: the other replica reuses the token
    let other = token_from(&fleet[1], &session).await;
    let on_other = command_calls(&redis, true).await;
    // Act: the same replica again
    let same = token_from(&fleet[1], &session).await;
    let on_same = command_calls(&redis, true).await;

    // Assert: besides the limits' scripts, one GET, then nothing. Redis counts the
    // commands a script runs too: each allowed GCRA step (`evalsha`) is one TIME, one
    // GET and one SET, which are taken off here.
    assert_eq!(first, other);
    assert_eq!(other, same);
    let token_cache = |calls: &[(String, u64)]| -> Vec<(String, u64)> {
        let count = |n: &str| calls.iter().find(|(c, _)| c == n).map_or(0, |(_, k)| *k);
        let scripts = count("evalsha");
        calls
            .iter()
            .filter(|(name, _)| !name.starts_with("eval") && !name.starts_with("config"))
            .map(|(name, k)| match name.as_str() {
                "get" | "set" | "time" => (name.clone(), k - scripts.min(*k)),
                _ => (name.clone(), *k),
            })
            .filter(|(_, k)| *k > 0)
            .collect()
    };
    // One round trip: the entry and the deny generations it is bound to, in one MGET.
    assert_eq!(
        token_cache(&on_other),
        [("mget".to_owned(), 1)],
        "{on_other:?}"
    );
    assert_eq!(token_cache(&on_same), [], "{on_same:?}");
    let _ = writeln!(
        std::io::stderr(),
        "redis commands: reuse on another replica {on_other:?}; on the same replica {on_same:?}"
    );
}

#[tokio::test]
async fn a_forgotten_subject_has_no_token_left_in_redis_for_any_scope() {
    use secrecy::{ExposeSecret, SecretString};
    use std::sync::Arc;
    use token_vendor::corti::GrantedToken;
    use token_vendor::corti::Tenant;
    use token_vendor::metrics::Metrics;
    use token_vendor::reuse::{FleetCache, ReuseKey};
    use token_vendor::scope::RequestedScope;
    use token_vendor::session::Subject;

    // Arrange
    let Some(url) = redis_url() else {
        return;
    };
    let fleet = FleetCache::connect(
        &url,
        &SecretString::from(fresh_cache_key()),
        Duration::from_secs(2),
        Arc::new(Metrics::new()),
    )
    .expect("fleet cache");
    let ttl = Duration::from_secs(60);
    let key = |user: &str, scope: &str| ReuseKey {
        subject: Subject::parse(user).expect("subject"),
        scope: RequestedScope::parse(scope).expect("scope"),
        tenant: Tenant::parse("base").expect("tenant"),
    };
    let token = |name: &str| GrantedToken {
        access_token: SecretString::from(name.to_owned()),
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::seconds(300),
        scope: "openid transcribe".into(),
    };
    let (alice, bob) = (unique_user(), unique_user());
    let stored = [
        key(&alice, "transcribe"),
        key(&alice, "transcribe streams"),
        key(&bob, "transcribe"),
    ];
    for k in &stored {
        fleet
            .get_or_fetch(k, ttl, async { Ok(token("old")) })
            .await
            .expect("stored");
    }

    // Act
    fleet.forget(&stored[0].subject, &stored[0].tenant).await;

    // Assert: alice fetches anew for every scope, bob still reuses
    for k in &stored[..2] {
        let (t, fetched_here) = fleet
            .get_or_fetch(k, ttl, async { Ok(token("new")) })
            .await
            .expect("token");
        assert!(fetched_here);
        assert_eq!(t.access_token.expose_secret(), "new");
    }
    let (t, fetched_here) = fleet
        .get_or_fetch(&stored[2], ttl, async { Ok(token("new")) })
        .await
        .expect("token");
    assert!(!fetched_here);
    assert_eq!(t.access_token.expose_secret(), "old");
}

#[tokio::test]
async fn a_redis_that_answers_ping_but_refuses_writes_keeps_the_replica_on_its_own() {
    // Arrange: a Redis out of memory (noeviction) still answers PING, refuses every write
    if required_or_skip("redis-server on PATH", redis_server_available()).is_none() {
        return;
    }
    let redis = OwnRedis::start(free_port()).expect("redis-server starts");
    redis.wait_ready().await;
    let fleet = replicas(1, &redis.url(), &fresh_cache_key()).await;
    let app = &fleet[0];
    token_from(app, &app.session(&unique_user())).await;
    redis
        .run(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    redis.run(&["CONFIG", "SET", "maxmemory", "1"]).await;

    // Act: a new user's vend cannot store its token in Redis
    token_from(app, &app.session(&unique_user())).await;

    // Assert: the replica stays on its own (no flip back to a Redis that cannot store)
    let mut seen = Vec::new();
    for _ in 0..15 {
        seen.push(app.metric("token_vendor_token_cache_redis_fallback").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.iter().all(|v| *v == 1.0),
        "fallback gauge over 1.5 s: {seen:?}"
    );

    // Act: Redis may write again
    redis.run(&["CONFIG", "SET", "maxmemory", "0"]).await;

    // Assert: the replica returns to the fleet by itself
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.metric("token_vendor_token_cache_redis_fallback").await != 0.0 {
        assert!(Instant::now() < deadline, "reuse did not return to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.stop();
}

#[tokio::test]
async fn a_subject_denied_on_one_replica_leaves_no_token_in_redis_for_another() {
    // Arrange: replica A reads a deny list; replica B has none, so only Redis links them
    let Some(url) = redis_url() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tv-fleet-deny-{}", random_hex(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let list = dir.join("deny");
    std::fs::write(&list, "").expect("write");
    let key = fresh_cache_key();
    let secrets = Secrets::fresh();
    let a = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .envs([
            ("REDIS_URL", url.as_str()),
            ("TOKEN_CACHE_KEY", key.as_str()),
        ])
        .env("DENY_LIST_FILE", list.display().to_string())
        .secrets(secrets.clone())
        .spawn()
        .await;
    let upstream = a
        .standin
        .as_ref()
        .map(|s| s.base_url().to_owned())
        .expect("stand-in");
    let b = replica_of(
        &upstream,
        [
            ("REDIS_URL", url.as_str()),
            ("TOKEN_CACHE_KEY", key.as_str()),
        ],
        &secrets,
        Store::Memory,
    )
    .await;
    let user = unique_user();
    let session = a.session(&user);
    let before = token_from(&a, &session).await;
    // Act: deny on A, then lift
    std::fs::write(&list, format!("{user}\n")).expect("write");
    let denied = crate::support::eventually(Duration::from_secs(4), || async {
        a.metric("token_vendor_deny_list_entries").await == 1.0
    })
    .await;
    assert!(denied, "A picked up the deny list");
    assert_eq!(a.vend_transcribe(&session).await.status(), 403);
    std::fs::write(&list, "").expect("write");
    let lifted = crate::support::eventually(Duration::from_secs(4), || async {
        a.metric("token_vendor_deny_list_entries").await == 0.0
    })
    .await;
    assert!(lifted);
    let after = token_from(&b, &session).await;

    // Assert: B found nothing in Redis and fetched a new token
    assert_ne!(
        after, before,
        "the token cached before the denial is gone from Redis"
    );
    assert_eq!(
        b.metric("token_vendor_token_cache_fleet_hits_total").await,
        0.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// Someone with Redis write access but without `TOKEN_CACHE_KEY` copies a user's entry,
/// waits for a deny and its lift, and writes the entry back: no replica, not even a
/// fresh one, hands out the token from before the deny.
#[tokio::test]
async fn a_cache_entry_replayed_after_a_deny_and_its_lift_is_refused() {
    if required_or_skip("redis-server on PATH", redis_server_available()).is_none() {
        return;
    }
    let redis = OwnRedis::start(free_port()).expect("redis-server starts");
    redis.wait_ready().await;
    let url = redis.url();
    let dir = std::env::temp_dir().join(format!("tv-fleet-replay-{}", random_hex(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let list = dir.join("deny");
    std::fs::write(&list, "").expect("write");
    let key = fresh_cache_key();
    let secrets = Secrets::fresh();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("TOKEN_CACHE_KEY", key.as_str()),
    ];
    let a = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .envs(env)
        .env("DENY_LIST_FILE", list.display().to_string())
        .secrets(secrets.clone())
        .spawn()
        .await;
    let upstream = a
        .standin
        .as_ref()
        .map(|s| s.base_url().to_owned())
        .expect("stand-in");
    let user = unique_user();
    let session = a.session(&user);
    let before = token_from(&a, &session).await;
    let copied_keys = redis.keys("token-vendor:tok:v1:token:*").await;
    assert_eq!(copied_keys.len(), 1, "{copied_keys:?}");
    let copied = redis.dump_values(&copied_keys).await;

    std::fs::write(&list, format!("{user}\n")).expect("write");
    assert!(
        crate::support::eventually(Duration::from_secs(4), || async {
            a.metric("token_vendor_deny_list_entries").await == 1.0
        })
        .await
    );
    assert_eq!(a.vend_transcribe(&session).await.status(), 403);
    std::fs::write(&list, "").expect("write");
    assert!(
        crate::support::eventually(Duration::from_secs(4), || async {
            a.metric("token_vendor_deny_list_entries").await == 0.0
        })
        .await
    );
    let mut conn = redis_conn(&url).await;
    redis::cmd("SET")
        .arg(&copied_keys[0])
        .arg(&copied[0])
        .arg("PX")
        .arg(200_000)
        .query_async::<()>(&mut conn)
        .await
        .expect("replay the entry");

    let fresh = replica_of(&upstream, env, &secrets, Store::Memory).await;
    let after = token_from(&fresh, &session).await;
    assert_ne!(
        after, before,
        "a fresh replica handed out the pre-deny token"
    );
    assert_ne!(token_from(&a, &session).await, before);
    let _ = std::fs::remove_dir_all(&dir);
    redis.stop();
}

/// The single-flight lock's name cannot be derived from the visible token key: a
/// planted lock does not make vends wait.
#[tokio::test]
async fn a_lock_planted_beside_a_visible_token_key_does_not_stall_vends() {
    if required_or_skip("redis-server on PATH", redis_server_available()).is_none() {
        return;
    }
    let redis = OwnRedis::start(free_port()).expect("redis-server starts");
    redis.wait_ready().await;
    let url = redis.url();
    let fleet = replicas(2, &url, &fresh_cache_key()).await;
    let session = fleet[0].session(&unique_user());
    token_from(&fleet[0], &session).await;
    let token_keys = redis.keys("token-vendor:tok:v1:token:*").await;
    assert_eq!(token_keys.len(), 1, "{token_keys:?}");
    let planted = token_keys[0].replace(":token:", ":lock:");
    let mut conn = redis_conn(&url).await;
    redis::cmd("DEL")
        .arg(&token_keys[0])
        .query_async::<i64>(&mut conn)
        .await
        .expect("DEL");
    redis::cmd("SET")
        .arg(&planted)
        .arg("attacker")
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(&mut conn)
        .await
        .expect("plant a lock");

    // The second replica has no token of this user in memory: it goes through Redis.
    let other = &fleet[1];
    let started = Instant::now();
    token_from(other, &session).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a planted lock stalled the vend {took:?}"
    );
    redis.stop();
}

//! Limits shared through a real Redis: replicas enforce one combined limit, and an
//! outage falls back to in-process limits and heals by itself.
//!
//! `TEST_REDIS_URL` names a running Redis for the shared-limit test; the outage test
//! starts and stops its own `redis-server`. Under `CI=true` both are required.

use std::time::{Duration, Instant};

use crate::support::own_redis::{free_port, redis_server_available, OwnRedis};
use crate::support::{
    redis_url, required_or_skip, unique_user, Limits, Secrets, TestApp, Upstream,
};

const LIFETIME: Duration = Duration::from_secs(300);

#[tokio::test]
async fn two_instances_sharing_redis_enforce_one_combined_limit() {
    // Arrange
    let Some(url) = redis_url() else {
        return;
    };
    let env = [
        ("RATE_LIMIT_REDIS_URL", url.as_str()),
        ("RATE_LIMIT_PER_USER", "3/minute"),
    ];
    let secrets = Secrets::fresh();
    let one = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .envs(env.iter().copied())
        .secrets(secrets.clone())
        .spawn()
        .await;
    let upstream = one
        .standin
        .as_ref()
        .map(|s| s.base_url().to_owned())
        .expect("the first instance runs the stand-in");
    let two = TestApp::builder()
        .upstream(Upstream::Url(upstream))
        .limits(Limits::Off)
        .envs(env.iter().copied())
        .secrets(secrets)
        .spawn()
        .await;
    let user = unique_user();
    let session = one.session(&user);

    // Act
    let statuses = [
        one.vend_transcribe(&session).await.status().as_u16(),
        two.vend_transcribe(&session).await.status().as_u16(),
        one.vend_transcribe(&session).await.status().as_u16(),
        two.vend_transcribe(&session).await.status().as_u16(),
        one.vend_transcribe(&session).await.status().as_u16(),
    ];

    // Assert
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(
        one.metric("token_vendor_rate_limit_redis_fallback").await,
        0.0
    );
    assert_eq!(
        two.metric("token_vendor_rate_limit_redis_fallback").await,
        0.0
    );
}

#[tokio::test]
async fn a_redis_outage_falls_back_to_local_limits_and_returns_to_redis() {
    // Arrange
    if required_or_skip("redis-server on PATH", redis_server_available()).is_none() {
        return;
    }
    let port = free_port();
    let redis = OwnRedis::start(port).expect("redis-server starts");
    redis.wait_ready().await;
    let url = redis.url();
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .env("RATE_LIMIT_REDIS_URL", url.as_str())
        .env("RATE_LIMIT_PER_USER", "2/minute")
        .spawn()
        .await;
    let session = app.session(&unique_user());
    assert_eq!(app.vend_transcribe(&session).await.status(), 200);
    assert_eq!(redis.keys("token-vendor:rl:user:*").await.len(), 1);

    // Act: Redis goes away
    redis.stop();
    let during = [
        app.vend_transcribe(&session).await.status().as_u16(),
        app.vend_transcribe(&session).await.status().as_u16(),
        app.vend_transcribe(&session).await.status().as_u16(),
    ];

    // Assert: the service kept answering, on local limits that still refuse
    assert_eq!(during, [200, 200, 429]);
    assert_eq!(
        app.metric("token_vendor_rate_limit_redis_fallback").await,
        1.0
    );
    assert_eq!(
        app.metric("token_vendor_rate_limit_redis_fallbacks_total")
            .await,
        1.0
    );

    // Act: Redis comes back on the same address
    let redis = OwnRedis::start(port).expect("redis-server restarts");
    redis.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.metric("token_vendor_rate_limit_redis_fallback").await != 0.0 {
        assert!(Instant::now() < deadline, "limits did not return to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = app.session(&unique_user());
    let after = app.vend_transcribe(&other).await;

    // Assert: decisions are made in Redis again
    assert_eq!(after.status(), 200);
    assert_eq!(redis.keys("token-vendor:rl:user:*").await.len(), 1);
}

#[tokio::test]
async fn a_redis_that_answers_ping_but_refuses_the_limit_script_stays_in_fallback() {
    // Arrange
    if required_or_skip("redis-server on PATH", redis_server_available()).is_none() {
        return;
    }
    let redis = OwnRedis::start(free_port()).expect("redis-server starts");
    redis.wait_ready().await;
    let url = redis.url();
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .env("RATE_LIMIT_REDIS_URL", url.as_str())
        .env("RATE_LIMIT_PER_USER", "1000/hour")
        .spawn()
        .await;
    let session = app.session(&unique_user());
    assert_eq!(app.vend_transcribe(&session).await.status(), 200);
    assert_eq!(redis.keys("token-vendor:rl:user:*").await.len(), 1);

    // Act: Redis is out of memory; PING still answers, the limit script cannot write.
    redis.run(&["CONFIG", "SET", "maxmemory", "1"]).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(app.vend_transcribe(&session).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Assert: one fallback, held, and a gauge that says so (no flip-flop on PING).
    assert_eq!(
        app.metric("token_vendor_rate_limit_redis_fallbacks_total")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("token_vendor_rate_limit_redis_fallback").await,
        1.0
    );

    // Act: memory again; the probe sees the script work and the limits return.
    redis.run(&["CONFIG", "SET", "maxmemory", "0"]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.metric("token_vendor_rate_limit_redis_fallback").await != 0.0 {
        assert!(Instant::now() < deadline, "limits did not return to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.run(&["FLUSHALL"]).await;
    assert_eq!(
        app.vend_transcribe(&app.session(&unique_user()))
            .await
            .status(),
        200
    );
    assert_eq!(redis.keys("token-vendor:rl:user:*").await.len(), 1);
}

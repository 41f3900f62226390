//! Limits shared through a real Redis: replicas enforce one combined limit, and an
//! outage falls back to in-process limits and heals by itself.
//!
//! `TEST_REDIS_URL` names a running Redis for the shared-limit test; the outage test
//! starts and stops its own `redis-server`. Under `CI=true` both are required.

#[path = "support/mod.rs"]
mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{redis_url, required_or_skip, unique_user, Limits, Secrets, TestApp, Upstream};

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

/// A `redis-server` of the test's own, on a free loopback port.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Self { port, child })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        let client = redis::Client::open(self.url()).expect("redis url");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    async fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("KEYS")
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn redis_server_available() -> Option<String> {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "redis-server".to_owned())
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

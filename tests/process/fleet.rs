//! The fleet test: three replicas of the real binary, one real Redis (the test's own
//! `redis-server`, since it is stopped), one real PostgreSQL, one upstream stand-in.
//! A herd spread over all replicas makes one upstream call and gets one token; a later
//! replica reuses it; Redis stopped, every replica keeps vending; Redis back, the fleet
//! shares again; the audit chains of all replicas verify together.
//!
//! Needs `redis-server` on PATH and `TEST_DATABASE_URL`; under `CI=true` both are required.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::own_redis::{free_port, redis_server_available, OwnRedis};
use crate::support::serve_process::ServeProcess;
use crate::support::{
    cli, required_or_skip, unique_user, Backend, Secrets, SessionSigner, TestDb, TENANT,
};
use futures_util::future::join_all;
use serde_json::Value;
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;

/// One replica: `token-vendor serve` as a child process, killed when dropped.
struct Replica(ServeProcess);

impl Replica {
    fn start(env: &[(&str, String)]) -> Self {
        Self(ServeProcess::start(env))
    }

    async fn token(&self, http: &reqwest::Client, session: &str) -> String {
        let response = http
            .post(format!("{}/v1/tokens", self.0.address))
            .bearer_auth(session)
            .json(&serde_json::json!({"scope": "transcribe"}))
            .send()
            .await
            .expect("the replica answers");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("a JSON body");
        body["accessToken"]
            .as_str()
            .expect("an accessToken")
            .to_owned()
    }

    async fn metric(&self, http: &reqwest::Client, name: &str) -> f64 {
        let text = http
            .get(format!("{}/metrics", self.0.address))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

#[tokio::test]
async fn three_replicas_of_the_binary_act_as_one_toward_corti_and_survive_a_redis_outage() {
    let _turn = crate::alone().await;
    // Arrange
    if required_or_skip("redis-server on PATH", redis_server_available()).is_none() {
        return;
    }
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let port = free_port();
    let redis = OwnRedis::start(port).expect("redis-server starts");
    redis.wait_ready().await;
    let secrets = Secrets::fresh();
    let standin = AuthStandIn::start(StandInConfig {
        client_id: "test-client".into(),
        client_secret: secrets.client.clone(),
        token_lifetime: Duration::from_secs(300),
    })
    .expect("stand-in starts");
    let env: Vec<(&str, String)> = vec![
        ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ("CORTI_ENVIRONMENT", "eu".into()),
        ("CORTI_TENANT", TENANT.into()),
        ("CORTI_AUTH_URL", standin.base_url().to_owned()),
        ("CORTI_CLIENT_ID", "test-client".into()),
        ("CORTI_CLIENT_SECRET", secrets.client.clone()),
        ("SESSION_JWT_SECRET", secrets.session.clone()),
        ("AUDIT_HMAC_KEY", secrets.audit.clone()),
        ("DATABASE_URL", db.url.clone()),
        ("REDIS_URL", redis.url()),
        (
            "TOKEN_CACHE_KEY",
            format!("fake-token-cache-key-{}", random_hex(16)),
        ),
        ("UPSTREAM_TIMEOUT", "10s".into()),
        ("RATE_LIMIT_PER_IP", "100000/second".into()),
        ("RATE_LIMIT_PER_USER", "100000/second".into()),
        ("UPSTREAM_RATE_LIMIT", "100000/second".into()),
    ];
    let fleet: Vec<Replica> = (0..3).map(|_| Replica::start(&env)).collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let signer = SessionSigner::new(&secrets.session);
    let session = signer.session(&unique_user());

    // Act: a herd of 150 concurrent requests of one user over all replicas
    let herd = (0..150).map(|i| fleet[i % fleet.len()].token(&http, &session));
    let tokens: BTreeSet<String> = join_all(herd).await.into_iter().collect();

    // Assert: one upstream call, one token
    assert_eq!(tokens.len(), 1, "every request got the same token");
    assert_eq!(standin.token_calls(), 1);

    // Act + Assert: a later request on a replica that took no part: same token, no call
    let late = Replica::start(&env);
    assert!(tokens.contains(&late.token(&http, &session).await));
    assert_eq!(standin.token_calls(), 1);

    // Act: Redis stops; a new user asks every replica
    redis.stop();
    let during = signer.session(&unique_user());
    for replica in &fleet {
        replica.token(&http, &during).await;
    }

    // Assert: every replica kept serving, on its own, and reports it
    for replica in &fleet {
        let gauge = "token_vendor_token_cache_redis_fallback";
        assert_eq!(replica.metric(&http, gauge).await, 1.0);
    }

    // Act: Redis is back (empty) on the same address
    let redis = OwnRedis::start(port).expect("redis-server restarts");
    redis.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    for replica in &fleet {
        while replica
            .metric(&http, "token_vendor_token_cache_redis_fallback")
            .await
            != 0.0
        {
            assert!(
                Instant::now() < deadline,
                "a replica did not return to Redis"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let calls = standin.token_calls();
    let after = signer.session(&unique_user());
    let again = (0..30).map(|i| fleet[i % fleet.len()].token(&http, &after));
    let tokens: BTreeSet<String> = join_all(again).await.into_iter().collect();

    // Assert: fleet mode again, and the audit chains of all replicas verify together
    assert_eq!(tokens.len(), 1);
    assert_eq!(standin.token_calls(), calls + 1);
    drop(fleet);
    drop(late);
    let verify = cli(&db.url, &["audit", "verify"], &[]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    db.cleanup().await;
}

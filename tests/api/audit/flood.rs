use std::time::{Duration, Instant};

use serde_json::Value;
use token_vendor::audit::flood::FloodGuard;

use crate::both_backends;
use crate::support::*;

async fn a_refusal_flood_is_stored_boundedly_while_every_token_keeps_its_event(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let window = Duration::from_secs(1);
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .flood(FloodGuard::new(window, 1024, 5))
        .spawn()
        .await;

    let started = Instant::now();
    let mut tokens = Vec::new();
    for round in 0..10 {
        let refusals = (0..20).map(|_| app.vend_request(None, "{}", "req-flood"));
        for r in futures_util::future::join_all(refusals).await {
            assert_eq!(r.status().as_u16(), 401);
        }
        tokens.push(app.vend_token(&format!("user-{round}")).await);
    }
    let windows = started.elapsed().as_secs() + 2;

    // Once the last window closes, its count is written as one aggregated event.
    let unauthenticated = |events: Vec<Value>| -> Vec<Value> {
        events
            .into_iter()
            .filter(|e| e["outcome"] == "unauthenticated")
            .collect()
    };
    let counted = eventually(Duration::from_secs(5), || async {
        let total: u64 = unauthenticated(app.all_events().await)
            .iter()
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        total == 200
    })
    .await;
    assert!(counted, "every refusal is counted");
    let stored = unauthenticated(app.all_events().await);
    assert!(
        stored.len() as u64 <= windows * (5 + 1),
        "{} events for 200 refusals in {windows} windows",
        stored.len()
    );
    assert!(stored
        .iter()
        .any(|e| e["detail"].as_str().unwrap().starts_with("aggregated:")));

    for token in tokens {
        let (events, _) = app
            .events(&format!("token_fingerprint={}", app.fingerprint(&token)))
            .await;
        assert_eq!(events.len(), 1, "each token keeps its own event");
    }
    db.cleanup().await;
}
both_backends!(a_refusal_flood_is_stored_boundedly_while_every_token_keeps_its_event);

async fn a_flood_stopped_by_the_address_limit_is_stored_as_counts(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .flood(FloodGuard::new(Duration::from_secs(1), 1024, 5))
        .env("RATE_LIMIT_PER_IP", "10/minute")
        .spawn()
        .await;

    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let burst = (0..30).map(|_| app.vend_request(None, "{}", "req-flood"));
        for r in futures_util::future::join_all(burst).await {
            statuses.push(r.status().as_u16());
        }
    }
    let windows = started.elapsed().as_secs() + 2;
    let limited = statuses.iter().filter(|s| **s == 429).count() as u64;
    assert!(
        limited >= 280,
        "the address limit answers the flood: {limited}"
    );

    // The audit API spends the same address's (spent) side budget on this app, so the
    // store is read through a replica of its own, as an operator elsewhere would.
    let reader = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .spawn()
        .await;
    let rate_limited = || async {
        reader
            .all_events()
            .await
            .into_iter()
            .filter(|e| e["outcome"] == "rate_limited")
            .collect::<Vec<Value>>()
    };
    let counted = eventually(Duration::from_secs(5), || async {
        rate_limited()
            .await
            .iter()
            .map(|e| e["count"].as_u64().unwrap())
            .sum::<u64>()
            == limited
    })
    .await;
    assert!(counted, "every 429 is counted");
    let stored = rate_limited().await.len() as u64;
    assert!(
        stored <= windows * (5 + 1),
        "{stored} events for {limited} refusals"
    );
    db.cleanup().await;
}
both_backends!(a_flood_stopped_by_the_address_limit_is_stored_as_counts);

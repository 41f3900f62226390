use std::time::{Duration, Instant};

use serde_json::Value;
use token_vendor::audit::flood::FloodGuard;

use crate::both_backends;
use crate::helpers::{eventually, AppConfig, Backend, TestApp, TestDb};

async fn a_refusal_flood_is_stored_boundedly_while_every_token_keeps_its_event(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let window = Duration::from_secs(1);
    let app = TestApp::spawn_with(
        &db,
        AppConfig {
            flood: Some(FloodGuard::new(window, 1024, 5)),
            ..AppConfig::default()
        },
    )
    .await;

    let started = Instant::now();
    let mut tokens = Vec::new();
    for round in 0..10 {
        let refusals = (0..20).map(|_| app.vend(None, "{}", "req-flood"));
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

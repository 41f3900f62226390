use serde_json::{json, Value};

use crate::both_backends;
use crate::support::*;

fn only(events: Vec<Value>, what: &str) -> Value {
    assert_eq!(events.len(), 1, "exactly one event for {what}: {events:#?}");
    events.into_iter().next().unwrap_or_default()
}

async fn every_outcome_writes_exactly_one_event_with_its_fields(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    // Upstream refusing our credentials, and upstream unreachable.
    let refusing = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .env("CORTI_CLIENT_SECRET", "fake-wrong-secret")
        .spawn()
        .await;
    let unreachable = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .upstream(Upstream::Url("http://127.0.0.1:9".into()))
        .spawn()
        .await;
    // Reuse on, and a user limit of one vend a minute.
    let limited = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .env("TOKEN_REUSE_MIN_TTL", "60")
        .env("RATE_LIMIT_PER_USER", "2/minute")
        .spawn()
        .await;
    let alice = app.session_with_roles("alice", &[]);
    let body = r#"{"scope":"transcribe"}"#;

    let ids: Vec<String> = (0..9).map(|_| new_request_id()).collect();
    let issued = app.vend_request(Some(&alice), body, &ids[0]).await;
    assert_eq!(issued.status().as_u16(), 200);
    let token: Value = issued.json().await.unwrap();
    let token = token["accessToken"].as_str().unwrap().to_owned();
    let bad = app
        .vend_request(Some(&alice), r#"{"scope":"admin"}"#, &ids[1])
        .await;
    assert_eq!(bad.status().as_u16(), 400);
    let anonymous = app.vend_request(None, body, &ids[2]).await;
    assert_eq!(anonymous.status().as_u16(), 401);
    let narrowed =
        app.session_with(json!({"sub": "carol", "corti_scopes": ["streams"], "exp": now() + 600}));
    let forbidden = app.vend_request(Some(&narrowed), body, &ids[3]).await;
    assert_eq!(forbidden.status().as_u16(), 403);
    let refused = refusing
        .vend_request(
            Some(&refusing.session_with_roles("dave", &[])),
            body,
            &ids[4],
        )
        .await;
    assert_eq!(refused.status().as_u16(), 502);
    let down = unreachable
        .vend_request(
            Some(&unreachable.session_with_roles("erin", &[])),
            body,
            &ids[5],
        )
        .await;
    assert_eq!(down.status().as_u16(), 503);
    let frank = limited.session_with_roles("frank", &[]);
    let first = limited.vend_request(Some(&frank), body, &ids[6]).await;
    assert_eq!(first.status().as_u16(), 200);
    let again = limited.vend_request(Some(&frank), body, &ids[7]).await;
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.unwrap();
    let reused_token = again["accessToken"].as_str().unwrap().to_owned();
    let over = limited.vend_request(Some(&frank), body, &ids[8]).await;
    assert_eq!(over.status().as_u16(), 429);

    assert_eq!(app.all_events().await.len(), 9, "one event per attempt");
    let e = only(app.events_for(&ids[0]).await, "issued");
    assert_eq!(e["outcome"], "issued");
    assert_eq!(e["status"], 200);
    assert_eq!(e["subject"], "alice");
    assert_eq!(e["session_id"], "sid-alice");
    assert_eq!(e["client_ip"], "127.0.0.1");
    assert_eq!(e["user_agent"], USER_AGENT);
    assert_eq!(e["scope"], "openid transcribe");
    assert_eq!(e["tenant"], "base");
    assert_eq!(e["environment"], "eu");
    assert_eq!(e["token_fingerprint"], app.fingerprint(&token));
    assert!(e["token_expires_at"].is_string());
    assert!(e["upstream_ms"].is_u64());
    assert!(e["duration_ms"].is_u64());
    assert_eq!(e["count"], 1);
    assert!(
        !e.to_string().contains(&token),
        "the token itself is never stored"
    );

    let e = only(app.events_for(&ids[1]).await, "invalid_request");
    assert_eq!(
        (e["outcome"].clone(), e["status"].clone()),
        (json!("invalid_request"), json!(400))
    );
    assert_eq!(e["subject"], "alice");
    assert_eq!(e["token_fingerprint"], Value::Null);
    assert!(e["detail"].is_string());
    let e = only(app.events_for(&ids[2]).await, "unauthenticated");
    assert_eq!(
        (e["outcome"].clone(), e["status"].clone()),
        (json!("unauthenticated"), json!(401))
    );
    assert_eq!(e["subject"], Value::Null);
    let e = only(app.events_for(&ids[3]).await, "forbidden");
    assert_eq!(
        (e["outcome"].clone(), e["status"].clone()),
        (json!("forbidden"), json!(403))
    );
    assert_eq!(e["subject"], "carol");
    let e = only(app.events_for(&ids[4]).await, "upstream_error");
    assert_eq!(
        (e["outcome"].clone(), e["status"].clone()),
        (json!("upstream_error"), json!(502))
    );
    assert_eq!(e["subject"], "dave");
    let e = only(app.events_for(&ids[5]).await, "unavailable");
    assert_eq!(
        (e["outcome"].clone(), e["status"].clone()),
        (json!("unavailable"), json!(503))
    );
    let e = only(app.events_for(&ids[6]).await, "issued before reuse");
    assert_eq!(e["outcome"], "issued");
    let e = only(app.events_for(&ids[7]).await, "reused");
    assert_eq!(
        (e["outcome"].clone(), e["status"].clone()),
        (json!("reused"), json!(200))
    );
    assert_eq!(e["token_fingerprint"], limited.fingerprint(&reused_token));
    let e = only(app.events_for(&ids[8]).await, "rate_limited");
    assert_eq!(
        (e["outcome"].clone(), e["status"].clone()),
        (json!("rate_limited"), json!(429))
    );
    assert_eq!(e["subject"], "frank");
    db.cleanup().await;
}
both_backends!(every_outcome_writes_exactly_one_event_with_its_fields);

async fn every_token_in_a_200_has_its_event(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    let vends = (0..40).map(|i| {
        let app = &app;
        async move {
            let user = format!("user-{}", i % 5);
            let id = new_request_id();
            let r = app
                .vend_request(
                    Some(&app.session_with_roles(&user, &[])),
                    r#"{"scope":"transcribe streams"}"#,
                    &id,
                )
                .await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, 200, "{body}");
            (user, id, body["accessToken"].as_str().unwrap().to_owned())
        }
    });
    let tokens = futures_util::future::join_all(vends).await;
    // Concurrent vends of one user may share one upstream token (single flight): it
    // is issued once and handed out again as reused, each hand-out with its event.
    for (user, id, token) in tokens {
        let fp = app.fingerprint(&token);
        let (events, _) = app.events(&format!("token_fingerprint={fp}")).await;
        let mine: Vec<&Value> = events.iter().filter(|e| e["request_id"] == id).collect();
        assert_eq!(mine.len(), 1, "the response's own event: {events:#?}");
        assert_eq!(mine[0]["subject"], user);
        assert_eq!(mine[0]["status"], 200);
        let issued = events.iter().filter(|e| e["outcome"] == "issued").count();
        assert_eq!(issued, 1, "one token, issued once: {events:#?}");
        assert!(events
            .iter()
            .all(|e| e["outcome"] == "issued" || e["outcome"] == "reused"));
    }
    db.cleanup().await;
}
both_backends!(every_token_in_a_200_has_its_event);

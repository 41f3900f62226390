//! Token reuse, single-flight and the resilient upstream (retries, 429, breaker),
//! counted at the upstream itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};
use token_vendor::audit::Outcome;
use wiremock::ResponseTemplate;

async fn vend_concurrently(app: &Arc<TestApp>, session: &str, n: usize) -> Vec<(u16, Value)> {
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let app = app.clone();
        let session = session.to_owned();
        tasks.push(tokio::spawn(async move {
            let response = app.vend_transcribe(&session).await;
            let status = response.status().as_u16();
            (status, json_body(response).await)
        }));
    }
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("request task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_identical_requests_make_one_upstream_call() {
    // Arrange: a slow upstream, so every request arrives while the first call is out;
    // a timeout far above its delay, so a loaded machine cannot turn it into a 504.
    let app = Arc::new(
        TestApp::builder()
            .upstream(Upstream::Mock)
            .limits(Limits::Off)
            .env("UPSTREAM_TIMEOUT", "15s")
            .spawn()
            .await,
    );
    answer_tokens(
        app.mock.as_ref().unwrap(),
        token_response(300).set_delay(Duration::from_millis(1500)),
    )
    .await;
    let session = app.session(&unique_user());

    // Act
    let results = vend_concurrently(&app, &session, 1000).await;

    // Assert
    assert_eq!(app.upstream_token_calls().await, 1);
    let first = &results[0].1["accessToken"];
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(&body["accessToken"], first);
    }
    let events = app.audit.events();
    assert_eq!(events.len(), 1000);
    let issued = events
        .iter()
        .filter(|e| e.outcome == Outcome::Issued)
        .count();
    assert_eq!(issued, 1);
    let fingerprints: std::collections::HashSet<_> =
        events.iter().map(|e| e.token_fingerprint.clone()).collect();
    assert_eq!(fingerprints.len(), 1);
    let coalesced = app.metric("token_vendor_coalesced_waiters_total").await;
    let reused = app.metric("token_vendor_token_reuse_hits_total").await;
    assert_eq!(coalesced + reused, 999.0);
    assert!(coalesced > 0.0);
}

#[tokio::test]
async fn an_upstream_error_reaches_every_waiter() {
    // Arrange: a slow refusal that is not retried.
    let app = Arc::new(
        TestApp::builder()
            .upstream(Upstream::Mock)
            .limits(Limits::Off)
            .spawn()
            .await,
    );
    answer_tokens(
        app.mock.as_ref().unwrap(),
        ResponseTemplate::new(401)
            .set_body_json(json!({"error": "invalid_client"}))
            .set_delay(Duration::from_millis(500)),
    )
    .await;
    let session = app.session(&unique_user());

    // Act
    let started = Instant::now();
    let results = vend_concurrently(&app, &session, 50).await;

    // Assert
    assert!(started.elapsed() < Duration::from_secs(5), "nobody hangs");
    for (status, body) in &results {
        assert_eq!(*status, 502, "{body}");
        assert_eq!(body["type"], "urn:token-vendor:problem:upstream-error");
    }
    assert_eq!(app.upstream_token_calls().await, 1);
    assert!(app
        .audit
        .events()
        .iter()
        .all(|e| e.outcome == Outcome::UpstreamError));
}

#[tokio::test]
async fn reuse_hands_back_the_same_token_with_decreasing_expires_in_then_a_new_one() {
    // Arrange: 6 s tokens, reused while at least 3 s remain.
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(Duration::from_secs(6)))
        .limits(Limits::Off)
        .env("TOKEN_REUSE_MIN_TTL", "3")
        .spawn()
        .await;
    let user = unique_user();
    let session = app.session(&user);

    // Act
    let first = json_body(app.vend_transcribe(&session).await).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = json_body(app.vend_transcribe(&session).await).await;
    let someone_else = json_body(app.vend_transcribe(&app.session(&unique_user())).await).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let third = json_body(app.vend_transcribe(&session).await).await;

    // Assert
    assert_eq!(second["accessToken"], first["accessToken"]);
    assert!(
        second["expiresIn"].as_i64() < first["expiresIn"].as_i64(),
        "{first} {second}"
    );
    assert_eq!(second["expiresAt"], first["expiresAt"]);
    assert_ne!(someone_else["accessToken"], first["accessToken"]);
    assert_ne!(third["accessToken"], first["accessToken"]);
    assert!(third["expiresIn"].as_i64().unwrap() >= 4, "{third}");
    assert_eq!(app.standin.as_ref().unwrap().token_calls(), 3);
    let mine: Vec<_> = app
        .audit
        .events()
        .into_iter()
        .filter(|e| e.subject.as_deref() == Some(user.as_str()))
        .collect();
    let outcomes: Vec<_> = mine.iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Issued, Outcome::Reused, Outcome::Issued]
    );
    assert_eq!(mine[0].token_fingerprint, mine[1].token_fingerprint);
    assert_ne!(mine[0].token_fingerprint, mine[2].token_fingerprint);
}

#[tokio::test]
async fn transient_upstream_failures_are_retried_within_the_deadline() {
    // Arrange: the first two calls fail with 503, the third succeeds.
    let app = TestApp::builder()
        .upstream(Upstream::Mock)
        .limits(Limits::Off)
        .env("UPSTREAM_TIMEOUT", "3s")
        .spawn()
        .await;
    let mock = app.mock.as_ref().unwrap();
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(mock)
        .await;
    answer_tokens(mock, token_response(300)).await;

    // Act
    let response = app.vend_transcribe(&app.session(&unique_user())).await;

    // Assert
    assert_eq!(response.status(), 200);
    assert_eq!(app.upstream_token_calls().await, 3);
}

#[tokio::test]
async fn the_breaker_opens_on_a_failing_upstream_fails_fast_and_recovers() {
    // Arrange
    let app = TestApp::builder()
        .upstream(Upstream::Mock)
        .limits(Limits::Off)
        .env("UPSTREAM_TIMEOUT", "1s")
        .spawn()
        .await;
    let mock = app.mock.as_ref().unwrap();
    answer_tokens(mock, ResponseTemplate::new(503)).await;
    for _ in 0..5 {
        let failed = app.vend_transcribe(&app.session(&unique_user())).await;
        assert_eq!(failed.status(), 502, "the upstream's 5xx is a bad gateway");
    }
    let calls_when_open = app.upstream_token_calls().await;
    assert!(calls_when_open >= 5);

    // Act: the upstream is still down
    let started = Instant::now();
    let fast = app.vend_transcribe(&app.session(&unique_user())).await;

    // Assert: no call was made, and the client is told when to come back
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "failed fast"
    );
    assert_eq!(fast.status(), 503);
    let wait: u64 = header(&fast, "retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "{wait}");
    assert_eq!(app.upstream_token_calls().await, calls_when_open);
    assert_eq!(app.metric("token_vendor_upstream_breaker_state").await, 1.0);

    // Act: the upstream comes back; after Retry-After one probe closes the breaker
    mock.reset().await;
    answer_tokens(mock, token_response(300)).await;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let probe = app.vend_transcribe(&app.session(&unique_user())).await;
    let after = app.vend_transcribe(&app.session(&unique_user())).await;

    // Assert
    assert_eq!(probe.status(), 200);
    assert_eq!(after.status(), 200);
    assert_eq!(app.metric("token_vendor_upstream_breaker_state").await, 0.0);
}

#[tokio::test]
async fn an_upstream_429_pauses_calls_until_its_retry_after() {
    // Arrange
    let app = TestApp::builder()
        .upstream(Upstream::Mock)
        .limits(Limits::Off)
        .env("UPSTREAM_TIMEOUT", "1s")
        .spawn()
        .await;
    let mock = app.mock.as_ref().unwrap();
    answer_tokens(
        mock,
        ResponseTemplate::new(429).insert_header("Retry-After", "2"),
    )
    .await;

    // Act
    let limited = app.vend_transcribe(&app.session(&unique_user())).await;
    let while_paused = app.vend_transcribe(&app.session(&unique_user())).await;

    // Assert
    assert_eq!(limited.status(), 503);
    assert_eq!(header(&limited, "retry-after"), Some("2"));
    assert_eq!(while_paused.status(), 503);
    assert!(header(&while_paused, "retry-after").is_some());
    assert_eq!(
        app.upstream_token_calls().await,
        1,
        "no call during the pause"
    );

    // Act: after the pause the upstream is asked again
    mock.reset().await;
    answer_tokens(mock, token_response(300)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = app.vend_transcribe(&app.session(&unique_user())).await;

    // Assert
    assert_eq!(later.status(), 200);
}

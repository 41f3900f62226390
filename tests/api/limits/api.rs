//! Rate limits on `POST /v1/tokens`: per user, per IP, the upstream budget, the
//! IETF `RateLimit` headers and `X-Forwarded-For` trust.

use std::time::Duration;

use crate::support::*;
use token_vendor::audit::Outcome;

const LIFETIME: Duration = Duration::from_secs(300);

#[tokio::test]
async fn user_limit_answers_429_with_retry_after_problem_headers_and_an_audit_event() {
    // Arrange
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .env("RATE_LIMIT_PER_USER", "2/minute")
        .env("RATE_LIMIT_PER_IP", "1000/second")
        .spawn()
        .await;
    let user = unique_user();
    let session = app.session(&user);

    // Act
    let first = app.vend_transcribe(&session).await;
    let second = app.vend_transcribe(&session).await;
    let third = app.vend_transcribe(&session).await;

    // Assert
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        Some("\"ip\";q=1000;w=1, \"user\";q=2;w=60")
    );
    assert_eq!(
        header(&first, "ratelimit"),
        Some("\"ip\";r=999;t=1, \"user\";r=1;t=30")
    );
    assert_eq!(second.status(), 200);
    assert!(header(&second, "ratelimit")
        .unwrap()
        .ends_with("\"user\";r=0;t=60"));
    assert_eq!(third.status(), 429);
    let retry_after: u64 = header(&third, "retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry_after), "{retry_after}");
    assert!(header(&third, "ratelimit")
        .unwrap()
        .contains("\"user\";r=0;t="));
    assert!(header(&third, "ratelimit-policy").is_some());
    assert_eq!(
        header(&third, "content-type"),
        Some("application/problem+json")
    );
    let problem = json_body(third).await;
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["type"], "urn:token-vendor:problem:rate-limited");
    let events = app.audit.events();
    let refused = events.last().unwrap();
    assert_eq!(refused.outcome, Outcome::RateLimited);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.subject.as_deref(), Some(user.as_str()));

    let other = app.vend_transcribe(&app.session(&unique_user())).await;
    assert_eq!(other.status(), 200, "another user has a quota of their own");
}

#[tokio::test]
async fn waiting_retry_after_then_retrying_succeeds() {
    // Arrange
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .env("RATE_LIMIT_PER_USER", "1/second")
        .spawn()
        .await;
    let session = app.session(&unique_user());
    assert_eq!(app.vend_transcribe(&session).await.status(), 200);
    let refused = app.vend_transcribe(&session).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();

    // Act
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let retried = app.vend_transcribe(&session).await;

    // Assert
    assert_eq!(wait, 1);
    assert_eq!(retried.status(), 200);
}

#[tokio::test]
async fn ip_limit_refuses_before_the_session_is_checked() {
    // Arrange
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .env("RATE_LIMIT_PER_IP", "2/minute")
        .spawn()
        .await;

    // Act
    let garbage_one = app.vend_transcribe("not-a-jwt").await;
    let garbage_two = app.vend_transcribe("not-a-jwt").await;
    let valid = app.vend_transcribe(&app.session(&unique_user())).await;

    // Assert
    assert_eq!(garbage_one.status(), 401);
    assert_eq!(
        header(&garbage_one, "ratelimit-policy"),
        Some("\"ip\";q=2;w=60")
    );
    assert_eq!(header(&garbage_one, "ratelimit"), Some("\"ip\";r=1;t=30"));
    assert_eq!(garbage_two.status(), 401);
    assert_eq!(valid.status(), 429, "the address's quota is spent");
    assert!(header(&valid, "retry-after").is_some());
    assert_eq!(
        header(&valid, "ratelimit").map(|v| v.starts_with("\"ip\";r=0;")),
        Some(true)
    );
    let last = app.audit.events().pop().unwrap();
    assert_eq!(last.outcome, Outcome::RateLimited);
    assert_eq!(last.subject, None, "refused before the session was read");
    assert_eq!(last.client_ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn failed_session_checks_do_not_spend_the_users_quota() {
    // Arrange: a session for the user, signed with a key the service does not have.
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .env("RATE_LIMIT_PER_USER", "1/minute")
        .spawn()
        .await;
    let user = unique_user();
    let forged = SessionSigner::new(&format!("fake-other-secret-{}", unique_user())).session(&user);

    // Act
    for _ in 0..3 {
        assert_eq!(app.vend_transcribe(&forged).await.status(), 401);
    }
    let genuine = app.vend_transcribe(&app.session(&user)).await;

    // Assert
    assert_eq!(genuine.status(), 200);
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_an_untrusted_peer() {
    // Arrange
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .env("RATE_LIMIT_PER_IP", "1/minute")
        .spawn()
        .await;
    let session = app.session(&unique_user());

    // Act
    let first = app
        .vend_transcribe_with(&session, &[("x-forwarded-for", "198.51.100.1")])
        .await;
    let second = app
        .vend_transcribe_with(&session, &[("x-forwarded-for", "198.51.100.2")])
        .await;

    // Assert
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 429, "both came from 127.0.0.1");
    assert_eq!(
        app.audit.events()[0].client_ip.as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_limits_each_client_address() {
    // Arrange
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .env("RATE_LIMIT_PER_IP", "1/minute")
        .env("TRUSTED_PROXIES", "127.0.0.0/8")
        .spawn()
        .await;
    let session = app.session(&unique_user());

    // Act
    let a = app
        .vend_transcribe_with(&session, &[("x-forwarded-for", "198.51.100.1")])
        .await;
    let b = app
        .vend_transcribe_with(&session, &[("x-forwarded-for", "198.51.100.2")])
        .await;
    let a_again = app
        .vend_transcribe_with(&session, &[("x-forwarded-for", "198.51.100.1")])
        .await;

    // Assert
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    assert_eq!(a_again.status(), 429);
    let events = app.audit.events();
    assert_eq!(events[0].client_ip.as_deref(), Some("198.51.100.1"));
    assert_eq!(events[1].client_ip.as_deref(), Some("198.51.100.2"));
}

#[tokio::test]
async fn upstream_budget_refuses_when_spent() {
    // Arrange: no reuse, so each user costs an upstream call.
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .env("UPSTREAM_RATE_LIMIT", "1/minute")
        .env("TOKEN_REUSE_MIN_TTL", "0")
        .spawn()
        .await;

    // Act
    let first = app.vend_transcribe(&app.session(&unique_user())).await;
    let second = app.vend_transcribe(&app.session(&unique_user())).await;

    // Assert
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 429);
    assert!(header(&second, "retry-after").is_some());
    assert_eq!(app.standin.as_ref().unwrap().token_calls(), 1);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("token_vendor_rate_limit_refusals_total{kind=\"upstream\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_report_vends_and_upstream_calls() {
    // Arrange
    let app = TestApp::builder()
        .upstream(Upstream::StandIn(LIFETIME))
        .limits(Limits::Off)
        .spawn()
        .await;
    let session = app.session(&unique_user());

    // Act
    app.vend_transcribe(&session).await;
    app.vend_transcribe(&session).await;
    let response = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    for line in [
        "token_vendor_vends_total{outcome=\"issued\",scope=\"openid transcribe\",tenant=\"base\"} 1",
        "token_vendor_vends_total{outcome=\"reused\",scope=\"openid transcribe\",tenant=\"base\"} 1",
        "token_vendor_upstream_calls_total{result=\"ok\",tenant=\"base\"} 1",
        "token_vendor_upstream_call_duration_seconds_count{tenant=\"base\"} 1",
        "token_vendor_token_reuse_hits_total 1",
        "token_vendor_upstream_breaker_state{tenant=\"base\"} 0",
        "token_vendor_rate_limit_redis_fallback 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

use std::time::Duration;

use serde_json::json;
use token_vendor::audit::Outcome;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::support::*;

const BODY: &str = r#"{"scope":"transcribe"}"#;

async fn mock_app() -> TestApp {
    TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .upstream(Upstream::Mock)
        .spawn()
        .await
}

/// Vends once and checks the refusal: status, outcome, and that nothing from the
/// upstream (token, raw body) leaked into the answer.
async fn assert_refused(app: &TestApp, status: u16, outcome: Outcome, leak_markers: &[&str]) {
    let response = app.vend(&app.session("olga"), BODY).await;
    let (body, id) = problem(response, status).await;
    let text = body.to_string();
    for marker in leak_markers
        .iter()
        .chain(["eyJ", app.secrets.client.as_str()].iter())
    {
        assert!(!text.contains(marker), "{marker} leaked into {text}");
    }
    let event = assert_outcome(app, &id, outcome, status);
    assert_eq!(event.token_fingerprint, None);
}

#[tokio::test]
async fn accepts_keycloak_answer_with_default_scopes_in_any_order() {
    let app = mock_app().await;
    app.upstream_answers(app.keycloak_ok(
        Some("profile transcribe email openid"),
        "email openid profile transcribe",
    ))
    .await;
    let response = app.vend(&app.session("olga"), BODY).await;
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn refuses_a_token_wider_than_asked() {
    let app = mock_app().await;
    app.upstream_answers(app.keycloak_ok(
        Some("openid transcribe streams"),
        "openid transcribe streams",
    ))
    .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &[]).await;
}

#[tokio::test]
async fn refuses_a_full_access_token_when_keycloak_silently_drops_the_scope() {
    let app = mock_app().await;
    app.upstream_answers(app.keycloak_ok(Some("profile openid email"), "profile openid email"))
        .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &[]).await;
}

#[tokio::test]
async fn refuses_a_token_whose_claim_is_wider_than_its_scope_field() {
    let app = mock_app().await;
    app.upstream_answers(app.keycloak_ok(Some("openid transcribe"), "openid transcribe admin"))
        .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &[]).await;
}

#[tokio::test]
async fn checks_the_claim_when_the_scope_field_is_absent() {
    let app = mock_app().await;
    app.upstream_answers(app.keycloak_ok(None, "openid profile email"))
        .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &[]).await;
}

#[tokio::test]
async fn refuses_a_token_signed_by_a_key_the_realm_does_not_publish() {
    let app = mock_app().await;
    let forged = TestKey::generate().sign(&keycloak_claims("openid transcribe", 300));
    app.upstream_answers(ResponseTemplate::new(200).set_body_json(json!({
        "access_token": forged, "expires_in": 300, "token_type": "Bearer", "scope": "openid transcribe"
    })))
    .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &[]).await;
}

#[tokio::test]
async fn refuses_an_opaque_token_without_a_scope_field() {
    let app = mock_app().await;
    app.upstream_answers(ResponseTemplate::new(200).set_body_json(json!({
        "access_token": "opaque-token-value", "expires_in": 300, "token_type": "Bearer"
    })))
    .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &["opaque-token-value"]).await;
}

#[tokio::test]
async fn maps_invalid_client_to_502_without_the_upstream_body() {
    let app = mock_app().await;
    app.upstream_answers(ResponseTemplate::new(401).set_body_json(json!({
        "error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"
    })))
    .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &["Invalid client"]).await;
}

#[tokio::test]
async fn maps_invalid_scope_to_502() {
    let app = mock_app().await;
    app.upstream_answers(ResponseTemplate::new(400).set_body_json(json!({
        "error": "invalid_scope", "error_description": "Invalid scopes: openid transcribe"
    })))
    .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &["Invalid scopes"]).await;
}

#[tokio::test]
async fn maps_a_proxy_error_page_to_502() {
    let app = mock_app().await;
    app.upstream_answers(
        ResponseTemplate::new(502)
            .insert_header("content-type", "text/html")
            .set_body_string("<html><body>nginx bad gateway marker-html</body></html>"),
    )
    .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &["marker-html", "nginx"]).await;
}

#[tokio::test]
async fn maps_a_200_that_is_not_a_token_response_to_502() {
    let app = mock_app().await;
    app.upstream_answers(
        ResponseTemplate::new(200).set_body_string("<html>marker-login-page</html>"),
    )
    .await;
    assert_refused(&app, 502, Outcome::UpstreamError, &["marker-login-page"]).await;
}

#[tokio::test]
async fn maps_a_slow_upstream_to_504() {
    let app = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .upstream(Upstream::Mock)
        .env("UPSTREAM_TIMEOUT", "300ms")
        .spawn()
        .await;
    app.upstream_answers(
        app.keycloak_ok(Some("openid transcribe"), "openid transcribe")
            .set_delay(Duration::from_secs(3)),
    )
    .await;
    let started = std::time::Instant::now();
    assert_refused(&app, 504, Outcome::UpstreamError, &[]).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the deadline was kept"
    );
}

#[tokio::test]
async fn maps_an_unreachable_upstream_to_503() {
    // Bind then drop a listener so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .env("CORTI_AUTH_URL", format!("http://127.0.0.1:{port}"))
        .spawn()
        .await;
    let response = app.vend(&app.session("olga"), BODY).await;
    assert!(response.headers().get("retry-after").is_some());
    let (_, id) = problem(response, 503).await;
    assert_outcome(&app, &id, Outcome::Unavailable, 503);
}

#[tokio::test]
async fn mints_nothing_while_the_realm_keys_cannot_be_fetched() {
    // Arrange: the realm's certs fail (overriding the good ones the mock publishes);
    // the token endpoint itself would answer.
    let app = mock_app().await;
    Mock::given(method("GET"))
        .and(path(CERTS_PATH))
        .respond_with(ResponseTemplate::new(503))
        .with_priority(1)
        .mount(app.mock())
        .await;
    app.upstream_answers(app.keycloak_ok(Some("openid transcribe"), "openid transcribe"))
        .await;

    // Act + Assert: unavailable every time, also within the certs' refetch pause...
    for _ in 0..3 {
        assert_refused(&app, 503, Outcome::Unavailable, &[]).await;
    }
    // ...and no token was minted only to be thrown away.
    assert_eq!(app.upstream_token_calls().await, 0);
}

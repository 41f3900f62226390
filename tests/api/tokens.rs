use serde_json::Value;
use token_vendor::audit::Outcome;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::Mock;

use crate::support::*;

#[tokio::test]
async fn vend_returns_sdk_shaped_transcribe_token_with_no_store_headers() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = app
        .vend(&app.session("alice"), r#"{"scope":"transcribe"}"#)
        .await;

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["pragma"], "no-cache");
    let request_id = request_id_of(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tokenType"], "Bearer");
    assert_eq!(body["scope"], "openid transcribe");
    assert_eq!(body["tenantName"], "base");
    assert_eq!(body["environment"], "eu");
    let expires_in = body["expiresIn"].as_i64().unwrap();
    assert!((295..=300).contains(&expires_in), "{expires_in}");
    let expires_at = time::OffsetDateTime::parse(
        body["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!((expires_at.unix_timestamp() - now() - expires_in).abs() <= 1);
    assert_eq!(
        body.as_object().unwrap().len(),
        7,
        "no extra fields such as id_token: {body}"
    );
    let token = body["accessToken"].as_str().unwrap();
    let claims = app
        .standin
        .as_ref()
        .unwrap()
        .verify(token)
        .expect("a real upstream token");
    assert!(claims.scope.split(' ').any(|s| s == "transcribe"));

    let event = assert_outcome(&app, &request_id, Outcome::Issued, 200);
    assert_eq!(event.subject.as_deref(), Some("alice"));
    assert_eq!(event.session_id.as_deref(), Some("sid-1"));
    assert_eq!(event.scope.as_deref(), Some("openid transcribe"));
    assert!(event.token_fingerprint.unwrap().starts_with("hmac-sha256:"));
    assert!(event.token_expires_at.is_some());
    assert!(event.upstream_ms.is_some());
}

#[tokio::test]
async fn vend_grants_streams_and_both_scopes() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    for (asked, expected) in [
        ("streams", "openid streams"),
        ("streams transcribe", "openid transcribe streams"),
        ("openid transcribe streams", "openid transcribe streams"),
    ] {
        let response = app
            .vend(&app.session("bob"), &format!(r#"{{"scope":"{asked}"}}"#))
            .await;
        assert_eq!(response.status().as_u16(), 200, "{asked}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["scope"], expected);
    }
}

#[tokio::test]
async fn vend_asks_upstream_for_exactly_openid_plus_the_requested_scope() {
    let app = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .upstream(Upstream::Mock)
        .spawn()
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(header("Tenant-Name", "base"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("client_id=test-client"))
        .and(body_string_contains(
            format!("client_secret={}", app.secrets.client).as_str(),
        ))
        .and(body_string_contains("scope=openid+streams"))
        .respond_with(app.keycloak_ok(
            Some("openid streams profile email"),
            "openid streams profile email",
        ))
        .expect(1)
        .mount(app.mock())
        .await;

    let response = app
        .vend(&app.session("carol"), r#"{"scope":"streams"}"#)
        .await;

    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn vend_refuses_scope_injection_without_calling_upstream() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    for body in [
        r#"{"scope":"transcribe offline_access"}"#,
        r#"{"scope":"transcribe%20streams"}"#,
        r#"{"scope":"transcribe\tstreams"}"#,
        r#"{"scope":"admin"}"#,
        r#"{"scope":""}"#,
        r#"{"scope":"openid"}"#,
        r#"{"scope":["transcribe"]}"#,
        r#"{"scope":"transcribe","extra":1}"#,
        r#"{}"#,
        r#"not json"#,
        r#""#,
    ] {
        let response = app.vend(&app.session("mallory"), body).await;
        let (_, request_id) = problem(response, 400).await;
        assert_outcome(&app, &request_id, Outcome::InvalidRequest, 400);
    }
    assert_eq!(app.upstream_token_calls().await, 0);
}

#[tokio::test]
async fn vend_returns_413_for_a_large_body_and_415_for_non_json() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let session = app.session("dave");
    let large = format!(r#"{{"scope":"transcribe","pad":"{}"}}"#, "x".repeat(10_000));
    let response = app.vend(&session, &large).await;
    let (_, id) = problem(response, 413).await;
    assert_outcome(&app, &id, Outcome::InvalidRequest, 413);

    let response = app
        .post_tokens()
        .bearer_auth(&session)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("scope=transcribe")
        .send()
        .await
        .unwrap();
    let (_, id) = problem(response, 415).await;
    assert_outcome(&app, &id, Outcome::InvalidRequest, 415);
    assert_eq!(app.upstream_token_calls().await, 0);
}

#[tokio::test]
async fn vend_accepts_json_content_type_with_charset() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = app
        .post_tokens()
        .bearer_auth(app.session("erin"))
        .header("Content-Type", "application/json; charset=utf-8")
        .body(r#"{"scope":"transcribe"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn vend_returns_403_when_the_session_does_not_allow_the_scope() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let session = app.session_with(serde_json::json!({
        "sub": "frank", "exp": now() + 600, "corti_scopes": ["transcribe"]
    }));

    let response = app.vend(&session, r#"{"scope":"streams"}"#).await;
    let (_, id) = problem(response, 403).await;
    assert_outcome(&app, &id, Outcome::Forbidden, 403);

    let response = app.vend(&session, r#"{"scope":"transcribe"}"#).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(app.upstream_token_calls().await, 1);
}

#[tokio::test]
async fn vend_sends_no_token_when_the_audit_store_cannot_record_it() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    app.audit.set_failing(true);

    let response = app
        .vend(&app.session("grace"), r#"{"scope":"transcribe"}"#)
        .await;

    assert!(response.headers().get("retry-after").is_some());
    let (body, _) = problem(response, 503).await;
    assert!(
        !body.to_string().contains("eyJ"),
        "no token in the error: {body}"
    );

    app.audit.set_failing(false);
    let response = app
        .vend(&app.session("grace"), r#"{"scope":"transcribe"}"#)
        .await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "vending resumes once the store is back"
    );
}

#[tokio::test]
async fn wrong_method_and_unknown_path_get_problem_json() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = app
        .http
        .get(format!("{}/v1/tokens", app.address))
        .send()
        .await
        .unwrap();
    problem(response, 405).await;
    let response = app
        .http
        .get(format!("{}/nope", app.address))
        .send()
        .await
        .unwrap();
    problem(response, 404).await;
}

#[tokio::test]
async fn concurrent_vends_each_have_their_own_audit_event() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let session = app.session("heidi");
    let responses = futures_util::future::join_all(
        (0..20).map(|_| app.vend(&session, r#"{"scope":"transcribe"}"#)),
    )
    .await;
    for response in responses {
        assert_eq!(response.status().as_u16(), 200);
        let id = request_id_of(&response);
        let event = app.event_for(&id);
        assert!(event.outcome.hands_out_token(), "{event:?}");
        assert!(event.token_fingerprint.is_some());
    }
    assert_eq!(app.audit.events().len(), 20);
}

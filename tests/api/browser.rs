use token_vendor::audit::Outcome;

use crate::support::*;

const BODY: &str = r#"{"scope":"transcribe"}"#;

fn cookie_request(app: &TestApp, origin: Option<&str>) -> reqwest::RequestBuilder {
    let mut request = app
        .post_tokens()
        .header("Cookie", format!("session={}", app.session("pat")))
        .header("Content-Type", "application/json")
        .body(BODY);
    if let Some(origin) = origin {
        request = request.header("Origin", origin);
    }
    request
}

#[tokio::test]
async fn preflight_from_an_allowed_origin_allows_credentials() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/tokens", app.address),
        )
        .header("Origin", APP_ORIGIN)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], APP_ORIGIN);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("content-type"));
}

#[tokio::test]
async fn preflight_from_other_origins_is_refused_and_audited() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    for origin in [
        "https://evil.example.test",
        "null",
        "https://app.example.test.evil.test",
        "http://app.example.test",
        "https://app.example.test:8443",
    ] {
        let response = app
            .http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/tokens", app.address),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
            .await
            .unwrap();
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
        let (_, id) = problem(response, 403).await;
        let event = assert_outcome(&app, &id, Outcome::Forbidden, 403);
        assert_eq!(event.origin.as_deref(), Some(origin));
    }
}

#[tokio::test]
async fn cookie_request_from_allowed_origin_gets_token_and_cors_headers() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = cookie_request(&app, Some(APP_ORIGIN)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        APP_ORIGIN
    );
    assert_eq!(
        response.headers()["access-control-allow-credentials"],
        "true"
    );
    let id = request_id_of(&response);
    let event = assert_outcome(&app, &id, Outcome::Issued, 200);
    assert_eq!(event.origin.as_deref(), Some(APP_ORIGIN));
}

#[tokio::test]
async fn cookie_request_without_an_allowed_origin_is_refused_as_csrf() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    for origin in [None, Some("https://evil.example.test"), Some("null")] {
        let response = cookie_request(&app, origin).send().await.unwrap();
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
        let (_, id) = problem(response, 403).await;
        let event = assert_outcome(&app, &id, Outcome::Forbidden, 403);
        assert_eq!(event.subject.as_deref(), Some("pat"));
    }
    assert_eq!(app.upstream_token_calls().await, 0);
}

#[tokio::test]
async fn bearer_request_from_a_disallowed_origin_is_refused() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = app
        .post_tokens()
        .bearer_auth(app.session("quinn"))
        .header("Origin", "https://evil.example.test")
        .header("Content-Type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    problem(response, 403).await;
    assert_eq!(app.upstream_token_calls().await, 0);
}

#[tokio::test]
async fn no_origin_is_allowed_by_default() {
    let app = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .env("ALLOWED_ORIGINS", String::new())
        .spawn()
        .await;
    let response = cookie_request(&app, Some(APP_ORIGIN)).send().await.unwrap();
    problem(response, 403).await;
}

#[tokio::test]
async fn cookie_from_a_foreign_origin_is_refused_as_csrf_even_with_a_bad_session() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let expired = app.session_with(serde_json::json!({"sub": "pat", "exp": now() - 600}));
    let response = app
        .post_tokens()
        .header("Cookie", format!("session={expired}"))
        .header("Origin", "https://evil.example.test")
        .header("Content-Type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    let (_, id) = problem(response, 403).await;
    assert_outcome(&app, &id, Outcome::Forbidden, 403);
}

#[tokio::test]
async fn only_the_token_endpoint_answers_other_origins() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = app
        .http
        .get(format!("{}/v1/audit/events", app.address))
        .bearer_auth(app.session("pat"))
        .header("Origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

use crate::support::*;

#[tokio::test]
async fn health_ready_and_openapi_answer() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let health = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let spec = app
        .http
        .get(format!("{}/openapi.yaml", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(spec.status().as_u16(), 200);
    let text = spec.text().await.unwrap();
    assert!(text.contains("/v1/tokens"));
}

#[tokio::test]
async fn readyz_reports_an_unavailable_audit_store() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    app.audit.set_failing(true);
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    problem(ready, 503).await;
}

#[tokio::test]
async fn request_id_is_kept_when_sane_and_replaced_otherwise() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let kept = app
        .http
        .get(format!("{}/healthz", app.address))
        .header("X-Request-Id", "abc-123.def")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123.def");
    let replaced = app
        .http
        .get(format!("{}/healthz", app.address))
        .header("X-Request-Id", "bad id with spaces <script>")
        .send()
        .await
        .unwrap();
    let id = replaced.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn vend_audit_event_carries_the_callers_request_id() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = app
        .post_tokens()
        .bearer_auth(app.session("rita"))
        .header("X-Request-Id", "trace-42")
        .header("Content-Type", "application/json")
        .body(r#"{"scope":"transcribe"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    app.event_for("trace-42");
}

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
async fn readyz_answers_503_once_the_service_drains_while_healthz_stays_ok() {
    let app = TestApp::builder().spawn().await;
    let get = |path: &'static str| app.http.get(format!("{}{path}", app.address)).send();
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    app.draining.begin();

    let (body, _) = problem(get("/readyz").await.unwrap(), 503).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("shutting down"),
        "{body}"
    );
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
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

#[tokio::test]
async fn side_endpoints_have_a_per_address_limit_of_their_own() {
    // Arrange: three requests a minute per address.
    let app = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .env("RATE_LIMIT_PER_IP", "3/minute")
        .spawn()
        .await;
    let reader = app.reader();
    let side = |method: reqwest::Method, path: &str| {
        let request = app
            .http
            .request(method.clone(), format!("{}{path}", app.address));
        match (method.as_str(), path) {
            ("OPTIONS", _) => request
                .header("Origin", APP_ORIGIN)
                .header("Access-Control-Request-Method", "POST"),
            (_, "/v1/audit/events") => request.bearer_auth(&reader),
            _ => request,
        }
    };
    let endpoints = [
        (reqwest::Method::GET, "/readyz"),
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/v1/audit/events"),
        (reqwest::Method::OPTIONS, "/v1/tokens"),
    ];

    // Act: each endpoint in turn, until the address's side budget is spent.
    let mut statuses = Vec::new();
    for (method, path) in &endpoints {
        let response = side(method.clone(), path).send().await.unwrap();
        statuses.push(response.status().as_u16());
    }
    let refused = side(reqwest::Method::GET, "/readyz").send().await.unwrap();

    // Assert: three answered, then 429 with Retry-After, for every side endpoint...
    // (The in-memory audit store of this app keeps no events: the audit API says 503.)
    assert_eq!(statuses[..3], [200, 200, 503], "{statuses:?}");
    assert_eq!(statuses[3], 429, "{statuses:?}");
    assert!(header(&refused, "retry-after").is_some());
    let (body, _) = problem(refused, 429).await;
    assert_eq!(body["type"], "urn:token-vendor:problem:rate-limited");
    // ...while liveness stays cheap and unlimited, and vends keep their own budget.
    for _ in 0..5 {
        let health = app
            .http
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status().as_u16(), 200);
    }
    assert_eq!(
        app.vend_transcribe(&app.session(&unique_user()))
            .await
            .status()
            .as_u16(),
        200
    );
}

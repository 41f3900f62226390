//! Opaque sessions checked by RFC 7662 introspection against a real authorization
//! server (`oidc-provider`, see `support::introspection`), not a mock.

use std::time::Duration;

use serde_json::json;
use token_vendor::audit::Outcome;

use crate::support::introspection::IntrospectionServer;
use crate::support::*;

const BODY: &str = r#"{"scope":"transcribe"}"#;

async fn app_for(server: &IntrospectionServer, extra: &[(&str, &str)]) -> TestApp {
    TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .envs(server.settings())
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .spawn()
        .await
}

async fn vend(app: &TestApp, session: &str) -> reqwest::Response {
    app.vend_request(Some(session), BODY, &new_request_id())
        .await
}

fn assert_no_credential_in(event: &token_vendor::audit::AuditEvent, credential: &str) {
    let text = format!("{event:?}");
    assert!(
        !text.contains(credential),
        "the session credential is in the audit event: {text}"
    );
}

#[tokio::test]
async fn opaque_session_vends_for_the_introspected_subject_from_bearer_or_cookie() {
    let Some(server) = IntrospectionServer::start() else {
        return;
    };
    let app = app_for(&server, &[]).await;
    let user = unique_user();
    let session = server.session(&user).await;

    let response = vend(&app, &session).await;
    assert_eq!(response.status().as_u16(), 200);
    let id = request_id_of(&response);
    let body = json_body(response).await;
    assert_eq!(body["scope"], "openid transcribe");
    let event = assert_outcome(&app, &id, Outcome::Issued, 200);
    assert_eq!(event.subject.as_deref(), Some(user.as_str()));
    assert_no_credential_in(&event, &session);

    // The session cookie carries an opaque session as it carries a JWT.
    let response = app
        .post_tokens()
        .header("Cookie", format!("session={session}"))
        .header("Origin", APP_ORIGIN)
        .header("Content-Type", "application/json")
        .body(BODY)
        .send()
        .await
        .expect("cookie vend");
    assert_eq!(response.status().as_u16(), 200);
    let event = app.event_for(&request_id_of(&response));
    assert_eq!(event.subject.as_deref(), Some(user.as_str()));
}

#[tokio::test]
async fn introspected_scopes_narrow_what_a_user_may_have() {
    let Some(server) = IntrospectionServer::start() else {
        return;
    };
    let app = app_for(&server, &[]).await;

    // The token's OAuth scope names only `streams` of the Corti scopes: transcribe is
    // not this user's.
    let streams_only = server
        .token(Some(&unique_user()), "openid streams", json!({}))
        .await;
    let (body, id) = problem(vend(&app, &streams_only).await, 403).await;
    assert_eq!(body["type"], "urn:token-vendor:problem:scope-not-allowed");
    assert_outcome(&app, &id, Outcome::Forbidden, 403);
    let streams = app
        .vend(&streams_only, r#"{"scope":"streams"}"#)
        .await
        .status();
    assert_eq!(streams.as_u16(), 200);

    // `corti_scopes` in the answer wins over the OAuth scope.
    let narrowed = server
        .token(
            Some(&unique_user()),
            "openid transcribe streams",
            json!({"corti_scopes": ["streams"]}),
        )
        .await;
    problem(vend(&app, &narrowed).await, 403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspected_roles_open_the_audit_log_as_session_roles_do() {
    let Some(server) = IntrospectionServer::start() else {
        return;
    };
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let app = TestApp::builder()
        .store(Store::db(&db))
        .envs(server.settings())
        .spawn()
        .await;
    let reader = server
        .token(Some("auditor"), "openid", json!({"roles": [READER_ROLE]}))
        .await;
    let plain = server.session(&unique_user()).await;
    assert_eq!(app.get_events(Some(&reader), "limit=1").await.status(), 200);
    assert_eq!(app.get_events(Some(&plain), "limit=1").await.status(), 403);
    db.cleanup().await;
}

#[tokio::test]
async fn inactive_revoked_expired_or_subjectless_sessions_are_401_and_audited() {
    let Some(server) = IntrospectionServer::start() else {
        return;
    };
    let app = app_for(&server, &[]).await;

    let revoked = server.session(&unique_user()).await;
    server.revoke(&revoked).await;
    let expired = server.session_expiring(&unique_user(), 1).await;
    let no_subject = server.token(None, "openid transcribe", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = format!("never-issued-{}", token_vendor::dev::random_hex(16));

    for session in [&revoked, &expired, &no_subject, &unknown] {
        let response = vend(&app, session).await;
        assert!(response.headers().contains_key("www-authenticate"));
        let (body, id) = problem(response, 401).await;
        assert_eq!(body["type"], "urn:token-vendor:problem:unauthenticated");
        let event = assert_outcome(&app, &id, Outcome::Unauthenticated, 401);
        assert_eq!(event.subject, None);
        assert_no_credential_in(&event, session);
    }
    assert_eq!(app.upstream_token_calls().await, 0);
}

#[tokio::test]
async fn introspection_down_is_503_audited_and_vending_resumes_when_it_is_back() {
    let Some(mut server) = IntrospectionServer::start() else {
        return;
    };
    let app = app_for(&server, &[]).await;
    assert_eq!(
        vend(&app, &server.session("before").await).await.status(),
        200
    );

    let unchecked = server.session(&unique_user()).await;
    server.stop();
    let response = vend(&app, &unchecked).await;
    assert!(response.headers().contains_key("retry-after"));
    let (body, id) = problem(response, 503).await;
    assert_eq!(
        body["type"],
        "urn:token-vendor:problem:session-keys-unavailable"
    );
    let event = assert_outcome(&app, &id, Outcome::Unavailable, 503);
    assert_no_credential_in(&event, &unchecked);
    // Readiness does not hang on the app's identity provider: each vend says 503.
    assert_eq!(app.readyz().await, 200);

    server.restart();
    let session = server.session(&unique_user()).await;
    assert_eq!(vend(&app, &session).await.status(), 200);
}

#[tokio::test]
async fn an_introspection_endpoint_slower_than_the_call_timeout_is_503() {
    let Some(server) = IntrospectionServer::start() else {
        return;
    };
    let app = app_for(&server, &[]).await;
    let session = server.session(&unique_user()).await;
    server.delay(Duration::from_secs(7)).await;
    let started = std::time::Instant::now();
    let (_, id) = problem(vend(&app, &session).await, 503).await;
    assert!(started.elapsed() < Duration::from_secs(7), "no timeout");
    assert_outcome(&app, &id, Outcome::Unavailable, 503);
}

#[tokio::test]
async fn an_active_answer_is_reused_for_the_cache_ttl_and_a_revocation_shows_after_it() {
    let Some(server) = IntrospectionServer::start() else {
        return;
    };
    let app = app_for(&server, &[("SESSION_INTROSPECTION_CACHE_TTL", "2s")]).await;
    let session = server.session(&unique_user()).await;

    assert_eq!(vend(&app, &session).await.status(), 200);
    let after_first = server.introspections().await;
    assert_eq!(vend(&app, &session).await.status(), 200);
    assert_eq!(
        server.introspections().await,
        after_first,
        "a second vend within the TTL asked the endpoint again"
    );

    // The trade-off of the cache: a revoked session is accepted until its answer ages
    // out (at most SESSION_INTROSPECTION_CACHE_TTL), and not a moment longer.
    server.revoke(&session).await;
    assert_eq!(vend(&app, &session).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    problem(vend(&app, &session).await, 401).await;
}

#[tokio::test]
async fn concurrent_checks_of_one_session_share_one_introspection_call() {
    let Some(server) = IntrospectionServer::start() else {
        return;
    };
    let app = app_for(&server, &[]).await;
    let session = server.session(&unique_user()).await;
    server.delay(Duration::from_millis(300)).await;
    let before = server.introspections().await;
    let answers = futures_util::future::join_all((0..6).map(|_| vend(&app, &session))).await;
    for answer in answers {
        assert_eq!(answer.status().as_u16(), 200);
    }
    assert_eq!(server.introspections().await, before + 1);
}

#[tokio::test]
async fn a_fixed_client_secret_file_is_picked_up_without_a_restart() {
    let Some(server) = IntrospectionServer::start() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "tv-introspection-{}",
        token_vendor::dev::random_hex(6)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("introspection-secret");
    std::fs::write(&file, "fake-wrong-secret\n").expect("write secret");
    let path = file.to_str().expect("utf-8 path");
    let app = app_for(
        &server,
        &[
            ("SESSION_INTROSPECTION_CLIENT_SECRET", ""),
            ("SESSION_INTROSPECTION_CLIENT_SECRET_FILE", path),
        ],
    )
    .await;
    let session = server.session(&unique_user()).await;
    // The endpoint refuses this service's credentials: the operator's fault, not the
    // user's, so 503 rather than 401.
    problem(vend(&app, &session).await, 503).await;

    std::fs::write(&file, format!("{}\n", server.client_secret)).expect("fix secret");
    let mut status = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = vend(&app, &session).await.status().as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "the new secret was not picked up within 3 s");
    let _ = std::fs::remove_dir_all(&dir);
}

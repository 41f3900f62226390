use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use token_vendor::audit::Outcome;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

const BODY: &str = r#"{"scope":"transcribe"}"#;

async fn assert_unauthenticated(app: &TestApp, session: &str) {
    let response = app.vend(session, BODY).await;
    let www = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (_, id) = problem(response, 401).await;
    assert!(www.is_some_and(|w| w.starts_with("Bearer")));
    let event = assert_outcome(app, &id, Outcome::Unauthenticated, 401);
    assert_eq!(event.subject, None);
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn vend_returns_401_without_a_session() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = app
        .post_tokens()
        .header("Content-Type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    let (_, id) = problem(response, 401).await;
    assert_outcome(&app, &id, Outcome::Unauthenticated, 401);

    let response = app
        .post_tokens()
        .header("Authorization", format!("Basic {}", app.session("x")))
        .header("Content-Type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    problem(response, 401).await;
    assert_eq!(app.upstream_token_calls().await, 0);
}

#[tokio::test]
async fn vend_refuses_forged_expired_and_malformed_sessions() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let claims = json!({"sub": "eve", "exp": now() + 600});
    let valid = app.session_with(claims.clone());
    let parts: Vec<&str> = valid.split('.').collect();

    // alg none, with and without a signature part.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    assert_unauthenticated(&app, &none).await;
    let none_upper = format!("{}.{}.", b64(&json!({"alg": "NONE"})), b64(&claims));
    assert_unauthenticated(&app, &none_upper).await;
    // Signed with another key.
    let other = SessionSigner::new("fake-other-secret-that-is-long-enough").sign(&claims);
    assert_unauthenticated(&app, &other).await;
    // Payload swapped under a valid signature.
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&json!({"sub": "admin", "exp": now() + 600})),
        parts[2]
    );
    assert_unauthenticated(&app, &tampered).await;
    // Expired beyond the leeway; not yet valid; no sub; no exp.
    assert_unauthenticated(
        &app,
        &app.session_with(json!({"sub": "eve", "exp": now() - 120})),
    )
    .await;
    assert_unauthenticated(
        &app,
        &app.session_with(json!({"sub": "eve", "exp": now() + 600, "nbf": now() + 300})),
    )
    .await;
    assert_unauthenticated(&app, &app.session_with(json!({"exp": now() + 600}))).await;
    assert_unauthenticated(&app, &app.session_with(json!({"sub": "eve"}))).await;
    assert_unauthenticated(
        &app,
        &app.session_with(json!({"sub": "", "exp": now() + 600})),
    )
    .await;
    // Garbage.
    for garbage in ["garbage", "a.b.c", "....", &"x".repeat(9000)] {
        assert_unauthenticated(&app, garbage).await;
    }
    assert_eq!(app.upstream_token_calls().await, 0);
}

#[tokio::test]
async fn vend_tolerates_small_clock_skew() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let session = app.session_with(json!({"sub": "eve", "exp": now() - 5, "nbf": now() + 5}));
    assert_eq!(app.vend(&session, BODY).await.status().as_u16(), 200);
}

#[tokio::test]
async fn vend_checks_issuer_and_audience_when_configured() {
    let app = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .env("SESSION_JWT_ISSUER", "https://id.example.test")
        .env("SESSION_JWT_AUDIENCE", "token-vendor")
        .spawn()
        .await;
    let good = json!({"sub": "ivan", "exp": now() + 600, "iss": "https://id.example.test", "aud": "token-vendor"});
    assert_eq!(
        app.vend(&app.session_with(good), BODY)
            .await
            .status()
            .as_u16(),
        200
    );
    for bad in [
        json!({"sub": "ivan", "exp": now() + 600, "iss": "https://evil.example.test", "aud": "token-vendor"}),
        json!({"sub": "ivan", "exp": now() + 600, "iss": "https://id.example.test", "aud": "other"}),
        json!({"sub": "ivan", "exp": now() + 600, "aud": "token-vendor"}),
        json!({"sub": "ivan", "exp": now() + 600, "iss": "https://id.example.test"}),
    ] {
        assert_unauthenticated(&app, &app.session_with(bad)).await;
    }
}

#[tokio::test]
async fn public_key_sessions_refuse_hmac_signed_with_the_public_key() {
    let key = TestKey::generate();
    let dir = std::env::temp_dir().join(format!("tv-pem-{}", token_vendor::dev::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let pem_path = dir.join("session.pub.pem");
    std::fs::write(&pem_path, &key.public_pem).unwrap();
    let app = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .env("SESSION_JWT_SECRET", String::new())
        .env(
            "SESSION_JWT_PUBLIC_KEY_FILE",
            pem_path.display().to_string(),
        )
        .env("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss")
        .spawn()
        .await;
    let claims = json!({"sub": "judy", "exp": now() + 600});

    assert_eq!(
        app.vend(&key.sign(&claims), BODY).await.status().as_u16(),
        200
    );

    // The classic confusion: HS256 keyed with the (public) PEM text.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.public_pem.as_bytes()),
    )
    .unwrap();
    assert_unauthenticated(&app, &confused).await;
    // The HMAC session secret configured elsewhere is not accepted either.
    assert_unauthenticated(&app, &app.session_with(claims.clone())).await;
    // Signed by a different RSA key.
    assert_unauthenticated(&app, &TestKey::generate().sign(&claims)).await;
}

#[tokio::test]
async fn jwks_sessions_refetch_on_unknown_kid_and_refuse_unknown_keys() {
    let idp = MockServer::start().await;
    let first = TestKey::generate();
    let rotated = TestKey::generate();
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [first.jwk]})))
        .up_to_n_times(1)
        .mount(&idp)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"keys": [first.jwk, rotated.jwk]})),
        )
        .mount(&idp)
        .await;
    let app = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .env("SESSION_JWT_SECRET", String::new())
        .env("SESSION_JWKS_URL", format!("{}/jwks", idp.uri()))
        .env("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss")
        .spawn()
        .await;
    let claims = json!({"sub": "kim", "exp": now() + 600});

    assert_eq!(
        app.vend(&first.sign(&claims), BODY).await.status().as_u16(),
        200
    );
    // Unknown kids refetch the JWKS at most once every few seconds...
    assert_unauthenticated(&app, &rotated.sign(&claims)).await;
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    // ...and a key rotated in at the IdP is then picked up.
    assert_eq!(
        app.vend(&rotated.sign(&claims), BODY)
            .await
            .status()
            .as_u16(),
        200
    );
    // ...but a key the IdP never published is refused, and does not cause a refetch storm.
    let stranger = TestKey::generate();
    for _ in 0..5 {
        assert_unauthenticated(&app, &stranger.sign(&claims)).await;
    }
    let fetches = idp.received_requests().await.unwrap().len();
    assert!(fetches <= 3, "JWKS fetched {fetches} times");
}

#[tokio::test]
async fn cookie_session_is_accepted_from_an_allowed_origin() {
    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let response = app
        .post_tokens()
        .header("Cookie", format!("session={}", app.session("leo")))
        .header("Origin", APP_ORIGIN)
        .header("Content-Type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn an_identity_provider_outage_is_unavailable_never_signed_out() {
    // Arrange: the IdP's JWKS has never answered (a cold start during an outage).
    let idp = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&idp)
        .await;
    let app = TestApp::builder()
        .env("SESSION_JWT_SECRET", String::new())
        .env("SESSION_JWKS_URL", format!("{}/jwks", idp.uri()))
        .env("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss")
        .spawn()
        .await;
    let session = TestKey::generate().sign(&json!({"sub": "kim", "exp": now() + 600}));

    // Act + Assert: every attempt, including those within the refetch pause, says
    // "try again soon", and none is audited as a signed-out user.
    for attempt in 0..3 {
        let response = app.vend(&session, BODY).await;
        assert!(
            header(&response, "retry-after").is_some(),
            "attempt {attempt}"
        );
        let (body, id) = problem(response, 503).await;
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("session-keys-unavailable")),
            "attempt {attempt}: {body}"
        );
        assert_outcome(&app, &id, Outcome::Unavailable, 503);
    }
    assert_eq!(app.upstream_token_calls().await, 0);
}

/// An app whose sessions come from a JWKS that first publishes `first` and `kept`, and
/// from its second fetch on `kept` only (the identity provider withdrew `first`).
async fn app_with_withdrawn_key(
    first: &TestKey,
    kept: &TestKey,
    extra: &[(&str, &str)],
) -> (TestApp, MockServer) {
    let idp = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"keys": [first.jwk, kept.jwk]})),
        )
        .up_to_n_times(1)
        .mount(&idp)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [kept.jwk]})))
        .mount(&idp)
        .await;
    let app = TestApp::builder()
        .limits(Limits::Off)
        .env("SESSION_JWT_SECRET", String::new())
        .env("SESSION_JWKS_URL", format!("{}/jwks", idp.uri()))
        .env("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss")
        .envs(extra.iter().map(|(k, v)| (*k, *v)))
        .spawn()
        .await;
    // The start-up fetch has the first set.
    assert!(
        eventually(std::time::Duration::from_secs(3), || async {
            idp.received_requests().await.unwrap_or_default().len() == 1
        })
        .await
    );
    (app, idp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refetches_the_session_jwks_so_a_withdrawn_key_is_refused_at_once() {
    let (first, kept) = (TestKey::generate(), TestKey::generate());
    let (app, _idp) = app_with_withdrawn_key(&first, &kept, &[]).await;
    let claims = json!({"sub": "kim", "exp": now() + 600});
    assert_eq!(app.vend(&first.sign(&claims), BODY).await.status(), 200);

    app.reloader.reload_all();

    let refused = eventually(std::time::Duration::from_secs(2), || async {
        app.vend(&first.sign(&claims), BODY).await.status() == 401
    })
    .await;
    assert!(refused, "the withdrawn key is refused after SIGHUP");
    assert_eq!(app.vend(&kept.sign(&claims), BODY).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_session_key_is_refused_within_the_refresh_interval() {
    let (first, kept) = (TestKey::generate(), TestKey::generate());
    let (app, _idp) =
        app_with_withdrawn_key(&first, &kept, &[("SESSION_JWKS_REFRESH_INTERVAL", "1s")]).await;
    let claims = json!({"sub": "kim", "exp": now() + 600});
    assert_eq!(app.vend(&first.sign(&claims), BODY).await.status(), 200);

    // Past the interval, a session check refreshes the set behind its answer.
    let refused = eventually(std::time::Duration::from_secs(4), || async {
        app.vend(&first.sign(&claims), BODY).await.status() == 401
    })
    .await;
    assert!(refused, "withdrawn within the refresh interval");
}

#[tokio::test]
async fn a_session_refused_on_its_clock_says_by_how_much_and_the_leeway_is_a_setting() {
    let app = TestApp::builder()
        .env("SESSION_LEEWAY", "10s")
        .spawn()
        .await;

    // Within the default 30 s but not within 10 s.
    let expired = app.session_with(json!({"sub": "eve", "exp": now() - 20}));
    let response = app.vend(&expired, BODY).await;
    let (_, id) = problem(response, 401).await;
    let event = assert_outcome(&app, &id, Outcome::Unauthenticated, 401);
    let detail = event.detail.unwrap_or_default();
    assert!(
        detail.contains("expired 2") && detail.contains("s ago (exp), beyond the 10 s leeway"),
        "{detail}"
    );

    let early = app.session_with(json!({"sub": "eve", "exp": now() + 600, "nbf": now() + 120}));
    let (_, id) = problem(app.vend(&early, BODY).await, 401).await;
    let detail = assert_outcome(&app, &id, Outcome::Unauthenticated, 401)
        .detail
        .unwrap_or_default();
    assert!(
        detail.contains("not valid for another 1")
            && detail.contains("(nbf), beyond the 10 s leeway"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_planted_cookie_does_not_turn_a_key_outage_into_a_sign_out() {
    // Arrange: the IdP's JWKS is down, and a sibling subdomain planted a garbage cookie
    // of the session cookie's name, sent before the user's own.
    let idp = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&idp)
        .await;
    let app = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .env("SESSION_JWT_SECRET", String::new())
        .env("SESSION_JWKS_URL", format!("{}/jwks", idp.uri()))
        .env("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss")
        .spawn()
        .await;
    let session = TestKey::generate().sign(&json!({"sub": "kim", "exp": now() + 600}));

    for cookie in [
        format!("session=garbage; session={session}"),
        format!("session={session}; session=garbage"),
    ] {
        let response = app
            .post_tokens()
            .header("Cookie", cookie.clone())
            .header("Origin", APP_ORIGIN)
            .header("Content-Type", "application/json")
            .body(BODY)
            .send()
            .await
            .unwrap();
        let (body, id) = problem(response, 503).await;
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("session-keys-unavailable")),
            "{cookie}: {body}"
        );
        assert_outcome(&app, &id, Outcome::Unavailable, 503);
    }
}

/// An introspection endpoint answers for every active token of its provider: one issued
/// to another application of the same provider must not be a session here.
#[tokio::test]
async fn an_opaque_session_issued_to_another_client_is_refused() {
    let idp = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/introspect"))
        .and(wiremock::matchers::body_string_contains("token=ours"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"active": true, "sub": "kim", "client_id": "our-app", "exp": now() + 600}),
        ))
        .mount(&idp)
        .await;
    Mock::given(method("POST"))
        .and(path("/introspect"))
        .and(wiremock::matchers::body_string_contains("token=theirs"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"active": true, "sub": "kim", "client_id": "other-app", "aud": ["other-api"], "exp": now() + 600}),
        ))
        .mount(&idp)
        .await;
    Mock::given(method("POST"))
        .and(path("/introspect"))
        .and(wiremock::matchers::body_string_contains("token=audience"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"active": true, "sub": "kim", "client_id": "other-app", "aud": ["x", "our-app"], "exp": now() + 600}),
        ))
        .mount(&idp)
        .await;
    let settings = |audience: &str| {
        TestApp::builder()
            .env("SESSION_JWT_SECRET", String::new())
            .env(
                "SESSION_INTROSPECTION_URL",
                format!("{}/introspect", idp.uri()),
            )
            .env("SESSION_INTROSPECTION_CLIENT_ID", "token-vendor")
            .env(
                "SESSION_INTROSPECTION_CLIENT_SECRET",
                "fake-introspection-secret",
            )
            .env("SESSION_INTROSPECTION_AUDIENCE", audience.to_owned())
    };
    let app = settings("our-app").spawn().await;
    assert_eq!(app.vend("ours", BODY).await.status().as_u16(), 200);
    assert_eq!(app.vend("audience", BODY).await.status().as_u16(), 200);
    assert_unauthenticated(&app, "theirs").await;

    // The explicit opt-out accepts any client's tokens.
    let any = settings("*").spawn().await;
    assert_eq!(any.vend("theirs", BODY).await.status().as_u16(), 200);
}

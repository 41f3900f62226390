//! Mistakes that parse: `check-config --probe` talks to each dependency once and gives
//! one verdict line per check; `serve` is not ready while no session key was ever
//! loaded; a store that cannot be reached is named with what the connection met.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::serve_process::ServeProcess;
use crate::support::*;

/// A tenant's stand-in auth server and the credentials it accepts.
struct Upstream {
    standin: AuthStandIn,
    client_id: String,
    secret: String,
}

fn upstream() -> Upstream {
    let client_id = format!("probe-client-{}", random_hex(4));
    let secret = format!("fake-client-secret-{}", random_hex(12));
    let standin = AuthStandIn::start(StandInConfig {
        client_id: client_id.clone(),
        client_secret: secret.clone(),
        token_lifetime: Duration::from_secs(300),
    })
    .expect("stand-in starts");
    Upstream {
        standin,
        client_id,
        secret,
    }
}

/// Complete settings for `serve` against `upstream`, on a fresh SQLite file.
fn settings(upstream: &Upstream) -> Vec<(String, String)> {
    let dir = std::env::temp_dir().join(format!("tv-probe-{}", random_hex(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    [
        ("CORTI_ENVIRONMENT", "eu".to_owned()),
        ("CORTI_AUTH_URL", upstream.standin.base_url().to_owned()),
        ("CORTI_CLIENT_ID", upstream.client_id.clone()),
        ("CORTI_CLIENT_SECRET", upstream.secret.clone()),
        (
            "SESSION_JWT_SECRET",
            format!("fake-session-secret-{}", random_hex(16)),
        ),
        ("AUDIT_HMAC_KEY", audit_key().to_owned()),
        // These tests are about the probes; signing is tested in `cli`.
        ("AUDIT_ALLOW_UNSIGNED", "true".to_owned()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("audit.db").display()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn with(mut env: Vec<(String, String)>, changes: &[(&str, String)]) -> Vec<(String, String)> {
    for (k, v) in changes {
        env.retain(|(key, _)| key != k);
        if !v.is_empty() {
            env.push(((*k).to_owned(), v.clone()));
        }
    }
    env
}

fn probe(env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_token-vendor"))
        .args(["check-config", "--probe"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("binary runs")
}

/// The verdict line of one check.
fn verdict<'a>(out: &'a str, check: &str) -> &'a str {
    let prefix = format!("probe {check}: ");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no verdict for {check}: {out}"))
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_passes_with_working_dependencies_and_makes_one_token_call_per_tenant() {
    let upstream = upstream();
    let mut env = settings(&upstream);
    if let Some(redis) = redis_url() {
        env.push(("REDIS_URL".into(), redis));
    }

    let out = probe(&env);

    let stdout = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr(&out));
    assert!(verdict(&stdout, "store").contains(": ok ("), "{stdout}");
    assert!(
        verdict(&stdout, "session keys").contains(": ok ("),
        "{stdout}"
    );
    let tenant = verdict(&stdout, "tenant base (eu)");
    assert!(
        tenant.contains(": ok (") && tenant.contains("granted"),
        "{stdout}"
    );
    if env.iter().any(|(k, _)| k == "REDIS_URL") {
        assert!(
            verdict(&stdout, "redis").contains("PING answered"),
            "{stdout}"
        );
    }
    assert!(stdout.contains("ok: every probe passed"), "{stdout}");
    assert!(!stdout.contains(&upstream.secret), "{stdout}");
    upstream.standin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_fails_on_bad_tenant_credentials_and_names_the_settings() {
    let upstream = upstream();
    let env = with(
        settings(&upstream),
        &[(
            "CORTI_CLIENT_SECRET",
            format!("fake-wrong-secret-{}", random_hex(8)),
        )],
    );

    let out = probe(&env);

    let stdout = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", stderr(&out));
    let tenant = verdict(&stdout, "tenant base (eu)");
    assert!(tenant.contains(": FAILED ("), "{stdout}");
    assert!(tenant.contains("invalid_client"), "{tenant}");
    assert!(tenant.contains("CORTI_CLIENT_SECRET"), "{tenant}");
    assert!(verdict(&stdout, "store").contains(": ok ("), "{stdout}");
    assert!(
        stderr(&out).contains("1 of 3 checks failed"),
        "{}",
        stderr(&out)
    );
    upstream.standin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_fails_when_the_session_jwks_answers_404() {
    let upstream = upstream();
    let idp = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&idp)
        .await;
    let env = with(
        settings(&upstream),
        &[
            ("SESSION_JWT_SECRET", String::new()),
            ("SESSION_JWKS_URL", format!("{}/jwks", idp.uri())),
            ("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss".into()),
        ],
    );

    let out = probe(&env);

    let stdout = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", stderr(&out));
    let keys = verdict(&stdout, "session keys");
    assert!(
        keys.contains(": FAILED (") && keys.contains("404"),
        "{stdout}"
    );
    upstream.standin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_fails_on_a_wrong_database_port_or_password_and_hides_the_password() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let upstream = upstream();
    let mut url = reqwest::Url::parse(&admin).expect("TEST_DATABASE_URL is a URL");
    let password = url.password().unwrap_or_default().to_owned();
    url.set_password(Some("fake-wrong-password")).unwrap();
    let wrong_password = url.to_string();
    let mut url = reqwest::Url::parse(&admin).unwrap();
    url.set_port(Some(closed_port())).unwrap();
    let wrong_port = url.to_string();

    let good = probe(&with(
        settings(&upstream),
        &[("DATABASE_URL", admin.clone())],
    ));
    assert_eq!(good.status.code(), Some(0), "{}", stdout(&good));

    for (url, cause) in [
        (wrong_password, "password authentication failed"),
        (wrong_port, "connection refused"),
    ] {
        let out = probe(&with(settings(&upstream), &[("DATABASE_URL", url.clone())]));
        let stdout = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}{}", stderr(&out));
        let store = verdict(&stdout, "store");
        assert!(store.contains(": FAILED ("), "{stdout}");
        assert!(store.contains(cause), "{store}");
        assert!(
            !store.contains("fake-wrong-password") && !store.contains(&password),
            "{store}"
        );
    }
    upstream.standin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_not_ready_while_no_session_key_was_ever_loaded() {
    let upstream = upstream();
    let idp = MockServer::start().await;
    let key = TestKey::generate();
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(404))
        .up_to_n_times(2)
        .mount(&idp)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [key.jwk]})))
        .mount(&idp)
        .await;
    let env = with(
        settings(&upstream),
        &[
            ("LISTEN_ADDR", "127.0.0.1:0".into()),
            ("SESSION_JWT_SECRET", String::new()),
            ("SESSION_JWKS_URL", format!("{}/jwks", idp.uri())),
            ("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss".into()),
        ],
    );
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let service = ServeProcess::start(&env);
    let http = reqwest::Client::new();
    let readyz = || async {
        http.get(format!("{}/readyz", service.address))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16()
    };

    assert_eq!(readyz().await, 503, "a JWKS answering 404 is not ready");
    assert!(
        eventually(Duration::from_secs(3), || async {
            service.log_has("no key has been loaded yet")
        })
        .await,
        "the log says no key was ever loaded"
    );
    assert!(
        !service.log_has("keeping the last good keys"),
        "there never were good keys to keep"
    );
    // Once the identity provider publishes its keys, readiness follows.
    assert!(
        eventually(Duration::from_secs(15), || async { readyz().await == 200 }).await,
        "ready once a key is loaded"
    );
    upstream.standin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_store_port_is_named_connection_refused_with_the_target_and_no_password() {
    let upstream = upstream();
    let port = closed_port();
    let url = format!("postgres://token_vendor:fake-db-password@127.0.0.1:{port}/token_vendor");
    let env = with(
        settings(&upstream),
        &[
            ("DATABASE_URL", url.clone()),
            ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ],
    );
    for args in [&["serve"][..], &["audit", "query"], &["migrate"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_token-vendor"))
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("binary runs");
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("connection refused"), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "postgres://token_vendor@127.0.0.1:{port}/token_vendor"
            )),
            "{args:?}: the target without its password: {stderr}"
        );
        assert!(!stderr.contains("fake-db-password"), "{args:?}: {stderr}");
        assert!(!stderr.contains("pool timed out"), "{args:?}: {stderr}");
    }
    upstream.standin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_logs_what_the_replica_runs_on_and_metrics_say_which_build() {
    let upstream = upstream();
    let dir = std::env::temp_dir().join(format!("tv-start-{}", random_hex(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let deny = dir.join("deny");
    std::fs::write(&deny, "# blocked\nmallory\ntrudy\n").expect("write");
    let signer = token_vendor::audit::keys::NoteSigner::generate("ops-test").expect("key");
    let signing_key = secrecy::ExposeSecret::expose_secret(&signer.private_text()).to_owned();
    let env = with(
        settings(&upstream),
        &[
            ("LISTEN_ADDR", "127.0.0.1:0".into()),
            ("DENY_LIST_FILE", deny.display().to_string()),
            ("AUDIT_SIGNING_KEY", signing_key.clone()),
        ],
    );
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();

    let service = ServeProcess::start(&env);

    assert!(service.log_has("token-vendor starting"));
    for expected in [
        "base (eu, default)",
        "\"store\":\"sqlite://",
        "\"redis\":\"off\"",
        "\"token_reuse\":\"per replica\"",
        "\"audit_signing_key\":\"ops-test+",
        "(2 entries)",
        "\"commit\":",
    ] {
        assert!(service.log_has(expected), "start-up line lacks {expected}");
    }
    assert!(
        !service.log_has(&signing_key),
        "the signing key itself is never logged"
    );
    let metrics = reqwest::get(format!("{}/metrics", service.address))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let build = metrics
        .lines()
        .find(|l| l.starts_with("token_vendor_build_info{"))
        .unwrap_or_else(|| panic!("no build_info: {metrics}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("commit=\"")
            && build.ends_with(" 1"),
        "{build}"
    );
    upstream.standin.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_is_counted() {
    let dir = std::env::temp_dir().join(format!("tv-reload-{}", random_hex(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let deny = dir.join("deny");
    std::fs::write(&deny, "mallory\n").expect("write");
    let app = TestApp::builder()
        .env("DENY_LIST_FILE", deny.display().to_string())
        .spawn()
        .await;
    assert_eq!(app.metric("token_vendor_reloads_refused_total").await, 0.0);

    std::fs::remove_file(&deny).expect("remove");
    app.reloader.reload_all();

    assert_eq!(app.metric("token_vendor_reloads_refused_total").await, 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Settings whose sessions are opaque, checked at `url` (RFC 7662).
fn introspection_settings(upstream: &Upstream, url: &str) -> Vec<(String, String)> {
    with(
        settings(upstream),
        &[
            ("SESSION_JWT_SECRET", String::new()),
            ("SESSION_INTROSPECTION_URL", url.to_owned()),
            ("SESSION_INTROSPECTION_CLIENT_ID", "token-vendor".into()),
            (
                "SESSION_INTROSPECTION_CLIENT_SECRET",
                format!("fake-introspection-secret-{}", random_hex(8)),
            ),
            ("SESSION_INTROSPECTION_AUDIENCE", "our-app".into()),
        ],
    )
}

/// An introspection endpoint answering every call with `answer`.
async fn introspection_endpoint(answer: ResponseTemplate) -> MockServer {
    let idp = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/introspect"))
        .respond_with(answer)
        .mount(&idp)
        .await;
    idp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_calls_the_introspection_endpoint_once_with_the_client_credentials() {
    let upstream = upstream();
    let idp =
        introspection_endpoint(ResponseTemplate::new(200).set_body_json(json!({"active": false})))
            .await;
    let env = introspection_settings(&upstream, &format!("{}/introspect", idp.uri()));

    let out = probe(&env);

    let stdout = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr(&out));
    let line = verdict(&stdout, "session introspection");
    assert!(line.contains(": ok ("), "{stdout}");
    let calls = idp.received_requests().await.unwrap_or_default();
    assert_eq!(calls.len(), 1, "one introspection call");
    let call = &calls[0];
    assert!(
        call.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic ")),
        "client_secret_basic"
    );
    let body = String::from_utf8_lossy(&call.body);
    assert!(body.contains("token="), "{body}");
    let secret = &env
        .iter()
        .find(|(k, _)| k == "SESSION_INTROSPECTION_CLIENT_SECRET")
        .expect("set")
        .1;
    assert!(!stdout.contains(secret.as_str()), "{stdout}");
    upstream.standin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_fails_when_the_introspection_endpoint_refuses_the_services_credentials() {
    // RFC 7662: the endpoint answers 401/403 only to a caller whose own credentials it
    // refuses; `serve` would then answer 503 to every session, so the probe says so.
    let upstream = upstream();
    for status in [401, 403] {
        let idp = introspection_endpoint(ResponseTemplate::new(status)).await;
        let env = introspection_settings(&upstream, &format!("{}/introspect", idp.uri()));

        let out = probe(&env);

        let stdout = stdout(&out);
        assert_ne!(
            out.status.code(),
            Some(0),
            "{status}: {stdout}{}",
            stderr(&out)
        );
        let line = verdict(&stdout, "session introspection");
        assert!(
            line.contains("FAILED")
                && line.contains(&status.to_string())
                && line.contains("SESSION_INTROSPECTION_CLIENT_SECRET"),
            "{line}"
        );
    }
    upstream.standin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_fails_when_the_introspection_endpoint_is_down_or_answers_5xx() {
    let upstream = upstream();
    let idp = introspection_endpoint(ResponseTemplate::new(503)).await;
    let refused = format!("http://127.0.0.1:{}/introspect", closed_port());
    for (url, cause) in [
        (format!("{}/introspect", idp.uri()), "503"),
        (refused, "connect"),
    ] {
        let env = introspection_settings(&upstream, &url);

        let out = probe(&env);

        let stdout = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{url}: {stdout}{}",
            stderr(&out)
        );
        let line = verdict(&stdout, "session introspection");
        assert!(
            line.contains(": FAILED (") && line.to_lowercase().contains(cause),
            "{line}"
        );
    }
    upstream.standin.stop().await;
}

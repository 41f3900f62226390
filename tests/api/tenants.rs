//! Several Corti tenants from one deployment: `[[tenants]]`, the body's `tenant`, the
//! session's `corti_tenants` claim, and everything kept per tenant (reuse, limits,
//! upstream credentials, which are re-read from their files without a restart).

use serde_json::{json, Value};
use token_vendor::audit::Outcome;
use token_vendor::dev::random_hex;

use crate::support::serve_process::ServeProcess;
use crate::support::*;

/// `base` (eu, the default) and `acme` (us), each on its own realm, client and secret,
/// configured through `[[tenants]]` only.
struct TwoTenants {
    app: TestApp,
    base: TenantUpstream,
    acme: TenantUpstream,
}

async fn two_tenants(builder: TestAppBuilder) -> TwoTenants {
    let base = TenantUpstream::start("base", "eu");
    let acme = TenantUpstream::start("acme", "us");
    let app = builder
        .without_env_tenant()
        .toml(format!(
            "default_tenant = \"base\"\n\n{}{}",
            base.toml(),
            acme.toml()
        ))
        .spawn()
        .await;
    TwoTenants { app, base, acme }
}

/// A session for `sub` whose `corti_tenants` claim is `tenants` (absent when `None`).
fn session_for(app: &TestApp, sub: &str, tenants: Option<Value>) -> String {
    let mut claims = json!({"sub": sub, "sid": "sid-1", "exp": now() + 600});
    if let Some(t) = tenants {
        claims["corti_tenants"] = t;
    }
    app.session_with(claims)
}

async fn vend_at(app: &TestApp, session: &str, body: Value) -> (reqwest::Response, String) {
    let id = new_request_id();
    let response = app
        .vend_request(Some(session), &body.to_string(), &id)
        .await;
    (response, id)
}

#[tokio::test]
async fn each_tenant_is_vended_from_its_own_realm_with_its_own_credentials() {
    let t = two_tenants(TestApp::builder()).await;
    let session = session_for(&t.app, "alice", Some(json!(["base", "acme"])));

    let (default, default_id) = vend_at(&t.app, &session, json!({"scope": "transcribe"})).await;
    let (acme, acme_id) = vend_at(
        &t.app,
        &session,
        json!({"scope": "transcribe", "tenant": "acme"}),
    )
    .await;

    assert_eq!(default.status().as_u16(), 200);
    assert_eq!(acme.status().as_u16(), 200);
    let default = json_body(default).await;
    let acme = json_body(acme).await;
    assert_eq!(
        (&default["tenantName"], &default["environment"]),
        (&json!("base"), &json!("eu"))
    );
    assert_eq!(
        (&acme["tenantName"], &acme["environment"]),
        (&json!("acme"), &json!("us"))
    );
    let default_token = default["accessToken"].as_str().unwrap();
    let acme_token = acme["accessToken"].as_str().unwrap();
    assert!(t.base.issued(default_token), "base's realm and client");
    assert!(t.acme.issued(acme_token), "acme's realm and client");
    assert!(!t.acme.issued(default_token) && !t.base.issued(acme_token));
    assert_eq!(t.base.standin.token_calls(), 1);
    assert_eq!(t.acme.standin.token_calls(), 1);

    let event = assert_outcome(&t.app, &acme_id, Outcome::Issued, 200);
    assert_eq!(
        (event.tenant.as_str(), event.environment.as_str()),
        ("acme", "us")
    );
    let event = assert_outcome(&t.app, &default_id, Outcome::Issued, 200);
    assert_eq!(
        (event.tenant.as_str(), event.environment.as_str()),
        ("base", "eu")
    );

    let metrics = t.app.metrics().await;
    for series in [
        "token_vendor_vends_total{outcome=\"issued\",scope=\"openid transcribe\",tenant=\"acme\"} 1",
        "token_vendor_vends_total{outcome=\"issued\",scope=\"openid transcribe\",tenant=\"base\"} 1",
        "token_vendor_upstream_calls_total{result=\"ok\",tenant=\"acme\"} 1",
        "token_vendor_upstream_breaker_state{tenant=\"acme\"} 0",
        "token_vendor_upstream_breaker_state{tenant=\"base\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}

/// Before tenants existed, a body with `tenant` was refused as an unknown field (400);
/// naming the one configured tenant now vends from it.
#[tokio::test]
async fn a_body_naming_the_single_env_tenant_is_served_by_it() {
    let app = TestApp::builder().spawn().await;
    let (response, _) = vend_at(
        &app,
        &app.session("alice"),
        json!({"scope": "transcribe", "tenant": TENANT}),
    )
    .await;
    assert_eq!(response.status().as_u16(), 200);
    let body = json_body(response).await;
    assert_eq!(body["tenantName"], TENANT);
    assert_eq!(body["environment"], "eu");
}

#[tokio::test]
async fn a_tenant_the_user_may_not_have_is_refused_with_403_and_audited() {
    let t = two_tenants(TestApp::builder()).await;
    let only_base = session_for(&t.app, "bob", Some(json!(["base"])));
    let no_claim = session_for(&t.app, "carol", None);
    let spaced = session_for(&t.app, "dave", Some(json!("base acme")));
    let acme = json!({"scope": "transcribe", "tenant": "acme"});

    for session in [&only_base, &no_claim] {
        let (response, id) = vend_at(&t.app, session, acme.clone()).await;
        let (problem, _) = problem(response, 403).await;
        assert_eq!(
            problem["type"],
            "urn:token-vendor:problem:tenant-not-allowed"
        );
        let event = assert_outcome(&t.app, &id, Outcome::Forbidden, 403);
        assert_eq!(
            (event.tenant.as_str(), event.environment.as_str()),
            ("acme", "us")
        );
    }
    assert_eq!(t.acme.standin.token_calls(), 0, "nothing asked of acme");

    // Without the claim the default tenant is still there; a space-separated claim works.
    let (response, _) = vend_at(&t.app, &no_claim, json!({"scope": "transcribe"})).await;
    assert_eq!(response.status().as_u16(), 200);
    let (response, _) = vend_at(&t.app, &spaced, acme).await;
    assert_eq!(response.status().as_u16(), 200);
    // A claim that leaves the default out refuses it too.
    let acme_only = session_for(&t.app, "erin", Some(json!(["acme"])));
    let (response, _) = vend_at(&t.app, &acme_only, json!({"scope": "transcribe"})).await;
    problem(response, 403).await;
}

#[tokio::test]
async fn an_unknown_tenant_is_refused_as_not_allowed_and_a_malformed_one_with_400() {
    let t = two_tenants(TestApp::builder()).await;
    let session = session_for(&t.app, "frank", Some(json!(["base", "acme", "nope"])));

    let (response, id) = vend_at(
        &t.app,
        &session,
        json!({"scope": "transcribe", "tenant": "nope"}),
    )
    .await;
    // Answered exactly as a configured tenant the user may not have, so the
    // configured tenants cannot be enumerated; the audit detail keeps the difference.
    let (body, _) = problem(response, 403).await;
    assert_eq!(body["type"], "urn:token-vendor:problem:tenant-not-allowed");
    let (not_allowed, _) = vend_at(
        &t.app,
        &session_for(&t.app, "frank2", Some(json!(["base"]))),
        json!({"scope": "transcribe", "tenant": "acme"}),
    )
    .await;
    let (other, _) = problem(not_allowed, 403).await;
    for field in ["type", "title", "status"] {
        assert_eq!(body[field], other[field], "{field}");
    }
    assert!(
        !body["detail"].as_str().unwrap_or("").contains("configured"),
        "{body}"
    );
    let event = assert_outcome(&t.app, &id, Outcome::Forbidden, 403);
    let detail = event.detail.as_deref().unwrap_or("");
    assert!(
        detail.contains("nope") && detail.contains("not configured"),
        "{event:?}"
    );

    for bad in ["", "../base", "a b", "x\u{202e}y", &"t".repeat(65), "\n"] {
        let (response, id) = vend_at(
            &t.app,
            &session,
            json!({"scope": "transcribe", "tenant": bad}),
        )
        .await;
        let (body, _) = problem(response, 400).await;
        assert_eq!(
            body["type"], "urn:token-vendor:problem:invalid-request",
            "{bad:?}"
        );
        let event = assert_outcome(&t.app, &id, Outcome::InvalidRequest, 400);
        let detail = event.detail.unwrap_or_default();
        assert!(bad.is_empty() || !detail.contains(bad), "{detail:?}");
    }
    let (response, _) = vend_at(
        &t.app,
        &session,
        json!({"scope": "transcribe", "tenant": 7}),
    )
    .await;
    problem(response, 400).await;
    assert_eq!(
        t.base.standin.token_calls() + t.acme.standin.token_calls(),
        0
    );
}

#[tokio::test]
async fn reuse_never_hands_one_tenants_token_for_another() {
    let t = two_tenants(TestApp::builder().limits(Limits::Off)).await;
    let session = session_for(&t.app, "grace", Some(json!(["base", "acme"])));
    let token = |body: Value| async move { body["accessToken"].as_str().unwrap().to_owned() };

    let (r, _) = vend_at(&t.app, &session, json!({"scope": "transcribe"})).await;
    let base_first = token(json_body(r).await).await;
    let (r, acme_id) = vend_at(
        &t.app,
        &session,
        json!({"scope": "transcribe", "tenant": "acme"}),
    )
    .await;
    let acme_first = token(json_body(r).await).await;
    let (r, base_again_id) = vend_at(
        &t.app,
        &session,
        json!({"scope": "transcribe", "tenant": "base"}),
    )
    .await;
    let base_again = token(json_body(r).await).await;

    assert_ne!(base_first, acme_first);
    assert!(t.acme.issued(&acme_first));
    assert_eq!(base_first, base_again, "reused within its own tenant");
    assert_outcome(&t.app, &acme_id, Outcome::Issued, 200);
    assert_outcome(&t.app, &base_again_id, Outcome::Reused, 200);
    assert_eq!(t.base.standin.token_calls(), 1);
    assert_eq!(t.acme.standin.token_calls(), 1);
}

#[tokio::test]
async fn a_users_limit_at_one_tenant_leaves_the_other_tenant_alone() {
    let t = two_tenants(
        TestApp::builder()
            .reuse(Reuse::Off)
            .env("RATE_LIMIT_PER_USER", "2/minute"),
    )
    .await;
    let session = session_for(&t.app, "heidi", Some(json!(["base", "acme"])));
    for _ in 0..2 {
        let (r, _) = vend_at(&t.app, &session, json!({"scope": "transcribe"})).await;
        assert_eq!(r.status().as_u16(), 200);
    }
    let (r, _) = vend_at(&t.app, &session, json!({"scope": "transcribe"})).await;
    problem(r, 429).await;

    let (r, _) = vend_at(
        &t.app,
        &session,
        json!({"scope": "transcribe", "tenant": "acme"}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200, "acme's quota is untouched");
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tv-tenants-{}", random_hex(8)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_fixed_client_secret_file_is_used_after_a_reload_and_a_bad_one_is_refused() {
    let dir = TempDir::new();
    let secret_file = dir.0.join("acme-secret");
    let base = TenantUpstream::start("base", "eu");
    let acme = TenantUpstream::start("acme", "us");
    std::fs::write(&secret_file, "fake-wrong-secret\n").unwrap();
    let app = TestApp::builder()
        .reuse(Reuse::Off)
        .limits(Limits::Off)
        .without_env_tenant()
        .toml(format!(
            "default_tenant = \"base\"\n\n{}{}",
            base.toml(),
            acme.toml_with_secret_file(&secret_file)
        ))
        .spawn()
        .await;
    let session = session_for(&app, "ivan", Some(json!(["base", "acme"])));
    let vend_acme = || {
        vend_at(
            &app,
            &session,
            json!({"scope": "transcribe", "tenant": "acme"}),
        )
    };

    let (r, _) = vend_acme().await;
    problem(r, 502).await;

    std::fs::write(&secret_file, format!("{}\n", acme.secret)).unwrap();
    let report = app.reloader.reload_all();
    assert!(
        report
            .iter()
            .any(|(name, result)| name == "tenants[acme].client_secret_file" && result.is_ok()),
        "{report:?}"
    );
    let (r, _) = vend_acme().await;
    assert_eq!(r.status().as_u16(), 200, "no restart needed");

    std::fs::write(&secret_file, "\n").unwrap();
    let report = app.reloader.reload_all();
    assert!(
        report.iter().any(|(_, result)| result.is_err()),
        "{report:?}"
    );
    let (r, _) = vend_acme().await;
    assert_eq!(r.status().as_u16(), 200, "the old secret stays in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_the_real_binary_use_a_fixed_client_secret_file() {
    let dir = TempDir::new();
    let secret_file = dir.0.join("client-secret");
    let upstream = TenantUpstream::start(TENANT, "eu");
    std::fs::write(&secret_file, "fake-wrong-secret\n").unwrap();
    let secrets = Secrets::fresh();
    let service = ServeProcess::start(&[
        ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ("CORTI_ENVIRONMENT", "eu".into()),
        ("CORTI_TENANT", TENANT.into()),
        ("CORTI_AUTH_URL", upstream.standin.base_url().into()),
        ("CORTI_CLIENT_ID", upstream.client_id.clone()),
        (
            "CORTI_CLIENT_SECRET_FILE",
            secret_file.display().to_string(),
        ),
        ("SESSION_JWT_SECRET", secrets.session.clone()),
        ("AUDIT_HMAC_KEY", secrets.audit.clone()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.0.join("audit.db").display()),
        ),
        ("TOKEN_REUSE_MIN_TTL", "0".into()),
    ]);
    let session = SessionSigner::new(&secrets.session).session("judy");
    let http = reqwest::Client::new();
    let vend = || async {
        http.post(format!("{}/v1/tokens", service.address))
            .bearer_auth(&session)
            .json(&json!({"scope": "transcribe"}))
            .send()
            .await
            .expect("vend")
            .status()
            .as_u16()
    };
    assert_eq!(vend().await, 502, "the wrong secret is refused upstream");

    std::fs::write(&secret_file, format!("{}\n", upstream.secret)).unwrap();
    service.sighup();
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            vend().await == 200
        })
        .await,
        "vends work without a restart"
    );

    std::fs::write(&secret_file, "").unwrap();
    service.sighup();
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            service.log_has("new value refused")
        })
        .await,
        "the refusal is logged"
    );
    assert_eq!(vend().await, 200, "the old secret stays in force");
}

/// `CORTI_*` beside `[[tenants]]`: the variables are one more tenant, and with two a
/// default must be named.
#[tokio::test]
async fn corti_variables_beside_tenant_tables_are_one_more_tenant() {
    let acme = TenantUpstream::start("acme", "us");
    let app = TestApp::builder()
        .toml(acme.toml())
        .env("DEFAULT_TENANT", TENANT)
        .spawn()
        .await;
    let session = session_for(&app, "kim", Some(json!([TENANT, "acme"])));

    let (r, _) = vend_at(&app, &session, json!({"scope": "transcribe"})).await;
    let body = json_body(r).await;
    assert_eq!(body["tenantName"], TENANT, "CORTI_TENANT is the default");
    let (r, _) = vend_at(
        &app,
        &session,
        json!({"scope": "transcribe", "tenant": "acme"}),
    )
    .await;
    let body = json_body(r).await;
    assert_eq!(
        (&body["tenantName"], &body["environment"]),
        (&json!("acme"), &json!("us"))
    );
    assert!(acme.issued(body["accessToken"].as_str().unwrap()));
}

/// The audit tools by tenant: a filter in the API (which takes relative times like the
/// CLI) and in `audit query`, and a vend for a tenant that is not configured recorded
/// under the name it asked for, not the default tenant's.
async fn audit_tools_filter_by_tenant(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let t = two_tenants(TestApp::builder().store(Store::db(&db))).await;
    let session = session_for(&t.app, "tess", Some(json!(["base", "acme", "nope"])));
    for tenant in ["acme", "base", "nope"] {
        vend_at(
            &t.app,
            &session,
            json!({"scope": "transcribe", "tenant": tenant}),
        )
        .await;
    }

    let tenants_of = |events: Vec<Value>| -> Vec<String> {
        events
            .iter()
            .map(|e| e["tenant"].as_str().unwrap_or("-").to_owned())
            .collect()
    };
    let (acme, _) = t.app.events("tenant=acme&since=2h").await;
    assert_eq!(tenants_of(acme), ["acme"]);
    let (nope, _) = t.app.events("tenant=nope").await;
    assert_eq!(tenants_of(nope.clone()), ["nope"], "recorded as asked");
    // Refused like a tenant the user may not have (tenants cannot be enumerated).
    assert_eq!(nope[0]["outcome"], "forbidden");
    let (base, _) = t.app.events("tenant=base&until=0s").await;
    assert_eq!(tenants_of(base), ["base"], "not the unknown tenant's vend");
    let response = t.app.get_events(Some(&t.app.reader()), "since=later").await;
    problem(response, 400).await;

    let out = cli(
        &db.url,
        &["audit", "query", "--tenant", "acme", "--format", "json"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let page: Value = serde_json::from_str(&stdout(&out)).expect("json page");
    assert_eq!(
        tenants_of(page["events"].as_array().cloned().unwrap_or_default()),
        ["acme"]
    );
    let out = cli(&db.url, &["audit", "query"], &[]);
    let table = stdout(&out);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("TENANT")),
        "{table}"
    );
    assert!(table.contains("nope"), "{table}");
    db.cleanup().await;
}
crate::both_backends!(audit_tools_filter_by_tenant);

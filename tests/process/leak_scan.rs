//! Leak scan over a representative run of the real binary: vends, reuse, refusals, the
//! audit API, metrics and upstream failures (refused by Corti auth, Corti auth down).
//! Everything the run leaves behind — the services' logs, their audit stores (the SQLite
//! files and `audit export`), `/metrics` and every answer except the token bodies
//! themselves — must contain no client secret, session JWT or vended token, nor a
//! signature of one.

use crate::support::blackbox;
use crate::support::blackbox::{Response, Service, SessionKey, ORIGIN, READER_ROLE};
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;

struct Run {
    /// Text the scan reads, each with where it came from.
    evidence: Vec<(String, Vec<u8>)>,
    /// Values that must not appear, each with what it is.
    secrets: Vec<(String, String)>,
}

impl Run {
    fn answer(&mut self, what: &str, r: &Response) {
        self.evidence
            .push((format!("answer head: {what}"), r.head.clone().into_bytes()));
        // A 200 vend body is where a token belongs; every other body is scanned.
        if !r.body.contains("accessToken") {
            self.evidence
                .push((format!("answer body: {what}"), r.body.clone().into_bytes()));
        }
    }

    fn secret(&mut self, what: &str, value: &str) {
        self.secrets.push((what.to_owned(), value.to_owned()));
        // The signature alone identifies (and, for a bearer token, replays) it too.
        if let Some(sig) = value
            .rsplit('.')
            .next()
            .filter(|s| s.len() >= 16 && value.contains('.'))
        {
            self.secrets
                .push((format!("{what} (signature)"), sig.to_owned()));
        }
    }
}

fn vend(service: &Service, headers: &[(&str, &str)], scope: &str) -> Response {
    let mut all = vec![
        ("Content-Type", "application/json"),
        ("User-Agent", "leak-scan/1"),
    ];
    all.extend_from_slice(headers);
    service.request(
        "POST",
        "/v1/tokens",
        &all,
        json!({ "scope": scope }).to_string().as_bytes(),
    )
}

fn store_evidence(run: &mut Run, name: &str, service: &Service) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = format!("{}{suffix}", service.db_path.display());
        if let Ok(bytes) = std::fs::read(&path) {
            run.evidence
                .push((format!("{name} audit file {path}"), bytes));
        }
    }
    let export = service.cli(&["audit", "export"], None);
    assert!(export.status.success(), "audit export: {export:?}");
    run.evidence
        .push((format!("{name} audit export"), export.stdout));
    run.evidence
        .push((format!("{name} audit export stderr"), export.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_session_or_token_appears_in_logs_store_metrics_or_error_bodies() {
    let _turn = crate::shared_turn().await;
    let client_secret = format!("fake-client-secret-{}", random_hex(16));
    let wrong_secret = format!("fake-wrong-secret-{}", random_hex(16));
    let standin = AuthStandIn::start(StandInConfig {
        client_id: "token-vendor-dev".into(),
        client_secret: client_secret.clone(),
        token_lifetime: std::time::Duration::from_secs(300),
    })
    .expect("stand-in");
    let key = SessionKey::generate();
    let good = Service::spawn(blackbox::serve_env(
        &blackbox::temp_dir("leak-good"),
        &key,
        standin.base_url(),
        &client_secret,
    ));
    // Corti auth refuses this one's credentials (502)...
    let refused = Service::spawn(blackbox::serve_env(
        &blackbox::temp_dir("leak-refused"),
        &key,
        standin.base_url(),
        &wrong_secret,
    ));
    // ...and this one's Corti auth is not there at all (503).
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let down = Service::spawn(blackbox::serve_env(
        &blackbox::temp_dir("leak-down"),
        &key,
        &format!("http://127.0.0.1:{dead_port}"),
        &client_secret,
    ));

    let mut run = Run {
        evidence: Vec::new(),
        secrets: Vec::new(),
    };
    run.secret("client secret", &client_secret);
    run.secret("wrong client secret", &wrong_secret);
    for service in [&good, &refused, &down] {
        for (k, v) in &service.env {
            if k == "AUDIT_HMAC_KEY" {
                run.secret("audit HMAC key", v);
            }
        }
    }
    let user = key.session("leak-user", &[]);
    let other_user = key.session("leak-other", &[]);
    let reader = key.session("leak-reader", &[READER_ROLE]);
    let mut expired_claims = blackbox::valid_claims("leak-user", &[]);
    expired_claims["exp"] = json!(blackbox::now() - 3600);
    let expired = key.sign(Header::new(Algorithm::RS256), &expired_claims);
    let attacker = SessionKey::generate().session("leak-user", &[]);
    for (what, token) in [
        ("session JWT", &user),
        ("session JWT", &other_user),
        ("reader session JWT", &reader),
        ("expired session JWT", &expired),
        ("forged session JWT", &attacker),
    ] {
        run.secret(what, token);
    }
    let bearer = |t: &str| format!("Bearer {t}");
    let cookie = |t: &str| format!("session={t}");

    // Vends that succeed: bearer, reuse, another scope, another user, cookie + origin.
    let mut vended = Vec::new();
    let (b_user, b_other) = (bearer(&user), bearer(&other_user));
    let c_user = cookie(&user);
    for (what, response) in [
        (
            "vend",
            vend(&good, &[("Authorization", &b_user)], "transcribe"),
        ),
        (
            "reuse",
            vend(&good, &[("Authorization", &b_user)], "transcribe"),
        ),
        (
            "vend streams",
            vend(&good, &[("Authorization", &b_user)], "streams openid"),
        ),
        (
            "vend other user",
            vend(&good, &[("Authorization", &b_other)], "transcribe streams"),
        ),
        (
            "vend by cookie",
            vend(
                &good,
                &[("Cookie", &c_user), ("Origin", ORIGIN)],
                "transcribe",
            ),
        ),
    ] {
        assert_eq!(response.status, 200, "{what}: {response:?}");
        let token = response.json()["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_owned();
        run.answer(what, &response);
        vended.push(token);
    }
    for token in &vended {
        run.secret("vended token", token);
    }

    // Refusals of every kind.
    let (b_expired, b_attacker, c_attacker) =
        (bearer(&expired), bearer(&attacker), cookie(&attacker));
    let b_reader = bearer(&reader);
    let refusals: Vec<(&str, Response, u16)> = vec![
        ("no session", vend(&good, &[], "transcribe"), 401),
        (
            "garbage session",
            vend(
                &good,
                &[("Authorization", "Bearer not.a.jwt")],
                "transcribe",
            ),
            401,
        ),
        (
            "expired session",
            vend(&good, &[("Authorization", &b_expired)], "transcribe"),
            401,
        ),
        (
            "forged session",
            vend(&good, &[("Authorization", &b_attacker)], "transcribe"),
            401,
        ),
        (
            "forged cookie",
            vend(
                &good,
                &[("Cookie", &c_attacker), ("Origin", ORIGIN)],
                "transcribe",
            ),
            401,
        ),
        (
            "wider scope",
            vend(&good, &[("Authorization", &b_user)], "transcribe email"),
            400,
        ),
        (
            "cookie without origin",
            vend(&good, &[("Cookie", &c_user)], "transcribe"),
            403,
        ),
        (
            "foreign origin",
            vend(
                &good,
                &[("Authorization", &b_user), ("Origin", "https://evil.test")],
                "transcribe",
            ),
            403,
        ),
        (
            "wrong content type",
            good.request(
                "POST",
                "/v1/tokens",
                &[("Authorization", &b_user), ("Content-Type", "text/plain")],
                b"{}",
            ),
            415,
        ),
        (
            "too large",
            good.request(
                "POST",
                "/v1/tokens",
                &[
                    ("Authorization", &b_user),
                    ("Content-Type", "application/json"),
                ],
                &[b' '; 4096],
            ),
            413,
        ),
        (
            "audit without role",
            good.request(
                "GET",
                "/v1/audit/events",
                &[("Authorization", &b_user)],
                b"",
            ),
            403,
        ),
        (
            "not found",
            good.request("GET", "/nowhere", &[("Authorization", &b_user)], b""),
            404,
        ),
        (
            "upstream refuses",
            vend(&refused, &[("Authorization", &b_user)], "transcribe"),
            502,
        ),
        (
            "upstream down",
            vend(&down, &[("Authorization", &b_user)], "transcribe"),
            503,
        ),
    ];
    for (what, response, status) in &refusals {
        assert_eq!(response.status, *status, "{what}: {response:?}");
        run.answer(what, response);
    }

    // Ops read the audit log, and find a token by its fingerprint (from stdin).
    let hashed = good.cli(&["audit", "hash", "-"], Some(&vended[0]));
    assert!(hashed.status.success(), "audit hash -: {hashed:?}");
    let fingerprint = String::from_utf8_lossy(&hashed.stdout).trim().to_owned();
    assert!(fingerprint.starts_with("hmac-sha256:"), "{fingerprint}");
    run.evidence
        .push(("audit hash output".into(), hashed.stdout.clone()));
    let events = good.request(
        "GET",
        "/v1/audit/events?limit=1000",
        &[("Authorization", &b_reader)],
        b"",
    );
    assert_eq!(events.status, 200, "{events:?}");
    run.answer("audit events", &events);
    let by_fingerprint = good.request(
        "GET",
        &format!("/v1/audit/events?token_fingerprint={fingerprint}"),
        &[("Authorization", &b_reader)],
        b"",
    );
    assert_eq!(by_fingerprint.status, 200, "{by_fingerprint:?}");
    let found = by_fingerprint.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        found.iter().any(|e| e["outcome"] == "issued"),
        "the fingerprint finds the vend that issued the token (and its reuses): {by_fingerprint:?}"
    );
    run.answer("audit events by fingerprint", &by_fingerprint);
    for (name, service) in [("good", &good), ("refused", &refused), ("down", &down)] {
        for path in ["/metrics", "/readyz", "/healthz"] {
            let r = service.request("GET", path, &[], b"");
            run.answer(&format!("{name} {path}"), &r);
        }
    }

    // Stop the services so their logs and stores are complete, then gather them.
    let mut services = vec![("good", good), ("refused", refused), ("down", down)];
    for (name, service) in &services {
        store_evidence(&mut run, name, service);
    }
    for (name, service) in services.drain(..) {
        let output = service.output.clone();
        drop(service);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let text = output.lock().expect("output").join("\n");
        assert!(
            text.contains("\"target\":\"audit\""),
            "{name}: the audit log lines are part of the scan"
        );
        run.evidence
            .push((format!("{name} service output"), text.into_bytes()));
    }

    let mut leaks = Vec::new();
    for (what, secret) in &run.secrets {
        for (place, bytes) in &run.evidence {
            let hits = bytes
                .windows(secret.len())
                .filter(|w| *w == secret.as_bytes())
                .count();
            if hits > 0 {
                leaks.push(format!("{what} appears {hits}x in {place}"));
            }
        }
    }
    let scanned: usize = run.evidence.iter().map(|(_, b)| b.len()).sum();
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
    println!(
        "leak scan: {} secrets over {} places ({scanned} bytes): leaks: 0",
        run.secrets.len(),
        run.evidence.len()
    );
    standin.stop().await;
}

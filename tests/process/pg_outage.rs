//! The PostgreSQL store taken away for real: the server is stopped and started again
//! (`TEST_PG_CTL stop|start`, from `scripts/services-up.sh`). It takes the machine to
//! itself ([`crate::alone`]) so that no other suite loses its database meanwhile.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

fn pg_ctl() -> String {
    std::env::var("TEST_PG_CTL")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-ctl.sh").into())
}

fn run_pg_ctl(action: &str) {
    let status = Command::new(pg_ctl())
        .arg(action)
        .status()
        .unwrap_or_else(|e| panic!("run {} {action}: {e}", pg_ctl()));
    assert!(status.success(), "{} {action} failed", pg_ctl());
}

/// Starts the server again however the test ends.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(pg_ctl()).arg("start").status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_stopped_gets_503_without_token_then_recovers_when_started() {
    let _turn = crate::alone().await;
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    app.vend_token("before").await;
    let body = r#"{"scope":"transcribe"}"#;

    // The readiness probe's own connection to the same database, to read its error.
    let probe = token_vendor::audit::db::AuditDb::open(
        &db.url,
        token_vendor::audit::db::OpenMode::Existing,
    )
    .await
    .expect("open");
    probe.probe_read().await.expect("answers while running");
    let restart = RestartOnDrop;
    run_pg_ctl("stop");
    let started = Instant::now();
    let refused = app
        .vend_request(
            Some(&app.session_with_roles("during", &[])),
            body,
            &new_request_id(),
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(refused.status().as_u16(), 503);
    assert!(
        waited < Duration::from_secs(5),
        "bounded wait, took {waited:?}"
    );
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "urn:token-vendor:problem:audit-unavailable"
    );
    assert!(problem.get("accessToken").is_none());
    assert_eq!(app.readyz().await, 503);
    // What the operator reads says why: the server refuses connections, and where.
    let target = token_vendor::audit::db::display_target(&db.url);
    let why = probe
        .probe_read()
        .await
        .expect_err("a stopped server does not answer")
        .to_string();
    assert!(
        why.contains("connection refused") && why.contains(&target),
        "{why}"
    );
    let out = cli(&db.url, &["audit", "query"], &[]);
    let stderr_text = stderr(&out);
    assert!(
        !out.status.success() && stderr_text.contains("connection refused"),
        "{stderr_text}"
    );
    assert!(stderr_text.contains(&target), "{stderr_text}");
    let password = reqwest::Url::parse(&db.url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .unwrap_or_default();
    assert!(
        password.is_empty() || !(why + &stderr_text).contains(&password),
        "no password shown"
    );

    run_pg_ctl("start");
    drop(restart);
    let recovered = eventually(Duration::from_secs(20), || async {
        app.vend_request(
            Some(&app.session_with_roles("after", &[])),
            body,
            &new_request_id(),
        )
        .await
        .status()
        .as_u16()
            == 200
    })
    .await;
    assert!(recovered, "vending resumes by itself");
    assert_eq!(app.readyz().await, 200);
    let subjects: Vec<String> = app
        .all_events()
        .await
        .iter()
        .map(|e| e["subject"].as_str().unwrap_or("-").to_owned())
        .collect();
    assert!(subjects.contains(&"after".to_owned()));
    assert!(!subjects.contains(&"during".to_owned()), "{subjects:?}");
    let out = cli(&db.url, &["audit", "verify"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    db.cleanup().await;
}

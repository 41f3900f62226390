//! The SQLite store taken away for real: another process holds its write lock, as an
//! operator's open `sqlite3` transaction or a stuck backup would. (PostgreSQL's
//! outage test stops the server; it lives in `tests/process/pg_outage.rs`.)

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Executor;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_that_cannot_be_written_gets_503_without_token_then_recovers() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    app.vend_token("before").await;
    let body = r#"{"scope":"transcribe"}"#;

    let pool = db.raw().await;
    let mut locker = pool.acquire().await.unwrap();
    locker.execute("BEGIN IMMEDIATE").await.unwrap();

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

    locker.execute("ROLLBACK").await.unwrap();
    drop(locker);
    let recovered = eventually(Duration::from_secs(10), || async {
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
    assert!(!subjects.contains(&"during".to_owned()), "{subjects:?}");
    let out = crate::support::cli(&db.url, &["audit", "verify"], &[]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    pool.close().await;
    db.cleanup().await;
}

/// A flood of readiness probes takes no write lock on SQLite: vends made meanwhile
/// all succeed, without waiting on the probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_readyz_does_not_block_vends_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    app.vend_token("warm-up").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes: Vec<_> = (0..16)
        .map(|_| {
            let (http, address, stop) = (app.http.clone(), app.address.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5_000 {
                    let r = http.get(format!("{address}/readyz")).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let started = Instant::now();
        let r = app
            .vend_request(
                Some(&app.session_with_roles(&format!("user-{i}"), &[])),
                r#"{"scope":"transcribe"}"#,
                &new_request_id(),
            )
            .await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status().as_u16(), 200, "vend {i} during the probe flood");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut probed = 0;
    for p in probes {
        probed += p.await.unwrap();
    }
    assert!(probed > 100, "the flood ran ({probed} probes)");
    assert!(
        slowest < Duration::from_secs(2),
        "a vend waited {slowest:?} behind readiness probes"
    );
}

/// Readiness probes take no write lock while the writer is healthy: with another
/// connection holding SQLite's write lock, `/readyz` answers at once instead of
/// queueing for the lock (a write probe would wait out the busy timeout, as each
/// vend's commit does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_takes_no_write_lock_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    app.vend_token("warm-up").await;
    let pool = db.raw().await;
    let mut locker = pool.acquire().await.unwrap();
    locker.execute("BEGIN IMMEDIATE").await.unwrap();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(app.readyz().await, 200);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "a probe waited {took:?} for the write lock"
        );
    }
    locker.execute("ROLLBACK").await.unwrap();
    drop(locker);
    pool.close().await;
}

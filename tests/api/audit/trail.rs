//! The service's own trail against someone who writes the audit database while the
//! service runs: it never builds on a chain head it did not write.

use std::time::Duration;

use sqlx::{Executor, Row};

use crate::both_backends;
use crate::support::*;

/// A service that signs checkpoints.
async fn signing_app(db: &TestDb) -> TestApp {
    let signer = token_vendor::audit::keys::NoteSigner::generate("test-audit").unwrap();
    let private = secrecy::ExposeSecret::expose_secret(&signer.private_text()).to_owned();
    TestApp::builder()
        .store(Store::db(db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .env("AUDIT_SIGNING_KEY", private)
        .spawn()
        .await
}

/// `(chain_id, head_seq)` of every chain, in creation order.
async fn chains(db: &TestDb) -> Vec<(String, i64)> {
    let pool = db.raw().await;
    let rows = sqlx::query("SELECT chain_id, head_seq FROM audit_chains ORDER BY created_us")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("chain_id"), r.get("head_seq")))
        .collect();
    pool.close().await;
    rows
}

/// In one write transaction held for `hold`: deletes the chain's events after `keep`,
/// moves its head back to event `keep` and deletes the checkpoints above it, the way
/// someone hiding the last events from a running service would.
pub async fn cut_back_under_the_writer(db: &TestDb, chain_id: &str, keep: i64, hold: Duration) {
    let pool = db.raw().await;
    let mut conn = pool.acquire().await.unwrap();
    match db.backend {
        Backend::Sqlite => conn.execute("BEGIN IMMEDIATE").await.unwrap(),
        Backend::Postgres => {
            conn.execute("BEGIN").await.unwrap();
            conn.execute("LOCK TABLE audit_chains IN EXCLUSIVE MODE")
                .await
                .unwrap()
        }
    };
    let hash: String =
        sqlx::query("SELECT hash FROM audit_events WHERE chain_id = $1 AND chain_seq = $2")
            .bind(chain_id)
            .bind(keep)
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get("hash");
    for sql in [
        "DELETE FROM audit_events WHERE chain_id = $1 AND chain_seq > $2",
        "DELETE FROM audit_checkpoints WHERE chain_id = $1 AND seq > $2",
    ] {
        sqlx::query(sql)
            .bind(chain_id)
            .bind(keep)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE audit_chains SET head_seq = $1, head_hash = $2 WHERE chain_id = $3")
        .bind(keep)
        .bind(hash.as_str())
        .bind(chain_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    tokio::time::sleep(hold).await;
    conn.execute("COMMIT").await.unwrap();
    drop(conn);
    pool.close().await;
}

async fn the_writer_refuses_a_head_moved_back_under_it(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = signing_app(&db).await;
    for i in 0..15 {
        app.vend_token(&format!("user-{i}")).await;
    }
    let old = chains(&db).await;
    assert_eq!(old.len(), 1);
    let (old_chain, old_head) = old[0].clone();
    assert_eq!(old_head, 15);

    let ((), waiting) = tokio::join!(
        cut_back_under_the_writer(&db, &old_chain, 12, Duration::from_millis(3500)),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            app.vend_request(
                Some(&app.session_with_roles("waits-on-the-lock", &[])),
                r#"{"scope":"transcribe"}"#,
                &new_request_id(),
            )
            .await
        }
    );
    assert_eq!(waiting.status().as_u16(), 503, "no token without its event");

    // The next vend is stored, but not on the chain cut back under the writer.
    app.vend_token("after-the-attack").await;
    let now = chains(&db).await;
    assert_eq!(now.len(), 2, "a new chain: {now:?}");
    assert_eq!(
        now[0],
        (old_chain.clone(), 12),
        "the old chain stays as found"
    );
    let (new_chain, new_head) = now[1].clone();
    assert_eq!(new_head, 2, "the conflict's record, then the vend");
    let pool = db.raw().await;
    let first = sqlx::query(
        "SELECT request_id, detail FROM audit_events WHERE chain_id = $1 AND chain_seq = 1",
    )
    .bind(new_chain.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(first.get::<String, _>("request_id"), "audit-chain-conflict");
    let detail: String = first.get("detail");
    assert!(
        detail.contains(&old_chain) && detail.contains("#15") && detail.contains("holds #12"),
        "{detail}"
    );
    assert_eq!(
        app.metric("token_vendor_audit_chain_conflicts_total").await,
        1.0
    );
    db.cleanup().await;
}
both_backends!(the_writer_refuses_a_head_moved_back_under_it);

/// The same cut made while the writer is idle (no commit failed): its next commit finds
/// the head moved and does not build on it.
async fn the_writer_refuses_a_head_moved_back_between_commits(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = signing_app(&db).await;
    for i in 0..5 {
        app.vend_token(&format!("user-{i}")).await;
    }
    let (old_chain, _) = chains(&db).await[0].clone();
    cut_back_under_the_writer(&db, &old_chain, 3, Duration::ZERO).await;

    app.vend_token("after-the-attack").await;
    let now = chains(&db).await;
    assert_eq!(now.len(), 2, "a new chain: {now:?}");
    assert_eq!(now[0], (old_chain, 3));
    assert_eq!(now[1].1, 2);
    assert_eq!(
        app.metric("token_vendor_audit_chain_conflicts_total").await,
        1.0
    );
    db.cleanup().await;
}
both_backends!(the_writer_refuses_a_head_moved_back_between_commits);

/// Runs `serve` on `db` with otherwise complete settings until it listens or exits;
/// returns its exit status (None: it started) and its standard error.
fn serve_once(db: &TestDb) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_token-vendor"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("CORTI_ENVIRONMENT", "eu")
        .env("CORTI_CLIENT_ID", "test-client")
        .env("CORTI_CLIENT_SECRET", "fake-client-secret-for-start-up")
        .env("SESSION_JWT_SECRET", "fake-session-secret-".repeat(3))
        .env("AUDIT_HMAC_KEY", audit_key())
        .env("AUDIT_ALLOW_UNSIGNED", "true")
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    (status, err)
}

/// A trigger that silently drops one user's lookup entries (or any object the
/// migrations did not make) stops the service at start, named.
async fn the_service_refuses_a_database_holding_a_foreign_trigger(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = signing_app(&db).await;
    app.vend_token("alice").await;
    drop(app);
    let pool = db.raw().await;
    match backend {
        Backend::Sqlite => {
            sqlx::query(
                "CREATE TRIGGER hide_alice BEFORE INSERT ON audit_lookup \
                 WHEN NEW.key = 's:alice' BEGIN SELECT RAISE(IGNORE); END",
            )
            .execute(&pool)
            .await
            .unwrap();
        }
        Backend::Postgres => {
            for sql in [
                "CREATE FUNCTION hide_alice() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN IF NEW.subject = 'alice' THEN RETURN NULL; END IF; RETURN NEW; END $$",
                "CREATE TRIGGER hide_alice BEFORE INSERT ON audit_events \
                 FOR EACH ROW EXECUTE FUNCTION hide_alice()",
            ] {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        }
    }
    pool.close().await;
    let (status, stderr) = serve_once(&db);
    assert!(status.is_some_and(|c| c != 0), "{status:?}: {stderr}");
    assert!(stderr.contains("trigger hide_alice"), "{stderr}");
    db.cleanup().await;
}
both_backends!(the_service_refuses_a_database_holding_a_foreign_trigger);

async fn lookup_entries(db: &TestDb, key: &str) -> i64 {
    let pool = db.raw().await;
    let n = sqlx::query("SELECT COUNT(*) FROM audit_lookup WHERE key = $1")
        .bind(key)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    pool.close().await;
    n
}

fn verify(db: &TestDb) -> (bool, String) {
    let out = cli(&db.url, &["audit", "verify"], &[]);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// SQLite's lookup table is a side table anyone with the file can edit: verify checks
/// it against the events, and a deleted lookup state makes queries scan, not miss.
#[tokio::test]
async fn lookups_cannot_hide_events_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await.expect("SQLite");
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    for user in ["alice", "bob", "alice"] {
        app.vend_token(user).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            lookup_entries(&db, "s:alice").await == 2
        })
        .await,
        "a lookup pass indexed alice's events"
    );
    assert!(verify(&db).0);

    // Entries deleted: verify names the first event they hid.
    let pool = db.raw().await;
    sqlx::query("DELETE FROM audit_lookup WHERE key = 's:alice'")
        .execute(&pool)
        .await
        .unwrap();
    let (ok, out) = verify(&db);
    assert!(!ok && out.contains("hidden from lookups"), "{out}");

    // The lookup state deleted: every event is scanned, alice's included.
    sqlx::query("DELETE FROM audit_lookup_state")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (events, _) = app.events("subject=alice").await;
    assert_eq!(events.len(), 2, "{events:?}");
    // ... and the next pass rebuilds the table from the start.
    app.vend_token("carol").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            lookup_entries(&db, "s:alice").await == 2
        })
        .await,
        "alice's entries were indexed again"
    );
    let (ok, out) = verify(&db);
    assert!(ok, "{out}");
    db.cleanup().await;
}

/// With no traffic at all, the service's background check notices a cut made under it
/// within seconds (on the `audit` log target and in a metric); prints the time taken.
async fn the_service_reports_a_cut_under_it_within_seconds(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = signing_app(&db).await;
    for i in 0..15 {
        app.vend_token(&format!("user-{i}")).await;
    }
    let (chain_id, _) = chains(&db).await[0].clone();
    // Let one check pass over the intact chain first.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        app.metric("token_vendor_audit_trail_findings_total").await,
        0.0
    );

    cut_back_under_the_writer(&db, &chain_id, 12, Duration::ZERO).await;
    let cut_at = std::time::Instant::now();
    let found = eventually(Duration::from_secs(10), || async {
        app.metric("token_vendor_audit_trail_findings_total").await == 1.0
    })
    .await;
    let took = cut_at.elapsed();
    assert!(found, "not reported within 10 s");
    eprintln!("{backend:?}: a cut under the idle service was reported after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    db.cleanup().await;
}
both_backends!(the_service_reports_a_cut_under_it_within_seconds);

/// `GET /v1/audit/trail` as the audit reader.
async fn trail_state(app: &TestApp) -> serde_json::Value {
    let response = app
        .http
        .get(format!("{}/v1/audit/trail", app.address))
        .bearer_auth(app.reader())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    response.json().await.unwrap()
}

/// Ops read the trail's state: in a clean state the last position the background check
/// verified (and when), no finding and no conflict; only for the audit reader role.
async fn ops_read_the_verified_trail(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = signing_app(&db).await;
    for i in 0..4 {
        app.vend_token(&format!("user-{i}")).await;
    }
    let (chain_id, _) = chains(&db).await[0].clone();
    let url = format!("{}/v1/audit/trail", app.address);
    let anonymous = app.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let no_role = app
        .http
        .get(&url)
        .bearer_auth(app.session("not-a-reader"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_role.status().as_u16(), 403);

    assert!(
        eventually(Duration::from_secs(10), || async {
            trail_state(&app).await["verified_seq"] == 4
        })
        .await,
        "{}",
        trail_state(&app).await
    );
    let trail = trail_state(&app).await;
    assert_eq!(trail["chain_id"], chain_id.as_str(), "{trail}");
    let at = trail["verified_at"].as_str().expect("verified_at");
    assert!(
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok(),
        "{at}"
    );
    assert!(trail["finding"].is_null(), "{trail}");
    assert!(trail["conflict"].is_null(), "{trail}");
    db.cleanup().await;
}
both_backends!(ops_read_the_verified_trail);

/// After the head is moved back under the running service, the trail's state names
/// the chain conflict the writer met and the background check's finding.
async fn ops_read_the_conflict_and_the_finding(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = signing_app(&db).await;
    for i in 0..15 {
        app.vend_token(&format!("user-{i}")).await;
    }
    let (old_chain, _) = chains(&db).await[0].clone();
    cut_back_under_the_writer(&db, &old_chain, 12, Duration::ZERO).await;
    // The background check finds the cut by itself, before any commit.
    assert!(
        eventually(Duration::from_secs(10), || async {
            !trail_state(&app).await["finding"].is_null()
        })
        .await,
        "{}",
        trail_state(&app).await
    );
    let trail = trail_state(&app).await;
    let finding = trail["finding"].as_str().unwrap();
    assert!(
        finding.contains(&old_chain) && finding.contains("#15"),
        "{finding}"
    );
    assert!(trail["finding_at"].is_string(), "{trail}");

    // The next commit meets the moved head: a chain conflict, and a new chain.
    app.vend_token("after-the-attack").await;
    let trail = trail_state(&app).await;
    let conflict = trail["conflict"].as_str().expect("a conflict");
    assert!(
        conflict.contains(&old_chain) && conflict.contains("#15") && conflict.contains("#12"),
        "{conflict}"
    );
    assert!(trail["conflict_at"].is_string(), "{trail}");
    // Still reported, also once the check has moved on to the new chain.
    let new_chain = chains(&db).await[1].0.clone();
    assert!(
        eventually(Duration::from_secs(10), || async {
            trail_state(&app).await["chain_id"] == new_chain.as_str()
        })
        .await,
        "{}",
        trail_state(&app).await
    );
    let trail = trail_state(&app).await;
    assert!(
        !trail["conflict"].is_null() && !trail["finding"].is_null(),
        "{trail}"
    );
    db.cleanup().await;
}
both_backends!(ops_read_the_conflict_and_the_finding);

/// SQLite: a trigger planted under the running service that drops one user's lookup
/// entries (so `?subject=` would miss their new events) is reported by the background
/// check within seconds, not only by the next `audit verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_reports_lookup_entries_hidden_under_it_within_seconds() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let app = signing_app(&db).await;
    app.vend_token("bob").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        app.metric("token_vendor_audit_trail_findings_total").await,
        0.0
    );
    let pool = db.raw().await;
    pool.execute(
        "CREATE TRIGGER hide_alice BEFORE INSERT ON audit_lookup \
         WHEN NEW.key = 's:alice' BEGIN SELECT RAISE(IGNORE); END",
    )
    .await
    .unwrap();
    pool.close().await;

    for _ in 0..3 {
        app.vend_token("alice").await;
    }
    let planted_at = std::time::Instant::now();
    let found = eventually(Duration::from_secs(10), || async {
        app.metric("token_vendor_audit_trail_findings_total").await == 1.0
    })
    .await;
    let took = planted_at.elapsed();
    assert!(found, "not reported within 10 s");
    eprintln!("SQLite: lookup entries hidden under the idle service were reported after {took:?}");
    let state = trail_state(&app).await;
    let finding = state["finding"].as_str().unwrap_or_default();
    assert!(finding.contains("lookup"), "{state}");
    db.cleanup().await;
}

use std::time::Duration;

use sqlx::Row;

use crate::both_backends;
use crate::support::*;

/// Ids of the stored events in their chain's order.
async fn chain_ids(db: &TestDb) -> Vec<String> {
    let pool = db.raw().await;
    let rows = sqlx::query("SELECT id FROM audit_events ORDER BY chain_id, chain_seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter().map(|r| r.get::<String, _>("id")).collect()
}

async fn exec(db: &TestDb, sql: &str, id: &str) {
    let pool = db.raw().await;
    let done = sqlx::query(sql).bind(id).execute(&pool).await.unwrap();
    assert_eq!(done.rows_affected(), 1, "{sql}");
    pool.close().await;
}

fn verify(db: &TestDb) -> (bool, String) {
    let out = cli(&db.url, &["audit", "verify"], &[]);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

async fn log_with_events(db: &TestDb, n: usize) -> TestApp {
    let app = TestApp::builder()
        .store(Store::db(db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    for i in 0..n {
        app.vend_token(&format!("user-{i}")).await;
    }
    app
}

async fn verify_says_ok_for_an_intact_log_of_several_writers(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let one = log_with_events(&db, 3).await;
    let two = log_with_events(&db, 2).await;
    one.vend_token("again").await;
    two.vend_request(None, "{}", "req-anon").await;

    let (ok, out) = verify(&db);
    assert!(ok, "{out}");
    assert!(out.starts_with("ok, 7 events"), "{out}");
    db.cleanup().await;
}
both_backends!(verify_says_ok_for_an_intact_log_of_several_writers);

async fn verify_names_an_updated_row(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let _app = log_with_events(&db, 5).await;
    let ids = chain_ids(&db).await;
    exec(
        &db,
        "UPDATE audit_events SET subject = 'someone-else' WHERE id = $1",
        &ids[2],
    )
    .await;

    let (ok, out) = verify(&db);
    assert!(!ok, "{out}");
    assert!(out.contains("altered") && out.contains(&ids[2]), "{out}");
    db.cleanup().await;
}
both_backends!(verify_names_an_updated_row);

async fn verify_names_a_deleted_row(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let _app = log_with_events(&db, 5).await;
    let ids = chain_ids(&db).await;
    exec(&db, "DELETE FROM audit_events WHERE id = $1", &ids[1]).await;

    let (ok, out) = verify(&db);
    assert!(!ok, "{out}");
    assert!(
        out.contains("removed") && out.contains("#2..#2") && out.contains(&ids[2]),
        "{out}"
    );
    db.cleanup().await;
}
both_backends!(verify_names_a_deleted_row);

async fn verify_names_the_newest_row_deleted(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let _app = log_with_events(&db, 3).await;
    let ids = chain_ids(&db).await;
    exec(&db, "DELETE FROM audit_events WHERE id = $1", &ids[2]).await;

    let (ok, out) = verify(&db);
    assert!(!ok, "{out}");
    assert!(
        out.contains("removed") && out.contains("at its end"),
        "{out}"
    );
    db.cleanup().await;
}
both_backends!(verify_names_the_newest_row_deleted);

async fn verify_names_an_inserted_row(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let _app = log_with_events(&db, 3).await;
    let ids = chain_ids(&db).await;
    let copy = |id_expr: &str, chain_expr: &str, seq_expr: &str| {
        format!(
            "INSERT INTO audit_events (id, time_us, request_id, outcome, status, subject, session_id, \
             client_ip, user_agent, origin, scope, tenant, environment, token_fingerprint, \
             token_expires_us, upstream_ms, duration_ms, detail, count, chain_id, chain_seq, prev_hash, hash) \
             SELECT {id_expr}, time_us, request_id, outcome, status, 'mallory', session_id, \
             client_ip, user_agent, origin, scope, tenant, environment, token_fingerprint, \
             token_expires_us, upstream_ms, duration_ms, detail, count, {chain_expr}, {seq_expr}, prev_hash, hash \
             FROM audit_events WHERE id = $1"
        )
    };
    // A forged event appended to an existing chain.
    exec(
        &db,
        &copy("'forged-1'", "chain_id", "chain_seq + 100"),
        &ids[2],
    )
    .await;
    let (ok, out) = verify(&db);
    assert!(!ok, "{out}");
    assert!(
        out.contains("inserted") && out.contains("forged-1"),
        "{out}"
    );
    exec(&db, "DELETE FROM audit_events WHERE id = $1", "forged-1").await;
    assert!(verify(&db).0, "intact again once the forgery is gone");

    // A forged event in a chain of its own.
    exec(&db, &copy("'forged-2'", "'made-up-chain'", "1"), &ids[0]).await;
    let (ok, out) = verify(&db);
    assert!(!ok, "{out}");
    assert!(
        out.contains("inserted") && out.contains("forged-2"),
        "{out}"
    );
    db.cleanup().await;
}
both_backends!(verify_names_an_inserted_row);

async fn prune_keeps_the_chain_verifiable(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = log_with_events(&db, 4).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The cut falls between the two groups however long the steps below take: just
    // before the first recent event, at least 1.5 s after the old ones.
    let recent_from = std::time::Instant::now();
    for i in 0..3 {
        app.vend_token(&format!("recent-{i}")).await;
    }

    if backend == Backend::Sqlite {
        // A lookup pass covered the old events a second after they were written.
        let pool = db.raw().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let indexed: i64 =
                sqlx::query("SELECT COUNT(*) FROM audit_lookup WHERE key LIKE 's:user-%'")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .get(0);
            if indexed == 4 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "indexed {indexed} of 4"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool.close().await;
    }
    // Under one day: `--force` says it is meant.
    let older_than = format!("{}s", recent_from.elapsed().as_secs() + 1);
    let out = cli(
        &db.url,
        &["audit", "prune", "--older-than", &older_than, "--force"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("pruned 4 events"), "{}", stdout(&out));
    let (ok, report) = verify(&db);
    assert!(ok, "{report}");
    assert!(report.starts_with("ok, 3 events"), "{report}");
    let remaining: Vec<String> = app
        .all_events()
        .await
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(remaining, ["recent-2", "recent-1", "recent-0"]);
    if backend == Backend::Sqlite {
        // The pruned events' lookup entries went with them.
        let pool = db.raw().await;
        let count = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .get::<i64, _>(0)
            }
        };
        assert_eq!(
            count("SELECT COUNT(*) FROM audit_lookup WHERE key LIKE 's:user-%'").await,
            0
        );
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM audit_lookup WHERE seq NOT IN (SELECT seq FROM audit_events)"
            )
            .await,
            0
        );
        pool.close().await;
    }

    // New events after the prune extend the same chain, and tampering is still caught.
    app.vend_token("after-prune").await;
    assert!(verify(&db).1.starts_with("ok, 4 events"));
    let ids = chain_ids(&db).await;
    exec(&db, "DELETE FROM audit_events WHERE id = $1", &ids[0]).await;
    let (ok, out) = verify(&db);
    assert!(!ok && out.contains("removed"), "{out}");
    db.cleanup().await;
}
both_backends!(prune_keeps_the_chain_verifiable);

async fn verify_is_ok_while_the_service_keeps_writing(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = log_with_events(&db, 3).await;
    let writing = {
        let address = app.address.clone();
        let session = app.session_with_roles("busy-user", &[]);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..60 {
                let r = http
                    .post(format!("{address}/v1/tokens"))
                    .bearer_auth(&session)
                    .header("Content-Type", "application/json")
                    .body(r#"{"scope":"transcribe"}"#)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
            }
        })
    };
    for _ in 0..3 {
        let db_url = db.url.clone();
        let out = tokio::task::spawn_blocking(move || cli(&db_url, &["audit", "verify"], &[]))
            .await
            .unwrap();
        let report = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "{report}");
    }
    writing.await.unwrap();
    db.cleanup().await;
}
both_backends!(verify_is_ok_while_the_service_keeps_writing);

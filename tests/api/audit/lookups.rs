//! Property: a subject or token-fingerprint query returns exactly what a full scan of
//! the events returns, whatever state SQLite's lookup side table is in (nothing
//! indexed, partly, fully, its state row deleted or moved back, and after the re-index
//! each of those leads to), and on PostgreSQL's plain indexes. Queries go through the
//! library query `GET /v1/audit/events` runs.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sqlx::Row;
use time::OffsetDateTime;
use token_vendor::audit::db::{AuditDb, OpenMode};
use token_vendor::audit::keys::ChainKey;
use token_vendor::audit::query::{AuditQuery, FilterParams, TimeSyntax};
use token_vendor::audit::store::SqlAuditStore;
use token_vendor::audit::writer::WriterKeys;
use token_vendor::audit::{AuditEvent, AuditStore, Outcome};

use crate::support::*;

const SUBJECTS: [&str; 4] = ["alice", "bob", "Alice", "carol-never-seen"];

/// Fingerprints; the first two share their last 16 hex digits (the lookup's short key),
/// so only the comparison on the event tells them apart. The last is never stored.
fn fingerprints() -> [String; 4] {
    let tail = "0123456789abcdef";
    [
        format!("hmac-sha256:{}{tail}", "a".repeat(48)),
        format!("hmac-sha256:{}{tail}", "b".repeat(48)),
        format!("hmac-sha256:{}", "c".repeat(64)),
        format!("hmac-sha256:{}", "d".repeat(64)),
    ]
}

/// An event's subject and fingerprint, as indexes into the pools (`None`: absent).
type Shape = (Option<usize>, Option<usize>);

fn shapes() -> impl Strategy<Value = (Vec<Shape>, prop::sample::Index)> {
    (
        prop::collection::vec(
            (
                prop::option::weighted(0.85, 0..3usize),
                prop::option::weighted(0.6, 0..3usize),
            ),
            0..40,
        ),
        any::<prop::sample::Index>(),
    )
}

fn event(i: usize, (subject, fingerprint): Shape) -> AuditEvent {
    AuditEvent {
        id: format!("evt-{i}"),
        time: OffsetDateTime::now_utc(),
        request_id: format!("req-{i}"),
        outcome: if fingerprint.is_some() {
            Outcome::Issued
        } else {
            Outcome::Forbidden
        },
        status: if fingerprint.is_some() { 200 } else { 403 },
        subject: subject.map(|s| SUBJECTS[s].to_owned()),
        session_id: None,
        client_ip: Some("192.0.2.1".into()),
        user_agent: None,
        origin: None,
        scope: Some("transcribe".into()),
        tenant: "default".into(),
        environment: "eu".into(),
        token_fingerprint: fingerprint.map(|f| fingerprints()[f].clone()),
        token_expires_at: None,
        upstream_ms: None,
        duration_ms: 1,
        detail: None,
        count: 1,
    }
}

fn keys() -> WriterKeys {
    WriterKeys {
        chain: ChainKey::derive(&secrecy::SecretString::from(audit_key().to_owned())),
        signer: None,
    }
}

fn query(params: FilterParams) -> AuditQuery {
    AuditQuery::parse(
        &FilterParams {
            limit: Some("1000".into()),
            ..params
        },
        TimeSyntax::Rfc3339OrAgo,
    )
    .expect("a valid query")
}

/// Compares every subject and fingerprint query with the full scan, filtered here.
async fn check(db: &AuditDb, state: &str) -> Result<(), TestCaseError> {
    let all = db.query(&query(FilterParams::default())).await.unwrap();
    prop_assert!(all.next_cursor.is_none());
    for subject in SUBJECTS {
        let expected: Vec<&str> = all
            .events
            .iter()
            .filter(|e| e.subject.as_deref() == Some(subject))
            .map(|e| e.id.as_str())
            .collect();
        let page = db
            .query(&query(FilterParams {
                subject: Some(subject.into()),
                ..FilterParams::default()
            }))
            .await
            .unwrap();
        let got: Vec<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
        prop_assert_eq!(got, expected, "subject {} ({})", subject, state);
    }
    for fingerprint in fingerprints() {
        let expected: Vec<&str> = all
            .events
            .iter()
            .filter(|e| e.token_fingerprint.as_deref() == Some(fingerprint.as_str()))
            .map(|e| e.id.as_str())
            .collect();
        let page = db
            .query(&query(FilterParams {
                token_fingerprint: Some(fingerprint.clone()),
                ..FilterParams::default()
            }))
            .await
            .unwrap();
        let got: Vec<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
        prop_assert_eq!(got, expected, "fingerprint {} ({})", fingerprint, state);
    }
    Ok(())
}

/// Runs the writer's start-up catch-up: the lookup table is brought up to date before
/// a writer takes its first message, so a checkpoint request returns after it.
async fn reindex(db: &TestDb) {
    let store = SqlAuditStore::open(&db.url, keys()).await.unwrap();
    store.checkpoint().await;
}

async fn exec(db: &TestDb, sqls: &[String]) {
    let pool = db.raw().await;
    for sql in sqls {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

/// `(indexed_seq, max(seq))`; `indexed_seq` is None without a state row.
async fn index_state(db: &TestDb) -> (Option<i64>, i64) {
    let pool = db.raw().await;
    let indexed = sqlx::query("SELECT indexed_seq FROM audit_lookup_state")
        .fetch_optional(&pool)
        .await
        .unwrap()
        .map(|r| r.get::<i64, _>(0));
    let max = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM audit_events")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get::<i64, _>(0);
    pool.close().await;
    (indexed, max)
}

async fn one_case(
    backend: Backend,
    shared: Option<&TestDb>,
    shapes: Vec<Shape>,
    cut: prop::sample::Index,
) -> Result<(), TestCaseError> {
    // PostgreSQL: one database for the run, emptied per case (creating one per case
    // would take most of the time); SQLite: a fresh file per case.
    let fresh = match shared {
        Some(db) => {
            exec(
                db,
                &[
                    "TRUNCATE audit_events, audit_chains, audit_checkpoints RESTART IDENTITY"
                        .into(),
                ],
            )
            .await;
            None
        }
        None => match TestDb::new(backend).await {
            Some(db) => Some(db),
            None => return Ok(()),
        },
    };
    let Some(db) = shared.or(fresh.as_ref()) else {
        return Ok(());
    };
    {
        let store = SqlAuditStore::open(&db.url, keys()).await.unwrap();
        for (i, shape) in shapes.iter().enumerate() {
            store.record(&event(i, *shape)).await.unwrap();
        }
    }
    let reader = AuditDb::open(&db.url, OpenMode::Existing).await.unwrap();
    let result = async {
        if backend == Backend::Postgres {
            return check(&reader, "indexes").await;
        }
        reindex(db).await;
        let (indexed, max) = index_state(db).await;
        prop_assert_eq!(indexed, Some(max), "fully indexed");
        check(&reader, "fully indexed").await?;

        // A position inside the events (0: before the first).
        let k = if max == 0 {
            0
        } else {
            cut.index(max as usize + 1) as i64
        };
        exec(
            db,
            &[
                format!("DELETE FROM audit_lookup WHERE seq > {k}"),
                format!("UPDATE audit_lookup_state SET indexed_seq = {k}"),
            ],
        )
        .await;
        check(&reader, &format!("indexed through {k} of {max}")).await?;

        exec(
            db,
            &[
                "DELETE FROM audit_lookup".into(),
                "UPDATE audit_lookup_state SET indexed_seq = 0".into(),
            ],
        )
        .await;
        check(&reader, "nothing indexed").await?;
        reindex(db).await;
        prop_assert_eq!(index_state(db).await, (Some(max), max));
        check(&reader, "re-indexed from nothing").await?;

        // The state row deleted while events after `k` were not indexed yet.
        exec(
            db,
            &[
                format!("DELETE FROM audit_lookup WHERE seq > {k}"),
                "DELETE FROM audit_lookup_state".into(),
            ],
        )
        .await;
        check(
            &reader,
            &format!("lookup state deleted, indexed through {k} of {max}"),
        )
        .await?;
        reindex(db).await;
        prop_assert_eq!(index_state(db).await, (Some(max), max));
        check(&reader, "re-indexed after the state was deleted").await?;

        exec(
            db,
            &[format!("UPDATE audit_lookup_state SET indexed_seq = {k}")],
        )
        .await;
        check(&reader, &format!("state moved back to {k} of {max}")).await?;
        reindex(db).await;
        prop_assert_eq!(index_state(db).await, (Some(max), max));
        check(&reader, "re-indexed after the state moved back").await
    }
    .await;
    drop(reader);
    if let Some(fresh) = fresh {
        fresh.cleanup().await;
    }
    result
}

fn run(backend: Backend, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let shared = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match rt.block_on(shared_postgres()) {
            Some(db) => Some(db),
            None => return,
        },
    };
    let outcome = runner.run(&shapes(), |(shapes, cut)| {
        rt.block_on(one_case(backend, shared.as_ref(), shapes, cut))
    });
    if let Some(db) = shared {
        rt.block_on(db.cleanup());
    }
    outcome.unwrap();
}

/// A migrated PostgreSQL database for the whole run, or `None` when not configured.
async fn shared_postgres() -> Option<TestDb> {
    let db = TestDb::new(Backend::Postgres).await?;
    drop(SqlAuditStore::open(&db.url, keys()).await.unwrap());
    Some(db)
}

#[test]
fn lookups_return_what_a_full_scan_returns_on_sqlite() {
    run(Backend::Sqlite, 24);
}

#[test]
fn lookups_return_what_a_full_scan_returns_on_postgres() {
    run(Backend::Postgres, 16);
}

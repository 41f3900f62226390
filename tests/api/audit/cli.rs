use serde_json::Value;

use crate::both_backends;
use crate::support::*;

async fn log_of_two_tokens_and_a_refusal(db: &TestDb) -> (TestApp, Vec<String>) {
    let app = TestApp::builder()
        .store(Store::db(db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    let tokens = vec![app.vend_token("alice").await, app.vend_token("bob").await];
    app.vend_request(None, "{}", "req-anonymous").await;
    (app, tokens)
}

async fn query_prints_a_table_json_and_csv(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let _ = log_of_two_tokens_and_a_refusal(&db).await;

    let table = cli(&db.url, &["audit", "query"], &[]);
    assert!(table.status.success(), "{}", stderr(&table));
    let lines: Vec<String> = stdout(&table).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "header and three rows: {lines:#?}");
    assert!(lines[0].starts_with("TIME") && lines[0].contains("OUTCOME"));
    assert!(lines[1].contains("unauthenticated") && lines[1].contains("401"));
    assert!(lines[3].contains("issued") && lines[3].contains("alice"));

    let json = cli(&db.url, &["audit", "query", "--format", "json"], &[]);
    let page: Value = serde_json::from_str(&stdout(&json)).expect("json output");
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    assert_eq!(page["next_cursor"], Value::Null);

    let csv = cli(
        &db.url,
        &["audit", "query", "--format", "csv", "--outcome", "issued"],
        &[],
    );
    let text = stdout(&csv);
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("id,time,request_id,outcome,status,subject"));
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows[1].contains(",issued,200,bob,"), "{text}");

    let paged = cli(&db.url, &["audit", "query", "--limit", "2"], &[]);
    assert!(stderr(&paged).contains("--cursor"), "{}", stderr(&paged));
    let bad = cli(&db.url, &["audit", "query", "--outcome", "stolen"], &[]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("outcome"));
    db.cleanup().await;
}
both_backends!(query_prints_a_table_json_and_csv);

async fn audit_hash_finds_the_event_of_a_token(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (app, tokens) = log_of_two_tokens_and_a_refusal(&db).await;

    let hashed = cli(
        &db.url,
        &["audit", "hash", &tokens[1]],
        &[("AUDIT_HMAC_KEY", &app.secrets.audit)],
    );
    let fingerprint = stdout(&hashed).trim().to_owned();
    let found = cli(
        &db.url,
        &[
            "audit",
            "query",
            "--token-fingerprint",
            &fingerprint,
            "--format",
            "json",
        ],
        &[],
    );
    let page: Value = serde_json::from_str(&stdout(&found)).unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subject"], "bob");
    db.cleanup().await;
}
both_backends!(audit_hash_finds_the_event_of_a_token);

async fn export_writes_json_lines_oldest_first(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let _ = log_of_two_tokens_and_a_refusal(&db).await;

    let out = cli(&db.url, &["audit", "export", "--since", "1h"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let subjects: Vec<&str> = events
        .iter()
        .map(|e| e["subject"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(subjects, ["alice", "bob", "-"]);

    let future = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let none = cli(&db.url, &["audit", "export", "--since", &future], &[]);
    assert!(none.status.success());
    assert_eq!(stdout(&none), "");
    db.cleanup().await;
}
both_backends!(export_writes_json_lines_oldest_first);

async fn migrate_creates_the_schema_once(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let before = cli(&db.url, &["audit", "verify"], &[]);
    assert!(!before.status.success());
    for _ in 0..2 {
        let out = cli(&db.url, &["migrate"], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).starts_with("ok"));
    }
    let after = cli(&db.url, &["audit", "verify"], &[]);
    assert!(after.status.success(), "{}", stderr(&after));
    assert!(stdout(&after).starts_with("ok, 0 events"));
    db.cleanup().await;
}
both_backends!(migrate_creates_the_schema_once);

/// Look-alike subjects stay apart in the table: zero-width characters and no-break
/// spaces are shown escaped (bidi controls never make a session).
async fn the_table_shows_invisible_characters_of_a_subject_escaped(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .spawn()
        .await;
    app.vend_token("ali\u{200B}ce\u{00A0}").await;
    let table = cli(&db.url, &["audit", "query"], &[]);
    assert!(table.status.success(), "{}", stderr(&table));
    let out = stdout(&table);
    assert!(out.contains("ali\\u{200b}ce\\u{00a0}"), "{out}");
    assert!(!out.contains('\u{200B}'), "{out}");
}

both_backends!(the_table_shows_invisible_characters_of_a_subject_escaped);

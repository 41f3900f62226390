use std::collections::HashSet;

use serde_json::Value;
use sqlx::Row;

use crate::both_backends;
use crate::support::*;

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    response.json().await.unwrap()
}

async fn audit_api_refuses_sessions_without_the_reader_role(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    app.vend_token("alice").await;

    let none = app.get_events(None, "").await;
    assert!(none.headers().contains_key("www-authenticate"));
    problem(none, 401).await;
    problem(app.get_events(Some("not-a-jwt"), "").await, 401).await;
    let forged = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await
        .reader(); // signed with another app's key
    problem(app.get_events(Some(&forged), "").await, 401).await;
    let user = app.session_with_roles("alice", &["some-other-role"]);
    let body = problem(app.get_events(Some(&user), "").await, 403).await;
    assert!(body.to_string().contains("reader role"));

    let (events, next) = app.events("").await;
    assert_eq!(events.len(), 1);
    assert_eq!(next, None);
    db.cleanup().await;
}
both_backends!(audit_api_refuses_sessions_without_the_reader_role);

async fn audit_api_filters_by_subject_outcome_scope_and_time(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    app.vend_token("alice").await;
    let bob = app.session_with_roles("bob", &[]);
    let r = app
        .vend_request(Some(&bob), r#"{"scope":"streams"}"#, &new_request_id())
        .await;
    assert_eq!(r.status().as_u16(), 200);
    app.vend_request(None, "{}", &new_request_id()).await;
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };

    let subjects = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["subject"].as_str().unwrap_or("-").to_owned())
            .collect()
    };
    assert_eq!(subjects(&app.events("subject=alice").await.0), ["alice"]);
    assert_eq!(subjects(&app.events("scope=streams").await.0), ["bob"]);
    assert_eq!(
        subjects(&app.events("outcome=unauthenticated").await.0),
        ["-"]
    );
    assert_eq!(app.events("outcome=issued").await.0.len(), 2);
    let since = fmt(before);
    assert_eq!(app.events(&format!("since={since}")).await.0.len(), 3);
    assert_eq!(app.events(&format!("until={since}")).await.0.len(), 0);
    // Newest first.
    let all = app.events("").await.0;
    assert_eq!(all[0]["outcome"], "unauthenticated");
    assert_eq!(all[2]["subject"], "alice");

    for (query, param) in [
        ("outcome=stolen", "outcome"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("cursor=bm9wZQ", "cursor"),
        ("colour=red", "colour"),
    ] {
        let body = problem(app.get_events(Some(&app.reader()), query).await, 400).await;
        assert!(
            body["detail"].as_str().unwrap().contains(param),
            "{query}: {body}"
        );
    }
    db.cleanup().await;
}
both_backends!(audit_api_filters_by_subject_outcome_scope_and_time);

async fn pagination_returns_every_event_exactly_once_under_concurrent_inserts(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .spawn()
        .await;
    let existing = futures_util::future::join_all((0..50).map(|i| {
        let app = &app;
        async move { app.vend_token(&format!("user-{}", i % 7)).await }
    }))
    .await;
    assert_eq!(existing.len(), 50);
    let before: HashSet<String> = app
        .all_events()
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(before.len(), 50);

    // Writers keep adding events while a reader pages through with small pages.
    let writer = {
        let address = app.address.clone();
        let session = app.session_with_roles("late-user", &[]);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..40 {
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
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=7&cursor={c}"),
            None => "limit=7".into(),
        };
        let (events, next) = app.events(&q).await;
        seen.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();

    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event is returned twice");
    for id in &before {
        assert!(
            unique.contains(id),
            "event {id} stored before paging is returned"
        );
    }
    db.cleanup().await;
}
both_backends!(pagination_returns_every_event_exactly_once_under_concurrent_inserts);

/// Every subject query and every fingerprint query, checked against the full listing.
async fn lookups_match_the_listing(app: &TestApp, subjects: &[(&str, usize)]) {
    let all = app.all_events().await;
    for (subject, count) in subjects {
        let (events, _) = app.events(&format!("subject={subject}")).await;
        assert_eq!(events.len(), *count, "subject={subject}: {events:?}");
        assert!(events.iter().all(|e| e["subject"] == *subject));
        let expected: Vec<&Value> = all.iter().filter(|e| e["subject"] == *subject).collect();
        let ids = |v: &[&Value]| v.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
        assert_eq!(ids(&events.iter().collect::<Vec<_>>()), ids(&expected));
    }
    let fingerprints: Vec<&str> = all
        .iter()
        .filter_map(|e| e["token_fingerprint"].as_str())
        .collect();
    assert!(!fingerprints.is_empty());
    for fp in &fingerprints {
        let (events, _) = app.events(&format!("token_fingerprint={fp}")).await;
        assert_eq!(events.len(), 1, "token_fingerprint={fp}");
        assert_eq!(events[0]["token_fingerprint"], *fp);
    }
    let pair = format!("token_fingerprint={},{}", fingerprints[0], fingerprints[1]);
    assert_eq!(app.events(&pair).await.0.len(), 2, "{pair}");
}

/// SQLite's `(indexed_seq, newest seq)` of its lookup table (`None` on PostgreSQL).
async fn lookup_progress(db: &TestDb) -> Option<(i64, i64)> {
    if db.backend != Backend::Sqlite {
        return None;
    }
    let pool = db.raw().await;
    let row = sqlx::query(
        "SELECT indexed_seq, (SELECT MAX(seq) FROM audit_events) AS last FROM audit_lookup_state",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    Some((row.get("indexed_seq"), row.get("last")))
}

/// Waits (at most a few seconds) until SQLite's lookup table covers `events` events.
async fn wait_until_indexed(db: &TestDb, events: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Some((indexed, last)) = lookup_progress(db).await {
        if indexed >= events && indexed == last {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never indexed: {indexed} of {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// SQLite finds subjects and fingerprints through a side table its writer fills in
/// batches; events newer than the last batch are found by a scan. Either way, and after
/// an older binary left events unindexed, a lookup finds exactly the right events.
async fn subject_and_fingerprint_lookups_find_events_indexed_or_not(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let spawn = || {
        TestApp::builder()
            .store(Store::db(&db))
            .limits(Limits::Off)
            .reuse(Reuse::Off)
            .spawn()
    };
    let app = spawn().await;
    for user in ["alice", "bob", "alice"] {
        app.vend_token(user).await;
    }
    if let Some((indexed, last)) = lookup_progress(&db).await {
        assert!(
            indexed < last,
            "the newest events are not indexed yet: {indexed} {last}"
        );
    }
    lookups_match_the_listing(&app, &[("alice", 2), ("bob", 1), ("carol", 0)]).await;

    // A pass starts once an event has waited a second, even with no further commits.
    app.vend_token("carol").await;
    wait_until_indexed(&db, 4).await;
    lookups_match_the_listing(&app, &[("alice", 2), ("bob", 1), ("carol", 1)]).await;
    let (page, next) = app.events("subject=alice&limit=1").await;
    assert_eq!(page.len(), 1);
    let (older, _) = app
        .events(&format!("subject=alice&limit=1&cursor={}", next.unwrap()))
        .await;
    assert_eq!(older.len(), 1);
    assert_ne!(page[0]["id"], older[0]["id"]);
    drop(app);

    // As an older binary leaves it: events written without lookup entries. The next
    // start indexes them before it serves.
    if backend == Backend::Sqlite {
        let pool = db.raw().await;
        sqlx::query("DELETE FROM audit_lookup")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_lookup_state SET indexed_seq = 0")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let app = spawn().await;
    app.vend_token("dave").await;
    wait_until_indexed(&db, 5).await;
    lookups_match_the_listing(&app, &[("alice", 2), ("bob", 1), ("carol", 1), ("dave", 1)]).await;
    db.cleanup().await;
}
both_backends!(subject_and_fingerprint_lookups_find_events_indexed_or_not);

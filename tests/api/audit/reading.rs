use std::collections::HashSet;

use serde_json::Value;

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

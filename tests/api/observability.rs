//! The observability kit in `deploy/observability/` only uses series the service
//! really exposes: every metric name in the dashboard's and the alert rules' PromQL is
//! looked up in a scrape of a running service, in both exposition formats.

use std::collections::BTreeSet;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::*;

const DASHBOARD: &str = include_str!("../../deploy/observability/dashboard.json");
const ALERTS: &str = include_str!("../../deploy/observability/alerts.yml");

/// PromQL words that are not metric names (aggregations may be followed by `by (…)`
/// rather than by their parenthesis).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, label names (inside `{…}` or after `by`/`without`/`on`/`ignoring`),
/// strings, numbers, durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            i += if chars[i] == '\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_label_list => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                skip_label_list = false;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str())
                {
                    skip_label_list = true;
                } else if next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_promql_reader_finds_metric_names_only() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{job=~"$job",x="y{z}"}[$__rate_interval])))
           / clamp_min(sum without(instance) (b_total offset 5m), 1e-9) > 0.2 or on(job) c == 1"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b_total", "c"]
    );
}

fn dashboard_exprs() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard.json is JSON");
    let mut exprs = Vec::new();
    let mut stack = vec![&dashboard["panels"]];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if let Some(Value::String(e)) = map.get("expr") {
                    exprs.push(e.clone());
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    exprs
}

fn alert_exprs() -> Vec<(String, String)> {
    let docs = YamlLoader::load_from_str(ALERTS).expect("alerts.yml is YAML");
    let mut out = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            assert!(
                !matches!(rule["annotations"]["summary"], Yaml::BadValue),
                "{name} has a summary"
            );
            out.push((name.to_owned(), expr.to_owned()));
        }
    }
    out
}

/// Sample names (as a scraper stores them) in an exposition.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

async fn scrape(app: &TestApp, accept: &str) -> (String, String) {
    let response = app
        .http
        .get(format!("{}/metrics", app.address))
        .header("Accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = header(&response, "content-type")
        .unwrap_or_default()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn every_series_of_the_dashboard_and_the_alert_rules_is_on_metrics() {
    // Arrange: a service that has vended once and refused once.
    let app = TestApp::builder()
        .env("RATE_LIMIT_PER_USER", "1/minute")
        .spawn()
        .await;
    let session = app.session(&unique_user());
    assert_eq!(app.vend_transcribe(&session).await.status(), 200);
    assert_eq!(app.vend_transcribe(&session).await.status(), 429);

    // Act
    let (om_type, openmetrics) = scrape(&app, "application/openmetrics-text").await;
    let (text_type, prometheus) = scrape(&app, "text/plain;version=0.0.4").await;

    // Assert
    assert!(
        om_type.starts_with("application/openmetrics-text"),
        "{om_type}"
    );
    assert!(
        text_type.starts_with("text/plain; version=0.0.4"),
        "{text_type}"
    );
    let alerts = alert_exprs();
    let dashboard = dashboard_exprs();
    assert!(alerts.len() >= 6 && dashboard.len() >= 20);
    for (format, scrape) in [
        ("OpenMetrics", &openmetrics),
        ("Prometheus text", &prometheus),
    ] {
        let have = exposed(scrape);
        let mut missing = Vec::new();
        for (whence, expr) in alerts
            .iter()
            .map(|(name, e)| (format!("alert {name}"), e))
            .chain(dashboard.iter().map(|e| ("dashboard".to_owned(), e)))
        {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{whence}: no metric in {expr}");
            missing.extend(
                names
                    .into_iter()
                    .filter(|n| !have.contains(n))
                    .map(|n| format!("{whence}: {n}")),
            );
        }
        assert!(
            missing.is_empty(),
            "not on /metrics ({format}): {missing:?}"
        );
    }
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_status_and_report_the_process() {
    let app = TestApp::builder().spawn().await;
    let session = app.session(&unique_user());
    assert_eq!(app.vend_transcribe(&session).await.status(), 200);
    let missing = app
        .http
        .get(format!("{}/no/such/path", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let (_, text) = scrape(&app, "text/plain").await;

    for line in [
        "token_vendor_http_requests_total{route=\"/v1/tokens\",status=\"200\"} 1",
        "token_vendor_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "token_vendor_http_request_duration_seconds_count{route=\"/v1/tokens\",status=\"200\"} 1",
        "token_vendor_audit_queue_depth 0",
        "token_vendor_jwks_stale{source=\"corti\",tenant=\"base\"} 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    for family in [
        "# TYPE process_cpu_seconds_total counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
    ] {
        assert!(text.contains(family), "{family} in\n{text}");
    }
    assert!(!text.contains("# EOF"));
}

#[tokio::test]
async fn the_audit_writer_reports_its_commits() {
    let db = TestDb::new(Backend::Sqlite)
        .await
        .expect("SQLite needs no server");
    let app = TestApp::builder().store(Store::db(&db)).spawn().await;
    let session = app.session(&unique_user());
    assert_eq!(app.vend_transcribe(&session).await.status(), 200);

    let (_, text) = scrape(&app, "text/plain").await;

    for line in [
        "token_vendor_audit_commit_batch_size_count 1",
        "token_vendor_audit_commit_duration_seconds_count 1",
        "token_vendor_audit_commit_failures_total 0",
        "token_vendor_audit_store_failing 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    db.cleanup().await;
}

/// Connections are file descriptors: an alert fires before a replica runs out of them.
#[test]
fn an_alert_watches_open_file_descriptors_against_the_limit() {
    let alerts = alert_exprs();
    assert!(
        alerts
            .iter()
            .any(|(_, e)| e.contains("process_open_fds") && e.contains("process_max_fds")),
        "{alerts:?}"
    );
}

//! Every log line of full vends, captured at TRACE: neither the client secret, the
//! session, nor any token may appear in them.

use crate::support::*;
use crate::Captured;
use serde_json::Value;

#[tokio::test]
async fn no_secret_or_token_reaches_any_log_line() {
    let captured = Captured::get();

    let app = TestApp::builder().allowed_origin(APP_ORIGIN).spawn().await;
    let session = app.session("logged-user");
    let mut tokens = Vec::new();
    for body in [
        r#"{"scope":"transcribe"}"#,
        r#"{"scope":"transcribe streams"}"#,
    ] {
        let response = app.vend(&session, body).await;
        assert_eq!(response.status().as_u16(), 200);
        let json: Value = response.json().await.unwrap();
        tokens.push(json["accessToken"].as_str().unwrap().to_owned());
    }
    // A vend the upstream refuses because the credentials are wrong.
    let wrong = TestApp::builder()
        .allowed_origin(APP_ORIGIN)
        .env(
            "CORTI_AUTH_URL",
            app.standin.as_ref().unwrap().base_url().to_owned(),
        )
        .spawn()
        .await;
    let refused = wrong
        .vend(&wrong.session("logged-user"), r#"{"scope":"transcribe"}"#)
        .await;
    assert_eq!(refused.status().as_u16(), 502);

    let logs = captured.text();
    assert!(
        logs.contains(r#""target":"audit""#),
        "audit lines are captured"
    );
    assert!(
        logs.contains("check CORTI_CLIENT_ID"),
        "ops are told the credentials are wrong"
    );
    let mut secrets = vec![
        app.secrets.client.clone(),
        wrong.secrets.client.clone(),
        app.secrets.session.clone(),
        session.clone(),
    ];
    secrets.extend(tokens.iter().cloned());
    // Token signatures alone must not leak either.
    secrets.extend(
        tokens
            .iter()
            .filter_map(|t| t.rsplit('.').next().map(str::to_owned)),
    );
    for secret in secrets {
        assert!(
            !logs.contains(&secret),
            "a secret or token reached the logs"
        );
    }
    for line in logs.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
}

//! Operator control without a restart: the deny list (`DENY_LIST_FILE`), session key
//! rotation (`SESSION_JWT_SECRET_FILE`, `SESSION_JWT_PREVIOUS_SECRET`,
//! `SESSION_JWT_ROTATION_GRACE`) and audit fingerprint key rotation
//! (`AUDIT_HMAC_KEY_FILE`), each re-read on change (within 2 s) and on SIGHUP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use token_vendor::audit::{Fingerprinter, Outcome};
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;

use crate::support::serve_process::ServeProcess;
use crate::support::*;

const DENIED: &str = "urn:token-vendor:problem:subject-denied";
/// A change must be in force within 2 s; a little more for a loaded machine.
const PICKED_UP: Duration = Duration::from_secs(4);

struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tv-operator-{}", random_hex(8)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    /// Writes `name` as Kubernetes and editors do: a new file renamed into place.
    fn put(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.{}", random_hex(4)));
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn deny_entries(app: &TestApp) -> f64 {
    app.metric("token_vendor_deny_list_entries").await
}

async fn status_of(app: &TestApp, session: &str) -> u16 {
    app.vend_transcribe(session).await.status().as_u16()
}

fn access_token(body: &Value) -> String {
    body["accessToken"]
        .as_str()
        .expect("accessToken")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_subject_is_refused_and_lifted_without_restart_and_its_cached_token_is_gone() {
    let dir = Dir::new();
    let list = dir.put("deny", "# nobody yet\n");
    let app = TestApp::builder()
        .limits(Limits::Off)
        .env("DENY_LIST_FILE", list.display().to_string())
        .spawn()
        .await;
    let alice = app.session("alice");
    let first = app.vend_transcribe(&alice).await;
    assert_eq!(first.status().as_u16(), 200);
    let cached = access_token(&json_body(first).await);
    assert_eq!(deny_entries(&app).await, 0.0);

    dir.put("deny", "# left the company\nalice\n");
    assert!(
        eventually(PICKED_UP, || async { deny_entries(&app).await == 1.0 }).await,
        "the edited deny list is in force within 2 s"
    );
    let refused = app.vend_transcribe(&alice).await;
    let (body, request_id) = problem(refused, 403).await;
    assert_eq!(body["type"], DENIED, "{body}");
    assert!(!body["detail"].as_str().unwrap_or("").is_empty());
    let event = assert_outcome(&app, &request_id, Outcome::Forbidden, 403);
    assert_eq!(event.subject.as_deref(), Some("alice"));
    assert!(
        event.detail.as_deref().unwrap_or("").contains("deny list"),
        "{event:?}"
    );
    assert_eq!(
        status_of(&app, &app.session("bob")).await,
        200,
        "others still get tokens"
    );
    assert_eq!(app.metric("token_vendor_denied_vends_total").await, 1.0);

    dir.put("deny", "\n");
    assert!(
        eventually(PICKED_UP, || async { deny_entries(&app).await == 0.0 }).await,
        "the lifted entry is out within 2 s"
    );
    let again = app.vend_transcribe(&alice).await;
    assert_eq!(again.status().as_u16(), 200);
    let request_id = request_id_of(&again);
    let token = access_token(&json_body(again).await);
    assert_ne!(
        token, cached,
        "the token cached before the denial is never handed out again"
    );
    assert_outcome(&app, &request_id, Outcome::Issued, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_stops_vending_for_everyone() {
    let dir = Dir::new();
    let list = dir.put("deny", "");
    let app = TestApp::builder()
        .limits(Limits::Off)
        .env("DENY_LIST_FILE", list.display().to_string())
        .spawn()
        .await;
    let carol = app.vend_token("carol").await;
    dir.put("deny", "*\n");
    assert!(eventually(PICKED_UP, || async { deny_entries(&app).await == 1.0 }).await);
    for user in ["alice", "bob", "carol"] {
        let (body, request_id) = problem(app.vend_transcribe(&app.session(user)).await, 403).await;
        assert_eq!(body["type"], DENIED);
        assert_outcome(&app, &request_id, Outcome::Forbidden, 403);
    }
    dir.put("deny", "# all clear\n");
    assert!(eventually(PICKED_UP, || async { deny_entries(&app).await == 0.0 }).await);
    let after = app.vend_token("carol").await;
    assert_ne!(after, carol, "no token cached before `*` is reused");
}

#[test]
fn an_unreadable_deny_list_stops_start_up() {
    let dir = Dir::new();
    let missing = dir.0.join("no-such-deny-list");
    let mut out = std::process::Command::new(env!("CARGO_BIN_EXE_token-vendor"))
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
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.0.join("audit.db").display()),
        )
        .env("DENY_LIST_FILE", &missing)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run serve");
    // A service that starts anyway would serve forever: give it 30 s.
    let started = std::time::Instant::now();
    while out.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = out.kill();
            panic!("serve started although DENY_LIST_FILE cannot be read");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = out.wait_with_output().expect("serve output");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("DENY_LIST_FILE"), "{}", stderr(&out));
}

/// Rewrites `path` in place with content of the same length and gives it back its
/// modification time, so the once-a-second poll sees no change: only SIGHUP reloads it.
fn rewrite_unnoticed(path: &Path, content: &str) {
    let before = std::fs::metadata(path).expect("metadata");
    assert_eq!(before.len() as usize, content.len(), "same length");
    std::fs::write(path, content).expect("write");
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    file.set_modified(before.modified().expect("mtime"))
        .expect("restore mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_to_the_real_binary_rereads_the_deny_list_and_the_session_secret() {
    let dir = Dir::new();
    let list = dir.put("deny", "alice\n");
    let old_secret = format!("fake-session-secret-{}", random_hex(24));
    let new_secret = format!("fake-session-secret-{}", random_hex(24));
    let secret_file = dir.put("session", &old_secret);
    let client_secret = format!("fake-client-secret-{}", random_hex(12));
    let standin = AuthStandIn::start(StandInConfig {
        client_id: "test-client".into(),
        client_secret: client_secret.clone(),
        token_lifetime: Duration::from_secs(300),
    })
    .expect("stand-in starts");
    let service = ServeProcess::start(&[
        ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ("CORTI_ENVIRONMENT", "eu".into()),
        ("CORTI_AUTH_URL", standin.base_url().to_owned()),
        ("CORTI_CLIENT_ID", "test-client".into()),
        ("CORTI_CLIENT_SECRET", client_secret),
        ("SESSION_JWT_SECRET_FILE", secret_file.display().to_string()),
        ("SESSION_JWT_ROTATION_GRACE", "0".into()),
        ("AUDIT_HMAC_KEY", audit_key().to_owned()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.0.join("audit.db").display()),
        ),
        ("DENY_LIST_FILE", list.display().to_string()),
    ]);
    let http = reqwest::Client::new();
    let vend = |secret: String, sub: &'static str| {
        let http = http.clone();
        let url = format!("{}/v1/tokens", service.address);
        async move {
            http.post(url)
                .bearer_auth(SessionSigner::new(&secret).session(sub))
                .json(&serde_json::json!({"scope": "transcribe"}))
                .send()
                .await
                .expect("vend")
                .status()
                .as_u16()
        }
    };
    assert_eq!(vend(old_secret.clone(), "alice").await, 403);
    assert_eq!(vend(old_secret.clone(), "bobby").await, 200);
    assert_eq!(vend(new_secret.clone(), "bobby").await, 401);

    rewrite_unnoticed(&list, "bobby\n");
    rewrite_unnoticed(&secret_file, &new_secret);
    service.sighup();
    let reloaded = eventually(PICKED_UP, || async {
        vend(new_secret.clone(), "bobby").await == 403
    })
    .await;
    assert!(
        reloaded,
        "after SIGHUP the new secret verifies and bobby is denied"
    );
    assert_eq!(vend(new_secret.clone(), "alice").await, 200, "alice lifted");
    assert_eq!(
        vend(old_secret.clone(), "alice").await,
        401,
        "without a grace period the replaced secret is refused at once"
    );
    assert!(service.log_has("SIGHUP"));
    standin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_session_secret_is_accepted_and_the_old_one_only_during_the_grace() {
    let dir = Dir::new();
    let old = format!("fake-session-secret-{}", random_hex(24));
    let new = format!("fake-session-secret-{}", random_hex(24));
    let file = dir.put("session", &format!("{old}\n"));
    let app = TestApp::builder()
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .secrets(Secrets {
            session: old.clone(),
            ..Secrets::fresh()
        })
        .env("SESSION_JWT_SECRET", "")
        .env("SESSION_JWT_SECRET_FILE", file.display().to_string())
        .env("SESSION_JWT_ROTATION_GRACE", "3s")
        .spawn()
        .await;
    let old_session = SessionSigner::new(&old).session("alice");
    let new_session = SessionSigner::new(&new).session("alice");
    assert_eq!(status_of(&app, &old_session).await, 200);
    assert_eq!(status_of(&app, &new_session).await, 401);

    dir.put("session", &format!("{new}\n"));
    assert!(
        eventually(PICKED_UP, || async {
            status_of(&app, &new_session).await == 200
        })
        .await,
        "the new secret is accepted within 2 s of the file change"
    );
    assert_eq!(
        status_of(&app, &old_session).await,
        200,
        "the replaced secret is accepted during the grace period"
    );
    assert!(
        eventually(Duration::from_secs(6), || async {
            status_of(&app, &old_session).await == 401
        })
        .await,
        "and refused after it"
    );
    assert_eq!(status_of(&app, &new_session).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_new_session_secret_is_refused_and_the_old_one_kept_and_the_previous_secret_works() {
    let dir = Dir::new();
    let current = format!("fake-session-secret-{}", random_hex(24));
    let previous = format!("fake-previous-secret-{}", random_hex(24));
    let file = dir.put("session", &current);
    let list = dir.put("deny", "");
    let app = TestApp::builder()
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .secrets(Secrets {
            session: current.clone(),
            ..Secrets::fresh()
        })
        .env("SESSION_JWT_SECRET", "")
        .env("SESSION_JWT_SECRET_FILE", file.display().to_string())
        .env("SESSION_JWT_PREVIOUS_SECRET", previous.clone())
        .env("DENY_LIST_FILE", list.display().to_string())
        .spawn()
        .await;
    let current_session = SessionSigner::new(&current).session("alice");
    let previous_session = SessionSigner::new(&previous).session("alice");
    let stranger = SessionSigner::new(&format!("fake-other-secret-{}", random_hex(24)));
    assert_eq!(status_of(&app, &current_session).await, 200);
    assert_eq!(
        status_of(&app, &previous_session).await,
        200,
        "SESSION_JWT_PREVIOUS_SECRET is accepted beside the current secret"
    );
    assert_eq!(status_of(&app, &stranger.session("alice")).await, 401);

    for bad in ["too-short-secret", ""] {
        // The deny list changes in the same poll, so its gauge tells the reload ran.
        let marker = format!("marker-{}\n", random_hex(4));
        dir.put("session", bad);
        dir.put("deny", &marker);
        assert!(eventually(PICKED_UP, || async { deny_entries(&app).await == 1.0 }).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            status_of(&app, &current_session).await,
            200,
            "a bad new secret ({bad:?}) is refused and the old one kept"
        );
        assert_eq!(
            status_of(&app, &SessionSigner::new(bad).session("alice")).await,
            401
        );
        dir.put("deny", "");
        assert!(eventually(PICKED_UP, || async { deny_entries(&app).await == 0.0 }).await);
    }
}

async fn hmac_key_rotation_keeps_old_fingerprints_findable(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let dir = Dir::new();
    let old_key = format!("fake-audit-key-old-{}", random_hex(16));
    let new_key = format!("fake-audit-key-new-{}", random_hex(16));
    let key_file = dir.put("audit-key", &old_key);
    let old_key_file = dir.put("audit-key-old", &old_key);
    let app = TestApp::builder()
        .store(Store::db(&db))
        .limits(Limits::Off)
        .env("AUDIT_HMAC_KEY", "")
        .env("AUDIT_HMAC_KEY_FILE", key_file.display().to_string())
        .spawn()
        .await;
    let token = app.vend_token("alice").await;
    let old_fp = Fingerprinter::new(old_key.clone().into()).fingerprint(&token);
    let new_fp = Fingerprinter::new(new_key.clone().into()).fingerprint(&token);

    dir.put("audit-key", &format!("{new_key}\n"));
    // The live token is handed again; once the key is in force its event carries the
    // new key's fingerprint.
    let rotated = eventually(PICKED_UP, || async {
        let response = app.vend_transcribe(&app.session("alice")).await;
        let request_id = request_id_of(&response);
        assert_eq!(response.status().as_u16(), 200);
        let events = app.events_for(&request_id).await;
        events[0]["token_fingerprint"] == new_fp.as_str()
    })
    .await;
    assert!(rotated, "the new fingerprint key is in force within 2 s");

    let hashed = cli(
        &db.url,
        &[
            "audit",
            "hash",
            &token,
            "--previous-key-file",
            &old_key_file.display().to_string(),
        ],
        &[("AUDIT_HMAC_KEY", &new_key)],
    );
    assert!(hashed.status.success(), "{}", stderr(&hashed));
    let printed: Vec<String> = stdout(&hashed).lines().map(str::to_owned).collect();
    assert_eq!(
        printed,
        vec![new_fp.clone(), old_fp.clone()],
        "current key first"
    );
    assert_eq!(
        stderr(&hashed).matches("key ").count(),
        2,
        "each key id named"
    );

    let (old_events, _) = app
        .events(&format!("token_fingerprint={old_fp}&limit=100"))
        .await;
    // The issue, and the reuses answered before the new key was in force.
    assert!(
        old_events.iter().any(|e| e["outcome"] == "issued"),
        "the event made under the old key is found: {old_events:#?}"
    );
    let (both, _) = app
        .events(&format!(
            "token_fingerprint={}&limit=100",
            printed.join(",")
        ))
        .await;
    assert!(both.len() >= 2, "{both:#?}");
    assert!(both
        .iter()
        .any(|e| e["token_fingerprint"] == old_fp.as_str()));
    assert!(both
        .iter()
        .any(|e| e["token_fingerprint"] == new_fp.as_str()));
    assert!(both.iter().all(|e| e["subject"] == "alice"));

    let cli_query = cli(
        &db.url,
        &[
            "audit",
            "query",
            "--token-fingerprint",
            &printed.join(","),
            "--format",
            "json",
        ],
        &[],
    );
    let page: Value = serde_json::from_str(&stdout(&cli_query)).expect("json output");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(both.len()));
    db.cleanup().await;
}
crate::both_backends!(hmac_key_rotation_keeps_old_fingerprints_findable);

#[test]
fn check_config_shows_the_new_settings_with_secrets_redacted() {
    let dir = Dir::new();
    let list = dir.put("deny", "alice\n");
    let previous = format!("fake-previous-secret-{}", random_hex(24));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-vendor"))
        .arg("check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CORTI_ENVIRONMENT", "eu")
        .env("CORTI_CLIENT_ID", "test-client")
        .env("CORTI_CLIENT_SECRET", "fake-client-secret-for-check")
        .env("SESSION_JWT_SECRET", "fake-session-secret-".repeat(3))
        .env("SESSION_JWT_PREVIOUS_SECRET", &previous)
        .env("SESSION_JWT_ROTATION_GRACE", "90s")
        .env("AUDIT_HMAC_KEY", audit_key())
        .env("AUDIT_ALLOW_UNSIGNED", "true")
        .env("DENY_LIST_FILE", &list)
        .output()
        .expect("run check-config");
    let printed = stdout(&out);
    assert!(out.status.success(), "{printed}{}", stderr(&out));
    assert!(
        printed.contains("SESSION_JWT_PREVIOUS_SECRET=(set, redacted)"),
        "{printed}"
    );
    assert!(
        printed.contains("SESSION_JWT_ROTATION_GRACE=1m 30s"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("DENY_LIST_FILE={}", list.display())),
        "{printed}"
    );
    assert!(!printed.contains(&previous));

    std::fs::remove_file(&list).expect("remove");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-vendor"))
        .arg("check-config")
        .env_clear()
        .env("CORTI_ENVIRONMENT", "eu")
        .env("CORTI_CLIENT_ID", "test-client")
        .env("CORTI_CLIENT_SECRET", "fake-client-secret-for-check")
        .env("SESSION_JWT_SECRET", "fake-session-secret-".repeat(3))
        .env("AUDIT_HMAC_KEY", audit_key())
        .env("AUDIT_ALLOW_UNSIGNED", "true")
        .env("DENY_LIST_FILE", &list)
        .output()
        .expect("run check-config");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("DENY_LIST_FILE"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_session_public_key_file_is_picked_up_and_a_private_key_refused() {
    let dir = Dir::new();
    let (first, second) = (TestKey::generate(), TestKey::generate());
    let file = dir.put("session.pem", &first.public_pem);
    let app = TestApp::builder()
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .env("SESSION_JWT_SECRET", "")
        .env("SESSION_JWT_PUBLIC_KEY_FILE", file.display().to_string())
        .env("SESSION_JWT_ISSUER", "https://id.example.test")
        .env("SESSION_JWT_AUDIENCE", "token-vendor")
        .env("SESSION_JWT_ROTATION_GRACE", "0")
        .spawn()
        .await;
    let session = |key: &TestKey| {
        key.sign(&serde_json::json!({
            "sub": "alice", "exp": now() + 600,
            "iss": "https://id.example.test", "aud": "token-vendor",
        }))
    };
    assert_eq!(status_of(&app, &session(&first)).await, 200);
    assert_eq!(status_of(&app, &session(&second)).await, 401);

    dir.put("session.pem", &second.public_pem);
    assert!(
        eventually(PICKED_UP, || async {
            status_of(&app, &session(&second)).await == 200
        })
        .await,
        "the new public key is in force within 2 s"
    );
    assert_eq!(
        status_of(&app, &session(&first)).await,
        401,
        "without a grace period the replaced key is refused at once"
    );

    // A private key is refused and the key in force stays; nothing observable says
    // when the refused reload ran, so the check waits past two polls.
    dir.put(
        "session.pem",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status_of(&app, &session(&second)).await, 200);
}

/// Kubernetes removes a Secret's file when its key leaves the Secret: a removed
/// previous-secret file withdraws that secret as an emptied one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_previous_secret_file_withdraws_the_previous_secret() {
    let dir = Dir::new();
    let current = format!("fake-session-secret-{}", random_hex(24));
    let previous = format!("fake-previous-secret-{}", random_hex(24));
    let previous_file = dir.put("previous", &previous);
    let app = TestApp::builder()
        .limits(Limits::Off)
        .reuse(Reuse::Off)
        .secrets(Secrets {
            session: current.clone(),
            ..Secrets::fresh()
        })
        .env(
            "SESSION_JWT_PREVIOUS_SECRET_FILE",
            previous_file.display().to_string(),
        )
        .spawn()
        .await;
    let previous_session = SessionSigner::new(&previous).session("alice");
    assert_eq!(status_of(&app, &previous_session).await, 200);

    std::fs::remove_file(&previous_file).expect("remove");
    let withdrawn = eventually(PICKED_UP, || async {
        status_of(&app, &SessionSigner::new(&previous).session("alice")).await == 401
    })
    .await;
    assert!(withdrawn, "the removed previous secret is still accepted");
    let current_session = SessionSigner::new(&current).session("alice");
    assert_eq!(status_of(&app, &current_session).await, 200);
}

/// An editor's byte-order mark does not hide the first line, and a JSON-string line
/// names a subject exactly, surrounding no-break spaces and ` #` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bom_does_not_hide_the_first_deny_line_and_quoted_lines_name_subjects_exactly() {
    let dir = Dir::new();
    let list = dir.put(
        "deny",
        "\u{FEFF}plain-user\n\"\\u00a0nbsp-user\" # quoted\n\"hash #1\"\n",
    );
    let app = TestApp::builder()
        .limits(Limits::Off)
        .env("DENY_LIST_FILE", list.display().to_string())
        .spawn()
        .await;
    for user in ["plain-user", "\u{a0}nbsp-user", "hash #1"] {
        let (body, _) = problem(app.vend_transcribe(&app.session(user)).await, 403).await;
        assert_eq!(body["type"], DENIED, "{user:?}");
    }
    assert_eq!(status_of(&app, &app.session("nbsp-user")).await, 200);
    assert_eq!(status_of(&app, &app.session("hash")).await, 200);
    dir.put("deny", "\u{FEFF}*\n");
    assert!(eventually(PICKED_UP, || async { deny_entries(&app).await == 1.0 }).await);
    let (body, _) = problem(app.vend_transcribe(&app.session("anyone")).await, 403).await;
    assert_eq!(body["type"], DENIED, "a BOM before * does not disable it");
}

//! `token-vendor dev` from the outside: start the binary with nothing configured, read
//! what it prints, and vend a token with it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_dev(db: &std::path::Path) -> (Running, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_token-vendor"))
        .arg("dev")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dev starts");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let mut reader = BufReader::new(stdout).lines();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in reader.by_ref() {
        let line = line.expect("utf-8 output");
        let done = line.contains("curl ");
        lines.push(line);
        if done || Instant::now() > deadline {
            break;
        }
    }
    // Keep reading in the background, as a terminal would, so the pipe stays open.
    std::thread::spawn(move || reader.for_each(drop));
    (running, lines)
}

#[tokio::test]
async fn dev_starts_with_nothing_configured_and_its_printed_curl_vends_a_token() {
    let dir = std::env::temp_dir().join(format!("tv-dev-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_running, lines) = start_dev(&dir.join("audit.db"));
    let output = lines.join("\n");
    assert!(
        output.contains("STAND-IN"),
        "the stand-in is clearly marked: {output}"
    );
    let curl = lines
        .iter()
        .find(|l| l.contains("curl "))
        .expect("a curl line")
        .trim()
        .to_owned();

    // Run the printed line as a newcomer would, when curl is there; else replay it.
    let body: Value = if which("curl") {
        let out = Command::new("sh")
            .arg("-c")
            .arg(&curl)
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "{:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("curl printed JSON")
    } else {
        let url = curl
            .split_whitespace()
            .find(|w| w.starts_with("http"))
            .unwrap();
        let bearer = curl
            .split("Bearer ")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        reqwest::Client::new()
            .post(url)
            .bearer_auth(bearer)
            .header("Content-Type", "application/json")
            .body(r#"{"scope":"transcribe"}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    assert_eq!(body["tokenType"], "Bearer", "{body}");
    assert_eq!(body["scope"], "openid transcribe");
    assert!(body["accessToken"].as_str().unwrap().starts_with("eyJ"));
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false)
}

/// Vends one token with the curl line `dev` printed (replayed with reqwest).
async fn vend_with_printed_curl(lines: &[String]) {
    let curl = lines
        .iter()
        .find(|l| l.contains("curl "))
        .expect("a curl line");
    let url = curl
        .split_whitespace()
        .find(|w| w.starts_with("http"))
        .unwrap();
    let bearer = curl
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let status = reqwest::Client::new()
        .post(url)
        .bearer_auth(bearer)
        .header("Content-Type", "application/json")
        .body(r#"{"scope":"transcribe"}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

/// Runs the `audit verify` line `dev` printed, with this build's binary.
fn run_printed_verify(lines: &[String]) -> (bool, String) {
    let line = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("token-vendor ") && l.ends_with("audit verify"))
        .expect("a verify line");
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_token-vendor"))
        .args(&args)
        .env_clear()
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn dev_keeps_its_audit_keys_beside_its_database_and_the_log_verifies() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tv-dev-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("audit.db");
    let keys = dir.join("audit.db.audit-keys.toml");

    let (running, lines) = start_dev(&db);
    vend_with_printed_curl(&lines).await;
    drop(running);
    let mode = std::fs::metadata(&keys)
        .expect("the keys file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let kept = std::fs::read_to_string(&keys).unwrap();
    let (ok, out) = run_printed_verify(&lines);
    assert!(ok && out.starts_with("ok, 1 events"), "{out}");

    // The next start on the same database takes the same keys: both runs verify.
    let (running, lines) = start_dev(&db);
    vend_with_printed_curl(&lines).await;
    drop(running);
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), kept);
    let (ok, out) = run_printed_verify(&lines);
    assert!(ok && out.starts_with("ok, 2 events (2 chains)"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

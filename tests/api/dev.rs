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

//! The demo side of `token-vendor dev` from the outside: the pages it serves, the demo
//! sign-in, the settings only `dev` reads, and the speech API stand-in's handshake and
//! first protocol steps. (The same things in a real browser: tests/browser/.)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Dev {
    child: Child,
    base: String,
    api: String,
    dir: std::path::PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn command(env: &[(&str, &str)]) -> (Command, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tv-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_token-vendor"));
    cmd.arg("dev")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("audit.db").display()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd, dir)
}

fn start_dev(env: &[(&str, &str)]) -> Dev {
    let (mut cmd, dir) = command(env);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dev starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("utf-8 output");
        let done = line.contains("stop with Ctrl-C");
        lines.push(line);
        if done || Instant::now() > deadline {
            break;
        }
    }
    let value = |label: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
            .unwrap_or_else(|| panic!("no {label} line in {lines:?}"))
    };
    Dev {
        base: value("service:"),
        api: value("Corti speech API:"),
        child,
        dir,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in through the demo endpoint and returns the `Set-Cookie` header.
async fn sign_in(dev: &Dev, subject: &str) -> String {
    let res = http()
        .post(format!("{}/dev/sign-in", dev.base))
        .header("Origin", &dev.base)
        .json(&serde_json::json!({ "subject": subject }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.headers()["set-cookie"].to_str().unwrap().to_owned()
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

async fn vend(dev: &Dev, cookie: &str, origin: &str, scope: &str) -> reqwest::Response {
    http()
        .post(format!("{}/v1/tokens", dev.base))
        .header("Cookie", cookie)
        .header("Origin", origin)
        .json(&serde_json::json!({ "scope": scope }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn dev_serves_the_demo_page_the_js_client_and_the_ops_page() {
    let dev = start_dev(&[]);

    let demo = http().get(format!("{}/", dev.base)).send().await.unwrap();
    assert_eq!(demo.status(), 200);
    let csp = demo.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains(&dev.api),
        "the demo may connect to the stand-in: {csp}"
    );
    assert!(demo.text().await.unwrap().contains("/demo/demo.js"));

    let client = http()
        .get(format!("{}/client/token-vendor.js", dev.base))
        .send()
        .await
        .unwrap();
    assert!(client.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        client.text().await.unwrap(),
        include_str!("../../clients/js/index.js")
    );

    let ops = http()
        .get(format!("{}/ops/audit", dev.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ops.status(), 200);
    assert!(ops.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert!(ops.text().await.unwrap().contains("/ops/audit.js"));
    for asset in [
        "/ops/audit.js",
        "/ops/audit.css",
        "/demo/demo.js",
        "/demo/demo.css",
    ] {
        let res = http()
            .get(format!("{}{asset}", dev.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{asset}");
        assert!(res.text().await.unwrap().len() > 100, "{asset} has content");
    }
}

#[tokio::test]
async fn demo_sign_in_sets_an_httponly_lax_cookie_that_vends_from_the_demo_origin() {
    let dev = start_dev(&[]);

    let set_cookie = sign_in(&dev, "demo-user").await;

    assert!(set_cookie.starts_with("session="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    let res = vend(&dev, &cookie_pair(&set_cookie), &dev.base, "transcribe").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["scope"], "openid transcribe");
}

#[tokio::test]
async fn demo_sign_in_takes_json_from_allowed_origins_only() {
    let dev = start_dev(&[]);

    let other_origin = http()
        .post(format!("{}/dev/sign-in", dev.base))
        .header("Origin", "http://127.0.0.1:1")
        .json(&serde_json::json!({"subject": "demo-user"}))
        .send()
        .await
        .unwrap();
    let form = http()
        .post(format!("{}/dev/sign-in", dev.base))
        .header("Content-Type", "text/plain")
        .body(r#"{"subject":"demo-user"}"#)
        .send()
        .await
        .unwrap();

    for res in [other_origin, form] {
        assert_eq!(res.status(), 403);
        assert!(res.headers().get("set-cookie").is_none());
    }
}

#[tokio::test]
async fn the_dictation_demo_user_is_refused_streams() {
    let dev = start_dev(&[]);
    let cookie = cookie_pair(&sign_in(&dev, "dictation-user").await);

    let streams = vend(&dev, &cookie, &dev.base, "streams").await;
    let transcribe = vend(&dev, &cookie, &dev.base, "transcribe").await;

    assert_eq!(streams.status(), 403);
    assert_eq!(transcribe.status(), 200);
}

#[tokio::test]
async fn dev_adds_allowed_origins_from_the_environment_to_its_own() {
    let dev = start_dev(&[("ALLOWED_ORIGINS", "http://app.test:3000")]);
    let cookie = cookie_pair(&sign_in(&dev, "demo-user").await);

    let from_app = vend(&dev, &cookie, "http://app.test:3000", "transcribe").await;
    let from_demo = vend(&dev, &cookie, &dev.base, "transcribe").await;
    let from_other = vend(&dev, &cookie, "http://other.test:3000", "transcribe").await;

    assert_eq!(from_app.status(), 200);
    assert_eq!(
        from_app.headers()["access-control-allow-origin"],
        "http://app.test:3000"
    );
    assert_eq!(from_demo.status(), 200);
    assert_eq!(from_other.status(), 403);
}

#[tokio::test]
async fn dev_token_lifetime_sets_how_long_stand_in_tokens_live() {
    let dev = start_dev(&[("DEV_TOKEN_LIFETIME", "40")]);
    let cookie = cookie_pair(&sign_in(&dev, "demo-user").await);

    let body: Value = vend(&dev, &cookie, &dev.base, "transcribe")
        .await
        .json()
        .await
        .unwrap();

    let expires_in = body["expiresIn"].as_i64().unwrap();
    assert!((35..=40).contains(&expires_in), "{body}");
}

#[test]
fn dev_refuses_a_token_lifetime_within_the_refresh_margin_with_exit_code_2() {
    let (mut cmd, dir) = command(&[("DEV_TOKEN_LIFETIME", "20")]);

    let out = cmd.output().expect("dev runs");

    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEV_TOKEN_LIFETIME"), "{stderr}");
}

// ---- the speech API stand-in, spoken to over a raw socket ---------------------------

/// Sends a WebSocket upgrade request; returns the status code and the open stream.
async fn upgrade(api: &str, path_and_query: &str) -> (u16, TcpStream) {
    let host = api.trim_start_matches("ws://");
    let mut stream = TcpStream::connect(host).await.unwrap();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, stream)
}

/// One masked client frame (opcode 1 = text, 2 = binary), as browsers send them.
async fn send_frame(stream: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.unwrap();
}

/// Reads one unmasked server text frame and parses it as JSON.
async fn read_json(stream: &mut TcpStream) -> Value {
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
        .await
        .expect("a frame in time")
        .unwrap();
    assert_eq!(head[0] & 0x0f, 1, "a text frame");
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await.unwrap();
            u16::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    serde_json::from_slice(&payload).unwrap()
}

async fn access_token(dev: &Dev, scope: &str) -> String {
    let cookie = cookie_pair(&sign_in(dev, "demo-user").await);
    let body: Value = vend(dev, &cookie, &dev.base, scope)
        .await
        .json()
        .await
        .unwrap();
    body["accessToken"].as_str().unwrap().to_owned()
}

fn bearer_query(token: &str) -> String {
    format!("tenant-name=base&token=Bearer%20{token}")
}

#[tokio::test]
async fn speech_stand_in_refuses_a_missing_invalid_or_narrower_token() {
    let dev = start_dev(&[]);
    let streams_token = access_token(&dev, "streams").await;
    let forged = format!("{}x", &streams_token);

    let (no_token, _) = upgrade(&dev.api, "/audio-bridge/v2/transcribe?tenant-name=base").await;
    let (bad_token, _) = upgrade(
        &dev.api,
        &format!("/audio-bridge/v2/transcribe?{}", bearer_query(&forged)),
    )
    .await;
    let (wrong_tenant, _) = upgrade(
        &dev.api,
        &format!("/audio-bridge/v2/transcribe?tenant-name=other&token=Bearer%20{streams_token}"),
    )
    .await;
    let (wrong_scope, _) = upgrade(
        &dev.api,
        &format!(
            "/audio-bridge/v2/transcribe?{}",
            bearer_query(&streams_token)
        ),
    )
    .await;

    assert_eq!(no_token, 401);
    assert_eq!(bad_token, 401);
    assert_eq!(wrong_tenant, 401);
    assert_eq!(wrong_scope, 403);
}

#[tokio::test]
async fn speech_stand_in_accepts_config_then_answers_audio_with_transcripts() {
    let dev = start_dev(&[]);
    let token = access_token(&dev, "transcribe").await;
    let (status, mut ws) = upgrade(
        &dev.api,
        &format!("/audio-bridge/v2/transcribe?{}", bearer_query(&token)),
    )
    .await;
    assert_eq!(status, 101);

    send_frame(
        &mut ws,
        1,
        br#"{"type":"config","configuration":{"primaryLanguage":"en"}}"#,
    )
    .await;
    assert_eq!(read_json(&mut ws).await["type"], "CONFIG_ACCEPTED");
    for _ in 0..4 {
        send_frame(&mut ws, 2, &[0u8; 200]).await;
    }
    let transcript = read_json(&mut ws).await;
    send_frame(&mut ws, 1, br#"{"type":"end"}"#).await;
    let ended = read_json(&mut ws).await;

    assert_eq!(transcript["type"], "transcript");
    assert!(transcript["data"]["text"].is_string(), "{transcript}");
    assert_eq!(ended["type"], "ENDED");
}

#[tokio::test]
async fn speech_stand_in_denies_a_config_without_the_required_fields() {
    let dev = start_dev(&[]);
    let token = access_token(&dev, "streams").await;
    let (status, mut ws) = upgrade(
        &dev.api,
        &format!(
            "/audio-bridge/v2/interactions/{}/streams?{}",
            uuid::Uuid::new_v4(),
            bearer_query(&token)
        ),
    )
    .await;
    assert_eq!(status, 101);

    send_frame(
        &mut ws,
        1,
        br#"{"type":"config","configuration":{"transcription":{"primaryLanguage":"en"}}}"#,
    )
    .await;

    let denied = read_json(&mut ws).await;
    assert_eq!(denied["type"], "CONFIG_DENIED");
    assert!(denied["reason"].as_str().unwrap().contains("mode"));
}

/// Reads frames until a close frame; returns its status code.
async fn read_close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let mut head = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
            .await
            .expect("a frame in time")
            .unwrap();
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                stream.read_exact(&mut ext).await.unwrap();
                u16::from_be_bytes(ext) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        if head[0] & 0x0f == 8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[tokio::test]
async fn speech_stand_in_drops_open_streams_on_request_with_1012() {
    let dev = start_dev(&[]);
    let token = access_token(&dev, "transcribe").await;
    let (_, mut ws) = upgrade(
        &dev.api,
        &format!("/audio-bridge/v2/transcribe?{}", bearer_query(&token)),
    )
    .await;
    send_frame(
        &mut ws,
        1,
        br#"{"type":"config","configuration":{"primaryLanguage":"en"}}"#,
    )
    .await;
    assert_eq!(read_json(&mut ws).await["type"], "CONFIG_ACCEPTED");

    let http_api = dev.api.replacen("ws://", "http://", 1);
    let answer: Value = http()
        .post(format!("{http_api}/dev/drop-connections"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(answer["dropped"], 1);
    assert_eq!(read_close_code(&mut ws).await, 1012, "service restart");
}

#[tokio::test]
async fn dev_reuses_a_live_token_only_while_token_reuse_min_ttl_is_left() {
    // 135-s tokens: under the default 150 s nothing is reused (the Corti SDK would count
    // a token with 120 s or less left as expired); with an explicit 60 s it is.
    let default = start_dev(&[("DEV_TOKEN_LIFETIME", "135")]);
    let explicit = start_dev(&[("DEV_TOKEN_LIFETIME", "135"), ("TOKEN_REUSE_MIN_TTL", "60")]);

    let fresh = [
        access_token(&default, "transcribe").await,
        access_token(&default, "transcribe").await,
    ];
    let reused = [
        access_token(&explicit, "transcribe").await,
        access_token(&explicit, "transcribe").await,
    ];

    assert_ne!(fresh[0], fresh[1]);
    assert_eq!(reused[0], reused[1]);
}

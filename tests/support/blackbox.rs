//! The real `token-vendor serve` binary as a black box: spawned with generated, obviously
//! fake secrets against the development auth stand-in, spoken to over raw TCP so a test
//! controls every byte on the wire, and with its stdout kept for the leak scan.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use token_vendor::dev::random_hex;

pub const ISSUER: &str = "https://idp.example.test/";
pub const AUDIENCE: &str = "token-vendor-tests";
/// The browser origin the service allows (the same as the in-process suites').
#[allow(unused_imports)]
pub use super::{now, APP_ORIGIN as ORIGIN, READER_ROLE};

/// The RSA key the service checks sessions with (`SESSION_JWT_PUBLIC_KEY_FILE`).
pub struct SessionKey {
    pub encoding: EncodingKey,
    pub public_pem: String,
    pub n: String,
    pub e: String,
}

impl SessionKey {
    pub fn generate() -> Self {
        let mut rng = rand::thread_rng();
        let private = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa keygen");
        let pem = private.to_pkcs1_pem(LineEnding::LF).expect("pem");
        let public = private.to_public_key();
        Self {
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("encoding key"),
            public_pem: public.to_public_key_pem(LineEnding::LF).expect("pem"),
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }
    }

    pub fn sign(&self, header: Header, claims: &Value) -> String {
        encode(&header, claims, &self.encoding).expect("sign")
    }

    /// A valid RS256 session for `sub` with the given roles.
    pub fn session(&self, sub: &str, roles: &[&str]) -> String {
        self.sign(Header::new(Algorithm::RS256), &valid_claims(sub, roles))
    }
}

pub fn valid_claims(sub: &str, roles: &[&str]) -> Value {
    json!({
        "sub": sub, "sid": random_hex(8), "exp": now() + 3600, "iat": now(),
        "iss": ISSUER, "aud": AUDIENCE, "roles": roles,
    })
}

/// One running service and everything it wrote to stdout and stderr.
pub struct Service {
    child: Child,
    pub port: u16,
    pub output: Arc<Mutex<Vec<String>>>,
    pub db_path: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The directory `temp_dir` made for this service: key file and audit store.
        if let Some(dir) = self.db_path.parent().filter(|d| {
            d.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tv-bb-"))
        }) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_token-vendor")
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tv-bb-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Settings for `serve`: RSA session key with issuer and audience, a SQLite audit file,
/// one allowed origin, loopback as the trusted proxy and limits high enough that the
/// tests are about what they test.
pub fn serve_env(
    dir: &Path,
    key: &SessionKey,
    auth_url: &str,
    client_secret: &str,
) -> Vec<(String, String)> {
    let key_file = dir.join("session.pub.pem");
    std::fs::write(&key_file, &key.public_pem).expect("write key");
    let db = dir.join("audit.db");
    [
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("CORTI_ENVIRONMENT", "eu".to_owned()),
        ("CORTI_TENANT", "base".to_owned()),
        ("CORTI_CLIENT_ID", "token-vendor-dev".to_owned()),
        ("CORTI_CLIENT_SECRET", client_secret.to_owned()),
        ("CORTI_AUTH_URL", auth_url.to_owned()),
        (
            "SESSION_JWT_PUBLIC_KEY_FILE",
            key_file.display().to_string(),
        ),
        ("SESSION_JWT_ISSUER", ISSUER.to_owned()),
        ("SESSION_JWT_AUDIENCE", AUDIENCE.to_owned()),
        ("DATABASE_URL", format!("sqlite://{}", db.display())),
        (
            "AUDIT_HMAC_KEY",
            format!("fake-audit-key-{}", random_hex(16)),
        ),
        ("AUDIT_ALLOW_UNSIGNED", "true".to_owned()),
        ("ALLOWED_ORIGINS", ORIGIN.to_owned()),
        ("TRUSTED_PROXIES", "127.0.0.1/32".to_owned()),
        ("RATE_LIMIT_PER_USER", "100000/second".to_owned()),
        ("RATE_LIMIT_PER_IP", "100000/second".to_owned()),
        ("UPSTREAM_TIMEOUT", "2s".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Service {
    /// Spawns `token-vendor serve` and waits for its "listening" log line.
    pub fn spawn(env: Vec<(String, String)>) -> Self {
        let mut command = Command::new(bin());
        command.arg("serve");
        Self::spawn_command(command, env)
    }

    fn spawn_command(mut command: Command, env: Vec<(String, String)>) -> Self {
        let db_path = env
            .iter()
            .find(|(k, _)| k == "DATABASE_URL")
            .map(|(_, v)| PathBuf::from(v.trim_start_matches("sqlite://")))
            .unwrap_or_default();
        let mut child = command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("output lock").push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("token-vendor listening") {
                    let port = serde_json::from_str::<Value>(&line)
                        .ok()
                        .and_then(|v| v["fields"]["port"].as_u64().or(v["port"].as_u64()));
                    let _ = tx.send(port);
                }
                sink.lock().expect("output lock").push(line);
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(port)) => port as u16,
            other => {
                let _ = child.kill();
                panic!(
                    "serve did not report its port ({other:?}); output:\n{}",
                    output.lock().expect("output lock").join("\n")
                );
            }
        };
        Self {
            child,
            port,
            output,
            db_path,
            env,
        }
    }

    /// Sends raw bytes as one request and reads the whole answer.
    pub fn raw(&self, request: &[u8]) -> Response {
        send_raw(self.port, request)
    }

    /// A well-formed request with `Connection: close` and a computed `Content-Length`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.raw(&build_request(method, path, headers, body, true))
    }

    pub fn output_text(&self) -> String {
        self.output.lock().expect("output lock").join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs a `token-vendor` subcommand with this service's settings.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = Command::new(bin())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cli starts");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("cli output")
    }
}

pub fn build_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    content_length: bool,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n")
        .into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if content_length && (!body.is_empty() || method == "POST") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// What came back: the status (0 when the connection closed without an answer), the
/// raw head and the decoded body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

pub fn send_raw(port: u16, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // The server may answer and close before it has read everything (413, 431):
    // a failed write is not a failed test, the answer is.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        if Instant::now() > deadline {
            break;
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = raw.get(split + 4..).unwrap_or_default();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Response {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = data.get(end + 2..).unwrap_or_default();
    }
    out
}

impl Service {
    /// SIGTERM, then waits (at most 20 s) for the process to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Like [`Service::spawn`], with the soft open-file limit lowered first (the hard
    /// limit is left as it is), as a container or systemd unit may start the service.
    pub fn spawn_with_soft_nofile(env: Vec<(String, String)>, soft: u32) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -S -n {soft} && exec \"$0\" serve"))
            .arg(bin());
        Self::spawn_command(command, env)
    }
}

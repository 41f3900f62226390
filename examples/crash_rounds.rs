//! Crash rounds: the promise "every token a browser holds has its audit event",
//! checked the hard way. Runs the RELEASE service binary (`token-vendor serve`) under
//! concurrent vends, `kill -9`s it at a random moment, restarts it on the same audit
//! database, and after every round checks that every token a client received has its
//! event (by fingerprint) and that `audit verify` passes. Zero lost is the only pass.
//! At the end the service is stopped gracefully (it signs a last checkpoint) and
//! `audit verify --checkpoints` checks the database against the checkpoints in the
//! service's own log lines.
//!
//!     scripts/crash-rounds.sh                        # 10 rounds, SQLite and PostgreSQL
//!     scripts/crash-rounds.sh --rounds 50 --db sqlite
//!     cargo run --example crash_rounds -- --bin target/release/token-vendor --rounds 10
//!
//! PostgreSQL uses a scratch database on `TEST_DATABASE_URL` (the test server): the
//! service is killed, never the database. Without `TEST_DATABASE_URL` the PostgreSQL
//! rounds are skipped, except under `CI=true`, where that fails.
//! Only loopback traffic: the service, and the Corti auth stand-in in this process.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rand::Rng;
use secrecy::ExposeSecret;
use sqlx::{AnyPool, Executor, Row};
use token_vendor::audit::keys::NoteSigner;
use token_vendor::audit::Fingerprinter;
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Db {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Parser, Debug)]
struct Args {
    /// The service binary (a release build).
    #[arg(long)]
    bin: PathBuf,
    /// Kill -9 rounds per database.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    #[arg(long, value_enum, default_value_t = Db::Both)]
    db: Db,
    /// Concurrent clients vending tokens.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Longest time a round runs, once tokens flow, before its kill (random below it).
    #[arg(long, default_value_t = 1500)]
    max_round_ms: u64,
}

/// Everything one database's rounds share.
struct Run {
    bin: PathBuf,
    db_url: String,
    env: Vec<(&'static str, String)>,
    hmac_key: String,
    session_secret: String,
    log: PathBuf,
}

/// What the rounds of one database found.
struct Tally {
    rounds: u32,
    tokens: usize,
    lost: usize,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Run {
    fn start(&self) -> (Child, String) {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("service log file");
        let child = Command::new(&self.bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::from(log))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the service");
        (child, format!("http://127.0.0.1:{port}"))
    }

    fn session(&self, sub: &str) -> String {
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": sub, "sid": format!("sid-{sub}"), "exp": exp}),
            &EncodingKey::from_secret(self.session_secret.as_bytes()),
        )
        .expect("sign a session")
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run the CLI")
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the service exited while starting: {status}");
        }
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the service did not get ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Vends until stopped; returns the tokens received in full.
async fn client(
    http: reqwest::Client,
    base: String,
    sessions: Arc<Vec<String>>,
    received: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0usize;
    loop {
        n += 1;
        let session = &sessions[n % sessions.len()];
        let response = http
            .post(format!("{base}/v1/tokens"))
            .bearer_auth(session)
            .header("Content-Type", "application/json")
            .body(r#"{"scope":"transcribe"}"#)
            .send()
            .await;
        let Ok(response) = response else {
            // The service is gone (killed): nothing was received.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if response.status() != 200 {
            continue;
        }
        let Ok(body) = response.json::<serde_json::Value>().await else {
            continue;
        };
        if let Some(token) = body["accessToken"].as_str() {
            received.lock().await.push(token.to_owned());
        }
    }
}

async fn stored_fingerprints(db_url: &str) -> HashSet<String> {
    let pool = AnyPool::connect(db_url)
        .await
        .expect("open the audit database");
    let set = sqlx::query(
        "SELECT token_fingerprint FROM audit_events WHERE token_fingerprint IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .expect("read fingerprints")
    .iter()
    .map(|r| r.get::<String, _>("token_fingerprint"))
    .collect();
    pool.close().await;
    set
}

fn check_verify(run: &Run, args: &[&str], what: &str) -> Result<String, String> {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = run.cli(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text.trim().to_owned())
    } else {
        Err(format!("audit verify {what} failed: {}", text.trim()))
    }
}

async fn rounds(run: &Run, args: &Args, name: &str) -> Result<Tally, String> {
    let out = run.cli(&["migrate"]);
    if !out.status.success() {
        return Err(format!(
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let sessions: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|i| run.session(&format!("crash-user-{i}")))
            .collect(),
    );
    let fingerprinter = Fingerprinter::new(run.hmac_key.clone().into());
    let mut all_received: Vec<String> = Vec::new();
    let mut tally = Tally {
        rounds: 0,
        tokens: 0,
        lost: 0,
    };
    for round in 1..=args.rounds {
        let (mut child, base) = run.start();
        wait_ready(&http, &base, &mut child).await;
        let received = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..args.clients)
            .map(|_| {
                tokio::spawn(client(
                    http.clone(),
                    base.clone(),
                    sessions.clone(),
                    received.clone(),
                ))
            })
            .collect();
        // The kill comes at a random moment once tokens are flowing.
        let flowing = Instant::now() + Duration::from_secs(10);
        while received.lock().await.is_empty() && Instant::now() < flowing {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let max = args.max_round_ms.max(10);
        let wait = rand::thread_rng().gen_range(0..=max);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().map_err(|e| format!("kill -9: {e}"))?; // SIGKILL
        let _ = child.wait();
        // Responses still arriving were read in full before the kill, or fail now.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let got = std::mem::take(&mut *received.lock().await);
        let stored = stored_fingerprints(&run.db_url).await;
        all_received.extend(got.iter().cloned());
        let lost: Vec<&String> = all_received
            .iter()
            .filter(|t| !stored.contains(&fingerprinter.fingerprint(t)))
            .collect();
        tally.rounds = round;
        tally.tokens = all_received.len();
        tally.lost = lost.len();
        let verdict = check_verify(run, &[], &format!("after round {round}"))?;
        println!(
            "{name}: round {round}: killed {wait} ms into the load, {} tokens this round, {} in all, {} lost; {verdict}",
            got.len(),
            all_received.len(),
            lost.len()
        );
        if !lost.is_empty() {
            return Err(format!(
                "{} handed-out token(s) have no audit event after round {round}",
                lost.len()
            ));
        }
    }
    // A last run, stopped gracefully: it signs a checkpoint at shutdown.
    let (mut child, base) = run.start();
    wait_ready(&http, &base, &mut child).await;
    let session = run.session("last-user");
    let r = http
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(&session)
        .header("Content-Type", "application/json")
        .body(r#"{"scope":"transcribe"}"#)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("the last vend got {}", r.status()));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the graceful stop exited with {status}"));
    }
    let log = run.log.to_str().unwrap_or_default();
    let verdict = check_verify(
        run,
        &["--checkpoints", log],
        "against the log's checkpoints",
    )?;
    println!("{name}: after a graceful stop, against the service log's checkpoints: {verdict}");
    Ok(tally)
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let slash = base.rfind('/').unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn base_env(
    db_url: &str,
    auth_url: &str,
    client_secret: &str,
) -> (Vec<(&'static str, String)>, String, String) {
    let hmac_key = format!("fake-crash-audit-key-{}", random_hex(16));
    let session_secret = format!("fake-crash-session-{}", random_hex(24));
    let signer = NoteSigner::generate("crash-rounds").expect("a signing key");
    let env = vec![
        ("DATABASE_URL", db_url.to_owned()),
        ("CORTI_ENVIRONMENT", "eu".into()),
        ("CORTI_AUTH_URL", auth_url.to_owned()),
        ("CORTI_CLIENT_ID", "crash-client".into()),
        ("CORTI_CLIENT_SECRET", client_secret.to_owned()),
        ("SESSION_JWT_SECRET", session_secret.clone()),
        ("AUDIT_HMAC_KEY", hmac_key.clone()),
        (
            "AUDIT_SIGNING_KEY",
            signer.private_text().expose_secret().to_owned(),
        ),
        ("RATE_LIMIT_PER_USER", "1000000/second".into()),
        ("RATE_LIMIT_PER_IP", "1000000/second".into()),
        ("UPSTREAM_RATE_LIMIT", "1000000/second".into()),
        ("TOKEN_REUSE_MIN_TTL", "0".into()),
        ("RUST_LOG", "warn,audit=info".into()),
    ];
    (env, hmac_key, session_secret)
}

async fn one_database(
    args: &Args,
    name: &str,
    db_url: &str,
    standin: &AuthStandIn,
    client_secret: &str,
    dir: &Path,
) -> Result<Tally, String> {
    let (env, hmac_key, session_secret) = base_env(db_url, standin.base_url(), client_secret);
    let run = Run {
        bin: args.bin.clone(),
        db_url: db_url.to_owned(),
        env,
        hmac_key,
        session_secret,
        log: dir.join(format!("{name}-service.log")),
    };
    File::create(&run.log).map_err(|e| e.to_string())?;
    rounds(&run, args, name).await
}

async fn main_async(args: Args) -> Result<(), String> {
    sqlx::any::install_default_drivers();
    let client_secret = format!("fake-crash-client-secret-{}", random_hex(12));
    let standin = AuthStandIn::start(StandInConfig {
        client_id: "crash-client".into(),
        client_secret: client_secret.clone(),
        token_lifetime: Duration::from_secs(300),
    })
    .map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("tv-crash-rounds-{}", random_hex(6)));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut summary = Vec::new();
    if matches!(args.db, Db::Sqlite | Db::Both) {
        let url = format!("sqlite://{}", dir.join("audit.db").display());
        let t = one_database(&args, "sqlite", &url, &standin, &client_secret, &dir).await?;
        summary.push(("sqlite", t));
    }
    if matches!(args.db, Db::Postgres | Db::Both) {
        match std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            Some(admin) => {
                let name = format!("tv_crash_{}", random_hex(6));
                let pool = AnyPool::connect(&admin).await.map_err(|e| e.to_string())?;
                pool.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let url = with_database(&admin, &name);
                let result =
                    one_database(&args, "postgres", &url, &standin, &client_secret, &dir).await;
                let _ = pool
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
                pool.close().await;
                summary.push(("postgres", result?));
            }
            None if std::env::var("CI").as_deref() == Ok("true") => {
                return Err("TEST_DATABASE_URL is not set (required under CI=true)".into());
            }
            None => eprintln!("crash rounds: PostgreSQL skipped (no TEST_DATABASE_URL)"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    for (name, t) in &summary {
        println!(
            "crash rounds {name}: {} rounds run, {} tokens checked, {} events lost",
            t.rounds, t.tokens, t.lost
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(main_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash rounds FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

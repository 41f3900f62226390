//! Audited vends per second through the real group-commit writer (not a test).
//!
//!     cargo run --release --example audit_bench -- --db sqlite
//!     cargo run --release --example audit_bench -- --db postgres --url postgres://…
//!     cargo run --release --example audit_bench -- --db sqlite --http [--reuse]
//!
//! Default mode: many concurrent callers each `record()` an issued-token event and
//! wait for its commit, as `POST /v1/tokens` does. `--http`: full vends over HTTP
//! against the service with the Corti auth stand-in (session check, upstream call,
//! fingerprint, audit), so the audit store is one cost among several.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use token_vendor::audit::keys::ChainKey;
use token_vendor::audit::store::SqlAuditStore;
use token_vendor::audit::writer::WriterKeys;
use token_vendor::audit::{AuditEvent, AuditStore, Fingerprinter, Outcome};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Db {
    Sqlite,
    Postgres,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    db: Db,
    /// Database URL; default: a fresh SQLite file, or TEST_DATABASE_URL for postgres.
    #[arg(long)]
    url: Option<String>,
    /// Concurrent callers (requests in flight).
    #[arg(long, default_value_t = 512)]
    callers: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Measure full HTTP vends instead of the writer alone.
    #[arg(long)]
    http: bool,
    /// With --http: hand out a live token again (TOKEN_REUSE_MIN_TTL=60), so most vends
    /// are `reused` (still audited one by one) and skip the stand-in's RSA signing.
    #[arg(long)]
    reuse: bool,
    /// Writer mode: how many distinct tokens the events name, cycled (as reuse hands
    /// each user's token out again); default: a new token in every event (all mints).
    #[arg(long)]
    distinct_tokens: Option<u64>,
}

fn issued_event(fp: &Fingerprinter, n: u64, distinct_tokens: Option<u64>) -> AuditEvent {
    let mut e = AuditEvent::begin(&format!("bench-{n}"), "base", "eu");
    e.outcome = Outcome::Issued;
    e.status = 200;
    e.subject = Some(format!("user-{}", n % 1000));
    e.session_id = Some(format!("sid-{}", n % 1000));
    e.client_ip = Some("10.1.2.3".into());
    e.user_agent = Some("Mozilla/5.0 (bench)".into());
    e.origin = Some("https://app.example.test".into());
    e.scope = Some("openid transcribe".into());
    let token = distinct_tokens.map_or(n, |d| n % d.max(1));
    e.token_fingerprint = Some(fp.fingerprint(&format!("token-{token}")));
    e.token_expires_at = Some(e.time + time::Duration::minutes(5));
    e.upstream_ms = Some(12);
    e.duration_ms = 14;
    e
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn bench_writer(url: &str, args: &Args) {
    let store = Arc::new(
        SqlAuditStore::open(
            url,
            WriterKeys {
                chain: ChainKey::derive(&"fake-bench-key".to_string().into()),
                signer: None,
            },
        )
        .await
        .expect("open the audit store"),
    );
    let fp = Fingerprinter::new("fake-bench-key".to_string().into());
    // Warm up: create the chain, fill caches.
    for n in 0..100 {
        store
            .record(&issued_event(&fp, n, args.distinct_tokens))
            .await
            .expect("warm-up");
    }
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let distinct_tokens = args.distinct_tokens;
    let tasks: Vec<_> = (0..args.callers)
        .map(|c| {
            let (store, fp, done, failed) =
                (store.clone(), fp.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut latencies_us = Vec::new();
                let mut n = (c as u64) << 32;
                while Instant::now() < deadline {
                    n += 1;
                    let e = issued_event(&fp, n, distinct_tokens);
                    let t = Instant::now();
                    match store.record(&e).await {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            latencies_us
                                .push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies_us
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("caller task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let n = done.load(Ordering::Relaxed);
    println!(
        "writer: {:?} callers={} tokens={} {:.0} audited events/s ({} in {:.1}s, {} failed), commit wait p50 {:.2} ms p99 {:.2} ms",
        args.db,
        args.callers,
        args.distinct_tokens
            .map_or_else(|| "all-new".to_owned(), |d| d.to_string()),
        n as f64 / elapsed,
        n,
        elapsed,
        failed.load(Ordering::Relaxed),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    );
}

async fn bench_http(url: &str, args: &Args) {
    use token_vendor::config::{ServeSettings, Sources};
    use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
    use token_vendor::dev::{mint_session, random_hex};
    use token_vendor::startup::{Application, Options};

    let client_secret = random_hex(16);
    let standin = AuthStandIn::start(StandInConfig {
        client_id: "bench".into(),
        client_secret: client_secret.clone(),
        token_lifetime: Duration::from_secs(300),
    })
    .expect("stand-in");
    let session_secret = random_hex(32);
    let settings = ServeSettings::load(&Sources::from_pairs([
        ("LISTEN_ADDR", "127.0.0.1:0".to_string()),
        ("CORTI_ENVIRONMENT", "eu".into()),
        ("CORTI_AUTH_URL", standin.base_url().to_owned()),
        ("CORTI_CLIENT_ID", "bench".into()),
        ("CORTI_CLIENT_SECRET", client_secret),
        ("SESSION_JWT_SECRET", session_secret.clone()),
        ("AUDIT_HMAC_KEY", random_hex(16)),
        ("DATABASE_URL", url.to_owned()),
        // Limits have their own tests; here they must not cap the measurement.
        ("RATE_LIMIT_PER_USER", "1000000/second".into()),
        ("RATE_LIMIT_PER_IP", "1000000/second".into()),
        ("UPSTREAM_RATE_LIMIT", "1000000/second".into()),
        (
            "TOKEN_REUSE_MIN_TTL",
            if args.reuse { "60" } else { "0" }.into(),
        ),
    ]))
    .expect("settings");
    let app = Application::build_with(settings, Options::default())
        .await
        .expect("app");
    let address = format!("http://127.0.0.1:{}/v1/tokens", app.port());
    tokio::spawn(app.run_until_stopped());
    // One user per client, so that single flight does not merge clients' vends.
    let session_secret: secrecy::SecretString = session_secret.into();
    let sessions: Vec<String> = (0..args.callers)
        .map(|i| {
            mint_session(
                &session_secret,
                &format!("bench-user-{i}"),
                &[],
                Duration::from_secs(3600),
            )
            .expect("session")
        })
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.callers)
        .build()
        .expect("client");
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.callers)
        .map(|i| {
            let (http, address, session, ok, other) = (
                http.clone(),
                address.clone(),
                sessions[i].clone(),
                ok.clone(),
                other.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = http
                        .post(&address)
                        .bearer_auth(&session)
                        .header("Content-Type", "application/json")
                        .body(r#"{"scope":"transcribe"}"#)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 200 => {
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            if other.fetch_add(1, Ordering::Relaxed) == 0 {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                eprintln!("first non-200: {status} {body}");
                            }
                        }
                        Err(e) => {
                            if other.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("first failure: {e}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    println!(
        "http: {:?} clients={} {:.0} audited vends/s ({} tokens in {:.1}s, {} not 200)",
        args.db,
        args.callers,
        n as f64 / elapsed,
        n,
        elapsed,
        other.load(Ordering::Relaxed),
    );
    standin.stop().await;
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scratch = std::env::temp_dir().join(format!("tv-audit-bench-{}", std::process::id()));
    let url = match (&args.url, args.db) {
        (Some(u), _) => u.clone(),
        (None, Db::Sqlite) => {
            std::fs::create_dir_all(&scratch).expect("scratch dir");
            format!("sqlite://{}", scratch.join("bench.db").display())
        }
        (None, Db::Postgres) => std::env::var("TEST_DATABASE_URL")
            .expect("give --url or set TEST_DATABASE_URL for postgres"),
    };
    runtime.block_on(async {
        if args.http {
            bench_http(&url, &args).await
        } else {
            bench_writer(&url, &args).await
        }
    });
    let _ = std::fs::remove_dir_all(&scratch);
}

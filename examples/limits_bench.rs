//! Figures for the limits (a benchmark, not a test):
//!
//! ```text
//! cargo run --release --example limits_bench
//! TEST_REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example limits_bench
//! ```
//!
//! 1. resident memory after 1,000,000 distinct users and 1,000,000 distinct IPs hit
//!    the in-process limits (default rates), and after pruning;
//! 2. the limiter's cost per request (ns/op), in-process and, with `TEST_REDIS_URL`,
//!    through Redis;
//! 3. upstream calls made for a burst of 1,000 concurrent identical requests.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use token_vendor::config::{ServeSettings, Settings, Sources};
use token_vendor::corti::Tenant;
use token_vendor::dev::{mint_session, random_hex};
use token_vendor::limits::{LimitRates, Limits, RedisLimits};
use token_vendor::metrics::Metrics;
use token_vendor::startup::{Application, Options};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEYS: u32 = 1_000_000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn ip(i: u32) -> IpAddr {
    // Keys only: nothing is ever sent to these addresses.
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let defaults = LimitRates::from_settings(&Settings::default());
    println!(
        "rates: per IP {}, per user {}, upstream {}",
        defaults.per_ip, defaults.per_user, defaults.upstream
    );
    memory(defaults).await;
    overhead(defaults).await;
    if let Ok(url) = std::env::var("TEST_REDIS_URL") {
        redis_overhead(defaults, &url).await;
    } else {
        println!("redis: TEST_REDIS_URL unset, Redis overhead not measured");
    }
    burst().await;
}

async fn memory(rates: LimitRates) {
    let limits = Limits::new(rates, None, Arc::new(Metrics::new()));
    let base = rss_mib();
    println!("memory: baseline RSS {base:.1} MiB");
    let started = Instant::now();
    let mut name = String::with_capacity(32);
    for i in 0..KEYS {
        name.clear();
        use std::fmt::Write;
        let _ = write!(name, "user-{i:08}-{}", i.wrapping_mul(2_654_435_761));
        limits.check_user(&tenant(), &name).await;
    }
    let users = rss_mib();
    println!(
        "memory: after {KEYS} distinct users RSS {users:.1} MiB (+{:.1}), {} keys, {:.0} ns/insert",
        users - base,
        limits.tracked_keys().1,
        started.elapsed().as_nanos() as f64 / f64::from(KEYS)
    );
    for i in 0..KEYS {
        limits.check_ip(ip(i)).await;
    }
    let both = rss_mib();
    println!(
        "memory: after {KEYS} distinct IPs too  RSS {both:.1} MiB (+{:.1} over baseline), {} IP keys",
        both - base,
        limits.tracked_keys().0
    );
    // A key is indistinguishable from fresh two emission intervals after its last
    // request (per user 30/minute: 4 s).
    let idle = rates.per_user.period / rates.per_user.count.get() * 2
        + rates.per_ip.period / rates.per_ip.count.get() * 2;
    tokio::time::sleep(idle + Duration::from_millis(500)).await;
    let started = Instant::now();
    limits.prune();
    let pruned = rss_mib();
    println!(
        "memory: after pruning RSS {pruned:.1} MiB, keys (ip, user) = {:?}, prune took {:?}",
        limits.tracked_keys(),
        started.elapsed()
    );
}

async fn overhead(rates: LimitRates) {
    let limits = Limits::new(rates, None, Arc::new(Metrics::new()));
    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    const OPS: u32 = 2_000_000;
    let started = Instant::now();
    for i in 0..OPS {
        let _ = limits
            .check_user(&tenant(), &users[i as usize % users.len()])
            .await;
    }
    let per_user = started.elapsed().as_nanos() as f64 / f64::from(OPS);
    let started = Instant::now();
    for i in 0..OPS {
        let _ = limits.check_ip(ip(i % 10_000)).await;
    }
    let per_ip = started.elapsed().as_nanos() as f64 / f64::from(OPS);
    println!(
        "overhead (in-process): user check {per_user:.0} ns/op, IP check {per_ip:.0} ns/op, both per request {:.0} ns",
        per_user + per_ip
    );
}

async fn redis_overhead(rates: LimitRates, url: &str) {
    let metrics = Arc::new(Metrics::new());
    let Ok(redis) = RedisLimits::connect(url, metrics.clone()) else {
        println!("redis: cannot use {url}");
        return;
    };
    let limits = Limits::new(rates, Some(redis), metrics);
    const OPS: u32 = 20_000;
    limits.check_user(&tenant(), "warm-up").await;
    let started = Instant::now();
    for i in 0..OPS {
        let _ = limits
            .check_user(&tenant(), &format!("bench-{}-{i}", random_hex(4)))
            .await;
    }
    let took = started.elapsed();
    println!(
        "overhead (Redis, sequential round trips on loopback): {:.0} ns/op, shared = {}",
        took.as_nanos() as f64 / f64::from(OPS),
        limits.shared()
    );
}

async fn burst() {
    const TOKEN_PATH: &str = "/realms/base/protocol/openid-connect/token";
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({
                    "access_token": format!("opaque-{}", random_hex(16)),
                    "expires_in": 300, "token_type": "Bearer", "scope": "openid transcribe",
                }))
                .set_delay(Duration::from_millis(500)),
        )
        .mount(&mock)
        .await;
    let session_secret = random_hex(32);
    let settings = ServeSettings::load(&Sources::from_pairs([
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("CORTI_ENVIRONMENT", "eu".to_owned()),
        ("CORTI_AUTH_URL", mock.uri()),
        ("CORTI_CLIENT_ID", "bench-client".to_owned()),
        ("CORTI_CLIENT_SECRET", random_hex(16)),
        ("SESSION_JWT_SECRET", session_secret.clone()),
        ("AUDIT_HMAC_KEY", random_hex(16)),
        ("RATE_LIMIT_PER_USER", "10000/second".to_owned()),
        ("RATE_LIMIT_PER_IP", "10000/second".to_owned()),
    ]))
    .expect("settings");
    let app = Application::build_with(settings, Options::default())
        .await
        .expect("app");
    let address = format!("http://127.0.0.1:{}/v1/tokens", app.port());
    let state = app.state();
    tokio::spawn(app.run_until_stopped());
    let session = mint_session(
        &secrecy::SecretString::from(session_secret),
        "burst-user",
        &[],
        Duration::from_secs(600),
    )
    .expect("session");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let request = http
                .post(&address)
                .bearer_auth(&session)
                .json(&json!({"scope": "transcribe"}));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if matches!(task.await, Ok(Ok(200))) {
            ok += 1;
        }
    }
    let calls = mock
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == TOKEN_PATH)
        .count();
    let text = state.vendor.metrics.render();
    let metric = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("0")
            .to_owned()
    };
    println!(
        "burst: 1000 concurrent identical requests -> {ok} x 200 in {:?}, {calls} upstream call(s), {} coalesced waiters, {} reuse hits",
        started.elapsed(),
        metric("token_vendor_coalesced_waiters_total"),
        metric("token_vendor_token_reuse_hits_total"),
    );
}

/// The tenant every benchmark user is counted at.
fn tenant() -> Tenant {
    Tenant::parse("base").expect("a valid tenant name")
}

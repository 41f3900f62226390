//! What every Redis user of the service shares: a connection opened on first use with
//! short timeouts, and the cycle of falling back when Redis fails and probing until it
//! works again (logged and reported once each way).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Longest a request waits on one Redis call before this replica decides alone.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// A connection that is opened on first use and re-opened after failures, so the
/// service starts even while Redis is down. The error says why the URL is unusable.
pub fn lazy_connection(url: &str) -> Result<ConnectionManager, String> {
    let client =
        redis::Client::open(url).map_err(|e| format!("not a usable Redis URL ({:?})", e.kind()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
}

/// Whether Redis works for one user, and whether a probe is already running.
pub struct RedisHealth {
    healthy: AtomicBool,
    probing: AtomicBool,
    /// First pause before a probe; it doubles after each failed one, up to `max`.
    first: Duration,
    max: Duration,
}

impl RedisHealth {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            healthy: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            first,
            max,
        }
    }

    /// Whether the last call to Redis worked.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

/// A part of the service that uses Redis and can do without it for a while.
pub trait RedisUser: Send + Sync + 'static {
    fn health(&self) -> &RedisHealth;
    /// Whether Redis does what this user needs right now.
    fn probe(&self) -> impl Future<Output = bool> + Send;
    /// Tells ops (log line, gauge) that Redis stopped working (`reason`) or works again.
    fn report(&self, healthy: bool, reason: &str);
}

/// Marks Redis as failing for `user` (reported once) and starts the probe, if none runs.
pub fn fall_back<U: RedisUser>(user: &U, weak: &Weak<U>, reason: &str) {
    let health = user.health();
    if health.healthy.swap(false, Ordering::AcqRel) {
        user.report(false, reason);
    }
    if !health.probing.swap(true, Ordering::AcqRel) {
        tokio::spawn(probe_until_back(weak.clone(), health.first, health.max));
    }
}

async fn probe_until_back<U: RedisUser>(weak: Weak<U>, first: Duration, max: Duration) {
    let mut pause = first;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(max);
        let Some(user) = weak.upgrade() else {
            return;
        };
        if user.probe().await {
            let health = user.health();
            health.probing.store(false, Ordering::Release);
            health.healthy.store(true, Ordering::Release);
            user.report(true, "");
            return;
        }
    }
}

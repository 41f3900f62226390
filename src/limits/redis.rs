//! Limits shared by every replica through Redis: one atomic GCRA step in a Lua script
//! that reads the clock from the Redis server (`TIME`), so replicas with skewed clocks
//! still agree.
//!
//! Redis is a dependency the service can live without: when a call fails or is slow,
//! the limits fall back to in-process state (logged once, and the
//! `token_vendor_rate_limit_redis_fallback` gauge goes to 1), a background probe runs
//! the limit script itself (a PING would pass while, say, an out-of-memory Redis refuses
//! the script's write) with growing pauses, and the limits return to Redis by themselves
//! once the script works again.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use super::{Decision, KeyKind};
use crate::limits::Rate;
use crate::metrics::Metrics;
use crate::redis_link::{self, RedisHealth, RedisUser, CALL_TIMEOUT};

/// First pause before probing a Redis that failed; it doubles after each failed probe...
const PROBE_FIRST: Duration = Duration::from_millis(500);
/// ...up to this.
const PROBE_MAX: Duration = Duration::from_secs(5);
/// Prefix of every key this service writes.
const KEY_PREFIX: &str = "token-vendor:rl";

/// One GCRA step. Times are microseconds from the server's clock, which stay exact in
/// Lua's doubles (2^53 µs is ~285 years). A refused request changes nothing.
/// Returns {allowed, remaining, retry_after_us, reset_us}.
const GCRA_LUA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allow_at = next_tat - interval * burst
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, next_tat - now}
"#;

/// Why the Redis limits could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedisSetupError(String);

/// The Redis side of the limits.
pub struct RedisLimits {
    conn: ConnectionManager,
    script: Script,
    health: RedisHealth,
    metrics: Arc<Metrics>,
    weak: Weak<RedisLimits>,
}

impl RedisLimits {
    /// Prepares a connection that is opened on first use and re-opened after failures,
    /// so the service starts even while Redis is down.
    pub fn connect(url: &str, metrics: Arc<Metrics>) -> Result<Arc<Self>, RedisSetupError> {
        let conn = redis_link::lazy_connection(url).map_err(RedisSetupError)?;
        Ok(Arc::new_cyclic(|weak| Self {
            conn,
            script: Script::new(GCRA_LUA),
            health: RedisHealth::new(PROBE_FIRST, PROBE_MAX),
            metrics,
            weak: weak.clone(),
        }))
    }

    /// Whether the last call to Redis worked.
    pub fn healthy(&self) -> bool {
        self.health.healthy()
    }

    /// One GCRA step in Redis, or `None` when Redis cannot decide right now and the
    /// caller should use its in-process state.
    pub async fn check(&self, kind: KeyKind, key: &str, rate: Rate) -> Option<Decision> {
        if !self.healthy() {
            return None;
        }
        let burst = rate.count.get();
        let interval_us = (rate.period.as_micros() / u128::from(burst)).max(1);
        // The policy is part of the key, so a changed limit starts from fresh state.
        let redis_key = format!(
            "{KEY_PREFIX}:{}:{}/{}:{key}",
            kind.as_str(),
            burst,
            rate.period.as_secs()
        );
        match self.run_script(redis_key, interval_us, burst).await {
            Ok(v) if v.len() == 4 => {
                let micros = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
                Some(Decision {
                    kind,
                    rate,
                    remaining: u32::try_from(v[1]).unwrap_or(0).min(burst - 1),
                    reset: micros(v[3]),
                    retry_after: (v[0] == 0).then(|| micros(v[2])),
                })
            }
            Ok(_) => {
                self.fall_back("unexpected script reply");
                None
            }
            Err(reason) => {
                self.fall_back(&reason);
                None
            }
        }
    }

    /// One GCRA step on `key`, within [`CALL_TIMEOUT`].
    async fn run_script(
        &self,
        key: String,
        interval_us: u128,
        burst: u32,
    ) -> Result<Vec<i64>, String> {
        let mut conn = self.conn.clone();
        let mut call = self.script.key(key);
        call.arg(interval_us.to_string()).arg(burst);
        tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<Vec<i64>>(&mut conn))
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
    }

    /// Whether a limit decision in Redis works: the script on a key of its own, whose
    /// write expires within a millisecond.
    async fn script_works(&self) -> bool {
        let probe = format!("{KEY_PREFIX}:probe");
        matches!(self.run_script(probe, 1, 1).await, Ok(v) if v.len() == 4)
    }

    fn fall_back(&self, reason: &str) {
        redis_link::fall_back(self, &self.weak, reason);
    }
}

impl RedisUser for RedisLimits {
    fn health(&self) -> &RedisHealth {
        &self.health
    }

    fn probe(&self) -> impl Future<Output = bool> + Send {
        self.script_works()
    }

    fn report(&self, healthy: bool, reason: &str) {
        if healthy {
            tracing::info!("rate limits: Redis is reachable again; limits are shared again");
        } else {
            tracing::warn!(
                error = %reason,
                "rate limits: Redis cannot decide (unreachable or refusing the limit script); enforcing in-process limits on this replica until it can"
            );
        }
        self.metrics.redis_fallback(!healthy);
    }
}

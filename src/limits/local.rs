//! The in-process limiter: one keyed GCRA per limit, keyed by a 64-bit hash and
//! pruned on a timer so it stays bounded. It decides alone without Redis, and while
//! Redis cannot be reached.

use std::time::Duration;

use governor::clock::{Clock, QuantaClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::{Decision, KeyKind};
use crate::limits::Rate;

type KeyedGcra = RateLimiter<u64, DashMapStateStore<u64>, QuantaClock, StateInformationMiddleware>;

/// One in-process keyed GCRA.
pub(super) struct LocalLimiter {
    pub(super) kind: KeyKind,
    pub(super) rate: Rate,
    /// Time for one unit to come back.
    unit: Duration,
    gcra: KeyedGcra,
}

impl LocalLimiter {
    pub(super) fn new(kind: KeyKind, rate: Rate) -> Self {
        let unit = rate.period / rate.count.get();
        let quota = Quota::with_period(unit)
            // A rate finer than a nanosecond: governor clamps the period itself.
            .unwrap_or_else(|| Quota::per_second(rate.count))
            .allow_burst(rate.count);
        let gcra = RateLimiter::dashmap_with_clock(quota, QuantaClock::default())
            .with_middleware::<StateInformationMiddleware>();
        Self {
            kind,
            rate,
            unit,
            gcra,
        }
    }

    pub(super) fn check(&self, key: u64) -> Decision {
        let burst = self.rate.count.get();
        match self.gcra.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity().min(burst - 1);
                Decision {
                    kind: self.kind,
                    rate: self.rate,
                    remaining,
                    reset: self.unit * (burst - remaining),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.gcra.clock().now());
                Decision {
                    kind: self.kind,
                    rate: self.rate,
                    remaining: 0,
                    reset: wait + self.unit * (burst - 1),
                    retry_after: Some(wait),
                }
            }
        }
    }

    pub(super) fn prune(&self) {
        self.gcra.retain_recent();
        self.gcra.shrink_to_fit();
    }

    /// Keys currently held.
    pub(super) fn tracked(&self) -> usize {
        self.gcra.len()
    }
}

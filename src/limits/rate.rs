//! A rate limit's size: `N` requests per period.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// A rate such as `20/minute`: `count` requests per `period`, with a burst of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub period: Duration,
}

impl Rate {
    pub const fn new(count: NonZeroU32, period: Duration) -> Self {
        Self { count, period }
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("must look like \"20/minute\" (N/second, N/minute or N/hour), not {s:?}");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let count = NonZeroU32::new(count).ok_or_else(|| "N must be at least 1".to_string())?;
        let period = match unit.trim() {
            "second" | "s" | "sec" => Duration::from_secs(1),
            "minute" | "m" | "min" => Duration::from_secs(60),
            "hour" | "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            _ => "hour",
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

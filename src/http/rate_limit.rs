//! The IETF `RateLimit-Policy` and `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers) for the limits a request was checked against.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};

use crate::catalog::ProblemType;
use crate::limits::{Decision, RateLimitReport};

use super::context::client_ip;
use super::problem::{ceil_secs, Problem};
use super::AppState;

/// The per-address limit of the side endpoints (readiness, metrics, the audit API,
/// CORS preflights); `Err` is the 429 to answer with. Liveness stays unlimited: it
/// touches nothing.
pub async fn admit_side(req: &HttpRequest, state: &AppState) -> Result<(), Problem> {
    let Some(ip) = client_ip(req, &state.trusted_proxies) else {
        return Ok(());
    };
    let decision = state.vendor.limits.check_side(ip).await;
    match decision.retry_after {
        None => Ok(()),
        Some(after) => Err(Problem::new(
            ProblemType::RateLimited,
            "too many requests from this address; try again later",
        )
        .with_retry_after(Some(after))
        .at(req)),
    }
}

/// Adds both headers to `response`, when the request was checked against any limit.
pub fn add_headers(report: &RateLimitReport, response: &mut HttpResponse) {
    for (name, value) in [
        ("ratelimit-policy", policy_header(report)),
        ("ratelimit", state_header(report)),
    ] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
}

/// `RateLimit-Policy`, e.g. `"ip";q=120;w=60, "user";q=30;w=60`.
fn policy_header(report: &RateLimitReport) -> Option<String> {
    render(report, |d| {
        format!("q={};w={}", d.rate.count, ceil_secs(d.rate.period))
    })
}

/// `RateLimit`, e.g. `"ip";r=119;t=1, "user";r=29;t=2`: `r` requests left now,
/// `t` seconds until the whole quota is back.
fn state_header(report: &RateLimitReport) -> Option<String> {
    render(report, |d| {
        format!("r={};t={}", d.remaining, ceil_secs(d.reset))
    })
}

/// One `"kind";params` item a limit, comma-separated; `None` when there is none.
fn render(report: &RateLimitReport, params: impl Fn(&Decision) -> String) -> Option<String> {
    let decisions = report.decisions();
    if decisions.is_empty() {
        return None;
    }
    let items: Vec<String> = decisions
        .iter()
        .map(|d| format!("\"{}\";{}", d.kind.as_str(), params(d)))
        .collect();
    Some(items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{rate, KeyKind};
    use std::time::Duration;

    #[test]
    fn headers_follow_the_ietf_draft() {
        let mut report = RateLimitReport::default();
        report.add(Decision {
            kind: KeyKind::Ip,
            rate: rate(120, Duration::from_secs(60)),
            remaining: 119,
            reset: Duration::from_millis(500),
            retry_after: None,
        });
        report.add(Decision {
            kind: KeyKind::User,
            rate: rate(20, Duration::from_secs(60)),
            remaining: 19,
            reset: Duration::from_secs(3),
            retry_after: None,
        });
        assert_eq!(
            policy_header(&report).unwrap(),
            "\"ip\";q=120;w=60, \"user\";q=20;w=60"
        );
        assert_eq!(
            state_header(&report).unwrap(),
            "\"ip\";r=119;t=1, \"user\";r=19;t=3"
        );
    }
}

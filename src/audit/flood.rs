//! Keeps the audit store bounded under floods of refused attempts.
//!
//! Refusals that cost nothing upstream and that anyone can send (`unauthenticated`,
//! `rate_limited`, `invalid_request`, and `forbidden`, such as refused CORS preflights
//! and CSRF refusals, which come before the per-user limit) are grouped by source: outcome, client address
//! (IPv6 by /64) and subject. The first [`FloodGuard::individual`] refusals of a group
//! in a window are stored as usual, so ordinary mistakes keep their full detail; the
//! rest of that window is only counted, and stored as one event with `count` = how
//! many were folded in once the window closes. Every issued or reused token, and every
//! other outcome, always gets its own event.
//!
//! Memory is bounded too: past [`FloodGuard::max_groups`] sources in a window, new
//! sources share one group per outcome ("many sources"). So, whatever the request
//! rate, refusals add about `(max_groups + 4) × (individual + 1)` events per window
//! at most (twice that where windows overlap).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{AuditEvent, Outcome};
use crate::address::address_group;
use crate::background::lock;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    outcome: Outcome,
    /// `None` for the shared overflow group.
    source: Option<String>,
    subject: Option<String>,
}

struct Group {
    opened: OffsetDateTime,
    stored: u32,
    folded: u64,
    first_folded: Option<OffsetDateTime>,
    last: Option<AuditEvent>,
}

#[derive(Default)]
struct State {
    open: HashMap<Key, Group>,
    /// Groups whose window closed before a drain came by.
    closed: Vec<(Key, Group)>,
}

/// Folds repeated refusals into aggregated events.
pub struct FloodGuard {
    window: Duration,
    max_groups: usize,
    individual: u32,
    state: Mutex<State>,
}

impl Default for FloodGuard {
    /// 20 refusals per source and outcome per minute individually; 1024 sources.
    fn default() -> Self {
        Self::new(Duration::from_secs(60), 1024, 20)
    }
}

impl FloodGuard {
    pub fn new(window: Duration, max_groups: usize, individual: u32) -> Self {
        Self {
            window,
            max_groups: max_groups.max(1),
            individual: individual.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// The window after which a group's count is written out.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Refusals per group and window stored with their own event.
    pub fn individual(&self) -> u32 {
        self.individual
    }

    /// Most sources tracked one by one.
    pub fn max_groups(&self) -> usize {
        self.max_groups
    }

    /// True when the event was counted into its group and must not be stored itself.
    pub fn absorb(&self, event: &AuditEvent) -> bool {
        let foldable = match event.outcome {
            Outcome::Unauthenticated | Outcome::RateLimited | Outcome::InvalidRequest => true,
            // Refused CORS preflights and CSRF refusals come before any per-user limit,
            // so a signed-in user's can come in floods too; grouped by subject.
            Outcome::Forbidden => true,
            _ => false,
        };
        if !foldable {
            return false;
        }
        let now = event.time;
        let window = time::Duration::try_from(self.window).unwrap_or(time::Duration::MINUTE);
        let mut key = Key {
            outcome: event.outcome,
            source: Some(source_of(event.client_ip.as_deref())),
            subject: event.subject.clone(),
        };
        let mut state = lock(&self.state);
        let State { open, closed } = &mut *state;
        if !open.contains_key(&key) && open.len() >= self.max_groups {
            key = Key {
                outcome: event.outcome,
                source: None,
                subject: None,
            };
        }
        match open.get_mut(&key) {
            Some(g) if now - g.opened < window && g.stored < self.individual => {
                g.stored += 1;
                false
            }
            Some(g) if now - g.opened < window => {
                g.folded += 1;
                g.first_folded.get_or_insert(now);
                g.last = Some(event.clone());
                true
            }
            // A closed window that was not drained yet: its count goes out with the
            // next drain; this event opens a new window and is stored.
            _ => {
                if let Some(old) = open.remove(&key) {
                    if old.folded > 0 {
                        closed.push((key.clone(), old));
                    }
                }
                open.insert(
                    key,
                    Group {
                        opened: now,
                        stored: 1,
                        folded: 0,
                        first_folded: None,
                        last: None,
                    },
                );
                false
            }
        }
    }

    /// Takes the groups whose window has closed (all when `all`), returning one
    /// aggregated event for each that folded anything.
    pub fn drain(&self, now: OffsetDateTime, all: bool) -> Vec<AuditEvent> {
        let window = time::Duration::try_from(self.window).unwrap_or(time::Duration::MINUTE);
        let mut state = lock(&self.state);
        let State { open, closed } = &mut *state;
        let ended: Vec<Key> = open
            .iter()
            .filter(|(_, g)| all || now - g.opened >= window)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(group) = open.remove(&key) {
                closed.push((key, group));
            }
        }
        closed
            .drain(..)
            .filter_map(|(key, group)| summarize(&key, group))
            .collect()
    }
}

fn summarize(key: &Key, group: Group) -> Option<AuditEvent> {
    let last = group.last?;
    let first = group.first_folded.unwrap_or(last.time);
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let from = match key.source.as_deref() {
        None => "many sources".to_owned(),
        Some(s) => s.to_owned(),
    };
    let mut event = last;
    event.id = uuid::Uuid::now_v7().to_string();
    event.count = group.folded;
    if key.source.is_none() {
        event.client_ip = None;
        event.subject = None;
        event.session_id = None;
    }
    event.detail = Some(format!(
        "aggregated: {} more {} attempt(s) from {from} between {} and {}; last: {}",
        group.folded,
        key.outcome,
        fmt(first),
        fmt(event.time),
        event.detail.as_deref().unwrap_or("-"),
    ));
    Some(event)
}

/// The address a flood is counted against: IPv4 as is, IPv6 by its /64.
fn source_of(ip: Option<&str>) -> String {
    match ip.and_then(|s| s.parse::<IpAddr>().ok()).map(address_group) {
        Some(IpAddr::V6(net)) => format!("{net}/64"),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        None => ip.unwrap_or("unknown").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(ip: &str, at: OffsetDateTime) -> AuditEvent {
        let mut e = AuditEvent::begin("r", "base", "eu");
        e.outcome = Outcome::Unauthenticated;
        e.status = 401;
        e.client_ip = Some(ip.into());
        e.time = at;
        e
    }

    #[test]
    fn the_first_refusals_are_stored_and_the_rest_of_the_window_is_counted() {
        let guard = FloodGuard::new(Duration::from_secs(60), 100, 3);
        let t0 = OffsetDateTime::now_utc();
        for _ in 0..3 {
            assert!(!guard.absorb(&refusal("10.0.0.1", t0)));
        }
        for i in 1..=99 {
            assert!(guard.absorb(&refusal("10.0.0.1", t0 + time::Duration::milliseconds(i))));
        }
        assert!(guard
            .drain(t0 + time::Duration::seconds(1), false)
            .is_empty());
        let out = guard.drain(t0 + time::Duration::seconds(61), false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, 99);
        assert!(out[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("aggregated: 99 more"));
    }

    #[test]
    fn tokens_and_other_outcomes_are_never_folded() {
        let guard = FloodGuard::new(Duration::from_secs(60), 10, 1);
        let mut e = refusal("10.0.0.1", OffsetDateTime::now_utc());
        e.subject = Some("alice".into());
        for outcome in [
            Outcome::Issued,
            Outcome::Reused,
            Outcome::UpstreamError,
            Outcome::Unavailable,
        ] {
            e.outcome = outcome;
            for _ in 0..5 {
                assert!(!guard.absorb(&e));
            }
        }
    }

    #[test]
    fn a_signed_in_users_forbidden_refusals_are_folded_and_every_one_counted() {
        // 40 cookie POSTs without Origin from one signed-in user (finding 5).
        let guard = FloodGuard::new(Duration::from_secs(60), 10, 20);
        let t = OffsetDateTime::now_utc();
        let mut e = refusal("10.0.0.1", t);
        e.subject = Some("alice".into());
        e.outcome = Outcome::Forbidden;
        let stored = (0..40).filter(|_| !guard.absorb(&e)).count();
        assert_eq!(stored, 20);
        let out = guard.drain(t, true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, 20);
        assert_eq!(out[0].subject.as_deref(), Some("alice"));
        assert_eq!(stored as u64 + out[0].count, 40);
    }

    #[test]
    fn many_sources_share_one_group_past_the_limit() {
        let guard = FloodGuard::new(Duration::from_secs(60), 2, 1);
        let t = OffsetDateTime::now_utc();
        assert!(!guard.absorb(&refusal("10.0.0.1", t)));
        assert!(!guard.absorb(&refusal("10.0.0.2", t)));
        // The first overflow source opens the shared group; later ones fold into it.
        assert!(!guard.absorb(&refusal("10.0.0.3", t)));
        for i in 4..50 {
            assert!(guard.absorb(&refusal(&format!("10.0.0.{i}"), t)));
        }
        let out = guard.drain(t, true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, 46);
        assert_eq!(out[0].client_ip, None);
    }

    #[test]
    fn ipv6_sources_are_grouped_by_prefix() {
        assert_eq!(source_of(Some("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
        assert_eq!(source_of(Some("::ffff:10.0.0.1")), "10.0.0.1");
        assert_eq!(source_of(Some("10.0.0.1")), "10.0.0.1");
    }

    #[test]
    fn refused_preflights_without_a_user_are_folded() {
        let guard = FloodGuard::new(Duration::from_secs(60), 10, 1);
        let mut e = refusal("10.0.0.1", OffsetDateTime::now_utc());
        e.outcome = Outcome::Forbidden;
        assert!(!guard.absorb(&e));
        assert!(guard.absorb(&e));
    }
}

//! Reading the log: validated filters, an opaque cursor and one page of events.
//!
//! Pages are newest first by the store's insertion sequence. A cursor is the sequence
//! of the last event returned, so the next page is "older than that": events stored
//! meanwhile never shift a page, and every event stored before the first page is
//! returned exactly once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::db::{lookup_clause, Backend, LookupBy};
use super::{AuditEvent, Outcome};

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page.
pub const MAX_LIMIT: u32 = 1000;

/// A filter value the caller got wrong; the message names the parameter.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{param}: {problem}")]
pub struct FilterError {
    pub param: &'static str,
    pub problem: String,
}

impl FilterError {
    fn new(param: &'static str, problem: impl Into<String>) -> Self {
        Self {
            param,
            problem: problem.into(),
        }
    }
}

/// Where a page starts: strictly older than this insertion sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub i64);

impl Cursor {
    const PREFIX: &'static str = "v1:";

    /// The opaque form handed to clients.
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}{}", Self::PREFIX, self.0))
    }

    pub fn decode(s: &str) -> Result<Self, FilterError> {
        let bad = || FilterError::new("cursor", "is not a cursor this service handed out");
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let n = text
            .strip_prefix(Self::PREFIX)
            .and_then(|n| n.parse::<i64>().ok())
            // 0 (or a leading zero) is a page before the first event: empty, not wrong.
            .filter(|n| *n >= 0)
            .ok_or_else(bad)?;
        Ok(Cursor(n))
    }
}

/// A validated query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    pub subject: Option<String>,
    pub outcome: Option<Outcome>,
    /// Every one of these scope values must be in the event's scope.
    pub scope: Vec<String>,
    /// Events with any of these fingerprints (a token fingerprinted under several keys).
    pub token_fingerprint: Vec<String>,
    pub client_ip: Option<String>,
    /// The tenant the events were for (or asked for, when it was not configured).
    pub tenant: Option<String>,
    /// Inclusive.
    pub since: Option<OffsetDateTime>,
    /// Exclusive.
    pub until: Option<OffsetDateTime>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

/// Raw filter values as they arrive (query string or command line).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    pub subject: Option<String>,
    pub outcome: Option<String>,
    pub scope: Option<String>,
    pub token_fingerprint: Option<String>,
    pub client_ip: Option<String>,
    pub tenant: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// How to read `since`/`until`.
#[derive(Debug, Clone, Copy)]
pub enum TimeSyntax {
    /// RFC 3339 only.
    Rfc3339,
    /// RFC 3339, or a duration meaning "that long ago" (`15m`, `2h`, `7d`).
    Rfc3339OrAgo,
}

impl AuditQuery {
    /// Validates raw filters.
    pub fn parse(p: &FilterParams, times: TimeSyntax) -> Result<Self, FilterError> {
        let text =
            |param: &'static str, v: &Option<String>, max: usize| match v.as_deref().map(str::trim)
            {
                None | Some("") => Ok(None),
                // Characters, as the spec's `maxLength` counts them.
                Some(s) if s.chars().count() > max || s.chars().any(char::is_control) => Err(
                    FilterError::new(param, format!("must be at most {max} printable characters")),
                ),
                Some(s) => Ok(Some(s.to_owned())),
            };
        // A typed filter given empty (`outcome=`, `limit=`) is not "unset": refuse it as
        // the spec's enum and integer do, rather than widen the query.
        for (param, value) in [("outcome", &p.outcome), ("limit", &p.limit)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(FilterError::new(
                    param,
                    "must not be empty (leave it out instead)",
                ));
            }
        }
        let outcome = match text("outcome", &p.outcome, 32)? {
            None => None,
            Some(o) => Some(Outcome::parse(&o).ok_or_else(|| {
                let all: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
                FilterError::new("outcome", format!("must be one of {}", all.join(", ")))
            })?),
        };
        let scope = match text("scope", &p.scope, 128)? {
            None => Vec::new(),
            Some(s) => {
                let parts: Vec<String> = s.split_ascii_whitespace().map(str::to_owned).collect();
                let ok = |v: &str| {
                    v.len() <= 64
                        && v.bytes()
                            // `_` and `%` are LIKE wildcards, so neither is accepted.
                            .all(|b| b.is_ascii_alphanumeric() || b"-.:/".contains(&b))
                };
                if !parts.iter().all(|v| ok(v)) {
                    return Err(FilterError::new(
                        "scope",
                        "must be space-separated scope values (letters, digits, - . : /)",
                    ));
                }
                parts
            }
        };
        let since = parse_time("since", p.since.as_deref(), times)?;
        let until = parse_time("until", p.until.as_deref(), times)?;
        // An `until` at or before `since` is an empty range: it matches nothing, as the
        // spec (which cannot relate two parameters) lets a client ask.
        let limit = match p.limit.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    FilterError::new("limit", format!("must be a number from 1 to {MAX_LIMIT}"))
                })?,
        };
        let cursor = match p.cursor.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) => Some(Cursor::decode(c)?),
        };
        Ok(Self {
            subject: text("subject", &p.subject, 255)?,
            outcome,
            scope,
            token_fingerprint: fingerprints(text(
                "token_fingerprint",
                &p.token_fingerprint,
                MAX_FINGERPRINTS * 129,
            )?)?,
            client_ip: text("client_ip", &p.client_ip, 64)?,
            tenant: text("tenant", &p.tenant, 64)?,
            since,
            until,
            limit,
            cursor,
        })
    }
}

/// Most fingerprints one query names (one per audit key a token may have been
/// fingerprinted under).
pub const MAX_FINGERPRINTS: usize = 8;

/// `token_fingerprint`: one fingerprint, or several separated by commas (what
/// `audit hash` prints for the current and previous keys).
fn fingerprints(value: Option<String>) -> Result<Vec<String>, FilterError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    // Only commas and blanks name no fingerprint: no filter, as an empty value is.
    if list.len() > MAX_FINGERPRINTS || list.iter().any(|f| f.chars().count() > 128) {
        return Err(FilterError::new(
            "token_fingerprint",
            format!("must be at most {MAX_FINGERPRINTS} comma-separated fingerprints of at most 128 characters"),
        ));
    }
    Ok(list)
}

fn parse_time(
    param: &'static str,
    value: Option<&str>,
    syntax: TimeSyntax,
) -> Result<Option<OffsetDateTime>, FilterError> {
    let Some(v) = value.map(str::trim) else {
        return Ok(None);
    };
    if v.is_empty() {
        // `until=` names no time; reading it as "no bound" would widen the query.
        return Err(FilterError::new(
            param,
            "must not be empty (leave it out instead)",
        ));
    }
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(Some(t));
    }
    if let TimeSyntax::Rfc3339OrAgo = syntax {
        // A duration always names its unit (`15m`, `2h`, `7d`): a bare number is neither
        // a time nor an unambiguous duration.
        let has_unit = v.len() <= 5
            && v.ends_with(['s', 'm', 'h', 'd'])
            && v.len() > 1
            && v[..v.len() - 1].bytes().all(|b| b.is_ascii_digit());
        if let (true, Ok(ago)) = (has_unit, crate::config::parse_duration(v)) {
            let ago = time::Duration::try_from(ago)
                .map_err(|_| FilterError::new(param, "is too long ago"))?;
            return OffsetDateTime::now_utc()
                .checked_sub(ago)
                .map(Some)
                .ok_or_else(|| FilterError::new(param, "is too long ago"));
        }
        return Err(FilterError::new(
            param,
            "must be an RFC 3339 time (2026-11-29T10:00:00Z) or a duration ago (15m, 2h, 7d)",
        ));
    }
    Err(FilterError::new(
        param,
        "must be an RFC 3339 time such as 2026-11-29T10:00:00Z",
    ))
}

/// One page, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub events: Vec<AuditEvent>,
    /// Pass back as `cursor` for the next (older) page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A value bound into SQL built from a query.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

/// `WHERE …` for the filters (without cursor and limit), with `$n` placeholders
/// numbered from 1, and the values to bind in order. On SQLite, subjects and
/// fingerprints are found through its lookup table ([`super::db::lookup_clause`]).
pub(crate) fn where_clause(q: &AuditQuery, backend: Backend) -> (String, Vec<Arg>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let push = |clause: &str, arg: Arg, args: &mut Vec<Arg>, clauses: &mut Vec<String>| {
        args.push(arg);
        clauses.push(clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(s) = &q.subject {
        match backend {
            Backend::Sqlite => {
                args.push(Arg::Text(s.clone()));
                let mark = format!("${}", args.len());
                clauses.push(lookup_clause(LookupBy::Subject, &[mark]));
            }
            Backend::Postgres => push("subject = ?", Arg::Text(s.clone()), &mut args, &mut clauses),
        }
    }
    if let Some(o) = q.outcome {
        push(
            "outcome = ?",
            Arg::Text(o.as_str().into()),
            &mut args,
            &mut clauses,
        );
    }
    for s in &q.scope {
        // Scope values were checked to hold no LIKE wildcards.
        push(
            "(' ' || scope || ' ') LIKE ?",
            Arg::Text(format!("% {s} %")),
            &mut args,
            &mut clauses,
        );
    }
    if !q.token_fingerprint.is_empty() {
        let mut marks = Vec::new();
        for f in &q.token_fingerprint {
            args.push(Arg::Text(f.clone()));
            marks.push(format!("${}", args.len()));
        }
        clauses.push(match backend {
            Backend::Sqlite => lookup_clause(LookupBy::Fingerprint, &marks),
            Backend::Postgres => format!("token_fingerprint IN ({})", marks.join(", ")),
        });
    }
    if let Some(ip) = &q.client_ip {
        push(
            "client_ip = ?",
            Arg::Text(ip.clone()),
            &mut args,
            &mut clauses,
        );
    }
    if let Some(t) = &q.tenant {
        push("tenant = ?", Arg::Text(t.clone()), &mut args, &mut clauses);
    }
    if let Some(t) = q.since {
        push(
            "time_us >= ?",
            Arg::Int(super::chain::to_micros(t)),
            &mut args,
            &mut clauses,
        );
    }
    if let Some(t) = q.until {
        push(
            "time_us < ?",
            Arg::Int(super::chain::to_micros(t)),
            &mut args,
            &mut clauses,
        );
    }
    if let Some(c) = q.cursor {
        push("seq < ?", Arg::Int(c.0), &mut args, &mut clauses);
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> FilterParams {
        serde_urlencoded::from_str(&serde_urlencoded::to_string(pairs).unwrap()).unwrap()
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor(42);
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("42").is_err());
        assert!(Cursor::decode("").is_err());
    }

    #[test]
    fn filters_are_validated_with_the_parameter_named() {
        let err =
            AuditQuery::parse(&params(&[("outcome", "stolen")]), TimeSyntax::Rfc3339).unwrap_err();
        assert_eq!(err.param, "outcome");
        let err =
            AuditQuery::parse(&params(&[("since", "yesterday")]), TimeSyntax::Rfc3339).unwrap_err();
        assert_eq!(err.param, "since");
        let err = AuditQuery::parse(&params(&[("limit", "0")]), TimeSyntax::Rfc3339).unwrap_err();
        assert_eq!(err.param, "limit");
        let err = AuditQuery::parse(&params(&[("scope", "a%b")]), TimeSyntax::Rfc3339).unwrap_err();
        assert_eq!(err.param, "scope");
    }

    #[test]
    fn relative_times_are_accepted_only_where_asked() {
        assert!(AuditQuery::parse(&params(&[("since", "2h")]), TimeSyntax::Rfc3339).is_err());
        let q = AuditQuery::parse(&params(&[("since", "2h")]), TimeSyntax::Rfc3339OrAgo).unwrap();
        assert!(q.since.unwrap() < OffsetDateTime::now_utc());
        for bare in ["0", "15", "2 h", "h", "12345h", "1h30m"] {
            let err = AuditQuery::parse(&params(&[("until", bare)]), TimeSyntax::Rfc3339OrAgo)
                .unwrap_err();
            assert_eq!(err.param, "until", "{bare}");
        }
    }

    #[test]
    fn where_clause_numbers_placeholders_in_order() {
        let q = AuditQuery {
            subject: Some("u".into()),
            scope: vec!["transcribe".into()],
            cursor: Some(Cursor(9)),
            ..AuditQuery::default()
        };
        let (sql, args) = where_clause(&q, Backend::Postgres);
        assert_eq!(
            sql,
            " WHERE subject = $1 AND (' ' || scope || ' ') LIKE $2 AND seq < $3"
        );
        assert_eq!(args.len(), 3);
        let (sql, args) = where_clause(&q, Backend::Sqlite);
        assert!(sql.starts_with(" WHERE subject IN ($1) AND seq IN (SELECT seq FROM audit_lookup WHERE key IN ('s:' || $1)"), "{sql}");
        assert!(
            sql.ends_with(" AND (' ' || scope || ' ') LIKE $2 AND seq < $3"),
            "{sql}"
        );
        assert_eq!(args.len(), 3);
    }
}

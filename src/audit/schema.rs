//! The audit event's fields, written out once: their names, database columns and
//! kinds, in the order the chain hashes them. The canonical chain form
//! ([`super::chain::canonical`]), the database binding and row reader ([`super::db`])
//! and the `audit` log line ([`super::emit_log_line`], checked against [`FIELDS`] by a
//! test) all go through this table.

use time::OffsetDateTime;

use super::{AuditEvent, Outcome};

/// How a field is stored: text, an integer, or a time (microseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Time,
}

/// One field of an event.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its name in JSON, the log line and the API.
    pub name: &'static str,
    /// Its column in `audit_events`.
    pub column: &'static str,
    pub kind: Kind,
}

const fn field(name: &'static str, column: &'static str, kind: Kind) -> Field {
    Field { name, column, kind }
}

/// Number of event fields.
pub const FIELD_COUNT: usize = 19;

/// Every event field, in the chain's canonical order.
pub const FIELDS: [Field; FIELD_COUNT] = [
    field("id", "id", Kind::Text),
    field("time", "time_us", Kind::Time),
    field("request_id", "request_id", Kind::Text),
    field("outcome", "outcome", Kind::Text),
    field("status", "status", Kind::Int),
    field("subject", "subject", Kind::Text),
    field("session_id", "session_id", Kind::Text),
    field("client_ip", "client_ip", Kind::Text),
    field("user_agent", "user_agent", Kind::Text),
    field("origin", "origin", Kind::Text),
    field("scope", "scope", Kind::Text),
    field("tenant", "tenant", Kind::Text),
    field("environment", "environment", Kind::Text),
    field("token_fingerprint", "token_fingerprint", Kind::Text),
    field("token_expires_at", "token_expires_us", Kind::Time),
    field("upstream_ms", "upstream_ms", Kind::Int),
    field("duration_ms", "duration_ms", Kind::Int),
    field("detail", "detail", Kind::Text),
    field("count", "count", Kind::Int),
];

/// A field's value, borrowed from an event; `None` is SQL `NULL` / JSON `null`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Time(Option<OffsetDateTime>),
}

/// A field's value as read back from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Owned {
    Text(Option<String>),
    Int(Option<i64>),
    /// Microseconds since the Unix epoch.
    Time(Option<i64>),
}

/// Why stored values do not make an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct BadValue {
    pub field: &'static str,
    pub problem: String,
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Microseconds since the Unix epoch: the precision both backends store.
pub fn to_micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// The inverse of [`to_micros`]; out-of-range values (only from a corrupt row) clamp.
pub fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl AuditEvent {
    /// The event's values in [`FIELDS`] order.
    pub fn values(&self) -> [Value<'_>; FIELD_COUNT] {
        fn text(s: &Option<String>) -> Value<'_> {
            Value::Text(s.as_deref())
        }
        [
            Value::Text(Some(&self.id)),
            Value::Time(Some(self.time)),
            Value::Text(Some(&self.request_id)),
            Value::Text(Some(self.outcome.as_str())),
            Value::Int(Some(i64::from(self.status))),
            text(&self.subject),
            text(&self.session_id),
            text(&self.client_ip),
            text(&self.user_agent),
            text(&self.origin),
            text(&self.scope),
            Value::Text(Some(&self.tenant)),
            Value::Text(Some(&self.environment)),
            text(&self.token_fingerprint),
            Value::Time(self.token_expires_at),
            Value::Int(self.upstream_ms.map(clamp_i64)),
            Value::Int(Some(clamp_i64(self.duration_ms))),
            text(&self.detail),
            Value::Int(Some(clamp_i64(self.count))),
        ]
    }

    /// An event from its values in [`FIELDS`] order (as a row reader yields them).
    pub fn from_values(values: [Owned; FIELD_COUNT]) -> Result<Self, BadValue> {
        let mut it = FIELDS.iter().zip(values);
        let mut next = || {
            it.next()
                .unwrap_or_else(|| unreachable!("FIELDS and values have one length"))
        };
        let opt_text = |(f, v): (&Field, Owned)| match v {
            Owned::Text(s) => Ok(s),
            other => Err(wrong_kind(f, &other)),
        };
        let text = |fv: (&Field, Owned)| {
            let name = fv.0.name;
            opt_text(fv)?.ok_or_else(|| missing(name))
        };
        let opt_int = |(f, v): (&Field, Owned)| match v {
            Owned::Int(i) => Ok(i),
            other => Err(wrong_kind(f, &other)),
        };
        let int = |fv: (&Field, Owned)| {
            let name = fv.0.name;
            opt_int(fv)?.ok_or_else(|| missing(name))
        };
        let opt_time = |(f, v): (&Field, Owned)| match v {
            Owned::Time(t) => Ok(t.map(from_micros)),
            other => Err(wrong_kind(f, &other)),
        };
        let id = text(next())?;
        let time = opt_time(next())?.ok_or_else(|| missing("time"))?;
        let request_id = text(next())?;
        let outcome = text(next())?;
        let outcome = Outcome::parse(&outcome).ok_or_else(|| BadValue {
            field: "outcome",
            problem: format!("unknown outcome {outcome:?}"),
        })?;
        let status = int(next())?;
        let status = u16::try_from(status).map_err(|_| BadValue {
            field: "status",
            problem: format!("{status} out of range"),
        })?;
        Ok(AuditEvent {
            id,
            time,
            request_id,
            outcome,
            status,
            subject: opt_text(next())?,
            session_id: opt_text(next())?,
            client_ip: opt_text(next())?,
            user_agent: opt_text(next())?,
            origin: opt_text(next())?,
            scope: opt_text(next())?,
            tenant: text(next())?,
            environment: text(next())?,
            token_fingerprint: opt_text(next())?,
            token_expires_at: opt_time(next())?,
            upstream_ms: opt_int(next())?.map(to_u64),
            duration_ms: to_u64(int(next())?),
            detail: opt_text(next())?,
            count: to_u64(int(next())?),
        })
    }
}

fn wrong_kind(f: &Field, v: &Owned) -> BadValue {
    BadValue {
        field: f.name,
        problem: format!("expected {:?}, got {v:?}", f.kind),
    }
}

fn missing(field: &'static str) -> BadValue {
    BadValue {
        field,
        problem: "is missing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_event() -> AuditEvent {
        let mut e = AuditEvent::begin("req-1", "base", "eu");
        e.outcome = Outcome::Issued;
        e.status = 200;
        e.subject = Some("alice".into());
        e.session_id = Some("sid".into());
        e.client_ip = Some("127.0.0.1".into());
        e.user_agent = Some("ua".into());
        e.origin = Some("https://app.example".into());
        e.scope = Some("transcribe".into());
        e.token_fingerprint = Some("hmac-sha256:00".into());
        e.token_expires_at = Some(from_micros(to_micros(OffsetDateTime::now_utc())));
        e.upstream_ms = Some(12);
        e.duration_ms = 34;
        e.detail = Some("d".into());
        e.count = 3;
        e.time = from_micros(to_micros(e.time));
        e
    }

    fn owned(v: Value<'_>) -> Owned {
        match v {
            Value::Text(s) => Owned::Text(s.map(str::to_owned)),
            Value::Int(i) => Owned::Int(i),
            Value::Time(t) => Owned::Time(t.map(to_micros)),
        }
    }

    #[test]
    fn values_round_trip_through_the_schema() {
        let e = full_event();
        let values = e.values().map(owned);
        for (f, v) in FIELDS.iter().zip(&values) {
            let kind = match v {
                Owned::Text(_) => Kind::Text,
                Owned::Int(_) => Kind::Int,
                Owned::Time(_) => Kind::Time,
            };
            assert_eq!(kind, f.kind, "{}", f.name);
        }
        assert_eq!(AuditEvent::from_values(values), Ok(e));
    }

    #[test]
    fn the_schema_names_every_serialized_field() {
        let json = serde_json::to_value(full_event()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut names: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        keys.sort_unstable();
        names.sort_unstable();
        assert_eq!(keys, names);
    }

    #[test]
    fn a_bad_stored_value_names_its_field() {
        let mut values = full_event().values().map(owned);
        values[3] = Owned::Text(Some("nonsense".into()));
        let err = AuditEvent::from_values(values).unwrap_err();
        assert_eq!(err.field, "outcome");
    }
}

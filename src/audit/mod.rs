//! The audit trail: one event per `POST /v1/tokens` attempt, written before any token
//! leaves the service, and mirrored as one JSON line on the `audit` tracing target.
//!
//! Layout: [`schema`] (the event fields, once), [`db`] (SQLite/PostgreSQL through sqlx:
//! open, append, read and verify, prune),
//! [`writer`] (group commit), [`chain`] (hash chain), [`query`] (filters and cursors),
//! [`flood`] (aggregated refusals), [`store`] (the durable [`AuditStore`]),
//! [`commands`] (the `audit …` and `migrate` subcommands).

pub mod chain;
pub mod checkpoint;
pub mod commands;
pub mod db;
pub mod flood;
pub mod keys;
pub mod query;
pub mod schema;
pub mod store;
pub mod watch;
pub mod writer;

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;

/// What became of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Issued,
    Reused,
    InvalidRequest,
    Unauthenticated,
    Forbidden,
    RateLimited,
    UpstreamError,
    Unavailable,
    /// The end of a relayed stream; `detail` says how it went.
    StreamEnded,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Issued,
        Outcome::Reused,
        Outcome::InvalidRequest,
        Outcome::Unauthenticated,
        Outcome::Forbidden,
        Outcome::RateLimited,
        Outcome::UpstreamError,
        Outcome::Unavailable,
        Outcome::StreamEnded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Reused => "reused",
            Outcome::InvalidRequest => "invalid_request",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::RateLimited => "rate_limited",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Unavailable => "unavailable",
            Outcome::StreamEnded => "stream_ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether a token left the service with this outcome.
    pub fn hands_out_token(self) -> bool {
        matches!(self, Outcome::Issued | Outcome::Reused)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit event; the fields are fixed by the API (`AuditEvent` in `openapi.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub request_id: String,
    pub outcome: Outcome,
    pub status: u16,
    pub subject: Option<String>,
    pub session_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub origin: Option<String>,
    pub scope: Option<String>,
    pub tenant: String,
    pub environment: String,
    pub token_fingerprint: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub token_expires_at: Option<OffsetDateTime>,
    pub upstream_ms: Option<u64>,
    pub duration_ms: u64,
    pub detail: Option<String>,
    /// How many attempts this event stands for: 1, or more for an aggregated record
    /// of repeated refusals from one source (see [`flood`]).
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

impl AuditEvent {
    /// A new event for an attempt whose outcome is not known yet.
    pub fn begin(request_id: &str, tenant: &str, environment: &str) -> Self {
        Self {
            // Time-ordered (v7): each batch's ids go to the end of the id index
            // instead of dirtying a random page of it per event.
            id: uuid::Uuid::now_v7().to_string(),
            time: OffsetDateTime::now_utc(),
            request_id: request_id.to_owned(),
            outcome: Outcome::InvalidRequest,
            status: 0,
            subject: None,
            session_id: None,
            client_ip: None,
            user_agent: None,
            origin: None,
            scope: None,
            tenant: tenant.to_owned(),
            environment: environment.to_owned(),
            token_fingerprint: None,
            token_expires_at: None,
            upstream_ms: None,
            duration_ms: 0,
            detail: None,
            count: 1,
        }
    }
}

/// Why an event could not be stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    #[error("audit store did not confirm the write in time")]
    Timeout,
}

/// Where a stored event sits in its hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub chain_id: Arc<str>,
    pub seq: i64,
    pub hash: String,
}

/// A durable place for audit events.
pub trait AuditStore: Send + Sync + 'static {
    /// Stores the event durably; returns only once it is committed.
    fn record<'a>(&'a self, event: &'a AuditEvent) -> BoxFuture<'a, Result<(), AuditError>>;
    /// Like [`AuditStore::record`], and tells where the event sits in its chain, for
    /// stores that keep one.
    fn record_linked<'a>(
        &'a self,
        event: &'a AuditEvent,
    ) -> BoxFuture<'a, Result<Option<Link>, AuditError>> {
        Box::pin(async move { self.record(event).await.map(|()| None) })
    }
    /// Signs a checkpoint of what is stored now (at shutdown), for stores that do.
    fn checkpoint(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Whether the store can currently be written.
    fn ready(&self) -> BoxFuture<'_, bool>;
    /// One page of stored events, newest first. Stores that keep nothing say so.
    fn query<'a>(
        &'a self,
        _query: &'a query::AuditQuery,
    ) -> BoxFuture<'a, Result<query::Page, AuditError>> {
        Box::pin(async { Err(AuditError::Unavailable("this store keeps no events".into())) })
    }
    /// What is known of the stored trail (checked, signed, conflicts), for stores that
    /// keep a chain. Memory only: reading it writes nothing.
    fn trail(&self) -> Option<watch::TrailState> {
        None
    }
}

/// An [`Auditor`] that does not keep its store alive.
pub struct WeakAuditor {
    store: std::sync::Weak<dyn AuditStore>,
    flood: Option<std::sync::Weak<flood::FloodGuard>>,
}

/// Writes events to the store, then to the `audit` log target.
#[derive(Clone)]
pub struct Auditor {
    store: Arc<dyn AuditStore>,
    flood: Option<Arc<flood::FloodGuard>>,
}

impl Auditor {
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self { store, flood: None }
    }

    /// An auditor that folds repeated refusals from one source into aggregated events
    /// (see [`flood`]); call [`Auditor::flush_floods`] now and then.
    pub fn with_flood_guard(store: Arc<dyn AuditStore>, guard: flood::FloodGuard) -> Self {
        Self {
            store,
            flood: Some(Arc::new(guard)),
        }
    }

    /// Stores the event (or counts it into an aggregate, for a repeated refusal).
    pub async fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        if let Some(guard) = &self.flood {
            if guard.absorb(event) {
                return Ok(());
            }
        }
        self.write(event).await
    }

    /// Writes the aggregated events of flood windows that have closed (all of them
    /// when `all`, at shutdown).
    pub async fn flush_floods(&self, all: bool) {
        let Some(guard) = &self.flood else { return };
        let summaries = guard.drain(OffsetDateTime::now_utc(), all);
        for summary in summaries {
            // A lost summary only loses a count of refusals; it is logged either way.
            let _ = self.write(&summary).await;
        }
    }

    /// A handle that does not keep the auditor alive (for background tasks).
    pub fn downgrade(&self) -> WeakAuditor {
        WeakAuditor {
            store: Arc::downgrade(&self.store),
            flood: self.flood.as_ref().map(Arc::downgrade),
        }
    }

    /// The auditor again, if it still exists.
    pub fn upgrade(weak: &WeakAuditor) -> Option<Self> {
        Some(Self {
            store: weak.store.upgrade()?,
            flood: match &weak.flood {
                Some(f) => Some(f.upgrade()?),
                None => None,
            },
        })
    }

    /// Pages through stored events.
    pub async fn query(&self, query: &query::AuditQuery) -> Result<query::Page, AuditError> {
        self.store.query(query).await
    }

    /// What is known of the stored trail, if the store keeps a chain.
    pub fn trail(&self) -> Option<watch::TrailState> {
        self.store.trail()
    }

    /// Waits for the event's commit (the vend's token leaves only after it).
    #[tracing::instrument(name = "audit.commit", skip_all)]
    async fn write(&self, event: &AuditEvent) -> Result<(), AuditError> {
        match self.store.record_linked(event).await {
            Ok(link) => {
                emit_log_line(event, true, link.as_ref());
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = %event.request_id, outcome = %event.outcome, "audit event could not be stored");
                Err(e)
            }
        }
    }

    /// At shutdown: writes the aggregated refusals still being counted, then signs a
    /// last checkpoint of the chain.
    pub async fn close(&self) {
        self.flush_floods(true).await;
        self.checkpoint().await;
    }

    /// Signs a checkpoint of the store's chain now, if it grew since the last one.
    pub async fn checkpoint(&self) {
        self.store.checkpoint().await;
    }

    pub async fn ready(&self) -> bool {
        self.store.ready().await
    }

    /// The `audit` log line of an event the store could not take (`stored: false`):
    /// then the log is the only trace of the attempt.
    pub fn log_unstored(&self, event: &AuditEvent) {
        emit_log_line(event, false, None);
    }
}

/// The event's `audit` log line, with its place in the chain when it was stored, so
/// the log can be checked against the database (see [`schema::FIELDS`]).
fn emit_log_line(e: &AuditEvent, stored: bool, link: Option<&Link>) {
    let time = e
        .time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let expires = e.token_expires_at.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    // Zero-width and other invisible characters of a subject are written as `\u{…}`
    // (reversibly: `\` as `\\`), so two subjects that look alike in a log viewer can be
    // told apart; the stored event, and so the chain's hash, keeps the exact value.
    let subject = e.subject.as_deref().map(crate::text::escape_invisible);
    tracing::info!(
        target: "audit",
        id = %e.id,
        time = %time,
        request_id = %e.request_id,
        outcome = %e.outcome,
        status = e.status,
        subject = subject.as_deref(),
        session_id = e.session_id.as_deref(),
        client_ip = e.client_ip.as_deref(),
        user_agent = e.user_agent.as_deref(),
        origin = e.origin.as_deref(),
        scope = e.scope.as_deref(),
        tenant = %e.tenant,
        environment = %e.environment,
        token_fingerprint = e.token_fingerprint.as_deref(),
        token_expires_at = expires.as_deref(),
        upstream_ms = e.upstream_ms,
        duration_ms = e.duration_ms,
        detail = e.detail.as_deref(),
        count = e.count,
        stored,
        chain_id = link.map(|l| &*l.chain_id),
        chain_seq = link.map(|l| l.seq),
        hash = link.map(|l| l.hash.as_str()),
        "audit event"
    );
}

/// Shortest accepted `AUDIT_HMAC_KEY`.
pub const MIN_HMAC_KEY_BYTES: usize = 16;

/// One fingerprint key, keyed once; each fingerprint starts from a clone of it.
#[derive(Clone)]
struct FingerprintKey {
    keyed: Hmac<Sha256>,
    id: String,
}

impl FingerprintKey {
    fn new(key: &SecretString) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let hmac = |k: &[u8]| {
            Hmac::<Sha256>::new_from_slice(k)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
        };
        let keyed = hmac(key.expose_secret().as_bytes());
        let mut idm = keyed.clone();
        idm.update(b"\0token-vendor fingerprint key id");
        let id = hex::encode(&idm.finalize().into_bytes()[..8]);
        Self { keyed, id }
    }
}

/// Keyed fingerprints of tokens: lets ops trace a token without storing it. Clones
/// share the key, so [`Fingerprinter::rotate`] changes it for every holder.
#[derive(Clone)]
pub struct Fingerprinter {
    key: Arc<std::sync::RwLock<FingerprintKey>>,
}

impl Fingerprinter {
    pub fn new(key: SecretString) -> Self {
        Self {
            key: Arc::new(std::sync::RwLock::new(FingerprintKey::new(&key))),
        }
    }

    fn current(&self) -> FingerprintKey {
        self.key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `hmac-sha256:<hex>` of the token.
    pub fn fingerprint(&self, token: &str) -> String {
        let mut mac = self.current().keyed;
        mac.update(token.as_bytes());
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// A public id of the key (16 hex digits): tells keys apart without revealing them.
    pub fn key_id(&self) -> String {
        self.current().id
    }

    /// Fingerprints from now on use `key`; `Err` (key too short) keeps the old one.
    pub fn rotate(&self, key: &SecretString) -> Result<(), String> {
        if key.expose_secret().len() < MIN_HMAC_KEY_BYTES {
            return Err(format!("must be at least {MIN_HMAC_KEY_BYTES} bytes"));
        }
        let new = FingerprintKey::new(key);
        let mut slot = self
            .key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.id != new.id {
            tracing::info!(old_key_id = %slot.id, key_id = %new.id, "audit fingerprint key replaced");
            *slot = new;
        }
        Ok(())
    }
}

/// `AUDIT_HMAC_KEY_FILE`, re-read on SIGHUP and on change: the fingerprint key follows
/// it at once. The hash chains keep the key they were opened with until the next start
/// (a chain changes key only when a new one is opened; `audit verify --previous-key-file`).
pub struct FingerprintKeyFile {
    pub path: std::path::PathBuf,
    pub fingerprinter: Fingerprinter,
}

impl crate::reload::Reloadable for FingerprintKeyFile {
    fn name(&self) -> String {
        "AUDIT_HMAC_KEY_FILE".into()
    }

    fn paths(&self) -> Vec<std::path::PathBuf> {
        vec![self.path.clone()]
    }

    fn reload(&self) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let key = text.trim_end_matches(['\n', '\r']);
        if key.is_empty() {
            return Err("the file is empty".into());
        }
        self.fingerprinter.rotate(&SecretString::from(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_keyed_and_stable() {
        let a = Fingerprinter::new(SecretString::from("fake-key-one-for-tests"));
        let b = Fingerprinter::new(SecretString::from("fake-key-two-for-tests"));
        assert_eq!(a.fingerprint("tok"), a.fingerprint("tok"));
        assert_ne!(a.fingerprint("tok"), b.fingerprint("tok"));
        assert!(a.fingerprint("tok").starts_with("hmac-sha256:"));
        assert_eq!(a.fingerprint("tok").len(), "hmac-sha256:".len() + 64);
    }

    /// The `audit` log line carries every field of the schema under its name.
    #[test]
    fn the_log_line_carries_the_schema_fields() {
        use std::io::Write;
        use std::sync::Mutex;

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let mut e = AuditEvent::begin("req-1", "base", "eu");
        e.subject = Some("alice".into());
        e.session_id = Some("s".into());
        e.client_ip = Some("127.0.0.1".into());
        e.user_agent = Some("ua".into());
        e.origin = Some("o".into());
        e.scope = Some("transcribe".into());
        e.token_fingerprint = Some("hmac-sha256:00".into());
        e.token_expires_at = Some(e.time);
        e.upstream_ms = Some(1);
        e.detail = Some("d".into());
        let link = Link {
            chain_id: Arc::from("c1"),
            seq: 4,
            hash: "ab".repeat(32),
        };
        tracing::subscriber::with_default(subscriber, || emit_log_line(&e, true, Some(&link)));
        let line = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let json: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        for f in schema::FIELDS {
            assert!(json.get(f.name).is_some(), "{} missing from {line}", f.name);
        }
        assert_eq!(json["chain_id"], "c1");
        assert_eq!(json["chain_seq"], 4);
        assert_eq!(json["hash"], "ab".repeat(32));
    }

    #[test]
    fn outcomes_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}

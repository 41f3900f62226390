//! The audit database: SQLite (embedded default, WAL) or PostgreSQL (several
//! replicas), through sqlx. Schema changes are the append-only files in
//! `migrations/<backend>/`, embedded in the binary.

use std::str::FromStr;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row};
use time::OffsetDateTime;

use super::chain::{self, ChainRecord, Finding, Intact, Linked, Verifier, GENESIS};
use super::query::{self, Arg, AuditQuery, Cursor, Page};
use super::{AuditEvent, Outcome};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long SQLite waits for another writer's lock before giving up; short, because
/// a request is waiting on the outcome.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 1000;

/// Which database the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of a `DATABASE_URL`, or `None` for any other scheme.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// Starts a write transaction: SQLite takes the write lock at once (waiting up to
    /// its busy timeout) rather than failing half-way when a read turns into a write.
    fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    fn migrator(self) -> &'static Migrator {
        match self {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }
}

/// Why the audit database could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DATABASE_URL must start with sqlite:// or postgres://")]
    UnsupportedUrl,
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the audit tables do not exist yet (run `token-vendor migrate`)")]
    NotMigrated,
    #[error("{0}")]
    Open(String),
    #[error("a stored event cannot be read: {0}")]
    Corrupt(String),
    #[error("the audit database did not answer in time")]
    Timeout,
}

/// Whether opening may create the SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file if missing (serve, dev, migrate).
    Create,
    /// The database must exist already (the read and maintenance commands).
    Existing,
}

/// A pool on the audit database.
#[derive(Clone)]
pub struct AuditDb {
    pool: AnyPool,
    backend: Backend,
}

const EVENT_COLUMNS: &str = "id, time_us, request_id, outcome, status, subject, session_id, \
     client_ip, user_agent, origin, scope, tenant, environment, token_fingerprint, \
     token_expires_us, upstream_ms, duration_ms, detail, count, chain_id, chain_seq, prev_hash, hash";
const EVENT_COLUMN_COUNT: usize = 23;

/// Multi-row insert sizes; a few fixed shapes keep prepared statements cached.
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

impl AuditDb {
    /// Connects to `url` (without migrating; see [`AuditDb::migrate`]).
    pub async fn open(url: &str, mode: OpenMode) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url).ok_or(StoreError::UnsupportedUrl)?;
        let url = match backend {
            Backend::Sqlite => sqlite_url(url, mode),
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = match backend {
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(3))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        // FULL: a commit is on disk before the token leaves.
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        // Index pages of random ids and fingerprints stay in memory
                        // instead of being re-read from the file on every batch.
                        conn.execute("PRAGMA cache_size = -32768").await?;
                        conn.execute("PRAGMA mmap_size = 268435456").await?;
                        // Fewer, larger checkpoints: each one is an fsync of the file.
                        conn.execute("PRAGMA wal_autocheckpoint = 8192").await?;
                        conn.execute(
                            format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str(),
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect_with(options)
                .await
                .map_err(|e| with_sqlite_hint(e, &url, mode))?,
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(10)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_with(options)
                    .await?
            }
        };
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.backend.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Proves the database answers a read, without taking any lock a writer needs.
    pub async fn probe_read(&self) -> Result<(), StoreError> {
        let probe =
            sqlx::query("SELECT head_seq FROM audit_chains LIMIT 1").fetch_optional(&self.pool);
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(r) => r.map(|_| ()).map_err(not_migrated),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Proves the database can take a write right now, without changing anything.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let probe = async {
            let mut tx = RawTransaction::begin(&self.pool, self.backend.begin_write()).await?;
            sqlx::query("UPDATE audit_chains SET head_seq = head_seq WHERE chain_id = $1")
                .bind("readiness-probe")
                .execute(tx.conn())
                .await?;
            tx.rollback().await?;
            Ok::<(), sqlx::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(r) => r.map_err(not_migrated),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Appends `events` to the writer's chain in one transaction and moves the chain's
    /// head; `chain` advances only if the commit succeeds.
    pub(crate) async fn append(
        &self,
        chain: &mut ChainState,
        events: &[&AuditEvent],
    ) -> Result<(), StoreError> {
        let mut tx = RawTransaction::begin(&self.pool, self.backend.begin_write()).await?;
        if !chain.known {
            let row =
                sqlx::query("SELECT head_seq, head_hash FROM audit_chains WHERE chain_id = $1")
                    .bind(chain.id.as_str())
                    .fetch_optional(tx.conn())
                    .await?;
            match row {
                Some(r) => {
                    chain.registered = true;
                    chain.head_seq = r.try_get("head_seq")?;
                    chain.head_hash = r.try_get("head_hash")?;
                }
                None => {
                    chain.registered = false;
                    chain.head_seq = 0;
                    chain.head_hash = GENESIS.to_owned();
                }
            }
            chain.known = true;
        }
        if !chain.registered {
            sqlx::query(
                "INSERT INTO audit_chains (chain_id, created_us, head_seq, head_hash, anchor_seq, anchor_hash) \
                 VALUES ($1, $2, 0, $3, 0, $3)",
            )
            .bind(chain.id.as_str())
            .bind(chain::to_micros(OffsetDateTime::now_utc()))
            .bind(GENESIS)
            .execute(tx.conn())
            .await?;
        }
        let mut seq = chain.head_seq;
        let mut prev = chain.head_hash.clone();
        let mut linked = Vec::with_capacity(events.len());
        for e in events {
            seq += 1;
            let hash = chain::event_hash(&prev, &chain.id, seq, e);
            linked.push((*e, seq, std::mem::replace(&mut prev, hash.clone()), hash));
        }
        let mut rest = linked.as_slice();
        while !rest.is_empty() {
            let size = CHUNKS.into_iter().find(|c| *c <= rest.len()).unwrap_or(1);
            let (chunk, tail) = rest.split_at(size);
            let sql = insert_sql(self.backend, size);
            let mut q = sqlx::query(&sql);
            for (e, seq, prev_hash, hash) in chunk {
                q = q
                    .bind(e.id.as_str())
                    .bind(chain::to_micros(e.time))
                    .bind(e.request_id.as_str())
                    .bind(e.outcome.as_str())
                    .bind(i64::from(e.status))
                    .bind(e.subject.as_deref())
                    .bind(e.session_id.as_deref())
                    .bind(e.client_ip.as_deref())
                    .bind(e.user_agent.as_deref())
                    .bind(e.origin.as_deref())
                    .bind(e.scope.as_deref())
                    .bind(e.tenant.as_str())
                    .bind(e.environment.as_str())
                    .bind(e.token_fingerprint.as_deref())
                    .bind(e.token_expires_at.map(chain::to_micros))
                    .bind(e.upstream_ms.map(clamp_i64))
                    .bind(clamp_i64(e.duration_ms))
                    .bind(e.detail.as_deref())
                    .bind(clamp_i64(e.count))
                    .bind(chain.id.as_str())
                    .bind(*seq)
                    .bind(prev_hash.as_str())
                    .bind(hash.as_str());
            }
            q.execute(tx.conn()).await?;
            rest = tail;
        }
        sqlx::query("UPDATE audit_chains SET head_seq = $1, head_hash = $2 WHERE chain_id = $3")
            .bind(seq)
            .bind(prev.as_str())
            .bind(chain.id.as_str())
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        chain.registered = true;
        chain.head_seq = seq;
        chain.head_hash = prev;
        Ok(())
    }

    /// One page of events, newest first.
    pub async fn query(&self, q: &AuditQuery) -> Result<Page, StoreError> {
        let (filter, args) = query::where_clause(q);
        let sql = format!(
            "SELECT seq, {EVENT_COLUMNS} FROM audit_events{filter} ORDER BY seq DESC LIMIT {}",
            u64::from(q.limit) + 1
        );
        let rows = bind_args(sqlx::query(&sql), &args)
            .fetch_all(&self.pool)
            .await
            .map_err(not_migrated)?;
        let more = rows.len() > q.limit as usize;
        let mut events = Vec::with_capacity(rows.len().min(q.limit as usize));
        let mut last_seq = None;
        for row in rows.iter().take(q.limit as usize) {
            last_seq = Some(row.try_get::<i64, _>("seq")?);
            events.push(event_from_row(row)?);
        }
        Ok(Page {
            events,
            next_cursor: if more {
                last_seq.map(|s| Cursor(s).encode())
            } else {
                None
            },
        })
    }

    /// Every event in `[since, until)`, oldest first, as a stream (constant memory).
    pub fn export(
        &self,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> BoxStream<'_, Result<AuditEvent, StoreError>> {
        let q = AuditQuery {
            since,
            until,
            ..AuditQuery::default()
        };
        let (filter, args) = query::where_clause(&q);
        let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events{filter} ORDER BY seq ASC");
        Box::pin(async_stream(self.pool.clone(), sql, args).map(|row| {
            row.map_err(not_migrated)
                .and_then(|row| event_from_row(&row))
        }))
    }

    /// Walks every chain and reports the first altered, inserted or removed event.
    /// Reads one snapshot, so events committed meanwhile by a running service are
    /// neither half-seen nor mistaken for insertions.
    pub async fn verify(&self) -> Result<Result<Intact, Finding>, StoreError> {
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        };
        let mut tx = RawTransaction::begin(&self.pool, begin).await?;
        let chains = sqlx::query(
            "SELECT chain_id, head_seq, head_hash, anchor_seq, anchor_hash FROM audit_chains",
        )
        .fetch_all(tx.conn())
        .await
        .map_err(not_migrated)?
        .iter()
        .map(|r| {
            Ok(ChainRecord {
                chain_id: r.try_get("chain_id")?,
                head_seq: r.try_get("head_seq")?,
                head_hash: r.try_get("head_hash")?,
                anchor_seq: r.try_get("anchor_seq")?,
                anchor_hash: r.try_get("anchor_hash")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let mut verifier = Verifier::new(chains);
        let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events ORDER BY chain_id, chain_seq");
        let verdict = {
            let mut rows = sqlx::query(&sql).fetch(tx.conn());
            let mut verdict = None;
            while let Some(row) = rows.next().await {
                let row = row?;
                let linked = Linked {
                    event: event_from_row(&row)?,
                    chain_id: row.try_get("chain_id")?,
                    chain_seq: row.try_get("chain_seq")?,
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                };
                if let Err(finding) = verifier.check(&linked) {
                    verdict = Some(Err(finding));
                    break;
                }
            }
            verdict
        };
        tx.rollback().await?;
        Ok(verdict.unwrap_or_else(|| verifier.finish()))
    }

    /// Deletes events older than `cutoff`, keeping each chain verifiable: per chain,
    /// only the leading run of old events goes, and its last hash becomes the anchor.
    pub async fn prune(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        const PER_TRANSACTION: i64 = 5000;
        let cutoff_us = chain::to_micros(cutoff);
        let chains: Vec<(String, i64)> =
            sqlx::query("SELECT chain_id, anchor_seq FROM audit_chains ORDER BY chain_id")
                .fetch_all(&self.pool)
                .await
                .map_err(not_migrated)?
                .iter()
                .map(|r| Ok((r.try_get("chain_id")?, r.try_get("anchor_seq")?)))
                .collect::<Result<_, sqlx::Error>>()?;
        let mut deleted = 0u64;
        for (chain_id, mut anchor) in chains {
            // The first event young enough to keep bounds the prunable run; a slow
            // request may have an older time than an event before it, and stays.
            let keep_from: Option<i64> = sqlx::query(
                "SELECT MIN(chain_seq) AS n FROM audit_events WHERE chain_id = $1 AND time_us >= $2",
            )
            .bind(chain_id.as_str())
            .bind(cutoff_us)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
            let through = match keep_from {
                Some(k) => k - 1,
                None => {
                    let last: Option<i64> = sqlx::query(
                        "SELECT MAX(chain_seq) AS n FROM audit_events WHERE chain_id = $1",
                    )
                    .bind(chain_id.as_str())
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("n")?;
                    match last {
                        Some(n) => n,
                        None => continue,
                    }
                }
            };
            while anchor < through {
                let step = through.min(anchor + PER_TRANSACTION);
                let mut tx = RawTransaction::begin(&self.pool, self.backend.begin_write()).await?;
                let hash: String = sqlx::query(
                    "SELECT hash FROM audit_events WHERE chain_id = $1 AND chain_seq = $2",
                )
                .bind(chain_id.as_str())
                .bind(step)
                .fetch_one(tx.conn())
                .await?
                .try_get("hash")?;
                let done = sqlx::query(
                    "DELETE FROM audit_events WHERE chain_id = $1 AND chain_seq > $2 AND chain_seq <= $3",
                )
                .bind(chain_id.as_str())
                .bind(anchor)
                .bind(step)
                .execute(tx.conn())
                .await?;
                sqlx::query(
                    "UPDATE audit_chains SET anchor_seq = $1, anchor_hash = $2, pruned_us = $3 WHERE chain_id = $4",
                )
                .bind(step)
                .bind(hash.as_str())
                .bind(chain::to_micros(OffsetDateTime::now_utc()))
                .bind(chain_id.as_str())
                .execute(tx.conn())
                .await?;
                tx.commit().await?;
                deleted += done.rows_affected();
                anchor = step;
            }
        }
        Ok(deleted)
    }
}

/// A transaction driven by plain `BEGIN` / `COMMIT` on a pooled connection, used for
/// every transaction on the audit database instead of sqlx's `Transaction`.
///
/// When a COMMIT fails (disk full, I/O error, lock timeout), sqlx 0.8 keeps counting its
/// connection as inside a transaction; the next `begin()` on that pooled connection
/// then issues a SAVEPOINT, and its "commit" is a RELEASE that makes nothing durable
/// while reporting success. Here a transaction that did not end in a successful
/// COMMIT or ROLLBACK — an error, or a timeout that dropped the future half-way —
/// closes its connection instead of returning it to the pool, so no later commit can
/// run on a connection in an unknown state.
struct RawTransaction {
    conn: PoolConnection<Any>,
    ended: bool,
}

impl RawTransaction {
    async fn begin(pool: &AnyPool, begin: &str) -> Result<Self, sqlx::Error> {
        let mut tx = Self {
            conn: pool.acquire().await?,
            ended: false,
        };
        tx.conn.execute(begin).await?;
        Ok(tx)
    }

    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.conn.execute("COMMIT").await?;
        self.ended = true;
        Ok(())
    }

    async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.conn.execute("ROLLBACK").await?;
        self.ended = true;
        Ok(())
    }
}

impl Drop for RawTransaction {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

/// The group-commit writer's chain, owned by exactly one writer.
#[derive(Debug, Clone)]
pub(crate) struct ChainState {
    pub id: String,
    pub head_seq: i64,
    pub head_hash: String,
    /// Whether the chain's row exists in `audit_chains`.
    pub registered: bool,
    /// False after a failed commit, whose effect is unknown: reload the head first.
    pub known: bool,
}

impl ChainState {
    pub fn new() -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            head_seq: 0,
            head_hash: GENESIS.to_owned(),
            registered: false,
            known: true,
        }
    }
}

fn sqlite_url(url: &str, mode: OpenMode) -> String {
    let has_mode = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("mode=")));
    if has_mode {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    match mode {
        OpenMode::Create => format!("{url}{sep}mode=rwc"),
        OpenMode::Existing => format!("{url}{sep}mode=rw"),
    }
}

fn with_sqlite_hint(e: sqlx::Error, url: &str, mode: OpenMode) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.message().contains("unable to open") => {
            let hint = match mode {
                OpenMode::Create => "is its directory there and writable?",
                OpenMode::Existing => "does it exist? `token-vendor migrate` creates it",
            };
            StoreError::Open(format!(
                "cannot open the SQLite file of {}: {} ({hint})",
                url.split('?').next().unwrap_or(url),
                d.message()
            ))
        }
        _ => StoreError::Sql(e),
    }
}

fn not_migrated(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d)
            if d.message().contains("no such table")
                || (d.message().contains("relation") && d.message().contains("does not exist")) =>
        {
            StoreError::NotMigrated
        }
        _ => StoreError::Sql(e),
    }
}

/// SQLite gets anonymous `?` placeholders: it resolves each named (`$n`) one by a
/// linear search, which is quadratic for a statement with thousands of them.
fn insert_sql(backend: Backend, rows: usize) -> String {
    let mut sql = format!("INSERT INTO audit_events ({EVENT_COLUMNS}) VALUES ");
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..EVENT_COLUMN_COUNT {
            if c > 0 {
                sql.push(',');
            }
            n += 1;
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => sql.push_str(&format!("${n}")),
            }
        }
        sql.push(')');
    }
    sql
}

fn bind_args<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s.as_str()),
            Arg::Int(i) => q.bind(*i),
        };
    }
    q
}

/// Rows of `sql` streamed from the pool; the stream owns what it borrows.
fn async_stream(
    pool: AnyPool,
    sql: String,
    args: Vec<Arg>,
) -> BoxStream<'static, Result<AnyRow, sqlx::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<AnyRow, sqlx::Error>>(256);
    tokio::spawn(async move {
        let mut rows = bind_args(sqlx::query(&sql), &args).fetch(&pool);
        while let Some(row) = rows.next().await {
            let failed = row.is_err();
            if tx.send(row).await.is_err() || failed {
                break;
            }
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn event_from_row(row: &AnyRow) -> Result<AuditEvent, StoreError> {
    let outcome: String = row.try_get("outcome")?;
    let status: i64 = row.try_get("status")?;
    Ok(AuditEvent {
        id: row.try_get("id")?,
        time: chain::from_micros(row.try_get("time_us")?),
        request_id: row.try_get("request_id")?,
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown outcome {outcome:?}")))?,
        status: u16::try_from(status)
            .map_err(|_| StoreError::Corrupt(format!("status {status} out of range")))?,
        subject: row.try_get("subject")?,
        session_id: row.try_get("session_id")?,
        client_ip: row.try_get("client_ip")?,
        user_agent: row.try_get("user_agent")?,
        origin: row.try_get("origin")?,
        scope: row.try_get("scope")?,
        tenant: row.try_get("tenant")?,
        environment: row.try_get("environment")?,
        token_fingerprint: row.try_get("token_fingerprint")?,
        token_expires_at: row
            .try_get::<Option<i64>, _>("token_expires_us")?
            .map(chain::from_micros),
        upstream_ms: row.try_get::<Option<i64>, _>("upstream_ms")?.map(to_u64),
        duration_ms: to_u64(row.try_get("duration_ms")?),
        detail: row.try_get("detail")?,
        count: to_u64(row.try_get("count")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_get_an_open_mode_unless_they_have_one() {
        assert_eq!(
            sqlite_url("sqlite://a.db", OpenMode::Create),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite://a.db?cache=private", OpenMode::Existing),
            "sqlite://a.db?cache=private&mode=rw"
        );
        assert_eq!(
            sqlite_url("sqlite://a.db?mode=ro", OpenMode::Create),
            "sqlite://a.db?mode=ro"
        );
    }

    #[test]
    fn insert_sql_numbers_every_value() {
        let sql = insert_sql(Backend::Postgres, 2);
        assert!(sql.ends_with("$46)"), "{sql}");
        assert_eq!(sql.matches('$').count(), 46);
        let sql = insert_sql(Backend::Sqlite, 2);
        assert_eq!(sql.matches('?').count(), 46);
        assert!(!sql.contains('$'));
    }
}

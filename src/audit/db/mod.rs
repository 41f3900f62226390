//! The audit database: SQLite (embedded default, WAL) or PostgreSQL (several
//! replicas), through sqlx. Schema changes are the append-only files in
//! `migrations/<backend>/`, embedded in the binary.
//!
//! Here: opening, migrating and probing the database, and the one transaction type
//! every write uses. [`append`] writes the chains, [`lookup`] keeps SQLite's subject and
//! fingerprint lookups, [`read`] pages, exports and verifies, [`maintain`] prunes.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Any, AnyPool, Database, Executor, Pool, Row};

use super::schema::{Kind, Owned, FIELDS, FIELD_COUNT};
use super::AuditEvent;

mod append;
mod lookup;
mod maintain;
pub use maintain::Pruned;
mod read;

pub(crate) use append::{Appended, ChainState};
pub use append::{ChainConflict, CONFLICT_REQUEST_ID};
pub(crate) use lookup::{lookup_clause, LookupBy, LookupPass};

/// Each backend's migrations. A database may hold migrations newer than this binary's
/// (a newer release migrated it and was rolled back): they are left as they are, so the
/// previous release keeps running on the newer schema — which is why migrations only
/// add (docs/audit.md, "Rollback"). A known migration whose text changed, or one that
/// failed half-way, still stops the start.
static SQLITE_MIGRATIONS: LazyLock<Migrator> =
    LazyLock::new(|| tolerate_newer(sqlx::migrate!("./migrations/sqlite")));
static POSTGRES_MIGRATIONS: LazyLock<Migrator> =
    LazyLock::new(|| tolerate_newer(sqlx::migrate!("./migrations/postgres")));

fn tolerate_newer(mut migrator: Migrator) -> Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

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
    #[error("{0}")]
    Usage(String),
    #[error(
        "the audit database holds what token-vendor did not create: {0}; it could hide \
         or drop audit events, so the service does not start on it (remove it, or keep \
         other objects in another database or schema)"
    )]
    Foreign(String),
    /// The writer's chain was moved under it (see `ChainState`).
    #[error("{0}")]
    ChainConflict(Box<ChainConflict>),
    /// No connection to the database: `target` is the URL without its password,
    /// `cause` what the connection attempt met ("connection refused", a login error).
    #[error("cannot connect to {target}: {cause}")]
    Unreachable { target: String, cause: String },
}

/// Longest one direct connection attempt may take when finding out why the pool has
/// no connection.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A database URL as it may be shown: without its password (in the authority or the
/// query), so an error or a log line can name the target.
pub fn display_target(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.split('@').next_back().unwrap_or_default().to_owned();
    };
    let _ = parsed.set_password(None);
    if parsed.query().is_some() {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| !k.to_ascii_lowercase().contains("password"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        parsed.set_query(None);
        if !kept.is_empty() {
            parsed.query_pairs_mut().extend_pairs(kept);
        }
    }
    parsed.to_string()
}

/// What a failed connection attempt met, in an operator's words.
fn connect_cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused (nothing listens at this host and port)".into()
        }
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    }
}

/// A pool that could not open its first connection, explained: the pool retries a
/// refused connection until its timeout and then only says that it timed out.
async fn connect_failure(e: sqlx::Error, url: &str) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut => match reach(url).await {
            Err(found) => found,
            Ok(()) => StoreError::Timeout,
        },
        other => StoreError::Unreachable {
            target: display_target(url),
            cause: connect_cause(&other),
        },
    }
}

/// Makes one connection to `url`, outside any pool, so a failure says what it met:
/// a pool only reports that it timed out while a refused connection was retried.
pub async fn reach(url: &str) -> Result<(), StoreError> {
    use sqlx::{ConnectOptions as _, Connection as _};
    sqlx::any::install_default_drivers();
    let unreachable = |cause: String| StoreError::Unreachable {
        target: display_target(url),
        cause,
    };
    let options = AnyConnectOptions::from_str(url).map_err(|e| unreachable(connect_cause(&e)))?;
    match tokio::time::timeout(DIAGNOSE_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(unreachable(connect_cause(&e))),
        Err(_) => Err(unreachable(format!(
            "no answer within {}s",
            DIAGNOSE_TIMEOUT.as_secs()
        ))),
    }
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
    /// One connection, for the group-commit writer's batches and checkpoints.
    writer: WriterPool,
    /// SQLite: one connection that reads the lookup table's passes (see [`lookup`]).
    lookups: Option<SqlitePool>,
    backend: Backend,
    /// The URL connected to, to find out why connections fail (never shown: it may
    /// hold a password; see [`display_target`]).
    url: std::sync::Arc<str>,
}

/// The group-commit writer's connection, on each store's own driver rather than
/// `Any`: a batch binds thousands of values (SQLite) or streams `COPY` (PostgreSQL),
/// and going through `Any` converted and copied every one of them once more.
#[derive(Clone)]
enum WriterPool {
    Sqlite(SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Columns of a stored event after its [`FIELDS`]: its place in its chain.
const CHAIN_COLUMNS: [&str; 4] = ["chain_id", "chain_seq", "prev_hash", "hash"];
/// Values bound per inserted row.
const ROW_COLUMN_COUNT: usize = FIELD_COUNT + CHAIN_COLUMNS.len();

/// `id, time_us, …, hash`: the columns of a stored event, in [`FIELDS`] order.
fn event_columns() -> String {
    FIELDS
        .iter()
        .map(|f| f.column)
        .chain(CHAIN_COLUMNS)
        .collect::<Vec<_>>()
        .join(", ")
}

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
            Backend::Sqlite => sqlite_pool_options(4, READ_CACHE_KIB)
                .connect_with(options.clone())
                .await
                .map_err(|e| with_sqlite_hint(e, &url, mode))?,
            Backend::Postgres => match AnyPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(3))
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => pool,
                Err(e) => return Err(connect_failure(e, &url).await),
            },
        };
        // The group-commit writer's own connection, opened on first use. With SQLite,
        // a connection whose page cache another connection's writes invalidated must
        // re-read the pages it touches (each batch's index pages) from the WAL: one
        // connection that alone writes keeps them cached between batches. A connection
        // that did not end its transaction cleanly is closed ([`RawTransaction`]), and
        // the next batch opens a fresh one.
        let (writer, lookups) = match backend {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(&url)?;
                let writer = native_sqlite_pool_options(1, WRITER_CACHE_KIB)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_lazy_with(options.clone());
                let lookups =
                    native_sqlite_pool_options(1, LOOKUP_CACHE_KIB).connect_lazy_with(options);
                (WriterPool::Sqlite(writer), Some(lookups))
            }
            Backend::Postgres => {
                let writer = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(3))
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_lazy(&url)?;
                (WriterPool::Postgres(writer), None)
            }
        };
        Ok(Self {
            pool,
            writer,
            lookups,
            backend,
            url: url.into(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The reading pool (background checks).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies pending migrations. Migrations of a newer release already applied are
    /// left alone, with a warning (a rollback).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.backend.migrator().run(&self.pool).await?;
        let newer = self.newer_migrations().await?;
        if let Some(newest) = newer.last() {
            tracing::warn!(
                newest_applied = newest,
                newest_known = self.newest_known_migration(),
                "the audit database was migrated by a newer token-vendor ({} migration(s) \
                 this binary does not know): running on it as a rollback; they stay applied",
                newer.len()
            );
        }
        Ok(())
    }

    fn newest_known_migration(&self) -> i64 {
        self.backend
            .migrator()
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
    }

    /// Versions of applied migrations this binary does not know, oldest first.
    async fn newer_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let rows =
            sqlx::query("SELECT version FROM _sqlx_migrations WHERE version > $1 ORDER BY version")
                .bind(self.newest_known_migration())
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>("version"))
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    /// Refuses a database holding triggers, views, rules, row policies or tables the
    /// migrations did not create: any of them can hide or drop events (a trigger that
    /// ignores inserts into the lookup table, a view or policy in front of the events)
    /// while every row the service reads still verifies.
    ///
    /// On a database a newer release migrated (a rollback), tables named `audit_…` are
    /// taken as that release's and named in a warning: a table alone hides nothing.
    /// Everything else is still refused.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        const OURS: [&str; 6] = [
            "audit_events",
            "audit_chains",
            "audit_checkpoints",
            "audit_lookup",
            "audit_lookup_state",
            "_sqlx_migrations",
        ];
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT type AS kind, name FROM sqlite_master                  WHERE type IN ('trigger', 'view', 'table') AND name NOT LIKE 'sqlite_%'"
            }
            Backend::Postgres => {
                "SELECT 'trigger' AS kind, t.tgname::text || ' on ' || c.relname::text AS name                    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid                    WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace                  UNION ALL SELECT 'view', table_name::text FROM information_schema.views                    WHERE table_schema = current_schema()                  UNION ALL SELECT 'rule', rulename::text || ' on ' || tablename::text FROM pg_rules                    WHERE schemaname = current_schema()                  UNION ALL SELECT 'row policy', policyname::text || ' on ' || tablename::text                    FROM pg_policies WHERE schemaname = current_schema()                  UNION ALL SELECT 'table', table_name::text FROM information_schema.tables                    WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            }
        };
        let foreign: Vec<String> = sqlx::query(sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("kind")?,
                    r.try_get::<String, _>("name")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
            .into_iter()
            .filter(|(kind, name)| kind != "table" || !OURS.contains(&name.as_str()))
            .map(|(kind, name)| format!("{kind} {name}"))
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        let (newer, foreign): (Vec<String>, Vec<String>) =
            if self.newer_migrations().await?.is_empty() {
                (Vec::new(), foreign)
            } else {
                foreign
                    .into_iter()
                    .partition(|f| f.starts_with("table audit_"))
            };
        if !newer.is_empty() {
            tracing::warn!(
                tables = %newer.join(", "),
                "the audit database holds tables of a newer token-vendor's migrations; left as they are"
            );
        }
        if foreign.is_empty() {
            return Ok(());
        }
        Err(StoreError::Foreign(foreign.join(", ")))
    }

    /// SQLite: moves everything in the write-ahead log into the database file and
    /// empties the log, so the file alone is whole (a copy without `-wal` loses
    /// nothing). At shutdown, after the last commit; PostgreSQL: nothing to do.
    pub async fn checkpoint_wal(&self) {
        let WriterPool::Sqlite(writer) = &self.writer else {
            return;
        };
        let done = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_optional(writer)
            .await;
        match done {
            Ok(_) => tracing::info!("audit store: write-ahead log checkpointed into the file"),
            Err(e) => tracing::warn!(error = %e, "audit store: write-ahead log checkpoint failed"),
        }
    }

    /// Proves the database answers a read, without taking any lock a writer needs.
    pub async fn probe_read(&self) -> Result<(), StoreError> {
        let probe =
            sqlx::query("SELECT head_seq FROM audit_chains LIMIT 1").fetch_optional(&self.pool);
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => Err(self.why_no_answer().await),
            Ok(r) => r.map(|_| ()).map_err(not_migrated),
        }
    }

    /// Why the database did not answer: for PostgreSQL, what one direct connection
    /// meets (a stopped server refuses it), else that it did not answer in time.
    async fn why_no_answer(&self) -> StoreError {
        match self.backend {
            Backend::Postgres => match reach(&self.url).await {
                Err(found) => found,
                Ok(()) => StoreError::Timeout,
            },
            Backend::Sqlite => StoreError::Timeout,
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
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => Err(self.why_no_answer().await),
            Ok(r) => r.map_err(not_migrated),
        }
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
struct RawTransaction<DB: Database = Any> {
    conn: PoolConnection<DB>,
    ended: bool,
}

impl<DB: Database> RawTransaction<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    async fn begin(pool: &Pool<DB>, begin: &str) -> Result<Self, sqlx::Error> {
        let mut tx = Self {
            conn: pool.acquire().await?,
            ended: false,
        };
        tx.conn.execute(begin).await?;
        Ok(tx)
    }

    fn conn(&mut self) -> &mut DB::Connection {
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

impl<DB: Database> Drop for RawTransaction<DB> {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

/// Page cache of each reading connection (queries, exports, the trail watch), in KiB.
/// Four of them: at 32 MiB each, the trail watch reading each new event once filled them
/// as the file grew, and the soak's resident memory rose by a step and kept rising
/// (bench/soak.sh, issue 24); at 4 MiB they still held 16 MiB after 1M users. A query
/// pages through indexes and reads each event once, so a small cache costs it little.
const READ_CACHE_KIB: u32 = 2 * 1024;
/// Page cache of the writer's connection, in KiB: the hot index pages of a batch (the
/// right-hand edges of the append-only indexes, and a lookup transaction's pages); kept
/// for the life of the process, so it counts fully in the service's memory. 16 MiB
/// held the random subject and fingerprint index pages before they moved to the lookup
/// table; 8 MiB measured the same in `audit_bench` (46.9k vs 46.7k events/s). 4 MiB:
/// 3 MiB less after 1M users (`bench/soak.sh`: 92.0 vs 95.3 MiB), `audit_bench` within
/// its noise (35.8k vs 38.0k, 30.6k vs 31.9k events/s, alternating runs).
const WRITER_CACHE_KIB: u32 = 4 * 1024;

/// Page cache of the connection that reads lookup passes, in KiB.
const LOOKUP_CACHE_KIB: u32 = 2 * 1024;

/// The settings of every SQLite connection: WAL, every commit fsynced, a page cache
/// that holds the indexes.
fn sqlite_pragmas(cache_kib: u32) -> [String; 7] {
    [
        "PRAGMA journal_mode = WAL".into(),
        // FULL: a commit is on disk before the token leaves.
        "PRAGMA synchronous = FULL".into(),
        // Index pages of random ids and fingerprints stay in memory instead of being
        // re-read from the file on every batch.
        format!("PRAGMA cache_size = -{cache_kib}"),
        // No memory map of the file: mapped pages count in the service's resident
        // memory (123 MiB after 1M users in bench/soak.sh); reads go through the
        // kernel's page cache and the bounded cache above instead.
        "PRAGMA mmap_size = 0".into(),
        // A multi-row INSERT inside a transaction keeps a statement journal; in a
        // file, each one is an open, an unlink and a close per batch.
        "PRAGMA temp_store = MEMORY".into(),
        // Fewer, larger checkpoints: each one is an fsync of the file.
        "PRAGMA wal_autocheckpoint = 8192".into(),
        format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"),
    ]
}

/// SQLite connections through `Any` (the reading pool), with [`sqlite_pragmas`].
fn sqlite_pool_options(max_connections: u32, cache_kib: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                for pragma in sqlite_pragmas(cache_kib) {
                    conn.execute(pragma.as_str()).await?;
                }
                Ok(())
            })
        })
}

/// SQLite connections on the native driver (the writer's, the lookup reader's), with
/// the same [`sqlite_pragmas`].
fn native_sqlite_pool_options(max_connections: u32, cache_kib: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                for pragma in sqlite_pragmas(cache_kib) {
                    conn.execute(pragma.as_str()).await?;
                }
                Ok(())
            })
        })
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

/// The columns [`linked_row`] reads.
pub(crate) fn event_columns_for_watch() -> String {
    event_columns()
}

/// A stored event with its place in its chain.
pub(crate) fn linked_row(row: &AnyRow) -> Result<crate::audit::chain::Linked, StoreError> {
    maintain::linked(row)
}

/// An event from a row holding the [`FIELDS`]' columns.
fn event_from_row(row: &AnyRow) -> Result<AuditEvent, StoreError> {
    let mut values = Vec::with_capacity(FIELD_COUNT);
    for f in &FIELDS {
        values.push(match f.kind {
            Kind::Text => Owned::Text(row.try_get(f.column)?),
            Kind::Int => Owned::Int(row.try_get(f.column)?),
            Kind::Time => Owned::Time(row.try_get(f.column)?),
        });
    }
    let values: [Owned; FIELD_COUNT] = values
        .try_into()
        .unwrap_or_else(|_| unreachable!("one value per field"));
    AuditEvent::from_values(values).map_err(|e| StoreError::Corrupt(e.to_string()))
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
}

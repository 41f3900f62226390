//! The durable audit store the service runs with: the database chosen by
//! `DATABASE_URL`, written through the group-commit writer.

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::Mutex;

use super::db::{AuditDb, OpenMode, StoreError};
use super::query::{AuditQuery, Page};
use super::watch::{self, SharedTrail, TrailState};
use super::writer::{GroupCommitWriter, WriterConfig, WriterKeys};
use super::{AuditError, AuditEvent, AuditStore, Link};
use crate::metrics::AuditWriterMetrics;

/// SQLite or PostgreSQL behind a [`GroupCommitWriter`].
pub struct SqlAuditStore {
    db: AuditDb,
    writer: GroupCommitWriter,
    /// When a write probe last ran while the writer was failing, and its result.
    write_probe: Mutex<Option<(Instant, bool)>>,
    /// What the background check of the trail knows (see [`super::watch`]).
    trail: SharedTrail,
}

/// Least time between two write probes of a failing store.
const WRITE_PROBE_EVERY: Duration = Duration::from_secs(1);

impl SqlAuditStore {
    /// Opens (creating a missing SQLite file), migrates, and starts the writer.
    pub async fn open(url: &str, keys: WriterKeys) -> Result<Self, StoreError> {
        Self::open_with(url, keys, WriterConfig::default()).await
    }

    pub async fn open_with(
        url: &str,
        keys: WriterKeys,
        config: WriterConfig,
    ) -> Result<Self, StoreError> {
        Self::open_reporting(url, keys, config, AuditWriterMetrics::default()).await
    }

    /// Like [`Self::open_with`], the writer reporting into `metrics`.
    pub async fn open_reporting(
        url: &str,
        keys: WriterKeys,
        config: WriterConfig,
        metrics: AuditWriterMetrics,
    ) -> Result<Self, StoreError> {
        let db = AuditDb::open(url, OpenMode::Create).await?;
        db.migrate().await?;
        db.check_schema().await?;
        Ok(Self::with_db_reporting(db, keys, config, metrics))
    }

    /// A store on an already migrated database.
    pub fn with_db(db: AuditDb, keys: WriterKeys, config: WriterConfig) -> Self {
        Self::with_db_reporting(db, keys, config, AuditWriterMetrics::default())
    }

    fn with_db_reporting(
        db: AuditDb,
        keys: WriterKeys,
        config: WriterConfig,
        metrics: AuditWriterMetrics,
    ) -> Self {
        let chain_key = keys.chain.clone();
        let writer = GroupCommitWriter::start_reporting(db.clone(), config, keys, metrics.clone());
        let trail = writer.trail();
        if let Some(every) = config.watch_every {
            watch::spawn(
                db.clone(),
                chain_key,
                writer.heads(),
                every,
                metrics,
                trail.clone(),
            );
        }
        Self {
            db,
            writer,
            write_probe: Mutex::new(None),
            trail,
        }
    }

    pub fn db(&self) -> &AuditDb {
        &self.db
    }
}

impl AuditStore for SqlAuditStore {
    fn record<'a>(&'a self, event: &'a AuditEvent) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move { self.writer.record(event.clone()).await.map(|_| ()) })
    }

    fn record_linked<'a>(
        &'a self,
        event: &'a AuditEvent,
    ) -> BoxFuture<'a, Result<Option<Link>, AuditError>> {
        Box::pin(async move { self.writer.record(event.clone()).await.map(Some) })
    }

    fn checkpoint(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.writer.checkpoint().await;
            self.db.checkpoint_wal().await;
        })
    }

    /// Ready while the writer's last commit succeeded and the database answers a read:
    /// a flood of probes never competes with the writer for SQLite's write lock. Only
    /// while the writer is failing does a probe try a write (at most one a second,
    /// shared by all callers), so readiness returns when the store does, even with no
    /// traffic to commit.
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let result = if self.writer.failing() {
                let mut last = self.write_probe.lock().await;
                match *last {
                    Some((at, ok)) if at.elapsed() < WRITE_PROBE_EVERY => return ok,
                    _ => {}
                }
                let result = self.db.probe_write().await;
                *last = Some((Instant::now(), result.is_ok()));
                result
            } else {
                self.db.probe_read().await
            };
            match result {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, writer_failing = self.writer.failing(), "audit store not ready");
                    false
                }
            }
        })
    }

    fn trail(&self) -> Option<TrailState> {
        Some(
            self.trail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }

    fn query<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<Page, AuditError>> {
        Box::pin(async move {
            self.db
                .query(query)
                .await
                .map_err(|e| AuditError::Unavailable(e.to_string()))
        })
    }
}

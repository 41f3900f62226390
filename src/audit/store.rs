//! The durable audit store the service runs with: the database chosen by
//! `DATABASE_URL`, written through the group-commit writer.

use futures_util::future::BoxFuture;

use super::db::{AuditDb, OpenMode, StoreError};
use super::query::{AuditQuery, Page};
use super::writer::{GroupCommitWriter, WriterConfig};
use super::{AuditError, AuditEvent, AuditStore};

/// SQLite or PostgreSQL behind a [`GroupCommitWriter`].
pub struct SqlAuditStore {
    db: AuditDb,
    writer: GroupCommitWriter,
}

impl SqlAuditStore {
    /// Opens (creating a missing SQLite file), migrates, and starts the writer.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, WriterConfig::default()).await
    }

    pub async fn open_with(url: &str, config: WriterConfig) -> Result<Self, StoreError> {
        let db = AuditDb::open(url, OpenMode::Create).await?;
        db.migrate().await?;
        Ok(Self::with_db(db, config))
    }

    /// A store on an already migrated database.
    pub fn with_db(db: AuditDb, config: WriterConfig) -> Self {
        let writer = GroupCommitWriter::start(db.clone(), config);
        Self { db, writer }
    }

    pub fn db(&self) -> &AuditDb {
        &self.db
    }
}

impl AuditStore for SqlAuditStore {
    fn record<'a>(&'a self, event: &'a AuditEvent) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(self.writer.record(event.clone()))
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match self.db.probe_write().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, writer_failing = self.writer.failing(), "audit store not ready");
                    false
                }
            }
        })
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

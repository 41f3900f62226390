//! Maintenance: pruning past the retention period, keeping every chain verifiable.

use sqlx::Row;
use time::OffsetDateTime;

use super::{not_migrated, AuditDb, Backend, RawTransaction, StoreError};
use crate::audit::chain;
use crate::audit::keys::ChainKey;

/// SQLite: the lookup entries of a chain's events `$2 < chain_seq <= $3` (see
/// [`super::lookup`]), found by key and by the events' global `seq` range.
const PRUNE_LOOKUPS_SQL: &str = "\
    DELETE FROM audit_lookup WHERE key IN ( \
        SELECT 's:' || subject FROM audit_events \
          WHERE chain_id = $1 AND chain_seq > $2 AND chain_seq <= $3 AND subject IS NOT NULL \
        UNION \
        SELECT 'f:' || substr(token_fingerprint, -16) FROM audit_events \
          WHERE chain_id = $1 AND chain_seq > $2 AND chain_seq <= $3 AND token_fingerprint IS NOT NULL) \
      AND seq >= (SELECT MIN(seq) FROM audit_events WHERE chain_id = $1 AND chain_seq > $2 AND chain_seq <= $3) \
      AND seq <= (SELECT MAX(seq) FROM audit_events WHERE chain_id = $1 AND chain_seq > $2 AND chain_seq <= $3) \
      AND seq IN (SELECT seq FROM audit_events WHERE chain_id = $1 AND chain_seq > $2 AND chain_seq <= $3)";

impl AuditDb {
    /// Deletes events older than `cutoff`, keeping each chain verifiable: per chain,
    /// only the leading run of old events goes, and its last hash becomes the anchor.
    /// The new anchor is tagged with `key`, so that `audit verify` can tell it from an
    /// anchor moved by someone who deleted events without the key.
    pub async fn prune(&self, cutoff: OffsetDateTime, key: &ChainKey) -> Result<u64, StoreError> {
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
                if self.backend == Backend::Sqlite {
                    // Their lookup entries first, while the events still name them.
                    sqlx::query(PRUNE_LOOKUPS_SQL)
                        .bind(chain_id.as_str())
                        .bind(anchor)
                        .bind(step)
                        .execute(tx.conn())
                        .await?;
                }
                let done = sqlx::query(
                    "DELETE FROM audit_events WHERE chain_id = $1 AND chain_seq > $2 AND chain_seq <= $3",
                )
                .bind(chain_id.as_str())
                .bind(anchor)
                .bind(step)
                .execute(tx.conn())
                .await?;
                sqlx::query(
                    "UPDATE audit_chains SET anchor_seq = $1, anchor_hash = $2, pruned_us = $3, \
                     anchor_key_id = $4, anchor_mac = $5 WHERE chain_id = $6",
                )
                .bind(step)
                .bind(hash.as_str())
                .bind(chain::to_micros(OffsetDateTime::now_utc()))
                .bind(key.id())
                .bind(key.anchor_mac(&chain_id, step, &hash))
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

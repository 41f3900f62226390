//! Maintenance: pruning past the retention period, keeping every chain verifiable.
//!
//! Nothing a prune deletes is chosen by what the rows say alone: each transaction
//! first verifies the run it would delete, from the chain's (keyed) prune anchor
//! through the cut, against the chain key and the signed checkpoints, and takes the
//! cut from those verified events' times. Someone who can write the database but holds
//! no key cannot backdate events into the run, nor move the anchor over a gap.

use sqlx::any::AnyRow;
use sqlx::Row;
use time::OffsetDateTime;

use super::{
    event_columns, event_from_row, not_migrated, AuditDb, Backend, RawTransaction, StoreError,
};
use crate::audit::chain::{self, ChainRecord, Finding, Linked, Policy, Verifier};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::keys::{ChainKey, NoteVerifier};

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

/// Events verified and deleted per transaction.
const PER_TRANSACTION: i64 = 5000;

/// What a prune did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub events: u64,
    /// Signed checkpoints the deleted runs were checked against.
    pub checkpoints: u64,
}

/// The chain's bookkeeping row; for a prune that deletes, on PostgreSQL locked until
/// the transaction ends, so the writer cannot move the head between it and the events
/// read after it (a dry run reads one snapshot instead).
fn chain_record_sql(backend: Backend, dry_run: bool) -> &'static str {
    match backend {
        Backend::Postgres if !dry_run => {
            "SELECT chain_id, head_seq, head_hash, anchor_seq, anchor_hash, key_id, \
             anchor_key_id, anchor_mac FROM audit_chains WHERE chain_id = $1 FOR UPDATE"
        }
        _ => {
            "SELECT chain_id, head_seq, head_hash, anchor_seq, anchor_hash, key_id, \
             anchor_key_id, anchor_mac FROM audit_chains WHERE chain_id = $1"
        }
    }
}

pub(super) fn chain_record(r: &AnyRow) -> Result<ChainRecord, sqlx::Error> {
    Ok(ChainRecord {
        chain_id: r.try_get("chain_id")?,
        head_seq: r.try_get("head_seq")?,
        head_hash: r.try_get("head_hash")?,
        anchor_seq: r.try_get("anchor_seq")?,
        anchor_hash: r.try_get("anchor_hash")?,
        key_id: r.try_get("key_id")?,
        anchor_key_id: r.try_get("anchor_key_id")?,
        anchor_mac: r.try_get("anchor_mac")?,
    })
}

pub(super) fn linked(row: &AnyRow) -> Result<Linked, StoreError> {
    Ok(Linked {
        event: event_from_row(row)?,
        chain_id: row.try_get("chain_id")?,
        chain_seq: row.try_get("chain_seq")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

impl AuditDb {
    /// Deletes events older than `cutoff`, keeping each chain verifiable: per chain,
    /// only the leading run of old events goes, and its last hash becomes the anchor,
    /// tagged with `key` so that `audit verify` can tell it from an anchor moved by
    /// someone without the key. Each run is verified first (see the module); the first
    /// sign of tampering stops the prune, with nothing of that run deleted.
    ///
    /// The database's signed checkpoints are checked with `signer`; without one, a
    /// database that holds checkpoints is refused, as `audit verify` refuses it.
    ///
    /// `dry_run`: the same verification and count, in read-only transactions; nothing
    /// is deleted and no anchor moves.
    pub async fn prune(
        &self,
        cutoff: OffsetDateTime,
        policy: &Policy,
        signer: Option<&NoteVerifier>,
        key: &ChainKey,
        dry_run: bool,
    ) -> Result<Result<Pruned, Finding>, StoreError> {
        let chains: Vec<String> =
            sqlx::query("SELECT chain_id FROM audit_chains ORDER BY chain_id")
                .fetch_all(&self.pool)
                .await
                .map_err(not_migrated)?
                .iter()
                .map(|r| r.try_get("chain_id"))
                .collect::<Result<_, sqlx::Error>>()?;
        if signer.is_none() {
            let signed: Option<String> =
                sqlx::query("SELECT chain_id FROM audit_checkpoints LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| r.try_get("chain_id"))
                    .transpose()?;
            if signed.is_some() {
                return Err(StoreError::Usage(
                    "the database holds signed checkpoints: give their verifier key \
                     (AUDIT_VERIFIER_KEY, AUDIT_VERIFIER_KEY_FILE or --verifier-key; or \
                     AUDIT_SIGNING_KEY to derive it) so that the events are checked \
                     against them before they are deleted"
                        .into(),
                ));
            }
        }
        let mut pruned = Pruned::default();
        for chain_id in chains {
            let mut mode = if dry_run {
                Mode::Count { after: None }
            } else {
                Mode::Delete
            };
            loop {
                match self
                    .prune_step(&chain_id, cutoff, policy, signer, key, &mode)
                    .await?
                {
                    Err(finding) => return Ok(Err(finding)),
                    Ok(step) => {
                        pruned.events += step.events;
                        pruned.checkpoints += step.checkpoints;
                        if !step.more {
                            break;
                        }
                        if let Mode::Count { after } = &mut mode {
                            *after = step.through;
                        }
                    }
                }
            }
        }
        Ok(Ok(pruned))
    }

    /// One transaction: verifies up to [`PER_TRANSACTION`] events after the chain's
    /// anchor and deletes the verified ones older than `cutoff` before the first
    /// younger one.
    async fn prune_step(
        &self,
        chain_id: &str,
        cutoff: OffsetDateTime,
        policy: &Policy,
        signer: Option<&NoteVerifier>,
        key: &ChainKey,
        mode: &Mode,
    ) -> Result<Result<Step, Finding>, StoreError> {
        let dry_run = matches!(mode, Mode::Count { .. });
        let begin = match (self.backend, dry_run) {
            (_, false) => self.backend.begin_write(),
            (Backend::Sqlite, true) => "BEGIN",
            (Backend::Postgres, true) => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        };
        let mut tx = RawTransaction::begin(&self.pool, begin).await?;
        let Some(mut record) = sqlx::query(chain_record_sql(self.backend, dry_run))
            .bind(chain_id)
            .fetch_optional(tx.conn())
            .await?
            .map(|r| chain_record(&r))
            .transpose()?
        else {
            tx.rollback().await?;
            return Ok(Ok(Step::default()));
        };
        if let Mode::Count {
            after: Some((seq, hash)),
        } = mode
        {
            // A dry run goes on where its previous step stopped, as if that step had
            // moved the anchor there (with the key, as the real prune would have).
            record.anchor_seq = *seq;
            record.anchor_hash = hash.clone();
            record.anchor_key_id = Some(key.id().to_owned());
            record.anchor_mac = Some(key.anchor_mac(chain_id, *seq, hash));
        }
        let anchor = record.anchor_seq;
        let mut policy = Policy {
            checkpoints: policy
                .checkpoints
                .iter()
                .filter(|c| c.chain_id == chain_id)
                .cloned()
                .collect(),
            ..policy.clone()
        };
        if let Some(signer) = signer {
            // The checkpoints over the events this step may delete, and the chain's
            // latest (a tail cut back under it shows there).
            let notes: Vec<String> = sqlx::query(
                "SELECT note FROM audit_checkpoints WHERE chain_id = $1 AND \
                 ((seq > $2 AND seq <= $3) OR seq = (SELECT MAX(seq) FROM audit_checkpoints \
                 WHERE chain_id = $1))",
            )
            .bind(chain_id)
            .bind(anchor)
            .bind(anchor + PER_TRANSACTION)
            .fetch_all(tx.conn())
            .await?
            .iter()
            .map(|r| r.try_get("note"))
            .collect::<Result<_, sqlx::Error>>()?;
            for note in notes {
                match Checkpoint::open(&note, signer) {
                    Ok(cp) if cp.chain_id == chain_id => policy.checkpoints.push(cp),
                    Ok(cp) => {
                        tx.rollback().await?;
                        return Ok(Err(Finding::BadCheckpoint {
                            why: format!(
                                "a checkpoint stored for chain {chain_id} signs chain {}",
                                cp.chain_id
                            ),
                        }));
                    }
                    Err(e) => {
                        tx.rollback().await?;
                        return Ok(Err(Finding::BadCheckpoint { why: e.to_string() }));
                    }
                }
            }
        }
        let checkpoints = policy.checkpoints.len() as u64;
        let mut verifier = match Verifier::new([record.clone()], &policy) {
            Ok(v) => v,
            Err(finding) => {
                tx.rollback().await?;
                return Ok(Err(finding));
            }
        };
        let sql = format!(
            "SELECT {} FROM audit_events WHERE chain_id = $1 AND chain_seq > $2 \
             ORDER BY chain_seq LIMIT {PER_TRANSACTION}",
            event_columns()
        );
        let rows = sqlx::query(&sql)
            .bind(chain_id)
            .bind(anchor)
            .fetch_all(tx.conn())
            .await?;
        let mut through: Option<(i64, String)> = None;
        let mut old = 0u64;
        let mut young = false;
        for row in &rows {
            let row = linked(row)?;
            if let Err(finding) = verifier.check(&row) {
                tx.rollback().await?;
                return Ok(Err(finding));
            }
            // Its time is verified now: the hash covers it.
            if row.event.time >= cutoff {
                young = true;
                break;
            }
            through = Some((row.chain_seq, row.hash));
            old += 1;
        }
        let whole = !young && (rows.len() as i64) < PER_TRANSACTION;
        if whole {
            // Every event after the anchor was read: the end must be the chain's head.
            if let Err(finding) = verifier.finish() {
                tx.rollback().await?;
                return Ok(Err(finding));
            }
        }
        let Some((step, hash)) = through else {
            tx.rollback().await?;
            return Ok(Ok(Step::default()));
        };
        if dry_run {
            tx.rollback().await?;
            return Ok(Ok(Step {
                events: old,
                checkpoints,
                more: !young && !whole,
                through: Some((step, hash)),
            }));
        }
        if self.backend == Backend::Sqlite {
            // Their lookup entries first, while the events still name them.
            sqlx::query(PRUNE_LOOKUPS_SQL)
                .bind(chain_id)
                .bind(anchor)
                .bind(step)
                .execute(tx.conn())
                .await?;
        }
        let done = sqlx::query(
            "DELETE FROM audit_events WHERE chain_id = $1 AND chain_seq > $2 AND chain_seq <= $3",
        )
        .bind(chain_id)
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
        .bind(key.anchor_mac(chain_id, step, &hash))
        .bind(chain_id)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(Ok(Step {
            events: done.rows_affected(),
            checkpoints,
            more: !young && !whole,
            through: None,
        }))
    }
}

/// What one prune transaction does.
enum Mode {
    /// Deletes the verified old events and moves the anchor.
    Delete,
    /// Counts them only (a dry run), going on after `after` (position and hash), the
    /// last event the previous step counted.
    Count { after: Option<(i64, String)> },
}

/// What one prune transaction did.
#[derive(Default)]
struct Step {
    events: u64,
    checkpoints: u64,
    /// Whether the chain may have more old events after this step's.
    more: bool,
    /// The last event counted (dry runs).
    through: Option<(i64, String)>,
}

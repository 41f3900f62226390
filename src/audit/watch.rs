//! The service watching its own trail: every interval, a background task checks what
//! its writer committed since the last check against what the database now holds —
//! the chain's stored head, and every event from the last verified one on, keyed hash
//! by keyed hash — so that events removed or rewritten under a running service are
//! reported within seconds, not at the next manual `audit verify`. On SQLite it also
//! checks that every event indexed since the last check has its lookup entries (a
//! trigger or a delete that hides new events from `?subject=` queries); entries
//! deleted after they were checked are `audit verify`'s to find.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use sqlx::Row;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::chain::{self, GENESIS};
use super::db::{AuditDb, StoreError};
use super::keys::ChainKey;
use crate::metrics::AuditWriterMetrics;

/// A head the writer committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub chain_id: String,
    pub seq: i64,
    pub hash: String,
}

/// What the watch and the writer know of the trail, for `GET /v1/audit/trail` and
/// `/ops/audit`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrailState {
    /// The chain the last check verified.
    pub chain_id: Option<String>,
    /// The last position checked against the database, and when.
    pub verified_seq: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub verified_at: Option<OffsetDateTime>,
    /// The first problem found, if any (it stays until the service restarts).
    pub finding: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finding_at: Option<OffsetDateTime>,
    /// The last checkpoint the writer signed and stored (with a signing key), and when.
    pub checkpoint_chain_id: Option<String>,
    pub checkpoint_seq: Option<i64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub checkpoint_at: Option<OffsetDateTime>,
    /// The first chain conflict the writer met, if any (it stays until the service
    /// restarts; the writer goes on with a new chain).
    pub conflict: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub conflict_at: Option<OffsetDateTime>,
}

impl TrailState {
    /// The writer stored a signed checkpoint of `chain_id` at `seq`.
    pub fn signed(&mut self, chain_id: &str, seq: i64) {
        self.checkpoint_chain_id = Some(chain_id.to_owned());
        self.checkpoint_seq = Some(seq);
        self.checkpoint_at = Some(OffsetDateTime::now_utc());
    }

    /// The writer met a chain conflict; the first one is kept.
    pub fn conflicted(&mut self, detail: String) {
        if self.conflict.is_none() {
            self.conflict = Some(detail);
            self.conflict_at = Some(OffsetDateTime::now_utc());
        }
    }
}

/// Shared view of the trail's state.
pub type SharedTrail = Arc<Mutex<TrailState>>;

/// Starts the watch on the current runtime; it ends when the writer (the sender) is gone.
pub fn spawn(
    db: AuditDb,
    key: ChainKey,
    heads: watch::Receiver<Option<Head>>,
    every: Duration,
    metrics: AuditWriterMetrics,
    state: SharedTrail,
) {
    tokio::spawn(run(db, key, heads, every, metrics, state));
}

async fn run(
    db: AuditDb,
    key: ChainKey,
    mut heads: watch::Receiver<Option<Head>>,
    every: Duration,
    metrics: AuditWriterMetrics,
    state: SharedTrail,
) {
    let mut verified: Option<Head> = None;
    let mut reported: Option<String> = None;
    let mut lookups_checked: i64 = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if heads.has_changed().is_err() {
            return;
        }
        let head = heads.borrow_and_update().clone();
        let Some(head) = head else {
            continue;
        };
        let from = match &verified {
            Some(v) if v.chain_id == head.chain_id => v.clone(),
            _ => Head {
                chain_id: head.chain_id.clone(),
                seq: 0,
                hash: GENESIS.to_owned(),
            },
        };
        let mut outcome = check(&db, &key, &from, &head).await;
        if let Ok(None) = outcome {
            outcome = match db.check_new_lookups(lookups_checked).await {
                Ok((None, through)) => {
                    lookups_checked = through;
                    Ok(None)
                }
                Ok((Some(finding), _)) => Ok(Some(finding)),
                Err(e) => Err(e),
            };
            if let Ok(Some(finding)) = outcome {
                // Not the writer's race: the entries are missing for indexed events.
                report(&head, &from, finding, &mut reported, &metrics, &state);
                continue;
            }
        }
        if matches!(outcome, Ok(Some(_))) {
            // The writer may have committed after the head above was read: look again
            // with its latest head before calling it tampering.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let latest = heads.borrow_and_update().clone();
            if let Some(latest) = latest {
                if latest.chain_id == head.chain_id {
                    outcome = check(&db, &key, &from, &latest).await;
                    if let Ok(None) = outcome {
                        verified = Some(latest.clone());
                        record_ok(&state, &latest);
                        continue;
                    }
                }
            }
        }
        match outcome {
            Ok(None) => {
                verified = Some(head.clone());
                record_ok(&state, &head);
            }
            Ok(Some(finding)) => report(&head, &from, finding, &mut reported, &metrics, &state),
            // The store being unreachable is the writer's and readiness's concern.
            Err(e) => tracing::debug!(error = %e, "audit trail check could not read the store"),
        }
    }
}

/// Reports a finding once per chain: on the `audit` target, in the metric and in the
/// trail's state.
fn report(
    head: &Head,
    from: &Head,
    finding: String,
    reported: &mut Option<String>,
    metrics: &AuditWriterMetrics,
    state: &SharedTrail,
) {
    if reported.as_deref() == Some(head.chain_id.as_str()) {
        return;
    }
    *reported = Some(head.chain_id.clone());
    metrics.trail_finding();
    tracing::error!(
        target: "audit",
        chain_id = %head.chain_id,
        verified_seq = from.seq,
        head_seq = head.seq,
        finding = %finding,
        "audit trail check failed: the database no longer holds what this service wrote"
    );
    let mut s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    s.finding = Some(finding);
    s.finding_at = Some(OffsetDateTime::now_utc());
}

fn record_ok(state: &SharedTrail, head: &Head) {
    let mut s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    s.chain_id = Some(head.chain_id.clone());
    s.verified_seq = head.seq;
    s.verified_at = Some(OffsetDateTime::now_utc());
}

/// Checks the stored chain from `from` (verified before) through `head` (committed by
/// the writer): `Some(finding)` when the database disagrees.
async fn check(
    db: &AuditDb,
    key: &ChainKey,
    from: &Head,
    head: &Head,
) -> Result<Option<String>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT head_seq, head_hash, anchor_seq, anchor_hash, anchor_key_id, anchor_mac \
         FROM audit_chains WHERE chain_id = $1",
    )
    .bind(head.chain_id.as_str())
    .fetch_optional(db.pool())
    .await?
    else {
        return Ok(Some(format!("chain {} is gone", head.chain_id)));
    };
    let stored: (i64, String) = (row.try_get("head_seq")?, row.try_get("head_hash")?);
    if stored.0 < head.seq || (stored.0 == head.seq && stored.1 != head.hash) {
        return Ok(Some(format!(
            "chain {} is stored at #{}, though this service committed #{}",
            head.chain_id, stored.0, head.seq
        )));
    }
    // Pruned past the last verified event: go on from the anchor, if `audit prune`
    // set it with the key.
    let anchor_seq: i64 = row.try_get("anchor_seq")?;
    let (mut seq, mut prev) = (from.seq, from.hash.clone());
    if anchor_seq > from.seq {
        let anchor_hash: String = row.try_get("anchor_hash")?;
        let mac: Option<String> = row.try_get("anchor_mac")?;
        if mac.as_deref() != Some(&key.anchor_mac(&head.chain_id, anchor_seq, &anchor_hash)) {
            return Ok(Some(format!(
                "the prune anchor of chain {} (#{anchor_seq}) was not set with the key",
                head.chain_id
            )));
        }
        (seq, prev) = (anchor_seq, anchor_hash);
    }
    let sql = format!(
        "SELECT {} FROM audit_events WHERE chain_id = $1 AND chain_seq >= $2 AND chain_seq <= $3 \
         ORDER BY chain_seq",
        super::db::event_columns_for_watch()
    );
    let mut rows = sqlx::query(&sql)
        .bind(head.chain_id.as_str())
        .bind(seq)
        .bind(head.seq)
        .fetch(db.pool());
    let mut first = seq > 0;
    while let Some(row) = rows.next().await {
        let linked = super::db::linked_row(&row?)?;
        if first {
            first = false;
            if linked.chain_seq != seq || linked.hash != prev {
                return Ok(Some(format!(
                    "event #{seq} of chain {} changed or went since it was verified",
                    head.chain_id
                )));
            }
            continue;
        }
        if linked.chain_seq != seq + 1 {
            return Ok(Some(format!(
                "events #{}..#{} of chain {} are missing",
                seq + 1,
                linked.chain_seq - 1,
                head.chain_id
            )));
        }
        let hash = chain::event_hash(
            Some(key),
            &linked.prev_hash,
            &linked.chain_id,
            linked.chain_seq,
            &linked.event,
        );
        if linked.prev_hash != prev || hash != linked.hash {
            return Ok(Some(format!(
                "event {} (chain {}, #{}) does not match its keyed hash",
                linked.event.id, head.chain_id, linked.chain_seq
            )));
        }
        seq = linked.chain_seq;
        prev = linked.hash;
    }
    if first && seq > 0 {
        return Ok(Some(format!(
            "event #{seq} of chain {} changed or went since it was verified",
            head.chain_id
        )));
    }
    if seq != head.seq || prev != head.hash {
        return Ok(Some(format!(
            "chain {} ends at #{seq} in the database, though this service committed #{}",
            head.chain_id, head.seq
        )));
    }
    Ok(None)
}

//! Reading: pages for the API and `audit query`, the export stream, and `audit verify`.

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};
use time::OffsetDateTime;

use super::{
    event_columns, event_from_row, not_migrated, AuditDb, Backend, RawTransaction, StoreError,
};
use crate::audit::chain::{ChainRecord, Finding, Intact, Linked, Policy, Verifier};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::keys::NoteVerifier;
use crate::audit::query::{self, Arg, AuditQuery, Cursor, Page};
use crate::audit::AuditEvent;

impl AuditDb {
    /// One page of events, newest first.
    pub async fn query(&self, q: &AuditQuery) -> Result<Page, StoreError> {
        let (filter, args) = query::where_clause(q, self.backend);
        let columns = event_columns();
        let sql = format!(
            "SELECT seq, {columns} FROM audit_events{filter} ORDER BY seq DESC LIMIT {}",
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
        let (filter, args) = query::where_clause(&q, self.backend);
        let columns = event_columns();
        let sql = format!("SELECT {columns} FROM audit_events{filter} ORDER BY seq ASC");
        Box::pin(async_stream(self.pool.clone(), sql, args).map(|row| {
            row.map_err(not_migrated)
                .and_then(|row| event_from_row(&row))
        }))
    }

    /// Walks every chain and reports the first altered, inserted or removed event,
    /// checking the chains against their keys, the latest signed checkpoint of each
    /// chain kept in the database (opened with `signer`), and `policy.checkpoints`
    /// (kept elsewhere). Reads one snapshot, so events committed meanwhile by a running
    /// service are neither half-seen nor mistaken for insertions.
    pub async fn verify(
        &self,
        policy: &Policy,
        signer: Option<&NoteVerifier>,
    ) -> Result<Result<Intact, Finding>, StoreError> {
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        };
        let mut tx = RawTransaction::begin(&self.pool, begin).await?;
        let chains = sqlx::query(
            "SELECT chain_id, head_seq, head_hash, anchor_seq, anchor_hash, key_id, \
             anchor_key_id, anchor_mac FROM audit_chains",
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
                key_id: r.try_get("key_id")?,
                anchor_key_id: r.try_get("anchor_key_id")?,
                anchor_mac: r.try_get("anchor_mac")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let notes: Vec<String> = sqlx::query(
            "SELECT note FROM audit_checkpoints c WHERE seq = \
             (SELECT MAX(seq) FROM audit_checkpoints WHERE chain_id = c.chain_id)",
        )
        .fetch_all(tx.conn())
        .await?
        .iter()
        .map(|r| r.try_get("note"))
        .collect::<Result<_, sqlx::Error>>()?;
        let mut policy = policy.clone();
        if !notes.is_empty() {
            let Some(signer) = signer else {
                tx.rollback().await?;
                return Err(StoreError::Usage(
                    "the database holds signed checkpoints: give their verifier key \
                     (AUDIT_VERIFIER_KEY, AUDIT_VERIFIER_KEY_FILE or --verifier-key; or \
                     AUDIT_SIGNING_KEY to derive it)"
                        .into(),
                ));
            };
            for note in notes {
                match Checkpoint::open(&note, signer) {
                    Ok(cp) => policy.checkpoints.push(cp),
                    Err(e) => {
                        tx.rollback().await?;
                        return Ok(Err(Finding::BadCheckpoint { why: e.to_string() }));
                    }
                }
            }
        }
        let mut verifier = match Verifier::new(chains, &policy) {
            Ok(v) => v,
            Err(finding) => {
                tx.rollback().await?;
                return Ok(Err(finding));
            }
        };
        let columns = event_columns();
        let sql = format!("SELECT {columns} FROM audit_events ORDER BY chain_id, chain_seq");
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
        let verdict = match verdict {
            Some(v) => v,
            None => match verifier.finish() {
                Ok(intact) if self.backend == Backend::Sqlite => {
                    match lookup_mismatch(&mut tx).await? {
                        Some(why) => Err(Finding::Lookup { why }),
                        None => Ok(intact),
                    }
                }
                other => other,
            },
        };
        tx.rollback().await?;
        Ok(verdict)
    }
}

/// SQLite: the lookup table against the events it indexes (every event up to
/// `indexed_seq` has its entries, and every entry names an event with that key).
async fn lookup_mismatch(tx: &mut RawTransaction) -> Result<Option<String>, StoreError> {
    let missing = sqlx::query(
        "SELECT id, subject, token_fingerprint FROM audit_events e \
         WHERE e.seq <= COALESCE((SELECT indexed_seq FROM audit_lookup_state WHERE id = 1), 0) \
           AND ((e.subject IS NOT NULL AND NOT EXISTS (SELECT 1 FROM audit_lookup l \
                  WHERE l.key = 's:' || e.subject AND l.seq = e.seq)) \
             OR (e.token_fingerprint IS NOT NULL AND NOT EXISTS (SELECT 1 FROM audit_lookup l \
                  WHERE l.key = 'f:' || substr(e.token_fingerprint, -16) AND l.seq = e.seq))) \
         ORDER BY e.seq LIMIT 1",
    )
    .fetch_optional(tx.conn())
    .await?;
    if let Some(row) = missing {
        let id: String = row.try_get("id")?;
        return Ok(Some(format!(
            "event {id} has no entry in the lookup table, though it is marked indexed"
        )));
    }
    let stray = sqlx::query(
        "SELECT key, seq FROM audit_lookup l WHERE NOT EXISTS (SELECT 1 FROM audit_events e \
         WHERE e.seq = l.seq AND (l.key = 's:' || e.subject \
           OR l.key = 'f:' || substr(e.token_fingerprint, -16))) LIMIT 1",
    )
    .fetch_optional(tx.conn())
    .await?;
    if let Some(row) = stray {
        let seq: i64 = row.try_get("seq")?;
        return Ok(Some(format!(
            "the lookup table has an entry for event seq {seq} that no event matches"
        )));
    }
    Ok(None)
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

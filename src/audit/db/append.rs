//! Appending: the group-commit writer's batches, hash-chained and committed with the
//! chain's new head in one transaction.

use sqlx::Row;
use time::OffsetDateTime;

use super::{
    event_columns, AuditDb, Backend, RawTransaction, StoreError, CHAIN_COLUMNS, ROW_COLUMN_COUNT,
};
use crate::audit::chain::{self, GENESIS};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::keys::{ChainKey, NoteSigner};
use crate::audit::schema::{self, Value, FIELDS};
use crate::audit::AuditEvent;

/// Multi-row insert sizes; a few fixed shapes keep prepared statements cached.
const CHUNKS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

impl AuditDb {
    /// Appends `events` to the writer's chain in one transaction and moves the chain's
    /// head; `chain` advances only if the commit succeeds. Returns each event's hash;
    /// the first event is at the chain's old `head_seq + 1`.
    pub(crate) async fn append(
        &self,
        chain: &mut ChainState,
        events: &[&AuditEvent],
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = RawTransaction::begin(&self.writer, self.backend.begin_write()).await?;
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
                "INSERT INTO audit_chains (chain_id, created_us, head_seq, head_hash, anchor_seq, anchor_hash, key_id) \
                 VALUES ($1, $2, 0, $3, 0, $3, $4)",
            )
            .bind(chain.id.as_str())
            .bind(chain::to_micros(OffsetDateTime::now_utc()))
            .bind(GENESIS)
            .bind(chain.key.id())
            .execute(tx.conn())
            .await?;
        }
        let (linked, seq, prev) = link(chain, events);
        match self.backend {
            // One statement of a fixed shape (prepared once) for the whole batch: the
            // rows as one JSON parameter, typed by the table's own row type.
            Backend::Postgres => {
                sqlx::query(&pg_insert_sql())
                    .bind(rows_json(&chain.id, &linked))
                    .execute(tx.conn())
                    .await?;
            }
            Backend::Sqlite => {
                let mut rest = linked.as_slice();
                while !rest.is_empty() {
                    let size = CHUNKS.into_iter().find(|c| *c <= rest.len()).unwrap_or(1);
                    let (chunk, tail) = rest.split_at(size);
                    let sql = insert_sql(self.backend, size);
                    let mut q = sqlx::query(&sql);
                    for (e, seq, prev_hash, hash) in chunk {
                        for value in e.values() {
                            q = match value {
                                Value::Text(s) => q.bind(s),
                                Value::Int(i) => q.bind(i),
                                Value::Time(t) => q.bind(t.map(schema::to_micros)),
                            };
                        }
                        q = q
                            .bind(chain.id.as_str())
                            .bind(*seq)
                            .bind(prev_hash.as_str())
                            .bind(hash.as_str());
                    }
                    q.execute(tx.conn()).await?;
                    rest = tail;
                }
            }
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
        Ok(linked.into_iter().map(|(_, _, _, hash)| hash).collect())
    }

    /// Signs the chain's committed head and stores the checkpoint; returns its note.
    pub(crate) async fn write_checkpoint(
        &self,
        chain: &ChainState,
        signer: &NoteSigner,
    ) -> Result<String, StoreError> {
        let checkpoint = Checkpoint {
            chain_id: chain.id.clone(),
            seq: chain.head_seq,
            hash: chain.head_hash.clone(),
            time: OffsetDateTime::now_utc(),
        };
        let note = checkpoint.sign(signer);
        let mut tx = RawTransaction::begin(&self.writer, self.backend.begin_write()).await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (chain_id, seq, hash, time_us, note) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(checkpoint.chain_id.as_str())
        .bind(checkpoint.seq)
        .bind(checkpoint.hash.as_str())
        .bind(chain::to_micros(checkpoint.time))
        .bind(note.as_str())
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(note)
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
    /// The key the chain's hashes are keyed with.
    pub key: ChainKey,
}

impl ChainState {
    pub fn new(key: ChainKey) -> Self {
        Self {
            key,
            id: uuid::Uuid::new_v4().to_string(),
            head_seq: 0,
            head_hash: GENESIS.to_owned(),
            registered: false,
            known: true,
        }
    }
}

/// The events after the chain's head, each with its sequence number, previous hash and
/// hash; and the new head.
#[allow(clippy::type_complexity)]
fn link<'e>(
    chain: &ChainState,
    events: &[&'e AuditEvent],
) -> (Vec<(&'e AuditEvent, i64, String, String)>, i64, String) {
    let mut seq = chain.head_seq;
    let mut prev = chain.head_hash.clone();
    let mut linked = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let hash = chain::event_hash(Some(&chain.key), &prev, &chain.id, seq, e);
        linked.push((*e, seq, std::mem::replace(&mut prev, hash.clone()), hash));
    }
    (linked, seq, prev)
}

/// PostgreSQL: a batch's rows from one JSON array of objects keyed by column.
fn pg_insert_sql() -> String {
    let columns = event_columns();
    format!(
        "INSERT INTO audit_events ({columns}) \
         SELECT {columns} FROM json_populate_recordset(NULL::audit_events, $1::json)"
    )
}

/// The rows of [`pg_insert_sql`]: `[{"id":"…","time_us":…,…,"hash":"…"},…]`.
fn rows_json(chain_id: &str, linked: &[(&AuditEvent, i64, String, String)]) -> String {
    fn text(out: &mut Vec<u8>, s: &str) {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
    fn int(out: &mut Vec<u8>, i: i64) {
        out.extend_from_slice(i.to_string().as_bytes());
    }
    let mut out = Vec::with_capacity(linked.len() * 768);
    out.push(b'[');
    for (n, (e, seq, prev_hash, hash)) in linked.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.push(b'{');
        let chain = [
            Value::Text(Some(chain_id)),
            Value::Int(Some(*seq)),
            Value::Text(Some(prev_hash)),
            Value::Text(Some(hash)),
        ];
        let columns = FIELDS.iter().map(|f| f.column).chain(CHAIN_COLUMNS);
        for (c, (column, value)) in columns.zip(e.values().into_iter().chain(chain)).enumerate() {
            if c > 0 {
                out.push(b',');
            }
            text(&mut out, column);
            out.push(b':');
            match value {
                Value::Text(Some(s)) => text(&mut out, s),
                Value::Int(Some(i)) => int(&mut out, i),
                Value::Time(Some(t)) => int(&mut out, schema::to_micros(t)),
                Value::Text(None) | Value::Int(None) | Value::Time(None) => {
                    out.extend_from_slice(b"null")
                }
            }
        }
        out.push(b'}');
    }
    out.push(b']');
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// SQLite gets anonymous `?` placeholders: it resolves each named (`$n`) one by a
/// linear search, which is quadratic for a statement with thousands of them.
fn insert_sql(backend: Backend, rows: usize) -> String {
    let mut sql = format!("INSERT INTO audit_events ({}) VALUES ", event_columns());
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..ROW_COLUMN_COUNT {
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

#[cfg(test)]
mod tests {
    use super::*;

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

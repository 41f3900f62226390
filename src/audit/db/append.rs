//! Appending: the group-commit writer's batches, hash-chained and committed with the
//! chain's new head in one transaction.

use sqlx::Row;
use time::OffsetDateTime;

use super::{event_columns, AuditDb, Backend, RawTransaction, StoreError, ROW_COLUMN_COUNT};
use crate::audit::chain::{self, GENESIS};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::keys::{ChainKey, NoteSigner};
use crate::audit::schema::{self, Value};
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
        if let Some(pg) = &self.pg_writer {
            return append_postgres(pg, chain, events).await;
        }
        let mut tx = RawTransaction::begin(&self.writer, self.backend.begin_write()).await?;
        if !chain.known {
            let head = sqlx::query(HEAD_SQL)
                .bind(chain.id.as_str())
                .fetch_optional(tx.conn())
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.try_get("head_seq")?, r.try_get("head_hash")?)))
                .transpose()?;
            chain.set_head(head);
        }
        if !chain.registered {
            sqlx::query(REGISTER_SQL)
                .bind(chain.id.as_str())
                .bind(chain::to_micros(OffsetDateTime::now_utc()))
                .bind(GENESIS)
                .bind(chain.key.id())
                .execute(tx.conn())
                .await?;
        }
        let (linked, seq, prev) = link(chain, events);
        // SQLite: multi-row INSERTs (PostgreSQL batches went to `append_postgres`).
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
        sqlx::query(ADVANCE_SQL)
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

/// PostgreSQL: the same transaction as [`AuditDb::append`] on a native connection, the
/// batch's rows streamed with `COPY … FROM STDIN` (text format), which PostgreSQL
/// parses far faster than one JSON parameter. A transaction that did not end in a
/// COMMIT closes its connection, as [`RawTransaction`] does.
async fn append_postgres(
    pool: &sqlx::PgPool,
    chain: &mut ChainState,
    events: &[&AuditEvent],
) -> Result<Vec<String>, StoreError> {
    use sqlx::Executor as _;
    let mut conn = PgTransaction {
        conn: pool.acquire().await?,
        ended: false,
    };
    let c = &mut *conn.conn;
    c.execute("BEGIN").await?;
    if !chain.known {
        let head = sqlx::query(HEAD_SQL)
            .bind(chain.id.as_str())
            .fetch_optional(&mut *c)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("head_seq")?, r.try_get("head_hash")?)))
            .transpose()?;
        chain.set_head(head);
    }
    if !chain.registered {
        sqlx::query(REGISTER_SQL)
            .bind(chain.id.as_str())
            .bind(chain::to_micros(OffsetDateTime::now_utc()))
            .bind(GENESIS)
            .bind(chain.key.id())
            .execute(&mut *c)
            .await?;
    }
    let (linked, seq, prev) = link(chain, events);
    let mut copy = c
        .copy_in_raw(&format!(
            "COPY audit_events ({}) FROM STDIN",
            event_columns()
        ))
        .await?;
    copy.send(rows_copy_text(&chain.id, &linked).into_bytes())
        .await?;
    copy.finish().await?;
    sqlx::query(ADVANCE_SQL)
        .bind(seq)
        .bind(prev.as_str())
        .bind(chain.id.as_str())
        .execute(&mut *c)
        .await?;
    c.execute("COMMIT").await?;
    conn.ended = true;
    chain.registered = true;
    chain.head_seq = seq;
    chain.head_hash = prev;
    Ok(linked.into_iter().map(|(_, _, _, hash)| hash).collect())
}

/// A native PostgreSQL connection inside a plain `BEGIN`/`COMMIT`; closed on drop
/// unless the COMMIT succeeded (see [`RawTransaction`]).
struct PgTransaction {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    ended: bool,
}

impl Drop for PgTransaction {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

/// The rows of a batch in COPY's text format: tab-separated, `\N` for NULL, and
/// backslash, tab, newline and carriage return escaped.
fn rows_copy_text(chain_id: &str, linked: &[(&AuditEvent, i64, String, String)]) -> String {
    fn text(out: &mut String, s: &str) {
        for ch in s.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c => out.push(c),
            }
        }
    }
    let mut out = String::with_capacity(linked.len() * 640);
    for (e, seq, prev_hash, hash) in linked {
        let chain = [
            Value::Text(Some(chain_id)),
            Value::Int(Some(*seq)),
            Value::Text(Some(prev_hash)),
            Value::Text(Some(hash)),
        ];
        for (c, value) in e.values().into_iter().chain(chain).enumerate() {
            if c > 0 {
                out.push('\t');
            }
            match value {
                Value::Text(Some(s)) => text(&mut out, s),
                Value::Int(Some(i)) => out.push_str(&i.to_string()),
                Value::Time(Some(t)) => out.push_str(&schema::to_micros(t).to_string()),
                Value::Text(None) | Value::Int(None) | Value::Time(None) => out.push_str("\\N"),
            }
        }
        out.push('\n');
    }
    out
}

const HEAD_SQL: &str = "SELECT head_seq, head_hash FROM audit_chains WHERE chain_id = $1";
const ADVANCE_SQL: &str =
    "UPDATE audit_chains SET head_seq = $1, head_hash = $2 WHERE chain_id = $3";
const REGISTER_SQL: &str = "INSERT INTO audit_chains \
    (chain_id, created_us, head_seq, head_hash, anchor_seq, anchor_hash, key_id) \
    VALUES ($1, $2, 0, $3, 0, $3, $4)";

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
    /// The head as stored (`None`: the chain has no row yet, so it starts at genesis).
    fn set_head(&mut self, head: Option<(i64, String)>) {
        self.registered = head.is_some();
        (self.head_seq, self.head_hash) = head.unwrap_or_else(|| (0, GENESIS.to_owned()));
        self.known = true;
    }

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
    fn copy_text_escapes_what_copy_would_misread_and_marks_nulls() {
        let mut e = AuditEvent::begin("req\t1", "base", "eu");
        e.user_agent = Some("a\\b\nc\rd".into());
        let linked = vec![(&e, 7, "p".to_owned(), "h".to_owned())];
        let text = rows_copy_text("chain", &linked);
        assert!(text.ends_with("\tchain\t7\tp\th\n"), "{text}");
        assert_eq!(text.matches('\n').count(), 1, "one line per row: {text}");
        assert!(text.contains("req\\t1"), "{text}");
        assert!(text.contains("a\\\\b\\nc\\rd"), "{text}");
        assert!(text.contains("\\N"), "{text}");
        let fields = text.trim_end_matches('\n').split('\t').count();
        assert_eq!(fields, ROW_COLUMN_COUNT);
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

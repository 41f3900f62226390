//! Appending: the group-commit writer's batches, hash-chained and committed with the
//! chain's new head in one transaction.

use sqlx::{Postgres, Row, Sqlite};
use time::OffsetDateTime;

use super::{
    event_columns, AuditDb, Backend, RawTransaction, StoreError, WriterPool, ROW_COLUMN_COUNT,
};
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
    ) -> Result<Appended, StoreError> {
        chain.tried = None;
        let begin = self.backend.begin_write();
        match &self.writer {
            WriterPool::Postgres(pg) => {
                append_in(RawTransaction::begin(pg, begin).await?, chain, events).await
            }
            WriterPool::Sqlite(lite) => {
                append_in(RawTransaction::begin(lite, begin).await?, chain, events).await
            }
        }
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
        let begin = self.backend.begin_write();
        // The same statement on either store's native connection.
        macro_rules! store {
            ($pool:expr) => {{
                let mut tx = RawTransaction::begin($pool, begin).await?;
                sqlx::query(CHECKPOINT_SQL)
                    .bind(checkpoint.chain_id.as_str())
                    .bind(checkpoint.seq)
                    .bind(checkpoint.hash.as_str())
                    .bind(chain::to_micros(checkpoint.time))
                    .bind(note.as_str())
                    .execute(tx.conn())
                    .await?;
                tx.commit().await?;
            }};
        }
        match &self.writer {
            WriterPool::Postgres(pg) => store!(pg),
            WriterPool::Sqlite(lite) => store!(lite),
        }
        Ok(note)
    }
}

/// The one append flow, on either store: check a head whose fate is unknown, register
/// a new chain, link the batch, insert it, and move the head only from where this
/// writer left it (anything else is a chain conflict, rolled back).
async fn append_in<T: AppendTx>(
    mut tx: T,
    chain: &mut ChainState,
    events: &[&AuditEvent],
) -> Result<Appended, StoreError> {
    if !chain.known {
        let head = tx.head(&chain.id).await?;
        if let Err(conflict) = chain.check_head(head) {
            tx.rollback().await?;
            return Err(StoreError::ChainConflict(Box::new(conflict)));
        }
    }
    if !chain.registered {
        tx.register(chain).await?;
    }
    let opening = chain.opening.clone();
    let all: Vec<&AuditEvent> = opening.iter().chain(events.iter().copied()).collect();
    let (linked, seq, prev) = link(chain, &all);
    chain.tried = Some((seq, prev.clone()));
    tx.insert(&chain.id, &linked).await?;
    if !tx.advance(chain, seq, &prev).await? {
        let found = tx.head(&chain.id).await?;
        tx.rollback().await?;
        chain.tried = None;
        return Err(StoreError::ChainConflict(Box::new(chain.conflict(found))));
    }
    tx.commit().await?;
    Ok(chain.advanced(seq, prev, linked))
}

/// One batch's rows with their place in the chain: event, seq, previous hash, hash.
type Linked<'a> = [(&'a AuditEvent, i64, String, String)];

/// What [`append_in`] needs of a store's write transaction.
trait AppendTx {
    /// The chain's stored head (`None`: no row).
    async fn head(&mut self, chain_id: &str) -> Result<Option<(i64, String)>, sqlx::Error>;
    async fn register(&mut self, chain: &ChainState) -> Result<(), sqlx::Error>;
    async fn insert(&mut self, chain_id: &str, linked: &Linked<'_>) -> Result<(), sqlx::Error>;
    /// Moves the head from the chain's in-memory head to `(seq, hash)`; false when the
    /// stored head was not the in-memory one.
    async fn advance(
        &mut self,
        chain: &ChainState,
        seq: i64,
        hash: &str,
    ) -> Result<bool, sqlx::Error>;
    async fn commit(self) -> Result<(), sqlx::Error>;
    async fn rollback(self) -> Result<(), sqlx::Error>;
}

/// The chain-row statements, the same SQL on both stores, on any connection.
macro_rules! chain_row_statements {
    () => {
        async fn head(&mut self, chain_id: &str) -> Result<Option<(i64, String)>, sqlx::Error> {
            sqlx::query(HEAD_SQL)
                .bind(chain_id)
                .fetch_optional(self.conn())
                .await?
                .map(|r| Ok((r.try_get("head_seq")?, r.try_get("head_hash")?)))
                .transpose()
        }

        async fn register(&mut self, chain: &ChainState) -> Result<(), sqlx::Error> {
            sqlx::query(REGISTER_SQL)
                .bind(chain.id.as_str())
                .bind(chain::to_micros(OffsetDateTime::now_utc()))
                .bind(GENESIS)
                .bind(chain.key.id())
                .execute(self.conn())
                .await
                .map(|_| ())
        }

        async fn advance(
            &mut self,
            chain: &ChainState,
            seq: i64,
            hash: &str,
        ) -> Result<bool, sqlx::Error> {
            let done = sqlx::query(ADVANCE_SQL)
                .bind(seq)
                .bind(hash)
                .bind(chain.id.as_str())
                .bind(chain.head_seq)
                .bind(chain.head_hash.as_str())
                .execute(self.conn())
                .await?;
            Ok(done.rows_affected() == 1)
        }
    };
}

/// SQLite: multi-row INSERTs of a few fixed sizes in the writer's transaction, bound
/// on the native driver.
impl AppendTx for RawTransaction<Sqlite> {
    chain_row_statements!();

    async fn insert(&mut self, chain_id: &str, linked: &Linked<'_>) -> Result<(), sqlx::Error> {
        let mut rest = linked;
        while !rest.is_empty() {
            // The largest size that fits; the last one is 1.
            let shape = CHUNKS
                .iter()
                .position(|c| *c <= rest.len())
                .unwrap_or(CHUNKS.len() - 1);
            let (chunk, tail) = rest.split_at(CHUNKS[shape]);
            let mut q = sqlx::query(SQLITE_INSERTS[shape].as_str());
            for (e, seq, prev_hash, hash) in chunk {
                for value in e.values() {
                    q = match value {
                        Value::Text(s) => q.bind(s),
                        Value::Int(i) => q.bind(i),
                        Value::Time(t) => q.bind(t.map(schema::to_micros)),
                    };
                }
                q = q
                    .bind(chain_id)
                    .bind(*seq)
                    .bind(prev_hash.as_str())
                    .bind(hash.as_str());
            }
            q.execute(self.conn()).await?;
            rest = tail;
        }
        Ok(())
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        RawTransaction::commit(self).await
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        RawTransaction::rollback(self).await
    }
}

/// PostgreSQL: the batch's rows streamed with `COPY … FROM STDIN` in binary format,
/// which PostgreSQL reads without parsing text, and which needs no escaping here.
impl AppendTx for RawTransaction<Postgres> {
    chain_row_statements!();

    async fn insert(&mut self, chain_id: &str, linked: &Linked<'_>) -> Result<(), sqlx::Error> {
        let rows = rows_copy_binary(chain_id, linked)?;
        let mut copy = self
            .conn()
            .copy_in_raw(&format!(
                "COPY audit_events ({}) FROM STDIN (FORMAT binary)",
                event_columns()
            ))
            .await?;
        copy.send(rows).await?;
        copy.finish().await.map(|_| ())
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        RawTransaction::commit(self).await
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        RawTransaction::rollback(self).await
    }
}

/// The rows of a batch in COPY's binary format: a header, then per row the number of
/// columns and each value as its length and bytes (`-1`: NULL), text as its UTF-8
/// bytes and every integer column (`BIGINT` in the PostgreSQL schema) as 8 bytes
/// big-endian; a trailer of `-1`.
fn rows_copy_binary(chain_id: &str, linked: &Linked<'_>) -> Result<Vec<u8>, sqlx::Error> {
    const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
    const COLUMNS: i16 = ROW_COLUMN_COUNT as i16;
    const _: () = assert!(ROW_COLUMN_COUNT < i16::MAX as usize);
    fn text(out: &mut Vec<u8>, s: &str) -> Result<(), sqlx::Error> {
        let len = i32::try_from(s.len())
            .map_err(|_| sqlx::Error::Protocol("an audit value is too long for COPY".into()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn int(out: &mut Vec<u8>, i: i64) {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&i.to_be_bytes());
    }
    let mut out = Vec::with_capacity(SIGNATURE.len() + 8 + linked.len() * 720 + 2);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    out.extend_from_slice(&0i32.to_be_bytes()); // no header extension
    for (e, seq, prev_hash, hash) in linked {
        out.extend_from_slice(&COLUMNS.to_be_bytes());
        for value in e.values() {
            match value {
                Value::Text(Some(s)) => text(&mut out, s)?,
                Value::Int(Some(i)) => int(&mut out, i),
                Value::Time(Some(t)) => int(&mut out, schema::to_micros(t)),
                Value::Text(None) | Value::Int(None) | Value::Time(None) => {
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                }
            }
        }
        text(&mut out, chain_id)?;
        int(&mut out, *seq);
        text(&mut out, prev_hash)?;
        text(&mut out, hash)?;
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(out)
}

const CHECKPOINT_SQL: &str =
    "INSERT INTO audit_checkpoints (chain_id, seq, hash, time_us, note) VALUES ($1, $2, $3, $4, $5)";
const HEAD_SQL: &str = "SELECT head_seq, head_hash FROM audit_chains WHERE chain_id = $1";
/// Moves the head only from where this writer left it: a head moved under the writer
/// (events removed, the chain cut back) is a conflict, never silently built upon.
const ADVANCE_SQL: &str = "UPDATE audit_chains SET head_seq = $1, head_hash = $2 \
    WHERE chain_id = $3 AND head_seq = $4 AND head_hash = $5";
const REGISTER_SQL: &str = "INSERT INTO audit_chains \
    (chain_id, created_us, head_seq, head_hash, anchor_seq, anchor_hash, key_id) \
    VALUES ($1, $2, 0, $3, 0, $3, $4)";

/// What one append committed.
pub(crate) struct Appended {
    /// Where the caller's first event sits in the chain.
    pub first_seq: i64,
    /// The hash of each of the caller's events.
    pub hashes: Vec<String>,
}

/// The group-commit writer's chain, owned by exactly one writer. Its head is the one
/// this writer last committed, kept in memory: the database's copy is only checked
/// against it, never adopted (see [`ChainState::check_head`]).
#[derive(Debug, Clone)]
pub(crate) struct ChainState {
    pub id: String,
    pub head_seq: i64,
    pub head_hash: String,
    /// Whether the chain's row exists in `audit_chains`.
    pub registered: bool,
    /// False after a failed commit, whose effect is unknown: check the stored head first.
    pub known: bool,
    /// The head the last attempted transaction would have made, until it is known
    /// whether it committed.
    pub tried: Option<(i64, String)>,
    /// The event that opens this chain, recording the conflict that ended the one
    /// before it; written first by the next append.
    pub opening: Option<AuditEvent>,
    /// The key the chain's hashes are keyed with.
    pub key: ChainKey,
}

impl ChainState {
    /// After a commit whose outcome is unknown: the stored head must be the one this
    /// writer last committed, or the one the attempted transaction would have made (it
    /// committed after all). Anything else was written by someone else.
    fn check_head(&mut self, found: Option<(i64, String)>) -> Result<(), ChainConflict> {
        let ours = (self.head_seq, self.head_hash.clone());
        match &found {
            None if !self.registered => {}
            Some(head) if self.registered && *head == ours => {}
            Some(head) if self.tried.as_ref() == Some(head) => {
                (self.head_seq, self.head_hash) = head.clone();
                self.registered = true;
                self.opening = None;
            }
            _ => return Err(self.conflict(found)),
        }
        self.known = true;
        self.tried = None;
        Ok(())
    }

    fn conflict(&self, found: Option<(i64, String)>) -> ChainConflict {
        ChainConflict {
            chain_id: self.id.clone(),
            expected: (self.head_seq, self.head_hash.clone()),
            tried: self.tried.clone(),
            found,
        }
    }

    /// The chain after a committed append of `linked` (the opening event first, if
    /// there was one).
    fn advanced(
        &mut self,
        seq: i64,
        hash: String,
        linked: Vec<(&AuditEvent, i64, String, String)>,
    ) -> Appended {
        let skip = usize::from(self.opening.take().is_some());
        self.registered = true;
        self.known = true;
        self.tried = None;
        self.head_seq = seq;
        self.head_hash = hash;
        let first_seq = linked.get(skip).map_or(seq + 1, |l| l.1);
        Appended {
            first_seq,
            hashes: linked
                .into_iter()
                .skip(skip)
                .map(|(_, _, _, hash)| hash)
                .collect(),
        }
    }

    pub fn new(key: ChainKey) -> Self {
        Self {
            key,
            id: uuid::Uuid::new_v4().to_string(),
            head_seq: 0,
            head_hash: GENESIS.to_owned(),
            registered: false,
            known: true,
            tried: None,
            opening: None,
        }
    }

    /// A new chain to go on with after `conflict`, opened by an event recording it.
    pub fn after_conflict(key: ChainKey, conflict: &ChainConflict) -> Self {
        let mut chain = Self::new(key);
        let mut event = AuditEvent::begin(CONFLICT_REQUEST_ID, "-", "-");
        event.outcome = crate::audit::Outcome::Unavailable;
        event.status = 0;
        event.detail = Some(format!(
            "{conflict}; chain {} continues the trail",
            chain.id
        ));
        chain.opening = Some(event);
        chain
    }
}

/// `request_id` of the event that opens a chain after a chain conflict.
pub const CONFLICT_REQUEST_ID: &str = "audit-chain-conflict";

/// The stored head of the writer's chain is not one this writer wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConflict {
    pub chain_id: String,
    /// The head this writer last committed.
    pub expected: (i64, String),
    /// The head of the transaction whose outcome was unknown, if any.
    pub tried: Option<(i64, String)>,
    /// The head found in the database (`None`: the chain's row is gone).
    pub found: Option<(i64, String)>,
}

impl std::fmt::Display for ChainConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chain conflict: chain {} was expected at #{} ({})",
            self.chain_id, self.expected.0, self.expected.1
        )?;
        if let Some((seq, hash)) = &self.tried {
            write!(f, " or #{seq} ({hash})")?;
        }
        match &self.found {
            Some((seq, hash)) => write!(f, " but the database holds #{seq} ({hash})"),
            None => write!(f, " but its row is gone from the database"),
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
    let mut scratch = Vec::with_capacity(1024);
    for e in events {
        seq += 1;
        let hash = chain::event_hash_with(&mut scratch, Some(&chain.key), &prev, &chain.id, seq, e);
        linked.push((*e, seq, std::mem::replace(&mut prev, hash.clone()), hash));
    }
    (linked, seq, prev)
}

/// The SQLite INSERT of each of the [`CHUNKS`] sizes, built once.
static SQLITE_INSERTS: std::sync::LazyLock<[String; CHUNKS.len()]> =
    std::sync::LazyLock::new(|| CHUNKS.map(|rows| insert_sql(Backend::Sqlite, rows)));

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

    /// Reads back one row of [`rows_copy_binary`]'s output: each value's bytes.
    fn copy_binary_fields(data: &[u8]) -> Vec<Option<Vec<u8>>> {
        let be32 = |at: usize| i32::from_be_bytes(data[at..at + 4].try_into().unwrap());
        assert_eq!(&data[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!((be32(11), be32(15)), (0, 0));
        let columns = i16::from_be_bytes(data[19..21].try_into().unwrap());
        let mut at = 21;
        let mut fields = Vec::new();
        for _ in 0..columns {
            let len = be32(at);
            at += 4;
            if len < 0 {
                fields.push(None);
            } else {
                let len = len as usize;
                fields.push(Some(data[at..at + len].to_vec()));
                at += len;
            }
        }
        assert_eq!(
            &data[at..],
            &(-1i16).to_be_bytes(),
            "one row, then the trailer"
        );
        fields
    }

    #[test]
    fn copy_binary_sends_text_as_is_integers_as_bigint_and_marks_nulls() {
        let mut e = AuditEvent::begin("req\t1", "base", "eu");
        e.user_agent = Some("a\\b\nc\rd".into());
        e.status = 503;
        let linked = vec![(&e, 7, "p".to_owned(), "h".to_owned())];
        let fields = copy_binary_fields(&rows_copy_binary("chain", &linked).unwrap());
        assert_eq!(fields.len(), ROW_COLUMN_COUNT);
        let column = |name: &str| {
            let columns = event_columns();
            let i = columns.split(", ").position(|c| c == name).unwrap();
            fields[i].clone()
        };
        assert_eq!(column("request_id").unwrap(), b"req\t1");
        assert_eq!(column("user_agent").unwrap(), b"a\\b\nc\rd");
        assert_eq!(column("status").unwrap(), 503i64.to_be_bytes());
        assert_eq!(
            column("time_us").unwrap(),
            schema::to_micros(e.time).to_be_bytes()
        );
        assert_eq!(column("subject"), None);
        assert_eq!(column("token_expires_us"), None);
        assert_eq!(column("chain_id").unwrap(), b"chain");
        assert_eq!(column("chain_seq").unwrap(), 7i64.to_be_bytes());
        assert_eq!(column("prev_hash").unwrap(), b"p");
        assert_eq!(column("hash").unwrap(), b"h");
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

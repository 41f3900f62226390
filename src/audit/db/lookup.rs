//! SQLite's subject and token-fingerprint lookups: a side table the group-commit writer
//! fills in sorted batches, instead of two indexes on `audit_events` that dirtied two
//! random B-tree pages per event in every commit (migration `…0002_lookup_table.sql`).
//!
//! `audit_lookup` holds `('s:' || subject, seq)` and `('f:' || <the fingerprint's last
//! 16 hex digits>, seq)` for every event up to `audit_lookup_state.indexed_seq` (a short
//! key packs three times as many entries per page; the full fingerprint is compared on
//! the event itself). A query reads the table for those and scans the events after
//! `indexed_seq` (about a pass's worth while the service runs) directly, so a lookup
//! never misses an event, indexed yet or not. PostgreSQL keeps plain indexes.

use sqlx::Row;

use super::{AuditDb, Backend, RawTransaction, StoreError, WriterPool};

/// Most events one pass indexes, so that catching up a long tail (after a crash, or a
/// run of an older binary) holds a bounded number of entries in memory.
const MOST_PER_PASS: i64 = 32_768;
/// Entries per lookup transaction: a pass is written as several short transactions,
/// between which the writer commits events, so that no caller waits for a whole pass.
const ENTRIES_PER_TRANSACTION: usize = 4096;
/// Rows per multi-row INSERT of lookup entries (two values each).
const ROWS_PER_STATEMENT: usize = 512;
/// Events per read while a pass is read.
const READ_SLICE: i64 = 1024;

/// The entries of the events `(from, through]`, sorted by key, written into
/// `audit_lookup` a transaction at a time. Kept compact (the keys in one buffer, no
/// string or driver row per entry): a pass is read while the service is busiest.
#[derive(Debug)]
pub(crate) struct LookupPass {
    keys: String,
    /// Where each entry's key ends in `keys`.
    ends: Vec<usize>,
    seqs: Vec<i64>,
    /// The entries in (key, seq) order.
    order: Vec<u32>,
    written: usize,
    through: i64,
}

impl LookupPass {
    fn len(&self) -> usize {
        self.seqs.len()
    }

    /// The `i`-th entry as read.
    fn read(&self, i: usize) -> (&str, i64) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (&self.keys[start..self.ends[i]], self.seqs[i])
    }

    /// The `i`-th entry in (key, seq) order.
    fn entry(&self, i: usize) -> (&str, i64) {
        self.read(self.order[i] as usize)
    }

    fn push(&mut self, prefix: &str, key: &str, seq: i64) {
        self.keys.push_str(prefix);
        self.keys.push_str(key);
        self.ends.push(self.keys.len());
        self.seqs.push(seq);
    }
}

impl AuditDb {
    /// Reads the next pass on a connection of its own (it takes no lock and leaves the
    /// writer's page cache valid, so the writer goes on committing meanwhile): the
    /// entries of the events after `indexed_seq` (at most [`MOST_PER_PASS`] events),
    /// sorted by key so that each B-tree page takes all of its new entries at once.
    /// `None` when there is nothing to index, and on PostgreSQL.
    pub(crate) async fn read_lookup_pass(&self) -> Result<Option<LookupPass>, StoreError> {
        let Some(lookups) = &self.lookups else {
            return Ok(None);
        };
        let mut conn = lookups.acquire().await?;
        // A missing state row (deleted) means nothing is known to be indexed: queries
        // scan every event until the table is rebuilt from the start.
        sqlx::query("INSERT OR IGNORE INTO audit_lookup_state (id, indexed_seq) VALUES (1, 0)")
            .execute(&mut *conn)
            .await?;
        let row = sqlx::query(
            "SELECT indexed_seq, (SELECT COALESCE(MAX(seq), 0) FROM audit_events) AS last_seq \
             FROM audit_lookup_state WHERE id = 1",
        )
        .fetch_one(&mut *conn)
        .await?;
        let from: i64 = row.try_get("indexed_seq")?;
        let last: i64 = row.try_get("last_seq")?;
        let through = last.min(from.saturating_add(MOST_PER_PASS));
        if through <= from {
            return Ok(None);
        }
        let mut pass = LookupPass {
            keys: String::new(),
            ends: Vec::new(),
            seqs: Vec::new(),
            order: Vec::new(),
            written: 0,
            through,
        };
        // Read in slices of events and sorted here, so that the driver never holds a
        // whole pass's rows at once (a sorted query, or a streamed one, would).
        let mut after = from;
        while after < through {
            let upto = through.min(after + READ_SLICE);
            let rows = sqlx::query(
                "SELECT seq, subject, substr(token_fingerprint, -16) AS fp FROM audit_events \
                 WHERE seq > $1 AND seq <= $2",
            )
            .bind(after)
            .bind(upto)
            .fetch_all(&mut *conn)
            .await?;
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                if let Some(subject) = row.try_get::<Option<&str>, _>("subject")? {
                    pass.push("s:", subject, seq);
                }
                if let Some(fp) = row.try_get::<Option<&str>, _>("fp")? {
                    pass.push("f:", fp, seq);
                }
            }
            after = upto;
        }
        let n = u32::try_from(pass.len())
            .map_err(|_| StoreError::Corrupt("lookup pass too large".into()))?;
        let mut order: Vec<u32> = (0..n).collect();
        order.sort_unstable_by(|a, b| pass.read(*a as usize).cmp(&pass.read(*b as usize)));
        pass.order = order;
        Ok(Some(pass))
    }

    /// Writes the pass's next [`ENTRIES_PER_TRANSACTION`] entries in one transaction on
    /// the writer's connection; the last one also moves `indexed_seq`. Returns whether
    /// the pass is complete. A failed transaction is written again (`INSERT OR IGNORE`).
    pub(crate) async fn write_lookups(&self, pass: &mut LookupPass) -> Result<bool, StoreError> {
        let end = pass.len().min(pass.written + ENTRIES_PER_TRANSACTION);
        // PostgreSQL has no passes (read_lookup_pass makes none).
        let WriterPool::Sqlite(writer) = &self.writer else {
            return Ok(true);
        };
        let mut tx = RawTransaction::begin(writer, self.backend.begin_write()).await?;
        let mut start = pass.written;
        while start < end {
            // Powers of two: a few statement shapes, each prepared once; a shape per
            // remainder would fill sqlx's statement cache with large prepared INSERTs.
            let rows = prev_power_of_two((end - start).min(ROWS_PER_STATEMENT));
            let sql = format!(
                "INSERT OR IGNORE INTO audit_lookup (key, seq) VALUES {}",
                vec!["(?, ?)"; rows].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for i in start..start + rows {
                let (key, seq) = pass.entry(i);
                q = q.bind(key).bind(seq);
            }
            q.execute(tx.conn()).await?;
            start += rows;
        }
        let done = end == pass.len();
        if done {
            sqlx::query(
                "UPDATE audit_lookup_state SET indexed_seq = $1 WHERE id = 1 AND indexed_seq < $1",
            )
            .bind(pass.through)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        pass.written = end;
        Ok(done)
    }
}

/// The largest power of two that is at most `n` (`n` ≥ 1).
fn prev_power_of_two(n: usize) -> usize {
    if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    }
}

/// What a lookup finds events by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LookupBy {
    Subject,
    Fingerprint,
}

impl LookupBy {
    fn column(self) -> &'static str {
        match self {
            LookupBy::Subject => "subject",
            LookupBy::Fingerprint => "token_fingerprint",
        }
    }

    /// The side table's key of the value in placeholder `mark` (as the writer and the
    /// migration build it).
    fn key(self, mark: &str) -> String {
        match self {
            LookupBy::Subject => format!("'s:' || {mark}"),
            LookupBy::Fingerprint => format!("'f:' || substr({mark}, -16)"),
        }
    }
}

/// The SQLite lookup condition for `column IN (values…)`, given the placeholders the
/// caller already bound (`$n` each): the side table for indexed events, a scan of the
/// few events after `indexed_seq` for the rest; the column itself is compared too.
pub(crate) fn lookup_clause(by: LookupBy, marks: &[String]) -> String {
    let column = by.column();
    let list = marks.join(", ");
    let keys = marks
        .iter()
        .map(|m| by.key(m))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{column} IN ({list}) AND seq IN (\
         SELECT seq FROM audit_lookup WHERE key IN ({keys}) \
         UNION ALL \
         SELECT seq FROM audit_events WHERE seq > \
         COALESCE((SELECT indexed_seq FROM audit_lookup_state WHERE id = 1), 0) \
         AND {column} IN ({list}))"
    )
}

impl AuditDb {
    /// SQLite: whether every event indexed since `after` (a global `seq`) has its lookup
    /// entries, for the background trail check; returns the finding, if any, and the
    /// position checked through. A state moved back (deleted: a re-index from the
    /// start) restarts the count from there. PostgreSQL keeps no lookup table.
    pub(crate) async fn check_new_lookups(
        &self,
        after: i64,
    ) -> Result<(Option<String>, i64), StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok((None, after));
        }
        let indexed: i64 = sqlx::query(
            "SELECT COALESCE((SELECT indexed_seq FROM audit_lookup_state WHERE id = 1), 0) \
             AS indexed",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get("indexed")?;
        if indexed <= after {
            return Ok((None, indexed));
        }
        let missing = sqlx::query(
            "SELECT id FROM audit_events e WHERE e.seq > $1 AND e.seq <= $2 \
               AND ((e.subject IS NOT NULL AND NOT EXISTS (SELECT 1 FROM audit_lookup l \
                      WHERE l.key = 's:' || e.subject AND l.seq = e.seq)) \
                 OR (e.token_fingerprint IS NOT NULL AND NOT EXISTS (SELECT 1 FROM audit_lookup l \
                      WHERE l.key = 'f:' || substr(e.token_fingerprint, -16) AND l.seq = e.seq))) \
             ORDER BY e.seq LIMIT 1",
        )
        .bind(after)
        .bind(indexed)
        .fetch_optional(&self.pool)
        .await?;
        let finding = match missing {
            Some(row) => {
                let id: String = row.try_get("id")?;
                Some(format!(
                    "event {id} has no entry in the lookup table, though it is marked indexed \
                     (queries by subject or fingerprint would not find it)"
                ))
            }
            None => None,
        };
        Ok((finding, indexed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_sizes_are_powers_of_two_that_fit() {
        assert_eq!(prev_power_of_two(1), 1);
        assert_eq!(prev_power_of_two(3), 2);
        assert_eq!(prev_power_of_two(512), 512);
        assert_eq!(prev_power_of_two(511), 256);
    }
}

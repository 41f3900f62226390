//! The hash chain that makes the audit log tamper-evident.
//!
//! Every writer (one per running service) owns a chain with a random id. Each event
//! in it carries its position (`chain_seq`, 1, 2, …), the hash of the event before it
//! (`prev_hash`) and its own `hash = sha256(prev_hash ‖ canonical bytes)`. The chain's
//! head (last position and hash) is updated in the same transaction as its events, and
//! pruning moves an anchor (last pruned position and hash) forward, so [`Verifier`]
//! can tell an altered, an inserted and a removed event apart, at any point of a
//! chain, after pruning, with any number of chains side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::schema::{self, Value};
use super::AuditEvent;
use serde_json::json;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first event of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub use super::schema::{from_micros, to_micros};

/// The event's bytes as hashed: a JSON array of the [`schema::FIELDS`] in their
/// order after a version tag and the event's place in its chain, with times in
/// microseconds, so that SQLite and PostgreSQL rows hash alike.
pub fn canonical(chain_id: &str, chain_seq: i64, e: &AuditEvent) -> String {
    let mut items = Vec::with_capacity(schema::FIELD_COUNT + 3);
    items.push(json!("token-vendor-audit-v1"));
    items.push(json!(chain_id));
    items.push(json!(chain_seq));
    items.extend(e.values().iter().map(|v| match v {
        Value::Text(s) => json!(s),
        Value::Int(i) => json!(i),
        Value::Time(t) => json!(t.map(to_micros)),
    }));
    serde_json::Value::Array(items).to_string()
}

/// `hex(sha256(prev_hash "\n" canonical))`.
pub fn event_hash(prev_hash: &str, chain_id: &str, chain_seq: i64, e: &AuditEvent) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical(chain_id, chain_seq, e).as_bytes());
    hex::encode(h.finalize())
}

/// One stored event with its place in its chain.
#[derive(Debug, Clone)]
pub struct Linked {
    pub event: AuditEvent,
    pub chain_id: String,
    pub chain_seq: i64,
    pub prev_hash: String,
    pub hash: String,
}

/// A chain's bookkeeping row.
#[derive(Debug, Clone)]
pub struct ChainRecord {
    pub chain_id: String,
    pub head_seq: i64,
    pub head_hash: String,
    pub anchor_seq: i64,
    pub anchor_hash: String,
}

/// The first sign of tampering that [`Verifier`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The event's fields no longer match its hash, or the next event's link.
    Altered {
        event_id: String,
        chain_id: String,
        chain_seq: i64,
    },
    /// Positions `from..=to` of the chain are missing.
    Removed {
        chain_id: String,
        from: i64,
        to: i64,
        /// The event right after the gap, if any.
        before: Option<String>,
    },
    /// An event that no writer put there.
    Inserted {
        event_id: String,
        chain_id: String,
        chain_seq: i64,
        why: &'static str,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Altered {
                event_id,
                chain_id,
                chain_seq,
            } => write!(
                f,
                "altered: event {event_id} (chain {chain_id}, #{chain_seq}) does not match its hash"
            ),
            Finding::Removed {
                chain_id,
                from,
                to,
                before,
            } => {
                let n = to - from + 1;
                write!(
                    f,
                    "removed: {n} event(s) #{from}..#{to} of chain {chain_id}"
                )?;
                match before {
                    Some(id) => write!(f, " are missing before event {id}"),
                    None => write!(f, " are missing at its end"),
                }
            }
            Finding::Inserted {
                event_id,
                chain_id,
                chain_seq,
                why,
            } => write!(
                f,
                "inserted: event {event_id} (chain {chain_id}, #{chain_seq}) {why}"
            ),
        }
    }
}

/// What an intact log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    pub events: u64,
    pub chains: u64,
}

struct Walk {
    chain_id: String,
    next_seq: i64,
    prev_hash: String,
    prev_event: Option<String>,
}

/// Checks a stream of events ordered by `(chain_id, chain_seq)` against the chains'
/// bookkeeping, in constant memory per chain.
pub struct Verifier {
    chains: BTreeMap<String, ChainRecord>,
    seen: BTreeSet<String>,
    walk: Option<Walk>,
    events: u64,
}

impl Verifier {
    pub fn new(chains: impl IntoIterator<Item = ChainRecord>) -> Self {
        Self {
            chains: chains
                .into_iter()
                .map(|c| (c.chain_id.clone(), c))
                .collect(),
            seen: BTreeSet::new(),
            walk: None,
            events: 0,
        }
    }

    /// Checks the next event of the stream.
    pub fn check(&mut self, row: &Linked) -> Result<(), Finding> {
        let switching = self
            .walk
            .as_ref()
            .is_none_or(|w| w.chain_id != row.chain_id);
        if switching {
            self.end_walk()?;
            let Some(chain) = self.chains.get(&row.chain_id) else {
                return Err(Finding::Inserted {
                    event_id: row.event.id.clone(),
                    chain_id: row.chain_id.clone(),
                    chain_seq: row.chain_seq,
                    why: "belongs to no known chain",
                });
            };
            self.seen.insert(row.chain_id.clone());
            self.walk = Some(Walk {
                chain_id: row.chain_id.clone(),
                next_seq: chain.anchor_seq + 1,
                prev_hash: chain.anchor_hash.clone(),
                prev_event: None,
            });
        }
        let chain = &self.chains[&row.chain_id];
        let Some(walk) = self.walk.as_mut() else {
            unreachable!("a walk was started above")
        };
        let inserted = |why| Finding::Inserted {
            event_id: row.event.id.clone(),
            chain_id: row.chain_id.clone(),
            chain_seq: row.chain_seq,
            why,
        };
        if row.chain_seq <= chain.anchor_seq {
            return Err(inserted("sits before the chain's prune anchor"));
        }
        if row.chain_seq > chain.head_seq {
            return Err(inserted("sits after the chain's recorded head"));
        }
        if row.chain_seq < walk.next_seq {
            return Err(inserted("repeats a position of the chain"));
        }
        if row.chain_seq > walk.next_seq {
            return Err(Finding::Removed {
                chain_id: row.chain_id.clone(),
                from: walk.next_seq,
                to: row.chain_seq - 1,
                before: Some(row.event.id.clone()),
            });
        }
        if event_hash(&row.prev_hash, &row.chain_id, row.chain_seq, &row.event) != row.hash {
            return Err(Finding::Altered {
                event_id: row.event.id.clone(),
                chain_id: row.chain_id.clone(),
                chain_seq: row.chain_seq,
            });
        }
        if row.prev_hash != walk.prev_hash {
            // This row is self-consistent, so the one before it changed (and had its
            // hash recomputed), or this row was forged into place.
            return Err(match &walk.prev_event {
                Some(prev) => Finding::Altered {
                    event_id: prev.clone(),
                    chain_id: row.chain_id.clone(),
                    chain_seq: row.chain_seq - 1,
                },
                None => inserted("does not link to the chain's start or prune anchor"),
            });
        }
        walk.next_seq += 1;
        walk.prev_hash = row.hash.clone();
        walk.prev_event = Some(row.event.id.clone());
        self.events += 1;
        Ok(())
    }

    fn end_walk(&mut self) -> Result<(), Finding> {
        let Some(walk) = self.walk.take() else {
            return Ok(());
        };
        let chain = &self.chains[&walk.chain_id];
        let last = walk.next_seq - 1;
        if last < chain.head_seq {
            return Err(Finding::Removed {
                chain_id: walk.chain_id,
                from: walk.next_seq,
                to: chain.head_seq,
                before: None,
            });
        }
        if walk.prev_hash != chain.head_hash {
            return Err(Finding::Altered {
                event_id: walk.prev_event.unwrap_or_default(),
                chain_id: walk.chain_id,
                chain_seq: last,
            });
        }
        Ok(())
    }

    /// Ends the stream: checks the last chain's end and the chains that had no rows.
    pub fn finish(mut self) -> Result<Intact, Finding> {
        self.end_walk()?;
        for chain in self.chains.values() {
            if !self.seen.contains(&chain.chain_id) && chain.head_seq > chain.anchor_seq {
                return Err(Finding::Removed {
                    chain_id: chain.chain_id.clone(),
                    from: chain.anchor_seq + 1,
                    to: chain.head_seq,
                    before: None,
                });
            }
        }
        Ok(Intact {
            events: self.events,
            chains: self.chains.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;
    use time::OffsetDateTime;

    fn chain(n: usize) -> (ChainRecord, Vec<Linked>) {
        let mut prev = GENESIS.to_owned();
        let mut rows = Vec::new();
        for i in 1..=n as i64 {
            let mut e = AuditEvent::begin(&format!("req-{i}"), "base", "eu");
            e.outcome = Outcome::Issued;
            e.status = 200;
            let hash = event_hash(&prev, "c1", i, &e);
            rows.push(Linked {
                event: e,
                chain_id: "c1".into(),
                chain_seq: i,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            });
            prev = hash;
        }
        let record = ChainRecord {
            chain_id: "c1".into(),
            head_seq: n as i64,
            head_hash: prev,
            anchor_seq: 0,
            anchor_hash: GENESIS.into(),
        };
        (record, rows)
    }

    fn verify(record: &ChainRecord, rows: &[Linked]) -> Result<Intact, Finding> {
        let mut v = Verifier::new([record.clone()]);
        for r in rows {
            v.check(r)?;
        }
        v.finish()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (record, rows) = chain(5);
        assert_eq!(
            verify(&record, &rows),
            Ok(Intact {
                events: 5,
                chains: 1
            })
        );
    }

    #[test]
    fn an_altered_field_is_reported_at_its_event() {
        let (record, mut rows) = chain(5);
        rows[2].event.outcome = Outcome::Forbidden;
        let err = verify(&record, &rows).unwrap_err();
        assert!(
            matches!(err, Finding::Altered { chain_seq: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_altered_event_with_recomputed_hash_is_caught_by_the_next_link() {
        let (record, mut rows) = chain(5);
        rows[1].event.subject = Some("mallory".into());
        rows[1].hash = event_hash(&rows[1].prev_hash, "c1", 2, &rows[1].event);
        let err = verify(&record, &rows).unwrap_err();
        assert!(
            matches!(err, Finding::Altered { chain_seq: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_removed_event_in_the_middle_or_at_the_end_is_reported() {
        let (record, mut rows) = chain(5);
        let mut middle = rows.clone();
        middle.remove(2);
        let err = verify(&record, &middle).unwrap_err();
        assert!(
            matches!(err, Finding::Removed { from: 3, to: 3, .. }),
            "{err}"
        );
        rows.pop();
        let err = verify(&record, &rows).unwrap_err();
        assert!(
            matches!(
                err,
                Finding::Removed {
                    from: 5,
                    to: 5,
                    before: None,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_inserted_event_is_reported() {
        let (record, mut rows) = chain(3);
        let mut forged = rows[2].clone();
        forged.event.id = "forged".into();
        forged.chain_seq = 4;
        forged.prev_hash = rows[2].hash.clone();
        forged.hash = event_hash(&forged.prev_hash, "c1", 4, &forged.event);
        rows.push(forged);
        let err = verify(&record, &rows).unwrap_err();
        assert!(
            matches!(err, Finding::Inserted { chain_seq: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_pruned_chain_verifies_from_its_anchor() {
        let (mut record, rows) = chain(6);
        record.anchor_seq = 2;
        record.anchor_hash = rows[1].hash.clone();
        assert_eq!(verify(&record, &rows[2..]).map(|i| i.events), Ok(4));
    }

    #[test]
    fn the_canonical_form_is_the_one_v1_chains_were_hashed_with() {
        let mut e = AuditEvent::begin("req-1", "base", "eu");
        e.outcome = Outcome::Issued;
        e.status = 200;
        e.subject = Some("alice".into());
        e.token_expires_at = Some(e.time);
        e.upstream_ms = Some(7);
        e.count = 2;
        // The field list as first written out by hand, before the schema existed.
        let v1 = serde_json::json!([
            "token-vendor-audit-v1",
            "c1",
            4,
            e.id,
            to_micros(e.time),
            e.request_id,
            e.outcome.as_str(),
            e.status,
            e.subject,
            e.session_id,
            e.client_ip,
            e.user_agent,
            e.origin,
            e.scope,
            e.tenant,
            e.environment,
            e.token_fingerprint,
            e.token_expires_at.map(to_micros),
            e.upstream_ms,
            e.duration_ms,
            e.detail,
            e.count,
        ])
        .to_string();
        assert_eq!(canonical("c1", 4, &e), v1);
    }

    #[test]
    fn micros_round_trip() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let back = from_micros(to_micros(t));
        assert_eq!(to_micros(back), to_micros(t));
        assert_eq!(back.nanosecond() % 1000, 0);
    }
}

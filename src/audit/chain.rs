//! The hash chain that makes the audit log tamper-evident.
//!
//! Every writer (one per running service) owns a chain with a random id. Each event
//! in it carries its position (`chain_seq`, 1, 2, …), the hash of the event before it
//! (`prev_hash`) and its own `hash = hmac(chain key, prev_hash ‖ canonical bytes)`, the
//! chain key derived from `AUDIT_HMAC_KEY` (see [`super::keys`]; chains written before
//! keyed hashes use plain SHA-256 and are only accepted when asked). The chain's
//! head (last position and hash) is updated in the same transaction as its events, and
//! pruning moves an anchor (last pruned position and hash) forward, so [`Verifier`]
//! can tell an altered, an inserted and a removed event apart, at any point of a
//! chain, after pruning, with any number of chains side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::checkpoint::Checkpoint;
use super::keys::{ChainKey, Keyring};
use super::schema::Value;
use super::AuditEvent;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first event of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub use super::schema::{from_micros, to_micros};

/// The event's bytes as hashed: a JSON array of the [`super::schema::FIELDS`] in their
/// order after a version tag and the event's place in its chain, with times in
/// microseconds, so that SQLite and PostgreSQL rows hash alike.
pub fn canonical(chain_id: &str, chain_seq: i64, e: &AuditEvent) -> String {
    canonical_tagged(V1_TAG, chain_id, chain_seq, e)
}

/// The canonical form's version tag of unkeyed chains.
const V1_TAG: &str = "token-vendor-audit-v1";
/// The canonical form's version tag of keyed chains.
const V2_TAG: &str = "token-vendor-audit-v2";

fn canonical_tagged(tag: &str, chain_id: &str, chain_seq: i64, e: &AuditEvent) -> String {
    let mut out = Vec::with_capacity(512);
    write_canonical(&mut out, tag, chain_id, chain_seq, e);
    // Only serde_json's string escaping and ASCII go in: always UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Writes the canonical form into `out`, byte for byte what serializing the
/// `serde_json::Value` array would give (compact, serde_json's string escaping), without
/// building the `Value`s: the writer hashes every event, and the tree's allocations
/// were most of that cost.
fn write_canonical(out: &mut Vec<u8>, tag: &str, chain_id: &str, chain_seq: i64, e: &AuditEvent) {
    fn text(out: &mut Vec<u8>, s: &str) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
    fn int(out: &mut Vec<u8>, i: i64) {
        out.extend_from_slice(itoa_i64(i, &mut [0; 20]));
    }
    out.push(b'[');
    text(out, tag);
    out.push(b',');
    text(out, chain_id);
    out.push(b',');
    int(out, chain_seq);
    for v in e.values() {
        out.push(b',');
        match v {
            Value::Text(Some(s)) => text(out, s),
            Value::Int(Some(i)) => int(out, i),
            Value::Time(Some(t)) => int(out, to_micros(t)),
            Value::Text(None) | Value::Int(None) | Value::Time(None) => {
                out.extend_from_slice(b"null");
            }
        }
    }
    out.push(b']');
}

/// `i` in decimal, as serde_json writes an integer.
fn itoa_i64(i: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = i.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// The event's hash: keyed (`hmac(key, prev_hash "\n" canonical-v2)`) for chains
/// with a key, `hex(sha256(prev_hash "\n" canonical-v1))` for chains from before.
pub fn event_hash(
    key: Option<&ChainKey>,
    prev_hash: &str,
    chain_id: &str,
    chain_seq: i64,
    e: &AuditEvent,
) -> String {
    event_hash_with(&mut Vec::new(), key, prev_hash, chain_id, chain_seq, e)
}

/// [`event_hash`] with a scratch buffer for the canonical form, reused across a batch.
pub(crate) fn event_hash_with(
    scratch: &mut Vec<u8>,
    key: Option<&ChainKey>,
    prev_hash: &str,
    chain_id: &str,
    chain_seq: i64,
    e: &AuditEvent,
) -> String {
    scratch.clear();
    match key {
        Some(key) => {
            write_canonical(scratch, V2_TAG, chain_id, chain_seq, e);
            key.hash_bytes(prev_hash, scratch)
        }
        None => {
            write_canonical(scratch, V1_TAG, chain_id, chain_seq, e);
            let mut h = Sha256::new();
            h.update(prev_hash.as_bytes());
            h.update(b"\n");
            h.update(&scratch[..]);
            hex::encode(h.finalize())
        }
    }
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
    /// The id of the key the chain is keyed with; `None` for an unkeyed chain.
    pub key_id: Option<String>,
    /// Who moved the anchor (key id) and their tag over it.
    pub anchor_key_id: Option<String>,
    pub anchor_mac: Option<String>,
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
    /// A signed checkpoint names a chain that is gone.
    ChainMissing { chain_id: String, seq: i64 },
    /// A signed checkpoint saw the chain longer than it is now.
    Truncated {
        chain_id: String,
        head_seq: i64,
        checkpoint_seq: i64,
    },
    /// A signed checkpoint saw another hash at this position.
    Rewritten { chain_id: String, chain_seq: i64 },
    /// The prune anchor was moved by someone without the key.
    AnchorMoved { chain_id: String, anchor_seq: i64 },
    /// A chain without keyed hashes (allowed only with `--allow-unkeyed`).
    Unkeyed { chain_id: String },
    /// A chain keyed with a key that was not given.
    UnknownKey { chain_id: String, key_id: String },
    /// A checkpoint in the database whose signature does not verify.
    BadCheckpoint { why: String },
    /// The lookup table disagrees with the events (queries by subject or fingerprint
    /// would miss or invent events).
    Lookup { why: String },
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
            Finding::ChainMissing { chain_id, seq } => write!(
                f,
                "removed: chain {chain_id} is gone, though a signed checkpoint saw {seq} event(s) in it"
            ),
            Finding::Truncated {
                chain_id,
                head_seq,
                checkpoint_seq,
            } => write!(
                f,
                "truncated: chain {chain_id} ends at #{head_seq}, though a signed checkpoint saw it at #{checkpoint_seq}"
            ),
            Finding::Rewritten {
                chain_id,
                chain_seq,
            } => write!(
                f,
                "rewritten: event #{chain_seq} of chain {chain_id} does not have the hash a signed checkpoint saw"
            ),
            Finding::AnchorMoved {
                chain_id,
                anchor_seq,
            } => write!(
                f,
                "removed: the prune anchor of chain {chain_id} (#{anchor_seq}) was not set by `audit prune` with the key"
            ),
            Finding::Unkeyed { chain_id } => write!(
                f,
                "unkeyed: chain {chain_id} has no keyed hashes (written before keyed chains, or forged; `--allow-unkeyed {chain_id}` accepts it if you know it is old)"
            ),
            Finding::UnknownKey { chain_id, key_id } => write!(
                f,
                "unknown key: chain {chain_id} is keyed with key id {key_id}, which no given key has (pass the old AUDIT_HMAC_KEY with --previous-key-file, or the chain was tampered with)"
            ),
            Finding::BadCheckpoint { why } => {
                write!(f, "bad checkpoint in the database: {why}")
            }
            Finding::Lookup { why } => write!(f, "hidden from lookups: {why}"),
        }
    }
}

/// What an intact log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    pub events: u64,
    pub chains: u64,
    /// Signed checkpoints the chains were checked against.
    pub checkpoints: u64,
    /// The unkeyed chains accepted (named in `--allow-unkeyed`).
    pub unkeyed: Vec<String>,
}

/// What `audit verify` checks the chains against.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The chain keys (the current `AUDIT_HMAC_KEY`'s and any previous ones).
    pub keys: Keyring,
    /// Checkpoints whose signatures were verified.
    pub checkpoints: Vec<Checkpoint>,
    /// The chains written before keyed hashes that may be accepted, by id: anyone can
    /// compute an unkeyed chain, so each one is named, never accepted wholesale.
    pub allow_unkeyed: BTreeSet<String>,
}

struct Walk {
    chain_id: String,
    next_seq: i64,
    prev_hash: String,
    prev_event: Option<String>,
}

/// Checks a stream of events ordered by `(chain_id, chain_seq)` against the chains'
/// bookkeeping, their keys and signed checkpoints, in constant memory per chain.
pub struct Verifier {
    chains: BTreeMap<String, ChainRecord>,
    keys: BTreeMap<String, Option<ChainKey>>,
    /// Per chain, the hashes signed checkpoints saw at positions still stored.
    expected: BTreeMap<String, BTreeMap<i64, String>>,
    checkpoints: u64,
    seen: BTreeSet<String>,
    walk: Option<Walk>,
    events: u64,
}

impl Verifier {
    /// Checks what needs no event rows: every chain's key and prune anchor, and every
    /// checkpoint against the chain it names.
    pub fn new(
        chains: impl IntoIterator<Item = ChainRecord>,
        policy: &Policy,
    ) -> Result<Self, Finding> {
        let chains: BTreeMap<String, ChainRecord> = chains
            .into_iter()
            .map(|c| (c.chain_id.clone(), c))
            .collect();
        let mut keys = BTreeMap::new();
        for c in chains.values() {
            let key = match &c.key_id {
                Some(id) => {
                    Some(
                        policy
                            .keys
                            .get(id)
                            .cloned()
                            .ok_or_else(|| Finding::UnknownKey {
                                chain_id: c.chain_id.clone(),
                                key_id: id.clone(),
                            })?,
                    )
                }
                None if policy.allow_unkeyed.contains(&c.chain_id) => None,
                None => {
                    return Err(Finding::Unkeyed {
                        chain_id: c.chain_id.clone(),
                    })
                }
            };
            if c.anchor_seq > 0 {
                let moved = || Finding::AnchorMoved {
                    chain_id: c.chain_id.clone(),
                    anchor_seq: c.anchor_seq,
                };
                match (&c.anchor_key_id, &c.anchor_mac) {
                    (Some(id), Some(mac)) => {
                        let key = policy.keys.get(id).ok_or_else(|| Finding::UnknownKey {
                            chain_id: c.chain_id.clone(),
                            key_id: id.clone(),
                        })?;
                        if key.anchor_mac(&c.chain_id, c.anchor_seq, &c.anchor_hash) != *mac {
                            return Err(moved());
                        }
                    }
                    _ if key.is_none() => {} // an unkeyed chain pruned before anchor tags
                    _ => return Err(moved()),
                }
            }
            keys.insert(c.chain_id.clone(), key);
        }
        let mut expected: BTreeMap<String, BTreeMap<i64, String>> = BTreeMap::new();
        for cp in &policy.checkpoints {
            let Some(c) = chains.get(&cp.chain_id) else {
                if cp.seq == 0 {
                    continue;
                }
                return Err(Finding::ChainMissing {
                    chain_id: cp.chain_id.clone(),
                    seq: cp.seq,
                });
            };
            if cp.seq > c.head_seq {
                return Err(Finding::Truncated {
                    chain_id: c.chain_id.clone(),
                    head_seq: c.head_seq,
                    checkpoint_seq: cp.seq,
                });
            }
            let rewritten = || Finding::Rewritten {
                chain_id: c.chain_id.clone(),
                chain_seq: cp.seq,
            };
            if cp.seq == c.head_seq && cp.hash != c.head_hash {
                return Err(rewritten());
            }
            if cp.seq == c.anchor_seq && cp.hash != c.anchor_hash {
                return Err(rewritten());
            }
            if cp.seq > c.anchor_seq {
                let at = expected.entry(c.chain_id.clone()).or_default();
                if at
                    .insert(cp.seq, cp.hash.clone())
                    .is_some_and(|h| h != cp.hash)
                {
                    return Err(rewritten());
                }
            }
        }
        Ok(Self {
            chains,
            keys,
            expected,
            checkpoints: policy.checkpoints.len() as u64,
            seen: BTreeSet::new(),
            walk: None,
            events: 0,
        })
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
        let key = self.keys.get(&row.chain_id).and_then(Option::as_ref);
        if event_hash(
            key,
            &row.prev_hash,
            &row.chain_id,
            row.chain_seq,
            &row.event,
        ) != row.hash
        {
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
        let seen_signed = self
            .expected
            .get(&row.chain_id)
            .and_then(|at| at.get(&row.chain_seq));
        if seen_signed.is_some_and(|h| *h != row.hash) {
            return Err(Finding::Rewritten {
                chain_id: row.chain_id.clone(),
                chain_seq: row.chain_seq,
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
            checkpoints: self.checkpoints,
            unkeyed: self
                .keys
                .iter()
                .filter(|(_, key)| key.is_none())
                .map(|(id, _)| id.clone())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;
    use secrecy::SecretString;
    use serde_json::json;
    use time::OffsetDateTime;

    fn key() -> ChainKey {
        ChainKey::derive(&SecretString::from("fake-chain-key-for-tests"))
    }

    fn policy() -> Policy {
        Policy {
            keys: Keyring::new([key()]),
            ..Policy::default()
        }
    }

    fn checkpoint(seq: i64, hash: &str) -> Checkpoint {
        Checkpoint {
            chain_id: "c1".into(),
            seq,
            hash: hash.into(),
            time: OffsetDateTime::now_utc(),
        }
    }

    fn chain(n: usize) -> (ChainRecord, Vec<Linked>) {
        let mut prev = GENESIS.to_owned();
        let mut rows = Vec::new();
        for i in 1..=n as i64 {
            let mut e = AuditEvent::begin(&format!("req-{i}"), "base", "eu");
            e.outcome = Outcome::Issued;
            e.status = 200;
            let hash = event_hash(Some(&key()), &prev, "c1", i, &e);
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
            key_id: Some(key().id().to_owned()),
            anchor_key_id: None,
            anchor_mac: None,
        };
        (record, rows)
    }

    fn verify(record: &ChainRecord, rows: &[Linked]) -> Result<Intact, Finding> {
        verify_with(record, rows, &policy())
    }

    fn verify_with(
        record: &ChainRecord,
        rows: &[Linked],
        policy: &Policy,
    ) -> Result<Intact, Finding> {
        let mut v = Verifier::new([record.clone()], policy)?;
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
                chains: 1,
                checkpoints: 0,
                unkeyed: vec![],
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
        rows[1].hash = event_hash(Some(&key()), &rows[1].prev_hash, "c1", 2, &rows[1].event);
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
        forged.hash = event_hash(Some(&key()), &forged.prev_hash, "c1", 4, &forged.event);
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
        record.anchor_key_id = Some(key().id().to_owned());
        record.anchor_mac = Some(key().anchor_mac("c1", 2, &rows[1].hash));
        assert_eq!(verify(&record, &rows[2..]).map(|i| i.events), Ok(4));
    }

    /// Without the key, a removed event cannot be hidden by recomputing the rest.
    #[test]
    fn a_chain_recomputed_without_the_key_is_caught() {
        let (mut record, mut rows) = chain(5);
        rows.remove(2);
        let mut prev = GENESIS.to_owned();
        let other = ChainKey::derive(&SecretString::from("a-guess"));
        for (i, r) in rows.iter_mut().enumerate() {
            r.chain_seq = i as i64 + 1;
            r.prev_hash = prev.clone();
            r.hash = event_hash(Some(&other), &prev, "c1", r.chain_seq, &r.event);
            prev = r.hash.clone();
        }
        record.head_seq = 4;
        record.head_hash = prev.clone();
        let err = verify(&record, &rows).unwrap_err();
        assert!(
            matches!(err, Finding::Altered { chain_seq: 1, .. }),
            "{err}"
        );
        // Claiming the chain is an old unkeyed one does not help either.
        record.key_id = None;
        let err = verify(&record, &rows).unwrap_err();
        assert!(matches!(err, Finding::Unkeyed { .. }), "{err}");
    }

    #[test]
    fn checkpoints_catch_a_truncated_tail_a_missing_chain_and_a_rewrite() {
        let (record, rows) = chain(5);
        let signed_at_5 = Policy {
            checkpoints: vec![checkpoint(5, &rows[4].hash)],
            ..policy()
        };
        assert_eq!(
            verify_with(&record, &rows, &signed_at_5).map(|i| i.checkpoints),
            Ok(1)
        );

        let mut cut = record.clone();
        cut.head_seq = 3;
        cut.head_hash = rows[2].hash.clone();
        let err = verify_with(&cut, &rows[..3], &signed_at_5).unwrap_err();
        assert!(
            matches!(
                err,
                Finding::Truncated {
                    head_seq: 3,
                    checkpoint_seq: 5,
                    ..
                }
            ),
            "{err}"
        );

        let mut v = Verifier::new([], &signed_at_5);
        assert!(matches!(
            v.as_mut().err(),
            Some(Finding::ChainMissing { seq: 5, .. })
        ));

        let signed_at_3 = Policy {
            checkpoints: vec![checkpoint(3, &"0".repeat(64))],
            ..policy()
        };
        let err = verify_with(&record, &rows, &signed_at_3).unwrap_err();
        assert!(
            matches!(err, Finding::Rewritten { chain_seq: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_anchor_moved_without_the_key_is_caught() {
        let (mut record, rows) = chain(6);
        record.anchor_seq = 2;
        record.anchor_hash = rows[1].hash.clone();
        let err = verify(&record, &rows[2..]).unwrap_err();
        assert!(
            matches!(err, Finding::AnchorMoved { anchor_seq: 2, .. }),
            "{err}"
        );
        record.anchor_key_id = Some(key().id().to_owned());
        record.anchor_mac = Some(key().anchor_mac("c1", 1, &rows[0].hash));
        let err = verify(&record, &rows[2..]).unwrap_err();
        assert!(matches!(err, Finding::AnchorMoved { .. }), "{err}");
    }

    #[test]
    fn an_unkeyed_chain_verifies_only_when_allowed() {
        let (mut record, mut rows) = chain(3);
        let mut prev = GENESIS.to_owned();
        for r in rows.iter_mut() {
            r.prev_hash = prev.clone();
            r.hash = event_hash(None, &prev, "c1", r.chain_seq, &r.event);
            prev = r.hash.clone();
        }
        record.head_hash = prev;
        record.key_id = None;
        assert!(matches!(
            verify(&record, &rows),
            Err(Finding::Unkeyed { .. })
        ));
        let other = Policy {
            allow_unkeyed: ["c2".to_owned()].into(),
            ..policy()
        };
        assert!(matches!(
            verify_with(&record, &rows, &other),
            Err(Finding::Unkeyed { .. })
        ));
        let lenient = Policy {
            allow_unkeyed: ["c1".to_owned()].into(),
            ..policy()
        };
        assert_eq!(
            verify_with(&record, &rows, &lenient).map(|i| i.events),
            Ok(3)
        );
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
    fn canonical_is_byte_for_byte_the_json_array_it_was() {
        // The form as serde_json::Value built it before it was written out directly.
        fn by_value(tag: &str, chain_id: &str, chain_seq: i64, e: &AuditEvent) -> String {
            let mut items = vec![json!(tag), json!(chain_id), json!(chain_seq)];
            items.extend(e.values().iter().map(|v| match v {
                Value::Text(s) => json!(s),
                Value::Int(i) => json!(i),
                Value::Time(t) => json!(t.map(to_micros)),
            }));
            serde_json::Value::Array(items).to_string()
        }
        let mut e = AuditEvent::begin("req \"1\"\n\t\u{1}\u{7f}", "base", "eu");
        e.subject = Some("ålice \\ \u{2028} 😀 </script>".into());
        e.user_agent = Some(String::new());
        e.detail = Some("\u{0}\r\u{1f}".into());
        e.token_expires_at = Some(OffsetDateTime::UNIX_EPOCH - time::Duration::days(3));
        e.upstream_ms = Some(u64::MAX);
        e.duration_ms = 0;
        e.count = 10;
        for (tag, seq) in [(V1_TAG, 1), (V2_TAG, i64::MAX), (V2_TAG, -7), (V2_TAG, 0)] {
            assert_eq!(
                canonical_tagged(tag, "c\"1", seq, &e),
                by_value(tag, "c\"1", seq, &e)
            );
        }
        let key = key();
        assert_eq!(
            event_hash(Some(&key), GENESIS, "c1", 3, &e),
            key.hash(GENESIS, &by_value(V2_TAG, "c1", 3, &e))
        );
    }

    #[test]
    fn micros_round_trip() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let back = from_micros(to_micros(t));
        assert_eq!(to_micros(back), to_micros(t));
        assert_eq!(back.nanosecond() % 1000, 0);
    }
}

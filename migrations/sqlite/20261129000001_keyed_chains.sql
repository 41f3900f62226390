-- Tamper evidence that does not trust the database (see docs/audit.md).
-- key_id: the id of the AUDIT_HMAC_KEY-derived key the chain's hashes are keyed with
-- (NULL: a chain written before keyed hashes, plain SHA-256).
ALTER TABLE audit_chains ADD COLUMN key_id TEXT;
-- The prune anchor's tag (keyed like the chains, with key anchor_key_id), so only a
-- holder of the key can move the anchor.
ALTER TABLE audit_chains ADD COLUMN anchor_key_id TEXT;
ALTER TABLE audit_chains ADD COLUMN anchor_mac TEXT;

-- Signed checkpoints of chain heads (C2SP signed notes); the columns repeat what the
-- note says, for lookups; verify trusts only the signed note.
CREATE TABLE audit_checkpoints (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_id  TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    hash      TEXT    NOT NULL,
    time_us   INTEGER NOT NULL,
    note      TEXT    NOT NULL
);

CREATE INDEX audit_checkpoints_chain ON audit_checkpoints (chain_id, seq);

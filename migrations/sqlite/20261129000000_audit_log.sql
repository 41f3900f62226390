-- The audit log: one row per event, hash-chained per writer (see docs/audit.md).
-- Times are microseconds since the Unix epoch (UTC) so both backends hash the same bytes.

CREATE TABLE audit_chains (
    chain_id    TEXT    PRIMARY KEY NOT NULL,
    created_us  INTEGER NOT NULL,
    -- Last event of the chain, updated in the same transaction as the events.
    head_seq    INTEGER NOT NULL,
    head_hash   TEXT    NOT NULL,
    -- Events 1..=anchor_seq were pruned; anchor_hash is the hash of event anchor_seq.
    anchor_seq  INTEGER NOT NULL,
    anchor_hash TEXT    NOT NULL,
    pruned_us   INTEGER
);

CREATE TABLE audit_events (
    -- Global insertion order: the pagination cursor.
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT    NOT NULL UNIQUE,
    time_us           INTEGER NOT NULL,
    request_id        TEXT    NOT NULL,
    outcome           TEXT    NOT NULL,
    status            INTEGER NOT NULL,
    subject           TEXT,
    session_id        TEXT,
    client_ip         TEXT,
    user_agent        TEXT,
    origin            TEXT,
    scope             TEXT,
    tenant            TEXT    NOT NULL,
    environment       TEXT    NOT NULL,
    token_fingerprint TEXT,
    token_expires_us  INTEGER,
    upstream_ms       INTEGER,
    duration_ms       INTEGER NOT NULL,
    detail            TEXT,
    count             INTEGER NOT NULL DEFAULT 1,
    chain_id          TEXT    NOT NULL,
    chain_seq         INTEGER NOT NULL,
    prev_hash         TEXT    NOT NULL,
    hash              TEXT    NOT NULL,
    UNIQUE (chain_id, chain_seq)
);

CREATE INDEX audit_events_time ON audit_events (time_us);
CREATE INDEX audit_events_subject ON audit_events (subject, seq);
CREATE INDEX audit_events_fingerprint ON audit_events (token_fingerprint);

-- The audit log: one row per event, hash-chained per writer (see docs/audit.md).
-- Times are microseconds since the Unix epoch (UTC) so both backends hash the same bytes.

CREATE TABLE audit_chains (
    chain_id    TEXT    PRIMARY KEY NOT NULL,
    created_us  BIGINT  NOT NULL,
    -- Last event of the chain, updated in the same transaction as the events.
    head_seq    BIGINT  NOT NULL,
    head_hash   TEXT    NOT NULL,
    -- Events 1..=anchor_seq were pruned; anchor_hash is the hash of event anchor_seq.
    anchor_seq  BIGINT  NOT NULL,
    anchor_hash TEXT    NOT NULL,
    pruned_us   BIGINT
);

CREATE TABLE audit_events (
    -- Global insertion order: the pagination cursor.
    seq               BIGSERIAL PRIMARY KEY,
    id                TEXT    NOT NULL UNIQUE,
    time_us           BIGINT  NOT NULL,
    request_id        TEXT    NOT NULL,
    outcome           TEXT    NOT NULL,
    status            BIGINT  NOT NULL,
    subject           TEXT,
    session_id        TEXT,
    client_ip         TEXT,
    user_agent        TEXT,
    origin            TEXT,
    scope             TEXT,
    tenant            TEXT    NOT NULL,
    environment       TEXT    NOT NULL,
    token_fingerprint TEXT,
    token_expires_us  BIGINT,
    upstream_ms       BIGINT,
    duration_ms       BIGINT  NOT NULL,
    detail            TEXT,
    count             BIGINT  NOT NULL DEFAULT 1,
    chain_id          TEXT    NOT NULL,
    chain_seq         BIGINT  NOT NULL,
    prev_hash         TEXT    NOT NULL,
    hash              TEXT    NOT NULL,
    UNIQUE (chain_id, chain_seq)
);

CREATE INDEX audit_events_time ON audit_events (time_us);
CREATE INDEX audit_events_subject ON audit_events (subject, seq);
CREATE INDEX audit_events_fingerprint ON audit_events (token_fingerprint);

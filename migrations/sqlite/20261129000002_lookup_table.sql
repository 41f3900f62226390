-- Subject and token-fingerprint lookups move from indexes on audit_events to a side
-- table the group-commit writer fills in sorted batches (see docs/audit.md, "Lookups").
--
-- Why: both keys are random, so the two indexes dirtied about two random B-tree pages
-- per event in every commit, and SQLite writes each dirty page whole to the WAL; that
-- was most of the writer's time. Batched and sorted, a page takes many entries at once.
--
-- audit_lookup holds ('s:' || subject, seq) and ('f:' || the fingerprint's last 16 hex
-- digits, seq) for every event up to audit_lookup_state.indexed_seq (the full
-- fingerprint is compared on the event itself); queries read the table for those
-- and scan the few newer events directly, so no event is ever missing from a lookup.
CREATE TABLE audit_lookup (
    key TEXT    NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;

CREATE TABLE audit_lookup_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_seq INTEGER NOT NULL
);

INSERT INTO audit_lookup (key, seq)
    SELECT k, seq FROM (
        SELECT 's:' || subject AS k, seq FROM audit_events WHERE subject IS NOT NULL
        UNION ALL
        SELECT 'f:' || substr(token_fingerprint, -16) AS k, seq FROM audit_events WHERE token_fingerprint IS NOT NULL
    ) ORDER BY k, seq;

INSERT INTO audit_lookup_state (id, indexed_seq)
    VALUES (1, COALESCE((SELECT MAX(seq) FROM audit_events), 0));

DROP INDEX audit_events_subject;
DROP INDEX audit_events_fingerprint;

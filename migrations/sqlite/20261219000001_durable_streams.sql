-- Durable Streams (/ds/v1/stream/{name}, issue 21): a named stream of the protocol is a
-- spool stream (its appends are `message` events in `chunks`, its close the terminal
-- event) plus this row: its name, owner and fixed configuration.
CREATE TABLE ds_streams (
    name         TEXT PRIMARY KEY,
    owner        TEXT,
    stream_id    TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    ttl_seconds  INTEGER,                     -- sliding TTL (NULL: none)
    expires_at   INTEGER,                     -- absolute expiry, ms (NULL: none)
    created_at   INTEGER NOT NULL,
    spool_events INTEGER NOT NULL DEFAULT 0,  -- 1: its messages are spool events
    forked_from  TEXT,                        -- a fork: its source's name
    fork_seq     INTEGER,                     -- a fork: the source offset it diverges at
    fork_sub     INTEGER,                     -- a fork: its Stream-Fork-Sub-Offset
    soft_deleted INTEGER NOT NULL DEFAULT 0   -- 1: deleted, kept for its forks' reads
) WITHOUT ROWID;
CREATE INDEX ds_streams_by_stream ON ds_streams (stream_id);
CREATE INDEX ds_streams_by_source ON ds_streams (forked_from) WHERE forked_from IS NOT NULL;

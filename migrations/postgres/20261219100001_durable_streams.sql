-- Durable Streams (issue 21): see migrations/sqlite.
CREATE TABLE ds_streams (
    name         TEXT PRIMARY KEY,
    owner        TEXT,
    stream_id    TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    ttl_seconds  BIGINT,
    expires_at   BIGINT,
    created_at   BIGINT  NOT NULL,
    spool_events BOOLEAN NOT NULL DEFAULT FALSE,
    forked_from  TEXT,
    fork_seq     BIGINT,
    fork_sub     BIGINT,
    soft_deleted BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX ds_streams_by_stream ON ds_streams (stream_id);
CREATE INDEX ds_streams_by_source ON ds_streams (forked_from) WHERE forked_from IS NOT NULL;

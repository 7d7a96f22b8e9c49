-- Streams: one row per generation. Times are milliseconds since the Unix epoch.
CREATE TABLE streams (
    id                TEXT    PRIMARY KEY NOT NULL,
    owner             TEXT,                       -- API key identity; NULL until keys exist
    status            TEXT    NOT NULL,           -- queued | running | completed | cancelled | failed | interrupted
    model             TEXT    NOT NULL,
    params            TEXT    NOT NULL,           -- the request, as JSON
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    finish_reason     TEXT,                       -- stop | length | cancelled
    error_code        TEXT,
    error_message     TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    last_seq          INTEGER NOT NULL DEFAULT 0
);

-- Newest-first listing per owner, and the retention sweep.
CREATE INDEX streams_by_owner_created ON streams (owner, created_at DESC, id DESC);
CREATE INDEX streams_by_created ON streams (created_at);
-- Start-up recovery finds the streams a dead process left open.
CREATE INDEX streams_open ON streams (status) WHERE status IN ('queued', 'running');

-- Events: the persisted SSE events of every stream, numbered 1, 2, 3 … per stream.
CREATE TABLE events (
    stream_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    kind      TEXT    NOT NULL,                   -- start | token | done | error
    data      TEXT    NOT NULL,                   -- one line of JSON, sent verbatim
    PRIMARY KEY (stream_id, seq)
) WITHOUT ROWID;

-- Event log v2 (issue 16): a stream's events are stored as chunks, one row per stream
-- per commit (its new events, encoded by src/store/chunk.rs), keyed by an integer
-- stream key instead of the 24-character text id. The old `events` table is left in
-- place for the program to convert (src/store/upgrade.rs: it needs the chunk codec)
-- and drop, right after this migration, before anything is served.
--
-- Room for what comes next, so that no second migration is needed:
--   * new event kinds (tool calls, reasoning, refusals) are new kind numbers inside a
--     chunk, not new columns;
--   * Durable Streams: `content_type` (NULL: spool's own JSON events), `closed`, a
--     fork's parent (`fork_of`, `fork_seq`), and `producers` for idempotent producers.
--     Offsets that sort as strings are a fixed-width rendering of seq: nothing stored.

CREATE TABLE streams_v2 (
    key               INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, even after a delete
    id                TEXT    NOT NULL UNIQUE,
    owner             TEXT,                       -- API key identity; NULL without keys
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
    last_seq          INTEGER NOT NULL DEFAULT 0,
    content_type      TEXT,                       -- Durable Streams: the messages' type
    closed            INTEGER NOT NULL DEFAULT 0, -- Durable Streams: closed to appends
    fork_of           INTEGER,                    -- a fork: its parent's key …
    fork_seq          INTEGER                     -- … and the parent's last seq it shares
);
INSERT INTO streams_v2 (id, owner, status, model, params, created_at, started_at,
    finished_at, finish_reason, error_code, error_message, prompt_tokens,
    completion_tokens, last_seq)
SELECT id, owner, status, model, params, created_at, started_at, finished_at,
    finish_reason, error_code, error_message, prompt_tokens, completion_tokens, last_seq
FROM streams ORDER BY created_at, id;
DROP TABLE streams;
ALTER TABLE streams_v2 RENAME TO streams;
CREATE INDEX streams_by_owner_created ON streams (owner, created_at DESC, id DESC);
CREATE INDEX streams_by_created ON streams (created_at);
CREATE INDEX streams_open ON streams (status) WHERE status IN ('queued', 'running');

-- Chunks: the events one commit added to one stream, `first_seq` … `last_seq`, in
-- the chunk codec's bytes. A rowid table, so that rows are appended in commit order
-- to full pages; the index is the one range query of a read after a cursor:
-- `stream_key = ? AND last_seq > cursor`, in `last_seq` order.
CREATE TABLE chunks (
    stream_key INTEGER NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    data       BLOB    NOT NULL
);
CREATE UNIQUE INDEX chunks_by_stream ON chunks (stream_key, last_seq);

-- Durable Streams' idempotent producers: the last (epoch, seq) each producer
-- appended to a stream, and the stream seq that append ended at (a retry's answer).
CREATE TABLE producers (
    stream_key INTEGER NOT NULL,
    producer   TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    last_event INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (stream_key, producer)
) WITHOUT ROWID;

-- The PostgreSQL schema: the SQLite migrations' tables (see migrations/sqlite) in
-- PostgreSQL's types, plus what several nodes sharing one database need.
-- Times are milliseconds since the Unix epoch, as in SQLite, except the lease times
-- (the database's own clock, so nodes' clocks need not agree).

CREATE TABLE streams (
    id                TEXT    PRIMARY KEY,
    owner             TEXT,                       -- API key identity; NULL without keys
    status            TEXT    NOT NULL,           -- queued | running | completed | cancelled | failed | interrupted
    model             TEXT    NOT NULL,
    params            TEXT    NOT NULL,           -- the request, as JSON
    created_at        BIGINT  NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    finish_reason     TEXT,                       -- stop | length | cancelled
    error_code        TEXT,
    error_message     TEXT,
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    last_seq          BIGINT  NOT NULL DEFAULT 0,
    node              TEXT                        -- the node generating it (see nodes)
);
CREATE INDEX streams_by_owner_created ON streams (owner, created_at DESC, id DESC);
CREATE INDEX streams_by_created ON streams (created_at);
-- The lease sweeper finds the open streams of a dead node.
CREATE INDEX streams_open_by_node ON streams (node) WHERE status IN ('queued', 'running');

CREATE TABLE events (
    stream_id TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    kind      TEXT   NOT NULL,                    -- start | token | done | error
    data      TEXT   NOT NULL,                    -- one line of JSON, sent verbatim
    ids       BYTEA,                              -- token ids (little-endian u32s), see SQLite's
    PRIMARY KEY (stream_id, seq)
);

CREATE TABLE sessions (
    id         TEXT   PRIMARY KEY,
    owner      TEXT,
    model      TEXT,
    system     TEXT,
    metadata   TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_owner_created ON sessions (owner, created_at DESC, id DESC);

CREATE TABLE turns (
    session_id TEXT   NOT NULL,
    idx        BIGINT NOT NULL,
    role       TEXT   NOT NULL,
    content    TEXT,
    stream_id  TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, idx)
);
CREATE INDEX turns_by_stream ON turns (stream_id) WHERE stream_id IS NOT NULL;

CREATE TABLE settings (
    name  TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);

-- One row per live node: its lease, renewed by a heartbeat. A node whose lease has
-- expired is dead; one survivor ends (or continues) its streams and deletes the row.
CREATE TABLE nodes (
    id          TEXT        PRIMARY KEY,
    incarnation TEXT        NOT NULL,                 -- the process holding the lease
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);

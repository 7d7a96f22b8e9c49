-- Sessions: persisted multi-turn conversations. Each user turn runs an ordinary stream.
CREATE TABLE sessions (
    id         TEXT    PRIMARY KEY NOT NULL,
    owner      TEXT,                              -- API key identity; NULL until keys exist
    model      TEXT,                              -- default model of its turns (NULL: the server's)
    system     TEXT,                              -- system prompt (NULL: the model's default)
    metadata   TEXT,                              -- client metadata, as JSON
    created_at INTEGER NOT NULL
);
CREATE INDEX sessions_by_owner_created ON sessions (owner, created_at DESC, id DESC);

-- Turns, numbered 0, 1, 2 … per session: a user turn, then the assistant turn whose
-- stream answered it. An assistant turn's content is written in the transaction of its
-- stream's terminal event; until then (NULL) it is read from the stream's events.
CREATE TABLE turns (
    session_id TEXT    NOT NULL,
    idx        INTEGER NOT NULL,
    role       TEXT    NOT NULL,                  -- user | assistant
    content    TEXT,
    stream_id  TEXT,                              -- assistant turns
    created_at INTEGER NOT NULL,
    PRIMARY KEY (session_id, idx)
) WITHOUT ROWID;
CREATE INDEX turns_by_stream ON turns (stream_id) WHERE stream_id IS NOT NULL;

-- Durable Streams subscriptions (issue 21): see migrations/sqlite.
CREATE TABLE ds_subscriptions (
    id          TEXT PRIMARY KEY,
    owner       TEXT,
    config      TEXT   NOT NULL,
    config_hash TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    state       TEXT   NOT NULL
);

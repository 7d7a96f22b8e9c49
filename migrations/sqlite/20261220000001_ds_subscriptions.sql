-- Durable Streams subscriptions (`{prefix}/v1/stream/__ds/subscriptions/{id}`, issue 21):
-- a durable cursor over the streams a glob pattern or an explicit list names, that wakes
-- a webhook or a pull-wake worker when they have pending messages. `config` is the
-- normalized configuration as JSON (fixed at creation, `config_hash` its digest);
-- `state` is everything that changes (stream links and their acked offsets, the wake
-- generation, lease, holder and webhook retry schedule), as JSON, rewritten by the
-- writer on every change.
CREATE TABLE ds_subscriptions (
    id          TEXT PRIMARY KEY,
    owner       TEXT,
    config      TEXT    NOT NULL,
    config_hash TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    state       TEXT    NOT NULL
) WITHOUT ROWID;

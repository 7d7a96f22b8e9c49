-- A request that starts a stream may carry an Idempotency-Key: a retry with the same
-- key and owner within 24 h gets the same stream back instead of a second generation,
-- whichever node it reaches. `owner` is '' without API keys.
CREATE TABLE idempotency_keys (
    owner        TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,   -- SHA-256 of the validated request: a different body is a 409
    stream_id    TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,   -- ms since the Unix epoch
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created_at);

-- Server-wide values that must survive restarts and be shared by every process on this
-- database, e.g. the secret that signs read tokens.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

-- The backend's token ids behind a token event's text (little-endian u32s), for a
-- backend that can continue a stream after a crash by re-feeding them. NULL otherwise,
-- and on events whose tokens' text was not complete yet (their ids ride on a later event).
ALTER TABLE events ADD COLUMN ids BLOB;

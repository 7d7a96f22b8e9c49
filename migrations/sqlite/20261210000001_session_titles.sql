-- A session's title, set by the client (PATCH /v1/sessions/{id}); NULL: the title is its
-- first user message. Only the sessions table: the turns and the events are untouched.
ALTER TABLE sessions ADD COLUMN title TEXT;

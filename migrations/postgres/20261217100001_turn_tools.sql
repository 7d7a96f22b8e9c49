-- Agent loops over a session (issue 18): an assistant turn's tool calls and a `tool`
-- turn's results, as JSON (see migrations/sqlite). Only the turns table changes.
ALTER TABLE turns ADD COLUMN tool_calls TEXT;
ALTER TABLE turns ADD COLUMN messages TEXT;

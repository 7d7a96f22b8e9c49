-- Agent loops over a session (issue 18): a turn can be tool results, and an assistant
-- turn keeps the tool calls it made. Only the turns table changes.
--   tool_calls: an assistant turn's tool calls (JSON list in OpenAI's shape), written
--               with its stream's terminal event when the stream completed.
--   messages:   a `tool` turn's results (JSON list of tool messages); NULL for a user
--               turn, whose message is its content.
ALTER TABLE turns ADD COLUMN tool_calls TEXT;
ALTER TABLE turns ADD COLUMN messages TEXT;

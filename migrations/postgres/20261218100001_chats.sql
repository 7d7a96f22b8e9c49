-- Chats of the AI SDK's useChat (/v1/chats, issue 20): see migrations/sqlite.
ALTER TABLE sessions ADD COLUMN chat_id TEXT;
CREATE UNIQUE INDEX sessions_by_chat ON sessions (COALESCE(owner, ''), chat_id)
    WHERE chat_id IS NOT NULL;

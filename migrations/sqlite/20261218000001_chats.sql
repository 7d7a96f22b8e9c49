-- Chats of the AI SDK's useChat (/v1/chats, issue 20): a session can be the chat a
-- client named, one per owner and chat id (a NULL owner, no keys, counts as one).
ALTER TABLE sessions ADD COLUMN chat_id TEXT;
CREATE UNIQUE INDEX sessions_by_chat ON sessions (COALESCE(owner, ''), chat_id)
    WHERE chat_id IS NOT NULL;

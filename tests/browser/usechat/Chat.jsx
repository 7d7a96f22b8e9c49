// A chat page built on the AI SDK's useChat, unchanged but for spool's URL — the one
// docs/api.md shows (tests/browser/usechat.mjs bundles it and runs it in Chromium).
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";

export function Chat({ api, id, token, initialMessages }) {
  const { messages, sendMessage, status, stop } = useChat({
    id,
    messages: initialMessages,
    transport: new DefaultChatTransport({
      api, // "https://spool.example.com/v1/chats"
      headers: token ? { Authorization: `Bearer ${token}` } : undefined,
      body: { max_tokens: 80 },
    }),
    resume: true, // after a reload, the running answer continues
  });
  window.send = (text) => sendMessage({ text });
  return (
    <div>
      <ul id="messages">
        {messages.map((m) => (
          <li key={m.id} className={m.role} data-id={m.id}>
            {m.parts.filter((p) => p.type === "text").map((p) => p.text).join("")}
          </li>
        ))}
      </ul>
      <p id="status">{status}</p>
      <button onClick={() => stop()}>Stop</button>
    </div>
  );
}

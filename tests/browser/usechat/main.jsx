// Loads the chat's history from spool (GET /v1/chats/{id}), then mounts the chat.
import { createRoot } from "react-dom/client";
import { Chat } from "./Chat.jsx";

const params = new URLSearchParams(location.search);
const api = params.get("api");
const id = params.get("chat");
const token = params.get("token") || undefined;
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const history = await fetch(`${api}/${id}`, { headers });
const initialMessages = history.ok ? (await history.json()).messages : [];
createRoot(document.getElementById("root")).render(
  <Chat api={api} id={id} token={token} initialMessages={initialMessages} />,
);
document.body.dataset.ready = "true";

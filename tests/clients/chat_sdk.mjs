// The AI SDK's own chat client (`ai`'s AbstractChat with DefaultChatTransport, as
// `useChat` drives it) against spool's /v1/chats, unchanged but for the api URL.
//   node chat_sdk.mjs PROXY_BASE DIRECT_BASE
// PROXY_BASE is spool behind a proxy that cuts the first connection mid-answer.
// Prints one JSON line of what it saw; exits non-zero on any mismatch.
import { AbstractChat, DefaultChatTransport } from "ai";

const [proxy, direct] = process.argv.slice(2);
const fail = (why, extra) => {
  console.error(why, extra === undefined ? "" : JSON.stringify(extra, null, 1));
  process.exit(1);
};

// The smallest ChatState: an array (useChat keeps the same in React state).
class State {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(m) { this.messages = [...this.messages, m]; }
  popMessage() { this.messages = this.messages.slice(0, -1); }
  replaceMessage(i, m) { this.messages = this.messages.map((x, j) => (j === i ? m : x)); }
  snapshot(thing) { return structuredClone(thing); }
}

class Chat extends AbstractChat {
  constructor(options) { super({ ...options, state: new State() }); }
}

const text = (m) => m.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
const expected = (n) => Array.from({ length: n }, (_, i) => ` tok${i + 1}`).join("");
const wait = async (what, done, ms = 20000) => {
  const deadline = Date.now() + ms;
  while (!(await done())) {
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

const seen = {};

// 1. Cut mid-answer by the proxy, then resumeStream(): exactly the unbroken text, once.
{
  const chat = new Chat({
    id: `cut-${Date.now()}`,
    transport: new DefaultChatTransport({ api: `${proxy}/v1/chats`, body: { max_tokens: 60 } }),
  });
  await chat.sendMessage({ text: "Tell me a story" });
  seen.afterCut = { status: chat.status, text: text(chat.messages.at(-1)) };
  if (text(chat.messages.at(-1)).length >= expected(60).length) fail("the proxy cut nothing", seen);
  await chat.resumeStream();
  const last = chat.messages.at(-1);
  seen.resumed = { status: chat.status, messages: chat.messages.length };
  if (chat.messages.length !== 2) fail("resume added or lost a message", chat.messages);
  if (text(last) !== expected(60)) fail("the resumed text is not the unbroken answer", text(last));
  if (last.parts.filter((p) => p.type === "text").length !== 1) fail("text parts repeated", last.parts);
  // The server's history has the same answer, under the same message id.
  const history = await (await fetch(`${direct}/v1/chats/${chat.id}`)).json();
  if (history.messages.length !== 2 || history.messages[1].id !== last.id
      || text(history.messages[1]) !== text(last)) fail("history differs", history);

  // 2. Regenerate: the last answer is replaced, not added to.
  const before = last.id;
  await chat.regenerate({ body: { max_tokens: 5 } });
  if (chat.messages.length !== 2) fail("regenerate did not replace the answer", chat.messages);
  if (chat.messages[1].id === before) fail("regenerate kept the old answer's id", chat.messages);
  if (text(chat.messages[1]) !== expected(5)) fail("regenerated text", chat.messages[1]);
  const after = await (await fetch(`${direct}/v1/chats/${chat.id}`)).json();
  if (after.messages.length !== 2 || after.messages[1].id !== chat.messages[1].id) {
    fail("the server kept the old answer", after);
  }
  seen.regenerated = chat.messages[1].id;
}

// 3. Sending every message or only the last gives the same history on the server.
{
  const id = `whole-${Date.now()}`;
  const chat = new Chat({
    id,
    transport: new DefaultChatTransport({ api: `${direct}/v1/chats`, body: { max_tokens: 3 } }),
  });
  await chat.sendMessage({ text: "one" });
  await chat.sendMessage({ text: "two" });
  const only = new Chat({
    id,
    transport: new DefaultChatTransport({
      api: `${direct}/v1/chats`,
      body: { max_tokens: 3 },
      prepareSendMessagesRequest: ({ id, messages }) => ({ body: { id, messages: messages.slice(-1), max_tokens: 3 } }),
    }),
  });
  await only.sendMessage({ text: "three" });
  const history = await (await fetch(`${direct}/v1/chats/${id}`)).json();
  const roles = history.messages.map((m) => `${m.role}:${text(m)}`);
  const want = ["user:one", `assistant:${expected(3)}`, "user:two", `assistant:${expected(3)}`,
                "user:three", `assistant:${expected(3)}`];
  if (JSON.stringify(roles) !== JSON.stringify(want)) fail("history", roles);
}

// 4. A client abort is a disconnect (the answer goes on); the stop endpoint stops it.
{
  const chat = new Chat({
    id: `stop-${Date.now()}`,
    transport: new DefaultChatTransport({ api: `${direct}/v1/chats`, body: { max_tokens: 400 } }),
  });
  const sending = chat.sendMessage({ text: "go on and on" });
  await wait("the first text", () => chat.messages.length === 2 && text(chat.messages[1]).length > 0);
  await chat.stop();
  await sending;
  // Still running on the server: resumable.
  const r = await fetch(`${direct}/v1/chats/${chat.id}/stream`, { method: "GET" });
  if (r.status !== 200) fail(`after a client abort the answer should still run: ${r.status}`);
  await r.body.cancel();
  const stop = await fetch(`${direct}/v1/chats/${chat.id}/stop`, { method: "POST" });
  if (stop.status !== 202) fail(`stop: ${stop.status}`);
  await wait("the stopped answer's end", async () =>
    (await fetch(`${direct}/v1/chats/${chat.id}/stream`)).status === 204);
  const again = await fetch(`${direct}/v1/chats/${chat.id}/stop`, { method: "POST" });
  if (again.status !== 200) fail(`stop with nothing running: ${again.status}`);
  // resumeStream with nothing running: 204, the chat is ready and unchanged.
  const n = chat.messages.length;
  await chat.resumeStream();
  if (chat.status !== "ready" || chat.messages.length !== n) fail("resume of nothing", chat.status);
  const history = await (await fetch(`${direct}/v1/chats/${chat.id}`)).json();
  const answer = text(history.messages[1]);
  if (!answer.startsWith(" tok1") || answer.length >= expected(400).length) fail("stopped text", answer);
  seen.stopped = answer.split(" ").length - 1;
}

console.log(JSON.stringify(seen));

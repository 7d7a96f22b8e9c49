// spool's chat page. Talks only to the public API:
//   GET /v1/models, GET/POST /v1/sessions (the sidebar: the caller's conversations, from
//   the server), GET/PATCH/DELETE /v1/sessions/{id} (open, rename, delete),
//   POST /v1/sessions/{id}/messages, EventSource on /v1/streams/{id}/events (it
//   reconnects by itself with Last-Event-ID), and {"type":"cancel"} over /v1/ws for Stop.
// On a server with API keys (a /v1 call answers 401) it asks for a key, keeps it in
// localStorage and sends it as `Authorization: Bearer` on every fetch. EventSource and
// WebSocket cannot send that header: the EventSource opens with the stream's read_token
// (?token=, returned by the POST that started it), and Stop uses
// POST /v1/streams/{id}/cancel instead of the WebSocket.
// Model text is only ever set with textContent, never parsed as HTML: answers are
// rendered as Markdown by ./markdown.js, which builds DOM nodes.

import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const els = {
  sessions: $("sessions"), messages: $("messages"), notice: $("notice"), model: $("model"),
  maxTokens: $("max-tokens"), form: $("composer"), input: $("input"), send: $("send"),
  stop: $("stop"), newChat: $("new-chat"), toggle: $("toggle-sidebar"), sidebar: $("sidebar"),
  keyForm: $("key-form"), key: $("api-key"), keyMessage: $("key-message"),
};

const CURRENT_KEY = "spool.current";
const API_KEY = "spool.apiKey"; // the bearer key, on a server that wants one
const TOKENS_KEY = "spool.readTokens"; // [[streamId, read_token]], newest first
const TOKENS_KEPT = 50;

let sessionId = null;
let sessions = []; // the sidebar: the server's list, newest first
let moreAfter = null; // the last id of the list, while the server has more
let live = null; // the answer being streamed: {streamId, es, el}
let socket = null;
let apiKey = localStorage.getItem(API_KEY) || "";
let keyWanted = null; // while the key form is shown: resolves once a key is entered

// ---- small helpers --------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function notice(text) {
  els.notice.textContent = text || "";
  els.notice.hidden = !text;
}

// ---- the API key --------------------------------------------------------------------------

function authHeaders(headers = {}) {
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  return headers;
}

// Shows the key form; every caller that met a 401 waits for the same entry.
function askForKey(message) {
  if (keyWanted) return keyWanted;
  keyWanted = new Promise((resolve) => {
    els.keyMessage.textContent = message;
    els.key.value = "";
    els.keyForm.hidden = false;
    els.key.focus();
    const submit = (e) => {
      e.preventDefault();
      const key = els.key.value.trim();
      if (!key) return;
      els.keyForm.removeEventListener("submit", submit);
      els.keyForm.hidden = true;
      apiKey = key;
      localStorage.setItem(API_KEY, key);
      keyWanted = null;
      resolve();
    };
    els.keyForm.addEventListener("submit", submit);
  });
  return keyWanted;
}

// The read tokens of the streams this browser started, so that an answer still running
// after a reload can be followed (a token is valid for one stream, for an hour by default).
function readTokens() {
  try {
    const list = JSON.parse(localStorage.getItem(TOKENS_KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function keepReadToken(streamId, token) {
  if (!token) return;
  const list = [[streamId, token], ...readTokens().filter(([id]) => id !== streamId)];
  localStorage.setItem(TOKENS_KEY, JSON.stringify(list.slice(0, TOKENS_KEPT)));
}

function readToken(streamId) {
  return readTokens().find(([id]) => id === streamId)?.[1];
}

function eventsUrl(streamId) {
  const url = `/v1/streams/${encodeURIComponent(streamId)}/events`;
  const token = readToken(streamId);
  return token ? `${url}?token=${encodeURIComponent(token)}` : url;
}

async function api(method, path, body) {
  for (;;) {
    const init = { method, headers: authHeaders() };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      // Ask (again), then repeat the request with the key.
      await askForKey(apiKey ? "This API key was refused; enter another." : "This server needs an API key.");
      continue;
    }
    const data = r.status === 204 ? null : await r.json().catch(() => null);
    if (!r.ok) {
      const message = data?.error?.message || `${r.status} ${r.statusText}`;
      const err = new Error(message);
      err.status = r.status;
      throw err;
    }
    return data;
  }
}

function scrollDown() {
  els.messages.scrollTop = els.messages.scrollHeight;
}

// ---- the sidebar: the conversations on the server ------------------------------------

const TITLE_SHOWN = 48;

function shortTitle(title) {
  if (!title) return "New conversation";
  return title.length > TITLE_SHOWN ? `${title.slice(0, TITLE_SHOWN - 1)}…` : title;
}

// Loads the first page of the caller's sessions (again), or the next one with `more`.
async function loadSessions(more = false) {
  const query = more && moreAfter ? `&before=${encodeURIComponent(moreAfter)}` : "";
  try {
    const page = await api("GET", `/v1/sessions?limit=50${query}`);
    sessions = more ? [...sessions, ...page.data] : page.data;
    moreAfter = page.has_more ? page.last_id : null;
  } catch (err) {
    notice(`Could not list the conversations: ${err.message}`);
  }
  renderSessions();
}

function renderSessions() {
  els.sessions.replaceChildren();
  for (const s of sessions) {
    const li = el("li", "session-item");
    li.dataset.sessionId = s.id;
    const b = el("button", "session", shortTitle(s.title));
    b.type = "button";
    b.dataset.sessionId = s.id;
    b.title = `${s.title || s.id}\nlast active ${new Date(s.last_activity_at).toLocaleString()}`;
    if (s.id === sessionId) b.setAttribute("aria-current", "true");
    b.addEventListener("click", () => {
      openSession(s.id);
      document.body.classList.remove("sidebar-open");
    });
    const rename = el("button", "rename", "✎");
    rename.type = "button";
    rename.title = "Rename";
    rename.setAttribute("aria-label", "Rename");
    rename.addEventListener("click", () => startRename(li, s));
    const remove = el("button", "delete", "×");
    remove.type = "button";
    remove.title = "Delete";
    remove.setAttribute("aria-label", "Delete");
    remove.addEventListener("click", () => deleteSession(s));
    li.append(b, rename, remove);
    els.sessions.append(li);
  }
  if (moreAfter) {
    const li = el("li");
    const more = el("button", "more", "More…");
    more.type = "button";
    more.addEventListener("click", () => loadSessions(true));
    li.append(more);
    els.sessions.append(li);
  }
}

// Replaces the item with a title field: Enter saves (PATCH), Escape or leaving cancels.
function startRename(li, s) {
  const form = el("form", "rename-form");
  const input = el("input", "rename-input");
  input.value = s.title || "";
  input.maxLength = 200;
  input.setAttribute("aria-label", "New title");
  form.append(input);
  li.replaceChildren(form);
  input.focus();
  input.select();
  let done = false;
  const cancel = () => {
    if (!done) {
      done = true;
      renderSessions();
    }
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Escape") cancel();
  });
  input.addEventListener("blur", cancel);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const title = input.value.trim();
    done = true;
    try {
      const updated = await api("PATCH", `/v1/sessions/${encodeURIComponent(s.id)}`, {
        title: title || null,
      });
      sessions = sessions.map((x) => (x.id === s.id ? { ...x, ...updated } : x));
    } catch (err) {
      notice(`Could not rename: ${err.message}`);
    }
    renderSessions();
  });
}

async function deleteSession(s) {
  if (!window.confirm(`Delete "${shortTitle(s.title)}" and its answers?`)) return;
  try {
    await api("DELETE", `/v1/sessions/${encodeURIComponent(s.id)}`);
  } catch (err) {
    if (err.status !== 404) {
      notice(`Could not delete: ${err.message}`);
      return;
    }
  }
  sessions = sessions.filter((x) => x.id !== s.id);
  if (s.id === sessionId) newChat();
  else renderSessions();
}

// ---- rendering turns -------------------------------------------------------------------

function addUser(text) {
  const li = el("li", "msg user");
  li.append(el("div", "text", text));
  els.messages.append(li);
  scrollDown();
}

// A turn of tool results (an agent's answers to the model's tool calls), as text.
function addToolResults(results) {
  const li = el("li", "msg tool");
  for (const r of results) {
    const row = el("div", "tool-result");
    row.append(el("span", "tool-id", r.tool_call_id), el("code", "tool-output", r.content));
    li.append(row);
  }
  els.messages.append(li);
  scrollDown();
}

// A part of an answer other than its text, as the events and the stream's status carry
// it. Everything is set with textContent: nothing the model writes becomes HTML.
function addReasoning(li, text) {
  const box = li.querySelector(".reasoning");
  box.hidden = false;
  box.querySelector(".reasoning-text").textContent += text;
}

function addRefusal(li, text) {
  const box = li.querySelector(".refusal");
  box.hidden = false;
  box.textContent += text;
}

// One fragment of tool call number `index`: the first names it, the others add arguments.
function addToolCall(li, { index, name, arguments: args }) {
  const box = li.querySelector(".tool-calls");
  box.hidden = false;
  let call = box.querySelector(`[data-index="${Number(index)}"]`);
  if (!call) {
    call = el("div", "tool-call");
    call.dataset.index = String(Number(index));
    call.append(el("span", "tool-name", ""), el("code", "tool-args", ""));
    box.append(call);
  }
  if (name) call.querySelector(".tool-name").textContent = `${name}`;
  call.querySelector(".tool-args").textContent += args || "";
}

// The parts of a finished answer, from its stream's status.
function renderParts(li, status) {
  if (status.reasoning) addReasoning(li, status.reasoning);
  if (status.refusal) addRefusal(li, status.refusal);
  (status.tool_calls || []).forEach((c, index) =>
    addToolCall(li, { index, name: c.function.name, arguments: c.function.arguments }));
}

// An answer's text, rendered as Markdown (never as HTML); the raw text is kept on the node.
function renderAnswer(li, raw) {
  li.raw = raw;
  li.querySelector(".text").replaceChildren(renderMarkdown(raw));
}

function addAssistant(streamId) {
  const li = el("li", "msg assistant");
  li.dataset.streamId = streamId || "";
  li.dataset.state = "waiting";
  li.dataset.reconnects = "0";
  const text = el("div", "text");
  const marker = el("div", "marker");
  marker.hidden = true;
  const meta = el("div", "meta");
  // The answer's other parts, shown apart from its text: the model's reasoning (folded),
  // a refusal, and the tool calls it asks the client to run.
  const reasoning = el("details", "reasoning");
  reasoning.hidden = true;
  reasoning.append(el("summary", "", "Reasoning"), el("div", "reasoning-text"));
  const refusal = el("div", "refusal");
  refusal.hidden = true;
  const tools = el("div", "tool-calls");
  tools.hidden = true;
  li.append(reasoning, text, refusal, tools, marker, meta);
  els.messages.append(li);
  scrollDown();
  return li;
}

function setState(li, state, label) {
  li.dataset.state = state;
  const marker = li.querySelector(".marker");
  marker.textContent = label || "";
  marker.hidden = !label;
}

// ---- streaming one answer --------------------------------------------------------------

function follow(li, streamId, sentAt) {
  stopFollowing();
  const meta = li.querySelector(".meta");
  const stats = { sentAt, first: 0, tokens: 0 };
  const es = new EventSource(eventsUrl(streamId));
  live = { streamId, es, el: li };
  els.stop.disabled = false;
  setState(li, "streaming");

  const showStats = () => {
    const parts = [`${stats.tokens} tokens`];
    if (stats.first) {
      const secs = (performance.now() - stats.first) / 1000;
      if (stats.tokens > 1 && secs > 0) parts.push(`${((stats.tokens - 1) / secs).toFixed(1)} tokens/s`);
      if (stats.sentAt) parts.push(`first token ${Math.round(stats.first - stats.sentAt)} ms`);
    }
    meta.textContent = parts.join(" · ");
  };
  const seen = () => {
    if (li.dataset.state === "reconnecting") setState(li, "streaming");
  };
  const finish = (state, label) => {
    es.close();
    setState(li, state, label);
    if (live && live.es === es) {
      live = null;
      els.stop.disabled = true;
    }
  };

  es.addEventListener("start", seen);
  es.addEventListener("token", (e) => {
    seen();
    const { text: t } = JSON.parse(e.data);
    if (!stats.first) stats.first = performance.now();
    stats.tokens += 1;
    renderAnswer(li, (li.raw || "") + t);
    showStats();
    scrollDown();
  });
  for (const [kind, add] of [["reasoning", (d) => addReasoning(li, d.text)],
                             ["refusal", (d) => addRefusal(li, d.text)],
                             ["tool_call", (d) => addToolCall(li, d)]]) {
    es.addEventListener(kind, (e) => {
      seen();
      if (!stats.first) stats.first = performance.now();
      stats.tokens += 1;
      add(JSON.parse(e.data));
      showStats();
      scrollDown();
    });
  }
  es.addEventListener("done", (e) => {
    const { finish_reason: reason } = JSON.parse(e.data);
    showStats();
    const labels = {
      length: "stopped at the token limit",
      tool_calls: "asks for tool calls",
      content_filter: "stopped by the content filter",
    };
    if (reason === "cancelled") finish("cancelled", "cancelled");
    else finish("done", labels[reason] || "");
  });
  es.addEventListener("error", (e) => {
    if (e.data) {
      // The stream's own terminal error event.
      const err = JSON.parse(e.data);
      finish("error", `error: ${err.message || err.code}`);
    } else if (es.readyState === EventSource.CONNECTING) {
      // The connection dropped; the browser reconnects with Last-Event-ID.
      li.dataset.reconnects = String(Number(li.dataset.reconnects) + 1);
      setState(li, "reconnecting", "reconnecting…");
    } else {
      // Closed for good: 204 (the stream is over) or a refused request.
      finish(li.dataset.state === "streaming" ? "done" : "error", "connection closed");
    }
  });
}

function stopFollowing() {
  if (live) {
    live.es.close();
    live = null;
  }
  els.stop.disabled = true;
}

// ---- Stop: over the WebSocket, or with the key over HTTP -----------------------------------

function ws() {
  if (socket && socket.readyState <= WebSocket.OPEN) return socket;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/v1/ws`);
  socket.addEventListener("message", (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "error") notice(`Stop failed: ${msg.message}`);
  });
  return socket;
}

function cancel(streamId) {
  if (apiKey) {
    // A browser's WebSocket cannot carry the key.
    api("POST", `/v1/streams/${encodeURIComponent(streamId)}/cancel`).catch((err) => {
      notice(`Stop failed: ${err.message}`);
    });
    return;
  }
  const s = ws();
  const send = () => s.send(JSON.stringify({ type: "cancel", stream_id: streamId }));
  if (s.readyState === WebSocket.OPEN) send();
  else s.addEventListener("open", send, { once: true });
}

// ---- sessions -----------------------------------------------------------------------------

async function openSession(id) {
  stopFollowing();
  notice("");
  let session;
  try {
    session = await api("GET", `/v1/sessions/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err.status === 404) {
      sessions = sessions.filter((s) => s.id !== id);
      notice("That conversation no longer exists on the server.");
      newChat();
      return;
    }
    notice(`Could not load the conversation: ${err.message}`);
    return;
  }
  sessionId = id;
  localStorage.setItem(CURRENT_KEY, id);
  els.messages.replaceChildren();
  for (const turn of session.turns) {
    if (turn.role === "user") {
      addUser(turn.content);
    } else if (turn.role === "tool") {
      addToolResults(turn.tool_results || []);
    } else if (turn.role === "assistant") {
      const li = addAssistant(turn.stream_id);
      if ((turn.status === "running" || turn.status === "queued") && turn.stream_id) {
        if (apiKey && !readToken(turn.stream_id)) {
          // Started elsewhere: no read token here to follow it with; show the text so far.
          setState(li, "done", "still running: reopen the conversation later for the rest");
          api("GET", `/v1/streams/${encodeURIComponent(turn.stream_id)}`)
            .then((s) => renderAnswer(li, s.text))
            .catch(() => {});
        } else {
          // Still generating: follow it from the start.
          follow(li, turn.stream_id, 0);
        }
      } else {
        renderAnswer(li, turn.content);
        const label = turn.status === "completed" ? "" : turn.status || "";
        setState(li, turn.status === "cancelled" ? "cancelled" : "done", label);
        if (turn.stream_id) {
          // Reasoning and tool calls are not in the turn's text: the stream has them.
          api("GET", `/v1/streams/${encodeURIComponent(turn.stream_id)}`)
            .then((s) => renderParts(li, s))
            .catch(() => {});
        }
      }
    }
  }
  renderSessions();
}

// `/?stream=st_…`: one stream, whoever wrote it (an answer, or an app's own producer
// through Durable Streams), followed from its first event to its end.
function showStream(streamId) {
  stopFollowing();
  sessionId = null;
  els.messages.replaceChildren();
  const li = addAssistant(streamId);
  follow(li, streamId, 0);
}

function newChat() {
  stopFollowing();
  sessionId = null;
  localStorage.removeItem(CURRENT_KEY);
  els.messages.replaceChildren();
  notice("");
  renderSessions();
  els.input.focus();
}

async function ask(content) {
  const model = els.model.value || undefined;
  if (!sessionId) {
    const s = await api("POST", "/v1/sessions", model ? { model } : {});
    sessionId = s.id;
    localStorage.setItem(CURRENT_KEY, s.id);
    // Shown at once; the server's title (its first message) replaces it below.
    sessions = [{ ...s, title: content }, ...sessions.filter((x) => x.id !== s.id)];
    renderSessions();
  }
  const body = { content };
  if (model) body.model = model;
  const max = parseInt(els.maxTokens.value, 10);
  if (max > 0) body.max_tokens = max;
  const sentAt = performance.now();
  const stream = await api("POST", `/v1/sessions/${encodeURIComponent(sessionId)}/messages`, body);
  keepReadToken(stream.id, stream.read_token);
  addUser(content);
  follow(addAssistant(stream.id), stream.id, sentAt);
  loadSessions();
}

// ---- wiring ---------------------------------------------------------------------------------

els.form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const content = els.input.value.trim();
  if (!content) return;
  els.send.disabled = true;
  notice("");
  try {
    await ask(content);
    els.input.value = "";
  } catch (err) {
    notice(err.status === 409 ? "The previous answer is still running: wait or press Stop." : err.message);
  } finally {
    els.send.disabled = false;
  }
});

els.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    els.form.requestSubmit();
  }
});

els.stop.addEventListener("click", () => {
  if (live) cancel(live.streamId);
});

els.newChat.addEventListener("click", newChat);
els.toggle.addEventListener("click", () => document.body.classList.toggle("sidebar-open"));

async function start() {
  const params = new URLSearchParams(location.search);
  if (params.get("max_tokens")) els.maxTokens.value = params.get("max_tokens");
  try {
    const models = await api("GET", "/v1/models");
    for (const m of models.data) els.model.append(el("option", "", m.id));
    if (params.get("model")) els.model.value = params.get("model");
  } catch (err) {
    notice(`Could not list the models: ${err.message}`);
  }
  await loadSessions();
  const current = localStorage.getItem(CURRENT_KEY);
  const shown = params.get("stream");
  if (shown) showStream(shown);
  else if (current) await openSession(current);
  document.body.dataset.ready = "true";
}

start();

// The official `openai` npm SDK against spool, unchanged: a completion, a stream with
// usage, and resuming an SDK-started stream by its id. Exits non-zero on failure.
//
//     node tests/clients/openai_sdk.mjs http://127.0.0.1:8080

import assert from "node:assert/strict";
import OpenAI from "openai";

const base = process.argv[2].replace(/\/$/, "");
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
const expected = Array.from({ length: 8 }, (_, i) => ` tok${i + 1}`).join("");

const completion = await client.chat.completions.create({
  model: "mock",
  messages: [{ role: "user", content: "hi" }],
  max_tokens: 8,
});
assert.equal(completion.object, "chat.completion");
assert.equal(completion.choices[0].message.content, expected);
assert.equal(completion.choices[0].finish_reason, "length");
assert.equal(completion.usage.completion_tokens, 8);

const { data: stream, response } = await client.chat.completions
  .create({
    model: "mock",
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 8,
    stream: true,
    stream_options: { include_usage: true },
  })
  .withResponse();
const streamId = response.headers.get("x-stream-id");
let text = "";
let usage = null;
let finish = null;
for await (const chunk of stream) {
  assert.equal(chunk.id, streamId);
  if (chunk.choices.length) {
    text += chunk.choices[0].delta.content ?? "";
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  if (chunk.usage) usage = chunk.usage;
}
assert.equal(text, expected);
assert.equal(finish, "length");
assert.equal(usage.completion_tokens, 8);

// Resume the SDK's stream by id in the same format, after event 4.
const r = await fetch(`${base}/v1/streams/${streamId}/events?format=openai`, {
  headers: { "Last-Event-ID": "4" },
});
const body = await r.text();
let rest = "";
for (const line of body.split("\n")) {
  if (line.startsWith("data: ") && line !== "data: [DONE]") {
    for (const choice of JSON.parse(line.slice(6)).choices) rest += choice.delta.content ?? "";
  }
}
assert.ok(body.trimEnd().endsWith("data: [DONE]"));
assert.equal(rest, expected.slice(" tok1 tok2 tok3".length));

await assert.rejects(
  client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }),
  (e) => e.status === 404 && /model_not_found/.test(String(e.code ?? e.message)),
);

console.log("node openai SDK: ok");

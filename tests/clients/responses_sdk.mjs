// The official `openai` Node SDK's Responses API against spool, unchanged but for the
// base URL: a streamed create; a background response whose stream is dropped mid-answer
// and resumed with `retrieve(id, {stream: true, starting_after})`, its text equal to an
// unbroken read; polling to the end; cancel; input items; delete; errors as the SDK's
// exceptions; and, against spool in front of the test's upstream, the stream helper
// with function calls and a tool loop (the history sent, then `previous_response_id`).
// Exits non-zero on failure.
//
//     node tests/clients/responses_sdk.mjs http://127.0.0.1:8080 http://127.0.0.1:8081
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = (base) => new OpenAI({ baseURL: base.replace(/\/$/, "") + "/v1", apiKey: "unused", maxRetries: 0 });
const mock = client(process.argv[2]);
const agent = client(process.argv[3]);
const mockText = (n) => Array.from({ length: n }, (_, i) => ` tok${i + 1}`).join("");
const ended = (r) => !["queued", "in_progress"].includes(r.status);

async function wait(id, done, what) {
  const deadline = Date.now() + 20000;
  for (;;) {
    const r = await mock.responses.retrieve(id);
    if (done(r)) return r;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 20));
  }
}

// A streamed create.
const kinds = [];
let text = "";
let final;
for await (const event of await mock.responses.create({ model: "mock", input: "hi", max_output_tokens: 8, stream: true })) {
  kinds.push(event.type);
  if (event.type === "response.output_text.delta") text += event.delta;
  if (event.type === "response.incomplete") final = event.response;
}
assert.equal(kinds[0], "response.created");
assert.equal(kinds.at(-1), "response.incomplete");
assert.equal(text, mockText(8));
assert.equal(final.incomplete_details.reason, "max_output_tokens");
assert.equal(final.usage.output_tokens, 8);

// Background, streamed, dropped after three deltas, resumed after the last event seen.
const stream = await mock.responses.create({ model: "mock", input: "count", max_output_tokens: 60, background: true, stream: true });
let seen = "";
let last;
let id;
for await (const event of stream) {
  last = event.sequence_number;
  if (event.type === "response.created") id = event.response.id;
  if (event.type === "response.output_text.delta") {
    seen += event.delta;
    if (seen.split(" tok").length - 1 === 3) break; // leaving the loop aborts the request
  }
}
assert.equal(seen, mockText(3));
let rest = "";
const numbers = [];
for await (const event of await mock.responses.retrieve(id, { stream: true, starting_after: last })) {
  numbers.push(event.sequence_number);
  if (event.type === "response.output_text.delta") rest += event.delta;
}
assert.equal(numbers[0], last + 1);
numbers.forEach((n, i) => assert.equal(n, last + 1 + i));
let unbroken = "";
for await (const event of await mock.responses.retrieve(id, { stream: true })) {
  if (event.type === "response.output_text.delta") unbroken += event.delta;
}
assert.equal(seen + rest, unbroken);
assert.equal(unbroken, mockText(60));

// The stream helper, resuming an existing response by id.
let helped = "";
const resumedHelper = mock.responses.stream({ response_id: id, starting_after: last });
resumedHelper.on("response.output_text.delta", (e) => (helped += e.delta));
await resumedHelper.done();
assert.equal(helped, rest);

// Background, polled to its end; input items; delete.
let polled = await mock.responses.create({ model: "mock", input: [{ role: "user", content: "count" }], max_output_tokens: 10, background: true });
polled = await wait(polled.id, ended, "the end of a background response");
assert.equal(polled.status, "incomplete");
assert.equal(polled.output_text, mockText(10));
const items = await mock.responses.inputItems.list(polled.id);
assert.deepEqual(items.data.map((i) => i.type), ["message"]);
assert.equal(items.data[0].content[0].text, "count");
await mock.responses.delete(polled.id);
await assert.rejects(mock.responses.retrieve(polled.id), OpenAI.NotFoundError);

// Cancel.
const running = await mock.responses.create({ model: "mock", input: "long", max_output_tokens: 3000, background: true });
await wait(running.id, (r) => r.output_text !== "", "the first token");
const cancelled = await mock.responses.cancel(running.id);
assert.equal(cancelled.status, "cancelled");

// Errors.
await assert.rejects(
  mock.responses.create({ model: "mock", input: "hi", tools: [{ type: "function", name: "f", parameters: { type: "object" } }] }),
  (e) => e instanceof OpenAI.BadRequestError && e.code === "unsupported_parameter",
);
await assert.rejects(mock.responses.create({ model: "no-such-model", input: "hi" }), OpenAI.NotFoundError);

// Function calls through spool, with the stream helper, and the tool loop.
const tools = [
  { type: "function", name: "get_weather", description: "Weather in a city", strict: false,
    parameters: { type: "object", properties: { city: { type: "string" } } } },
  { type: "function", name: "get_time", strict: false, parameters: { type: "object", properties: { tz: { type: "string" } } } },
];
const question = [{ role: "user", content: "What is the weather and time in Oslo?" }];
const helper = agent.responses.stream({ model: "agent", input: question, tools });
let argumentDeltas = 0;
helper.on("response.function_call_arguments.delta", () => argumentDeltas++);
const first = await helper.finalResponse();
assert.ok(argumentDeltas > 2, `${argumentDeltas}`);
const calls = first.output.filter((o) => o.type === "function_call");
assert.deepEqual(calls.map((c) => c.name), ["get_weather", "get_time"]);
assert.deepEqual(JSON.parse(calls[0].arguments), { city: "Oslo", unit: "celsius" });
assert.equal(first.output_text, "Let me check.");
const results = { get_weather: '{"temp": 21}', get_time: '{"time": "14:05"}' };
const answer = await agent.responses.create({
  model: "agent",
  tools,
  input: [...question, ...calls, ...calls.map((c) => ({ type: "function_call_output", call_id: c.call_id, output: results[c.name] }))],
});
assert.equal(answer.status, "completed");
assert.equal(answer.output_text, "It is 21°C and sunny in Oslo.");
// The same loop on the server: only the outputs go up, with previous_response_id.
const chained = await agent.responses.create({
  model: "agent",
  tools,
  previous_response_id: first.id,
  input: calls.map((c) => ({ type: "function_call_output", call_id: c.call_id, output: results[c.name] })),
});
assert.equal(chained.previous_response_id, first.id);
assert.equal(chained.output_text, "It is 21°C and sunny in Oslo.");
console.log(`node responses (${id}): ok`);

// The official `openai` Node SDK's `runTools` against spool: it runs the two tools the
// model calls (in parallel, their arguments streamed in pieces), sends their results,
// and ends with the model's answer. Exits non-zero on failure.
//
//     node tests/clients/tools_sdk.mjs http://127.0.0.1:8080 http://127.0.0.1:9000/v1
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2].replace(/\/$/, "") + "/v1", apiKey: "unused", maxRetries: 0 });
const ran = [];
const tool = (name, description, properties, result) => ({
  type: "function",
  function: {
    name,
    description,
    parameters: { type: "object", properties, required: Object.keys(properties).slice(0, 1) },
    parse: JSON.parse,
    function: (args) => {
      ran.push([name, args]);
      return result;
    },
  },
});
const tools = [
  tool("get_weather", "Weather in a city", { city: { type: "string" }, unit: { type: "string" } }, { temp: 21 }),
  tool("get_time", "Time in a zone", { tz: { type: "string" } }, { time: "14:05" }),
];

for (const stream of [false, true]) {
  ran.length = 0;
  const runner = client.chat.completions.runTools({
    model: "agent",
    stream,
    messages: [{ role: "user", content: "What is the weather and time in Oslo?" }],
    tools,
  });
  const answer = await runner.finalContent();
  assert.equal(answer, "It is 21°C and sunny in Oslo.");
  assert.deepEqual(ran, [
    ["get_weather", { city: "Oslo", unit: "celsius" }],
    ["get_time", { tz: "Europe/Oslo" }],
  ]);
  const messages = runner.messages;
  const tools_messages = messages.filter((m) => m.role === "tool").map((m) => m.tool_call_id);
  assert.deepEqual(tools_messages, ["call_w", "call_t"]);
}
console.log("node runTools: ok");

// OpenAI's Responses API background mode against spool, with the official `openai` SDK
// (`npm install openai`) and nothing but the base URL changed: start a background
// response, stream it, and when the connection drops resume after the last event seen
// (`starting_after`). spool keeps the response resumable for as long as it keeps the
// stream, across restarts.
//
//     SPOOL_BASE=http://127.0.0.1:8080 node examples/responses_background.mjs "Tell me about rivers" 200
import OpenAI from "openai";

const base = (process.env.SPOOL_BASE ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.SPOOL_API_KEY ?? "unused", maxRetries: 0 });
const prompt = process.argv[2] ?? "Tell me about rivers";
const maxTokens = Number(process.argv[3] ?? 200);

// Background: the response runs to its end whether or not anyone reads it.
const response = await client.responses.create({
  model: process.env.SPOOL_MODEL ?? "mock",
  input: prompt,
  max_output_tokens: maxTokens,
  background: true,
});
let last;
let final;
let failures = 0;
while (!final) {
  const resume = last === undefined ? {} : { starting_after: last };
  try {
    for await (const event of await client.responses.retrieve(response.id, { stream: true, ...resume })) {
      last = event.sequence_number;
      failures = 0;
      if (event.type === "response.output_text.delta") process.stdout.write(event.delta);
      else if (["response.completed", "response.incomplete", "response.failed"].includes(event.type)) final = event.response;
    }
  } catch (e) {
    // The server said no (resuming would not help), or the connection keeps failing.
    if (e instanceof OpenAI.APIError && !(e instanceof OpenAI.APIConnectionError)) throw e;
    if (++failures > 5) throw e;
    process.stderr.write(`\n[resuming after event ${last}: ${e.name}]\n`);
    await new Promise((resolve) => setTimeout(resolve, 200 * failures));
  }
}
console.log(`\n[${final.status}, ${final.usage.output_tokens} tokens]`);

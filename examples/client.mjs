// A spool client for Node 18+ (no packages): start a stream, print its tokens as they
// come, and resume with Last-Event-ID if the connection drops.
//
//     node examples/client.mjs "Tell me about rivers"            # http://127.0.0.1:8080
//     SPOOL_BASE=http://host:8080 node examples/client.mjs "hi" 20

const base = (process.env.SPOOL_BASE ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const prompt = process.argv[2] ?? "Tell me about rivers";
const maxTokens = process.argv[3] ? Number(process.argv[3]) : undefined;

const started = await fetch(`${base}/v1/streams`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ prompt, max_tokens: maxTokens }),
});
if (!started.ok) throw new Error(`${started.status}: ${await started.text()}`);
const { id } = await started.json();

let last = 0;
for (;;) {
  try {
    const r = await fetch(`${base}/v1/streams/${id}/events`, {
      headers: last ? { "last-event-id": String(last) } : {},
    });
    if (r.status === 204) break; // we already had the last event
    const decoder = new TextDecoder();
    let buffer = "";
    for await (const bytes of r.body) {
      buffer += decoder.decode(bytes, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const field = (name) =>
          block.split("\n").find((l) => l.startsWith(`${name}: `))?.slice(name.length + 2);
        const data = field("data");
        if (data === undefined) continue;
        last = Number(field("id") ?? last);
        const event = field("event");
        const body = JSON.parse(data);
        if (event === "token") process.stdout.write(body.text);
        if (event === "done") {
          console.log(`\n[${body.finish_reason}, ${body.usage.completion_tokens} tokens]`);
          process.exit(0);
        }
        if (event === "error") {
          console.error(`\n[error ${body.code}: ${body.message}]`);
          process.exit(1);
        }
      }
    }
  } catch (e) {
    console.error(`\n[connection lost after event ${last} (${e.message}); resuming]`);
  }
  await new Promise((resolve) => setTimeout(resolve, 200));
}

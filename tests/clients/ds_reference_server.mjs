// The Durable Streams reference server (@durable-streams/server, file store), for the
// benchmark in examples/ds_bench.rs:  node ds_reference_server.mjs DATA_DIR
// Prints `listening on URL`, then serves until killed.
import { DurableStreamTestServer } from "@durable-streams/server";

const server = new DurableStreamTestServer({
  port: 0,
  host: "127.0.0.1",
  dataDir: process.argv[2],
  longPollTimeout: 20000,
});
const url = await server.start();
console.log(`listening on ${url}`);

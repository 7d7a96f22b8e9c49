// Durable Streams' own server conformance suite, run against spool by
// tests/api/durable.rs (the package's `--run` CLI finds no tests, so it is called from a
// test file): DS_BASE is the base URL the suite appends `/v1/stream/{name}` to.
import { runConformanceTests } from "@durable-streams/server-conformance-tests";

runConformanceTests({
  baseUrl: process.env.DS_BASE,
  longPollTimeoutMs: Number(process.env.DS_LONG_POLL_MS ?? 5000),
  // The reserved subscription APIs (webhooks, pull-wake) too.
  subscriptions: true,
});

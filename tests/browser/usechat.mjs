// A React page on the AI SDK's useChat (tests/browser/usechat/), bundled here with
// esbuild and served on its own origin, against spool's /v1/chats in headless Chromium:
// ask, reload the page mid-answer, and the answer must go on to its end with no text
// repeated or missing.
//   node usechat.mjs SRC_DIR API CHAT_ID TOKEN SCREENSHOT.png EXPECTED_TEXT
// (TOKEN may be "-": none.) Prints one JSON line on success; exits non-zero otherwise.
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { readFile } from "node:fs/promises";
import { build } from "esbuild";
import { chromium } from "playwright-core";

const [src, api, chatId, token, screenshot, expected] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const fail = (why) => {
  console.error(why);
  process.exit(1);
};

const bundle = await build({
  entryPoints: [path.join(src, "main.jsx")],
  bundle: true,
  write: false,
  format: "esm",
  target: "es2022",
  jsx: "automatic",
  nodePaths: [path.join(here, "node_modules")],
  define: { "process.env.NODE_ENV": '"production"' },
  logLevel: "error",
});
const js = bundle.outputFiles[0].text;
const html = await readFile(path.join(src, "index.html"), "utf8");
const server = http.createServer((req, res) => {
  if (req.url.startsWith("/app.js")) {
    res.writeHead(200, { "content-type": "text/javascript" }).end(js);
  } else {
    res.writeHead(200, { "content-type": "text/html" }).end(html);
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const page = await (await browser.newContext({ viewport: { width: 900, height: 700 } })).newPage();
page.setDefaultTimeout(20_000);
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => {
  // The reload cuts the answer's fetch: that one error is the point of the test.
  if (m.type() === "error" && !/net::|Failed to fetch|aborted|network/i.test(m.text())) {
    problems.push(`console: ${m.text()}`);
  }
});

const url = `${origin}/?api=${encodeURIComponent(api)}&chat=${chatId}${token === "-" ? "" : `&token=${token}`}`;
const open = async () => {
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.ready === "true");
};
const answer = () => page.$$eval("#messages li.assistant", (l) => l.map((li) => li.textContent));

await open();
// Not awaited: sendMessage resolves only when the answer has ended.
await page.evaluate(() => {
  window.send("Tell me a long story");
});
// Mid-answer: some text, not all of it.
await page.waitForFunction(() => {
  const a = document.querySelector("#messages li.assistant");
  return a && a.textContent.length > 20;
});
const before = (await answer())[0];
if (before.length >= expected.length) fail(`the answer ended before the reload: ${before.length} of ${expected.length}: ${JSON.stringify(before.slice(0, 80))}`);
await page.reload();
await page.waitForFunction(() => document.body.dataset.ready === "true");
// The page resumes on its own (resume: true) and the answer goes on to its end.
await page.waitForFunction(
  (n) => {
    const a = document.querySelectorAll("#messages li.assistant");
    return a.length > 0 && a[a.length - 1].textContent.length >= n
      && document.querySelector("#status").textContent === "ready";
  },
  expected.length,
);
const after = await answer();
const users = await page.$$eval("#messages li.user", (l) => l.map((li) => li.textContent));
await page.screenshot({ path: screenshot });
await browser.close();
server.close();
if (problems.length) fail(problems.join("\n"));
if (after.length !== 1 || users.length !== 1) fail(`messages after the reload: ${JSON.stringify({ users, after })}`);
if (after[0] !== expected) fail(`the text after the reload is not the answer:\n${after[0]}`);
if (!after[0].startsWith(before)) fail("the text before the reload is not where the answer began");
console.log(JSON.stringify({ ok: true, before: before.length, after: after[0].length }));

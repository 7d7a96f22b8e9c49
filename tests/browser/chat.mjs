// Drives spool's chat page in Debian's headless Chromium with playwright-core.
//   node chat.mjs CASE BASE_URL SCREENSHOT.png
// CASE: ask | resume | stop | reload | keys | eventsource. Prints one JSON line ({"ok":true,...}) on success;
// exits non-zero with a message otherwise. Run by tests/api/browser.rs, which starts the
// server (mock backend) and checks the result against the API.
import { chromium } from "playwright-core";

const [, , testCase, base, screenshot] = process.argv;
const TIMEOUT = 20_000;
// The key tests/api/browser.rs starts the server with for the `keys` case.
const KEY = "page-key-1";

const expected = (n) => Array.from({ length: n }, (_, i) => ` tok${i + 1}`).join("");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
  ],
});
const phone = testCase === "stop";
const context = await browser.newContext(
  phone ? { viewport: { width: 390, height: 760 }, deviceScaleFactor: 1 } : { viewport: { width: 1100, height: 700 } },
);
const page = await context.newPage();
page.setDefaultTimeout(TIMEOUT);
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => {
  // The keys case meets 401s on purpose: that is how the page learns it needs a key.
  const expected401 = testCase === "keys" && /status of 401/.test(m.text());
  if (m.type() === "error" && !expected401 && !/ERR_EMPTY_RESPONSE|ERR_CONNECTION|net::/.test(m.text())) {
    problems.push(`console: ${m.text()}`);
  }
});
page.on("response", (r) => {
  if (r.status() === 404) problems.push(`404: ${r.url()}`);
});

const last = ".msg.assistant:last-child"; // answers are always after their question

async function open(query = "") {
  await page.goto(`${base}/${query}`);
  await page.waitForFunction(() => document.body.dataset.ready === "true");
  await page.waitForFunction(() => document.querySelector("#model").options.length > 0);
}

async function ask(text, maxTokens) {
  if (maxTokens) await page.fill("#max-tokens", String(maxTokens));
  const before = await page.locator(".msg.assistant").count();
  await page.fill("#input", text);
  await page.click("#send");
  await page.waitForFunction((n) => document.querySelectorAll(".msg.assistant").length > n, before);
}

// Waits until the last answer is in a final state, returns {state, text, streamId, reconnects}.
async function finished() {
  await page.waitForFunction(
    (sel) => ["done", "cancelled", "error"].includes(document.querySelector(sel)?.dataset.state),
    last,
  );
  return page.$eval(last, (li) => ({
    state: li.dataset.state,
    text: li.querySelector(".text").textContent,
    streamId: li.dataset.streamId,
    reconnects: Number(li.dataset.reconnects),
    marker: li.querySelector(".marker").hidden ? "" : li.querySelector(".marker").textContent,
    meta: li.querySelector(".meta").textContent,
  }));
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const result = { ok: true, case: testCase };
try {
  if (testCase === "ask") {
    await open("?max_tokens=7");
    // Text is never parsed as HTML: a question full of markup shows as typed.
    const markup = `What is <b>spool</b>? <img src=x onerror="window.pwned=1">`;
    await ask(markup);
    const a = await finished();
    check(a.state === "done", `state ${a.state}`);
    check(a.text === expected(7), `text ${JSON.stringify(a.text)}`);
    check(/tokens\/s/.test(a.meta) && /first token \d+ ms/.test(a.meta), `meta ${a.meta}`);
    const user = await page.$eval(".msg.user .text", (t) => [t.textContent, t.children.length]);
    check(user[0] === markup && user[1] === 0, `user turn rendered as ${JSON.stringify(user)}`);
    check(await page.evaluate(() => !window.pwned && !document.querySelector(".messages img, .sessions img")), "markup ran");
    check((await page.textContent("#sessions .session")) === `${markup.slice(0, 47)}…`, "sidebar title");
    Object.assign(result, a);
  } else if (testCase === "resume") {
    // The test's proxy cuts the first events connection after some bytes.
    await open();
    // Record whether "reconnecting…" was ever visible, whatever its timing.
    await page.evaluate(() => {
      window.sawReconnecting = false;
      new MutationObserver(() => {
        const m = document.querySelector(".msg.assistant .marker");
        if (m && !m.hidden && m.textContent === "reconnecting…") window.sawReconnecting = true;
      }).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
    });
    await ask("Tell me a long story.", 60);
    await page.waitForFunction(() => window.sawReconnecting);
    await page.screenshot({ path: screenshot.replace(/\.png$/, "-reconnecting.png") });
    const a = await finished();
    check(a.state === "done", `state ${a.state}`);
    check(a.reconnects >= 1, "no reconnect happened");
    check(a.text === expected(60), `text ${JSON.stringify(a.text)}`);
    check(a.marker !== "reconnecting…", "the marker stayed");
    Object.assign(result, a);
  } else if (testCase === "stop") {
    await open("?max_tokens=2000");
    await ask("Count forever.");
    await page.waitForFunction((sel) => document.querySelector(sel).querySelector(".text").textContent.length > 40, last);
    check(!(await page.isDisabled("#stop")), "Stop is disabled while streaming");
    await page.click("#stop");
    const a = await finished();
    check(a.state === "cancelled" && a.marker === "cancelled", `state ${a.state} marker ${a.marker}`);
    check(await page.isDisabled("#stop"), "Stop still enabled");
    // The page is usable at phone width: nothing wider than the viewport.
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `page is ${overflow}px wider than the phone`);
    Object.assign(result, a);
  } else if (testCase === "reload") {
    await open("?max_tokens=3");
    await ask("First question");
    const first = await finished();
    await page.click("#new-chat");
    await ask("Second question");
    const second = await finished();
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    // The current conversation comes back, and both are in the sidebar.
    await page.waitForFunction(() => document.querySelectorAll("#sessions .session").length === 2);
    const titles = await page.$$eval("#sessions .session", (bs) => bs.map((b) => b.textContent));
    check(JSON.stringify(titles) === JSON.stringify(["Second question", "First question"]), `sidebar ${titles}`);
    await page.waitForFunction(() => document.querySelector(".msg.user .text")?.textContent === "Second question");
    await page.click("#sessions .session >> text=First question");
    await page.waitForFunction(() => document.querySelector(".msg.user .text")?.textContent === "First question");
    const turns = await page.$$eval(".msg", (ms) => ms.map((m) => [m.classList[1], m.querySelector(".text").textContent]));
    check(
      JSON.stringify(turns) === JSON.stringify([["user", "First question"], ["assistant", expected(3)]]),
      `turns ${JSON.stringify(turns)}`,
    );
    Object.assign(result, { first: first.streamId, second: second.streamId, titles });
  } else if (testCase === "keys") {
    // The server wants a key: the page asks for it inline, then works as without one.
    await page.goto(`${base}/?max_tokens=5`);
    await page.waitForSelector("#key-form", { state: "visible" });
    const asked = await page.textContent("#key-message");
    check(/needs an API key/.test(asked), `key prompt ${JSON.stringify(asked)}`);
    await page.screenshot({ path: screenshot.replace(/\.png$/, "-asking.png") });
    await page.fill("#api-key", KEY);
    await page.press("#api-key", "Enter");
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    await page.waitForFunction(() => document.querySelector("#model").options.length > 0);
    check(await page.isHidden("#key-form"), "the key form stayed");
    check((await page.evaluate(() => localStorage.getItem("spool.apiKey"))) === KEY, "key not kept");
    await ask("Hello with a key");
    const first = await finished();
    check(first.state === "done", `state ${first.state} ${first.marker}`);
    check(first.text === expected(5), `text ${JSON.stringify(first.text)}`);
    // Stop, with the key over HTTP (a browser's WebSocket cannot send it).
    await ask("Count forever.", 2000);
    await page.waitForFunction((sel) => document.querySelector(sel).querySelector(".text").textContent.length > 40, last);
    await page.click("#stop");
    const second = await finished();
    check(second.state === "cancelled" && second.marker === "cancelled", `state ${second.state} marker ${second.marker}`);
    // A reload asks nothing: the sidebar and the conversation load with the kept key.
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    check(await page.isHidden("#key-form"), "asked for the key again after a reload");
    await page.waitForFunction(() => document.querySelectorAll("#sessions .session").length === 1);
    await page.waitForFunction(() => document.querySelectorAll(".msg").length === 4);
    const turns = await page.$$eval(".msg", (ms) => ms.map((m) => m.querySelector(".text").textContent));
    check(turns[1] === expected(5) && turns[3] === second.text, `turns ${JSON.stringify(turns)}`);
    Object.assign(result, { first: first.streamId, second: second.streamId, stoppedText: second.text });
  } else if (testCase === "eventsource") {
    // examples/eventsource.html, as a user opens it.
    await page.goto(`${base}/examples/eventsource.html?max_tokens=5`);
    await page.click("#start");
    await page.waitForFunction(() => document.getElementById("status").textContent === "length");
    const text = await page.textContent("#out");
    check(text === expected(5), `example text ${JSON.stringify(text)}`);
  } else {
    throw new Error(`unknown case ${testCase}`);
  }
  check(problems.length === 0, problems.join("\n"));
  await page.screenshot({ path: screenshot });
  console.log(JSON.stringify(result));
} catch (err) {
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-failed.png") }).catch(() => {});
  console.error(`${testCase}: ${err.stack || err}\n${problems.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}

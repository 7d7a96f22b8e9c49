// Drives spool's chat page in Debian's headless Chromium with playwright-core.
//   node chat.mjs CASE BASE_URL SCREENSHOT.png
// CASE: ask | resume | stop | reload | keys | manage | markdown | parts | eventsource | stream (ARG: its id). Prints one JSON line ({"ok":true,...}) on success;
// exits non-zero with a message otherwise. Run by tests/api/browser.rs, which starts the
// server (mock backend) and checks the result against the API.
import { chromium } from "playwright-core";

const [, , testCase, base, screenshot, caseArg] = process.argv;
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
// The page asks before it deletes a conversation: yes.
page.on("dialog", (d) => d.accept());

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

const titles = () => page.$$eval("#sessions .session", (bs) => bs.map((b) => b.textContent));

async function waitTitles(expected) {
  try {
    await page.waitForFunction(
      (want) => JSON.stringify([...document.querySelectorAll("#sessions .session")].map((b) => b.textContent)) === want,
      JSON.stringify(expected),
    );
  } catch (err) {
    throw new Error(`sidebar ${JSON.stringify(await titles())}, wanted ${JSON.stringify(expected)}: ${err.message}`);
  }
}

// A conversation made outside this browser (over the API), its one turn answered.
async function madeElsewhere(content) {
  const post = (path, body) =>
    fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
      .then((r) => r.json());
  const session = await post("/v1/sessions", {});
  const stream = await post(`/v1/sessions/${session.id}/messages`, { content, max_tokens: 3 });
  for (const until = Date.now() + TIMEOUT; Date.now() < until; ) {
    const s = await fetch(`${base}/v1/streams/${stream.id}`).then((r) => r.json());
    if (s.status === "completed") return session.id;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("the conversation made over the API never finished");
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
  } else if (testCase === "manage") {
    // The sidebar is the server's list: a conversation this browser never saw is in it.
    const elsewhere = await madeElsewhere("Made elsewhere");
    await open("?max_tokens=3");
    await waitTitles(["Made elsewhere"]);
    await page.click("#sessions .session >> text=Made elsewhere");
    await page.waitForFunction(() => document.querySelectorAll(".msg").length === 2);
    await page.click("#new-chat");
    await ask("Second conversation");
    const second = await finished();
    await waitTitles(["Second conversation", "Made elsewhere"]);
    // Rename: the field, Enter; the server's title comes back.
    await page.click('#sessions .session-item:has-text("Made elsewhere") .rename');
    await page.fill("#sessions .rename-input", "Renamed trip");
    await page.press("#sessions .rename-input", "Enter");
    await waitTitles(["Second conversation", "Renamed trip"]);
    // Escape leaves a title as it was.
    await page.click('#sessions .session-item:has-text("Renamed trip") .rename');
    await page.fill("#sessions .rename-input", "Not this");
    await page.press("#sessions .rename-input", "Escape");
    await waitTitles(["Second conversation", "Renamed trip"]);
    // Delete the open one: the sidebar and the chat empty.
    await page.click('#sessions .session-item:has-text("Second conversation") .delete');
    await waitTitles(["Renamed trip"]);
    check((await page.locator(".msg").count()) === 0, "the deleted conversation is still shown");
    await page.screenshot({ path: screenshot.replace(/\.png$/, "-renamed.png") });
    // A reload lists what the server has.
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    await waitTitles(["Renamed trip"]);
    Object.assign(result, { renamed: elsewhere, deletedStream: second.streamId, titles: await titles() });
  } else if (testCase === "markdown") {
    await open("?max_tokens=4");
    // Answers go through the renderer: the mock's text is one paragraph, as it came.
    await ask("Hello");
    const a = await finished();
    check(a.text === expected(4), `text ${JSON.stringify(a.text)}`);
    check(await page.$eval(`${last} .text`, (t) => t.children.length === 1 && t.firstChild.tagName === "P"), "no paragraph");
    // The renderer itself, in this page (its CSP included), on hostile Markdown.
    const source = [
      "# Title with <b>tags</b>",
      "Some **bold**, *em*, _also em_, snake_case_name and `<code>`.",
      "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>",
      "",
      "```rust",
      "let x = 1;",
      "<b>not bold</b>",
      "```",
      "- one",
      "- two with [a link](https://example.com/docs)",
      "",
      "3. three",
      "4. four",
      "",
      "> quoted *text*",
      "",
      "[bad](javascript:alert(1)) and [data](data:text/html,hi) stay text.",
    ].join("\n");
    const r = await page.evaluate(async (src) => {
      const { renderMarkdown } = await import("/page/markdown.js");
      const li = document.createElement("li");
      li.className = "msg assistant";
      const div = document.createElement("div");
      div.className = "text";
      div.append(renderMarkdown(src));
      li.append(div);
      document.querySelector("#messages").append(li);
      const q = (sel) => div.querySelector(sel);
      const link = q("ul a");
      return {
        tags: [...div.children].map((c) => c.tagName),
        heading: q("h3")?.textContent,
        strong: q("p strong")?.textContent,
        ems: [...div.querySelectorAll(":scope > p em")].map((e) => e.textContent),
        inlineCode: q("p code")?.textContent,
        raw: [...div.querySelectorAll("p")].map((p) => p.textContent).join("|"),
        code: q("pre > code")?.textContent,
        lang: q("pre > code")?.dataset.lang,
        bullets: [...div.querySelectorAll("ul > li")].map((l) => l.textContent),
        ordered: [div.querySelectorAll("ol > li").length, q("ol")?.start],
        quote: q("blockquote em")?.textContent,
        link: link && { href: link.href, rel: link.rel, target: link.target, text: link.textContent },
        anchors: div.querySelectorAll("a").length,
        html: !!div.querySelector("img, script, b"),
        pwned: window.pwned ?? null,
      };
    }, source);
    check(JSON.stringify(r.tags) === JSON.stringify(["H3", "P", "PRE", "UL", "OL", "BLOCKQUOTE", "P"]), `blocks ${r.tags}`);
    check(r.heading === "Title with <b>tags</b>", `heading ${r.heading}`);
    check(r.strong === "bold" && JSON.stringify(r.ems) === JSON.stringify(["em", "also em"]), `emphasis ${r.strong} ${r.ems}`);
    check(r.inlineCode === "<code>", `inline code ${r.inlineCode}`);
    check(r.raw.includes("snake_case_name") && r.raw.includes('<img src=x onerror="window.pwned=1"><script>'), `text ${r.raw}`);
    check(r.code === "let x = 1;\n<b>not bold</b>" && r.lang === "rust", `code ${JSON.stringify(r.code)} ${r.lang}`);
    check(JSON.stringify(r.bullets) === JSON.stringify(["one", "two with a link"]), `list ${r.bullets}`);
    check(r.ordered[0] === 2 && r.ordered[1] === 3, `ordered ${r.ordered}`);
    check(r.quote === "text", `quote ${r.quote}`);
    check(r.link?.href === "https://example.com/docs" && /noopener/.test(r.link.rel) && r.link.target === "_blank", `link ${JSON.stringify(r.link)}`);
    check(r.anchors === 1 && r.raw.includes("[bad](javascript:alert(1))"), `unsafe links ${r.anchors}`);
    check(!r.html && r.pwned === null, "model HTML reached the DOM");
    Object.assign(result, { blocks: r.tags });
  } else if (testCase === "parts") {
    // In front of tests/api/tools.rs's upstream: an answer with reasoning and two tool
    // calls, shown apart from its text, live and again after a reload.
    await open();
    await ask("Weather and time in Oslo?");
    const a = await finished();
    const parts = () => page.$eval(last, (li) => ({
      reasoning: li.querySelector(".reasoning").hidden ? null : li.querySelector(".reasoning-text").textContent,
      calls: [...li.querySelectorAll(".tool-call")].map((c) => [c.querySelector(".tool-name").textContent, c.querySelector(".tool-args").textContent]),
      text: li.querySelector(".text").textContent,
      marker: li.querySelector(".marker").textContent,
    }));
    const live = await parts();
    check(a.state === "done", `state ${a.state}`);
    check(live.text === "Let me check.", `text ${JSON.stringify(live.text)}`);
    check(live.reasoning === "The user wants weather and time.", `reasoning ${JSON.stringify(live.reasoning)}`);
    check(JSON.stringify(live.calls) === JSON.stringify([["get_weather", '{"city":"Oslo","unit":"celsius"}'], ["get_time", '{"tz":"Europe/Oslo"}']]), `calls ${JSON.stringify(live.calls)}`);
    check(live.marker === "asks for tool calls", `marker ${live.marker}`);
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    await page.waitForFunction((sel) => document.querySelectorAll(`${sel} .tool-call`).length === 2, last);
    const again = await parts();
    check(JSON.stringify(again.calls) === JSON.stringify(live.calls) && again.reasoning === live.reasoning, `after reload ${JSON.stringify(again)}`);
    Object.assign(result, live);
  } else if (testCase === "stream") {
    // `/?stream=ID`: a stream an app's own producer wrote through Durable Streams.
    await open(`?stream=${caseArg}`);
    const a = await finished();
    check(a.state === "done", `state ${a.state}`);
    Object.assign(result, { text: a.text, streamId: a.streamId });
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

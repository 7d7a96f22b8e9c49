// A small, safe Markdown renderer for the chat page's answers.
//
// It builds DOM nodes and sets every piece of text with textContent: nothing the model
// writes is ever parsed as HTML (`<b>` shows as `<b>`). What it knows: fenced code
// blocks (```lang), inline `code`, headings (#), lists (-, *, + and 1.), block quotes
// (>), **strong**, *emphasis* / _emphasis_, and [links](https://…) — only http(s) and
// mailto URLs become links, opened in a new tab with rel="noopener noreferrer"; any
// other link stays text. Everything else is a paragraph whose line breaks are kept.
// An answer still streaming renders the same way (an unclosed fence is a code block).

const FENCE = /^\s{0,3}(```|~~~)\s*([\w+#.-]*)\s*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const SAFE_URL = /^(https?:\/\/|mailto:)/i;

// `code`, **strong**, __strong__, *em*, _em_ (not inside a word), [text](url).
const INLINE =
  /(`+)([^`]|[^`][\s\S]*?[^`])\1|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__|\*(?=[^\s*])([^*]*?[^\s*]|[^\s*])\*|(?<![\p{L}\p{N}])_(?=[^\s_])([^_]*?[^\s_]|[^\s_])_(?![\p{L}\p{N}])|\[([^\]\n]+)\]\(([^)\s]+)\)/gu;

function node(tag, text) {
  const el = document.createElement(tag);
  if (text !== undefined) el.textContent = text;
  return el;
}

// Appends `text`'s inline Markdown to `parent`.
export function renderInline(parent, text) {
  let at = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > at) parent.append(document.createTextNode(text.slice(at, m.index)));
    at = m.index + m[0].length;
    if (m[1] !== undefined) {
      parent.append(node("code", m[2]));
    } else if (m[3] !== undefined || m[4] !== undefined) {
      const strong = node("strong");
      renderInline(strong, m[3] ?? m[4]);
      parent.append(strong);
    } else if (m[5] !== undefined || m[6] !== undefined) {
      const em = node("em");
      renderInline(em, m[5] ?? m[6]);
      parent.append(em);
    } else if (SAFE_URL.test(m[8])) {
      const a = node("a", m[7]);
      a.href = m[8];
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      parent.append(a);
    } else {
      // Not a URL we link to (javascript:, data:, relative): the text as written.
      parent.append(document.createTextNode(m[0]));
    }
  }
  if (at < text.length) parent.append(document.createTextNode(text.slice(at)));
}

// `source` as a DocumentFragment of block elements.
export function renderMarkdown(source) {
  const out = document.createDocumentFragment();
  const lines = String(source).split("\n");
  let paragraph = null; // lines of the paragraph being collected
  let list = null; // {el, ordered}

  const endParagraph = () => {
    if (!paragraph) return;
    const p = node("p");
    renderInline(p, paragraph.join("\n"));
    out.append(p);
    paragraph = null;
  };
  const endList = () => {
    list = null;
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      endParagraph();
      endList();
      const body = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(m[1]); i++) body.push(lines[i]);
      const pre = node("pre");
      const code = node("code", body.join("\n"));
      if (m[2]) code.dataset.lang = m[2];
      pre.append(code);
      out.append(pre);
    } else if ((m = HEADING.exec(line))) {
      endParagraph();
      endList();
      // Answers are small: # is a small heading.
      const h = node(`h${Math.min(m[1].length + 2, 6)}`);
      renderInline(h, m[2]);
      out.append(h);
    } else if ((m = BULLET.exec(line)) || (m = NUMBERED.exec(line))) {
      endParagraph();
      const ordered = m.length === 3;
      if (!list || list.ordered !== ordered) {
        list = { el: node(ordered ? "ol" : "ul"), ordered };
        if (ordered && m[1] !== "1") list.el.start = Number(m[1]);
        out.append(list.el);
      }
      const li = node("li");
      renderInline(li, ordered ? m[2] : m[1]);
      list.el.append(li);
    } else if ((m = QUOTE.exec(line))) {
      endParagraph();
      endList();
      const quoted = [m[1]];
      while (i + 1 < lines.length && (m = QUOTE.exec(lines[i + 1]))) {
        quoted.push(m[1]);
        i++;
      }
      const q = node("blockquote");
      q.append(renderMarkdown(quoted.join("\n")));
      out.append(q);
    } else if (line.trim() === "") {
      endParagraph();
      endList();
    } else {
      endList();
      (paragraph ||= []).push(line);
    }
  }
  endParagraph();
  return out;
}

// Verbatim spans (OLMoTrace's way): the spans of a response found word for word in the training corpus, highlighted
// by their character offsets; for a selection, the documents containing its spans with every occurrence marked.
// Offsets in the documents are Python's (code points); they become UTF-16 indices here, so text with emoji lines up.
// Every piece of text becomes a text node (dom.js): corpus and model text never parse as HTML.
import { h } from "./dom.js";
import { fmt } from "./scale.js";

export const VERBATIM_SCHEMA = "attrilens/verbatim/v1";

const ASTRAL = /[\uD800-\uDFFF]/;

// Code-point offset -> UTF-16 index into `text` (identity when the text has no characters outside the BMP).
export function toUnits(text) {
  if (!ASTRAL.test(text)) return (cp) => cp;
  const units = [0];
  for (const ch of text) units.push(units[units.length - 1] + ch.length);
  return (cp) => units[Math.max(0, Math.min(cp, units.length - 1))];
}

// UTF-16 index -> code-point offset into `text` (what the Python side's character offsets count).
export function toCodePoints(text) {
  if (!ASTRAL.test(text)) return (u) => u;
  return (u) => Array.from(text.slice(0, u)).length;
}

const isInt = (v) => Number.isInteger(v);

// The document's spans, checked against its response: sorted, inside it, non-overlapping (others are dropped).
export function verbatimSpans(doc) {
  const target = String((doc && doc.target) ?? "");
  const n = Array.from(target).length;
  const raw = (doc && Array.isArray(doc.spans) ? doc.spans : [])
    .filter((sp) => sp && isInt(sp.start) && isInt(sp.end) && 0 <= sp.start && sp.start < sp.end && sp.end <= n)
    .sort((a, b) => a.start - b.start || a.end - b.end);
  const spans = [];
  let end = 0;
  for (const sp of raw) {
    if (sp.start < end) continue;
    spans.push({ ...sp, index: spans.length, documents: Array.isArray(sp.documents) ? sp.documents : [] });
    end = sp.end;
  }
  return spans;
}

// The spans (code points) overlapping a selection [start, end) in code points; all of them for no selection.
export function spansIn(spans, selection) {
  return selection ? spans.filter((sp) => sp.start < selection[1] && sp.end > selection[0]) : spans;
}

// Rarer spans (lower mean unigram log-probability) are shaded darker, as OLMoTrace ranks them.
function shades(spans) {
  const lps = spans.map((sp) => sp.unigram_logprob).filter((v) => typeof v === "number" && Number.isFinite(v));
  const lo = Math.min(...lps);
  const hi = Math.max(...lps);
  return (sp) => {
    const v = sp.unigram_logprob;
    if (typeof v !== "number" || !Number.isFinite(v) || !(hi > lo)) return 0.32;
    return (0.18 + 0.3 * (hi - v) / (hi - lo)).toFixed(3);
  };
}

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function spanTitle(sp) {
  return `verbatim in the corpus: ${plural(sp.count ?? 0, "occurrence", "occurrences")}` +
    ` · mean unigram log-prob ${fmt(sp.unigram_logprob, 2)} · click for its documents`;
}

// Wraps each span's characters in `container` (whose text content must be exactly `text`) in .al-vspan pieces, one
// per text node it crosses; a plain click on a piece picks the whole span. Returns {pieces, setActive(index|null)}.
export function highlightSpans(container, text, spans, onPick) {
  const pieces = spans.map(() => []);
  const none = { pieces, setActive() {} };
  if (container.textContent !== text || !spans.length) return none;
  const units = toUnits(text);
  const shade = shades(spans);
  const ranges = spans.map((sp) => [units(sp.start), units(sp.end), sp]);
  const walker = document.createTreeWalker(container, NodeFilter.SHOW_TEXT);
  const nodes = [];
  let pos = 0;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    nodes.push([node, pos]);
    pos += node.data.length;
  }
  for (const [node, off] of nodes) {
    const len = node.data.length;
    const cuts = ranges.map(([a, b, sp]) => [Math.max(a, off) - off, Math.min(b, off + len) - off, sp]).filter(([a, b]) => a < b);
    if (!cuts.length) continue;
    const frag = document.createDocumentFragment();
    let at = 0;
    for (const [a, b, sp] of cuts) {
      if (a > at) frag.appendChild(document.createTextNode(node.data.slice(at, a)));
      const piece = h("span", { class: "al-vspan", "data-span": sp.index, title: spanTitle(sp), style: { "--al-v": shade(sp) } },
        node.data.slice(a, b));
      piece.addEventListener("mouseenter", () => pieces[sp.index].forEach((p) => p.classList.add("al-vhover")));
      piece.addEventListener("mouseleave", () => pieces[sp.index].forEach((p) => p.classList.remove("al-vhover")));
      if (!pieces[sp.index].length) piece.classList.add("al-vfirst");  // where a span starts, next to another
      pieces[sp.index].push(piece);
      frag.appendChild(piece);
      at = b;
    }
    if (at < len) frag.appendChild(document.createTextNode(node.data.slice(at)));
    node.parentNode.replaceChild(frag, node);
  }
  // capture phase: the click picks the span before the word under it starts a word selection; shift+click still extends
  container.addEventListener("mousedown", (ev) => {
    const piece = ev.target && ev.target.closest ? ev.target.closest(".al-vspan") : null;
    if (!piece || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    ev.stopPropagation();
    onPick(spans[Number(piece.dataset.span)]);
  }, true);
  return {
    pieces,
    setActive(index) {
      pieces.forEach((ps, i) => ps.forEach((p) => p.classList.toggle("al-vactive", i === index)));
    },
  };
}

// One button per span, in reading order (keyboard access to what the highlight offers the mouse).
export function spanButtons(spans, onPick) {
  return h("ul", { class: "al-vchips", "aria-label": "verbatim spans" }, spans.map((sp) => {
    const b = h("button", { class: "al-vchip", type: "button", "data-span": sp.index, title: spanTitle(sp) },
      h("span", { class: "al-vchip-text" }, String(sp.text ?? "")), h("span", { class: "al-vchip-count" }, ` ×${sp.count ?? "?"}`));
    b.addEventListener("click", () => onPick(sp));
    return h("li", {}, b);
  }));
}

// The occurrences [start, end) (code points) that lie inside `text`, sorted, overlaps dropped: {a, b} in UTF-16, cp.
function occurrences(text, matches) {
  const n = Array.from(text).length;
  const units = toUnits(text);
  const marks = (Array.isArray(matches) ? matches : [])
    .filter((m) => Array.isArray(m) && m.length === 2 && isInt(m[0]) && isInt(m[1]) && 0 <= m[0] && m[0] < m[1] && m[1] <= n)
    .map(([a, b]) => ({ a: units(a), b: units(b), cp: [a, b] }))
    .sort((x, y) => x.a - y.a || x.b - y.b);
  const out = [];
  for (const m of marks) if (!out.length || m.a >= out[out.length - 1].b) out.push(m);
  return out;
}

// `text` with its occurrences marked; from..to (UTF-16) limits the part shown.
function markedText(text, marks, from = 0, to = text.length) {
  const out = [];
  let at = from;
  for (const m of marks) {
    if (m.a < at || m.a >= to) continue;  // outside the part shown
    if (m.a > at) out.push(text.slice(at, m.a));
    out.push(h("mark", { class: "al-vmark", "data-start": m.cp[0], "data-end": m.cp[1] }, text.slice(m.a, Math.min(m.b, to))));
    at = Math.min(m.b, to);
  }
  if (at < to) out.push(text.slice(at, to));
  return out;
}

const CONTEXT = 160;  // characters shown around each occurrence in a long document
const SHORT = 480;

// Windows of a long document around its occurrences ("…" between them), or the whole text when short.
function excerpt(text, marks) {
  if (text.length <= SHORT) return markedText(text, marks);
  const whole = (i) => (i > 0 && i < text.length && /[\uDC00-\uDFFF]/.test(text[i]) ? i - 1 : i);  // not inside an emoji
  const windows = [];
  for (const m of marks) {
    const w = [whole(Math.max(0, m.a - CONTEXT)), whole(Math.min(text.length, m.b + CONTEXT))];
    const last = windows[windows.length - 1];
    if (last && w[0] <= last[1]) last[1] = Math.max(last[1], w[1]); else windows.push(w);
  }
  if (!windows.length) windows.push([0, SHORT]);
  const out = [];
  for (const [a, b] of windows) {
    if (a > 0 || out.length) out.push(h("span", { class: "al-muted" }, "… "));
    out.push(...markedText(text, marks, a, b));
  }
  if (windows[windows.length - 1][1] < text.length) out.push(h("span", { class: "al-muted" }, " …"));
  return out;
}

function documentCard(d) {
  const text = String(d.text ?? "");
  const marks = occurrences(text, d.matches);
  const n = marks.length;
  const body = h("p", { class: "al-text al-vdoc-text" }, excerpt(text, marks));
  const long = text.length > SHORT;
  const toggle = long ? h("button", { class: "al-link", type: "button", "aria-expanded": "false" }, "show whole document") : null;
  if (toggle) {
    toggle.addEventListener("click", () => {
      const open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(open));
      toggle.textContent = open ? "show excerpt" : "show whole document";
      body.replaceChildren(...(open ? markedText(text, marks) : excerpt(text, marks)).map(
        (x) => (x instanceof Node ? x : document.createTextNode(x))));
    });
  }
  return h("li", { class: "al-vdoc", "data-id": String(d.id ?? "") },
    h("div", { class: "al-example-head" },
      h("span", { class: "al-rank" }, `#${d.rank ?? "?"}`),
      h("span", { class: "al-id", title: "document id" }, String(d.id ?? "")),
      h("span", { class: "al-vcount", title: "occurrences of the span in this document" }, `${n}× here`),
      h("span", { class: "al-score", title: `BM25 score against prompt + response: ${d.score}` }, `BM25 ${fmt(d.score, 2)}`)),
    body, toggle);
}

function spanBlock(sp, limit) {
  const docs = sp.documents;
  const shown = docs.slice(0, limit);
  return h("div", { class: "al-vblock", "data-span": sp.index },
    h("div", { class: "al-vhead" },
      h("q", { class: "al-text al-vquote" }, String(sp.text ?? "")),
      h("span", { class: "al-meta" }, ` ${plural(sp.count ?? 0, "occurrence", "occurrences")} in the corpus`,
        Array.isArray(sp.tokens) && sp.tokens.length === 2 ? ` · ${sp.tokens[1] - sp.tokens[0]} tokens` : "",
        ` · unigram log-prob ${fmt(sp.unigram_logprob, 2)}`)),
    shown.length ? h("ol", { class: "al-vdocs" }, shown.map(documentCard)) : h("p", { class: "al-muted" }, "no documents listed"),
    docs.length > shown.length
      ? h("p", { class: "al-muted" }, `${docs.length - shown.length} more: select this span to list them all.`) : null);
}

// "Stated in": the documents containing the spans that overlap `selection` (code points; null = the whole response).
export function statedIn(doc, spans, selection) {
  const hit = spansIn(spans, selection);
  const corpus = typeof doc.n_corpus_tokens === "number" ? ` in ${doc.n_corpus_tokens.toLocaleString("en")} corpus tokens` : "";
  let body;
  if (!spans.length) body = h("p", { class: "al-muted" }, `No span of at least ${doc.min_len ?? "?"} tokens of this response occurs verbatim${corpus}.`);
  else if (!hit.length) body = h("p", { class: "al-muted" }, "The selection is in no verbatim span. Click a highlighted span to see where it is stated.");
  else body = hit.map((sp) => spanBlock(sp, selection ? Infinity : 3));
  return h("div", { class: "al-col al-stated" },
    h("h3", { class: "al-h3" }, "Stated in: training documents containing it word for word (verbatim, BM25-ranked)"),
    body);
}

// The line under the response: how many spans were found, and a button per span.
export function spanSummary(doc, spans, onPick) {
  const corpus = typeof doc.n_corpus_tokens === "number" ? ` of ${doc.n_corpus_tokens.toLocaleString("en")} tokens` : "";
  return h("div", { class: "al-vsummary" },
    h("p", { class: "al-meta" }, spans.length
      ? `${plural(spans.length, "span", "spans")} of at least ${doc.min_len ?? "?"} tokens found verbatim in the training corpus${corpus}` +
        " (darker = rarer words). Click a highlighted span for the documents that state it."
      : `No span of at least ${doc.min_len ?? "?"} tokens occurs verbatim in the training corpus${corpus}.`),
    spans.length ? spanButtons(spans, onPick) : null);
}

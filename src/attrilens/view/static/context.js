// Context view: each context source shaded by its leave-one-out score (diverging scale, legend, numbers on hover),
// pruned sources marked; select a response span to attribute just that span.
import { h, clear, section, progress, notice } from "./dom.js";
import { diverging, divergingLegend, maxAbs, fmt } from "./scale.js";
import { selectableText } from "./select.js";

// The finest sources: a source that strictly contains another listed source is left out (its parts are shown).
function leaves(sources) {
  const sorted = [...sources].sort((a, b) => a.start - b.start || b.end - a.end);
  return sorted.filter((x) => !sorted.some((y) => y !== x && y.start >= x.start && y.end <= x.end && (y.end - y.start) < (x.end - x.start)));
}

// The context text: the document's own `context` when present, else the sources joined in order.
export function contextText(doc) {
  if (typeof doc.context === "string") return doc.context;
  let text = "";
  for (const src of leaves(doc.sources || [])) {
    const gap = src.start - text.length;  // the separator is not in the document: 2+ characters read as a paragraph break
    if (gap > 0) text += gap >= 2 ? "\n\n" + " ".repeat(gap - 2) : " ";
    text = text.slice(0, src.start) + (src.text ?? "");
  }
  return text;
}

function sourceLabel(src) {
  const score = src.score === null || src.score === undefined ? "pruned (not scored)" : `LOO score ${fmt(src.score, 4)}`;
  return `source #${src.index} · ${src.level ?? "span"} · chars ${src.start}–${src.end} · ${score}`;
}

function heatmap(doc, limit, info) {
  const ctx = contextText(doc);
  const parts = [];
  let pos = 0;
  for (const src of leaves(doc.sources || [])) {
    if (src.start > pos) parts.push(ctx.slice(pos, src.start));
    const pruned = src.score === null || src.score === undefined;
    const colours = diverging(src.score, limit);
    const label = sourceLabel(src);
    const node = h("span", {
      class: `al-src${pruned ? " al-pruned" : ""}`, tabindex: 0, title: label, "aria-label": label, "data-index": src.index,
      style: pruned ? {} : { background: colours.background, color: colours.color },
    }, src.text ?? ctx.slice(src.start, src.end));
    const show = () => { info.textContent = label; };
    node.addEventListener("mouseenter", show);
    node.addEventListener("focus", show);
    parts.push(node);
    pos = Math.max(pos, src.end);
  }
  if (pos < ctx.length) parts.push(ctx.slice(pos));
  return h("div", { class: "al-heat al-text" }, parts);
}

function table(doc) {
  const scored = (doc.sources || []).filter((x) => typeof x.score === "number").sort((a, b) => b.score - a.score);
  const pruned = (doc.sources || []).length - scored.length;
  return h("div", {},
    h("table", { class: "al-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "rank"), h("th", {}, "source"), h("th", {}, "level"), h("th", {}, "LOO score"), h("th", {}, "text"))),
      h("tbody", {}, scored.slice(0, 8).map((x, i) => h("tr", {},
        h("td", {}, String(i + 1)), h("td", {}, `#${x.index}`), h("td", {}, x.level ?? ""), h("td", { class: "al-num" }, fmt(x.score, 4)),
        h("td", { class: "al-text al-clip" }, x.text ?? ""))))),
    pruned ? h("p", { class: "al-muted" }, `${pruned} source(s) pruned by the method: shown hatched, not scored.`) : null);
}

export function contextView(doc, host) {
  const root = h("div", {});
  const response = doc.response ?? "";  // spans are offsets into the first response; a span's result names only its part
  const draw = (d, chosen) => {
    const limit = maxAbs((d.sources || []).map((x) => x.score));
    const info = h("p", { class: "al-hoverinfo", "aria-live": "polite" }, "Hover or focus a source to see its score.");
    const out = h("div", {});
    const sel = selectableText(response, async (span) => {
      if (host.notify) host.notify("context", { query: d.query ?? "", response, span });
      if (!host.canCompute) {
        clear(out).appendChild(notice("info", "Attributing a sub-span needs the model: open this with `attrilens serve --model DIR`."));
        return;
      }
      clear(out).appendChild(progress("Attributing the selected span…"));
      try {
        const next = await host.request("context", { context: contextText(d), query: d.query ?? "", response, span, method: d.method });
        if (next) clear(root).appendChild(draw(next, span));
      } catch (err) {
        clear(out).appendChild(notice("error", String(err.message || err)));
      }
    }, "response: select a span to attribute");
    if (chosen) sel.set(chosen);
    const cost = d.cost || {};
    return section("Context attribution",
      "Each source of the context shaded by how much removing it lowers the log-likelihood of the response (leave-one-out).",
      h("p", { class: "al-meta" }, `method ${d.method ?? "?"} · ${cost.forward_passes ?? "?"} forward passes · ${cost.tokens_computed ?? "?"} tokens · ${fmt(cost.seconds, 2)} s`),
      d.faithfulness && d.faithfulness.warning ? notice("error", `Unfaithful: ${d.faithfulness.warning}`) : null,
      d.approximation ? notice("info", `Approximate scores — ${d.approximation}.`) : null,
      h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Query"), h("p", { class: "al-text" }, d.query ?? "")),
      h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Response (select a span to attribute just that)"), sel.node, out),
      divergingLegend(limit, "LOO score (red: the response relies on it, blue: it works against the response)"),
      h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Context"), heatmap(d, limit, info), info),
      table(d));
  };
  root.appendChild(draw(doc));
  return root;
}

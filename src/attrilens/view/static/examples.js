// Training examples: ranked cards with score bars, expandable to neighbouring blocks; keywords; score histogram.
import { h, s, clear, notice } from "./dom.js";
import { diverging, fmt } from "./scale.js";
import { keywords } from "./text.js";

// Neighbouring blocks: the lens's `neighbours` (texts) or `neighbors` ({block, text}) of an example.
function neighbourList(items) {
  if (!items.length) return h("p", { class: "al-muted" }, "no neighbouring blocks in this document");
  return h("ol", { class: "al-neighbours" }, items.map((n) => h("li", {},
    typeof n === "string" ? null : h("span", { class: "al-muted" }, `block ${n.block ?? "?"} `),
    h("span", { class: "al-text" }, typeof n === "string" ? n : n.text ?? ""))));
}

const neighboursOf = (x) => (x ? (Array.isArray(x.neighbours) ? x.neighbours : Array.isArray(x.neighbors) ? x.neighbors : null) : null);

function exampleCard(item, limit, host) {
  const colours = diverging(item.score, limit);
  const width = Math.min(100, (Math.abs(item.score) / limit) * 100);
  const more = h("div", { class: "al-more", hidden: true });
  const toggle = h("button", { class: "al-link", type: "button", "aria-expanded": "false" }, "show neighbours");
  toggle.addEventListener("click", async () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    toggle.textContent = open ? "hide neighbours" : "show neighbours";
    more.hidden = !open;
    if (!open || more.dataset.loaded) return;
    more.dataset.loaded = "1";
    if (neighboursOf(item)) { more.appendChild(neighbourList(neighboursOf(item))); return; }
    if (!host.canCompute) { more.appendChild(notice("info", "Neighbouring blocks are not in this report; open it with `attrilens serve` to load them.")); return; }
    more.appendChild(h("span", { class: "al-muted" }, "loading…"));
    try {
      const got = await host.request("neighbors", { id: item.id, block: item.block });
      clear(more).appendChild(neighbourList(neighboursOf(got) || []));
    } catch (err) {
      clear(more).appendChild(notice("error", String(err.message || err)));
    }
  });
  return h("li", { class: "al-example", "data-id": String(item.id ?? "") },
    h("div", { class: "al-example-head" },
      h("span", { class: "al-rank" }, `#${item.rank ?? "?"}`),
      h("span", { class: "al-id", title: "example id and block" }, `${item.id ?? ""}${item.block !== undefined && item.block !== null ? ` · block ${item.block}` : ""}`),
      h("span", { class: "al-scorebar", title: `score ${item.score}` },
        h("span", { class: "al-scorefill", style: { width: `${width}%`, background: colours.background } })),
      h("span", { class: "al-score", title: `score ${item.score}` }, fmt(item.score))),
    h("p", { class: "al-text al-example-text" }, item.text ?? ""),
    toggle, more);
}

export function exampleList(title, items, limit, host, emptyText) {
  return h("div", { class: "al-col" },
    h("h3", { class: "al-h3" }, title),
    items && items.length
      ? h("ol", { class: "al-examples" }, items.map((it) => exampleCard(it, limit, host)))
      : h("p", { class: "al-muted" }, emptyText));
}

export function keywordChips(doc) {
  const pro = (doc.proponents || []).map((x) => x.text || "");
  const all = pro.concat((doc.opponents || []).map((x) => x.text || ""));
  const top = keywords(pro, all, 10);
  return h("div", { class: "al-keywords" },
    h("h3", { class: "al-h3" }, "Keywords of the top supporting examples (TF-IDF)"),
    top.length
      ? h("ul", { class: "al-chips" }, top.map((k) => h("li", { class: "al-chip", title: `tf-idf ${k.weight.toFixed(3)}` }, k.term)))
      : h("p", { class: "al-muted" }, "no examples"));
}

function bins(scores, n) {
  const lo = Math.min(...scores);
  const hi = Math.max(...scores);
  const width = hi > lo ? (hi - lo) / n : 1;
  const counts = new Array(n).fill(0);
  for (const v of scores) counts[Math.min(n - 1, Math.floor((v - lo) / width))] += 1;
  const edges = counts.map((_, i) => lo + i * width).concat([lo + n * width]);
  return { edges, counts };
}

// Histogram of the score distribution: the document's own `histogram` ({edges, counts}) over the whole corpus when
// the lens provides it, else the scores of the examples shown.
export function histogram(doc, limit) {
  const scores = (doc.proponents || []).concat(doc.opponents || []).map((x) => x.score).filter((v) => Number.isFinite(v));
  const hist = doc.histogram && Array.isArray(doc.histogram.counts) ? doc.histogram : scores.length ? bins(scores, 12) : null;
  const caption = doc.histogram ? "Score distribution over the corpus" : "Score distribution of the examples shown";
  if (!hist) return h("div", {}, h("h3", { class: "al-h3" }, caption), h("p", { class: "al-muted" }, "no scores"));
  const W = 320;
  const H = 110;
  const maxCount = Math.max(1, ...hist.counts);
  const bw = W / hist.counts.length;
  const bars = hist.counts.map((c, i) => {
    const mid = (hist.edges[i] + hist.edges[i + 1]) / 2;
    const bh = (c / maxCount) * (H - 20);
    return s("rect", { x: i * bw + 1, y: H - 16 - bh, width: Math.max(1, bw - 2), height: bh, fill: diverging(mid, limit).background, stroke: "#888", "stroke-width": 0.5 },
      s("title", {}, `${fmt(hist.edges[i])} … ${fmt(hist.edges[i + 1])}: ${c}`));
  });
  return h("figure", { class: "al-hist" },
    h("h3", { class: "al-h3" }, caption),
    s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": caption },
      bars,
      s("line", { x1: 0, x2: W, y1: H - 16, y2: H - 16, stroke: "#666" }),
      s("text", { x: 0, y: H - 3, "font-size": 10, fill: "#444" }, fmt(hist.edges[0])),
      s("text", { x: W, y: H - 3, "font-size": 10, fill: "#444", "text-anchor": "end" }, fmt(hist.edges[hist.edges.length - 1]))));
}

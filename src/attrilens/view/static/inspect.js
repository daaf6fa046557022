// Inspect view: a layer × position grid of the patchscope's decoded top token and its probability; click (or Enter)
// a cell for its full top-k and generation; arrow keys move between cells.
import { h, clear, section } from "./dom.js";
import { sequential, sequentialLegend, fmt } from "./scale.js";

// Whitespace made visible so a token like " the" or "\n" can be read in a cell.
export function showToken(tok) {
  return String(tok ?? "").replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥");
}

function details(cell, tokenLabel) {
  const top = cell.top_tokens || [];
  return h("div", { class: "al-cell-detail" },
    h("h3", { class: "al-h3" }, `Layer ${cell.layer}, position ${cell.position}${tokenLabel ? ` (${tokenLabel})` : ""} → target layer ${cell.target_layer ?? "?"}`),
    h("table", { class: "al-table al-topk" },
      h("thead", {}, h("tr", {}, h("th", {}, "rank"), h("th", {}, "token"), h("th", {}, "probability"))),
      h("tbody", {}, top.map((t, i) => h("tr", {},
        h("td", {}, String(i + 1)),
        h("td", { class: "al-mono" }, showToken(t.token)),
        h("td", {}, h("span", { class: "al-probbar" }, h("span", { class: "al-probfill", style: { width: `${Math.max(0, Math.min(1, t.prob)) * 100}%` } })), ` ${fmt(t.prob, 3)}`))))),
    h("div", { class: "al-label" }, "Generation from the patched target"),
    h("p", { class: "al-text al-mono al-generation" }, cell.generation ?? "—"));
}

export function inspectView(doc) {
  const cells = doc.cells || [];
  const srcTokens = (doc.source && doc.source.tokens) || [];
  const positions = [...new Set(cells.map((c) => c.position))];
  const targetLayers = [...new Set(cells.map((c) => c.target_layer))];
  const byTarget = positions.length === 1 && targetLayers.length > 1;  // an ℓ × ℓ* sweep at one position
  const colKey = byTarget ? "target_layer" : "position";
  const cols = [...new Set(cells.map((c) => c[colKey]))].sort((a, b) => a - b);
  const rows = [...new Set(cells.map((c) => c.layer))].sort((a, b) => b - a);
  const at = new Map(cells.map((c) => [`${c.layer}|${c[colKey]}`, c]));
  const tokenAt = (p) => (typeof p === "number" && srcTokens.length ? showToken(srcTokens.at(p)) : "");
  const panel = h("div", { class: "al-cell-panel", "aria-live": "polite" }, h("p", { class: "al-muted" }, "Click a cell to see its top tokens and generation."));
  const buttons = [];

  const grid = h("table", { class: "al-grid", role: "grid", "aria-label": `layer by ${byTarget ? "target layer" : "position"} grid` },
    h("thead", {}, h("tr", {}, h("th", { class: "al-corner" }, byTarget ? "layer \\ target layer" : "layer \\ position"),
      cols.map((c) => h("th", { class: "al-colhead", title: byTarget ? `target layer ${c}` : `position ${c}` },
        byTarget ? String(c) : h("span", {}, h("span", { class: "al-mono" }, tokenAt(c) || "·"), h("span", { class: "al-pos" }, String(c))))))),
    h("tbody", {}, rows.map((layer, ri) => h("tr", {}, h("th", { class: "al-rowhead" }, String(layer)), cols.map((col, ci) => {
      const cell = at.get(`${layer}|${col}`);
      if (!cell) return h("td", { class: "al-empty" });
      const top = (cell.top_tokens || [])[0] || { token: "", prob: 0 };
      const colours = sequential(top.prob);
      const tokenLabel = byTarget ? tokenAt(cell.position) : tokenAt(col);
      const label = `layer ${cell.layer}, position ${cell.position}${tokenLabel ? ` (${tokenLabel})` : ""}, target layer ${cell.target_layer}: top token ${showToken(top.token)} p=${fmt(top.prob, 3)}`;
      const btn = h("button", { class: "al-cell", type: "button", title: label, "aria-label": label, "data-layer": cell.layer, "data-position": cell.position,
        style: { background: colours.background, color: colours.color } }, showToken(top.token));
      btn.addEventListener("click", () => {
        for (const b of buttons.flat()) if (b) b.classList.remove("al-active");
        btn.classList.add("al-active");
        clear(panel).appendChild(details(cell, tokenAt(cell.position)));
      });
      btn.addEventListener("keydown", (ev) => {
        const move = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[ev.key];
        if (!move) return;
        ev.preventDefault();
        const next = (buttons[ri + move[0]] || [])[ci + move[1]];
        if (next) next.focus();
      });
      (buttons[ri] = buttons[ri] || [])[ci] = btn;
      return h("td", {}, btn);
    })))));

  const cost = doc.cost || {};
  return section("Inspect: what the hidden states encode",
    `Patchscope${doc.preset ? ` “${doc.preset}”` : ""}: each cell decodes the hidden state at (layer, position) of the source prompt through the target prompt.`,
    h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Source prompt"), h("p", { class: "al-text" }, (doc.source && doc.source.prompt) ?? "")),
    h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Target prompt"), h("p", { class: "al-text al-mono" }, (doc.target && doc.target.prompt) ?? "")),
    h("p", { class: "al-meta" }, `${cells.length} cells · ${cost.forward_passes ?? "?"} forward passes · ${fmt(cost.seconds, 2)} s`),
    sequentialLegend("Probability of the top token"),
    h("div", { class: "al-grid-wrap" }, grid),
    panel);
}

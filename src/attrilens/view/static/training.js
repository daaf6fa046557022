// Main view (training-data attribution): prompt and generated text with selectable tokens; for the selection, the top
// supporting and opposing training examples, their keywords and the score histogram; a box to compare with your text.
import { h, clear, section, progress, notice } from "./dom.js";
import { divergingLegend, maxAbs, fmt } from "./scale.js";
import { selectableText } from "./select.js";
import { exampleList, keywordChips, histogram } from "./examples.js";
import { verbatimSpans, highlightSpans, spanSummary, statedIn, toUnits, toCodePoints } from "./verbatim.js";
import { curationStore, curationPanel, markable } from "./curate.js";

export function spanOf(doc) {
  const sp = doc.span;
  return Array.isArray(sp) && sp.length === 2 ? [Number(sp[0]), Number(sp[1])] : null;
}

const sameSpan = (a, b) => (a === null && b === null) || (a !== null && b !== null && a[0] === b[0] && a[1] === b[1]);

// `stated`: the verbatim "stated in" column, shown beside the proponents ("influenced by"); `note` heads that column.
function results(doc, host, stated = null, note = null) {
  const scores = (doc.proponents || []).concat(doc.opponents || []).map((x) => x.score);
  const limit = maxAbs(scores);
  const cost = doc.cost || {};
  const pro = exampleList(stated ? "Influenced by: top supporting examples (gradient proponents)" : "Top supporting examples (proponents)",
    doc.proponents, limit, host, "none");
  const opp = exampleList("Top opposing examples (opponents)", doc.opponents, limit, host, "none");
  const store = curationStore(host);  // each example can be marked to remove or edit (curate.js)
  markable(pro, doc.proponents, store);
  markable(opp, doc.opponents, store);
  if (stated && note) pro.firstChild.after(notice("info", note));  // under the column's heading
  return h("div", { class: "al-results" },
    h("p", { class: "al-meta" },
      `method ${doc.method ?? "?"} · ${cost.examples_scored ?? "?"} examples scored in ${fmt(cost.seconds, 2)} s`,
      Array.isArray(doc.tokens) && doc.tokens.length ? ` · tokens ${doc.tokens.join(", ")}` : "",
      doc.generated_with ? ` · generated with: ${doc.generated_with}; scored as: ${doc.scored_as ?? "?"}` : ""),
    divergingLegend(limit, "Influence score (red supports the selection, blue opposes it)"),
    stated
      ? [h("div", { class: "al-two al-side" }, stated, h("div", { class: "al-influenced" }, pro)),
        h("div", { class: "al-two" }, opp, h("div", {}, keywordChips(doc), histogram(doc, limit)))]
      : [h("div", { class: "al-two" }, pro, opp), h("div", { class: "al-two" }, keywordChips(doc), histogram(doc, limit))]);
}

// docs: training documents sharing one prompt and target (e.g. precomputed selections); onCompare(doc) shows a comparison.
// extra.verbatim: the verbatim-spans document of the same generation, or null; extra.onAdd(doc) adds a fetched one.
export function trainingView(docs, host, onCompare, extra = {}) {
  const verbatim = extra.verbatim || null;
  const first = docs.find((d) => spanOf(d) === null) || docs[0] || null;
  const prompt = (first || verbatim).prompt ?? "";
  const target = (first || verbatim).target ?? "";
  const out = h("div", { class: "al-results-slot", "aria-live": "polite" });
  let requestNo = 0;
  // selections are UTF-16 ranges in the page and code-point ranges (Python's character offsets) in documents
  const toCp = toCodePoints(target);
  const units = toUnits(target);
  const spans = verbatim ? verbatimSpans(verbatim) : [];
  let marks = null;

  // with a verbatim document, a selection shows "stated in" (verbatim documents) beside "influenced by" (gradient)
  const stated = (span) => (verbatim ? statedIn(verbatim, spans, span) : null);
  const showDoc = (doc, span = null, note = null) => clear(out).appendChild(results(doc, host, stated(span), note));
  const showOnly = (span, node) => clear(out).appendChild(verbatim
    ? h("div", { class: "al-two al-side" }, stated(span),
      h("div", { class: "al-col al-influenced" }, h("h3", { class: "al-h3" }, "Influenced by: gradient proponents"), node))
    : node);
  const activate = (span) => { if (marks) marks.setActive(span ? spans.findIndex((sp) => sp.start === span[0] && sp.end === span[1]) : -1); };
  const initial = () => {
    activate(first ? spanOf(first) : null);
    if (first) showDoc(first, spanOf(first));
    else showOnly(null, notice("info", host.canCompute ? "Select words or a highlighted span to trace them through the gradient index."
      : "This report has no gradient (influence) result for this text. Open it with `attrilens serve --model DIR --index IDX` to trace selections."));
  };

  const select = async (range) => {
    const mine = ++requestNo;
    const span = range ? [toCp(range[0]), toCp(range[1])] : null;
    const shown = range ? target.slice(range[0], range[1]) : target;
    activate(span);
    if (host.notify) host.notify("trace", { prompt, target, span });
    const local = docs.find((d) => sameSpan(spanOf(d), span));
    if (!host.canCompute) {
      if (local) showDoc(local, span);
      else if (verbatim && first) showDoc(first, span, `No precomputed gradient result for “${shown}”: these are the whole text's. Open this report with \`attrilens serve --model DIR --index IDX\` to trace any selection.`);
      else showOnly(span, notice("info", `No precomputed examples for “${shown}”. Open this report with \`attrilens serve --model DIR --index IDX\` to trace any selection.`));
      return;
    }
    showOnly(span, progress("Tracing the selection through the training data…"));
    try {
      const doc = await host.request("trace", { prompt, target, span: span ?? null, top_k: ((first && first.proponents) || []).length || 10 });
      if (mine !== requestNo) return;
      if (doc) showDoc(doc, span); else if (local) showDoc(local, span);
    } catch (err) {
      if (mine === requestNo) showOnly(span, notice("error", String(err.message || err)));
    }
  };

  const sel = selectableText(target, select, "generated text: select words to trace");
  const pick = (sp) => { const range = [units(sp.start), units(sp.end)]; sel.set(range); select(range); };
  if (verbatim) marks = highlightSpans(sel.node, target, spans, pick);
  const reset = h("button", { class: "al-btn", type: "button" }, "whole text");
  reset.addEventListener("click", () => { sel.set(null); requestNo++; initial(); });
  const firstSpan = first ? spanOf(first) : null;
  sel.set(firstSpan && [units(firstSpan[0]), units(firstSpan[1])]);
  initial();
  // the web app started with --verbatim-index finds the text's verbatim spans on request
  const findOut = h("div", {});
  const find = !verbatim && host.canCompute && host.verbatim && extra.onAdd
    ? h("button", { class: "al-btn", type: "button" }, "find verbatim spans") : null;
  if (find) {
    find.addEventListener("click", async () => {
      find.disabled = true;
      clear(findOut).appendChild(progress("Looking for spans of the text in the training corpus…"));
      try {
        const doc = await host.request("verbatim", { prompt, target });
        clear(findOut);
        if (doc) extra.onAdd(doc);
      } catch (err) {
        clear(findOut).appendChild(notice("error", String(err.message || err)));
      } finally {
        find.disabled = false;
      }
    });
  }

  const userText = h("textarea", { class: "al-input", rows: 2, "aria-label": "your version of the text" });
  userText.value = target;
  const compareBtn = h("button", { class: "al-btn", type: "button" }, "compare");
  const compareOut = h("div", {});
  compareBtn.addEventListener("click", async () => {
    if (!host.canCompute) { clear(compareOut).appendChild(notice("info", "Comparing needs the model: open this with `attrilens serve`.")); return; }
    clear(compareOut).appendChild(progress("Tracing both versions…"));
    try {
      const doc = await host.request("compare", { prompt, model_text: target, user_text: userText.value });
      clear(compareOut);
      if (doc) onCompare(doc);
    } catch (err) {
      clear(compareOut).appendChild(notice("error", String(err.message || err)));
    }
  });

  return section("Training data behind the generation",
    verbatim
      ? "Select words, or click a highlighted span: the training documents that state it word for word show beside the training examples that influenced it."
      : "Select a word or drag across a span of the generated text to see which training examples support or oppose it.",
    h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Prompt"), h("p", { class: "al-text al-prompt" }, prompt)),
    h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Generated text ", reset, find), sel.node,
      verbatim ? spanSummary(verbatim, spans, pick) : null, findOut),
    out,
    // the index directory, where the documents say it: the exported `attrilens curate` command names it
    curationPanel(curationStore(host), (docs.find((d) => d.index) || {}).index || (host.choices && host.choices.index) || ""),
    h("details", { class: "al-compare-form" }, h("summary", {}, "Compare with your own text"),
      h("p", { class: "al-muted" }, "Edit the model's text; the comparison shows which training data support each version."),
      userText, compareBtn, compareOut));
}

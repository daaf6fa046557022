// Main view (training-data attribution): prompt and generated text with selectable tokens; for the selection, the top
// supporting and opposing training examples, their keywords and the score histogram; a box to compare with your text.
import { h, clear, section, progress, notice } from "./dom.js";
import { divergingLegend, maxAbs, fmt } from "./scale.js";
import { selectableText } from "./select.js";
import { exampleList, keywordChips, histogram } from "./examples.js";

export function spanOf(doc) {
  const sp = doc.span;
  return Array.isArray(sp) && sp.length === 2 ? [Number(sp[0]), Number(sp[1])] : null;
}

const sameSpan = (a, b) => (a === null && b === null) || (a !== null && b !== null && a[0] === b[0] && a[1] === b[1]);

function results(doc, host) {
  const scores = (doc.proponents || []).concat(doc.opponents || []).map((x) => x.score);
  const limit = maxAbs(scores);
  const cost = doc.cost || {};
  return h("div", { class: "al-results" },
    h("p", { class: "al-meta" },
      `method ${doc.method ?? "?"} · ${cost.examples_scored ?? "?"} examples scored in ${fmt(cost.seconds, 2)} s`,
      Array.isArray(doc.tokens) && doc.tokens.length ? ` · tokens ${doc.tokens.join(", ")}` : ""),
    divergingLegend(limit, "Influence score (red supports the selection, blue opposes it)"),
    h("div", { class: "al-two" },
      exampleList("Top supporting examples (proponents)", doc.proponents, limit, host, "none"),
      exampleList("Top opposing examples (opponents)", doc.opponents, limit, host, "none")),
    h("div", { class: "al-two" }, keywordChips(doc), histogram(doc, limit)));
}

// docs: training documents sharing one prompt and target (e.g. precomputed selections); onCompare(doc) shows a comparison.
export function trainingView(docs, host, onCompare) {
  const first = docs.find((d) => spanOf(d) === null) || docs[0];
  const prompt = first.prompt ?? "";
  const target = first.target ?? "";
  const out = h("div", { class: "al-results-slot", "aria-live": "polite" });
  let requestNo = 0;

  const showDoc = (doc) => clear(out).appendChild(results(doc, host));

  const select = async (span) => {
    const mine = ++requestNo;
    if (host.notify) host.notify("trace", { prompt, target, span });
    const local = docs.find((d) => sameSpan(spanOf(d), span));
    if (!host.canCompute) {
      if (local) showDoc(local);
      else clear(out).appendChild(notice("info", `No precomputed examples for “${target.slice(span[0], span[1])}”. Open this report with \`attrilens serve --model DIR --index IDX\` to trace any selection.`));
      return;
    }
    clear(out).appendChild(progress("Tracing the selection through the training data…"));
    try {
      const doc = await host.request("trace", { prompt, target, span: span ?? null, top_k: (first.proponents || []).length || 10 });
      if (mine !== requestNo) return;
      if (doc) showDoc(doc); else if (local) showDoc(local);
    } catch (err) {
      if (mine === requestNo) clear(out).appendChild(notice("error", String(err.message || err)));
    }
  };

  const sel = selectableText(target, select, "generated text: select words to trace");
  const reset = h("button", { class: "al-btn", type: "button" }, "whole text");
  reset.addEventListener("click", () => { sel.set(null); requestNo++; showDoc(first); });
  sel.set(spanOf(first));
  showDoc(first);

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
    "Select a word or drag across a span of the generated text to see which training examples support or oppose it.",
    h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Prompt"), h("p", { class: "al-text al-prompt" }, prompt)),
    h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Generated text ", reset), sel.node),
    out,
    h("details", { class: "al-compare-form" }, h("summary", {}, "Compare with your own text"),
      h("p", { class: "al-muted" }, "Edit the model's text; the comparison shows which training data support each version."),
      userText, compareBtn, compareOut));
}

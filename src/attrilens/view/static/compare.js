// Comparison view: the model's text and the user's text side by side with a word-level diff, and the training examples
// supporting each version's changed words on one shared colour scale.
import { h, section } from "./dom.js";
import { divergingLegend, maxAbs } from "./scale.js";
import { diffWords } from "./text.js";
import { exampleList } from "./examples.js";

function diffSide(ops, side) {
  const changed = side === "a" ? "del" : "add";
  const parts = [];
  for (const o of ops) {
    const w = o[side];
    if (!w) continue;
    if (parts.length) parts.push(" ");
    parts.push(o.op === changed
      ? h(side === "a" ? "del" : "ins", { class: `al-diff-${o.op}`, title: side === "a" ? "only in the model's text" : "only in your text" }, w.text)
      : h("span", {}, w.text));
  }
  return h("p", { class: "al-text al-diff" }, parts);
}

export function compareView(doc, host) {
  const modelText = doc.model_text ?? (doc.model && doc.model.target) ?? "";
  const userText = doc.user_text ?? (doc.user && doc.user.target) ?? "";
  const ops = diffWords(modelText, userText);
  const model = doc.model || {};
  const user = doc.user || {};
  const limit = maxAbs([model, user].flatMap((d) => (d.proponents || []).concat(d.opponents || [])).map((x) => x.score));
  return section("Comparison: the model's text vs yours",
    "Words only in one version are marked; below, the training examples behind each version's differing words, on one shared scale.",
    h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Prompt"), h("p", { class: "al-text al-prompt" }, doc.prompt ?? "")),
    h("div", { class: "al-two" },
      h("div", { class: "al-box al-compare-model" }, h("div", { class: "al-label" }, "Model's text"), diffSide(ops, "a")),
      h("div", { class: "al-box al-compare-user" }, h("div", { class: "al-label" }, "Your text"), diffSide(ops, "b"))),
    divergingLegend(limit, "Influence score, shared by both sides"),
    h("div", { class: "al-two" },
      exampleList("Supporting the model's version", model.proponents, limit, host, "no difference to attribute"),
      exampleList("Supporting your version", user.proponents, limit, host, "no difference to attribute")));
}

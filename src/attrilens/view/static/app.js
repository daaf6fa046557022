// The whole front end: groups result documents by schema and lays out one section per view. `host` says where the
// page runs: {mode: "static"|"server"|"widget", canCompute, request(kind, payload) -> Promise<document|null>}.
import { h, clear, section, progress, notice } from "./dom.js";
import { trainingView } from "./training.js";
import { compareView } from "./compare.js";
import { contextView } from "./context.js";
import { inspectView } from "./inspect.js";
import { optionFields, methodOptions, namedOptions } from "./options.js";

export const SCHEMAS = {
  training: "attrilens/training/v1",
  compare: "attrilens/compare/v1",
  context: "attrilens/context/v1",
  inspect: "attrilens/inspect/v1",
  verbatim: "attrilens/verbatim/v1",
};

const TITLES = { training: "Training data", compare: "Comparison", context: "Context", inspect: "Inspect", other: "Other" };

function kindOf(doc) {
  for (const [kind, schema] of Object.entries(SCHEMAS)) if (doc && doc.schema === schema) return kind;
  return "other";
}

function rawView(doc) {
  return section(`Document ${doc && doc.schema ? doc.schema : "(no schema)"}`, "No view for this schema; the JSON as received:",
    h("pre", { class: "al-pre" }, JSON.stringify(doc, null, 2)));
}

function newAnalysis(host, add) {
  const out = h("div", {});
  const run = async (kind, payload) => {
    clear(out).appendChild(progress(`Running ${kind}…`));
    try {
      const doc = await host.request(kind, payload);
      clear(out);
      if (doc) add(doc);
    } catch (err) {
      clear(out).appendChild(notice("error", String(err.message || err)));
    }
  };
  const field = (label, rows) => h(rows > 1 ? "textarea" : "input", { class: "al-input", rows: rows > 1 ? rows : null, "aria-label": label, placeholder: label });
  const number = (label) => h("input", { class: "al-input", type: "number", step: "1", "aria-label": label, placeholder: label });
  // a text field offering the registered names (free text stays allowed: context methods combine with '+')
  const choice = (label, names, id) => h("span", {},
    h("input", { class: "al-input", "aria-label": label, placeholder: label, list: id }),
    h("datalist", { id }, (names || []).map((n) => h("option", { value: n }))));
  const orNull = (text) => (text.trim() ? text : null);
  const orInt = (text) => (text.trim() === "" ? null : Number.parseInt(text, 10));
  const choices = host.choices || {};
  const tPrompt = field("prompt", 2);
  const tTarget = field("target (empty: the model generates)", 1);
  const cContext = field("context", 4);
  const cQuery = field("query", 1);
  const cResponse = field("response (empty: the model answers)", 1);
  const cMethod = choice("method (default cached)", choices.methods, "al-methods");
  const iPrompt = field("prompt to inspect", 1);
  const iPreset = choice("preset (default logit-lens)", choices.presets, "al-presets");
  const iLayer = number("layer (empty: all)");
  const iPosition = number("position (empty: all; -1 = last)");
  const iTarget = field("target prompt (custom preset)", 1);
  const button = (text, fn) => { const b = h("button", { class: "al-btn", type: "button" }, text); b.addEventListener("click", fn); return b; };
  const value = (node) => (node.tagName === "SPAN" ? node.querySelector("input").value : node.value);
  // each method's option fields come from the server's description of its options (`attrilens methods`)
  const described = choices.options || {};
  const cOptions = optionFields();
  const iOptions = optionFields();
  const follow = (node, update) => { const el = node.querySelector("input"); el.addEventListener("input", update); el.addEventListener("change", update); update(); };
  follow(cMethod, () => cOptions.set(methodOptions(described.context, value(cMethod) || "cached")));
  // no preset named: custom with a target prompt, else logit-lens (as the server picks)
  const presetOptions = () => iOptions.set(namedOptions(described.presets, value(iPreset) || (iTarget.value.trim() ? "custom" : "logit-lens")));
  follow(iPreset, presetOptions);
  iTarget.addEventListener("input", presetOptions);
  return h("details", { class: "al-new" }, h("summary", {}, "New analysis"),
    h("div", { class: "al-three" },
      h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Trace a generation to training data"), tPrompt, tTarget,
        button("trace", () => run("trace", { prompt: tPrompt.value, target: orNull(tTarget.value), span: null })),
        host.verbatim ? button("find verbatim spans", () => run("verbatim", { prompt: tPrompt.value, target: orNull(tTarget.value) })) : null),
      h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Attribute a response to its context"), cContext, cQuery,
        cResponse, cMethod, cOptions.node,
        button("attribute", () => run("context", { context: cContext.value, query: cQuery.value, response: orNull(cResponse.value),
          span: null, method: orNull(value(cMethod)), options: cOptions.values() }))),
      h("div", { class: "al-box" }, h("div", { class: "al-label" }, "Inspect hidden states"), iPrompt, iPreset, iLayer, iPosition, iTarget,
        iOptions.node,
        button("inspect", () => run("inspect", { prompt: iPrompt.value, preset: orNull(value(iPreset)), layer: orInt(iLayer.value),
          position: orInt(iPosition.value), target_prompt: orNull(iTarget.value), options: iOptions.values() })))),
    out);
}

// Renders `documents` into `el`; returns {update(documents)} to redraw with new documents.
export function mount(el, documents, host) {
  el.classList.add("al-root");
  let docs = Array.isArray(documents) ? [...documents] : [];
  let fresh = null;  // a result the user just asked for: drawn, then scrolled to where the user is looking
  let draw = null;
  // one form for the page's life, so its fields (and whether it is open) survive each redraw
  const form = host.canCompute && host.mode === "server"
    ? newAnalysis(host, (doc) => { docs = docs.concat([doc]); fresh = doc; draw(); }) : null;
  draw = () => {
    clear(el);
    const groups = { training: [], compare: [], context: [], inspect: [], verbatim: [], other: [] };
    for (const d of docs) groups[kindOf(d)].push(d);
    const nav = h("nav", { class: "al-nav", "aria-label": "views" });
    const body = h("div", { class: "al-body" });
    let freshAnchor = null;
    const add = (kind, node, members = []) => {
      const anchor = h("div", { class: `al-view al-view-${kind}`, "data-view": kind }, node);
      if (fresh && members.includes(fresh)) freshAnchor = anchor;
      body.appendChild(anchor);
      const link = h("button", { class: "al-navlink", type: "button" }, TITLES[kind]);
      link.addEventListener("click", () => anchor.scrollIntoView({ behavior: "smooth", block: "start" }));
      if (![...nav.children].some((c) => c.textContent === TITLES[kind])) nav.appendChild(link);
    };
    const showCompare = (doc) => { docs = docs.filter((d) => kindOf(d) !== "compare").concat([doc]); draw(); };
    // training documents with the same prompt and target are one generation with several precomputed selections;
    // a verbatim-spans document of that generation (the latest) is shown in the same view
    const byGeneration = new Map();
    const generation = (d) => {
      const key = JSON.stringify([d.prompt ?? "", d.target ?? ""]);
      if (!byGeneration.has(key)) byGeneration.set(key, { training: [], verbatim: [] });
      return byGeneration.get(key);
    };
    for (const d of groups.training) generation(d).training.push(d);
    for (const d of groups.verbatim) generation(d).verbatim.push(d);
    const addDoc = (doc) => { docs = docs.concat([doc]); fresh = doc; draw(); };
    for (const g of byGeneration.values()) {
      add("training", trainingView(g.training, host, showCompare, { verbatim: g.verbatim[g.verbatim.length - 1] || null, onAdd: addDoc }),
        g.training.concat(g.verbatim));
    }
    for (const d of groups.compare) add("compare", compareView(d, host), [d]);
    for (const d of groups.context) add("context", contextView(d, host), [d]);
    for (const d of groups.inspect) add("inspect", inspectView(d), [d]);
    for (const d of groups.other) add("other", rawView(d), [d]);
    if (!docs.length) body.appendChild(h("p", { class: "al-muted" }, "No results yet."));
    el.appendChild(h("header", { class: "al-header" }, h("span", { class: "al-brand" }, "attrilens"), nav));
    if (form) el.appendChild(form);
    el.appendChild(body);
    if (freshAnchor) {
      freshAnchor.classList.add("al-fresh");
      freshAnchor.setAttribute("tabindex", "-1");
      freshAnchor.scrollIntoView({ block: "start" });
      freshAnchor.focus({ preventScroll: true });
      fresh = null;
    }
  };
  draw();
  return { update(next) { docs = Array.isArray(next) ? [...next] : []; draw(); } };
}

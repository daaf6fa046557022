// A method's option fields, built from the description the server sends (`attrilens.options.describe`: name, type,
// default, help, choices): one labelled field per option; values() gives those filled in, as {name: text}.
import { h, clear } from "./dom.js";

function canonical(name) { return String(name).trim().toLowerCase().replace(/_/g, "-"); }

// The options of a context method's parts ("cached+hierarchical" → hierarchical's), each name once.
export function methodOptions(table, method) {
  const seen = new Map();
  for (const part of String(method || "").split("+")) {
    for (const o of (table || {})[canonical(part)] || []) if (!seen.has(o.name)) seen.set(o.name, o);
  }
  return [...seen.values()];
}

// The options of one entry of a table by name ("logit_lens" finds "logit-lens").
export function namedOptions(table, name) { return (table || {})[canonical(name)] || []; }

function field(o) {
  const label = `option ${o.name}`;
  const hint = `default ${o.default === null || o.default === undefined ? "None" : JSON.stringify(o.default)}`;
  if (o.type === "bool" || (Array.isArray(o.choices) && o.choices.length)) {
    const values = Array.isArray(o.choices) && o.choices.length ? o.choices : [true, false];
    return h("select", { class: "al-input", "aria-label": label, title: o.help || null },
      h("option", { value: "" }, `${o.name} (${hint})`), values.map((v) => h("option", { value: String(v) }, String(v))));
  }
  return h("input", { class: "al-input", "aria-label": label, placeholder: `${o.name}: ${o.type} (${hint})`, title: o.help || null });
}

// A container of option fields: set(descriptions) rebuilds them (keeping what was typed into options still offered).
export function optionFields() {
  const node = h("div", { class: "al-options" });
  let fields = [];
  const set = (descriptions) => {
    const typed = new Map(fields.map(([o, el]) => [o.name, el.value]));
    clear(node);
    fields = (descriptions || []).map((o) => {
      const el = field(o);
      if (typed.has(o.name)) el.value = typed.get(o.name);
      node.appendChild(h("label", { class: "al-option", "data-option": o.name },
        h("span", { class: "al-option-name" }, o.name), el, o.help ? h("span", { class: "al-option-help" }, o.help) : null));
      return [o, el];
    });
  };
  const values = () => {
    const out = {};
    for (const [o, el] of fields) if (el.value.trim() !== "") out[o.name] = el.value;
    return Object.keys(out).length ? out : null;
  };
  return { node, set, values };
}

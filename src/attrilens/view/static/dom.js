// DOM helpers: every string becomes a text node, so untrusted text (prompts, corpus lines) is never parsed as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function applyAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (key === "style" && typeof value === "object") {
      for (const [prop, v] of Object.entries(value)) node.style.setProperty(prop, String(v));
    } else if (key.toLowerCase().startsWith("on")) {
      throw new Error(`attrilens: inline handler attribute ${key} refused; use {on: {...}}`);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  applyAttrs(node, attrs);
  append(node, children);
  return node;
}

export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  applyAttrs(node, attrs);
  append(node, children);
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function section(title, subtitle, ...children) {
  return h("section", { class: "al-section" },
    h("h2", { class: "al-h2" }, title),
    subtitle ? h("p", { class: "al-sub" }, subtitle) : null,
    ...children);
}

export function progress(label) {
  const started = performance.now();
  const text = h("span", { class: "al-progress-text" }, label);
  const node = h("div", { class: "al-progress", role: "status", "aria-live": "polite" },
    h("div", { class: "al-progress-bar" }, h("div", { class: "al-progress-fill" })), text);
  const timer = setInterval(() => {
    if (!node.isConnected) { clearInterval(timer); return; }
    text.textContent = `${label} ${((performance.now() - started) / 1000).toFixed(1)} s`;
  }, 200);
  return node;
}

export function notice(kind, message) {
  return h("div", { class: `al-notice al-notice-${kind}`, role: kind === "error" ? "alert" : "note" }, message);
}

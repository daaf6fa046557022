// Selectable text: words as focusable tokens; click one, drag across several, or shift+click / shift+Enter to extend.
import { h } from "./dom.js";
import { words } from "./text.js";

// Returns {node, set(span)}; onSelect receives [start, end) character offsets into `text`.
export function selectableText(text, onSelect, label) {
  const toks = words(text);
  const wordNodes = [];
  let anchor = null;
  let dragging = false;
  let current = null;

  const show = (span) => {
    current = span;
    for (const { node, w } of wordNodes) {
      const on = !!span && w.start < span[1] && w.end > span[0];
      node.classList.toggle("al-selected", on);
      node.setAttribute("aria-pressed", String(on));
    }
  };
  const spanOf = (a, b) => [Math.min(a.start, b.start), Math.max(a.end, b.end)];
  const finish = (span) => { show(span); onSelect(span); };

  const node = h("div", { class: "al-selectable", role: "group", "aria-label": label });
  for (const w of toks) {
    if (w.space) { node.appendChild(document.createTextNode(w.text)); continue; }
    const tok = h("span", { class: "al-tok", tabindex: 0, role: "button", "aria-pressed": "false", "data-start": w.start, "data-end": w.end, title: `characters ${w.start}–${w.end}` }, w.text);
    tok.addEventListener("mousedown", (ev) => {
      ev.preventDefault();
      if (ev.shiftKey && anchor) { show(spanOf(anchor, w)); dragging = true; return; }
      anchor = w; dragging = true; show([w.start, w.end]);
    });
    tok.addEventListener("mouseenter", () => { if (dragging && anchor) show(spanOf(anchor, w)); });
    tok.addEventListener("keydown", (ev) => {
      if (ev.key !== "Enter" && ev.key !== " ") return;
      ev.preventDefault();
      if (ev.shiftKey && anchor) finish(spanOf(anchor, w));
      else { anchor = w; finish([w.start, w.end]); }
    });
    wordNodes.push({ node: tok, w });
    node.appendChild(tok);
  }
  const stop = () => { if (dragging) { dragging = false; if (current) onSelect(current); } };
  node.addEventListener("mouseup", stop);
  document.addEventListener("mouseup", stop);
  return { node, set: show };
}

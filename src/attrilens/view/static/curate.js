// Curation: mark training documents in the proponents/opponents lists to remove or edit, then export the edit
// (edit.jsonl) and the `attrilens curate` command that applies it. All in the page: no server round trip.
import { h, clear } from "./dom.js";

const stores = new WeakMap();  // one store per mounted page (its host): marks survive redraws and selections

// The marks of one page: id -> {action: "remove" | "edit", text, block}; listeners return false to unsubscribe.
export function curationStore(host) {
  if (stores.has(host)) return stores.get(host);
  const marks = new Map();
  const listeners = new Set();
  const store = {
    marks,
    get: (id) => marks.get(id) || null,
    set(id, mark) { if (mark) marks.set(id, mark); else marks.delete(id); store.changed(); },
    changed() { for (const fn of [...listeners]) if (fn() === false) listeners.delete(fn); },
    subscribe(fn) { listeners.add(fn); },
  };
  stores.set(host, store);
  return store;
}

// edit.jsonl rows in marking order: {"id", "remove": true} or {"id", "text"} (what `attrilens curate --edit` reads).
export function editRows(store) {
  return [...store.marks].map(([id, m]) => (m.action === "remove" ? { id, remove: true } : { id, text: m.text }));
}

export const editJsonl = (store) => editRows(store).map((r) => JSON.stringify(r)).join("\n") + (store.marks.size ? "\n" : "");

// A word for a POSIX shell: as it is when plainly safe, else single-quoted.
export function shellWord(text) {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, "'\\''")}'`;
}

export function curateCommand(indexPath) {
  const index = indexPath && indexPath.trim() ? shellWord(indexPath.trim()) : "INDEX_DIR";
  return `attrilens curate --index ${index} --edit edit.jsonl --out curated`;
}

// Keep a listener only while its node is (or has not yet been) on the page.
function alive(node) {
  if (node.isConnected) node.dataset.shown = "1";
  return node.isConnected || !node.dataset.shown;
}

// The remove / edit controls of one training example card (`item`: a proponent or opponent of a trace result).
function controls(item, store) {
  const id = String(item.id ?? "");
  const removeBtn = h("button", { class: "al-link al-curate-remove", type: "button", "aria-pressed": "false" }, "remove");
  const editBtn = h("button", { class: "al-link al-curate-edit", type: "button", "aria-pressed": "false" }, "edit");
  const state = h("span", { class: "al-curate-state al-muted" });
  const editor = h("div", { class: "al-curate-editor", hidden: true });
  let text = null;  // the textarea, made when the document is first marked "edit" (a card has none until then)
  const openEditor = () => {
    text = h("textarea", { class: "al-input al-curate-text", rows: 3, "aria-label": `new text of training document ${id}` });
    text.addEventListener("input", () => { const m = store.get(id); if (m && m.action === "edit") { m.text = text.value; store.changed(); } });
    editor.append(text, h("p", { class: "al-muted" },
      `Prefilled with this block's text (block ${item.block ?? "?"}); the edit replaces the whole document's text.`));
  };
  const wrap = h("div", { class: "al-curate" }, removeBtn, " · ", editBtn, " ", state, editor);
  const refresh = () => {
    const mark = store.get(id);
    removeBtn.setAttribute("aria-pressed", String(mark?.action === "remove"));
    editBtn.setAttribute("aria-pressed", String(mark?.action === "edit"));
    state.textContent = mark ? `marked: ${mark.action}` : "";
    if (mark?.action === "edit" && !text) openEditor();
    editor.hidden = mark?.action !== "edit";
    if (mark?.action === "edit" && document.activeElement !== text) text.value = mark.text;
    const card = wrap.closest(".al-example");
    if (card) card.dataset.curate = mark ? mark.action : "";
    return alive(wrap);
  };
  removeBtn.addEventListener("click", () => store.set(id, store.get(id)?.action === "remove" ? null : { action: "remove" }));
  editBtn.addEventListener("click", () => {
    const on = store.get(id)?.action === "edit";
    store.set(id, on ? null : { action: "edit", text: item.text ?? "", block: item.block ?? null });
    if (!on && text) text.focus();
  });
  store.subscribe(refresh);
  queueMicrotask(refresh);
  return wrap;
}

// Add the controls to the cards of an example list (`exampleList`'s node), in the order of `items`.
export function markable(listNode, items, store) {
  const cards = listNode.querySelectorAll("li.al-example");
  (items || []).forEach((item, i) => { if (cards[i]) cards[i].appendChild(controls(item, store)); });
  return listNode;
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// The curation panel: the marked documents, the index directory, the command and the edit.jsonl to export.
export function curationPanel(store, indexPath) {
  const list = h("ul", { class: "al-curate-marks" });
  const index = h("input", { class: "al-input al-curate-index", "aria-label": "index directory", placeholder: "INDEX_DIR (the index directory)" });
  index.value = indexPath || "";
  const command = h("pre", { class: "al-pre al-curate-command" });
  const preview = h("pre", { class: "al-pre al-curate-jsonl" });
  const status = h("span", { class: "al-muted al-curate-status", role: "status" });
  const save = h("button", { class: "al-btn al-curate-download", type: "button" }, "download edit.jsonl");
  const copy = h("button", { class: "al-btn al-curate-copy", type: "button" }, "copy command");
  const count = h("span", {});
  const panel = h("div", { class: "al-box al-curate-panel" },
    h("div", { class: "al-label" }, "Curate the training data ", count),
    h("p", { class: "al-muted" }, "Mark documents above to remove or edit; download edit.jsonl and run the command: it retrains "
      + "the model on the edited corpus and reports the answers and attributions before and after."),
    list, index, command, save, " ", copy, " ", status, preview);
  const refresh = () => {
    clear(list);
    for (const [id, m] of store.marks) {
      const drop = h("button", { class: "al-link", type: "button", "aria-label": `unmark ${id}` }, "unmark");
      drop.addEventListener("click", () => store.set(id, null));
      list.appendChild(h("li", { "data-id": id }, h("span", { class: "al-id" }, id), ` ${m.action}`,
        m.action === "edit" ? h("span", { class: "al-muted" }, `: “${m.text.length > 80 ? `${m.text.slice(0, 80)}…` : m.text}”`) : null,
        " ", drop));
    }
    if (!store.marks.size) list.appendChild(h("li", { class: "al-muted" }, "nothing marked yet"));
    count.textContent = `(${store.marks.size} marked)`;
    command.textContent = curateCommand(index.value);
    preview.textContent = editJsonl(store);
    preview.hidden = !store.marks.size;
    save.disabled = copy.disabled = !store.marks.size;
    return alive(panel);
  };
  index.addEventListener("input", refresh);
  save.addEventListener("click", () => { download("edit.jsonl", editJsonl(store)); status.textContent = "edit.jsonl downloaded"; });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(command.textContent);
      status.textContent = "command copied";
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents(command);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      status.textContent = "command selected: copy it with Ctrl+C";
    }
  });
  store.subscribe(refresh);
  refresh();
  return panel;
}

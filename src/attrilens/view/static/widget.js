// Entry of the Jupyter widget (anywidget): documents come from the Python model; selections and requests go back to
// Python through the `selection` and `request` traits, answers arrive in `response`.
import { mount } from "./app.js";

function widgetHost(model) {
  let counter = 0;
  const pending = new Map();
  model.on("change:response", () => {
    const r = model.get("response") || {};
    const done = pending.get(r.id);
    if (!done) return;
    pending.delete(r.id);
    if (r.error) done.reject(new Error(r.error)); else done.resolve(r.document || null);
  });
  return {
    mode: "widget",
    get canCompute() { return Boolean(model.get("can_compute")); },
    get verbatim() { return Boolean(model.get("can_verbatim")); },  // the backend has a verbatim index
    notify(kind, payload) {
      model.set("selection", { kind, ...payload });
      model.save_changes();
    },
    request(kind, payload) {
      const id = `${Date.now()}-${++counter}`;
      model.set("request", { id, kind, payload });
      model.save_changes();
      return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
    },
  };
}

function render({ model, el }) {
  const view = mount(el, model.get("documents") || [], widgetHost(model));
  const redraw = () => view.update(model.get("documents") || []);
  model.on("change:documents", redraw);
  return () => model.off("change:documents", redraw);
}

export default { render };

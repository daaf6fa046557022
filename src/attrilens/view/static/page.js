// Entry of the HTML page (report from disk, or the web app): reads the embedded documents and config, then mounts.
import { mount } from "./app.js";

function readJson(id) {
  const node = document.getElementById(id);
  return node ? JSON.parse(node.textContent) : null;
}

function serverHost(api, choices) {
  return {
    mode: "server",
    canCompute: true,
    choices: choices || {},
    verbatim: Boolean(choices && choices.verbatim),  // started with --verbatim-index: the view offers "find verbatim spans"
    async request(kind, payload) {
      const res = await fetch(`${api}/${kind}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
      let body = null;
      try { body = await res.json(); } catch (_) { body = null; }
      if (!res.ok) throw new Error((body && body.detail) || `request failed with HTTP ${res.status}`);
      return body;
    },
  };
}

const staticHost = { mode: "static", canCompute: false, request: async () => null };

function boot() {
  const config = readJson("attrilens-config") || { mode: "static" };
  const documents = readJson("attrilens-data") || [];
  const host = config.mode === "server" ? serverHost(config.api || "api", config.choices) : staticHost;
  window.attrilens = mount(document.getElementById("attrilens-app"), documents, host);
}

boot();

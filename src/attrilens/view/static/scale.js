// Colour scales: diverging blue (negative) / white / red (positive) for scores, sequential for probabilities.
import { h } from "./dom.js";

const BLUE = [33, 102, 172];
const WHITE = [247, 247, 247];
const RED = [178, 24, 43];
const SEQ_LO = [247, 251, 255];
const SEQ_HI = [8, 81, 156];

function mix(a, b, t) {
  return a.map((v, i) => Math.round(v + (b[i] - v) * t));
}

function rgb(c) {
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

export function maxAbs(values) {
  let m = 0;
  for (const v of values) if (typeof v === "number" && Number.isFinite(v)) m = Math.max(m, Math.abs(v));
  return m > 0 ? m : 1;
}

// Background and readable text colour for a score on a symmetric scale [-limit, +limit].
export function diverging(value, limit) {
  if (typeof value !== "number" || !Number.isFinite(value)) return { background: "transparent", color: "inherit" };
  const t = Math.max(-1, Math.min(1, value / limit));
  const c = t < 0 ? mix(WHITE, BLUE, -t) : mix(WHITE, RED, t);
  return { background: rgb(c), color: Math.abs(t) > 0.6 ? "#fff" : "#111" };
}

export function sequential(p) {
  const t = Math.max(0, Math.min(1, Number(p) || 0));
  return { background: rgb(mix(SEQ_LO, SEQ_HI, Math.sqrt(t))), color: t > 0.35 ? "#fff" : "#111" };
}

export function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  const a = Math.abs(value);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return value.toExponential(2);
  return value.toFixed(digits);
}

export function divergingLegend(limit, label) {
  const stops = [];
  for (let i = 0; i <= 10; i++) stops.push(diverging(-limit + (2 * limit * i) / 10, limit).background);
  return h("figure", { class: "al-legend", "aria-label": `${label}: blue negative, red positive` },
    h("figcaption", {}, label),
    h("div", { class: "al-legend-bar", style: { background: `linear-gradient(to right, ${stops.join(", ")})` } }),
    h("div", { class: "al-legend-ticks" },
      h("span", {}, fmt(-limit)), h("span", {}, "0"), h("span", {}, `+${fmt(limit)}`)));
}

export function sequentialLegend(label) {
  const stops = [];
  for (let i = 0; i <= 10; i++) stops.push(sequential(i / 10).background);
  return h("figure", { class: "al-legend", "aria-label": label },
    h("figcaption", {}, label),
    h("div", { class: "al-legend-bar", style: { background: `linear-gradient(to right, ${stops.join(", ")})` } }),
    h("div", { class: "al-legend-ticks" }, h("span", {}, "0"), h("span", {}, "0.5"), h("span", {}, "1")));
}

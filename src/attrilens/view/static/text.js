// Text utilities: words with character offsets, a word-level diff (LCS) and TF-IDF keywords.

// Words and the whitespace between them, each with [start, end) character offsets into `text`.
export function words(text) {
  const out = [];
  const re = /\S+|\s+/g;
  let m;
  while ((m = re.exec(text)) !== null) {
    out.push({ text: m[0], start: m.index, end: m.index + m[0].length, space: /^\s/.test(m[0]) });
  }
  return out;
}

// Word-level diff: a list of {op: "same"|"del"|"add", a: word|null, b: word|null}.
export function diffWords(textA, textB) {
  const a = words(textA).filter((w) => !w.space);
  const b = words(textB).filter((w) => !w.space);
  const n = a.length;
  const m = b.length;
  const dp = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      dp[i][j] = a[i].text === b[j].text ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
    }
  }
  const ops = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i].text === b[j].text) { ops.push({ op: "same", a: a[i++], b: b[j++] }); }
    else if (j < m && (i === n || dp[i][j + 1] >= dp[i + 1][j])) { ops.push({ op: "add", a: null, b: b[j++] }); }
    else { ops.push({ op: "del", a: a[i++], b: null }); }
  }
  return ops;
}

// Character span [start, end) covering the changed words of one side of a diff, or null when nothing changed.
export function changedSpan(ops, side) {
  const op = side === "a" ? "del" : "add";
  const changed = ops.filter((o) => o.op === op).map((o) => o[side]);
  if (!changed.length) return null;
  return [Math.min(...changed.map((w) => w.start)), Math.max(...changed.map((w) => w.end))];
}

const STOP = new Set(("a an the of in on at to for from by with and or but is are was were be been it its this that " +
  "these those as into than then there their they he she his her we you i not no yes so if do does did has have had " +
  "which who whom what where when how why all any each most some such only own same can will just also about").split(" "));

function terms(text) {
  return (String(text).toLowerCase().match(/[\p{L}\p{N}][\p{L}\p{N}'-]*/gu) || []).filter((t) => t.length > 1 && !STOP.has(t));
}

// Top-k TF-IDF terms of `focus` texts, with document frequencies taken over `all` texts (focus included).
export function keywords(focus, all, k = 10) {
  const df = new Map();
  for (const text of all) for (const t of new Set(terms(text))) df.set(t, (df.get(t) || 0) + 1);
  const score = new Map();
  const n = all.length;
  for (const text of focus) {
    const ts = terms(text);
    const tf = new Map();
    for (const t of ts) tf.set(t, (tf.get(t) || 0) + 1);
    for (const [t, c] of tf) {
      const idf = Math.log((1 + n) / (1 + (df.get(t) || 0))) + 1;
      score.set(t, (score.get(t) || 0) + (c / ts.length) * idf);
    }
  }
  return [...score.entries()].sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1)).slice(0, k)
    .map(([term, weight]) => ({ term, weight }));
}

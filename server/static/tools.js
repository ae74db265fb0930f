// Small DOM and formatting helpers. Every value from the API enters the page as text (textContent), never as HTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows),
  );
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function count(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US");
}

export function percent(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(Number(x))) return "–";
  return `${(Number(x) * 100).toFixed(digits)}%`;
}

export function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${Number(s).toFixed(0)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function when(value) {
  // ISO strings (adapters) or epoch seconds (jobs)
  if (value === null || value === undefined) return "–";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return date.toISOString().replace("T", " ").slice(0, 19);
}

// The top-1 a version recorded at training time (the worker stores val_top1; older files may say top1).
export function top1Of(metrics) {
  if (!metrics) return null;
  const value = metrics.val_top1 ?? metrics.top1;
  return typeof value === "number" ? value : null;
}

// ---------------------------------------------------------------------------------------------- Prometheus
// Parses the text exposition format into [{name, labels, value}] (enough for /metrics: no timestamps used).
export function parsePrometheus(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw.startsWith("#")) continue;
    const match = line.exec(raw);
    if (!match) continue;
    const labels = {};
    for (const m of (match[3] || "").matchAll(label)) labels[m[1]] = m[2].replace(/\\(.)/g, "$1");
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

// The q-quantile of a histogram from cumulative bucket counts [[le, count], ...] sorted by le, estimated as
// Prometheus' histogram_quantile does: linear within the bucket that holds the rank (the +Inf bucket answers
// its lower bound). null when the histogram is empty.
export function histogramQuantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, cumulative] of buckets) {
    if (cumulative >= rank) {
      if (le === Infinity) return lowerBound;
      const inBucket = cumulative - lowerCount;
      return inBucket > 0 ? lowerBound + ((le - lowerBound) * (rank - lowerCount)) / inBucket : le;
    }
    lowerBound = le;
    lowerCount = cumulative;
  }
  return lowerBound;
}

// Sums a histogram's buckets over every series matching `keep(labels)`: [[le, cumulative], ...] sorted.
export function mergedBuckets(samples, name, keep = () => true) {
  const sums = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket` || !keep(s.labels)) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    sums.set(le, (sums.get(le) || 0) + s.value);
  }
  return [...sums.entries()].sort((a, b) => a[0] - b[0]);
}

export function sumOf(samples, name, keep = () => true) {
  return samples.filter((s) => s.name === name && keep(s.labels)).reduce((acc, s) => acc + s.value, 0);
}

// Charts as plain SVG (no library): a line chart of (x, y) series and horizontal score bars.

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

// series: [{name, points: [[x, y], ...], className}]; yMax fixes the axis (1 for accuracies).
export function lineChart(series, { title, yMax, xLabel = "", width = 560, height = 220, percent = false } = {}) {
  const pad = { left: 48, right: 12, top: 24, bottom: 32 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  root.append(svg("title", {}, title || "chart"));
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted" }, "no data yet"));
    return root;
  }
  const xs = all.map((p) => p[0]);
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs) === xMin ? xMin + 1 : Math.max(...xs);
  const top = yMax ?? niceMax(Math.max(...all.map((p) => p[1])));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const px = (x) => pad.left + ((x - xMin) / (xMax - xMin)) * plotW;
  const py = (y) => pad.top + plotH - (Math.max(0, Math.min(y, top)) / top) * plotH;
  if (title) root.append(svg("text", { x: pad.left, y: 14, class: "chart-title" }, title));
  for (let i = 0; i <= 4; i++) {
    const y = (top * i) / 4;
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: py(y), y2: py(y), class: "grid" }));
    const label = percent ? `${Math.round(y * 100)}%` : Number(y.toPrecision(3));
    root.append(svg("text", { x: pad.left - 6, y: py(y) + 4, "text-anchor": "end", class: "tick" }, label));
  }
  const ticks = [...new Set(xs)].sort((a, b) => a - b);
  const every = Math.max(1, Math.ceil(ticks.length / 10));
  ticks.forEach((x, i) => {
    if (i % every === 0 || i === ticks.length - 1) {
      root.append(svg("text", { x: px(x), y: height - pad.bottom + 16, "text-anchor": "middle", class: "tick" }, x));
    }
  });
  if (xLabel) root.append(svg("text", { x: width - pad.right, y: height - 4, "text-anchor": "end", class: "tick" }, xLabel));
  series.forEach((s, k) => {
    const points = s.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points, class: `line series-${k}` }));
    for (const [x, y] of s.points) {
      const dot = svg("circle", { cx: px(x), cy: py(y), r: 3.5, class: `dot series-${k}`, "data-x": x, "data-y": y });
      dot.append(svg("title", {}, `${s.name} ${x}: ${percent ? (y * 100).toFixed(1) + "%" : y}`));
      root.append(dot);
    }
    root.append(svg("text", { x: pad.left + 8 + k * 120, y: pad.top + 12, class: `legend series-${k}` }, s.name));
  });
  return root;
}

// rows: [{label, score}] with scores in [0, 1] (softmax probabilities).
export function scoreBars(rows, { width = 520 } = {}) {
  const rowH = 26;
  const labelW = 150;
  const root = svg("svg", { viewBox: `0 0 ${width} ${rows.length * rowH + 4}`, class: "bars", role: "img" });
  root.append(svg("title", {}, "top predictions"));
  rows.forEach((row, i) => {
    const y = i * rowH + 2;
    const w = Math.max(1, (width - labelW - 70) * Math.max(0, Math.min(1, row.score)));
    root.append(svg("text", { x: labelW - 8, y: y + 17, "text-anchor": "end", class: "bar-label" }, row.label));
    root.append(svg("rect", { x: labelW, y: y + 4, width: w, height: rowH - 8, rx: 3, class: i === 0 ? "bar top" : "bar" }));
    root.append(svg("text", { x: labelW + w + 6, y: y + 17, class: "tick" }, `${(row.score * 100).toFixed(1)}%`));
  });
  return root;
}

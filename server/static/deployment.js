// Backbone and deployment: GET /backbone (input spec), GET /readyz (replicas, queue depth, adapter cache) and
// GET /metrics (/predict latency percentiles from its histogram, estimated as Prometheus does), refreshed.

import { getJson, getText } from "./api.js";
import { bytes, count, el, histogramQuantile, mergedBuckets, parsePrometheus, percent, sumOf, table } from "./tools.js";

export const REFRESH_MS = 3000;

function hitRate(hits, misses) {
  return hits + misses > 0 ? hits / (hits + misses) : null;
}

function ms(value) {
  return value === null ? "–" : `${(value * 1000).toFixed(1)} ms`;
}

export async function deploymentPage(main, params, ctx) {
  const backbone = await getJson("/backbone");
  if (ctx.stale()) return;
  const spec = backbone.input_spec;
  const live = el("div", { id: "deployment-live" });
  main.replaceChildren(
    el("h1", {}, "Backbone and deployment"),
    el(
      "dl",
      { class: "facts", id: "backbone-facts" },
      el("dt", {}, "backbone"), el("dd", { id: "backbone-name" }, `${backbone.name} (${backbone.family})`),
      el("dt", {}, "sha256"), el("dd", { class: "mono" }, backbone.sha256),
      el("dt", {}, "parameters"), el("dd", {}, count(backbone.parameters)),
      el("dt", {}, "features"), el("dd", {}, count(backbone.num_features)),
      el("dt", {}, "input"), el("dd", { id: "input-spec" }, `${spec.num_frames} frames × ${spec.size}² (${spec.sampling}, stride ${spec.sampling_rate})`),
      el("dt", {}, "normalisation"), el("dd", { class: "mono" }, `mean ${spec.mean.join(", ")} · std ${spec.std.join(", ")}`),
    ),
    live,
  );
  const refresh = async () => {
    const [ready, metricsText] = await Promise.all([
      getJson("/readyz").catch((error) => ({ error })),
      getText("/metrics"),
    ]);
    if (ctx.stale()) return;
    const samples = parsePrometheus(metricsText);
    const ok = (labels) => labels.status === "200";
    const buckets = mergedBuckets(samples, "vpetl_predict_duration_seconds", ok);
    const served = sumOf(samples, "vpetl_predict_duration_seconds_count", ok);
    const replicas = ready.error ? [] : ready.replicas;
    const hits = replicas.reduce((a, r) => a + (r.cache?.hits || 0), 0);
    const misses = replicas.reduce((a, r) => a + (r.cache?.misses || 0), 0);
    const rows = replicas.map((r) =>
      el(
        "tr",
        { dataset: { replica: r.replica } },
        el("td", { class: "mono" }, String(r.replica)),
        el("td", { class: "mono" }, String(r.node || "–").slice(0, 12)),
        el("td", { class: "num queue-depth" }, count(r.queue_depth)),
        el("td", { class: "num" }, count(r.clips)),
        el("td", { class: "num" }, count(r.batches)),
        el("td", { class: "num" }, `${count(r.cache?.entries)} (${bytes(r.cache?.bytes)})`),
        el("td", { class: "num hit-rate" }, percent(hitRate(r.cache?.hits || 0, r.cache?.misses || 0))),
        el("td", {}, Object.keys(r.load_failures || {}).join(", ") || "–"),
      ),
    );
    live.replaceChildren(
      el("h2", {}, "Serving"),
      el(
        "dl",
        { class: "facts" },
        el("dt", {}, "ready"), el("dd", { id: "ready-state" }, ready.error ? `no: ${ready.error.message}` : "yes"),
        el("dt", {}, "replicas"), el("dd", { id: "replica-count" }, String(replicas.length)),
        el("dt", {}, "adapter cache hit rate"), el("dd", { id: "cache-hit-rate" }, percent(hitRate(hits, misses))),
        el("dt", {}, "predictions served"), el("dd", { id: "predictions-served" }, count(served)),
        el("dt", {}, "/predict p50"), el("dd", { id: "latency-p50" }, ms(histogramQuantile(0.5, buckets))),
        el("dt", {}, "/predict p99"), el("dd", { id: "latency-p99" }, ms(histogramQuantile(0.99, buckets))),
      ),
      el("p", { class: "muted" }, "Percentiles since the server started, from the /metrics histogram (bucket-interpolated)."),
      replicas.length
        ? table(["replica", "node", "queue depth", "clips", "batches", "cached adapters", "cache hit rate", "fallbacks"], rows, { id: "replicas-table" })
        : el("p", { class: "muted" }, "No replica answered."),
    );
  };
  await refresh();
  ctx.every(REFRESH_MS, refresh);
}

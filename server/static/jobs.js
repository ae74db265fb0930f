// Jobs: recent training jobs with live progress (GET /jobs polled every POLL_MS while the page is open), one job's
// loss and accuracy curves (GET /jobs/{id}: the worker records each epoch in progress.history), and a form that
// queues a job (POST /jobs).

import { getJson, sendJson } from "./api.js";
import { lineChart } from "./charts.js";
import { el, percent, seconds, table, when } from "./tools.js";

export const POLL_MS = 1500;

function fraction(job) {
  const p = job.progress || {};
  if (job.state === "succeeded") return 1;
  if (typeof p.step === "number" && p.total_steps > 0) return p.step / p.total_steps;
  return 0;
}

function progressBar(job) {
  const f = fraction(job);
  const fill = el("div", { class: "fill" });
  fill.style.width = `${(f * 100).toFixed(1)}%`; // CSSOM, not a style attribute: the page's CSP forbids those
  return el("div", { class: `progress ${job.state}`, title: `${Math.round(f * 100)}%` }, fill, el("span", {}, `${Math.round(f * 100)}%`));
}

function jobRow(job) {
  const p = job.progress || {};
  const r = job.result || {};
  // a step event carries no validation figures: fall back to the last evaluated epoch's
  const evaluated = (Array.isArray(p.history) ? p.history : []).filter((h) => typeof h.val_top1 === "number");
  const top1 = r.val_top1 ?? p.val_top1 ?? evaluated.at(-1)?.val_top1;
  return el(
    "tr",
    { dataset: { job: job.id, state: job.state } },
    el("td", { class: "mono" }, el("a", { href: `#/job/${job.id}` }, job.id.slice(0, 12))),
    el("td", {}, String(job.params.task ?? "–")),
    el("td", {}, String(job.params.method ?? "–")),
    el("td", {}, el("span", { class: `state ${job.state}` }, job.state)),
    el("td", {}, progressBar(job)),
    el("td", { class: "num" }, p.epoch ? `${p.epoch}/${p.epochs}` : "–"),
    el("td", { class: "num" }, typeof p.loss === "number" ? p.loss.toFixed(4) : "–"),
    el("td", { class: "num" }, percent(top1)),
    el("td", { class: "num" }, job.version ? `v${job.version}` : "–"),
    el("td", {}, when(job.created_at)),
  );
}

function newJobForm(ctx) {
  const task = el("input", { id: "job-task", required: true, placeholder: "task", pattern: "[a-z0-9][a-z0-9_.\\-]{0,63}" });
  const method = el("select", { id: "job-method" }, ["bapat", "patt", "adaptmlp", "lora", "bitfit", "linear"].map((m) => el("option", { value: m }, m)));
  const epochs = el("input", { id: "job-epochs", type: "number", min: 1, max: 1000, value: 10 });
  return el(
    "form",
    {
      class: "toolbar",
      id: "job-form",
      onsubmit: (event) => {
        event.preventDefault();
        ctx.guard(async () => {
          const created = await sendJson("POST", "/jobs", { task: task.value.trim(), method: method.value, epochs: Number(epochs.value) });
          ctx.notice(`Job ${created.job_id.slice(0, 12)} queued.`);
          await ctx.reload();
        });
      },
    },
    el("label", {}, "Train ", task),
    el("label", {}, "method ", method),
    el("label", {}, "epochs ", epochs),
    el("button", { type: "submit" }, "Queue job"),
  );
}

export async function jobsPage(main, params, ctx) {
  const form = newJobForm(ctx);
  const holder = el("div", { id: "jobs-holder" });
  main.replaceChildren(el("h1", {}, "Jobs"), form, holder);
  const refresh = async () => {
    const { jobs } = await getJson("/jobs?limit=100");
    if (ctx.stale()) return;
    const states = { queued: 0, running: 0, succeeded: 0, failed: 0 };
    for (const j of jobs) states[j.state] = (states[j.state] || 0) + 1;
    holder.replaceChildren(
      el("p", { id: "job-counts" }, Object.entries(states).map(([s, n]) => el("span", { class: `state ${s}` }, `${s} ${n}`))),
      jobs.length
        ? table(["job", "task", "method", "state", "progress", "epoch", "loss", "val top-1", "published", "queued"], jobs.map(jobRow), { id: "jobs-table" })
        : el("p", { class: "muted" }, "No job yet: upload labelled clips (Datasets), then queue one above."),
    );
  };
  await refresh();
  ctx.every(POLL_MS, refresh);
}

export async function jobPage(main, id, ctx) {
  const holder = el("div", { id: "job-holder" });
  main.replaceChildren(el("p", {}, el("a", { href: "#/jobs" }, "← Jobs")), el("h1", {}, `Job ${id.slice(0, 12)}`), holder);
  const refresh = async () => {
    const job = await getJson(`/jobs/${encodeURIComponent(id)}`);
    if (ctx.stale()) return;
    const p = job.progress || {};
    const history = Array.isArray(p.history) ? p.history : [];
    const loss = history.filter((h) => typeof h.loss === "number").map((h) => [h.epoch, h.loss]);
    const valLoss = history.filter((h) => typeof h.val_loss === "number").map((h) => [h.epoch, h.val_loss]);
    const top1 = history.filter((h) => typeof h.val_top1 === "number").map((h) => [h.epoch, h.val_top1]);
    const top5 = history.filter((h) => typeof h.val_top5 === "number").map((h) => [h.epoch, h.val_top5]);
    const result = job.result || {};
    holder.replaceChildren(
      el(
        "dl",
        { class: "facts" },
        el("dt", {}, "state"), el("dd", { id: "job-state" }, el("span", { class: `state ${job.state}` }, job.state)),
        el("dt", {}, "progress"), el("dd", {}, progressBar(job)),
        el("dt", {}, "task"), el("dd", {}, String(job.params.task ?? "–")),
        el("dt", {}, "params"), el("dd", { class: "mono" }, JSON.stringify(job.params)),
        el("dt", {}, "worker"), el("dd", {}, job.worker ?? "–"),
        el("dt", {}, "attempts"), el("dd", {}, String(job.attempts)),
        el("dt", {}, "elapsed / ETA"), el("dd", {}, `${seconds(p.elapsed_s)} / ${seconds(p.eta_s)}`),
        el("dt", {}, "result"), el("dd", { id: "job-result" }, job.error ?? result.reason ?? "–"),
      ),
      el("div", { class: "charts" },
        el("div", { id: "loss-chart" }, lineChart([{ name: "train loss", points: loss }, { name: "val loss", points: valLoss }], { title: "Loss per epoch", xLabel: "epoch" })),
        el("div", { id: "accuracy-chart" }, lineChart([{ name: "val top-1", points: top1 }, { name: "val top-5", points: top5 }], { title: "Validation accuracy per epoch", yMax: 1, percent: true, xLabel: "epoch" })),
      ),
    );
    return job.state === "succeeded" || job.state === "failed";
  };
  if (!(await refresh())) ctx.every(POLL_MS, refresh);
}

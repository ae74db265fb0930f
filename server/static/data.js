// Datasets (GET /datasets/{task} counts; drag-and-drop labelled uploads to POST /datasets/{task}/clips) and
// "Try it" (drop a clip, POST /predict?task=&topk=5, top-5 as bars with the server's timings).

import { getJson, sendFile } from "./api.js";
import { scoreBars } from "./charts.js";
import { count, el, table } from "./tools.js";

// A text input offering the first tasks by name (typing any other name works too: the list is only a hint).
async function taskInput(id, value) {
  const list = el("datalist", { id: `${id}-list` });
  const input = el("input", { id, list: `${id}-list`, required: true, placeholder: "task", value: value || "", autocomplete: "off" });
  try {
    const page = await getJson("/adapters?limit=200");
    list.append(...page.adapters.map((a) => el("option", { value: a.task })));
  } catch (_) {
    // the hint is optional; the page still works by typing
  }
  return [input, list];
}

// A drop zone that also opens a file chooser on click; calls onFiles(FileList-like array).
function dropZone(id, text, onFiles, { multiple = false } = {}) {
  const chooser = el("input", { type: "file", accept: "video/*", multiple, id: `${id}-file`, class: "visually-hidden" });
  const zone = el("label", { class: "drop", id, for: `${id}-file` }, text, chooser);
  chooser.addEventListener("change", () => {
    if (chooser.files.length) onFiles([...chooser.files]);
    chooser.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = [...(event.dataTransfer?.files || [])];
    if (files.length) onFiles(multiple ? files : files.slice(0, 1));
  });
  return zone;
}

function countsTable(counts) {
  const splits = Object.keys(counts).sort();
  const labels = [...new Set(splits.flatMap((s) => Object.keys(counts[s])))].sort();
  const rows = labels.map((label) =>
    el("tr", { dataset: { label } }, el("td", {}, label), splits.map((s) => el("td", { class: "num", dataset: { split: s } }, count(counts[s][label] || 0)))),
  );
  const totals = el("tr", { class: "total" }, el("td", {}, "total"), splits.map((s) => el("td", { class: "num" }, count(Object.values(counts[s]).reduce((a, b) => a + b, 0)))));
  return table(["label", ...splits], [...rows, totals], { id: "counts-table" });
}

export async function datasetsPage(main, params, ctx) {
  const chosen = params.get("task") || "";
  const [taskField, list] = await taskInput("dataset-task", chosen);
  if (ctx.stale()) return;
  const form = el(
    "form",
    {
      class: "toolbar",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = `#/datasets?task=${encodeURIComponent(taskField.value.trim())}`;
      },
    },
    el("label", {}, "Task ", taskField, list),
    el("button", { type: "submit" }, "Show clips"),
  );
  main.replaceChildren(el("h1", {}, "Datasets"), form);
  if (!chosen) {
    main.append(el("p", { class: "muted" }, "Pick a task to see its clips per label and split, and to upload more."));
    return;
  }
  const holder = el("div", { id: "counts-holder" });
  const show = async () => {
    const data = await getJson(`/datasets/${encodeURIComponent(chosen)}`);
    if (ctx.stale()) return;
    holder.replaceChildren(
      el("p", { id: "clip-total" }, `${count(data.total)} clips for ${data.task}`),
      data.total ? countsTable(data.counts) : el("p", { class: "muted" }, "No clip uploaded yet."),
    );
  };
  const label = el("input", { id: "upload-label", required: true, placeholder: "label", pattern: "[A-Za-z0-9][A-Za-z0-9 _.\\-]{0,63}" });
  const split = el("select", { id: "upload-split" }, el("option", { value: "train" }, "train"), el("option", { value: "val" }, "val"));
  const log = el("ul", { id: "upload-log", class: "log" });
  const upload = async (files) => {
    if (!label.reportValidity()) return;
    for (const file of files) {
      const item = el("li", {}, `${file.name}: uploading…`);
      log.prepend(item);
      await ctx.guard(async () => {
        const q = new URLSearchParams({ label: label.value, split: split.value });
        const stored = await sendFile(`/datasets/${encodeURIComponent(chosen)}/clips?${q}`, file);
        item.textContent = `${file.name}: stored as ${stored.label}/${stored.split}${stored.duplicate ? " (already there)" : ""}`;
        item.className = "ok";
      }, (error) => {
        item.textContent = `${file.name}: ${error.message}`;
        item.className = "failed";
      });
    }
    await show();
  };
  main.append(
    el("h2", {}, chosen),
    holder,
    el("h2", {}, "Upload labelled clips"),
    el("div", { class: "toolbar" }, el("label", {}, "Label ", label), el("label", {}, "split ", split)),
    dropZone("dataset-drop", "Drop clips here (or click to choose)", upload, { multiple: true }),
    log,
  );
  await show();
}

export async function tryPage(main, params, ctx) {
  const [taskField, list] = await taskInput("try-task", params.get("task") || "");
  if (ctx.stale()) return;
  const result = el("div", { id: "try-result" });
  const run = (files) =>
    ctx.guard(async () => {
      if (!taskField.reportValidity()) return;
      const file = files[0];
      result.replaceChildren(el("p", { class: "muted" }, `Classifying ${file.name}…`));
      const q = new URLSearchParams({ task: taskField.value.trim(), topk: "5" });
      const answer = await sendFile(`/predict?${q}`, file);
      const t = answer.timing_ms;
      result.replaceChildren(
        el("p", { id: "try-top1" }, "Top-1: ", el("strong", { class: "top1-label" }, answer.predictions[0]?.label ?? "–"),
          ` (${answer.task} v${answer.version}, replica ${answer.replica})`),
        scoreBars(answer.predictions),
        table(["decode", "queue", "model", "total"], [el("tr", { id: "try-timing" }, [t.decode, t.queue, t.model, t.total].map((ms) => el("td", { class: "num" }, `${ms.toFixed(1)} ms`)))]),
      );
    }, (error) => result.replaceChildren(el("p", { class: "failed" }, error.message)));
  main.replaceChildren(
    el("h1", {}, "Try it"),
    el("div", { class: "toolbar" }, el("label", {}, "Task ", taskField, list)),
    dropZone("try-drop", "Drop a clip here (or click to choose)", run),
    result,
  );
}

// Tasks: the paged task list (GET /adapters?limit=&cursor=&prefix=) and one task's version history with its
// chart, rollback and delete (GET /adapters/{task}, POST /adapters/{task}/rollback, DELETE /adapters/{task}).

import { getJson, request, sendJson } from "./api.js";
import { lineChart } from "./charts.js";
import { bytes, count, el, percent, table, top1Of, when } from "./tools.js";

export const PAGE_SIZE = 50;

function confirmAction(message) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-message").textContent = message;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// One page of tasks; `state` keeps the cursors of the pages before it (the API pages forward only).
export async function tasksPage(main, params, ctx) {
  const prefix = params.get("prefix") || "";
  const cursors = (params.get("trail") || "").split(",").filter(Boolean);
  const cursor = params.get("cursor") || "";
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (prefix) query.set("prefix", prefix);
  if (cursor) query.set("cursor", cursor);
  const page = await getJson(`/adapters?${query}`);
  if (ctx.stale()) return;

  const filter = el("input", { id: "task-prefix", type: "search", placeholder: "name prefix", value: prefix });
  const form = el(
    "form",
    {
      class: "filter",
      onsubmit: (event) => {
        event.preventDefault();
        const value = filter.value.trim();
        location.hash = value ? `#/tasks?prefix=${encodeURIComponent(value)}` : "#/tasks";
      },
    },
    filter,
    el("button", { type: "submit" }, "Filter"),
  );
  const rows = page.adapters.map((a) =>
    el(
      "tr",
      { dataset: { task: a.task } },
      el("td", {}, el("a", { href: `#/task/${encodeURIComponent(a.task)}`, class: "task-link" }, a.task)),
      el("td", { class: "num" }, a.version === a.latest_version ? `v${a.version}` : `v${a.version} (latest v${a.latest_version})`),
      el("td", {}, a.method ?? "–"),
      el("td", { class: "num" }, count(a.trainable_params)),
      el("td", { class: "num" }, bytes(a.size)),
      el("td", { class: "num top1" }, percent(top1Of(a.metrics))),
      el("td", { class: "num" }, count(a.num_versions)),
      el("td", {}, when(a.updated_at)),
    ),
  );
  const first = cursors.length * PAGE_SIZE + (page.adapters.length ? 1 : 0);
  const last = cursors.length * PAGE_SIZE + page.adapters.length;
  const nav = el("div", { class: "pager" });
  const link = (trail, next) => {
    const q = new URLSearchParams();
    if (prefix) q.set("prefix", prefix);
    if (next) q.set("cursor", next);
    if (trail.length) q.set("trail", trail.join(","));
    return `#/tasks?${q}`;
  };
  if (cursors.length) {
    const back = cursors.slice(0, -1);
    const previous = cursors[cursors.length - 1] === "-" ? "" : cursors[cursors.length - 1];
    nav.append(el("a", { href: link(back, previous), id: "page-prev", class: "button" }, "← Previous"));
  }
  nav.append(el("span", { id: "page-range" }, `${first}–${last} of ${count(page.total)} tasks`));
  if (page.next_cursor) {
    nav.append(el("a", { href: link([...cursors, cursor || "-"], page.next_cursor), id: "page-next", class: "button" }, "Next →"));
  }
  main.replaceChildren(
    el("h1", {}, "Tasks"),
    el("div", { class: "toolbar" }, form, nav),
    page.adapters.length
      ? table(["task", "version", "method", "trainable params", "size", "val top-1", "versions", "updated"], rows, { id: "tasks-table" })
      : el("p", { class: "muted", id: "no-tasks" }, prefix ? `No task starts with "${prefix}".` : "No task is published yet."),
  );
}

export async function taskPage(main, name, ctx) {
  const detail = await getJson(`/adapters/${encodeURIComponent(name)}`);
  if (ctx.stale()) return;
  const points = detail.versions.filter((v) => top1Of(v.metrics) !== null).map((v) => [v.version, top1Of(v.metrics)]);
  const rows = detail.versions
    .slice()
    .reverse()
    .map((v) =>
      el(
        "tr",
        { dataset: { version: v.version }, class: v.current ? "current" : "" },
        el("td", { class: "num" }, `v${v.version}`, v.current ? el("span", { class: "badge" }, "serving") : ""),
        el("td", {}, v.method ?? "–"),
        el("td", { class: "num" }, count(v.trainable_params)),
        el("td", { class: "num" }, bytes(v.size)),
        el("td", { class: "num top1" }, percent(top1Of(v.metrics))),
        el("td", { class: "mono" }, v.sha256.slice(0, 12)),
        el("td", {}, when(v.created_at)),
        el(
          "td",
          {},
          v.current
            ? ""
            : el("button", { type: "button", class: "small rollback", "data-version": v.version, onclick: () => rollback(name, v.version, ctx) }, `Make v${v.version} current`),
        ),
      ),
    );
  const labels = detail.labels ? detail.labels.join(", ") : "–";
  main.replaceChildren(
    el("p", {}, el("a", { href: "#/tasks" }, "← Tasks")),
    el("h1", {}, detail.task),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "serving"), el("dd", { id: "current-version" }, `v${detail.version}`),
      el("dt", {}, "latest"), el("dd", {}, `v${detail.latest_version}`),
      el("dt", {}, "method"), el("dd", {}, detail.method ?? "–"),
      el("dt", {}, "trainable params"), el("dd", {}, count(detail.trainable_params)),
      el("dt", {}, "size"), el("dd", {}, bytes(detail.size)),
      el("dt", {}, "val top-1"), el("dd", {}, percent(top1Of(detail.metrics))),
      el("dt", {}, "labels"), el("dd", {}, `${detail.num_classes ?? "–"}: ${labels}`),
      el("dt", {}, "backbone"), el("dd", { class: "mono" }, `${detail.backbone ?? "–"} ${(detail.backbone_sha256 || "").slice(0, 12)}`),
    ),
    el("div", { id: "top1-chart" }, lineChart([{ name: "val top-1", points }], { title: "Validation top-1 per version", yMax: 1, percent: true, xLabel: "version" })),
    el("h2", {}, "Versions"),
    table(["version", "method", "trainable params", "size", "val top-1", "sha256", "published", ""], rows, { id: "versions-table" }),
    el("p", {}, el("button", { type: "button", class: "danger", id: "delete-task", onclick: () => remove(name, detail.num_versions, ctx) }, `Delete ${name}`)),
  );
}

async function rollback(name, version, ctx) {
  if (!(await confirmAction(`Make v${version} the version ${name} serves?`))) return;
  await ctx.guard(async () => {
    const ref = await sendJson("POST", `/adapters/${encodeURIComponent(name)}/rollback`, { version });
    ctx.notice(`${name} now serves v${ref.version}.`);
    await ctx.reload();
  });
}

async function remove(name, versions, ctx) {
  if (!(await confirmAction(`Delete ${name} and its ${versions} version(s)? Its uploaded clips stay.`))) return;
  await ctx.guard(async () => {
    await request("DELETE", `/adapters/${encodeURIComponent(name)}`);
    ctx.navigate("#/tasks", `${name} deleted.`);
  });
}

// The console's router: #/page?query → one page function (main, params, ctx). Each navigation gets a fresh ctx;
// its timers stop and its late answers are dropped once the operator has moved on.

import { ApiError, askToken, setToken, token } from "./api.js";
import { datasetsPage, tryPage } from "./data.js";
import { deploymentPage } from "./deployment.js";
import { jobPage, jobsPage } from "./jobs.js";
import { taskPage, tasksPage } from "./tasks.js";

const main = document.getElementById("main");
const banner = document.getElementById("error");
let generation = 0;
let timers = [];
let carried = null; // a notice for the page a navigation leads to (the banner is cleared on every navigation)

function showError(error) {
  banner.classList.remove("notice");
  banner.textContent = error instanceof ApiError ? `${error.message} (${error.code})` : String(error.message || error);
  banner.hidden = false;
}

function notice(text) {
  banner.classList.add("notice");
  banner.textContent = text;
  banner.hidden = false;
}

function makeContext(mine) {
  const ctx = {
    stale: () => mine !== generation,
    notice,
    reload: () => route(true),
    navigate: (hash, message) => {
      carried = message;
      location.hash = hash;
    },
    // run an action; an API error is shown as the API's message (or handed to onError)
    guard: async (action, onError) => {
      try {
        await action();
      } catch (error) {
        if (onError) onError(error);
        else showError(error);
      }
    },
    // call fn every ms until it returns true or the page changes; errors shown, polling goes on
    every: (ms, fn) => {
      const id = setInterval(async () => {
        if (ctx.stale()) return clearInterval(id);
        try {
          if ((await fn()) === true) clearInterval(id);
        } catch (error) {
          showError(error);
        }
      }, ms);
      timers.push(id);
    },
  };
  return ctx;
}

async function route(keepBanner = false) {
  generation++;
  timers.forEach(clearInterval);
  timers = [];
  if (carried) {
    notice(carried);
    carried = null;
  } else if (!keepBanner) banner.hidden = true;
  const hash = location.hash.replace(/^#\/?/, "") || "tasks";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const [page, ...rest] = path.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  const section = { task: "tasks", job: "jobs" }[page] || page;
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === section);
  const ctx = makeContext(generation);
  const pages = {
    tasks: () => tasksPage(main, params, ctx),
    task: () => taskPage(main, arg, ctx),
    jobs: () => jobsPage(main, params, ctx),
    job: () => jobPage(main, arg, ctx),
    datasets: () => datasetsPage(main, params, ctx),
    try: () => tryPage(main, params, ctx),
    deployment: () => deploymentPage(main, params, ctx),
  };
  const render = pages[page];
  if (!render) {
    main.replaceChildren();
    showError(new Error(`no console page ${page}`));
    return;
  }
  main.setAttribute("aria-busy", "true");
  try {
    await render();
  } catch (error) {
    if (!ctx.stale()) showError(error);
  } finally {
    if (!ctx.stale()) {
      main.setAttribute("aria-busy", "false");
      main.dataset.page = page;
    }
  }
}

function showTokenState() {
  document.getElementById("token-state").textContent = token() ? "token set (this tab)" : "no token";
  document.getElementById("token-button").textContent = token() ? "Forget token" : "Token…";
}

document.getElementById("token-button").addEventListener("click", async () => {
  if (token()) {
    setToken("");
    notice("Token forgotten.");
  } else if (await askToken("Token for this tab (sent as Authorization: Bearer on every API call).")) {
    route(true);
  }
});
document.addEventListener("vpetl:token", showTokenState);
window.addEventListener("hashchange", () => route());
showTokenState();
route();

// The console's only way to the server: the public HTTP API, with the operator's token when one was given.
// The token lives in sessionStorage (this tab only, gone when it closes) and goes out as a bearer token, so the
// console works whichever token scheme the server enforces (one admin token or scoped API keys).

const TOKEN_KEY = "vpetl.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  document.dispatchEvent(new CustomEvent("vpetl:token"));
}

// Ask for the token in the dialog; resolves to the token typed, or "" when the operator cancels.
export function askToken(reason) {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-reason").textContent = reason;
  input.value = "";
  return new Promise((resolve) => {
    const form = document.getElementById("token-form");
    const cancel = document.getElementById("token-cancel");
    const done = (value) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.close();
      resolve(value);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const value = input.value.trim();
      setToken(value);
      done(value);
    };
    const onCancel = () => done("");
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.showModal();
    input.focus();
  });
}

async function errorOf(response) {
  // The API's errors are {"error": {"code", "message"}}: show its message as it is.
  let code = "http_" + response.status;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    // not JSON (a proxy's page): keep the status line
  }
  return new ApiError(response.status, code, message);
}

// fetch(path) with the token; a 401 asks for the token once and retries. Returns the Response (ok) or throws
// ApiError with the API's code and message.
export async function request(method, path, { body, headers } = {}) {
  for (let attempt = 0; ; attempt++) {
    const sent = { ...(headers || {}) };
    const current = token();
    if (current) sent.Authorization = `Bearer ${current}`;
    const response = await fetch(path, { method, body, headers: sent, cache: "no-store" });
    if (response.ok) return response;
    const error = await errorOf(response);
    if (response.status === 401 && attempt === 0) {
      const typed = await askToken(`${method} ${path.split("?")[0]}: ${error.message}`);
      if (typed) continue;
    }
    throw error;
  }
}

export async function getJson(path) {
  return (await request("GET", path)).json();
}

export async function sendJson(method, path, value) {
  const response = await request(method, path, {
    body: JSON.stringify(value),
    headers: { "Content-Type": "application/json" },
  });
  return response.json();
}

// A file as the raw request body (the API takes video/* or application/octet-stream bodies as they are).
export async function sendFile(path, file) {
  const type = file.type && file.type.startsWith("video/") ? file.type : "application/octet-stream";
  const response = await request("POST", path, { body: file, headers: { "Content-Type": type } });
  return response.json();
}

export async function getText(path) {
  return (await request("GET", path)).text();
}

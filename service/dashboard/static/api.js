// The REST API under /v1: one request with the key, every page of a job's
// candidates, and the poller that refreshes a view while it can change.

import { askForKey, authHeaders, keyAccepted } from "./auth.js";

export const POLL_MS = 2000;
export const TERMINAL = new Set(["done", "failed", "cancelled"]);
const PAGE = 500; // the API's largest candidates page
const MAX_CANDIDATES = 5000; // drawn and listed; larger jobs show the first ones

export class AuthRequired extends Error {}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

/** One request to the API; a 401 asks for a key, any other error carries the API's detail. */
export async function api(path, { method = "GET", body, query, headers: extra } = {}) {
  const headers = { Accept: "application/json", ...extra, ...authHeaders() };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const url = query ? `${path}?${new URLSearchParams(query)}` : path;
  const resp = await fetch(url, init);
  if (resp.status === 401) {
    askForKey(Boolean(headers.Authorization));
    throw new AuthRequired("API key required");
  }
  keyAccepted();
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data && data.detail !== undefined ? data.detail : resp.statusText);
  return data;
}

export async function allCandidates(jobId) {
  const items = [];
  let total = 0;
  do {
    const page = await api(`/v1/jobs/${jobId}/candidates`, { query: { limit: PAGE, offset: items.length, order: "trial" } });
    items.push(...page.items);
    total = page.total;
    if (page.items.length === 0) break;
  } while (items.length < total && items.length < MAX_CANDIDATES);
  return { items, total };
}

/** Run refresh() now and every POLL_MS while it returns true; stop() ends it. */
export function poller(refresh, onError) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    let again = true;
    try {
      again = await refresh();
      onError(null);
    } catch (err) {
      if (err instanceof AuthRequired) return; // the key form restarts the view
      onError(err);
    }
    if (!stopped && again) timer = setTimeout(tick, POLL_MS);
  };
  tick();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
    isStopped: () => stopped,
  };
}

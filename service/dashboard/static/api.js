// The REST API under /v1: one request with the key, conditional polls that
// reuse what has not changed, and the poller that refreshes a view while it
// can change.

import { askForKey, authHeaders, keyAccepted } from "./auth.js";

export const POLL_MS = 2000;
export const TERMINAL = new Set(["done", "failed", "cancelled"]);

export class AuthRequired extends Error {}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

const withQuery = (path, query) => (query ? `${path}?${new URLSearchParams(query)}` : path);

/** Fetch url; a 401 asks for a key, an error carries the API's detail. A 304 is no error. */
async function send(url, { method = "GET", body, headers: extra, cache } = {}) {
  const headers = { Accept: "application/json", ...extra, ...authHeaders() };
  const init = { method, headers };
  if (cache) init.cache = cache;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(url, init);
  if (resp.status === 401) {
    askForKey(Boolean(headers.Authorization));
    throw new AuthRequired("API key required");
  }
  keyAccepted();
  const data = resp.status === 204 || resp.status === 304 ? null : await resp.json().catch(() => null);
  if (!resp.ok && resp.status !== 304) throw new ApiError(resp.status, data && data.detail !== undefined ? data.detail : resp.statusText);
  return { resp, data };
}

/** One request to the API: the reply's JSON body (null for a 204). */
export async function api(path, { query, ...options } = {}) {
  return (await send(withQuery(path, query), options)).data;
}

// The last 200 of each polled URL: its ETag and its parsed body. The API tags
// its polled reads (service/api/conditional.py) and answers a matching
// If-None-Match with an empty 304, which costs neither the transfer nor the
// parsing. Only the newest MAX_COPIES URLs are kept: a since= URL is new
// after every change, so the map would otherwise grow for as long as a page
// stays open.
const copies = new Map();
const MAX_COPIES = 32;

/**
 * A polled GET. It sends the tag of the last 200 for the same URL, and on a
 * 304 returns that same body object again: a caller tells "unchanged" by
 * identity (`data === shown`) and need not redraw.
 */
export async function polled(path, query) {
  const url = withQuery(path, query);
  const copy = copies.get(url);
  // no-store: the copy above is the cache. The browser's own would answer a
  // revalidated read with the old 200, so an unchanged reply could not be told.
  const headers = copy ? { "If-None-Match": copy.etag } : {};
  const { resp, data } = await send(url, { headers, cache: "no-store" });
  copies.delete(url); // re-inserted below: Map order is then least recently used first
  if (resp.status === 304 && copy) {
    copies.set(url, copy);
    return copy.data;
  }
  if (resp.status === 304) throw new ApiError(304, "304 without a copy to reuse"); // never asked for
  const etag = resp.headers.get("ETag");
  if (etag) copies.set(url, { etag, data });
  while (copies.size > MAX_COPIES) copies.delete(copies.keys().next().value);
  return data;
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

// prunesearch dashboard: plain JavaScript, no build step.
//
// Three views chosen by the URL hash: the job list (#/), one job (#/jobs/ID)
// and the submit form (#/submit). Every number comes from the REST API under
// /v1, fetched with the API key kept in localStorage; the page polls while
// something can still change. Charts are drawn with plotly.js (Plotly.react),
// which the server hands out from the installed plotly package.
"use strict";

(() => {
  const KEY_STORE = "prunesearch.apiKey";
  const POLL_MS = 2000;
  const TERMINAL = new Set(["done", "failed", "cancelled"]);
  const PAGE = 500; // the API's largest candidates page
  const MAX_CANDIDATES = 5000; // drawn and listed; larger jobs show the first ones
  const COLORS = {
    candidates: "#7aa6d6",
    front: "#1f5fa8",
    baseline: "#222",
    chosen: "#e8890c",
    selected: "#c0392b",
    unpruned: "#d5d9e0",
    uniform: "#9bb7d4",
    complete: "#4a86c5",
    duplicate: "#b3bac5",
    failed: "#d9534f",
    running: "#f0ad4e",
  };
  const COST_LABELS = {
    flops_ratio: "FLOPs (fraction of the unpruned network)",
    params_ratio: "Parameters (fraction of the unpruned network)",
    latency_ratio: "Latency (fraction of the unpruned network)",
  };
  const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  // ---------------------------------------------------------------- helpers

  /** Build an element; strings become text nodes (never HTML), so API data cannot inject markup. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "dataset") Object.assign(el.dataset, value);
      else if (name === "style") Object.assign(el.style, value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const fmt = {
    pct: (x, digits = 1) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)}%`),
    ratio: (x) => (x === null || x === undefined ? "–" : `${x.toFixed(3)}×`),
    acc: (x) => (x === null || x === undefined ? "–" : x.toFixed(4)),
    int: (x) => (x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US")),
    secs: (x) => (x === null || x === undefined ? "–" : x < 60 ? `${x.toFixed(1)} s` : `${Math.floor(x / 60)} min ${Math.round(x % 60)} s`),
    when: (iso) => {
      if (!iso) return "–";
      const d = new Date(iso);
      const p = (n) => String(n).padStart(2, "0");
      return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
    },
  };

  function statusBadge(status) {
    return h("span", { class: `badge status-${status}`, dataset: { status } }, status);
  }

  /** A searching job that stopped moving (the API's `stalled`, see service/stall.py). */
  function stallBadge(job) {
    if (!job.stalled) return null;
    return h("span", { class: "badge stalled", title: stallText(job.stalled) }, "stalled");
  }

  function stallText(stall) {
    const median = stall.median_trial_s === null ? "" : ` (its trials take ${fmt.secs(stall.median_trial_s)})`;
    return `No trial has finished for ${fmt.secs(stall.idle_s)}, more than the ${fmt.secs(stall.threshold_s)} this job allows${median}. Are its workers running?`;
  }

  function progressBar(done, total) {
    const share = total > 0 ? Math.min(1, done / total) : 0;
    return h(
      "div",
      { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": done, "aria-label": "trials finished" },
      h("div", { class: "progress-fill", style: { width: `${(100 * share).toFixed(1)}%` } }),
      h("span", { class: "progress-text" }, `${done} / ${total}`),
    );
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ------------------------------------------------------------------- API

  class AuthRequired extends Error {}
  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : `HTTP ${status}`);
      this.status = status;
      this.detail = detail;
    }
  }

  function authHeaders() {
    const key = localStorage.getItem(KEY_STORE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  /** One request to the API; a 401 asks for a key, any other error carries the API's detail. */
  async function api(path, { method = "GET", body, query, headers: extra } = {}) {
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
    authForm.hidden = true; // the API took the key (or needs none)
    const data = resp.status === 204 ? null : await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, data && data.detail !== undefined ? data.detail : resp.statusText);
    return data;
  }

  async function allCandidates(jobId) {
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

  // ------------------------------------------------------------------ key

  const authForm = document.getElementById("auth");
  const keyState = document.getElementById("keystate");

  function askForKey(refused) {
    if (!current || !current.keepOnAuth) stopView(); // a form keeps what was typed
    document.getElementById("auth-message").textContent = refused
      ? "The API refused the saved key (unknown or revoked). Enter another one."
      : "This server needs an API key to show its jobs.";
    authForm.hidden = false;
    showKeyState();
    document.getElementById("auth-key").focus();
  }

  function showKeyState() {
    keyState.hidden = !localStorage.getItem(KEY_STORE);
  }

  authForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = document.getElementById("auth-key").value.trim();
    if (!key) return;
    localStorage.setItem(KEY_STORE, key);
    document.getElementById("auth-key").value = "";
    authForm.hidden = true;
    showKeyState();
    if (!current) route();
  });

  document.getElementById("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    showKeyState();
    route();
  });

  // --------------------------------------------------------------- routing

  const root = document.getElementById("view");
  let current = null; // the view shown: {stop()}

  function stopView() {
    if (current) current.stop();
    current = null;
  }

  function route() {
    stopView();
    const hash = location.hash || "#/";
    const job = hash.match(/^#\/jobs\/([A-Za-z0-9_-]+)$/);
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", (link.dataset.nav === "submit") === (hash === "#/submit"));
    }
    root.replaceChildren();
    if (job) current = jobView(job[1]);
    else if (hash === "#/submit") current = submitView();
    else current = listView();
  }

  /** Run refresh() now and every POLL_MS while it returns true; stop() ends it. */
  function poller(refresh, onError) {
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

  function errorBox() {
    const box = h("div", { class: "error", role: "alert", hidden: true });
    const show = (err) => {
      box.hidden = !err;
      box.textContent = err ? `Could not load: ${err.message}` : "";
    };
    return { box, show };
  }

  // ------------------------------------------------------------ job list

  function listView() {
    const filter = h(
      "select",
      { id: "status-filter", "aria-label": "Show jobs in state" },
      h("option", { value: "" }, "all states"),
      ["queued", "preparing", "searching", "finalizing", "done", "failed", "cancelled"].map((s) => h("option", { value: s }, s)),
    );
    const body = h("tbody");
    const table = h(
      "table",
      { class: "jobs", id: "jobs-table" },
      h(
        "thead",
        {},
        h("tr", {}, ["Name", "Status", "Trials", "Model · data", "Sampler", "Target", "Best val. acc.", "Best FLOPs", "Created"].map((t) => h("th", {}, t))),
      ),
      body,
    );
    const footer = h("p", { class: "muted", id: "jobs-footer" });
    const errors = errorBox();
    root.append(
      h("div", { class: "title-row" }, h("h1", {}, "Jobs"), h("div", { class: "spacer" }), filter, h("a", { class: "button", href: "#/submit" }, "New job")),
      errors.box,
      table,
      footer,
    );

    const refresh = async () => {
      const query = { limit: 100 };
      if (filter.value) query.status = filter.value;
      const page = await api("/v1/jobs", { query });
      body.replaceChildren(...page.items.map(jobRow));
      if (page.items.length === 0) {
        body.append(h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No jobs yet. ", h("a", { href: "#/submit" }, "Submit one"), ".")));
      }
      footer.textContent = `${page.items.length} of ${page.total} jobs, newest first · refreshed ${fmt.when(new Date().toISOString())} (every ${POLL_MS / 1000} s)`;
      return true;
    };
    const poll = poller(refresh, errors.show);
    filter.addEventListener("change", () => refresh().catch(errors.show));
    return poll;
  }

  function jobRow(job) {
    const spec = job.spec || {};
    const target = spec.target || {};
    const targets = [];
    if (target.flops_ratio) targets.push(`FLOPs ≤ ${fmt.pct(target.flops_ratio, 0)}`);
    if (target.params_ratio) targets.push(`params ≤ ${fmt.pct(target.params_ratio, 0)}`);
    const best = job.best;
    return h(
      "tr",
      { dataset: { jobId: job.id }, class: "job-row" },
      h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "job-link" }, job.name), h("div", { class: "muted small mono" }, job.id.slice(0, 12))),
      h("td", {}, statusBadge(job.status), " ", stallBadge(job)),
      h("td", { class: "progress-cell" }, progressBar(job.progress.done, job.progress.total)),
      h("td", {}, `${(spec.model || {}).arch || "?"} · ${(spec.dataset || {}).name || "?"}`),
      h("td", {}, (spec.search || {}).sampler || "?"),
      h("td", {}, targets.join(", ")),
      h("td", { class: "num" }, best ? fmt.acc(best.accuracy) : "–"),
      h("td", { class: "num" }, best && best.flops_ratio !== null ? fmt.pct(best.flops_ratio) : "–"),
      h("td", { class: "small" }, fmt.when(job.created_at)),
    );
  }

  // ------------------------------------------------------------- one job

  function jobView(jobId) {
    const state = { job: null, cands: [], total: 0, pareto: null, sensitivity: undefined, result: null, selected: null, picked: false };
    const errors = errorBox();
    const el = {
      head: h("div", { class: "job-head" }),
      cards: h("div", { class: "cards" }),
      pareto: h("div", { class: "plot", id: "pareto-plot" }),
      channels: h("div", { class: "plot", id: "channels-plot" }),
      channelsNote: h("p", { class: "muted small" }),
      sensitivity: h("div", { class: "plot", id: "sensitivity-plot" }),
      sensitivityNote: h("p", { class: "muted small" }),
      timeline: h("div", { class: "plot", id: "timeline-plot" }),
      table: h("tbody"),
      tableNote: h("p", { class: "muted small", id: "candidates-count" }),
      downloads: h("ul", { class: "downloads", id: "downloads" }),
    };
    const section = (title, id, ...children) => h("section", { class: "panel", id }, h("h2", {}, title), ...children);
    root.append(
      h("p", {}, h("a", { href: "#/" }, "← All jobs")),
      errors.box,
      el.head,
      el.cards,
      h(
        "div",
        { class: "grid" },
        section("Pareto front", "pareto", h("p", { class: "muted small" }, "Every scored candidate: validation accuracy (the search score) against its cost. Click a point to show its channels."), el.pareto),
        section("Kept channels per group", "channels", el.channelsNote, el.channels),
        section("Sensitivity", "sensitivity", el.sensitivityNote, el.sensitivity),
        section("Trials per worker", "timeline", h("p", { class: "muted small" }, "When each trial ran and on which worker, from the candidates' start and end times."), el.timeline),
      ),
      section(
        "Candidates",
        "candidates",
        el.tableNote,
        h(
          "div",
          { class: "table-scroll" },
          h(
            "table",
            { class: "candidates", id: "candidates-table" },
            h(
              "thead",
              {},
              h("tr", {}, ["Trial", "Id", "Status", "Val. acc.", "Ladder acc.", "FLOPs", "Params", "Kept channels", "Worker", "Time"].map((t) => h("th", {}, t))),
            ),
            el.table,
          ),
        ),
      ),
      section("Downloads", "downloads-section", el.downloads),
    );

    const select = (candidateId) => {
      state.selected = candidateId;
      state.picked = true;
      drawChannels(state, el);
      drawPareto(state, el, select);
      drawTable(state, el, select);
    };

    const refresh = async () => {
      const job = await api(`/v1/jobs/${jobId}`);
      const [cands, pareto] = await Promise.all([allCandidates(jobId), api(`/v1/jobs/${jobId}/pareto`)]);
      state.job = job;
      state.cands = cands.items;
      state.total = cands.total;
      state.pareto = pareto;
      // Asked for only once the job has a report: no 404 for jobs without triage.
      if (job.has_sensitivity && !state.sensitivity) {
        state.sensitivity = await api(`/v1/jobs/${jobId}/sensitivity`).catch((err) => {
          if (err instanceof ApiError && err.status === 404) return null;
          throw err;
        });
      }
      if (job.has_result && !state.result) state.result = await api(`/v1/jobs/${jobId}/result`);
      if (!state.picked) state.selected = chosenId(state);
      document.title = `${job.name} · prunesearch`;
      drawHead(state, el, () => poll.isStopped());
      drawCards(state, el);
      drawPareto(state, el, select);
      drawChannels(state, el);
      drawSensitivity(state, el);
      drawTimeline(state, el);
      drawTable(state, el, select);
      drawDownloads(state, el);
      return !TERMINAL.has(job.status);
    };
    const poll = poller(refresh, errors.show);
    return {
      stop() {
        poll.stop();
        for (const plot of [el.pareto, el.channels, el.sensitivity, el.timeline]) if (window.Plotly) Plotly.purge(plot);
      },
    };
  }

  /** The candidate the job exported, else the best one so far. */
  function chosenId(state) {
    if (state.result && state.result.best) return state.result.best.candidate_id;
    if (state.pareto && state.pareto.chosen !== null) return state.pareto.chosen;
    return state.job.best ? state.job.best.candidate_id : null;
  }

  function drawHead(state, el, stopped) {
    const { job } = state;
    const spec = job.spec || {};
    const s = spec.search || {};
    const target = spec.target || {};
    const budget = [target.flops_ratio && `FLOPs ≤ ${fmt.pct(target.flops_ratio, 0)}`, target.params_ratio && `params ≤ ${fmt.pct(target.params_ratio, 0)}`].filter(Boolean).join(", ");
    const cancel = TERMINAL.has(job.status)
      ? null
      : h(
          "button",
          {
            type: "button",
            class: "danger",
            id: "cancel-job",
            onclick: async (event) => {
              if (!confirm(`Cancel job ${job.name}? Queued trials are dropped; scored candidates stay.`)) return;
              event.target.disabled = true;
              try {
                await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
              } catch (err) {
                if (!stopped()) alert(`Cancel failed: ${err.message}`);
              }
            },
          },
          "Cancel job",
        );
    el.head.replaceChildren(
      h("div", { class: "title-row" }, h("h1", { id: "job-name" }, job.name), statusBadge(job.status), stallBadge(job), h("div", { class: "spacer" }), cancel),
      h(
        "p",
        { class: "muted" },
        h("span", { class: "mono" }, job.id),
        ` · ${spec.model?.arch} on ${spec.dataset?.name} · ${s.sampler} sampler, ${s.criterion} criterion, ${s.operator} · target ${budget} · ${job.queue} queue · owner ${job.owner} · created ${fmt.when(job.created_at)}`,
      ),
      h("div", { class: "head-progress" }, progressBar(job.progress.done, job.progress.total), h("span", { class: "muted" }, "trials finished")),
      ...(job.error ? [h("div", { class: "error", role: "alert" }, `${job.status}: ${job.error}`)] : []),
      ...(job.stalled ? [h("div", { class: "warning", id: "job-stalled", role: "status" }, `Stalled: ${stallText(job.stalled)}`)] : []),
    );
  }

  function card(title, rows) {
    return h(
      "div",
      { class: "card" },
      h("h3", {}, title),
      h("dl", {}, rows.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    );
  }

  function drawCards(state, el) {
    const { job, result } = state;
    const base = job.baseline || {};
    const best = job.best;
    const t = job.timings || {};
    const cards = [
      card("Baseline (unpruned)", [
        ["test accuracy", fmt.acc(base.accuracy)],
        ["val. accuracy", fmt.acc(base.val_accuracy)],
        ["FLOPs", fmt.int(base.flops)],
        ["params", fmt.int(base.params)],
      ]),
      card("Best candidate so far", [
        ["val. accuracy", best ? fmt.acc(best.accuracy) : "–"],
        ["FLOPs", best ? fmt.pct(best.flops_ratio) : "–"],
        ["params", best ? fmt.pct(best.params_ratio) : "–"],
        ["trial", best ? `${best.trial_number} (candidate ${best.candidate_id})` : "–"],
      ]),
    ];
    if (result && result.best) {
      const r = result.best;
      const lat = r.latency_ms || {};
      const baseLat = (result.baseline || {}).latency_ms || {};
      const batch = Object.keys(lat).sort((a, b) => Number(b) - Number(a))[0];
      const speedup = batch && baseLat[batch] ? `${(baseLat[batch] / lat[batch]).toFixed(2)}× at batch ${batch}` : "–";
      cards.push(
        card("Result (fine-tuned, exported)", [
          ["test accuracy", fmt.acc(r.accuracy)],
          ["FLOPs", `${fmt.int(r.flops)} (${fmt.pct(r.flops_ratio)})`],
          ["params", `${fmt.int(r.params)} (${fmt.pct(r.params_ratio)})`],
          ["speed-up", speedup],
        ]),
      );
    }
    cards.push(
      card("Timings", [
        ["prepare", fmt.secs(t.prepare_s)],
        ["search", fmt.secs(t.search_s)],
        ["ladder", fmt.secs(t.ladder_s)],
        ["finalize", fmt.secs(t.finalize_s)],
      ]),
    );
    el.cards.replaceChildren(...cards);
  }

  function axis(title, extra) {
    return { title: { text: title }, zeroline: false, gridcolor: "#eef0f3", automargin: true, ...extra };
  }

  function layout(state, extra) {
    return {
      margin: { l: 60, r: 20, t: 36, b: 50 },
      height: 360,
      paper_bgcolor: "#fff",
      plot_bgcolor: "#fff",
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#333" },
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      uirevision: state.job.id, // keep the user's zoom across refreshes
      ...extra,
    };
  }

  function plot(div, data, lay) {
    if (!window.Plotly) {
      div.replaceChildren(h("p", { class: "error" }, "The chart library (/static/plotly.min.js) did not load."));
      return;
    }
    Plotly.react(div, data, lay, PLOT_CONFIG);
  }

  function emptyPlot(div, message) {
    if (window.Plotly) Plotly.purge(div); // drops its click handler too
    delete div.dataset.bound;
    div.replaceChildren(h("p", { class: "placeholder" }, message));
  }

  function drawPareto(state, el, select) {
    const { job, pareto } = state;
    const objective = pareto.objective;
    const cost = (c) => (c.objectives || {})[objective];
    const scored = state.cands.filter((c) => c.status === "complete" && c.accuracy !== null && cost(c) !== undefined && cost(c) !== null);
    if (scored.length === 0) {
      emptyPlot(el.pareto, "No candidate scored yet.");
      return;
    }
    if (el.pareto.querySelector(".placeholder")) el.pareto.replaceChildren();
    const label = (c) => `trial ${c.trial_number} · candidate ${c.id}<br>val. acc. ${fmt.acc(c.accuracy)} · ${objective} ${cost(c).toFixed(3)}`;
    const front = [...pareto.front].sort((a, b) => a.cost - b.cost);
    const chosen = chosenId(state);
    const byId = new Map(state.cands.map((c) => [c.id, c]));
    const traces = [
      {
        name: "candidates",
        type: "scatter",
        mode: "markers",
        x: scored.map(cost),
        y: scored.map((c) => c.accuracy),
        customdata: scored.map((c) => c.id),
        text: scored.map(label),
        hoverinfo: "text",
        marker: { color: COLORS.candidates, size: 8, opacity: 0.8 },
      },
      {
        name: "Pareto front",
        type: "scatter",
        mode: "lines+markers",
        line: { shape: "hv", color: COLORS.front, width: 2 },
        x: front.map((p) => p.cost),
        y: front.map((p) => p.val_accuracy),
        customdata: front.map((p) => p.candidate_id),
        text: front.map((p) => `Pareto: trial ${p.trial_number} · candidate ${p.candidate_id}`),
        hoverinfo: "text",
        marker: { color: COLORS.front, size: 9 },
      },
    ];
    const base = job.baseline || {};
    if (base.val_accuracy !== undefined && base.val_accuracy !== null) {
      traces.push({
        name: "baseline (unpruned)",
        type: "scatter",
        mode: "markers",
        x: [1.0],
        y: [base.val_accuracy],
        text: [`unpruned baseline · val. acc. ${fmt.acc(base.val_accuracy)}`],
        hoverinfo: "text",
        marker: { color: COLORS.baseline, size: 13, symbol: "diamond" },
      });
    }
    const mark = (id, name, color, symbol, size) => {
      const c = byId.get(id);
      if (!c || cost(c) === undefined || c.accuracy === null) return;
      traces.push({
        name,
        type: "scatter",
        mode: "markers",
        x: [cost(c)],
        y: [c.accuracy],
        customdata: [c.id],
        text: [`${name}: ${label(c)}`],
        hoverinfo: "text",
        marker: { color, size, symbol, line: { color: "#fff", width: 1 } },
      });
    };
    mark(chosen, state.result ? "chosen (exported)" : "best so far", COLORS.chosen, "star", 18);
    if (state.selected !== chosen) mark(state.selected, "selected", COLORS.selected, "circle-open", 16);
    const target = ((job.spec || {}).target || {})[objective];
    const shapes = target
      ? [{ type: "line", x0: target, x1: target, yref: "paper", y0: 0, y1: 1, line: { dash: "dash", color: "#999", width: 1 } }]
      : [];
    const annotations = target
      ? [{ x: target, yref: "paper", y: 1, text: "budget", showarrow: false, xanchor: "left", yanchor: "top", font: { color: "#777", size: 11 } }]
      : [];
    plot(
      el.pareto,
      traces,
      layout(state, {
        xaxis: axis(COST_LABELS[objective] || objective, { range: [0, 1.05] }),
        yaxis: axis("Validation accuracy (search score)"),
        shapes,
        annotations,
      }),
    );
    if (!el.pareto.dataset.bound) {
      el.pareto.dataset.bound = "1";
      el.pareto.on("plotly_click", (event) => {
        const id = event.points[0] && event.points[0].customdata;
        if (id !== undefined && id !== null) select(id);
      });
    }
  }

  function drawChannels(state, el) {
    const groups = state.job.groups || [];
    const byId = new Map(state.cands.map((c) => [c.id, c]));
    const cand = byId.get(state.selected);
    if (groups.length === 0) {
      el.channelsNote.textContent = "";
      emptyPlot(el.channels, "The channel groups are known once the job is prepared.");
      return;
    }
    if (el.channels.querySelector(".placeholder")) el.channels.replaceChildren();
    const names = groups.map((g) => g.name);
    const full = groups.map((g) => g.channels);
    const traces = [{ name: "unpruned", type: "bar", x: names, y: full, marker: { color: COLORS.unpruned }, hovertemplate: "%{x}: %{y} channels<extra>unpruned</extra>" }];
    const flopsRatio = cand ? (cand.objectives || {}).flops_ratio ?? cand.flops_ratio : null;
    if (cand && flopsRatio) {
      const r = Math.sqrt(flopsRatio);
      traces.push({
        name: `uniform ×${r.toFixed(2)} (≈ same FLOPs)`,
        type: "bar",
        x: names,
        y: full.map((n) => Math.max(1, Math.round(n * r))),
        marker: { color: COLORS.uniform },
        hovertemplate: "%{x}: %{y} channels<extra>uniform</extra>",
      });
      traces.push({
        name: `candidate ${cand.id} (trial ${cand.trial_number})`,
        type: "bar",
        x: names,
        y: groups.map((_, i) => cand.counts[i]),
        marker: { color: state.selected === chosenId(state) ? COLORS.chosen : COLORS.selected },
        hovertemplate: "%{x}: %{y} channels kept<extra>candidate</extra>",
      });
      el.channelsNote.textContent =
        `Candidate ${cand.id} (trial ${cand.trial_number}${state.selected === chosenId(state) ? (state.result ? ", the exported one" : ", the best so far") : ""}) keeps ${fmt.pct(flopsRatio)} of the FLOPs. ` +
        `"Uniform" keeps the same share √${flopsRatio.toFixed(2)} = ${r.toFixed(2)} of every group: an approximation of the uniformly pruned network with equal FLOPs (a conv's FLOPs scale with its input × output channels). Pick another candidate in the table or the Pareto plot.`;
    } else {
      el.channelsNote.textContent = "No candidate selected yet; the bars show the unpruned channel counts.";
    }
    plot(
      el.channels,
      traces,
      layout(state, {
        barmode: "group",
        bargap: 0.25,
        xaxis: axis("Channel group (network order)", { type: "category", tickangle: names.length > 12 ? -45 : 0 }),
        yaxis: axis("Channels (kept / total)"),
      }),
    );
  }

  function drawSensitivity(state, el) {
    const report = state.sensitivity;
    if (!report || !report.curves || Object.keys(report.curves).length === 0) {
      const triage = ((state.job.spec || {}).triage || {}).enabled;
      el.sensitivityNote.textContent = "";
      emptyPlot(
        el.sensitivity,
        triage
          ? TERMINAL.has(state.job.status)
            ? "This job ended without a sensitivity scan."
            : "The sensitivity scan runs while the job is prepared; the curves appear when it ends."
          : "This job has no sensitivity scan: submit it with triage enabled (triage: true) to get one.",
      );
      return;
    }
    if (el.sensitivity.querySelector(".placeholder")) el.sensitivity.replaceChildren();
    const reasons = report.reasons || {};
    const traces = Object.entries(report.curves).map(([name, curve]) => ({
      name: reasons[name] ? `${name} (${reasons[name]})` : name,
      type: "scatter",
      mode: "lines+markers",
      x: curve.map((p) => p[0]),
      y: curve.map((p) => p[1]),
      hovertemplate: `${name}<br>keep %{x:.2f} → val. acc. %{y:.4f}<extra></extra>`,
    }));
    const ref = report.reference;
    el.sensitivityNote.textContent =
      "Each group pruned alone to a keep ratio (all others unpruned), then scored like a candidate. A flat curve is a group that can be cut hard." +
      (ref !== undefined && ref !== null ? ` Dashed: the unpruned network, ${fmt.acc(ref)}.` : "");
    plot(
      el.sensitivity,
      traces,
      layout(state, {
        xaxis: axis("Keep ratio of the group (others unpruned)", { range: [0, 1.02] }),
        yaxis: axis("Validation accuracy"),
        shapes: ref !== undefined && ref !== null ? [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: ref, y1: ref, line: { dash: "dash", color: "#555", width: 1 } }] : [],
        legend: { orientation: "v", x: 1.02, y: 1 },
        margin: { l: 60, r: 10, t: 20, b: 50 },
      }),
    );
  }

  function drawTimeline(state, el) {
    const started = state.cands.filter((c) => c.started_at);
    if (started.length === 0) {
      emptyPlot(el.timeline, "No trial has started yet.");
      return;
    }
    if (el.timeline.querySelector(".placeholder")) el.timeline.replaceChildren();
    const t0 = Math.min(...started.map((c) => Date.parse(c.started_at)));
    const now = Date.now();
    const workers = [...new Set(started.map((c) => c.worker || "?"))].sort();
    const byStatus = new Map();
    for (const c of started) {
      const status = c.finished_at ? c.status : "running";
      if (!byStatus.has(status)) byStatus.set(status, []);
      byStatus.get(status).push(c);
    }
    const traces = [...byStatus.entries()].map(([status, list]) => {
      const begin = list.map((c) => (Date.parse(c.started_at) - t0) / 1000);
      const length = list.map((c, i) => Math.max(0.05, ((c.finished_at ? Date.parse(c.finished_at) : now) - t0) / 1000 - begin[i]));
      return {
        name: status,
        type: "bar",
        orientation: "h",
        y: list.map((c) => c.worker || "?"),
        base: begin,
        x: length,
        customdata: list.map((c) => c.id),
        text: list.map((c, i) => `trial ${c.trial_number} · ${status} · ${length[i].toFixed(1)} s${c.accuracy !== null ? ` · val. acc. ${fmt.acc(c.accuracy)}` : ""}`),
        textposition: "none",
        hoverinfo: "text",
        marker: { color: COLORS[status] || "#888", line: { color: "#fff", width: 1 } },
      };
    });
    plot(
      el.timeline,
      traces,
      layout(state, {
        barmode: "overlay",
        height: Math.max(220, 120 + 40 * workers.length),
        xaxis: axis("Seconds since the first trial started"),
        yaxis: axis("Worker", { type: "category", categoryorder: "array", categoryarray: workers }),
      }),
    );
  }

  function drawTable(state, el, select) {
    const chosen = chosenId(state);
    const counts = {};
    for (const c of state.cands) counts[c.status] = (counts[c.status] || 0) + 1;
    const summary = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
    el.tableNote.textContent =
      `${state.total} candidates${summary ? ` (${summary})` : ""}` +
      (state.cands.length < state.total ? `; the first ${state.cands.length} are listed and drawn` : "") +
      ". Click a row to show its channels; ★ marks the " + (state.result ? "exported one." : "best so far.");
    el.table.replaceChildren(
      ...state.cands.map((c) => {
        const secs = c.finished_at ? (Date.parse(c.finished_at) - Date.parse(c.started_at)) / 1000 : null;
        const ladder = c.rungs && c.rungs.short_finetune ? fmt.acc(c.rungs.short_finetune.val_accuracy) : "";
        const classes = ["cand-row", c.id === chosen ? "chosen" : "", c.id === state.selected ? "selected" : ""].join(" ");
        return h(
          "tr",
          { class: classes, dataset: { candidateId: c.id }, onclick: () => select(c.id), title: c.error || "" },
          h("td", { class: "num" }, c.trial_number),
          h("td", { class: "num" }, c.id === chosen ? `★ ${c.id}` : c.id),
          h("td", {}, h("span", { class: `badge cand-${c.status}` }, c.status)),
          h("td", { class: "num" }, fmt.acc(c.accuracy)),
          h("td", { class: "num", title: c.rungs && c.rungs.short_finetune ? c.rungs.short_finetune.why : "" }, ladder),
          h("td", { class: "num" }, fmt.pct(c.flops_ratio)),
          h("td", { class: "num" }, fmt.pct(c.params_ratio)),
          h("td", { class: "mono small counts", title: c.counts.join(" · ") }, c.counts.join(" · ")),
          h("td", { class: "small" }, c.worker || "–"),
          h("td", { class: "num" }, secs === null ? "running" : fmt.secs(secs)),
        );
      }),
    );
  }

  function drawDownloads(state, el) {
    const names = [];
    if (state.result) names.push("result.json", ...(state.result.artifacts || []));
    if (state.sensitivity && !names.includes("sensitivity.json")) names.push("sensitivity.json");
    const unique = [...new Set(names)];
    const current = [...el.downloads.querySelectorAll("a")].map((a) => a.dataset.name).join(",");
    if (current === unique.join(",") && unique.length) return;
    if (unique.length === 0) {
      el.downloads.replaceChildren(h("li", { class: "muted" }, TERMINAL.has(state.job.status) ? "This job has no files." : "The exported network and its files appear here when the job is done."));
      return;
    }
    const what = {
      "result.json": "baseline, best, Pareto set, ladder, timings",
      "recipe.json": "how to rebuild the pruned architecture",
      "model.safetensors": "the pruned, fine-tuned weights",
      "model.onnx": "ONNX export",
      "pareto.json": "the Pareto front",
      "sensitivity.json": "the triage report",
    };
    el.downloads.replaceChildren(
      ...unique.map((name) => {
        const href = `/v1/jobs/${state.job.id}/artifacts/${name}`;
        return h(
          "li",
          {},
          h("a", { href, download: name, class: "download", dataset: { name }, onclick: (event) => download(event, href, name) }, name),
          what[name] ? h("span", { class: "muted small" }, ` — ${what[name]}`) : null,
        );
      }),
    );
  }

  /** A plain link cannot send the API key, so fetch the file with it and save the blob. */
  async function download(event, href, name) {
    event.preventDefault();
    try {
      const resp = await fetch(href, { headers: authHeaders() });
      if (resp.status === 401) return askForKey(true);
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const url = URL.createObjectURL(await resp.blob());
      const a = h("a", { href: url, download: name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      alert(`Download of ${name} failed: ${err.message}`);
    }
  }

  // ------------------------------------------------------------- submit

  const FIELDS = [
    ["Job", [
      { path: "name", label: "Name", type: "text", value: "", placeholder: "fmnist-resnet20-half", help: "Letters, digits, . _ -; up to 100 characters." },
      { path: "@queue", label: "Queue", type: "select", options: ["interactive", "overnight"], value: "interactive", help: "Workers serve interactive first." },
      { path: "seed", label: "Seed", type: "int", value: 0 },
    ]],
    ["Model and data", [
      { path: "model.arch", label: "Architecture", type: "select", options: ["resnet20", "resnet56", "vgg11s", "lenet5"], value: "resnet20" },
      { path: "model.pretrain_epochs", label: "Baseline epochs", type: "int", value: 3, help: "The baseline is trained first." },
      { path: "dataset.name", label: "Dataset", type: "select", options: ["fashion-mnist", "digits", "synthetic"], value: "fashion-mnist" },
      { path: "dataset.subset", label: "Training subset", type: "int", value: "", placeholder: "all", help: "Use only this many training images." },
    ]],
    ["Budget", [
      { path: "target.flops_ratio", label: "FLOPs ratio", type: "float", value: 0.5, help: "Keep at most this share of the FLOPs, in (0, 1]." },
      { path: "target.params_ratio", label: "Params ratio", type: "float", value: "", placeholder: "none" },
    ]],
    ["Search", [
      { path: "search.sampler", label: "Sampler", type: "select", options: ["tpe", "nsga2", "genetic", "random", "uniform", "tp_global", "sensitivity"], value: "tpe" },
      { path: "search.n_trials", label: "Trials", type: "int", value: 24 },
      { path: "search.min_ratio", label: "Min. keep ratio", type: "float", value: 0.2 },
      { path: "search.criterion", label: "Criterion", type: "select", options: ["l1", "l2", "bn_scale", "taylor", "similarity", "discriminant"], value: "l1" },
      { path: "search.operator", label: "Operator", type: "select", options: ["prune", "lowrank", "mixed"], value: "prune" },
      { path: "search.objective", label: "Pareto cost", type: "select", options: ["flops_ratio", "params_ratio", "latency_ratio"], value: "flops_ratio" },
    ]],
    ["Scoring", [
      { path: "scoring.mode", label: "Scoring", type: "select", options: ["adaptive_bn", "finetune"], value: "adaptive_bn" },
      { path: "scoring.calib_batches", label: "Calibration batches", type: "int", value: 10 },
      { path: "scoring.finetune_steps", label: "Scoring fine-tune steps", type: "int", value: 0, help: "Needed (> 0) with scoring finetune." },
      { path: "scoring.promote_top_k", label: "Ladder: promote top k", type: "int", value: 3 },
    ]],
    ["Fine-tune and triage", [
      { path: "final.finetune_epochs", label: "Final fine-tune epochs", type: "float", value: 1, help: "For the chosen network, before export." },
      { path: "final.distill", label: "Distil from the baseline", type: "bool", value: false },
      { path: "triage.enabled", label: "Sensitivity scan (triage)", type: "bool", value: false, help: "Per-group sensitivity curves before the search; they narrow its bounds." },
    ]],
  ];

  function setPath(obj, path, value) {
    const keys = path.split(".");
    let node = obj;
    for (const k of keys.slice(0, -1)) node = node[k] = node[k] && typeof node[k] === "object" ? node[k] : {};
    node[keys[keys.length - 1]] = value;
  }

  function merge(into, extra) {
    for (const [k, v] of Object.entries(extra)) {
      if (v && typeof v === "object" && !Array.isArray(v) && into[k] && typeof into[k] === "object") merge(into[k], v);
      else into[k] = v;
    }
    return into;
  }

  function submitView() {
    const inputs = new Map();
    const errorsBox = h("div", { class: "error", id: "submit-errors", role: "alert", hidden: true });
    const preview = h("pre", { class: "preview", id: "spec-preview" });
    const extra = h("textarea", { id: "spec-extra", rows: 5, spellcheck: "false", placeholder: '{"train": {"lr": 0.02}, "triage": {"ratios": [0.2, 0.5, 0.8]}}' });
    let idempotency = randomKey();

    const fieldsets = FIELDS.map(([legend, fields]) =>
      h(
        "fieldset",
        {},
        h("legend", {}, legend),
        fields.map((f) => {
          const id = `f-${f.path.replace(/[.@]/g, "-")}`;
          let input;
          if (f.type === "select") input = h("select", { id, name: f.path }, f.options.map((o) => h("option", { value: o, selected: o === f.value }, o)));
          else if (f.type === "bool") input = h("input", { id, name: f.path, type: "checkbox", checked: f.value });
          else input = h("input", { id, name: f.path, type: "text", inputmode: f.type === "text" ? null : "decimal", value: f.value, placeholder: f.placeholder || null, autocomplete: "off", spellcheck: "false" });
          inputs.set(f.path, { input, field: f, message: h("div", { class: "field-error" }) });
          const { message } = inputs.get(f.path);
          return h(
            "div",
            { class: `field${f.type === "bool" ? " check" : ""}`, dataset: { path: f.path } },
            f.type === "bool" ? [input, h("label", { for: id }, f.label)] : [h("label", { for: id }, f.label), input],
            f.help ? h("div", { class: "help" }, f.help) : null,
            message,
          );
        }),
      ),
    );

    const build = () => {
      const spec = {};
      for (const [path, { input, field }] of inputs) {
        if (path.startsWith("@")) continue;
        if (field.type === "bool") {
          setPath(spec, path, input.checked);
          continue;
        }
        const raw = input.value.trim();
        if (raw === "") continue; // left to the server's default
        const number = Number(raw);
        const numeric = field.type === "int" || field.type === "float";
        setPath(spec, path, numeric && raw !== "" && !Number.isNaN(number) ? number : raw);
      }
      const text = extra.value.trim();
      if (text) merge(spec, JSON.parse(text));
      return spec;
    };
    const update = () => {
      try {
        preview.textContent = JSON.stringify(build(), null, 2);
        extra.classList.remove("invalid");
      } catch (err) {
        preview.textContent = `More options is not valid JSON: ${err.message}`;
        extra.classList.add("invalid");
      }
    };

    const showErrors = (detail) => {
      for (const { input, message } of inputs.values()) {
        input.classList.remove("invalid");
        message.textContent = "";
      }
      if (!detail) {
        errorsBox.hidden = true;
        return;
      }
      errorsBox.hidden = false;
      if (!Array.isArray(detail)) {
        errorsBox.replaceChildren(h("strong", {}, "Not submitted: "), String(typeof detail === "string" ? detail : JSON.stringify(detail)));
        return;
      }
      const items = detail.map((d) => {
        const loc = (d.loc || []).filter((p) => p !== "body");
        const path = loc.join(".");
        const message = (d.msg || "").replace(/^Value error, /, "");
        let target = inputs.get(path);
        if (!target) target = [...inputs.entries()].find(([p]) => path && p.startsWith(`${path}.`))?.[1];
        if (target) {
          target.input.classList.add("invalid");
          target.message.textContent = target.message.textContent ? `${target.message.textContent}; ${message}` : message;
        }
        return h("li", {}, h("code", { class: "loc" }, path || "(spec)"), `: ${message}`);
      });
      errorsBox.replaceChildren(h("strong", {}, "The server refused the spec:"), h("ul", {}, items));
      const first = root.querySelector("input.invalid, select.invalid");
      if (first) first.focus();
    };

    const button = h("button", { type: "submit", id: "submit-job" }, "Submit job");
    const form = h(
      "form",
      {
        id: "submit-form",
        class: "submit-form",
        novalidate: true, // the API validates: one set of rules, and its messages name the field
        oninput: update,
        onchange: update,
        onsubmit: async (event) => {
          event.preventDefault();
          let spec;
          try {
            spec = build();
          } catch (err) {
            showErrors(`More options is not valid JSON: ${err.message}`);
            return;
          }
          button.disabled = true;
          try {
            const job = await api("/v1/jobs", {
              method: "POST",
              body: spec,
              query: { queue: inputs.get("@queue").input.value },
              headers: { "Idempotency-Key": idempotency }, // a double click makes one job
            });
            idempotency = randomKey();
            location.hash = `#/jobs/${job.id}`;
          } catch (err) {
            if (!(err instanceof AuthRequired)) showErrors(err instanceof ApiError ? err.detail : err.message);
          } finally {
            button.disabled = false;
          }
        },
      },
      fieldsets,
      h(
        "fieldset",
        { class: "wide" },
        h("legend", {}, "More options"),
        h("div", { class: "help" }, "Any other JobSpec field as JSON; it is merged over the fields above (see the README's JobSpec)."),
        extra,
      ),
      h("div", { class: "actions" }, button, h("a", { href: "#/" }, "Cancel")),
    );
    root.append(
      h("h1", {}, "New job"),
      h("p", { class: "muted" }, "A JobSpec, validated by the server: a refused field is named below it. Empty fields take the server's defaults."),
      errorsBox,
      h("div", { class: "submit-layout" }, form, h("aside", { class: "panel" }, h("h2", {}, "Request body"), h("p", { class: "muted small" }, "POST /v1/jobs"), preview)),
    );
    update();
    inputs.get("name").input.focus();
    return { stop() {}, keepOnAuth: true };
  }

  // ---------------------------------------------------------------- start

  window.addEventListener("hashchange", route);
  showKeyState();
  route();
})();

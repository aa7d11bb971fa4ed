// One job (#/jobs/ID): its head, the summary cards, the charts
// (charts.js), the candidates (candidates.js) and the files to download.
// Refreshed every POLL_MS until the job ends; a poll that finds nothing new
// (a 304 for the job, no changed candidate) redraws nothing.

import { api, ApiError, polled, poller, TERMINAL } from "./api.js";
import { askForKey, authHeaders } from "./auth.js";
import { candidateFeed, chosenId, drawTable } from "./candidates.js";
import { drawChannels, drawPareto, drawSensitivity, drawTimeline } from "./charts.js";
import { errorBox, fmt, h, progressBar, stallBadge, stallText, statusBadge } from "./dom.js";

export function jobView(root, jobId) {
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

  const feed = candidateFeed(jobId);
  let stale = true; // something changed that is not drawn yet (kept when a refresh fails midway)
  const refresh = async () => {
    const job = await polled(`/v1/jobs/${jobId}`);
    if (await feed.update()) stale = true;
    // polled() hands back the very object it gave before when the job is unchanged.
    if (job !== state.job) stale = true;
    if (!stale) return !TERMINAL.has(job.status);
    state.job = job;
    state.cands = feed.items();
    state.total = feed.total();
    // The front is drawn from the candidates and the job's result: read only when one moved.
    state.pareto = await api(`/v1/jobs/${jobId}/pareto`);
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
    stale = false;
    return !TERMINAL.has(job.status);
  };
  const poll = poller(refresh, errors.show);
  return {
    stop() {
      poll.stop();
      for (const plot of [el.pareto, el.channels, el.sensitivity, el.timeline]) if (window.Plotly) window.Plotly.purge(plot);
    },
  };
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

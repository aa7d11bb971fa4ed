// The job page's four plotly charts: the Pareto front, the kept channels of
// the selected candidate, the sensitivity curves and the trials per worker.
// plotly.js is a classic script (/static/plotly.min.js) loaded before the
// modules, so it is window.Plotly here.

import { TERMINAL } from "./api.js";
import { chosenId } from "./candidates.js";
import { fmt, h } from "./dom.js";

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
  window.Plotly.react(div, data, lay, PLOT_CONFIG);
}

function emptyPlot(div, message) {
  if (window.Plotly) window.Plotly.purge(div); // drops its click handler too
  delete div.dataset.bound;
  div.replaceChildren(h("p", { class: "placeholder" }, message));
}

export function drawPareto(state, el, select) {
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

export function drawChannels(state, el) {
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

export function drawSensitivity(state, el) {
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

export function drawTimeline(state, el) {
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

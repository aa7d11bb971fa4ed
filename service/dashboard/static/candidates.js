// A job's candidates: which one is chosen, and the table that lists them all.

import { fmt, h } from "./dom.js";

/** The candidate the job exported, else the best one so far. */
export function chosenId(state) {
  if (state.result && state.result.best) return state.result.best.candidate_id;
  if (state.pareto && state.pareto.chosen !== null) return state.pareto.chosen;
  return state.job.best ? state.job.best.candidate_id : null;
}

export function drawTable(state, el, select) {
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

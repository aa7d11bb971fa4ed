// A job's candidates: the feed that keeps them current, which one is chosen,
// and the table that lists them all.

import { polled } from "./api.js";
import { fmt, h } from "./dom.js";

const PAGE = 500; // the API's largest candidates page
const MAX_CANDIDATES = 5000; // drawn and listed; larger jobs show the first ones
const MAX_PAGES = MAX_CANDIDATES / PAGE; // per poll: a large job catches up over a few polls

/**
 * A job's candidates, read once in full and then only what changed.
 *
 * The API's since= cursor (service/api/cursor.py) answers with the candidates
 * created or changed after the reply that gave it, and the next cursor. The
 * first read, since=0, is the full list; later ones are merged by id. A cursor
 * from before the job ended gets every candidate once more (the ladder's rungs
 * are recorded just before the end); its reply's cursor starts with "e", and
 * after that nothing changes, so the feed stops asking.
 */
export function candidateFeed(jobId) {
  const byId = new Map();
  let cursor = "0";
  let ended = false;
  let dirty = false; // merged but not yet sorted into items (kept if a read fails midway)
  let items = [];
  return {
    /** The candidates held, by trial number, at most MAX_CANDIDATES of them. */
    items: () => items,
    total: () => byId.size,
    /** Read what changed; whether anything did since the last call. */
    async update() {
      for (let pages = 0; pages < MAX_PAGES && !ended; pages++) {
        const page = await polled(`/v1/jobs/${jobId}/candidates`, { since: cursor, limit: PAGE });
        for (const cand of page.items) {
          // A candidate sent again unchanged (after the job ended, most are) needs no redraw.
          const old = byId.get(cand.id);
          if (old && JSON.stringify(old) === JSON.stringify(cand)) continue;
          byId.set(cand.id, cand);
          dirty = true;
        }
        cursor = page.next_since;
        // A full page may have more behind it; a short one is all there is for now.
        if (page.items.length < PAGE) {
          ended = cursor.startsWith("e");
          break;
        }
      }
      if (!dirty) return false;
      dirty = false;
      items = [...byId.values()].sort((a, b) => a.trial_number - b.trial_number).slice(0, MAX_CANDIDATES);
      return true;
    },
  };
}

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

// The job list (#/): every job of the key's owner, newest first, refreshed
// every POLL_MS, with a filter by state. An unchanged list (a 304) is not redrawn.

import { POLL_MS, polled, poller } from "./api.js";
import { errorBox, fmt, h, progressBar, stallBadge, statusBadge } from "./dom.js";

export function listView(root) {
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

  let shown = null; // the page drawn; polled() returns that same object while it is current
  const refresh = async () => {
    const query = { limit: 100 };
    if (filter.value) query.status = filter.value;
    const page = await polled("/v1/jobs", query);
    if (page !== shown) {
      body.replaceChildren(...page.items.map(jobRow));
      if (page.items.length === 0) {
        body.append(h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No jobs yet. ", h("a", { href: "#/submit" }, "Submit one"), ".")));
      }
      shown = page;
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

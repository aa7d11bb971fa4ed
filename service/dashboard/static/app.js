// prunesearch dashboard: plain JavaScript modules, no build step.
//
// Three views chosen by the URL hash: the job list (#/, jobs.js), one job
// (#/jobs/ID, job.js) and the submit form (#/submit, submit.js). Every
// number comes from the REST API under /v1 (api.js), fetched with the API
// key kept in localStorage (auth.js); the page polls while something can
// still change. Charts are drawn with plotly.js (charts.js), which the
// server hands out from the installed plotly package.
//
// This file is the entry (index.html loads it as a module) and the router.

import { initKey } from "./auth.js";
import { jobView } from "./job.js";
import { listView } from "./jobs.js";
import { submitView } from "./submit.js";

const root = document.getElementById("view");
let current = null; // the view shown: {stop(), keepOnAuth?}

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
  if (job) current = jobView(root, job[1]);
  else if (hash === "#/submit") current = submitView(root);
  else current = listView(root);
}

initKey({
  // The API refused: stop polling, but a form keeps what was typed.
  asked: () => {
    if (!current || !current.keepOnAuth) stopView();
  },
  given: () => {
    if (!current) route();
  },
  forgotten: route,
});
window.addEventListener("hashchange", route);
route();

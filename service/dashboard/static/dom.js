// Small helpers every view uses: building elements, formatting numbers,
// badges, the progress bar and the error box.

/** Build an element; strings become text nodes (never HTML), so API data cannot inject markup. */
export function h(tag, attrs, ...children) {
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

export const fmt = {
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

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, dataset: { status } }, status);
}

/** A searching job that stopped moving (the API's `stalled`, see service/stall.py). */
export function stallBadge(job) {
  if (!job.stalled) return null;
  return h("span", { class: "badge stalled", title: stallText(job.stalled) }, "stalled");
}

export function stallText(stall) {
  const median = stall.median_trial_s === null ? "" : ` (its trials take ${fmt.secs(stall.median_trial_s)})`;
  return `No trial has finished for ${fmt.secs(stall.idle_s)}, more than the ${fmt.secs(stall.threshold_s)} this job allows${median}. Are its workers running?`;
}

export function progressBar(done, total) {
  const share = total > 0 ? Math.min(1, done / total) : 0;
  return h(
    "div",
    { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": done, "aria-label": "trials finished" },
    h("div", { class: "progress-fill", style: { width: `${(100 * share).toFixed(1)}%` } }),
    h("span", { class: "progress-text" }, `${done} / ${total}`),
  );
}

export function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A hidden alert box and show(err): the error's message, or hidden again for null. */
export function errorBox() {
  const box = h("div", { class: "error", role: "alert", hidden: true });
  const show = (err) => {
    box.hidden = !err;
    box.textContent = err ? `Could not load: ${err.message}` : "";
  };
  return { box, show };
}

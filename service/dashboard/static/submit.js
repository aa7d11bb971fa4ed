// The new-job form (#/submit): a JobSpec built from the fields, previewed as
// the request body and validated by the API, whose refusals are shown under
// the fields they name.
//
// The choices of a select whose field the API's schema lists as an enum
// (sampler, criterion, dataset...) are read from GET /openapi.json
// (schema.js), with the server's default selected: the form offers what
// this server accepts, not what it accepted when this file was written.

import { api, ApiError, AuthRequired } from "./api.js";
import { h, randomKey } from "./dom.js";
import { loadOpenApi, parameterChoices, specChoices } from "./schema.js";

// type "enum": a select whose options and default come from the OpenAPI
// document, the JobSpec field at `path`, or for "@queue" the query
// parameter of POST /v1/jobs. type "select": options listed here, where the
// schema has none (the architecture is any name a plugin registers).
const FIELDS = [
  ["Job", [
    { path: "name", label: "Name", type: "text", value: "", placeholder: "fmnist-resnet20-half", help: "Letters, digits, . _ -; up to 100 characters." },
    { path: "@queue", label: "Queue", type: "enum", help: "Workers serve interactive first." },
    { path: "seed", label: "Seed", type: "int", value: 0 },
  ]],
  ["Model and data", [
    { path: "model.arch", label: "Architecture", type: "select", options: ["resnet20", "resnet56", "vgg11s", "lenet5"], value: "resnet20" },
    { path: "model.pretrain_epochs", label: "Baseline epochs", type: "int", value: 3, help: "The baseline is trained first." },
    { path: "dataset.name", label: "Dataset", type: "enum" },
    { path: "dataset.subset", label: "Training subset", type: "int", value: "", placeholder: "all", help: "Use only this many training images." },
  ]],
  ["Budget", [
    { path: "target.flops_ratio", label: "FLOPs ratio", type: "float", value: 0.5, help: "Keep at most this share of the FLOPs, in (0, 1]." },
    { path: "target.params_ratio", label: "Params ratio", type: "float", value: "", placeholder: "none" },
  ]],
  ["Search", [
    { path: "search.sampler", label: "Sampler", type: "enum" },
    { path: "search.n_trials", label: "Trials", type: "int", value: 24 },
    { path: "search.min_ratio", label: "Min. keep ratio", type: "float", value: 0.2 },
    { path: "search.criterion", label: "Criterion", type: "enum" },
    { path: "search.operator", label: "Operator", type: "enum" },
    { path: "search.objective", label: "Pareto cost", type: "enum" },
  ]],
  ["Scoring", [
    { path: "scoring.mode", label: "Scoring", type: "enum" },
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

/** {options, value} of an "enum" field, read from the OpenAPI document (throws what is missing). */
function enumChoices(doc, field) {
  if (field.path.startsWith("@")) return parameterChoices(doc, "post", "/v1/jobs", field.path.slice(1));
  return specChoices(doc, field.path);
}

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

export function submitView(root) {
  let stopped = false;
  const loading = h("p", { class: "muted", id: "submit-loading" }, "Loading the form's choices from /openapi.json…");
  root.append(loading);
  // Drawn once the schema is read, or could not be: then with the error.
  loadOpenApi()
    .then(
      (doc) => ({ doc, failed: null }),
      (err) => ({ doc: null, failed: err }),
    )
    .then(({ doc, failed }) => {
      loading.remove();
      if (!stopped) drawForm(root, doc, failed);
    });
  return {
    stop() {
      stopped = true;
    },
    keepOnAuth: true,
  };
}

/** The select of an "enum" field: the schema's choices, or a disabled one that says they are missing. */
function enumSelect(id, field, choices) {
  if (!choices) return h("select", { id, name: field.path, disabled: true }, h("option", { value: "" }, "(choices unavailable, see above)"));
  return h("select", { id, name: field.path }, choices.options.map((o) => h("option", { value: o, selected: o === choices.value }, o)));
}

/** The form; doc: the OpenAPI document, or null and failed: why it could not be read. */
function drawForm(root, doc, failed) {
  const inputs = new Map();
  const errorsBox = h("div", { class: "error", id: "submit-errors", role: "alert", hidden: true });
  const preview = h("pre", { class: "preview", id: "spec-preview" });
  const extra = h("textarea", { id: "spec-extra", rows: 5, spellcheck: "false", placeholder: '{"train": {"lr": 0.02}, "triage": {"ratios": [0.2, 0.5, 0.8]}}' });
  let idempotency = randomKey();

  // Never a select that is silently empty: a field whose choices cannot be
  // read is disabled (left to the server's default) and named in this box.
  const missing = [];
  const choicesFor = (field) => {
    try {
      if (!doc) throw failed;
      return enumChoices(doc, field);
    } catch (err) {
      missing.push({ field, err });
      return null;
    }
  };

  const fieldsets = FIELDS.map(([legend, fields]) =>
    h(
      "fieldset",
      {},
      h("legend", {}, legend),
      fields.map((f) => {
        const id = `f-${f.path.replace(/[.@]/g, "-")}`;
        let input;
        if (f.type === "enum") input = enumSelect(id, f, choicesFor(f));
        else if (f.type === "select") input = h("select", { id, name: f.path }, f.options.map((o) => h("option", { value: o, selected: o === f.value }, o)));
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
  const schemaBox = missing.length
    ? h(
        "div",
        { class: "error", id: "schema-error", role: "alert" },
        h("strong", {}, "Some choices could not be read from the API's schema (/openapi.json): "),
        failed
          ? `${failed.message}. ${missing.map(({ field }) => field.label).join(", ")} are left to the server's defaults; reload the page to try again.`
          : h("ul", {}, missing.map(({ field, err }) => h("li", {}, h("code", { class: "loc" }, field.path.replace(/^@/, "")), `: ${err.message}; left to the server's default`))),
      )
    : null;

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
        const queue = inputs.get("@queue").input.value;
        try {
          const job = await api("/v1/jobs", {
            method: "POST",
            body: spec,
            query: queue ? { queue } : undefined, // none: the server's default
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
    schemaBox,
    errorsBox,
    h("div", { class: "submit-layout" }, form, h("aside", { class: "panel" }, h("h2", {}, "Request body"), h("p", { class: "muted small" }, "POST /v1/jobs"), preview)),
  );
  update();
  inputs.get("name").input.focus();
}

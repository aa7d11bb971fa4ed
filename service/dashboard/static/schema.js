// The API's own description of itself, GET /openapi.json: the submit form
// takes the choices of its selects (and their defaults) from it, so a
// sampler or criterion added on the server shows up here with no edit.
//
// Pydantic writes a choice as an `enum` on the property, but a property can
// also point elsewhere ($ref), wrap its type (allOf) or allow null (anyOf);
// resolve() and choicesOf() look through all of these.

let loading = null; // one fetch per page load; a failed one is tried again next time

/** The OpenAPI document; public, so it is fetched without the key (and a 401 asks for none). */
export function loadOpenApi() {
  if (!loading) {
    loading = fetch("/openapi.json", { headers: { Accept: "application/json" } }).then((resp) => {
      if (!resp.ok) throw new Error(`GET /openapi.json answered HTTP ${resp.status}`);
      return resp.json();
    });
    loading.catch(() => {
      loading = null;
    });
  }
  return loading;
}

/** The node a local reference ("#/components/schemas/SearchSpec") points at. */
function pointer(doc, ref) {
  if (!ref.startsWith("#/")) throw new Error(`cannot follow the reference ${ref}`);
  let node = doc;
  for (const part of ref.slice(2).split("/")) {
    node = node?.[part.replaceAll("~1", "/").replaceAll("~0", "~")];
  }
  if (node === undefined) throw new Error(`the reference ${ref} points at nothing`);
  return node;
}

/**
 * A schema with its $ref followed and its allOf merged in. The node's own
 * keywords win over the referenced ones: a property's `default` sits next
 * to its $ref.
 */
function resolve(doc, node, seen = new Set()) {
  if (!node || typeof node !== "object") return {};
  let out = node;
  if (out.$ref) {
    if (seen.has(out.$ref)) throw new Error(`the reference ${out.$ref} refers to itself`);
    const { $ref, ...own } = out;
    out = { ...resolve(doc, pointer(doc, $ref), new Set([...seen, $ref])), ...own };
  }
  if (Array.isArray(out.allOf)) {
    const { allOf, ...own } = out;
    const parts = [...allOf.map((part) => resolve(doc, part, seen)), own];
    out = Object.assign({}, ...parts);
    out.properties = Object.assign({}, ...parts.map((part) => part.properties || {}));
  }
  return out;
}

/** The branches of an anyOf/oneOf (null left out), or the node alone. */
function branches(doc, node) {
  const options = node.anyOf || node.oneOf;
  if (!Array.isArray(options)) return [node];
  return options.map((b) => resolve(doc, b)).filter((b) => b.type !== "null");
}

/** Every value the schema allows, in its order: enum, const, or those of its branches. */
function choicesOf(doc, node) {
  if (Array.isArray(node.enum)) return node.enum.filter((v) => v !== null);
  if (node.const !== undefined && node.const !== null) return [node.const];
  const found = [];
  if (node.anyOf || node.oneOf) {
    for (const branch of branches(doc, node)) for (const v of choicesOf(doc, branch)) if (!found.includes(v)) found.push(v);
  }
  return found;
}

/** Options and default of a select, or an Error that says what the schema lacks. */
function selectOf(doc, node, where, fallback) {
  const options = choicesOf(doc, node).map(String);
  if (options.length === 0) throw new Error(`the API's schema lists no choices for ${where}`);
  const value = node.default ?? fallback;
  return { options, value: options.includes(String(value)) ? String(value) : options[0] };
}

/**
 * The choices of a JobSpec field by its dotted path ("search.sampler"):
 * {options, value}, value being the server's default.
 */
export function specChoices(doc, path, schema = "JobSpec") {
  let node = resolve(doc, { $ref: `#/components/schemas/${schema}` });
  let fallback; // the parent's default object can hold the default too
  for (const key of path.split(".")) {
    const parent = branches(doc, node).find((b) => b.properties && key in b.properties);
    if (!parent) throw new Error(`the API's schema has no field ${path}`);
    const parentDefault = node.default;
    node = resolve(doc, parent.properties[key]);
    fallback = parentDefault && typeof parentDefault === "object" ? parentDefault[key] : undefined;
  }
  return selectOf(doc, node, path, fallback);
}

/** The choices of an operation's parameter, e.g. ("post", "/v1/jobs", "queue"). */
export function parameterChoices(doc, method, path, name) {
  const operation = doc.paths?.[path]?.[method];
  const param = (operation?.parameters || []).map((p) => resolve(doc, p)).find((p) => p.name === name);
  if (!param) throw new Error(`the API's schema has no parameter ${name} of ${method.toUpperCase()} ${path}`);
  return selectOf(doc, resolve(doc, param.schema), `${name} of ${method.toUpperCase()} ${path}`);
}

"""The dashboard's JavaScript modules: each one served as JavaScript, and schema.js read right.

A browser runs a module only when it comes with a JavaScript media type, and
a missing import stops the whole page; both are checked here over HTTP, from
the entry ``app.js`` down, without a browser. The submit form's choices come
from the OpenAPI document through ``schema.js``: it is run in Chromium against
the app's real document and against hand-written ones that use ``$ref``,
``allOf`` and ``anyOf`` the ways pydantic may write a field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Page, sync_playwright

from core.settings import Settings
from service.api.app import create_app
from service.dashboard import FILES, STATIC_DIR
from tests.integration.test_dashboard_browser import chromium

__all__ = ["chromium"]

IMPORT = re.compile(r'^import\s+\{[^}]*\}\s+from\s+"\./([\w-]+\.js)";', re.MULTILINE)
MAX_LINES = 300


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    home = tmp_path_factory.mktemp("home")
    return TestClient(create_app(Settings(home=home, database_url="sqlite://")))


def _imports(source: str) -> list[str]:
    return IMPORT.findall(source)


def test_the_page_loads_the_entry_as_a_module_and_plotly_as_a_classic_script(
    app_client: TestClient,
) -> None:
    page = app_client.get("/").text
    assert '<script type="module" src="/static/app.js"></script>' in page
    assert '<script src="/static/plotly.min.js" defer></script>' in page
    # window.Plotly is there before the modules run.
    assert page.index('src="/static/plotly.min.js"') < page.index('src="/static/app.js"')


def test_every_module_is_served_as_javascript_and_reached_from_the_entry(
    app_client: TestClient,
) -> None:
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        response = app_client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("text/javascript"), name
        assert response.headers["x-content-type-options"] == "nosniff"
        todo += _imports(response.text)
    on_disk = {p.name for p in STATIC_DIR.glob("*.js")}
    assert seen == on_disk, "a module nobody imports, or an import of a missing file"
    assert {n for n, t in FILES.items() if t.startswith("text/javascript")} == on_disk
    assert app_client.get("/static/index.html").status_code == 404  # the page is served at /


def test_a_current_copy_of_a_file_is_a_304(app_client: TestClient) -> None:
    etag = app_client.get("/static/app.js").headers["ETag"]
    for sent in (etag, f"W/{etag}", f'"other", {etag}'):
        reply = app_client.get("/static/app.js", headers={"If-None-Match": sent})
        assert reply.status_code == 304 and reply.headers["ETag"] == etag
    assert app_client.get("/static/app.js", headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize("path", sorted(STATIC_DIR.glob("*.js")), ids=lambda p: p.name)
def test_each_module_is_small_and_imports_only_what_it_needs(path: Path) -> None:
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_LINES, f"{path.name}: split it"
    assert "use strict" not in source  # modules are strict already
    for line in source.splitlines():
        if not line.startswith("import "):
            continue
        names = re.search(r"\{([^}]*)\}", line)
        assert names, line
        body = source.replace(line, "")
        for name in (n.strip() for n in names.group(1).split(",")):
            assert re.search(rf"\b{name}\b", body), f"{path.name}: {name} imported, not used"


# --- schema.js in Chromium ------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema_page(chromium: str) -> Iterator[Page]:
    """A blank page with schema.js imported as window.schema (from a blob: URL, no server)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page()
        page.evaluate(
            """async (source) => {
              const url = URL.createObjectURL(new Blob([source], {type: "text/javascript"}));
              window.schema = await import(url);
            }""",
            (STATIC_DIR / "schema.js").read_text(),
        )
        yield page
        browser.close()


def _choices(page: Page, doc: dict[str, Any], path: str) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        """([doc, path]) => {
          try { return window.schema.specChoices(doc, path); }
          catch (err) { return {error: err.message}; }
        }""",
        [doc, path],
    )
    return result


# The form's schema-driven selects (submit.js's type "enum"), as JobSpec paths.
FORM_ENUMS = [
    "dataset.name",
    "search.sampler",
    "search.criterion",
    "search.operator",
    "search.objective",
    "scoring.mode",
]


def test_schema_js_reads_the_choices_of_the_apps_own_document(
    schema_page: Page, app_client: TestClient
) -> None:
    doc = app_client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path in FORM_ENUMS:
        section, field = path.split(".")
        component = schemas["JobSpec"]["properties"][section]["$ref"].rsplit("/", 1)[-1]
        expected = schemas[component]["properties"][field]
        got = _choices(schema_page, doc, path)
        assert got == {"options": expected["enum"], "value": expected["default"]}, path
    queue = schema_page.evaluate(
        "(doc) => window.schema.parameterChoices(doc, 'post', '/v1/jobs', 'queue')", doc
    )
    assert queue == {"options": ["interactive", "overnight"], "value": "interactive"}
    assert "no choices" in _choices(schema_page, doc, "model.arch")["error"]  # a free string
    assert "no field search.nope" in _choices(schema_page, doc, "search.nope")["error"]


def _doc(sampler: dict[str, Any], **components: Any) -> dict[str, Any]:
    spec = {
        "type": "object",
        "properties": {"search": {"$ref": "#/components/schemas/SearchSpec"}},
    }
    search = {"type": "object", "properties": {"sampler": sampler}}
    return {"components": {"schemas": {"JobSpec": spec, "SearchSpec": search, **components}}}


@pytest.mark.parametrize(
    ("sampler", "components"),
    [
        ({"$ref": "#/components/schemas/Sampler", "default": "b"}, {}),
        ({"allOf": [{"$ref": "#/components/schemas/Sampler"}], "default": "b"}, {}),
        ({"anyOf": [{"$ref": "#/components/schemas/Sampler"}, {"type": "null"}]}, {}),
        ({"anyOf": [{"const": "a"}, {"const": "b"}, {"const": "c"}], "default": "b"}, {}),
        ({"anyOf": [{"enum": ["a", "b"]}, {"enum": ["c"]}, {"type": "null"}]}, {}),
    ],
    ids=["ref", "allOf", "anyOf-null", "consts", "enums"],
)
def test_schema_js_looks_through_ref_allof_and_anyof(
    schema_page: Page, sampler: dict[str, Any], components: dict[str, Any]
) -> None:
    doc = _doc(sampler, Sampler={"type": "string", "enum": ["a", "b", "c"]}, **components)
    got = _choices(schema_page, doc, "search.sampler")
    # Without a default of its own the first choice is shown, as a plain select would.
    default = sampler.get("default", "a")
    assert got == {"options": ["a", "b", "c"], "value": default}


def test_schema_js_takes_a_default_from_the_parent_object(schema_page: Page) -> None:
    doc = _doc({"enum": ["a", "b", "c"]})
    doc["components"]["schemas"]["JobSpec"]["properties"]["search"]["default"] = {"sampler": "c"}
    assert _choices(schema_page, doc, "search.sampler") == {
        "options": ["a", "b", "c"],
        "value": "c",
    }

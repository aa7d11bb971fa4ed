"""The dashboard in a real browser: Debian's chromium, driven by Playwright, on a live stack.

``prunesearch serve`` with API keys on, two ``prunesearch worker`` processes
and a real Redis run one small real job (LeNet-5 on digits, NSGA-II, with a
sensitivity scan). The browser then does what a user does: gives the key
the page asks for, watches the job list refresh until the job is done
(while a second tab watches the job's own page poll cheaply: 304s for
unchanged reads, ``since=`` for the candidates, see :class:`Polls`),
opens the job page and reads every chart back from plotly's own data
(checked against the REST API), downloads a file, submits a bad spec and a
good one. The page must load nothing from another origin.

Screenshots go to ``tmp_path``; with ``PRUNESEARCH_UPDATE_SCREENSHOTS=1``
also to ``docs/screenshots/`` (the ones the README shows).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
from playwright.sync_api import Page, Response, expect, sync_playwright

from tests.integration.conftest import tiny_spec
from tests.support import free_port, stop_processes, wait_for_api

CLI = [sys.executable, "-m", "cli.main"]
REDIS_DB = 11  # 12: chaos tests, 13: service e2e, 15: service tests
CHROMIUM = os.environ.get("PRUNESEARCH_CHROMIUM", "/usr/bin/chromium")
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WIDTH = 1280
JOB_TIMEOUT_MS = 240_000
IMPORTED = re.compile(r'^import .* from "\./([\w-]+\.js)";$', re.MULTILINE)
# The submit form's selects whose choices the OpenAPI document lists (submit.js, type "enum").
SCHEMA_SELECTS = {
    "#f-dataset-name": ("DatasetSpec", "name"),
    "#f-search-sampler": ("SearchSpec", "sampler"),
    "#f-search-criterion": ("SearchSpec", "criterion"),
    "#f-search-operator": ("SearchSpec", "operator"),
    "#f-search-objective": ("SearchSpec", "objective"),
    "#f-scoring-mode": ("ScoringSpec", "mode"),
}


class Stack:
    """A running API and two workers, and a client that carries alice's key."""

    def __init__(self, url: str, key: str, workers: list[str], logs: Path) -> None:
        self.url, self.key, self.workers, self.logs = url, key, workers, logs
        self.api = httpx.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}
        )

    def get(self, path: str, **params: Any) -> Any:
        response = self.api.get(path, params=params)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        return response.json()

    def log_text(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-4000:]}" for p in self.logs.glob("*.log"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, looked for before the stack starts; missing, it fails the test."""
    found = shutil.which(CHROMIUM)
    if found is None:
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the dashboard test drives Debian's `chromium` package. "
            "Install it (`make system-deps` as root runs `apt-get install chromium`) or point "
            "PRUNESEARCH_CHROMIUM at a Chromium binary."
        )
    return found


@pytest.fixture
def stack(tmp_path: Path, redis_base: str) -> Iterator[Stack]:
    redis_url = f"{redis_base}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "PRUNESEARCH_HOME": str(tmp_path / "home"),
        "PRUNESEARCH_REDIS_URL": redis_url,
        "PRUNESEARCH_AUTH": "keys",
    }
    made = subprocess.run(
        [*CLI, "keys", "create", "--owner", "alice"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip().splitlines()[-1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    names = [f"dash-{os.getpid()}-w{i}" for i in range(2)]
    logs = tmp_path / "logs"
    logs.mkdir()
    commands = [("api", [*CLI, "serve", "--port", str(port)])]
    commands += [(n, [*CLI, "worker", "--name", n, "--device", "cpu"]) for n in names]
    procs = [
        subprocess.Popen(
            cmd, env=env, stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT
        )
        for name, cmd in commands
    ]
    try:
        wait_for_api(url, procs[0], (logs / "api.log").read_text)
        yield Stack(url, key, names, logs)
    finally:
        stop_processes(procs)
        redis.Redis.from_url(redis_url).flushdb()


def job_spec() -> dict[str, Any]:
    """A real search in about 20 s on two CPU workers, with every chart filled.

    Digits (shipped with scikit-learn) gives accuracies worth plotting; NSGA-II
    spreads candidates below the budget, so the front has several points; the
    sensitivity scan without narrowing gives the curves.
    """
    spec = tiny_spec("digits-lenet5-half", n_trials=12, sampler="nsga2").model_dump(mode="json")
    spec["model"]["pretrain_epochs"] = 3
    spec["dataset"] = {"name": "digits"}
    spec["scoring"].update({"promote_top_k": 2, "promote_steps": 20})
    spec["triage"] = {
        "enabled": True,
        "ratios": [0.2, 0.4, 0.6, 0.8],
        "blocks": False,
        "narrow": False,
        "seed_trials": 1,
    }
    return spec


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot; also into docs/ when asked to refresh the committed ones."""
    page.screenshot(path=tmp_path / f"{name}.png", full_page=True)
    if os.environ.get("PRUNESEARCH_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / f"{name}.png", DOCS_SHOTS / f"{name}.png")


def plot_data(page: Page, plot_id: str) -> dict[str, Any]:
    """What plotly drew: each trace's name, points and the axis titles."""
    result: dict[str, Any] = page.evaluate(
        """(id) => {
          const gd = document.getElementById(id);
          return {
            traces: (gd.data || []).map((t) => ({
              name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || []),
              customdata: Array.from(t.customdata || []),
            })),
            xtitle: gd.layout.xaxis.title.text, ytitle: gd.layout.yaxis.title.text,
          };
        }""",
        plot_id,
    )
    return result


def _check_static(stack: Stack) -> None:
    """The page and its files need no key; plotly.js comes from the plotly package."""
    page = httpx.get(f"{stack.url}/")
    assert page.status_code == 200 and "/static/plotly.min.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    plotly = httpx.get(f"{stack.url}/static/plotly.min.js")
    assert plotly.status_code == 200 and "plotly.js v" in plotly.text[:200]
    again = httpx.get(
        f"{stack.url}/static/plotly.min.js", headers={"If-None-Match": plotly.headers["etag"]}
    )
    assert again.status_code == 304 and not again.content
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{stack.url}/static/{name}").status_code == 200
    # The entry and every module it imports, as JavaScript (a browser runs no module otherwise).
    todo, seen = ["app.js"], set()
    while todo:
        name = todo.pop()
        seen.add(name)
        module = httpx.get(f"{stack.url}/static/{name}")
        assert module.status_code == 200, name
        assert module.headers["content-type"].startswith("text/javascript"), name
        todo += [n for n in IMPORTED.findall(module.text) if n not in seen]
    assert len(seen) > 1
    assert httpx.get(f"{stack.url}/static/..%2Fapp.py").status_code == 404
    assert httpx.get(f"{stack.url}/v1/jobs").status_code == 401


def test_dashboard_in_chromium(tmp_path: Path, chromium: str, stack: Stack) -> None:
    _check_static(stack)
    created = stack.api.post("/v1/jobs", json=job_spec())
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        context = browser.new_context(
            viewport={"width": WIDTH, "height": 900}, accept_downloads=True
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: (
                problems.append(f"console: {msg.text}")
                if msg.type == "error" and "Failed to load resource" not in msg.text
                else None
            ),
        )
        # A module or the schema that does not load is only "Failed to load resource" above.
        page.on(
            "response",
            lambda resp: (
                problems.append(f"HTTP {resp.status}: {resp.url}")
                if resp.status >= 400 and "/v1/" not in resp.url
                else None
            ),
        )
        foreign: list[str] = []
        page.on(
            "request",
            lambda req: (
                None
                if req.url.startswith((stack.url, "data:", "blob:"))
                else foreign.append(req.url)
            ),
        )
        try:
            _check_list(page, stack, job_id)
            shoot_list_later = _check_job_page(page, stack, job_id, tmp_path)
            _check_submit(page, stack, tmp_path)
            shoot_list_later()
            _check_choices_follow_the_schema(context.new_page(), stack)
        except Exception:
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
            print(f"failure screenshot: {tmp_path / 'failure.png'}\n{stack.log_text()}")
            raise
        finally:
            browser.close()
    assert problems == []
    assert foreign == [], "the dashboard fetched from another origin"


class Read(NamedTuple):
    """One API read of a page: its query, status, the If-None-Match sent and the ETag got."""

    query: dict[str, list[str]]
    status: int
    sent: str | None
    got: str | None


class Polls:
    """The API reads a page made, by path."""

    def __init__(self, page: Page) -> None:
        self.seen: list[tuple[str, Read]] = []
        page.on("response", self.record)

    def record(self, response: Response) -> None:
        url = urlsplit(response.url)
        if url.path.startswith("/v1/") and response.request.method == "GET":
            read = Read(
                parse_qs(url.query),
                response.status,
                response.request.headers.get("if-none-match"),
                response.headers.get("etag"),
            )
            self.seen.append((url.path, read))

    def of(self, path: str) -> list[Read]:
        return [read for p, read in self.seen if p == path]


def _cheap(read: Read) -> bool:
    """A 304 for the tag the page holds, a 200 (with a new tag) only for a changed view."""
    if read.status == 304:
        return read.got == read.sent
    return read.status == 200 and read.got is not None and read.got != read.sent


def _watch_job(page: Page, stack: Stack, job_id: str) -> tuple[Page, Polls]:
    """A second tab on the job's page while the job still runs, its API reads recorded."""
    assert stack.get(f"/v1/jobs/{job_id}")["status"] not in {"done", "failed", "cancelled"}, (
        "the job ended before its page was opened: nothing left to watch it poll"
    )
    watcher = page.context.new_page()  # same origin, so the key in localStorage is shared
    polls = Polls(watcher)
    watcher.goto(f"{stack.url}/#/jobs/{job_id}")
    expect(watcher.locator("#job-name")).to_be_visible()
    return watcher, polls


def _check_polls(watcher: Page, polls: Polls, stack: Stack, job_id: str) -> None:
    """The job's page polled cheaply and still ended up with exactly the API's candidates."""
    # The page stops polling once it has drawn the ended job, after its last candidates read.
    expect(watcher.locator(".job-head .badge[data-status]")).to_have_text("done")
    job_reads = polls.of(f"/v1/jobs/{job_id}")
    assert len(job_reads) > 2, job_reads
    # A job poll after the first sends the tag of its last copy, and a body comes back only
    # when the job changed: a 304 repeats the tag sent, a 200 brings another. (Whether any
    # poll found nothing new depends on the machine's speed: a trial a poll is a change a
    # poll. tests/service/test_polling.py checks the 304s themselves.)
    assert all(read.sent for read in job_reads[1:]), job_reads
    assert all(_cheap(read) for read in job_reads), job_reads

    # The full list once, then only what changed since the last poll's cursor.
    cand_reads = polls.of(f"/v1/jobs/{job_id}/candidates")
    assert len(cand_reads) > 2, cand_reads
    assert all("since" in read.query for read in cand_reads[1:]), cand_reads
    assert all(_cheap(read) for read in cand_reads), cand_reads

    # Merged by id, the table lists what a plain read lists: ids, states, ladder accuracies.
    listed = stack.get(f"/v1/jobs/{job_id}/candidates", limit=500)["items"]
    rows = watcher.locator("#candidates-table tbody tr")
    expect(rows).to_have_count(len(listed))
    shown = rows.evaluate_all(
        """(rows) => rows.map((r) => [
          Number(r.dataset.candidateId), r.querySelector(".badge").textContent,
          r.children[4].textContent !== ""])"""
    )
    expected = [
        [c["id"], c["status"], bool((c["rungs"] or {}).get("short_finetune"))] for c in listed
    ]
    assert shown == expected
    assert any(ladder for _, _, ladder in expected)  # the rungs finalize records came through
    watcher.close()


def _check_list(page: Page, stack: Stack, job_id: str) -> None:
    """The key prompt, then the job list refreshing by itself until the job is done."""
    page.goto(f"{stack.url}/")
    expect(page.locator("#auth")).to_be_visible()  # the API said 401
    page.fill("#auth-key", stack.key)
    page.click("#auth button[type=submit]")
    row = page.locator(f'tr.job-row[data-job-id="{job_id}"]')
    expect(row).to_be_visible()
    bar = row.locator("[role=progressbar]")
    assert bar.get_attribute("aria-valuemax") == "12"
    watcher, polls = _watch_job(page, stack, job_id)
    # No reload from here on: only the page's polling can show the job ending.
    try:
        expect(row.locator(".badge")).to_have_text("done", timeout=JOB_TIMEOUT_MS)
    except AssertionError:
        job = stack.get(f"/v1/jobs/{job_id}")
        pytest.fail(f"job {job['status']} ({job['error']}):\n{stack.log_text()}")
    expect(bar).to_have_attribute("aria-valuenow", "12")
    expect(page.locator("#jobs-footer")).to_contain_text("1 of 1 jobs")
    _check_polls(watcher, polls, stack, job_id)


def _check_job_page(page: Page, stack: Stack, job_id: str, tmp_path: Path) -> Any:
    job = stack.get(f"/v1/jobs/{job_id}")
    cands = stack.get(f"/v1/jobs/{job_id}/candidates", limit=500)
    pareto = stack.get(f"/v1/jobs/{job_id}/pareto")
    sens = stack.get(f"/v1/jobs/{job_id}/sensitivity")
    result = stack.get(f"/v1/jobs/{job_id}/result")
    chosen = result["best"]["candidate_id"]
    by_id = {c["id"]: c for c in cands["items"]}

    page.click(f'tr.job-row[data-job-id="{job_id}"] a.job-link')
    expect(page.locator("#job-name")).to_have_text(job["name"])
    expect(page.locator("#downloads a.download").first).to_be_visible()
    expect(page.locator("#candidates-table tbody tr")).to_have_count(cands["total"])

    # Pareto scatter: every complete candidate, the front, the baseline, the exported one.
    drawn = plot_data(page, "pareto-plot")
    traces = {t["name"]: t for t in drawn["traces"]}
    assert len(traces["candidates"]["x"]) == pareto["candidates"] > 1
    assert len(traces["Pareto front"]["x"]) == len(pareto["front"]) > 1
    assert traces["baseline (unpruned)"]["x"] == [1.0]
    assert traces["baseline (unpruned)"]["y"] == [job["baseline"]["val_accuracy"]]
    assert traces["chosen (exported)"]["customdata"] == [chosen]
    assert drawn["xtitle"].startswith("FLOPs") and "accuracy" in drawn["ytitle"]

    # The candidates table: one row per candidate, the exported one starred.
    starred = page.locator("#candidates-table tr.chosen")
    expect(starred).to_have_count(1)
    assert starred.get_attribute("data-candidate-id") == str(chosen)

    # Kept channels: unpruned, uniform and the selected candidate, per group.
    groups = [g["name"] for g in job["groups"]]
    drawn = plot_data(page, "channels-plot")
    assert [t["x"] for t in drawn["traces"]] == [groups] * 3
    assert drawn["traces"][0]["y"] == [g["channels"] for g in job["groups"]]
    assert drawn["traces"][2]["y"] == by_id[chosen]["counts"]
    assert drawn["xtitle"] and drawn["ytitle"]
    other = next(c for c in cands["items"] if c["id"] != chosen and c["status"] == "complete")
    page.click(f'#candidates-table tr[data-candidate-id="{other["id"]}"]')
    expect(page.locator("#candidates-table tr.selected")).to_have_attribute(
        "data-candidate-id", str(other["id"])
    )
    drawn = plot_data(page, "channels-plot")
    assert drawn["traces"][2]["name"].startswith(f"candidate {other['id']} ")
    assert drawn["traces"][2]["y"] == other["counts"]

    # Sensitivity: one curve per group, one point per scanned ratio.
    drawn = plot_data(page, "sensitivity-plot")
    assert len(drawn["traces"]) == len(sens["curves"]) == len(groups)
    assert all(t["x"] == sens["ratios"] for t in drawn["traces"])
    assert drawn["xtitle"] and drawn["ytitle"]

    # Timeline: one bar per trial, one row per worker.
    drawn = plot_data(page, "timeline-plot")
    assert sum(len(t["x"]) for t in drawn["traces"]) == cands["total"]
    assert {y for t in drawn["traces"] for y in t["y"]} == set(stack.workers)
    assert drawn["xtitle"] and drawn["ytitle"]

    # Downloads: every link answers with the stored key; one is saved as a file.
    links = page.locator("#downloads a.download")
    names = [links.nth(i).get_attribute("data-name") for i in range(links.count())]
    assert {"result.json", "model.safetensors", "recipe.json", "sensitivity.json"} <= set(names)
    statuses = page.evaluate(
        """async () => {
          const key = localStorage.getItem("prunesearch.apiKey");
          const out = {};
          for (const a of document.querySelectorAll("#downloads a.download")) {
            const r = await fetch(a.href, {headers: {Authorization: `Bearer ${key}`}});
            out[a.dataset.name] = r.status;
          }
          return out;
        }"""
    )
    assert statuses == dict.fromkeys(names, 200)
    with page.expect_download() as info:
        page.click('#downloads a[data-name="result.json"]')
    download = info.value
    assert download.suggested_filename == "result.json"
    assert json.loads(Path(download.path()).read_text())["best"]["candidate_id"] == chosen

    # Back to the exported candidate for the picture.
    page.click(f'#candidates-table tr[data-candidate-id="{chosen}"]')
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, tmp_path, "job")

    def shoot_list() -> None:
        page.goto(f"{stack.url}/#/")
        expect(page.locator("tr.job-row")).to_have_count(2)
        shoot(page, tmp_path, "jobs")

    return shoot_list


def _check_submit(page: Page, stack: Stack, tmp_path: Path) -> None:
    """A bad value is refused with its field named; a good spec becomes a job."""
    page.click("nav a[data-nav=submit]")
    expect(page.locator("#submit-form")).to_be_visible()
    # The selects offer what the server's OpenAPI document lists, its default chosen.
    schemas = httpx.get(f"{stack.url}/openapi.json").json()["components"]["schemas"]
    for selector, (component, field) in SCHEMA_SELECTS.items():
        prop = schemas[component]["properties"][field]
        assert select_options(page, selector) == prop["enum"], selector
        expect(page.locator(selector)).to_have_value(prop["default"])
    assert select_options(page, "#f--queue") == ["interactive", "overnight"]
    expect(page.locator("#schema-error")).to_have_count(0)
    page.fill("#f-name", "digits-quick")
    page.select_option("#f-model-arch", "lenet5")
    page.fill("#f-model-pretrain_epochs", "1")
    page.select_option("#f-dataset-name", "digits")
    page.fill("#f-search-n_trials", "0")
    page.click("#submit-job")
    errors = page.locator("#submit-errors")
    expect(errors).to_be_visible()
    expect(errors).to_contain_text("search.n_trials")
    expect(page.locator("#f-search-n_trials")).to_have_class("invalid")
    expect(page.locator('[data-path="search.n_trials"] .field-error')).to_contain_text(
        "greater than or equal to 1"
    )
    assert stack.get("/v1/jobs")["total"] == 1  # nothing was created
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, tmp_path, "submit")

    page.fill("#f-search-n_trials", "2")
    page.click("#submit-job")
    expect(page.locator("#job-name")).to_have_text("digits-quick")
    new_id = page.evaluate("location.hash").rsplit("/", 1)[-1]
    jobs = stack.get("/v1/jobs")
    assert jobs["total"] == 2 and jobs["items"][0]["id"] == new_id
    assert jobs["items"][0]["spec"]["search"]["n_trials"] == 2
    expect(page.locator('[role="progressbar"]').first).to_have_attribute("aria-valuemax", "2")


def select_options(page: Page, selector: str) -> list[str]:
    values: list[str] = page.locator(f"{selector} option").evaluate_all(
        "(options) => options.map((o) => o.value)"
    )
    return values


def _check_choices_follow_the_schema(page: Page, stack: Stack) -> None:
    """The form's choices are the ones /openapi.json lists, whatever they are, or an error."""
    doc = httpx.get(f"{stack.url}/openapi.json").json()
    sampler = doc["components"]["schemas"]["SearchSpec"]["properties"]["sampler"]
    sampler["enum"] = ["from-the-schema", *reversed(sampler["enum"])]
    sampler["default"] = "from-the-schema"
    page.route("**/openapi.json", lambda route: route.fulfill(json=doc))
    page.goto(f"{stack.url}/#/submit")
    expect(page.locator("#submit-form")).to_be_visible()
    assert select_options(page, "#f-search-sampler") == sampler["enum"]
    expect(page.locator("#f-search-sampler")).to_have_value("from-the-schema")
    assert '"sampler": "from-the-schema"' in page.locator("#spec-preview").inner_text()

    # Unreadable: the form says so, and its enum selects are disabled rather than empty.
    page.unroute("**/openapi.json")
    page.route("**/openapi.json", lambda route: route.fulfill(status=503, body="down"))
    page.reload()
    error = page.locator("#schema-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("/openapi.json")
    expect(error).to_contain_text("HTTP 503")
    expect(error).to_contain_text("Sampler")
    for selector in SCHEMA_SELECTS:
        expect(page.locator(selector)).to_be_disabled()
        expect(page.locator(f"{selector} option")).to_have_count(1)
    expect(page.locator("#f-model-arch")).to_be_enabled()  # its choices are the form's own
    assert "sampler" not in page.locator("#spec-preview").inner_text()  # the server's default
    page.close()

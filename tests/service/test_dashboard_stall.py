"""The dashboard in Chromium: a stalled job is shown as such, and no /sensitivity is asked in vain.

The API runs in this process (uvicorn on a thread) on SQLite and the test
Redis; no worker is needed, because the jobs' states are written straight
into the database: one job searching but stalled, one moving, one with a
triage report. The browser must show the stall in the list and on the
job's page, and request ``/sensitivity`` only for the job that has one
(a request for the others was a 404 in the console on every visit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from core.db import repo
from core.db.session import session_factory, session_scope
from core.settings import Settings
from service.api.app import create_app
from tests.integration.test_dashboard_browser import chromium
from tests.service.conftest import add_key
from tests.service.test_stall import SPEC, _searching
from tests.support import free_port

__all__ = ["chromium"]


@pytest.fixture
def served(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, Settings, httpx.Client]]:
    """The API on a free port: its URL, its settings and a client with alice's key."""
    settings = Settings(home=tmp_path / "home", redis_url=redis_url, stall_floor_s=60)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    client = httpx.Client(base_url=url, headers=add_key(settings.database_url, "alice"))
    try:
        yield url, settings, client
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)


def test_a_stalled_job_is_shown_and_sensitivity_is_asked_only_when_there_is_one(
    served: tuple[str, Settings, httpx.Client], chromium: str
) -> None:
    url, settings, api = served
    stuck = _searching(settings, api, finished_ago=600)
    moving = _searching(settings, api, finished_ago=5)
    triaged = api.post("/v1/jobs", json=SPEC).json()["id"]
    with session_scope(session_factory(settings.database_url)) as s:
        repo.update_job(s, triaged, triage={"curves": {"g0": [[0.5, 0.9], [1.0, 0.95]]}})
    key = api.headers["Authorization"].removeprefix("Bearer ")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        asked: list[str] = []
        page.on("request", lambda req: asked.append(req.url) if "/sensitivity" in req.url else None)
        failed: list[str] = []
        page.on("response", lambda r: failed.append(r.url) if r.status == 404 else None)
        try:
            page.goto(f"{url}/")
            page.fill("#auth-key", key)
            page.click("#auth button[type=submit]")
            stuck_row = page.locator(f'tr.job-row[data-job-id="{stuck}"]')
            expect(stuck_row.locator(".badge.stalled")).to_have_text("stalled")
            expect(
                page.locator(f'tr.job-row[data-job-id="{moving}"] .badge.stalled')
            ).to_have_count(0)

            for job_id in (stuck, moving, triaged):
                page.goto(f"{url}/#/jobs/{job_id}")
                expect(page.locator("#job-name")).to_be_visible()
                page.wait_for_timeout(1500)  # a poll or two
                if job_id == stuck:
                    expect(page.locator("#job-stalled")).to_contain_text("No trial has finished")
                else:
                    expect(page.locator("#job-stalled")).to_have_count(0)
        finally:
            browser.close()
    assert asked and all(f"/v1/jobs/{triaged}/sensitivity" in u for u in asked), asked
    assert failed == [], failed  # no 404 in the console

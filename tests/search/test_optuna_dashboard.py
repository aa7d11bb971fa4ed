"""A job's Optuna storage opens in optuna-dashboard, as the README's command says."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from optuna_dashboard import wsgi

from search import create_study, tell
from search.study import storage, study_name


def _get(app: Any, path: str) -> tuple[str, Any]:
    status: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
    }
    body = b"".join(app(environ, lambda s, _h, _e=None: status.append(s)))
    return status[0], json.loads(body)


def test_optuna_dashboard_lists_the_jobs_study_and_its_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    create_study("job1", url, "tpe")
    study = storage(url)
    study_id = study.get_study_id_from_name(study_name("job1"))
    trial_id = study.create_new_trial(study_id)
    tell("job1", url, study.get_trial_number_from_id(trial_id), 0.75)

    status, body = _get(wsgi(url), "/api/studies")
    assert status.startswith("200")
    assert [s["study_name"] for s in body["study_summaries"]] == [study_name("job1")]
    status, detail = _get(wsgi(url), f"/api/studies/{study_id}")
    assert status.startswith("200")
    assert [t["values"] for t in detail["trials"]] == [[0.75]]

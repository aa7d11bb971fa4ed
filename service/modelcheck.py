"""Refuse at submission a network that cannot run on its dataset's images or be pruned.

The worker checks every job's network before training it
(:mod:`workers.compress.structure`), but a job refused there has already been
queued and waited for a worker. The API never imports torch, so it asks
``python -m workers.compress.structure --many`` in a subprocess for the verdict on
the spec's architecture at the dataset's shape, and answers 422 on
``model.arch`` with the worker's own message (the forward's shape error,
the layer the pruner cannot follow, the torchvision build that does not
match torch).

Verdicts are cached per (arch, channels, size, classes) for the life of the
process: the first check of a key costs a subprocess (about 3 s, most of it
importing torch), every later one nothing. A batch asks once for all its
distinct keys. When the subprocess gives no verdict (it timed out or
crashed) the spec is let through uncached: the worker makes the same check
before any training and fails the job with the reason, so a slow or broken
checker never refuses a good network.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from core.errors import InvalidInput
from core.spec import JobSpec

CHECK_TIMEOUT_S = 120.0  # for one subprocess, whatever number of networks it checks
CACHE_SIZE = 1024
BUILT_IN_CLASSES = {"fashion-mnist": 10, "digits": 10, "synthetic": 10}
_ROOT = Path(__file__).resolve().parents[1]  # holds the service and workers packages

log = logging.getLogger(__name__)


class ModelKey(NamedTuple):
    """What the verdict depends on: the network and the shape it is fed."""

    arch: str
    in_channels: int
    input_size: int
    num_classes: int | None


_lock = threading.Lock()
_verdicts: OrderedDict[ModelKey, str | None] = OrderedDict()  # key -> refusal, None: fits
_running: dict[ModelKey, threading.Event] = {}


def spec_classes(spec: JobSpec) -> int | None:
    """The class count of the spec's dataset where the API knows it without reading it.

    10 for the built-in sets; None for ``imagefolder``, whose classes are its
    folders (:func:`service.datasets.dataset_classes` counts them). The
    structural verdict does not depend on the count for a network that
    honours ``num_classes``; with None the check builds the network with 2
    classes and accepts any ``(1, K)`` output, and the worker checks the
    real count when it has loaded the data.
    """
    return BUILT_IN_CLASSES.get(spec.dataset.name)


def key_of(spec: JobSpec, num_classes: int | None) -> ModelKey:
    return ModelKey(
        spec.model.arch, spec.dataset.resolved_channels, spec.dataset.resolved_size, num_classes
    )


def check_job_model(spec: JobSpec, *, num_classes: int | None) -> None:
    """Refuse a spec whose network does not fit its dataset's images or the pruner.

    Args:
        spec: The validated JobSpec.
        num_classes: Classes of the dataset, None when unknown (see
            :func:`spec_classes`).

    Raises:
        InvalidInput: On ``model.arch``, with the worker's reason.
    """
    refusal = model_refusals([spec], num_classes=[num_classes])[0]
    if refusal is not None:
        raise InvalidInput("model.arch", refusal)


def model_refusals(
    specs: Sequence[JobSpec], *, num_classes: Sequence[int | None]
) -> list[str | None]:
    """Per spec, why its network is refused, or None; one subprocess for all uncached keys."""
    keys = [key_of(spec, n) for spec, n in zip(specs, num_classes, strict=True)]
    verdicts = _verdicts_of(list(dict.fromkeys(keys)))
    return [verdicts.get(key) for key in keys]


def _verdicts_of(keys: list[ModelKey]) -> dict[ModelKey, str | None]:
    """Cached verdicts, asking the subprocess for the keys nobody has asked for yet.

    A key another request is checking right now is waited for, not checked
    twice (a burst of identical submissions runs one subprocess). Keys
    without a verdict are left out of the answer.
    """
    with _lock:
        todo = [k for k in keys if k not in _verdicts and k not in _running]
        waits = [_running[k] for k in keys if k in _running]
        for key in todo:
            _running[key] = threading.Event()
    try:
        found = _ask(todo) if todo else {}
        with _lock:
            for key, verdict in found.items():
                _verdicts[key] = verdict
                while len(_verdicts) > CACHE_SIZE:
                    _verdicts.popitem(last=False)
    finally:
        with _lock:
            for key in todo:
                _running.pop(key).set()
    for event in waits:
        event.wait(CHECK_TIMEOUT_S)
    with _lock:
        return {k: _verdicts[k] for k in keys if k in _verdicts}


def _ask(keys: list[ModelKey]) -> dict[ModelKey, str | None]:
    """Run ``python -m workers.compress.structure --many`` on ``keys``; the verdicts it gave."""
    items = [key._asdict() for key in keys]
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), path) if p)}
    cmd = [sys.executable, "-m", "workers.compress.structure", "--many"]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd,
            input=json.dumps(items),
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
            env=env,
            check=False,
        )
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:  # keep the verdicts given before the timeout
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        stderr = f"timed out after {CHECK_TIMEOUT_S:.0f} s"
    found: dict[ModelKey, str | None] = {}
    for line in stdout.splitlines():
        try:
            out = json.loads(line)
            key = keys[int(out["index"])]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        found[key] = None if out.get("ok") else str(out.get("message", "refused"))
    log.info("structure check of %s: %.1f s", [tuple(k) for k in keys], time.perf_counter() - start)
    missing = [key.arch for key in keys if key not in found]
    if missing:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("no structure verdict for %s (%s): left to the worker", missing, tail)
    return found

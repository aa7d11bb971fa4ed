"""The promotion ladder on the candidates of a real finished ``nsga2`` job.

``ladder.pool`` and ``ladder.climb`` are called on the stored candidates and
the job's own context (LeNet-5 on the synthetic set), with the spec varied
where a test needs another sampler or another ``promote_top_k``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from cli.local import local_settings, run_local
from core.db import repo
from core.db.models import Candidate, CandidateStatus, Job
from core.db.session import session_factory, session_scope
from core.spec import JobSpec
from tests.integration.conftest import tiny_spec
from workers.nets import train
from workers.steps import candidate, ladder
from workers.steps.context import JobContext, job_context


@dataclasses.dataclass(frozen=True)
class Finished:
    out: Path
    job: Job
    cands: list[Candidate]
    result: dict[str, Any]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    data = tiny_spec("ladder", n_trials=8, sampler="nsga2").model_dump(mode="json")
    data["scoring"].update({"promote_top_k": 3, "promote_steps": 4})
    data["final"]["finetune_epochs"] = 0.25
    out = tmp_path_factory.mktemp("ladder")
    job = run_local(JobSpec.model_validate(data), out, progress=False)
    assert job["status"] == "done", job["error"]
    with session_scope(session_factory(local_settings(out, "cpu").database_url)) as s:
        row = repo.get_job(s, job["id"])
        cands = repo.list_candidates(s, job["id"], limit=100, offset=0)
        s.expunge_all()
    return Finished(out, row, cands, json.loads((out / "result.json").read_text()))


def _context(run: Finished, **changes: dict[str, Any]) -> JobContext:
    """The job's context, with spec sections changed (``search={"sampler": "tpe"}``)."""
    spec = JobSpec.model_validate(run.job.spec)
    ctx = job_context(run.job.id, spec, local_settings(run.out, "cpu"), run.job.profile)
    if changes:
        data = spec.model_dump(mode="json")
        for key, values in changes.items():
            data[key] = {**data[key], **values}
        ctx = dataclasses.replace(ctx, spec=JobSpec.model_validate(data))
    return ctx


def _copy(c: Candidate, **fields: Any) -> Candidate:
    """A detached copy of a candidate with some fields changed."""
    values = {col.key: getattr(c, col.key) for col in Candidate.__table__.columns}
    return Candidate(**{**values, **fields})


def _nondominated(cands: list[Candidate]) -> set[int]:
    points = {c.id: (c.accuracy or 0.0, (c.objectives or {})["flops_ratio"]) for c in cands}
    return {
        i
        for i, (acc, cost) in points.items()
        if not any(
            a >= acc and k <= cost and (a > acc or k < cost)
            for j, (a, k) in points.items()
            if j != i
        )
    }


def _by_score(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (-(c.score or 0.0), c.trial_number))


def test_nsga2_pool_is_the_pareto_front_best_score_first(finished: Finished) -> None:
    complete = [c for c in finished.cands if c.status == CandidateStatus.complete]
    ranked, why = ladder.pool(_context(finished), finished.cands)
    front = _nondominated(complete)
    assert {c.id for c in ranked} == front
    assert len(front) < len(complete), "every candidate is on the front: nothing was tested"
    assert [c.id for c in ranked] == [c.id for c in _by_score(ranked)]
    assert "Pareto front" in why and "flops_ratio" in why
    # The job's own ladder used that pool.
    assert finished.result["ladder"]["rung1"] == {
        "candidates": len(front),
        "pool": why,
        "score": "adaptive_bn",
    }


def test_other_samplers_pool_every_complete_candidate_within_the_budget(
    finished: Finished,
) -> None:
    ctx = _context(finished, search={"sampler": "tpe"})
    complete = [c for c in finished.cands if c.status == CandidateStatus.complete]
    ranked, why = ladder.pool(ctx, finished.cands)
    assert [c.id for c in ranked] == [c.id for c in _by_score(complete)]
    assert why == "complete candidates within the budget"

    best = ranked[0]
    full = list(ctx.space().sizes)  # the unpruned network: twice the budget
    over = _copy(best, id=10_001, counts=full, score=1.0)
    failed = _copy(best, id=10_002, status=CandidateStatus.failed, score=None)
    duplicate = _copy(best, id=10_003, status=CandidateStatus.duplicate, score=1.0)
    running = _copy(best, id=10_004, status=CandidateStatus.running, score=None)
    ranked, _ = ladder.pool(ctx, [*finished.cands, over, failed, duplicate, running])
    assert [c.id for c in ranked] == [c.id for c in _by_score(complete)]


def test_climb_without_promotion_returns_the_best_search_score(finished: Finished) -> None:
    ranked, why = ladder.pool(_context(finished), finished.cands)
    for k, reason in ((0, "ladder off"), (1, "only one candidate")):
        decision = ladder.climb(_context(finished, scoring={"promote_top_k": k}), ranked, why)
        assert decision.winner is ranked[0]
        assert decision.rungs == {}
        assert "rung2" not in decision.record
        assert decision.record["winner"]["candidate_id"] == ranked[0].id
        assert reason in decision.record["winner"]["why"]
        assert decision.record["rung1"]["pool"] == why


def test_climb_fine_tunes_the_top_k_and_picks_the_best_of_them(finished: Finished) -> None:
    ctx = _context(finished, scoring={"promote_top_k": 2, "promote_steps": 3})
    ranked, why = ladder.pool(ctx, finished.cands)
    assert len(ranked) >= 2
    decision = ladder.climb(ctx, ranked, why)
    assert list(decision.rungs) == [c.id for c in ranked[:2]]
    accuracy = {i: r["short_finetune"]["val_accuracy"] for i, r in decision.rungs.items()}
    best = max(ranked[:2], key=lambda c: (accuracy[c.id], -c.trial_number))
    assert decision.winner is best
    assert decision.record["winner"]["candidate_id"] == best.id
    assert [p["search_rank"] for p in decision.record["rung2"]["promoted"]] == [1, 2]
    # The rung's accuracy is a real short fine-tune of that network (seeded: reproducible).
    top = ranked[0]
    built = candidate.build(ctx, top.counts, steps=3)
    again = train.evaluate(built.model, ctx.data.val, batch_size=512, device=ctx.device)
    assert accuracy[top.id] == again


def test_the_job_recorded_the_promotions_on_its_candidates(finished: Finished) -> None:
    promoted = finished.result["ladder"]["rung2"]["promoted"]
    assert len(promoted) == min(3, finished.result["ladder"]["rung1"]["candidates"])
    for entry in promoted:
        cand = next(c for c in finished.cands if c.id == entry["candidate_id"])
        assert cand.rungs is not None
        assert cand.rungs["short_finetune"]["val_accuracy"] == entry["val_accuracy"]
        assert cand.rungs["short_finetune"]["steps"] == 4
    ids = {p["candidate_id"] for p in promoted}
    assert all(c.rungs is None for c in finished.cands if c.id not in ids)


def test_recording_the_rungs_keeps_the_trial_finish_time(finished: Finished) -> None:
    # Local trials run one after another: each ends before the next one starts.
    ordered = sorted(finished.cands, key=lambda c: c.trial_number)
    for c, nxt in itertools.pairwise(ordered):
        assert c.finished_at is not None
        assert c.finished_at <= nxt.started_at, (c.trial_number, c.rungs is not None)

"""Local mode: one job, in this process, no servers.

It is the embedded default, not a second implementation: the same
``prepare``, ``trial`` and ``finalize`` that RQ workers run are called in
order, against SQLite files under the output folder. The folder therefore
holds the full evidence of the search (our database, the Optuna study, every
artifact) next to the files a user wants first.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.db import repo
from core.db.models import LOCAL_OWNER
from core.db.session import migrate, session_factory, session_scope
from core.settings import Settings
from core.spec import JobSpec

EXPORTED = (
    "result.json",
    "model.safetensors",
    "recipe.json",
    "model.onnx",
    "sensitivity.json",
    "pareto.json",
)


def local_settings(out: Path, device: str) -> Settings:
    """Settings that keep everything of a local run under ``out``."""
    out = out.resolve()
    return Settings(
        home=out,
        database_url=f"sqlite:///{out / 'prunesearch.db'}",
        optuna_url=f"sqlite:///{out / 'optuna.db'}",
        artifact_dir=out / "artifacts",
        device=device,
    )


def run_local(
    spec: JobSpec,
    out: Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    weights: Path | None = None,
) -> dict:
    """Run ``spec`` to the end and return the job (as the API would show it).

    The exported files are copied to ``out`` itself; the job's folder under
    ``out/artifacts`` keeps the baseline too. ``weights`` (a safetensors file of
    the spec's network) is registered as an upload with the checks of
    ``POST /v1/weights`` and becomes the baseline: nothing is pretrained.

    Raises:
        InvalidInput: ``weights`` do not fit the spec's network and dataset.
    """
    from workers import tasks  # the CLI side may import workers; the API never does

    out.mkdir(parents=True, exist_ok=True)
    settings = local_settings(out, device)
    migrate(settings.database_url)
    factory = session_factory(settings.database_url)
    if weights is not None:
        spec = with_weights(spec, settings, weights)
    with session_scope(factory) as s:
        job_id = repo.create_job(s, spec, queue="local").id

    say = tqdm.write if progress else (lambda _msg: None)
    say(f"job {job_id}: preparing baseline ({spec.model.arch} on {spec.dataset.name}, {device})")
    tasks.prepare(job_id, settings)
    job = _job(factory, job_id)
    if job["status"] == "searching":
        bar = tqdm(total=spec.search.n_trials, desc="search", unit="trial", disable=not progress)
        for _ in range(spec.search.n_trials):
            tasks.trial(job_id, settings)
            bar.update(1)
            best = _job(factory, job_id)["best"]
            if best:
                bar.set_postfix(best_val_acc=f"{best['accuracy']:.4f}")
        bar.close()
        k = spec.scoring.promote_top_k
        say(
            f"finalizing: short fine-tune of the top {k} candidates, then the winner's "
            "fine-tune and export"
            if k > 1
            else "finalizing: fine-tuning and exporting the best candidate"
        )
        tasks.finalize(job_id, settings)
        job = _job(factory, job_id)
    if job["status"] == "done":
        job_dir = settings.job_dir(job_id)
        for name in EXPORTED:
            if (job_dir / name).exists():
                shutil.copy2(job_dir / name, out / name)
    return job


def with_weights(spec: JobSpec, settings: Settings, weights: Path) -> JobSpec:
    """``spec`` starting from the file ``weights``, uploaded into ``settings``' home."""
    from service.uploads import add_upload
    from workers.steps.context import load_splits

    splits = load_splits(spec, settings, "cpu")  # the shapes the weights must have
    with session_factory(settings.database_url)() as s:
        upload = add_upload(
            s,
            settings,
            owner=LOCAL_OWNER,
            source=weights,
            arch=spec.model.arch,
            in_channels=splits.in_channels,
            num_classes=splits.num_classes,
            input_size=splits.size,
        )
    model = spec.model.model_copy(update={"weights": upload.id})
    return spec.model_copy(update={"model": model})


def _job(factory: Any, job_id: str) -> dict:
    with session_scope(factory) as s:
        job = repo.get_job(s, job_id)
        best = repo.best_candidate(s, job_id)
        return {
            "id": job.id,
            "status": str(job.status),
            "error": job.error,
            "baseline": job.baseline,
            "result": job.result,
            "best": None if best is None else {"accuracy": best.accuracy, "score": best.score},
        }


def summary(result: dict[str, Any]) -> str:
    """Baseline vs best as a small table (what ``prunesearch search`` prints)."""
    base, best = result["baseline"], result["best"]
    rows = [
        ("test accuracy", f"{base['accuracy']:.4f}", f"{best['accuracy']:.4f}", ""),
        (
            "FLOPs (MACs)",
            f"{base['flops']:,.0f}",
            f"{best['flops']:,.0f}",
            f"{best['flops_ratio']:.3f}x",
        ),
        (
            "params",
            f"{base['params']:,.0f}",
            f"{best['params']:,.0f}",
            f"{best['params_ratio']:.3f}x",
        ),
    ]
    for batch in base["latency_ms"]:
        b, p = base["latency_ms"][batch], best["latency_ms"][batch]
        rows.append((f"latency b={batch} (ms)", f"{b:.2f}", f"{p:.2f}", f"{b / p:.2f}x faster"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'baseline':>14}  {'best':>14}"]
    lines += [f"{n:{width}}  {b:>14}  {p:>14}  {x}" for n, b, p, x in rows]
    winner = result.get("ladder", {}).get("winner")
    if winner:
        lines.append(f"chosen: candidate {winner['candidate_id']}, {winner['why']}")
    return "\n".join(lines)

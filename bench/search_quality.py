"""Search strategies side by side, fairly: do searched ratios beat uniform and the peers?

Every job starts from the committed, converged baseline
(``baselines/resnet20-fashion-mnist.safetensors``, made by
``bench/train_baseline.py``; ``--baseline`` names another) and validates on
images it never trained on (``dataset.split_seed`` fixed to the baseline's
split, ``val_fraction`` at most the part it held out). For every seed and
every target (50% and 25% of the baseline FLOPs) each method runs as a real
local job (``cli.local.run_local``: the same prepare / trial / finalize the
service runs) with the same promotion ladder and the same final fine-tune,
and scores at most the same number of networks (``budget``): the
sensitivity curves of ``genetic`` and ``sensitivity`` count against it, and
an allocator (``uniform``, ``tp_global``) scores its one network.
Torch-Pruning's own ``MetaPruner`` (global and uniform L2 group magnitude,
:mod:`bench.peers`) prunes the same baseline to the same FLOPs and gets the
same fine-tune. Test accuracy is on all 10,000 test images.

Reported, from one run:

1. test accuracy per method and target, mean and 95% t-interval over seeds,
   with FLOPs, params, measured speedup at batch 256 and networks scored;
2. paired differences (same seed) of each searched method against uniform,
   Torch-Pruning global and random, with their 95% intervals; a goal is
   "met" only where the interval is above zero (and the mean above the margin);
3. search efficiency: scored networks (curves included) until each sampler's
   best score reached the best of random's ``budget``;
4. proxy fidelity within one target (never pooled): Spearman (with a 95%
   interval), Kendall and top-5 hits of each cheap score (no recalibration;
   adaptive BN on 5, 20 and 50 batches, as accuracy, loss and divergence from
   the baseline's outputs; 50- and, in full mode, 200-step fine-tunes) against
   the final accuracy (the final fine-tune, all test images), over
   ``proxy_candidates`` distinct candidates of the random searches per target;
5. wall time per phase (prepare, search, ladder, finalize) and per trial.

Usage:
    python bench/search_quality.py --quick          # about an hour on 2 CPU cores
    python bench/search_quality.py --device cuda:0  # full mode, on a GPU
    bash bench/gpu_check.sh                         # on a lent GPU (bench/gpu_prepare.sh first)

Prints the tables and writes bench/results/search_quality[-quick].json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / "cache"
RESULTS = ROOT / "bench" / "results"
# The product's baseline cache: each seed's baseline is trained once per run configuration.
os.environ.setdefault("PRUNESEARCH_BASELINE_CACHE", str(CACHE / "baselines"))

import numpy as np
import torch
from scipy import stats

from bench.peers import PEERS, Pruned, prune_to
from bench.report import interval, table
from cli.local import local_settings, run_local
from core.db import repo
from core.db.models import CandidateStatus
from core.db.session import session_factory, session_scope
from core.spec import JobSpec, ScoringSpec
from search import catalogue
from workers.compress.profiling import channel_groups
from workers.nets import train, zoo
from workers.steps import candidate
from workers.steps.context import job_context

SEARCHED = ("random", "tpe", "nsga2", "genetic")
BASELINE = ROOT / "baselines" / "resnet20-fashion-mnist.safetensors"


@dataclass(frozen=True)
class Config:
    """Sizes of one mode; every job of a run shares them."""

    subset: int | None
    budget: int  # scored networks per method: trials plus what prepare scores (curves)
    calib_batches: int
    promote_top_k: int
    promote_steps: int
    final_epochs: float
    curve_ratios: tuple[float, ...]
    proxy_candidates: int  # per target
    proxy_calib: tuple[int, ...]  # adaptive-BN batches of each cheap score
    proxy_steps: tuple[int, ...]  # fine-tune steps of each cheap score (cheaper than the final)
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    val_fraction: float
    targets: tuple[float, ...] = (0.5, 0.25)
    min_ratio: float = 0.1


QUICK = Config(
    subset=8_000,
    budget=48,
    calib_batches=5,
    promote_top_k=2,
    promote_steps=30,
    final_epochs=1.5,  # 94 steps on 8,000 images
    curve_ratios=(0.25, 0.5, 0.75),
    proxy_candidates=30,
    proxy_calib=(5, 20, 50),
    proxy_steps=(50,),  # a 200-step proxy would cost more than this mode's final fine-tune
    seeds=(0, 1, 2),
    val_fraction=0.02,  # 1,200 images: every trial validates on them
    # tp_global (our own global magnitude allocator) only in full mode: within the hour,
    # Torch-Pruning's MetaPruner is the peer that matters.
    methods=("uniform", *PEERS, "random", "tpe", "genetic"),
)
FULL = Config(
    subset=None,
    budget=120,
    calib_batches=20,
    promote_top_k=3,
    promote_steps=300,
    final_epochs=5,
    curve_ratios=(0.2, 0.4, 0.6, 0.8),
    proxy_candidates=60,
    proxy_calib=(5, 20, 50),
    proxy_steps=(50, 200),
    seeds=(0, 1, 2),
    val_fraction=0.1,
    methods=("uniform", "tp_global", *PEERS, "sensitivity", *SEARCHED),
)


@dataclass(frozen=True)
class Baseline:
    """The committed, converged baseline every job starts from, and the split it was trained on."""

    weights: Path
    record: dict[str, Any]

    @classmethod
    def load(cls, weights: Path) -> Baseline:
        record_path = weights.with_suffix(".json")
        if not weights.is_file() or not record_path.is_file():
            raise SystemExit(
                f"{weights} (and its .json) are missing: train it with bench/train_baseline.py"
            )
        return cls(weights, json.loads(record_path.read_text()))

    def check(self, cfg: Config) -> None:
        """Validation images must be ones the baseline never trained on (see split_seed)."""
        held_out = self.record["recipe"]["val_fraction"]
        if cfg.val_fraction > held_out:
            raise SystemExit(
                f"val_fraction {cfg.val_fraction} > the {held_out} the baseline held out"
            )


def curve_networks(cfg: Config, groups: int) -> int:
    """Networks prepare scores for the sensitivity curves: each group at each ratio, and the
    unpruned reference (an upper bound: repeated kept counts reuse a score)."""
    return groups * len(cfg.curve_ratios) + 1


def n_trials(cfg: Config, method: str, groups: int) -> int:
    """The trials that keep ``method`` within the budget of scored networks."""
    sampler = catalogue.sampler(method)
    if sampler.allocator:
        return 1  # one allocation: every further trial would be the same network
    if sampler.needs_curves:
        return cfg.budget - curve_networks(cfg, groups)
    return cfg.budget


def spec(
    cfg: Config, base: Baseline, method: str, target: float, seed: int, trials: int
) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": f"sq-{method}-{int(target * 100)}-s{seed}",
            "model": {"arch": base.record["arch"], "pretrain_epochs": 0},
            "dataset": {
                "name": "fashion-mnist",
                "subset": cfg.subset,
                "val_fraction": cfg.val_fraction,
                "split_seed": base.record["recipe"]["seed"],
            },
            "target": {"flops_ratio": target},
            "search": {"sampler": method, "n_trials": trials, "min_ratio": cfg.min_ratio},
            "scoring": {
                "mode": "adaptive_bn",
                "calib_batches": cfg.calib_batches,
                "promote_top_k": min(cfg.promote_top_k, trials),
                "promote_steps": cfg.promote_steps,
            },
            "final": {"finetune_epochs": cfg.final_epochs},
            "triage": {"enabled": False, "ratios": list(cfg.curve_ratios)},
            "seed": seed,
        }
    )


def run_job(
    cfg: Config, base: Baseline, method: str, target: float, seed: int, groups: int, device: str
) -> dict[str, Any]:
    """One local job from the committed baseline; its result plus the per-candidate trajectory."""
    out = CACHE / "runs" / f"{seed}-{target}-{method}"
    shutil.rmtree(out, ignore_errors=True)
    tick = time.perf_counter()
    job_spec = spec(cfg, base, method, target, seed, n_trials(cfg, method, groups))
    job = run_local(job_spec, out, device=device, progress=False, weights=base.weights)
    wall = time.perf_counter() - tick
    if job["status"] != "done":
        raise RuntimeError(f"{method} {target} seed {seed}: {job['status']}: {job['error']}")
    result = json.loads((out / "result.json").read_text())
    with session_scope(session_factory(local_settings(out, device).database_url)) as s:
        cands = repo.list_candidates(s, job["id"], limit=100_000, offset=0)
        trail = [
            {
                "trial": c.trial_number,
                "status": str(c.status),
                "score": c.score,
                "counts": c.counts,
                "total_s": (c.timings or {}).get("total_s"),
            }
            for c in cands
        ]
        triage = repo.get_job(s, job["id"]).triage
    curves = 0 if triage is None else curve_networks(cfg, len(triage["curves"]))
    base_r, best = result["baseline"], result["best"]
    speedup = base_r["latency_ms"]["256"] / best["latency_ms"]["256"]
    scored = sum(t["status"] == CandidateStatus.complete for t in trail)
    return {
        "job_id": job["id"],
        "out": str(out),
        "wall_s": wall,
        "test_accuracy": best["accuracy"],
        "baseline_accuracy": base_r["accuracy"],
        "flops_ratio": best["flops_ratio"],
        "params_ratio": best["params_ratio"],
        "speedup_256": speedup,
        "speedup_per_flops_reduction": speedup * best["flops_ratio"],
        "timings": result["timings"],
        "curve_networks": curves,
        "networks": scored + curves,
        "trail": trail,
        "ladder": result["ladder"],
    }


def run_peer(
    cfg: Config, peer: str, target: float, reference: dict[str, Any], device: str
) -> dict[str, Any]:
    """Torch-Pruning's pruner at ``target`` FLOPs, fine-tuned as ``reference``'s job was.

    The cut depends on the baseline's weights alone (magnitudes, no data), so it is
    found once per peer and target; each seed fine-tunes its own copy.
    """
    ctx = _context(reference, device)
    tick = time.perf_counter()
    key = (peer, target)
    if key not in _CUTS:
        _CUTS[key] = prune_to(
            ctx.baseline(),
            ctx.example_inputs(),
            target,
            global_pruning=PEERS[peer],
            min_ratio=cfg.min_ratio,
        )
    pruned = _CUTS[key]
    model = copy.deepcopy(pruned.model)
    assert not ctx.spec.final.distill  # finalize would distil; candidate.fit does not
    candidate.fit(ctx, model, epochs=cfg.final_epochs)
    accuracy = train.evaluate(model, ctx.data.test, batch_size=512, device=ctx.device)
    candidate.release()
    return {
        "test_accuracy": accuracy,
        "baseline_accuracy": reference["baseline_accuracy"],
        "flops_ratio": pruned.flops_ratio,
        "params_ratio": pruned.params_ratio,
        "pruning_ratio": pruned.pruning_ratio,
        "networks": 0,  # no network is scored: the library ranks channels by magnitude
        "wall_s": time.perf_counter() - tick,
    }


_CUTS: dict[tuple[str, float], Pruned] = {}


def _context(run: dict[str, Any], device: str) -> Any:
    settings = local_settings(Path(run["out"]), device)
    with session_scope(session_factory(settings.database_url)) as s:
        job = repo.get_job(s, run["job_id"])
        job_spec, profile = JobSpec.model_validate(job.spec), job.profile
    return job_context(run["job_id"], job_spec, settings, profile)


def reached(trail: list[dict[str, Any]], threshold: float) -> int | None:
    """1-based trial at which the running best score first reached ``threshold``."""
    best = float("-inf")
    for i, t in enumerate(sorted(trail, key=lambda t: t["trial"]), start=1):
        if t["score"] is not None:
            best = max(best, t["score"])
        if best >= threshold - 1e-12:
            return i
    return None


def proxy_fidelity(cfg: Config, runs: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """Cheap scores of distinct candidates of the random searches against their final accuracy.

    The reference is what the user gets: the candidate fine-tuned as a job's finalize does
    (``final_epochs``) and scored on the whole test set. Ranked within one target (what a
    search compares), never pooled across targets. The random searches' first distinct
    candidates are taken, an equal share from each seed: random draws, so the spread of
    quality a search meets, not the best few.
    """
    rows: list[dict[str, Any]] = []
    for target in cfg.targets:
        mine = [run for run in runs if run["target"] == target]
        per_run = -(-cfg.proxy_candidates // max(1, len(mine)))
        for run in mine:
            ctx = _context(run, device)
            teacher = _logits(ctx.baseline(), ctx)
            seen: set[tuple[int, ...]] = set()
            for t in run["trail"]:
                key = tuple(t["counts"])
                if t["status"] != CandidateStatus.complete or key in seen:
                    continue
                if len(seen) == per_run:
                    break
                seen.add(key)
                print(f"[proxy {target:.0%} {Path(run['out']).name} #{len(seen)}]", flush=True)
                rows.append(
                    {
                        "target": target,
                        "run": Path(run["out"]).name,
                        "counts": t["counts"],
                        **_scores(cfg, ctx, t["counts"], teacher),
                    }
                )
    names = [k for k in rows[0] if k not in ("target", "run", "counts", "final", "seconds")]
    per_target = {}
    for target in cfg.targets:
        mine = [row for row in rows if row["target"] == target]
        reference = [row["final"] for row in mine]
        per_target[str(target)] = {
            "candidates": len(mine),
            "final_range": [min(reference), max(reference)],
            **{name: _agreement([row[name] for row in mine], reference) for name in names},
        }
    return {"final_epochs": cfg.final_epochs, "per_target": per_target, "rows": rows}


def _scores(cfg: Config, ctx: Any, counts: list[int], teacher: torch.Tensor) -> dict[str, float]:
    """Every cheap score of one candidate (higher is better), its final accuracy and cost.

    ``raw``: validation accuracy as pruned; ``abn<n>``: after adaptive BN on ``n`` batches
    (EagleEye; the trial score is ``abn<calib_batches>``), with ``-loss`` (the validation
    cross-entropy, which, unlike accuracy, also moves when no prediction flips) and ``-kl``
    (the divergence from the unpruned network's outputs, the distillation view: a
    candidate that still computes what the baseline computed needs the least repair);
    ``ft<n>``: validation accuracy after an ``n``-step fine-tune (the ladder's rung).
    ``final``: test accuracy after the final fine-tune.
    """
    tick = time.perf_counter()
    built = candidate.build(ctx, counts)
    scores: dict[str, float] = {"raw": _outputs(built.model, ctx, teacher)["acc"]}
    for n in cfg.proxy_calib:
        model = copy.deepcopy(built.model)
        train.adaptive_bn(
            model,
            ctx.data.train,
            calib_batches=n,
            batch_size=ctx.spec.train.batch_size,
            device=ctx.device,
            seed=ctx.spec.seed,
        )
        for name, value in _outputs(model, ctx, teacher).items():
            scores[f"abn{n}" if name == "acc" else f"abn{n}_{name}"] = value
    for steps in cfg.proxy_steps:
        tuned = candidate.build(ctx, counts, steps=steps)
        scores[f"ft{steps}"] = _outputs(tuned.model, ctx, teacher)["acc"]
    final = candidate.build(ctx, counts, epochs=cfg.final_epochs)
    scores["final"] = train.evaluate(final.model, ctx.data.test, batch_size=512, device=ctx.device)
    candidate.release()
    return {**scores, "seconds": time.perf_counter() - tick}


@torch.no_grad()
def _logits(model: torch.nn.Module, ctx: Any) -> torch.Tensor:
    model.to(ctx.device).eval()
    batches = ctx.data.val.batches(512, shuffle=False, generator=None, limit=None)
    return torch.cat([model(x).float() for x, _ in batches])


def _outputs(model: torch.nn.Module, ctx: Any, teacher: torch.Tensor) -> dict[str, float]:
    """Validation accuracy, and the negated cross-entropy and KL to ``teacher``'s outputs."""
    logits = _logits(model, ctx)
    labels = torch.cat([y for _, y in ctx.data.val.batches(512, shuffle=False, generator=None)])
    log_p = torch.log_softmax(logits, dim=1)
    kl = torch.nn.functional.kl_div(
        log_p, torch.log_softmax(teacher, dim=1), log_target=True, reduction="batchmean"
    )
    return {
        "acc": float((logits.argmax(dim=1) == labels).float().mean()),
        "loss": -float(torch.nn.functional.nll_loss(log_p, labels)),
        "kl": -float(kl),
    }


def _agreement(score: list[float], reference: list[float]) -> dict[str, Any]:
    """Spearman (with a 95% Fisher-z interval), Kendall and the top-5 hit rate."""
    top = set(np.argsort(reference)[-5:])
    rho = float(stats.spearmanr(score, reference).statistic)
    # Fieller, Hartley and Pearson's standard error of Spearman's rho in the z scale.
    half = 1.96 * math.sqrt(1.06 / max(1, len(score) - 3))
    z = math.atanh(max(-0.999999, min(0.999999, rho)))
    low, high = math.tanh(z - half), math.tanh(z + half)
    return {
        "spearman": rho,
        "spearman_95": [low, high],
        "kendall": float(stats.kendalltau(score, reference).statistic),
        "top5_hits": len(top & set(np.argsort(score)[-5:])) / 5,
    }


def _pm(values: list[float], *, signed: bool = False) -> str:
    """``mean ± half-width`` in points (values are fractions)."""
    mean, half = interval(values)
    return f"{100 * mean:{'+' if signed else ''}.2f} ± {100 * half:.2f}"


def tables(r: dict[str, Any]) -> str:
    cfg, runs, out = r["config"], r["runs"], []

    def per_seed(method: str, target: float, key: str) -> list[float]:
        return [float(runs[f"{s}-{target}-{method}"][key]) for s in cfg["seeds"]]

    for target in cfg["targets"]:
        base = statistics.fmean(per_seed("uniform", target, "baseline_accuracy"))
        rows = []
        for method in cfg["methods"]:
            speed = [runs[f"{s}-{target}-{method}"].get("speedup_256") for s in cfg["seeds"]]
            rows.append(
                [
                    method,
                    _pm(per_seed(method, target, "test_accuracy")),
                    f"{statistics.fmean(per_seed(method, target, 'flops_ratio')):.3f}",
                    f"{statistics.fmean(per_seed(method, target, 'params_ratio')):.3f}",
                    f"{statistics.fmean(speed):.2f}x" if None not in speed else "-",
                    f"{statistics.fmean(per_seed(method, target, 'networks')):.0f}",
                ]
            )
        out.append(
            table(
                f"{target:.0%} of the baseline FLOPs: test accuracy on all 10,000 test images "
                f"(baseline {100 * base:.2f}); mean ± 95% interval over {len(cfg['seeds'])} seeds",
                ["method", "test acc %", "FLOPs", "params", "speedup b=256", "networks scored"],
                rows,
            )
        )
    rows = []
    for target in cfg["targets"]:
        for method in [m for m in cfg["methods"] if m in SEARCHED and m != "random"]:
            mine = per_seed(method, target, "test_accuracy")
            for other in (o for o in COMPARED if o in cfg["methods"]):
                diffs = [
                    a - b
                    for a, b in zip(mine, per_seed(other, target, "test_accuracy"), strict=True)
                ]
                rows.append([f"{target:.0%}", method, other, _pm(diffs, signed=True)])
    out.append(
        table(
            "Paired differences in test accuracy (points; per seed, same baseline and fine-tune)",
            ["target", "method", "minus", "difference (mean ± 95% interval)"],
            rows,
        )
    )
    rows = []
    for target in cfg["targets"]:
        for method in [m for m in cfg["methods"] if m in SEARCHED]:
            marks = [r["efficiency"][f"{s}-{target}"][method] for s in cfg["seeds"]]
            rows.append([f"{target:.0%}", method] + [str(m) if m else "not reached" for m in marks])
    out.append(
        table(
            f"Search efficiency: scored networks (curves included) until the best score reached "
            f"random's best of {cfg['budget']}",
            ["target", "method"] + [f"seed {s}" for s in cfg["seeds"]],
            rows,
        )
    )
    rows = []
    labels = {
        DEFAULT_SCORE: " (the default trial score)",
        f"abn{cfg['calib_batches']}": " (this run's trial score)",
    }
    for target, p in r["proxy"]["per_target"].items():
        for name, a in p.items():
            if not isinstance(a, dict):
                continue
            low, high = a["spearman_95"]
            rows.append(
                [
                    f"{float(target):.0%}",
                    str(p["candidates"]),
                    name + labels.get(name, ""),
                    f"{a['spearman']:.3f} [{low:.2f}, {high:.2f}]",
                    f"{a['kendall']:.3f}",
                    f"{a['top5_hits']:.1f}",
                ]
            )
    out.append(
        table(
            "Proxy fidelity within one target: each cheap score against the final accuracy "
            f"(fine-tuned {r['proxy']['final_epochs']:g} epochs, all 10,000 test images)",
            ["target", "candidates", "score", "Spearman [95%]", "Kendall", "top-5 hits"],
            rows,
        )
    )
    rows = []
    for method in [m for m in cfg["methods"] if m not in PEERS]:
        jobs = [v for k, v in runs.items() if k.endswith(f"-{method}")]
        per_cand = [t["total_s"] for x in jobs for t in x["trail"] if t["total_s"] is not None]
        rows.append(
            [method]
            + [
                f"{statistics.fmean(x['timings'][k] for x in jobs):.1f}"
                for k in ("prepare_s", "search_s", "ladder_s", "finalize_s")
            ]
            + [f"{statistics.fmean(per_cand):.2f}" if per_cand else "-"]
        )
    out.append(
        table(
            "Wall time per job phase (s, mean over jobs) and per trial",
            ["method", "prepare", "search", "ladder", "finalize", "per trial"],
            rows,
        )
    )
    out.append("\n".join(f"- {v}" for v in r["verdicts"]))
    return "\n\n".join(out)


COMPARED = ("uniform", "tp_meta_global", "random")
# The product's trial score: adaptive BN with the JobSpec's default number of batches.
DEFAULT_SCORE = f"abn{ScoringSpec().calib_batches}"
MARGINS = {0.5: 0.005, 0.25: 0.015}  # the goals over uniform at 2x and 4x


def verdicts(r: dict[str, Any]) -> list[str]:
    """The issue's goals, each met only where the 95% interval says so."""
    cfg, runs, lines = r["config"], r["runs"], []

    def acc(method: str, target: float) -> list[float]:
        return [runs[f"{s}-{target}-{method}"]["test_accuracy"] for s in cfg["seeds"]]

    for target in cfg["targets"]:
        margin = MARGINS.get(target, 0.0)
        for method in (m for m in cfg["methods"] if m in SEARCHED and m != "random"):
            parts, met = [], True
            for other in (o for o in COMPARED if o in cfg["methods"]):
                mean, half = interval(
                    [a - b for a, b in zip(acc(method, target), acc(other, target), strict=True)]
                )
                need = margin if other == "uniform" else 0.0
                ok = mean >= need and mean - half > 0
                met &= ok
                parts.append(f"{100 * mean:+.2f} ± {100 * half:.2f} vs {other}")
            lines.append(
                f"{target:.0%} FLOPs, {method}: {', '.join(parts)} (goal: >= +{100 * margin:.1f} "
                "vs uniform, > 0 vs the others, each interval above zero): "
                + ("met" if met else "not met")
            )
    for target, p in r["proxy"]["per_target"].items():
        name = DEFAULT_SCORE if DEFAULT_SCORE in p else f"abn{cfg['calib_batches']}"
        a = p[name]
        low, high = a["spearman_95"]
        lines.append(
            f"{float(target):.0%}: Spearman of the trial score {name} vs the final accuracy "
            f"{a['spearman']:.3f} [{low:.2f}, {high:.2f}] over {p['candidates']} candidates "
            f"(goal >= 0.7, the interval above it): {'met' if low >= 0.7 else 'not met'}"
        )
    for target in cfg["targets"]:
        for method in (m for m in cfg["methods"] if m in SEARCHED and m != "random"):
            marks = [r["efficiency"][f"{s}-{target}"][method] for s in cfg["seeds"]]
            ok = all(m is not None and m <= cfg["budget"] / 3 for m in marks)
            lines.append(
                f"{target:.0%}, {method}: reached random's best of {cfg['budget']} in {marks} "
                f"scored networks (goal <= {cfg['budget'] // 3} in every seed): "
                + ("met" if ok else "not met")
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 60-minute CPU mode")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="committed weights")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/...)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="only these seeds (bench/gpu_check.sh: 0)"
    )
    parser.add_argument("--methods", nargs="+", help="only these (uniform and random always)")
    parser.add_argument("--budget", type=int, help="scored networks per method")
    parser.add_argument("--proxy-candidates", type=int, help="per target")
    parser.add_argument("--render", type=Path, help="print the tables of a saved JSON, run nothing")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        saved["verdicts"] = verdicts(saved)
        print(tables(saved))
        return 0
    cfg = QUICK if args.quick else FULL
    if args.seeds:
        cfg = replace(cfg, seeds=tuple(args.seeds))
    if args.methods:
        kept = ("uniform", *(m for m in args.methods if m not in ("uniform", "random")), "random")
        cfg = replace(cfg, methods=kept)
    if args.budget:
        cfg = replace(cfg, budget=args.budget)
    if args.proxy_candidates:
        cfg = replace(cfg, proxy_candidates=args.proxy_candidates)
    base = Baseline.load(args.baseline)
    base.check(cfg)
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    r: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "config": asdict(cfg),
        "baseline": {k: v for k, v in base.record.items() if k != "log"},
        "device": args.device,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}",
        "runs": {},
        "efficiency": {},
    }
    groups = _groups(base)
    for seed in cfg.seeds:
        for target in cfg.targets:
            for method in cfg.methods:
                key = f"{seed}-{target}-{method}"
                print(f"[{key}] ...", flush=True)
                if method in PEERS:
                    run = run_peer(
                        cfg, method, target, r["runs"][f"{seed}-{target}-uniform"], args.device
                    )
                else:
                    run = run_job(cfg, base, method, target, seed, groups, args.device)
                r["runs"][key] = {"target": target, **run}
                print(
                    f"[{key}] test {100 * run['test_accuracy']:.2f} "
                    f"flops {run['flops_ratio']:.3f} wall {run['wall_s']:.0f}s",
                    flush=True,
                )
            threshold = max(
                t["score"]
                for t in r["runs"][f"{seed}-{target}-random"]["trail"]
                if t["score"] is not None
            )
            r["efficiency"][f"{seed}-{target}"] = {
                m: _networks_to(r["runs"][f"{seed}-{target}-{m}"], threshold)
                for m in cfg.methods
                if m in SEARCHED
            }
    tick = time.perf_counter()
    randoms = [r["runs"][f"{s}-{t}-random"] for s in cfg.seeds for t in cfg.targets]
    r["proxy"] = proxy_fidelity(cfg, randoms, args.device)
    r["proxy"]["wall_s"] = time.perf_counter() - tick
    r["verdicts"] = verdicts(r)
    r["seconds"] = time.perf_counter() - start
    text = tables(r)
    print(text)
    print(f"total {r['seconds']:.0f} s on {r['machine']} ({args.device})")
    out = args.out or RESULTS / f"search_quality{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2, default=str))
    print(f"wrote {out}")
    return 0


def _networks_to(run: dict[str, Any], threshold: float) -> int | None:
    """Scored networks, curve points first, until the run's best score reached ``threshold``."""
    trial = reached(run["trail"], threshold)
    return None if trial is None else run["curve_networks"] + trial


def _groups(base: Baseline) -> int:
    """Channel groups of the baseline's network: how many curves a curve sampler scores."""
    model = zoo.build(base.record["arch"], in_channels=1, num_classes=10, input_size=28)
    return len(channel_groups(model, torch.zeros(1, 1, 28, 28))[1])


if __name__ == "__main__":
    raise SystemExit(main())

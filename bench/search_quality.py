"""Search strategies side by side: do searched ratios beat the baselines?

Fashion-MNIST, resnet20, one trained baseline per seed (cached under
bench/cache by its settings, through the product's own baseline cache).
For every seed and every target (50% and 25% of the baseline FLOPs) each
method runs as a real local job (``cli.local.run_local``: the same
prepare / trial / finalize the service runs) with the same number of trials,
the same promotion ladder and the same final fine-tune, so only the sampler
differs. Methods: uniform, tp_global (Torch-Pruning's global ranking),
random, tpe, nsga2, genetic (and sensitivity in the full mode).

Reported, from one run:

1. test accuracy (mean and spread over seeds), FLOPs and params of each
   method's final network, and its measured latency speedup at batch 256
   divided by its FLOPs reduction;
2. search efficiency: the trial at which each sampler's best search score
   reached the best score of the random sampler's N candidates;
3. proxy fidelity: Spearman correlation, over >= 30 candidates of the random
   searches, of the adaptive-BN score and of the score without BN
   recalibration, each against the accuracy after a short fine-tune;
4. wall time per phase (prepare, search, ladder, finalize) and per candidate.

Usage:
    python bench/search_quality.py --quick          # <= 30 minutes on 2 CPU cores
    python bench/search_quality.py --device cuda:0  # full mode, on a GPU
    bash bench/gpu_check.sh                         # on a lent GPU (bench/gpu_prepare.sh first)

Prints the tables and writes bench/results/search_quality[-quick].json.
"""

from __future__ import annotations

import argparse
import json
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

from bench.report import table
from cli.local import local_settings, run_local
from core.db import repo
from core.db.models import CandidateStatus
from core.db.session import session_factory, session_scope
from core.spec import JobSpec
from workers.nets import train
from workers.steps import candidate
from workers.steps.context import job_context

SEARCHED = ("random", "tpe", "nsga2", "genetic")


@dataclass(frozen=True)
class Config:
    """Sizes of one mode; every job of a run shares them."""

    subset: int | None
    pretrain_epochs: float
    n_trials: int
    calib_batches: int
    promote_top_k: int
    promote_steps: int
    final_epochs: float
    curve_ratios: tuple[float, ...]
    proxy_candidates: int
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    val_fraction: float
    targets: tuple[float, ...] = (0.5, 0.25)
    min_ratio: float = 0.1


QUICK = Config(
    subset=8_000,
    pretrain_epochs=2,
    n_trials=16,
    calib_batches=5,
    promote_top_k=2,
    promote_steps=30,
    final_epochs=1.0,
    curve_ratios=(0.25, 0.5, 0.75),
    proxy_candidates=30,
    seeds=(0, 1),
    val_fraction=0.02,  # 1,200 images: every trial validates on them
    methods=("uniform", "tp_global", *SEARCHED),
)
FULL = Config(
    subset=None,
    pretrain_epochs=10,
    n_trials=40,
    calib_batches=20,
    promote_top_k=3,
    promote_steps=300,
    final_epochs=5,
    curve_ratios=(0.2, 0.4, 0.6, 0.8),
    proxy_candidates=60,
    seeds=(0, 1, 2),
    val_fraction=0.1,
    methods=("uniform", "tp_global", "sensitivity", *SEARCHED),
)


def spec(cfg: Config, method: str, target: float, seed: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": f"sq-{method}-{int(target * 100)}-s{seed}",
            "model": {"arch": "resnet20", "pretrain_epochs": cfg.pretrain_epochs},
            "dataset": {
                "name": "fashion-mnist",
                "subset": cfg.subset,
                "val_fraction": cfg.val_fraction,
            },
            "target": {"flops_ratio": target},
            "search": {"sampler": method, "n_trials": cfg.n_trials, "min_ratio": cfg.min_ratio},
            "scoring": {
                "mode": "adaptive_bn",
                "calib_batches": cfg.calib_batches,
                "promote_top_k": cfg.promote_top_k,
                "promote_steps": cfg.promote_steps,
            },
            "final": {"finetune_epochs": cfg.final_epochs},
            "triage": {"enabled": False, "ratios": list(cfg.curve_ratios)},
            "seed": seed,
        }
    )


def run_job(cfg: Config, method: str, target: float, seed: int, device: str) -> dict[str, Any]:
    """One local job; its result plus the per-candidate trajectory."""
    out = CACHE / "runs" / f"{seed}-{target}-{method}"
    shutil.rmtree(out, ignore_errors=True)
    tick = time.perf_counter()
    job = run_local(spec(cfg, method, target, seed), out, device=device, progress=False)
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
    base, best = result["baseline"], result["best"]
    speedup = base["latency_ms"]["256"] / best["latency_ms"]["256"]
    return {
        "job_id": job["id"],
        "out": str(out),
        "wall_s": wall,
        "test_accuracy": best["accuracy"],
        "baseline_accuracy": base["accuracy"],
        "flops_ratio": best["flops_ratio"],
        "params_ratio": best["params_ratio"],
        "speedup_256": speedup,
        "speedup_per_flops_reduction": speedup * best["flops_ratio"],
        "timings": result["timings"],
        "evaluated": sum(t["status"] == CandidateStatus.complete for t in trail),
        "trail": trail,
        "ladder": result["ladder"],
    }


def reached(trail: list[dict[str, Any]], threshold: float) -> int | None:
    """1-based trial at which the running best score first reached ``threshold``."""
    best = float("-inf")
    for i, t in enumerate(sorted(trail, key=lambda t: t["trial"]), start=1):
        if t["score"] is not None:
            best = max(best, t["score"])
        if best >= threshold - 1e-12:
            return i
    return None


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho: Pearson correlation of the ranks (ties get their mean rank)."""

    def ranks(x: list[float]) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        values = np.asarray(x)
        for v in np.unique(values):
            tied = values == v
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def proxy_fidelity(cfg: Config, runs: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """Score candidates of the random searches three ways and correlate them."""
    picked: list[tuple[dict[str, Any], list[int]]] = []
    for run in runs:
        seen = set()
        for t in run["trail"]:
            if t["status"] == CandidateStatus.complete and tuple(t["counts"]) not in seen:
                seen.add(tuple(t["counts"]))
                picked.append((run, t["counts"]))
    per_run = -(-cfg.proxy_candidates // max(1, len(runs)))
    chosen: list[tuple[dict[str, Any], list[int]]] = []
    for run in runs:
        chosen += [p for p in picked if p[0] is run][:per_run]
    rows: list[dict[str, Any]] = []
    for run, counts in chosen:
        out = Path(run["out"])
        settings = local_settings(out, device)
        with session_scope(session_factory(settings.database_url)) as s:
            job = repo.get_job(s, run["job_id"])
            job_spec, profile = JobSpec.model_validate(job.spec), job.profile
        ctx = job_context(run["job_id"], job_spec, settings, profile)
        tick = time.perf_counter()
        built = candidate.build(ctx, counts)
        raw = train.evaluate(built.model, ctx.data.val, batch_size=512, device=ctx.device)
        candidate.calibrate(ctx, built.model)
        abn = train.evaluate(built.model, ctx.data.val, batch_size=512, device=ctx.device)
        tuned = candidate.build(ctx, counts, steps=cfg.promote_steps)
        short = train.evaluate(tuned.model, ctx.data.val, batch_size=512, device=ctx.device)
        rows.append(
            {
                "run": Path(run["out"]).name,
                "raw": raw,
                "adaptive_bn": abn,
                "short_finetune": short,
                "seconds": time.perf_counter() - tick,
            }
        )
        del built, tuned
        candidate.release()

    def column(name: str) -> list[float]:
        return [float(row[name]) for row in rows]

    return {
        "candidates": len(rows),
        "steps": cfg.promote_steps,
        "spearman_adaptive_bn": spearman(column("adaptive_bn"), column("short_finetune")),
        "spearman_no_recalibration": spearman(column("raw"), column("short_finetune")),
        "rows": rows,
    }


def _mean_spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * spread:.2f}"


def tables(r: dict[str, Any]) -> str:
    cfg = r["config"]
    out = []
    for target in cfg["targets"]:
        rows = []
        for method in cfg["methods"]:
            runs = [r["runs"][f"{s}-{target}-{method}"] for s in cfg["seeds"]]
            rows.append(
                [
                    method,
                    _mean_spread([x["test_accuracy"] for x in runs]),
                    f"{statistics.fmean(x['flops_ratio'] for x in runs):.3f}",
                    f"{statistics.fmean(x['params_ratio'] for x in runs):.3f}",
                    f"{statistics.fmean(x['speedup_256'] for x in runs):.2f}x",
                    f"{statistics.fmean(x['speedup_per_flops_reduction'] for x in runs):.2f}",
                    f"{statistics.fmean(x['evaluated'] for x in runs):.1f}",
                ]
            )
        base = statistics.fmean(
            r["runs"][f"{s}-{target}-uniform"]["baseline_accuracy"] for s in cfg["seeds"]
        )
        out.append(
            table(
                f"{target:.0%} of the baseline FLOPs (baseline test accuracy {100 * base:.2f})",
                [
                    "method",
                    "test acc % (mean ± half-range)",
                    "FLOPs",
                    "params",
                    "speedup b=256",
                    "speedup / FLOPs reduction",
                    "networks evaluated",
                ],
                rows,
            )
        )
    rows = []
    for target in cfg["targets"]:
        for method in cfg["methods"]:
            marks = [r["efficiency"][f"{s}-{target}"][method] for s in cfg["seeds"]]
            rows.append(
                [f"{target:.0%}", method]
                + [f"{m}/{cfg['n_trials']}" if m else "not reached" for m in marks]
            )
    out.append(
        table(
            f"Search efficiency: trial at which the best score reached random's best of "
            f"{cfg['n_trials']}",
            ["target", "method"] + [f"seed {s}" for s in cfg["seeds"]],
            rows,
        )
    )
    p = r["proxy"]
    out.append(
        table(
            f"Proxy fidelity over {p['candidates']} candidates of the random searches "
            f"(short fine-tune: {p['steps']} steps)",
            ["score", "Spearman vs short fine-tune accuracy"],
            [
                ["adaptive BN (what every trial uses)", f"{p['spearman_adaptive_bn']:.3f}"],
                ["no BN recalibration", f"{p['spearman_no_recalibration']:.3f}"],
            ],
        )
    )
    rows = []
    for method in cfg["methods"]:
        runs = [v for k, v in r["runs"].items() if k.endswith(f"-{method}")]
        per_cand = [t["total_s"] for x in runs for t in x["trail"] if t["total_s"] is not None]
        rows.append(
            [method]
            + [
                f"{statistics.fmean(x['timings'][k] for x in runs):.1f}"
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


def verdicts(r: dict[str, Any]) -> list[str]:
    """The issue's goals, each met or not, from the numbers above."""
    cfg, lines = r["config"], []

    def acc(method: str, target: float) -> float:
        return statistics.fmean(
            r["runs"][f"{s}-{target}-{method}"]["test_accuracy"] for s in cfg["seeds"]
        )

    for target, margin in zip(cfg["targets"], (0.003, 0.010), strict=False):
        for method in (m for m in SEARCHED if m != "random" and m in cfg["methods"]):
            gaps = {
                b: acc(method, target) - acc(b, target) for b in ("uniform", "tp_global", "random")
            }
            met = gaps["uniform"] >= margin and gaps["tp_global"] > 0 and gaps["random"] > 0
            lines.append(
                f"{target:.0%} FLOPs, {method}: "
                + ", ".join(f"{100 * g:+.2f} vs {b}" for b, g in gaps.items())
                + f" (goal: >= +{100 * margin:.1f} vs uniform, > 0 vs the others): "
                + ("met" if met else "not met")
            )
    rho = r["proxy"]["spearman_adaptive_bn"]
    lines.append(
        f"Spearman adaptive BN vs short fine-tune {rho:.3f} (goal >= 0.7): "
        + ("met" if rho >= 0.7 else "not met")
    )
    ratio = statistics.fmean(x["speedup_per_flops_reduction"] for x in r["runs"].values())
    lines.append(
        f"speedup / FLOPs reduction at batch 256, mean of all jobs {ratio:.2f} "
        f"(goal >= 0.9): " + ("met" if ratio >= 0.9 else "not met")
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 30-minute CPU mode")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/...)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="only these seeds (bench/gpu_check.sh: 0)"
    )
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    if args.seeds:
        cfg = replace(cfg, seeds=tuple(args.seeds))
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    r: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "config": asdict(cfg),
        "device": args.device,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}",
        "runs": {},
        "efficiency": {},
    }
    for seed in cfg.seeds:
        for target in cfg.targets:
            for method in cfg.methods:
                key = f"{seed}-{target}-{method}"
                print(f"[{key}] ...", flush=True)
                run = run_job(cfg, method, target, seed, args.device)
                r["runs"][key] = run
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
                m: reached(r["runs"][f"{seed}-{target}-{m}"]["trail"], threshold)
                for m in cfg.methods
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


if __name__ == "__main__":
    raise SystemExit(main())

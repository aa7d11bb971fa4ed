"""The compression methods of METHODS.md, re-measured side by side in one run.

Fashion-MNIST, the zoo's resnet20 (and vgg11s where noted), one trained
baseline per architecture (cached under bench/cache by its settings), the
same seeds, the same channel counts and the same fine-tune budget for every
method compared, so only the method differs:

1. criteria: l1, l2, bn_scale, taylor, similarity, discriminant at 50% and
   25% FLOPs (uniform ratios), before and after an equal short fine-tune;
2. dynamic vs static masks after an equal fine-tune;
3. distillation vs none: accuracy at checkpoints (convergence) and at the end;
4. least-squares reconstruction vs none, before any fine-tune;
5. ALDS rank allocation vs uniform-rank SVD vs channel pruning at equal
   FLOPs: accuracy and measured CPU latency;
6. the Deep Net Triage table for resnet20 and whether its findings hold.

"Before fine-tune" accuracies are after adaptive BN (EagleEye), the scoring
every trial uses; reconstruction is also shown without it. Accuracies are on
the official test split (the first ``test_images`` of it in quick mode).

Usage:
    python bench/methods.py --quick          # about 30 minutes on 2 CPU cores
    python bench/methods.py --device cuda:0  # the full mode, on a GPU

Prints one table per experiment and writes bench/results/methods[-quick].json.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bench.report import table
from core.settings import Settings
from search import Budget, SearchSpace, repair
from search.alds import alds_allocate, uniform_rank
from workers.compress import criteria, lowrank, prune
from workers.compress.distill import distill_loss
from workers.compress.masking import DynamicMasks
from workers.compress.profiling import build_profile, channel_groups
from workers.compress.reconstruct import reconstruct
from workers.compress.triage import block_criticality, blocks, sensitivity_curves, triage_findings
from workers.nets import data, measure, train, zoo

CACHE = ROOT / "bench" / "cache"
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Config:
    """Sizes of one mode; everything compared within a run shares them."""

    subset: int
    pretrain_epochs: float
    finetune_steps: int
    long_steps: int  # masks and distillation: long enough to see convergence
    test_images: int
    calib_batches: int
    criterion_batches: int
    block_steps: int
    archs: tuple[str, ...] = ("resnet20", "vgg11s")
    targets: tuple[float, ...] = (0.5, 0.25)
    mask_every: int = 25
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 0


QUICK = Config(
    subset=12_000,
    pretrain_epochs=3,
    finetune_steps=40,
    long_steps=150,
    test_images=1024,
    calib_batches=5,
    criterion_batches=4,
    block_steps=30,
)
FULL = Config(
    subset=54_000,
    pretrain_epochs=15,
    finetune_steps=300,
    long_steps=1500,
    test_images=10_000,
    calib_batches=20,
    criterion_batches=8,
    block_steps=400,
)


class Bench:
    """Data, cached baselines and the shared scoring/fine-tuning of one run."""

    def __init__(self, cfg: Config, device: str) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        dirs = Settings().dataset_dirs("fashion-mnist")
        self.data = data.load(
            "fashion-mnist",
            dirs=dirs,
            seed=cfg.seed,
            val_fraction=0.1,
            subset=cfg.subset,
            device=self.device,
        )
        self.example = torch.zeros(1, 1, 28, 28, device=self.device)
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.batches = train.calibration_batches(
            self.data.train, cfg.criterion_batches, batch_size=cfg.batch_size, seed=cfg.seed
        )

    def fresh(self, arch: str) -> nn.Module:
        return zoo.build(arch, in_channels=1, num_classes=10, input_size=28).to(self.device)

    def baseline(self, arch: str) -> nn.Module:
        """The trained baseline (cached on disk by architecture and training settings)."""
        if arch not in self.states:
            c = self.cfg
            tag = f"{arch}-{c.subset}-{c.pretrain_epochs}-{c.batch_size}-{c.lr}-{c.seed}"
            path = CACHE / f"{hashlib.sha256(tag.encode()).hexdigest()[:16]}-{arch}.safetensors"
            if path.is_file():
                self.states[arch] = load_file(str(path))
            else:
                torch.manual_seed(c.seed)
                model = self.fresh(arch)
                self.fit(model, steps=0, epochs=c.pretrain_epochs)
                CACHE.mkdir(parents=True, exist_ok=True)
                state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                save_file(state, str(path))
                self.states[arch] = state
        model = self.fresh(arch)
        model.load_state_dict(self.states[arch])
        return model.eval()

    def fit(
        self,
        model: nn.Module,
        *,
        steps: int,
        epochs: float = 0.0,
        loss_fn: train.LossFn | None = None,
        on_step: train.StepCallback | None = None,
    ) -> None:
        c = self.cfg
        train.fit(
            model,
            self.data.train,
            steps=steps or None,
            epochs=epochs or None,
            lr=c.lr,
            batch_size=c.batch_size,
            device=self.device,
            seed=c.seed,
            loss_fn=loss_fn,
            on_step=on_step,
        )

    def fit_curve(
        self, model: nn.Module, steps: int, marks: set[int], loss_fn: train.LossFn | None = None
    ) -> list[tuple[int, float]]:
        """Fine-tune for ``steps`` and return the test accuracy at ``marks`` and at the end."""
        curve: list[tuple[int, float]] = []

        def on_step(step: int, _loss: float) -> None:
            if step in marks and step < steps:
                curve.append((step, self.test(model)))

        self.fit(model, steps=steps, loss_fn=loss_fn, on_step=on_step)
        return [*curve, (steps, self.test(model))]

    def test(self, model: nn.Module) -> float:
        limit = -(-self.cfg.test_images // 512)
        return train.evaluate(
            model, self.data.test, batch_size=512, device=self.device, limit=limit
        )

    def abn(self, model: nn.Module) -> float:
        """Adaptive BN then test accuracy: the "before fine-tune" number."""
        train.adaptive_bn(
            model,
            self.data.train,
            calib_batches=self.cfg.calib_batches,
            batch_size=self.cfg.batch_size,
            device=self.device,
            seed=self.cfg.seed,
        )
        return self.test(model)

    def space(self, arch: str, operator: str = "prune") -> SearchSpace:
        profile = build_profile(
            self.baseline(arch).cpu(), arch=arch, input_shape=(1, 28, 28), num_classes=10
        )
        return SearchSpace(profile, min_ratio=0.05, operator=operator)

    def uniform_counts(self, arch: str, target: float) -> list[int]:
        """Channel counts of uniform ratios at ``target`` FLOPs (the repair keeps them uniform)."""
        space = self.space(arch)
        return list(repair(space, [1.0] * space.size, Budget(flops_ratio=target)).counts)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


# --------------------------------------------------------------------------- 1. criteria


def criteria_exp(b: Bench) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for arch in b.cfg.archs:
        for target in b.cfg.targets:
            counts = b.uniform_counts(arch, target)
            for crit in criteria.CRITERIA:
                model = b.baseline(arch)
                tick = time.perf_counter()
                prune.prune(
                    model,
                    counts,
                    example_inputs=b.example,
                    criterion=crit,
                    batches=b.batches if crit in criteria.DATA_CRITERIA else None,
                )
                select_s = time.perf_counter() - tick
                before = b.abn(model)
                b.fit(model, steps=b.cfg.finetune_steps)
                out.append(
                    {
                        "arch": arch,
                        "target": target,
                        "criterion": crit,
                        "before": before,
                        "after": b.test(model),
                        "select_s": select_s,
                    }
                )
                print(f"  criteria {arch} {target} {crit}: {out[-1]}", flush=True)
    return {"rows": out}


def criteria_table(r: dict[str, Any], cfg: Config) -> str:
    rows = [
        [
            x["arch"],
            f"{x['target']:.2f}",
            x["criterion"],
            _pct(x["before"]),
            _pct(x["after"]),
            f"{x['select_s']:.1f}",
        ]
        for x in r["rows"]
    ]
    return table(
        f"1. Criteria (uniform ratios; after = {cfg.finetune_steps} fine-tune steps)",
        ["arch", "FLOPs", "criterion", "before FT %", "after FT %", "select s"],
        rows,
    )


# --------------------------------------------------------------------------- 2. masks


def masks_exp(b: Bench) -> dict[str, Any]:
    arch, target, crit = "resnet20", b.cfg.targets[-1], "l1"
    counts = b.uniform_counts(arch, target)
    rows = []
    for masking in ("static", "dynamic"):
        model = b.baseline(arch)
        tick = time.perf_counter()
        swaps = 0
        if masking == "static":
            prune.prune(model, counts, example_inputs=b.example, criterion=crit)
            b.fit(model, steps=b.cfg.long_steps)
        else:
            _, groups = channel_groups(model, b.example)

            def select(m: nn.Module = model, g: Any = groups) -> dict[str, list[int]]:
                return criteria.select(m, g, counts, crit)

            with DynamicMasks(model, groups, counts, select, every=b.cfg.mask_every) as masks:
                b.fit(model, steps=b.cfg.long_steps, on_step=masks.on_step)
            swaps = masks.swaps
            prune.apply_kept(model, masks.kept, b.example)
        rows.append(
            {
                "masking": masking,
                "accuracy": b.test(model),
                "swaps": swaps,
                "seconds": time.perf_counter() - tick,
            }
        )
        print(f"  masks {rows[-1]}", flush=True)
    return {"arch": arch, "target": target, "criterion": crit, "rows": rows}


def masks_table(r: dict[str, Any], cfg: Config) -> str:
    return table(
        f"2. Dynamic vs static masks ({r['arch']}, {r['target']} FLOPs, {r['criterion']}, "
        f"{cfg.long_steps} steps, masks recomputed every {cfg.mask_every})",
        ["masking", "test acc %", "channels swapped back in", "seconds"],
        [[x["masking"], _pct(x["accuracy"]), x["swaps"], f"{x['seconds']:.0f}"] for x in r["rows"]],
    )


# --------------------------------------------------------------------------- 3. distillation


def distill_exp(b: Bench) -> dict[str, Any]:
    arch, target = "resnet20", b.cfg.targets[-1]
    counts = b.uniform_counts(arch, target)
    marks = {max(1, b.cfg.long_steps * k // 8) for k in (1, 2, 4)}
    rows = []
    for distill in (False, True):
        model = b.baseline(arch)
        prune.prune(model, counts, example_inputs=b.example, criterion="l1")
        loss_fn = distill_loss(b.baseline(arch)) if distill else None
        curve = b.fit_curve(model, b.cfg.long_steps, marks, loss_fn)
        rows.append({"distill": distill, "curve": curve})
        print(f"  distill {rows[-1]}", flush=True)
    return {"arch": arch, "target": target, "parent": b.test(b.baseline(arch)), "rows": rows}


def distill_table(r: dict[str, Any], cfg: Config) -> str:
    steps = [s for s, _ in r["rows"][0]["curve"]]
    return table(
        f"3. Distillation from the baseline ({r['arch']}, {r['target']} FLOPs, l1; "
        f"parent {_pct(r['parent'])} %; T=4, weight 0.5)",
        ["fine-tune"] + [f"step {s} %" for s in steps],
        [
            ["distilled" if x["distill"] else "cross-entropy"] + [_pct(a) for _, a in x["curve"]]
            for x in r["rows"]
        ],
    )


# --------------------------------------------------------------------------- 4. reconstruction


def reconstruct_exp(b: Bench) -> dict[str, Any]:
    rows = []
    for arch in b.cfg.archs:
        for target in b.cfg.targets:
            counts = b.uniform_counts(arch, target)
            for rec in (False, True):
                model = b.baseline(arch)
                kept = prune.prune(model, counts, example_inputs=b.example, criterion="l1")
                tick = time.perf_counter()
                if rec:
                    reconstruct(model, b.baseline(arch), kept, b.batches, seed=b.cfg.seed)
                seconds = time.perf_counter() - tick
                raw = b.test(model)
                rows.append(
                    {
                        "arch": arch,
                        "target": target,
                        "reconstruct": rec,
                        "raw": raw,
                        "abn": b.abn(model),
                        "seconds": seconds,
                    }
                )
                print(f"  reconstruct {rows[-1]}", flush=True)
    return {"rows": rows}


def reconstruct_table(r: dict[str, Any], cfg: Config) -> str:
    return table(
        f"4. Least-squares reconstruction, no fine-tune (l1, {cfg.criterion_batches} "
        "calibration batches)",
        ["arch", "FLOPs", "reconstruct", "test acc %", "+ adaptive BN %", "seconds"],
        [
            [
                x["arch"],
                f"{x['target']:.2f}",
                "yes" if x["reconstruct"] else "no",
                _pct(x["raw"]),
                _pct(x["abn"]),
                f"{x['seconds']:.1f}",
            ]
            for x in r["rows"]
        ],
    )


# --------------------------------------------------------------------------- 5. low rank


def lowrank_exp(b: Bench) -> dict[str, Any]:
    arch = "resnet20"
    rows = []
    base = b.baseline(arch)
    space = b.space(arch, "lowrank")
    errors = lowrank.error_table(b.baseline(arch).cpu(), space.profile)

    def decomposed(ratios: tuple[float, ...]) -> nn.Module:
        _, ranks = space.split(space.counts(ratios))
        model = b.baseline(arch)
        lowrank.decompose(model, ranks)
        return model

    def pruned(counts: list[int]) -> nn.Module:
        model = b.baseline(arch)
        prune.prune(model, counts, example_inputs=b.example)
        return model

    for target in b.cfg.targets:
        budget = Budget(flops_ratio=target)
        alds = alds_allocate(space, errors, budget)
        uniform = uniform_rank(space, budget)
        counts = b.uniform_counts(arch, target)
        plans: dict[str, Callable[[], nn.Module]] = {
            "ALDS ranks": functools.partial(decomposed, alds),
            "uniform-rank SVD": functools.partial(decomposed, uniform),
            "channel pruning (l1, uniform)": functools.partial(pruned, counts),
        }
        for name, make in plans.items():
            model = make()
            flops, _ = measure.count(model, (1, 28, 28), device=b.device)
            before = b.abn(model)
            b.fit(model, steps=b.cfg.finetune_steps)
            after = b.test(model)
            ms = _latency(b, base, model)
            rows.append(
                {
                    "target": target,
                    "method": name,
                    "flops_ratio": flops / space.profile.base_flops,
                    "before": before,
                    "after": after,
                    "speedup_256": ms["base"] / ms["model"],
                }
            )
            print(f"  lowrank {rows[-1]}", flush=True)
    return {"arch": arch, "rows": rows}


def _latency(b: Bench, base: nn.Module, model: nn.Module) -> dict[str, float]:
    """Batch-256 latency of both networks, alternated, best of 3 (as finalize does)."""
    best = {"base": float("inf"), "model": float("inf")}
    for _ in range(3):
        for key, m in (("base", base), ("model", model)):
            ms = measure.latency_ms(m, (1, 28, 28), device=b.device, batch_sizes=(256,))
            best[key] = min(best[key], ms[256])
    return best


def lowrank_table(r: dict[str, Any], cfg: Config) -> str:
    return table(
        f"5. Low-rank vs channel pruning at equal FLOPs ({r['arch']}; after = "
        f"{cfg.finetune_steps} fine-tune steps; CPU latency at batch 256)",
        ["FLOPs target", "method", "FLOPs ratio", "before FT %", "after FT %", "speedup"],
        [
            [
                f"{x['target']:.2f}",
                x["method"],
                f"{x['flops_ratio']:.3f}",
                _pct(x["before"]),
                _pct(x["after"]),
                f"{x['speedup_256']:.2f}x",
            ]
            for x in r["rows"]
        ],
    )


# --------------------------------------------------------------------------- 6. triage


def triage_exp(b: Bench) -> dict[str, Any]:
    arch = "resnet20"
    tick = time.perf_counter()
    curves = sensitivity_curves(lambda: b.baseline(arch), b.example, b.abn)
    curves_s = time.perf_counter() - tick

    def finetune(
        model: nn.Module, steps: int, teacher: nn.Module | None
    ) -> list[tuple[int, float]]:
        loss_fn = distill_loss(teacher) if teacher else None
        return b.fit_curve(model, steps, {max(1, steps // 4), steps // 2}, loss_fn)

    tick = time.perf_counter()
    reports = block_criticality(
        lambda: b.baseline(arch),
        b.abn,
        finetune,
        steps=b.cfg.block_steps,
        teacher_factory=lambda: b.baseline(arch),
        seed=b.cfg.seed,
    )
    blocks_s = time.perf_counter() - tick
    parent = b.test(b.baseline(arch))
    return {
        "arch": arch,
        "parent": parent,
        "reference_abn": b.abn(b.baseline(arch)),
        "curves": curves,
        "blocks": [r.to_dict() for r in reports],
        "findings": triage_findings(parent, reports),
        "curves_s": curves_s,
        "blocks_s": blocks_s,
        "block_names": blocks(b.baseline(arch)),
    }


def triage_table(r: dict[str, Any], cfg: Config) -> str:
    rows = [
        [
            x["block"],
            f"{x['params_after'] / x['params_before']:.3f}",
            _pct(x["accuracy_collapsed"]),
            _pct(x["finetune"][0][1]),
            _pct(x["finetune"][-1][1]),
            _pct(x["distill"][0][1]),
            _pct(x["distill"][-1][1]),
        ]
        for x in r["blocks"]
    ]
    first = r["blocks"][0]["finetune"][0][0] if r["blocks"] else 0
    text = table(
        f"6a. Deep Net Triage, block criticality ({r['arch']}; parent {_pct(r['parent'])} %; "
        f"fine-tune {cfg.block_steps} steps, first checkpoint at step {first})",
        [
            "collapsed block",
            "params",
            "collapsed %",
            "FT first %",
            "FT end %",
            "KD first %",
            "KD end %",
        ],
        rows,
    )
    ratios = [p[0] for p in next(iter(r["curves"].values()))]
    curve_rows = [[g] + [_pct(a) for _, a in pts] for g, pts in r["curves"].items()]
    text += "\n\n" + table(
        f"6b. Sensitivity curves (adaptive-BN test accuracy %, one group pruned; unpruned "
        f"{_pct(r['reference_abn'])} %)",
        ["group"] + [f"{x:.1f}" for x in ratios],
        curve_rows,
    )
    f = r["findings"]
    text += "\n\n6c. Findings: " + json.dumps(f, indent=None, default=str)
    return text


EXPERIMENTS: dict[str, tuple[Callable[[Bench], dict[str, Any]], Callable[..., str]]] = {
    "criteria": (criteria_exp, criteria_table),
    "masks": (masks_exp, masks_table),
    "distill": (distill_exp, distill_table),
    "reconstruct": (reconstruct_exp, reconstruct_table),
    "lowrank": (lowrank_exp, lowrank_table),
    "triage": (triage_exp, triage_table),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 30-minute CPU mode")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", choices=sorted(EXPERIMENTS), help="run a subset")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/...)")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    bench = Bench(cfg, args.device)
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "config": asdict(cfg),
        "device": str(bench.device),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}",
        "experiments": {},
        "seconds": {},
    }
    tick = time.perf_counter()
    for arch in cfg.archs:
        bench.baseline(arch)
        results.setdefault("baselines", {})[arch] = bench.test(bench.baseline(arch))
    results["seconds"]["baselines"] = time.perf_counter() - tick
    tables = []
    for name in args.only or list(EXPERIMENTS):
        run, render = EXPERIMENTS[name]
        tick = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        results["experiments"][name] = run(bench)
        results["seconds"][name] = time.perf_counter() - tick
        tables.append(render(results["experiments"][name], cfg))
        print(tables[-1] + "\n", flush=True)
    results["seconds"]["total"] = time.perf_counter() - start
    out = args.out or RESULTS / f"methods{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(
        "baselines (test %): "
        + ", ".join(f"{a} {_pct(v)}" for a, v in results["baselines"].items())
    )
    print(f"seconds: {json.dumps({k: round(v) for k, v in results['seconds'].items()})}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train a zoo network to convergence on Fashion-MNIST and commit it as a baseline.

Benchmarks that compare pruning methods need a baseline trained to the end of
its schedule: on a half-trained network (quick mode's 2 epochs on 8,000
images) every method recovers accuracy by simply training more, and the
differences between methods drown in that. This script trains one network
on the training images of the ``seed`` carve (the ``val_fraction`` held out
for scoring candidates is never trained on, so a search's validation scores
stay honest), with the project's own loop (:func:`workers.nets.train.fit`:
SGD + Nesterov, warm-up and cosine to zero, shift/flip augmentation), and
writes to ``baselines/``:

* ``<arch>-fashion-mnist.safetensors``: the weights (loading runs no code);
* ``<arch>-fashion-mnist.json``: the exact command, the recipe, the
  machine, the file's SHA-256, the validation and whole-test-set accuracy,
  and the per-epoch mean loss (the log).

``tests/test_committed_baselines.py`` re-checks every committed file's hash and test
accuracy. Usage::

    .venv/bin/python bench/train_baseline.py resnet20 --epochs 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.nets import data, train, zoo

BASELINES = ROOT / "baselines"
DATASET = "fashion-mnist"
DATA_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (what the test re-checks)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", help="zoo name, e.g. resnet20 or resnet56")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="initialisation, order and carve")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=BASELINES)
    args = parser.parse_args(argv)

    splits = data.load(
        DATASET, dirs=DATA_DIRS, seed=args.seed, val_fraction=args.val_fraction, device=args.device
    )
    torch.manual_seed(args.seed)
    model = zoo.build(
        args.arch, in_channels=splits.in_channels, num_classes=splits.num_classes, input_size=28
    )
    per_epoch = -(-len(splits.train) // args.batch_size)
    log: list[dict[str, float]] = []
    epoch_losses: list[float] = []
    started = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        epoch_losses.append(loss)
        if step % per_epoch == 0:
            entry = {
                "epoch": step // per_epoch,
                "mean_loss": sum(epoch_losses) / len(epoch_losses),
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
            log.append(entry)
            epoch_losses.clear()
            print(json.dumps(entry), flush=True)

    fitted = train.fit(
        model,
        splits.train,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        on_step=on_step,
    )
    val_acc = train.evaluate(model, splits.val, device=args.device)
    test_acc = train.evaluate(model, splits.test, device=args.device)
    model.cpu()

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.arch}-{DATASET}"
    weights = args.out / f"{stem}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    record = {
        "arch": args.arch,
        "dataset": DATASET,
        "command": shlex.join([".venv/bin/python", "bench/train_baseline.py", *sys.argv[1:]]),
        "recipe": {
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "val_fraction": args.val_fraction,
            "train_images": len(splits.train),
            "augment": "shift + horizontal flip (workers.nets.data)",
            "schedule": "SGD Nesterov 0.9, wd 5e-4 on weights, warm-up + cosine to 0",
        },
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, {args.device}, torch {torch.__version__}",
        "train_seconds": round(fitted["seconds"], 1),
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "test_images": len(splits.test),
        "sha256": sha256(weights),
        "log": log,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{stem}: val {val_acc:.4f}, test {test_acc:.4f}, {fitted['seconds']:.0f} s -> {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# Run ON the lent GPU machine, from the repository root, after bench/gpu_prepare.sh
# filled .gpu/ here:   device run: command "bash bench/gpu_check.sh", carry [".gpu"],
# timeout_s 560. Under 8 minutes in all: each step has its own time limit.
# Writes into $OUT (the device tool brings it back): nvidia-smi.txt, cuda_tests.txt,
# baselines/resnet56-fashion-mnist.{safetensors,json,log} (the converged ResNet-56 that
# CPU cannot train in a session: commit it with its record after checking it),
# search_quality-gpu.json and gpu_check.log. Record what it prints in docs/benchmarks.md.
# The whole full-mode benchmark (3 seeds, 9 methods, 60 proxy candidates a target) needs
# far more than a session's 15 device minutes; here it runs as a smoke of its CUDA path.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PRUNESEARCH_DATA_DIR="$PWD/.gpu/data"
# The image's python3 holds a CUDA torch; ours go beside it, not over it.
python3 -m pip install -q --no-index --no-deps --target /tmp/psdeps .gpu/wheels/*.whl
export PYTHONPATH="$PWD:/tmp/psdeps"
nvidia-smi | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
status=0
echo "== CUDA tests (limit 120 s)"
timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/workers/test_cuda.py "tests/workers/test_imagefolder.py::test_streaming_and_memory_agree_on_cuda" \
  | tee "$OUT/cuda_tests.txt" || status=1
echo "== ResNet-56 baseline, 20 epochs (limit 180 s)"
timeout 180 python3 bench/train_baseline.py resnet56 --epochs 20 --device cuda \
  --out "$OUT/baselines" || status=1
echo "== search benchmark, full mode's sizes, seed 0, 2 methods, 30 networks (limit 120 s)"
timeout 120 python3 bench/search_quality.py --device cuda:0 --seeds 0 --methods uniform random \
  --budget 30 --proxy-candidates 4 --out "$OUT/search_quality-gpu.json" || status=1
echo "gpu_check exit $status"
exit $status

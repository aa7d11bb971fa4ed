#!/usr/bin/env bash
# Run ON the lent GPU machine, from the repository root, after bench/gpu_prepare.sh
# filled .gpu/ here:   device run: command "bash bench/gpu_check.sh", carry [".gpu"],
# timeout_s 560. Under 8 minutes in all: each step has its own time limit.
# Writes into $OUT (the device tool brings it back): nvidia-smi.txt, cuda_tests.txt,
# search_quality-gpu.json and gpu_check.log. Record what it prints in docs/benchmarks.md.
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
echo "== CUDA tests (limit 150 s)"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/workers/test_cuda.py "tests/workers/test_imagefolder.py::test_streaming_and_memory_agree_on_cuda" \
  | tee "$OUT/cuda_tests.txt" || status=1
echo "== search benchmark, full mode, seed 0 (limit 300 s)"
timeout 300 python3 bench/search_quality.py --device cuda:0 --seeds 0 \
  --out "$OUT/search_quality-gpu.json" || status=1
echo "gpu_check exit $status"
exit $status

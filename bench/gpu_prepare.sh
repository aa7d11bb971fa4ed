#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before bench/gpu_check.sh: the lent GPU
# machine reaches no network, and its image has Python 3.12 with torch but not
# our other dependencies nor Fashion-MNIST. This fills .gpu/ (git-ignored, about
# 45 MiB, under the device tool's 64 MiB carry limit) with:
#   .gpu/wheels/  our dependencies the image lacks, as cp312 x86_64 wheels (no torch);
#   .gpu/data/fashion-mnist/  the IDX files of the Debian package.
# Then: device run, command "bash bench/gpu_check.sh", carry [".gpu"], timeout_s 560.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .gpu/wheels .gpu/data/fashion-mnist
# Exactly the missing closure, at the versions of our .venv, fetched without
# dependencies: torch-pruning would otherwise pull a CUDA torch (gigabytes).
NAMES='optuna|alembic|colorlog|sqlalchemy|mako|greenlet|torch-pruning|redis|rq|pydantic|pydantic.core|annotated-types|typing-inspection|pydantic-settings|python-dotenv|fastapi|starlette|uvicorn|python-multipart|psycopg|psycopg-binary|typing.extensions'
PINS=$($PY -m pip freeze 2>/dev/null | grep -iE "^($NAMES)==")
# shellcheck disable=SC2086
$PY -m pip download -q --dest .gpu/wheels --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any $PINS
cp /usr/share/datasets/fashion-mnist/*.gz .gpu/data/fashion-mnist/
du -sh .gpu

# prunesearch: `make demo` runs a real search, `make test` runs the tests.
# Both set up what they need first: a virtualenv in .venv (torch pinned to
# the CPU build first, then the project) and, when root, Debian packages.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= demo-out

.PHONY: setup system-deps demo test lint serve worker bench fuzz clean

setup: system-deps $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST ships as a Debian package; redis-server lets the tests start
# a Redis when none is running; chromium is the browser the dashboard test
# drives (Playwright, no browser download). Installed only when root and missing.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  [ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	  command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	  [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi; \
	fi

demo: setup
	$(BIN)/prunesearch search examples/fashion_mnist.yaml --out $(OUT)
	$(BIN)/prunesearch verify $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -q

serve: setup
	$(BIN)/prunesearch serve

worker: setup
	$(BIN)/prunesearch worker

# Per-trial time split (docs/benchmarks.md). The service run needs Redis;
# the demo analysis reads the folder `make demo` wrote.
bench: setup
	$(BIN)/python bench/trial_overhead.py local examples/digits.yaml --json bench/results/trial_overhead-digits-local.json
	$(BIN)/python bench/trial_overhead.py service examples/digits.yaml --workers 2 --json bench/results/trial_overhead-digits-service.json
	$(BIN)/python bench/trial_overhead.py service examples/fashion_mnist.yaml --workers 2 --json bench/results/trial_overhead-demo-service.json
	test ! -f $(OUT)/result.json || $(BIN)/python bench/trial_overhead.py analyze $(OUT) --json bench/results/trial_overhead-demo.json

# Schemathesis with new random requests every run (`make test` runs the derandomized
# ones), on SQLite and PostgreSQL; prints each operation's case count. Not in `make test`:
# about twice its requests. PRUNESEARCH_FUZZ_EXAMPLES (default 50) per operation, mode and
# kind of id; PRUNESEARCH_FUZZ_SEED repeats a run. Figures: docs/reliability.md.
fuzz: setup
	PRUNESEARCH_FUZZ=1 $(BIN)/pytest -q -s --durations=3 tests/service/test_schemathesis.py

clean:
	rm -rf $(VENV) $(OUT) .mypy_cache .ruff_cache .pytest_cache

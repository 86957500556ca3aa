# nbprod — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Everything nbprod writes (run store, Prefect home, BentoML store) stays in the project: the
# same defaults `nbprod` sets itself when started directly (flows/paths.py).
NBPROD_HOME ?= $(CURDIR)/.nbprod
export NBPROD_HOME
export PREFECT_HOME ?= $(NBPROD_HOME)/prefect
export BENTOML_HOME ?= $(NBPROD_HOME)/bentoml
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.DEFAULT_GOAL := help
.PHONY: help venv demo test lint lock clean bench

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install nbprod with pinned dependencies

demo: $(STAMP) ## Train twice on the bundled data (accepted, rejected), then serve, detect drift and retrain via the automation
	$(PY) -m flows.demo

# Test modules run in this many pytest-xdist workers (each module stays on one; each worker has
# its own Prefect server and stores). The suite is CPU-bound: one per core.
TEST_WORKERS ?= 2

test: $(STAMP) ## Run the whole test suite (unit and integration) in TEST_WORKERS processes; lists the 25 slowest tests
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile --durations=25

lint: $(STAMP) ## Ruff, over the package, tests, bentos and benchmarks
	$(VENV)/bin/ruff check flows tests bentos benchmarks
	$(VENV)/bin/ruff format --check flows tests bentos benchmarks

BENCH_ARGS ?= --quick
bench: $(STAMP) ## Benchmarks vs baselines (papermill, FastAPI, Evidently) into benchmarks/RESULTS.md; BENCH_ARGS= for the full run; needs wrk
	@command -v wrk >/dev/null || { echo "install wrk: apt-get install -y wrk" >&2; exit 1; }
	$(PY) benchmarks/run.py $(BENCH_ARGS)

lock: $(STAMP) ## Rewrite constraints.txt from the current venv
	( echo "# Exact versions installed by 'make' (pip install -c constraints.txt). Regenerate with 'make lock'."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^nbprod' ) > constraints.txt

clean: ## Remove the demo's run store, Prefect home and BentoML store
	rm -rf $(NBPROD_HOME)

# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the dependency list or constraints change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -e '.[dev]' -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py

# Two pytest processes: one left the 2 cores idle through Ray's process start-ups, server starts
# and polls; two kept them 90% busy (README, suite times). Tests that share a costly
# module fixture (the local cluster, one ASHA sweep, one Ray Serve app) carry an xdist_group mark
# and stay in one process. PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) --durations=30

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check platform jobs tests benchmarks
	$(BIN)/ruff format --check platform jobs tests benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache

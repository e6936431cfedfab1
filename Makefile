# The README's commands. Every target that runs code depends on `setup`, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPORTS ?= reports
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: setup quickstart test lint format bench bench-quick faults clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Main job: the reproduce-all flow on the offline quickstart suite (local Prefect, local Dask, local store).
quickstart: setup
	$(BIN)/generalad reproduce --suite quickstart --reports $(REPORTS)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench-quick: setup
	$(BIN)/python bench/run_all.py --quick

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf stores reports runs bench/results .pytest_cache

# Fault injection (SIGKILL during extraction, concurrent writers): prints a table of faults and values lost.
faults: setup
	$(BIN)/python bench/faults.py

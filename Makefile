# Everything a fresh machine needs comes from here: `make run` and `make test` build the virtual
# environment themselves (Python >= 3.11 on PATH is the only prerequisite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck imports crds crds-check unit bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The main job on the embedded example fleet: where every example replica goes, and the fleet totals.
run: install
	$(BIN)/gpufabric plan -f examples/

## The whole suite: lint, types, import contracts, CRD freshness, tests.
test: install lint typecheck imports crds-check unit

lint: install
	$(BIN)/ruff check operator tests benchmarks
	$(BIN)/ruff format --check operator tests benchmarks

typecheck: install
	$(BIN)/mypy

imports: install
	$(BIN)/lint-imports

crds: install
	$(BIN)/gpufabric crds

crds-check: install
	$(BIN)/gpufabric crds --check

unit: install
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/placement.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis

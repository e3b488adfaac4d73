# hami — two entry points: `make demo` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv native lint typecheck unit native-test integration clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

native:
	$(MAKE) -C native all

demo: venv native
	$(BIN)/hami simulate --nodes examples/nodes.yaml --pods examples/pods.yaml --config examples/device-config.yaml

lint: venv
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

typecheck: venv
	$(BIN)/mypy

# Every tier: lint, types, unit + contract + native + integration (real etcd, kube-apiserver,
# kube-scheduler — built once from Go modules into ~/.cache/hami, see hack/build-k8s.sh).
test: venv native lint typecheck
	hack/ensure-etcd.sh
	HAMI_K8S_BIN="$${HAMI_K8S_BIN:-$$(hack/build-k8s.sh)}" HAMI_REQUIRE_INTEGRATION=1 $(BIN)/pytest -q -p no:cacheprovider

unit: venv
	$(BIN)/pytest -q tests/unit tests/contract

native-test: venv native
	$(BIN)/pytest -q tests/native

integration: venv native
	hack/ensure-etcd.sh
	HAMI_K8S_BIN="$${HAMI_K8S_BIN:-$$(hack/build-k8s.sh)}" HAMI_REQUIRE_INTEGRATION=1 $(BIN)/pytest -q tests/integration tests/e2e

clean:
	rm -rf $(VENV) native/build .pytest_cache .mypy_cache .ruff_cache

# hami — two entry points: `make demo` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CACHE  ?= $(HOME)/.cache/hami
# Every Python package comes from uv.lock, installed by the pinned uv (hack/ensure-uv.sh) and cached
# under ~/.cache/hami. `make lock` is the one way the lock changes.
export UV_CACHE_DIR ?= $(CACHE)/uv
export UV_PYTHON ?= $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
UV_BIN := $(CACHE)/uv-$(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' hack/uv-requirements.txt)/bin/uv
STAMP  := $(VENV)/.installed-dev
RUNTIME_STAMP := $(VENV)/.installed-runtime

.PHONY: demo test venv runtime-venv lock native lint typecheck unit native-test integration mutation clean

$(UV_BIN): hack/uv-requirements.txt
	hack/ensure-uv.sh >/dev/null

# Runtime and development packages (what `make test` needs), exactly as locked.
$(STAMP): pyproject.toml uv.lock $(UV_BIN)
	$(UV_BIN) sync --frozen
	touch $(STAMP)

# Runtime packages only (what `make demo` needs); keeps dev packages already there.
$(RUNTIME_STAMP): pyproject.toml uv.lock $(UV_BIN)
	$(UV_BIN) sync --frozen --no-dev --inexact
	touch $(RUNTIME_STAMP)

# Re-resolve every dependency to the newest versions pyproject.toml allows and rewrite uv.lock.
# Run it on purpose, then `make test`; commit uv.lock with what the update needed.
lock: $(UV_BIN)
	$(UV_BIN) lock --upgrade

venv: $(STAMP)

runtime-venv: $(RUNTIME_STAMP)

native:
	$(MAKE) -C native all

demo: runtime-venv native
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

# Mutation testing of the pure core (hami.scheduling, hami.protocol, hami.devices) against the unit
# and pure contract tests ([tool.mutmut] in pyproject.toml; docs/mutation.md). Not part of `make test`.
# Bounded: stops after MUTATION_MAX_S seconds; the next run resumes where it stopped (state in
# mutants/). MUTANTS='hami.protocol.*' (re)runs only the mutants whose names match.
MUTATION_MAX_S ?= 1800
MUTATION_JOBS  ?= 2
MUTANTS        ?=
mutation: venv
	@# mutmut 3.8.1 loses its test-to-function map when it reuses unchanged mutant files (every mutant
	@# then reads "no tests"): collect it afresh each run (~1 min); judged mutants keep their verdicts
	rm -f mutants/mutmut-stats.json
	-timeout -s INT -k 60 $(MUTATION_MAX_S) $(BIN)/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS) \
	  > mutation.log 2>&1; tail -n 3 mutation.log | tr '\r' '\n' | tail -n 2
	$(BIN)/mutmut export-cicd-stats >/dev/null
	@$(BIN)/python -c 'import json; s = json.load(open("mutants/mutmut-cicd-stats.json")); \
	  done = s["killed"] + s["survived"] + s["timeout"]; \
	  print("mutation:", {k: v for k, v in s.items() if v}, \
	        "score %.1f%% of %d judged" % (100 * (s["killed"] + s["timeout"]) / max(done, 1), done))'

clean:
	rm -rf mutants mutation.log $(VENV) native/build .pytest_cache .mypy_cache .ruff_cache

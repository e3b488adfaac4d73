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

# What a real node needs from Debian (the real-node tier and the sandbox).
ENSURE_NODE_TOOLS = hack/ensure-debian-tool.sh runc runc && \
	hack/ensure-debian-tool.sh /usr/lib/cni/bridge containernetworking-plugins && \
	hack/ensure-debian-tool.sh iptables iptables && hack/ensure-debian-tool.sh conntrack conntrack

.PHONY: demo demo-down simulate test venv runtime-venv lock native images lint typecheck unit native-test integration mutation screenshots clean

$(UV_BIN): hack/uv-requirements.txt
	hack/ensure-uv.sh >/dev/null

# Runtime and development packages (what `make test` needs), exactly as locked.
$(STAMP): pyproject.toml uv.lock $(UV_BIN)
	$(UV_BIN) sync --locked
	touch $(STAMP)

# Runtime packages only (what `make demo` needs); keeps dev packages already there.
$(RUNTIME_STAMP): pyproject.toml uv.lock $(UV_BIN)
	$(UV_BIN) sync --locked --no-dev --inexact
	touch $(RUNTIME_STAMP)

# Re-resolve every dependency to the newest versions pyproject.toml allows and rewrite uv.lock.
# Run it on purpose, then `make test`; commit uv.lock with what the update needed.
lock: $(UV_BIN)
	$(UV_BIN) lock --upgrade

venv: $(STAMP)

runtime-venv: $(RUNTIME_STAMP)

native:
	$(MAKE) -C native all

# The sandbox: a control plane and a real kubelet + containerd node on this machine with simulated
# GPUs, hami installed by its chart, the demo workload applied and its placements printed. It keeps
# running (a second `make demo` reuses it); `make demo-down` removes it and restores the host.
SANDBOX_STATE ?= /var/tmp/hami-sandbox
demo: runtime-venv native images
	hack/ensure-etcd.sh
	@$(ENSURE_NODE_TOOLS)
	@echo "==> building or reusing the Kubernetes, containerd and helm binaries in $(CACHE) (first time: 10-25 min)" >&2
	$(BIN)/hami sandbox up --state $(SANDBOX_STATE) --k8s-bin "$$(hack/build-k8s.sh)" \
	  --containerd-bin "$$(hack/build-containerd.sh)" --helm "$$(hack/build-helm.sh)"

demo-down: runtime-venv
	$(BIN)/hami sandbox down --state $(SANDBOX_STATE)

# What-if scheduling offline: the scheduling core over examples/ without any cluster.
simulate: runtime-venv
	$(BIN)/hami simulate --nodes examples/nodes.yaml --pods examples/pods.yaml --config examples/device-config.yaml

# OCI image archives in dist/images (docs/images.md): built from images/debian.lock, uv.lock, the
# source tree, libvgpu.so and the cached kube-scheduler; skipped when none of those changed.
images: runtime-venv native
	PYTHONPATH=images $(BIN)/python -m ocibuild --out dist/images --k8s-bin "$$(hack/build-k8s.sh)"

lint: venv
	$(BIN)/ruff check src tests benchmarks scripts images
	$(BIN)/ruff format --check src tests benchmarks scripts images

typecheck: venv
	$(BIN)/mypy

# Every tier: lint, types, unit + contract + native + integration + chart + real node (real etcd,
# kube-apiserver, kube-scheduler, kubelet, containerd, helm and prometheus — built once from Go modules into
# ~/.cache/hami, see hack/build-*.sh — and Debian's runc and CNI plugins).
# HAMI_REQUIRE_ALL=1: a test whose prerequisite is missing fails, saying what to install, instead
# of skipping (hami.testing.prereq).
test: venv native lint typecheck images
	hack/ensure-etcd.sh
	hack/ensure-debian-tool.sh valgrind valgrind
	hack/ensure-debian-tool.sh chromium chromium
	$(ENSURE_NODE_TOOLS)
	HAMI_K8S_BIN="$${HAMI_K8S_BIN:-$$(hack/build-k8s.sh)}" HAMI_HELM="$${HAMI_HELM:-$$(hack/build-helm.sh)}" \
	  HAMI_CONTAINERD_BIN="$${HAMI_CONTAINERD_BIN:-$$(hack/build-containerd.sh)}" \
	  HAMI_PROMETHEUS_BIN="$${HAMI_PROMETHEUS_BIN:-$$(hack/build-prometheus.sh)}" \
	  HAMI_REQUIRE_INTEGRATION=1 HAMI_REQUIRE_ALL=1 $(BIN)/pytest -q -p no:cacheprovider

unit: venv
	$(BIN)/pytest -q tests/unit tests/contract

native-test: venv native
	$(BIN)/pytest -q tests/native

integration: venv native
	hack/ensure-etcd.sh
	hack/ensure-debian-tool.sh chromium chromium
	HAMI_K8S_BIN="$${HAMI_K8S_BIN:-$$(hack/build-k8s.sh)}" HAMI_HELM="$${HAMI_HELM:-$$(hack/build-helm.sh)}" \
	  HAMI_REQUIRE_INTEGRATION=1 $(BIN)/pytest -q tests/integration tests/e2e tests/chart

# docs/webui/*.png: every web UI page in Debian's chromium (Playwright), served from a seeded real
# control plane with real node monitors (scripts/webui_screenshots.py). Commit the result.
screenshots: venv
	hack/ensure-etcd.sh
	hack/ensure-debian-tool.sh chromium chromium
	HAMI_K8S_BIN="$${HAMI_K8S_BIN:-$$(hack/build-k8s.sh)}" $(BIN)/python scripts/webui_screenshots.py --out docs/webui

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
	rm -rf mutants mutation.log $(VENV) native/build dist .pytest_cache .mypy_cache .ruff_cache

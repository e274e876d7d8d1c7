# acs-identity-operator: every entry point a person or CI needs.
#   make test          install what is missing, build, run every test
#   make demo          the end-to-end demo on a local control plane
#   make cluster-up    start a local control plane; last stdout line: export KUBECONFIG=...
#   make cluster-down  stop the control plane that cluster-up started
#   make cluster-up WITH_NODE=1   ... plus one node (containerd, kubelet, scheduler, kube-proxy)
#   make image         build the operator image offline; last line: its OCI archive
#   make release       image, chart, kubectl-acs, SBOM, SHA256SUMS in dist/<version>/
#   make node-e2e      the chart and the image on a real node (part of make test)
#   make demo WITH_NODE=1         the demo with the operator and a workload as real pods
#   make bench N=1000  our operator against external-secrets (not part of make test)
#   make bench-scale N=20000  ours alone at scale: memory, restart, failover, renewal wave
#   make reliability   the reliability suite at scale (RELIABILITY_N, default 200)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
MAKEFLAGS += --no-print-directory

CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/acs-identity-operator
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
CLUSTER_DIR := $(CURDIR)/.cluster
include hack/controlplane/versions.env

.PHONY: help deps controlplane build release release-bin test lint fmt crds check-crds chart-crds \
        compat hmac-vectors emulator bench-acs bench bench-scale lint-dockerfile cluster-up cluster-down demo versions \
        reliability

help:
	@sed -n '2,13p' Makefile
	@echo "other targets: build release-bin lint fmt crds check-crds chart-crds compat hmac-vectors emulator bench-acs lint-dockerfile versions"

deps:
	@hack/deps.sh

controlplane: deps
	@hack/controlplane/build.sh >/dev/null

versions:
	@echo "control plane: Kubernetes $(K8S_VERSION), etcd $(ETCD_VERSION), helm $(HELM_VERSION)"

build: deps
	cargo build --all-targets

# Every release artifact, versioned from Cargo.toml, in dist/<version>/: the image
# archive, the chart package, kubectl-acs, a CycloneDX SBOM and SHA256SUMS. Last line:
# the folder. RELEASE_ARGS=--skip-image where podman cannot run.
release: deps controlplane
	@hack/release.sh $(RELEASE_ARGS)

# The release binaries exactly as the Dockerfile builds them (what `make release` did
# before 0.1.0).
release-bin: deps
	cargo build --release --locked --bin acs-identity-operator --bin kubectl-acs

fmt:
	cargo fmt

lint: deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	hack/lint-dockerfile.sh

# CRDs are generated from src/api/; commit crds/ and the chart's copy after a change.
crds:
	cargo run --quiet --bin crdgen -- --out crds
	hack/sync-chart-crds.sh

check-crds:
	cargo run --quiet --bin crdgen -- --check
	hack/sync-chart-crds.sh --check

chart-crds:
	hack/sync-chart-crds.sh

# Every test: lints, the Rust unit and integration tests (on a real control plane and
# the ACS emulator), and the official-SDK compatibility tests.
test:
	@hack/test.sh

# Crashes, ACS and Kubernetes faults, a simulated day, an outage, bad input and fuzzing at
# scale (docs/reliability.md); the last line sums up what was lost (nothing, or a finding).
reliability: controlplane
	@hack/reliability.sh

compat: deps
	@hack/compat/install.sh
	@hack/compat/run.sh

# HMAC test vectors, computed by the official Python SDK's own signing code.
hmac-vectors: deps
	@hack/compat/install.sh
	$(CACHE_DIR)/compat/venv/bin/python hack/compat/gen_hmac_vectors.py > tests/vectors/hmac_sha256.json

emulator:
	cargo run --quiet --bin acs-emulator -- --listen 127.0.0.1:0 --token-lifetime-scale 0.01

# Issue-token throughput through the Rust client against the emulator, and the
# client's own cost per request (goal: >= 5,000 req/s on two cores).
bench-acs:
	cargo build --quiet --release --bin acs-emulator --bin acs-bench
	cargo run --quiet --release --bin acs-bench -- --emulator process --requests 100000

# Our operator and external-secrets side by side on a fresh local control plane with the
# ACS emulator: throughput, latency, API and ACS cost, memory (bench/results.md). N objects
# per workload; BENCH_ARGS passes more (e.g. --skip quota, --operator-bin P --label L).
N ?= 1000
bench: controlplane
	@hack/bench/run.sh --n $(N) $(BENCH_ARGS)

# Ours alone with a large fleet: memory per identity at the margin, restart and failover
# cost, and the renewal wave after an ACS outage at ACS's issue limit (bench/results.md).
bench-scale: controlplane
	@hack/bench/run.sh --scale --n $(N) $(BENCH_ARGS)

lint-dockerfile:
	hack/lint-dockerfile.sh

cluster-up: controlplane
	@if [[ -s $(CLUSTER_DIR)/pids ]]; then echo "cluster-up: a control plane is already running from $(CLUSTER_DIR); run make cluster-down first" >&2; exit 1; fi
	@if [[ -n "$(WITH_NODE)" ]]; then hack/node/up.sh --dir $(CLUSTER_DIR) | tail -n 1; \
	else hack/controlplane/up.sh --dir $(CLUSTER_DIR) | tail -n 1; fi

cluster-down:
	@if [[ -d $(CLUSTER_DIR)/node ]]; then hack/node/down.sh --dir $(CLUSTER_DIR); \
	else hack/controlplane/down.sh --dir $(CLUSTER_DIR); fi

# --- a real node: the image, the chart and the example workload as pods -----------------
WITH_NODE ?=
.PHONY: image node-e2e

# localhost/acs-identity-operator:dev, built offline FROM scratch after the Dockerfile's
# final stage; loaded into the node of `make cluster-up WITH_NODE=1` when one runs.
image:
	@hack/image/build.sh $(if $(wildcard $(CLUSTER_DIR)/node/containerd/containerd.sock),--import-into $(CLUSTER_DIR))

node-e2e:
	@hack/node/e2e.sh

demo: controlplane
	@$(if $(WITH_NODE),hack/node/demo.sh,hack/demo.sh)

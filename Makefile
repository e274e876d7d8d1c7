# acs-identity-operator: every entry point a person or CI needs.
#   make test          install what is missing, build, run every test
#   make demo          the end-to-end demo on a local control plane
#   make cluster-up    start a local control plane; last stdout line: export KUBECONFIG=...
#   make cluster-down  stop the control plane that cluster-up started
#   make reliability   the reliability suite at scale (RELIABILITY_N, default 200)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
MAKEFLAGS += --no-print-directory

CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/acs-identity-operator
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
CLUSTER_DIR := $(CURDIR)/.cluster
include hack/controlplane/versions.env

.PHONY: help deps controlplane build release test lint fmt crds check-crds chart-crds \
        compat hmac-vectors emulator bench-acs lint-dockerfile cluster-up cluster-down demo versions \
        reliability

help:
	@sed -n '2,6p' Makefile
	@echo "other targets: build release lint fmt crds check-crds chart-crds compat hmac-vectors emulator bench-acs lint-dockerfile versions"

deps:
	@hack/deps.sh

controlplane: deps
	@hack/controlplane/build.sh >/dev/null

versions:
	@echo "control plane: Kubernetes $(K8S_VERSION), etcd $(ETCD_VERSION), helm $(HELM_VERSION)"

build: deps
	cargo build --all-targets

# The release binary exactly as the Dockerfile builds it.
release: deps
	cargo build --release --locked --bin acs-identity-operator

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

lint-dockerfile:
	hack/lint-dockerfile.sh

cluster-up: controlplane
	@if [[ -s $(CLUSTER_DIR)/pids ]]; then echo "cluster-up: a control plane is already running from $(CLUSTER_DIR); run make cluster-down first" >&2; exit 1; fi
	@hack/controlplane/up.sh --dir $(CLUSTER_DIR) | tail -n 1

cluster-down:
	@hack/controlplane/down.sh --dir $(CLUSTER_DIR)

demo: controlplane
	@hack/demo.sh

# acs-identity-operator: every entry point a person or CI needs.
#   make test          install what is missing, build, run every test
#   make demo          the end-to-end demo on a local control plane
#   make cluster-up    start a local control plane; last stdout line: export KUBECONFIG=...
#   make cluster-down  stop the control plane that cluster-up started
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
MAKEFLAGS += --no-print-directory

CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/acs-identity-operator
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
CLUSTER_DIR := $(CURDIR)/.cluster
include hack/controlplane/versions.env

.PHONY: help deps controlplane build test unit-test lint fmt crds crds-check compat cluster-up cluster-down demo versions

help:
	@sed -n '2,6p' Makefile

deps:
	@hack/deps.sh

controlplane: deps
	@hack/controlplane/build.sh >/dev/null

versions:
	@echo "control plane: Kubernetes $(K8S_VERSION), etcd $(ETCD_VERSION), helm $(HELM_VERSION)"

build: deps
	cargo build --all-targets

fmt:
	cargo fmt

lint: deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

crds: build
	cargo run --quiet --bin crdgen

# Every test: formatting and lints, the Rust unit and integration tests (on a real
# control plane and the ACS emulator), and the official-SDK compatibility tests.
test:
	@hack/test.sh

compat: deps
	@hack/compat/install.sh
	@hack/compat/run.sh

cluster-up: controlplane
	@if [[ -s $(CLUSTER_DIR)/pids ]]; then echo "cluster-up: a control plane is already running from $(CLUSTER_DIR); run make cluster-down first" >&2; exit 1; fi
	@hack/controlplane/up.sh --dir $(CLUSTER_DIR) | tail -n 1

cluster-down:
	@hack/controlplane/down.sh --dir $(CLUSTER_DIR)

demo: controlplane
	@hack/demo.sh

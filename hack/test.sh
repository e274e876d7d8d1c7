#!/usr/bin/env bash
# `make test`: installs what is missing, builds, and runs every test: formatting and
# lints, the Argo CD health checks (Lua), Rust unit and integration tests on one shared
# local control plane, and the official-SDK compatibility tests against the ACS emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "==> $*" >&2; }

hack/deps.sh
say "building the control plane (cached after the first run)"
hack/controlplane/build.sh >/dev/null
. hack/controlplane/versions.env
say "control plane: Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION"
say "building promtool and prometheus for the alert and dashboard tests (cached after the first run)"
hack/prometheus/build.sh >/dev/null
. hack/prometheus/versions.env
say "prometheus $PROMETHEUS_VERSION (module $PROMETHEUS_MODULE_VERSION)"

say "cargo fmt --check, clippy, hadolint"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
hack/lint-dockerfile.sh

say "Argo CD health checks and actions on every state the operator writes (real Lua 5.1)"
gitops_log=$(mktemp "${TMPDIR:-/tmp}/acs-test-gitops.XXXXXX")
trap 'rm -f "$gitops_log"' EXIT
hack/gitops/test-health.sh 2>&1 | tee "$gitops_log"

say "generated CRDs match the Rust types (crds/ and the chart's copy)"
cargo run --quiet --bin crdgen -- --check
hack/sync-chart-crds.sh --check

say "building (and the release binary exactly as the Dockerfile builds it)"
cargo build --all-targets --quiet
cargo build --release --locked --quiet --bin acs-identity-operator --bin kubectl-acs
hack/image/build.sh --check

say "starting one control plane for all integration tests"
cpdir=$(mktemp -d "${TMPDIR:-/tmp}/acs-test-cp.XXXXXX")
trap 'hack/controlplane/down.sh --dir "$cpdir" --quiet; rm -f "$cpdir".*.log "$gitops_log"' EXIT
kubeconfig_line=$(hack/controlplane/up.sh --dir "$cpdir" --owner-pid $$ | tail -n 1)
export ACS_TEST_KUBECONFIG=${kubeconfig_line#export KUBECONFIG=}

say "Rust unit and integration tests"
cargo test --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$cpdir.cargo-test.log"

say "official Azure SDK compatibility tests (Python and JavaScript) against the emulator"
hack/compat/install.sh
hack/compat/run.sh 2>&1 | tee "$cpdir.compat.log"

say "node end-to-end: the image and the chart on a real node (make node-e2e)"
hack/node/e2e.sh 2>&1 | tee "$cpdir.node-e2e.log"

# One closing line for the whole run (each step above has already passed).
sum() { grep -oE "[0-9]+ $1" "$2" | awk '{n += $1} END {print n + 0}'; }
logs=("$gitops_log" "$cpdir.cargo-test.log" "$cpdir.compat.log" "$cpdir.node-e2e.log")
passed=0 failed=0
for log in "${logs[@]}"; do
  passed=$((passed + $(sum passed "$log"))) failed=$((failed + $(sum failed "$log")))
done
rm -f "${logs[@]}"
echo
echo "total: $passed passed, $failed failed"

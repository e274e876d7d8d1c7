#!/usr/bin/env bash
# `make demo`: one command on a fresh machine. Builds what is missing, starts a local
# control plane, shows it working, and stops everything, also on Ctrl-C or failure.
# Logs go to files it names; the terminal gets plain progress lines.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

hack/deps.sh 2>/dev/null || hack/deps.sh
step "Building the control plane from Go modules (cached after the first run)"
bin=$(hack/controlplane/build.sh 2>/dev/null) || bin=$(hack/controlplane/build.sh)
. hack/controlplane/versions.env

dir=$(mktemp -d "${TMPDIR:-/tmp}/acs-demo.XXXXXX")
cleanup() { step "Stopping everything"; hack/controlplane/down.sh --dir "$dir/cp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Starting etcd, kube-apiserver and kube-controller-manager $K8S_VERSION on loopback"
line=$(hack/controlplane/up.sh --dir "$dir/cp" --owner-pid $$ | tail -n 1)
export KUBECONFIG=${line#export KUBECONFIG=}
export PATH=$bin:$PATH
echo "KUBECONFIG=$KUBECONFIG (component logs in $dir/cp/*.log)"

step "kubectl get --raw /version"
kubectl get --raw /version
echo
step "kubectl get namespaces"
kubectl get namespaces

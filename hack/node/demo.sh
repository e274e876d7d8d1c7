#!/usr/bin/env bash
# `make demo WITH_NODE=1`: the demo's story with real pods. Builds the image, starts the
# control plane plus one node, the ACS emulator over TLS at the node's address (tokens
# live 1% of what is asked), installs the Helm chart with the local image, applies
# examples/ (the workload is examples/pod.yaml: our image running kubectl-acs on the
# mounted token), and shows the workload seeing renewals, a revoke, and the cleanup.
# Stops everything at the end, also on Ctrl-C or failure; logs stay in the named dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
. hack/node/node.env
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator/target}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '\n    FAILED: %s\n    logs: %s\n' "$*" "$dir" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/acs-demo-node.XXXXXX")
emulator_pid="" logs_pid=""
cleanup() {
  step "Stopping the workload log, the emulator, the node and the control plane"
  [[ -z $logs_pid ]] || kill "$logs_pid" 2>/dev/null || true
  [[ -z $emulator_pid ]] || kill "$emulator_pid" 2>/dev/null || true
  hack/node/down.sh --dir "$dir/cluster" --quiet || true
  info "done; logs kept in $dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Building the operator image offline (make image) and the emulator"
rc=0; hack/node/deps.sh 2>"$dir/deps.log" || rc=$?
((rc == 0)) || { cat "$dir/deps.log" >&2; exit 1; }
archive=$(hack/image/build.sh 2>"$dir/image.log" | tail -n 1) || { cat "$dir/image.log" >&2; fail "make image"; }
grep '^image: built' "$dir/image.log" | sed 's/^image: /    /'
info "OCI archive: $archive"
cargo build --quiet --bin acs-emulator 2>"$dir/build.log" || fail "cargo build; see $dir/build.log"

step "Starting the control plane and a node (containerd, kubelet, kube-scheduler, kube-proxy)"
line=$(hack/node/up.sh --dir "$dir/cluster" --owner-pid $$ 2>"$dir/node-up.log" | tail -n 1) ||
  { tail -n 1 "$dir/node-up.log" >&2; fail "starting the node"; }
export KUBECONFIG=${line#export KUBECONFIG=}
. "$dir/cluster/env"
export PATH=$ACS_CONTROLPLANE_BIN:$PATH
kubectl get nodes -o wide | sed 's/^/    /'

step "Starting the ACS emulator over TLS at the node's address $NODE_IP"
"$CARGO_TARGET_DIR/debug/acs-emulator" --listen "$NODE_IP:0" --tls --tls-ca-out "$dir/emulator-ca.pem" \
  --tls-san "$NODE_IP" --token-lifetime-scale 0.01 --admin-key "$(head -c 18 /dev/urandom | base64)" \
  >"$dir/emulator.out" 2>"$dir/emulator.log" &
emulator_pid=$!
for _ in $(seq 1 100); do [[ -s $dir/emulator.out ]] && break; sleep 0.1; done
conn=$(head -n 1 "$dir/emulator.out" | sed 's/^ACS_CONNECTION_STRING=//')
[[ $conn == endpoint=https://* ]] || fail "the emulator did not start; see $dir/emulator.log"
info "endpoint $(sed 's/^endpoint=\([^;]*\)\/;.*/\1/' <<<"$conn") (its CA goes to the chart's extraCA ConfigMap)"

step "helm install with the local image (pullPolicy Never), two replicas with leader election"
kubectl create namespace acs-system >/dev/null
kubectl -n acs-system create configmap acs-emulator-ca --from-file=ca.crt="$dir/emulator-ca.pem" >/dev/null
helm install acs charts/acs-identity-operator -n acs-system \
  --set image.repository=localhost/acs-identity-operator --set image.tag=dev --set image.pullPolicy=Never \
  --set extraCA.configMapName=acs-emulator-ca >"$dir/helm.log" 2>&1 || fail "helm install; see $dir/helm.log"
kubectl -n acs-system rollout status deployment/acs-acs-identity-operator --timeout=180s >/dev/null || fail "operator pods not Ready"
kubectl -n acs-system get pods -o wide | sed 's/^/    /'
info "leader: $(kubectl -n acs-system get lease acs-identity-operator -o jsonpath='{.spec.holderIdentity}')"

step "Applying examples/: credentials, a CommunicationService, an identity, the workload pod"
kubectl create namespace team-a >/dev/null
kubectl -n team-a create secret generic acs-connection --from-literal=connectionString="$conn" >/dev/null
kubectl -n team-a apply -f examples/communicationservice.yaml -f examples/communicationidentity.yaml | sed 's/^/    /'
kubectl -n team-a wait acsid/chat-bot --for=condition=Ready --timeout=120s >/dev/null || fail "identity not Ready"
sed -e 's#^\(    image:\).*#\1 localhost/acs-identity-operator:dev#' examples/pod.yaml | kubectl -n team-a apply -f - | sed 's/^/    /'
kubectl -n team-a wait pod/chat-bot --for=condition=Ready --timeout=120s >/dev/null || fail "workload pod not Ready"
kubectl -n team-a get acsid,pods | sed 's/^/    /'

step "The workload's log (kubectl-acs token --file /var/run/acs/token --watch): renewals arrive on their own"
kubectl -n team-a logs -f chat-bot >"$dir/workload.log" 2>&1 &
logs_pid=$!
timeout 90 tail -n +1 -f "$dir/workload.log" | head -n 3 | sed 's/^/    chat-bot: /' || true

step "Revoking: kubectl annotate acsid chat-bot acs-operator.dev/revoke-requested-at=..."
seen=$(wc -l <"$dir/workload.log")
kubectl -n team-a annotate acsid chat-bot acs-operator.dev/revoke-requested-at="$(date -u +%FT%TZ)" --overwrite >/dev/null
timeout 60 tail -n +$((seen + 1)) -f "$dir/workload.log" | head -n 1 | sed 's/^/    chat-bot: /' || true
info "lastRevokedAt=$(kubectl -n team-a get acsid chat-bot -o jsonpath='{.status.lastRevokedAt}')"

step "Deleting the workload and the identity: the ACS user is deleted, the Secret goes with it"
kubectl -n team-a delete pod chat-bot --timeout=60s | sed 's/^/    /'
kubectl -n team-a delete acsid chat-bot --timeout=60s | sed 's/^/    /'
helm uninstall acs -n acs-system | sed 's/^/    /'

step "Demo complete"

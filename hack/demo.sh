#!/usr/bin/env bash
# `make demo`: one command on a fresh machine. Builds what is missing, starts a local
# control plane, the ACS emulator (tokens live 1% of what is asked, so renewals come in
# seconds) and the operator, applies examples/, and shows the Secret becoming ready, a
# renewal on its own, a revoke, and the cleanup on delete. Then stops everything, also
# on Ctrl-C or failure. Logs go to the files it names.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '\n    FAILED: %s\n    logs: %s\n' "$*" "$dir" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/acs-demo.XXXXXX")
pids=()
cleanup() {
  step "Stopping the operator, the emulator and the control plane"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  hack/controlplane/down.sh --dir "$dir/cp" --quiet || true
  info "done; logs kept in $dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Checking prerequisites and building (the first run builds the control plane: several minutes)"
hack/deps.sh 2>"$dir/deps.log" || { cat "$dir/deps.log" >&2; exit 1; }
bin=$(hack/controlplane/build.sh 2>"$dir/build-controlplane.log") || fail "building the control plane; see $dir/build-controlplane.log"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator/target}
cargo build --quiet --bins 2>"$dir/build-operator.log" || fail "cargo build; see $dir/build-operator.log"
target=$CARGO_TARGET_DIR/debug
export PATH=$bin:$PATH
info "logs: $dir/{kube-apiserver,etcd,kube-controller-manager}.log, emulator.log, operator.log"

step "Starting etcd, kube-apiserver and kube-controller-manager on loopback"
line=$(hack/controlplane/up.sh --dir "$dir/cp" --owner-pid $$ 2>"$dir/controlplane.log" | tail -n 1) ||
  fail "starting the control plane; see $dir/controlplane.log"
export KUBECONFIG=${line#export KUBECONFIG=}
info "Kubernetes $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') is up; KUBECONFIG=$KUBECONFIG"

step "Installing the CRDs"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null
kubectl get crd -o custom-columns=CRD:.metadata.name --no-headers | sed 's/^/    /'

step "Starting the ACS emulator (token lifetimes scaled to 1%: a 1h token lives 36 s)"
"$target/acs-emulator" --listen 127.0.0.1:0 --token-lifetime-scale 0.01 >"$dir/emulator.out" 2>"$dir/emulator.log" &
pids+=($!)
for _ in $(seq 1 50); do [[ -s $dir/emulator.out ]] && break; sleep 0.1; done
conn=$(head -n 1 "$dir/emulator.out" | sed 's/^ACS_CONNECTION_STRING=//')
[[ $conn == endpoint=* ]] || fail "the emulator did not start; see $dir/emulator.log"
endpoint=$(echo "$conn" | sed 's/^endpoint=\([^;]*\)\/;.*/\1/')
info "ACS endpoint $endpoint (the access key goes into a Secret, never on screen)"

step "Starting the operator"
"$target/acs-identity-operator" run --metrics-addr 127.0.0.1:0 --log-format json --allow-insecure-endpoints >"$dir/operator.log" 2>&1 &
pids+=($!)
info "acs-identity-operator run (pid ${pids[-1]})"

step "Applying examples/: a credential Secret, a CommunicationService and a CommunicationIdentity"
kubectl create namespace acs-demo >/dev/null
kubectl -n acs-demo create secret generic acs-connection --from-literal=connectionString="$conn" >/dev/null
kubectl -n acs-demo apply -f examples/communicationservice.yaml -f examples/communicationidentity.yaml | sed 's/^/    /'

jp() { kubectl -n acs-demo get acsid chat-bot -o jsonpath="$1" 2>/dev/null; }
secret_field() { kubectl -n acs-demo get secret chat-bot-token -o jsonpath="{.data.$1}" 2>/dev/null | base64 -d; }
validate() { # prints valid/invalid (reason) for a token, asked of the emulator's admin API
  python3 - "$endpoint" "$1" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/admin/tokens:validate", data=json.dumps({"token": sys.argv[2]}).encode(),
                             headers={"content-type": "application/json"})
r = json.load(urllib.request.urlopen(req))
print("valid" if r["valid"] else "invalid (%s)" % r.get("reason", ""))
PY
}
wait_for() { # description, seconds, command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do ((SECONDS < deadline)) || fail "timed out after ${secs}s waiting for $what; see $dir/operator.log"; sleep 1; done
}

step "Waiting for the identity to become Ready"
kubectl -n acs-demo wait acsid/chat-bot --for=condition=Ready --timeout=60s >/dev/null || fail "identity not Ready"
kubectl -n acs-demo get acsid chat-bot | sed 's/^/    /'
first_token=$(secret_field token)
info "Secret chat-bot-token: userId=$(secret_field userId)"
info "                       expiresOn=$(secret_field expiresOn) endpoint=$(secret_field endpoint)"
info "                       token: ${#first_token} characters, emulator says: $(validate "$first_token")"
info "status.renewalTime=$(jp '{.status.renewalTime}') (two thirds into the 36 s token ACS granted)"

step "Waiting for a renewal on its own (nothing is touched)"
issued=$(jp '{.status.lastTokenIssuedAt}')
wait_for "a renewal" 90 bash -c "[[ \$(kubectl -n acs-demo get acsid chat-bot -o jsonpath='{.status.lastTokenIssuedAt}') != '$issued' ]]"
second_token=$(secret_field token)
info "renewed at $(jp '{.status.lastTokenIssuedAt}'); new expiresOn=$(secret_field expiresOn)"
info "new token: $(validate "$second_token"); previous token: $(validate "$first_token") (routine renewals never revoke)"

step "Revoking: kubectl annotate acsid chat-bot acs-operator.dev/revoke-requested-at=..."
kubectl -n acs-demo annotate acsid chat-bot acs-operator.dev/revoke-requested-at="$(date -u +%FT%TZ)" --overwrite >/dev/null
wait_for "the revoke" 60 bash -c "[[ -n \$(kubectl -n acs-demo get acsid chat-bot -o jsonpath='{.status.lastRevokedAt}') ]]"
third_token=$(secret_field token)
info "lastRevokedAt=$(jp '{.status.lastRevokedAt}')"
info "token before the revoke: $(validate "$second_token"); token now in the Secret: $(validate "$third_token")"

step "Deleting the identity: the ACS user is deleted, the Secret goes with its owner"
user=$(jp '{.status.userId}')
kubectl -n acs-demo delete acsid chat-bot --timeout=60s | sed 's/^/    /'
info "emulator: user $user deleted=$(curl -fsS "$endpoint/admin/identities" | python3 -c "import json,sys; print([u['deleted'] for u in json.load(sys.stdin) if u['id']=='$user'][0])")"
wait_for "the Secret to be garbage-collected" 90 bash -c "! kubectl -n acs-demo get secret chat-bot-token >/dev/null 2>&1"
info "Secret chat-bot-token garbage-collected; token now: $(validate "$third_token")"
kubectl -n acs-demo get events --sort-by=.metadata.creationTimestamp -o custom-columns=REASON:.reason,MESSAGE:.message --no-headers |
  grep -E 'UserCreated|TokenIssued|TokensRevoked|UserDeleted' | cut -c1-150 | sed 's/^/    event: /'

step "Demo complete"

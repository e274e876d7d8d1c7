#!/usr/bin/env bash
# `make node-e2e`: the operator as users run it, on a real node. Builds the image
# (`make image`), starts the control plane plus one node, runs the ACS emulator over TLS
# at the node's address, installs the Helm chart with the local image, and checks:
#   0. a node whose kubelet cannot start fails in one line and leaves nothing behind;
#   1. the operator pods become Ready through their probes (read-only root, non-root);
#   2. a CommunicationService over TLS (the chart's extraCA) at a host name the pods
#      resolve (a hostAlias: the image's resolver) and identities become Ready;
#   2b. keyless: a CommunicationService with entraId.serviceAccountRef (the tenant's
#      ServiceAccount, TokenRequest by the operator pod under the tenant's Role, exchanged
#      at the emulated Entra ID, which trusts this cluster's issuer) gets an identity Ready
#      with no access key in the namespace;
#   2c. ambient: `helm upgrade` with workloadIdentity.projectToken (the chart projects the
#      operator's own ServiceAccount token and sets AZURE_*, as the webhook this node lacks
#      would); a ClusterCommunicationService with `entraId: {}` gets an identity Ready
#      through the emulated Entra ID with the operator's federated credential, no key;
#   3. examples/pod.yaml (our image running kubectl-acs) logs a second, later expiry
#      after a renewal reaches its mounted Secret;
#   4. `helm upgrade` changing only the log level re-issues no token;
#   5. deleting the leader pod hands the Lease over and renewals go on;
#   6. `helm uninstall` behaves as the README says (CRDs and identities stay; the
#      finalizer holds a deletion until removed by hand).
# Prints the times: node Ready, operator pods Ready, identity Ready, token change seen by
# the workload. Skips (exit 0, one line) where a node cannot run (no root, no apt-get).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
. hack/node/node.env
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator/target}
t0=$SECONDS
say() { echo "node-e2e: $*" >&2; }
passed=0
ok() { passed=$((passed + 1)); say "ok $passed: $*"; }

rc=0; hack/node/deps.sh || rc=$?
if ((rc == 3)); then say "SKIPPED: this machine cannot run a node (see the line above)"; exit 0; fi
((rc == 0)) || { say "FAILED: installing the node's packages"; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/acs-node-e2e.XXXXXX")
emulator_pid="" logs_pid="" failed=1
cleanup() {
  [[ -z $logs_pid ]] || kill "$logs_pid" 2>/dev/null || true
  [[ -z $emulator_pid ]] || { kill "$emulator_pid" 2>/dev/null; wait "$emulator_pid" 2>/dev/null; } || true
  if ((failed)); then
    hack/node/down.sh --dir "$dir/cluster" --keep-logs --quiet || true
    say "FAILED; logs in $dir and $dir/cluster"
  else
    hack/node/down.sh --dir "$dir/cluster" --quiet || true
    rm -rf "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { say "FAILED: $*"; exit 1; }
# stream_until SECONDS PREDICATE CMD...: runs CMD (a watch or a log stream), prints the
# first line of its output that PREDICATE accepts and stops CMD at once; fails when CMD
# ends or the time runs out first. Waiting on streams, never on sleeps.
stream_until() {
  local secs=$1 pred=$2 fd pid line
  shift 2
  exec {fd}< <(exec timeout "$secs" "$@" 2>/dev/null)
  pid=$!
  while IFS= read -r -u "$fd" line; do
    if "$pred" "$line"; then
      kill "$pid" 2>/dev/null
      exec {fd}<&-
      echo "$line"
      return 0
    fi
  done
  exec {fd}<&-
  return 1
}
after="" # the threshold the predicates below compare with
later_time() { [[ -n $1 && $1 > $after ]]; }
later_expiry() { local e; e=$(grep -oE 'expiresOn=[^ ]+' <<<"$1" | cut -d= -f2); [[ -n $e && $e > $after ]]; }
other_holder() { [[ -n $1 && $1 != "$after" ]]; }

# --- image, node, emulator -----------------------------------------------------------
hack/image/build.sh >"$dir/image.out" || fail "make image (see the line above)"
cargo build --quiet --bin acs-emulator 2>"$dir/build.log" || fail "cargo build --bin acs-emulator; log: $dir/build.log"
# A kubelet that cannot start: one line naming it and its log; nothing left behind.
broken=$dir/broken
if NODE_KUBELET_EXTRA_ARGS=--no-such-flag hack/node/up.sh --dir "$broken" --lock-wait 1200 >/dev/null 2>"$dir/broken.err"; then
  fail "a node whose kubelet cannot start came up"
fi
[[ $(tail -n 1 "$dir/broken.err") == "node: ERROR: kubelet exited during start-up; log: $broken/kubelet.log" ]] ||
  fail "a failed kubelet start did not say so in one line: $(tail -n 1 "$dir/broken.err")"
grep -q -- '--no-such-flag' "$broken/kubelet.log" || fail "the kubelet log kept does not say why"
leftovers=$(pgrep -f -- "$broken/" || true)$(findmnt -rn -o TARGET | grep -F "$broken/" || true)$(ip -o link show "$NODE_BRIDGE" 2>/dev/null || true)
[[ -z $leftovers ]] || fail "a failed node start left processes, mounts or its bridge: $leftovers"
ok "a kubelet that cannot start: one line naming it and its log, nothing left running or mounted, no bridge"

t_up=$SECONDS
line=$(hack/node/up.sh --dir "$dir/cluster" --owner-pid $$ --lock-wait 1200 | tail -n 1) ||
  fail "starting the control plane and node (see the line above)"
export KUBECONFIG=${line#export KUBECONFIG=}
. "$dir/cluster/env"
export PATH=$ACS_CONTROLPLANE_BIN:$PATH
node_ready=$((SECONDS - t_up))
ok "node $NODE_NAME Ready at $NODE_IP, ${node_ready}s after the cluster started"

admin_key=$(head -c 18 /dev/urandom | base64)
# The operator reaches the emulator by name, resolved in its pods through /etc/hosts.
acs_host=acs-emulator.node.test
entra_tenant=node-e2e-tenant
"$CARGO_TARGET_DIR/debug/acs-emulator" --listen "$NODE_IP:0" --tls --tls-ca-out "$dir/emulator-ca.pem" \
  --tls-san "$NODE_IP" --tls-san "$acs_host" --token-lifetime-scale 0.01 --admin-key "$admin_key" \
  --entra-tenant "$entra_tenant" \
  >"$dir/emulator.out" 2>"$dir/emulator.log" &
emulator_pid=$!
until [[ -s $dir/emulator.out ]]; do
  kill -0 "$emulator_pid" 2>/dev/null || fail "the emulator exited; log: $dir/emulator.log"
  sleep 0.1
done
conn=$(head -n 1 "$dir/emulator.out" | sed 's/^ACS_CONNECTION_STRING=//')
endpoint=$(sed 's/^endpoint=\([^;]*\)\/;.*/\1/' <<<"$conn")
[[ $endpoint == "https://$NODE_IP:"* ]] || fail "unexpected emulator endpoint $endpoint"
conn=${conn/"https://$NODE_IP:"/"https://$acs_host:"}
emulator_identities() {
  curl -fsS --cacert "$dir/emulator-ca.pem" -H "x-admin-key: $admin_key" "$endpoint/admin/identities"
}
# tokensIssued and deleted of one ACS user, as the emulator counts them.
emulator_user() {
  emulator_identities | python3 -c 'import json,sys; u=[i for i in json.load(sys.stdin) if i["id"]==sys.argv[1]][0]; print(u["tokensIssued"], str(u["deleted"]).lower())' "$1"
}

# --- install the chart with the local image -------------------------------------------
release=acs
ns=acs-system
kubectl create namespace "$ns" >/dev/null
kubectl -n "$ns" create configmap acs-emulator-ca --from-file=ca.crt="$dir/emulator-ca.pem" >/dev/null
# No cluster DNS here: the operator's pods resolve the ACS host name through a hostAlias
# (glibc's files source; the image's nsswitch.conf asks DNS for the rest), added to the
# chart's Deployment by a helm post-renderer.
cat >"$dir/host-alias.sh" <<SH
#!/bin/sh
exec sed 's/^\(      \)serviceAccountName: .*/&\n\1hostAliases: [{ip: "$NODE_IP", hostnames: ["$acs_host"]}]/'
SH
chmod +x "$dir/host-alias.sh"
t_install=$SECONDS
helm install "$release" charts/acs-identity-operator -n "$ns" \
  --set image.repository=localhost/acs-identity-operator --set image.tag=dev --set image.pullPolicy=Never \
  --set extraCA.configMapName=acs-emulator-ca --set logging.level=info --post-renderer "$dir/host-alias.sh" >"$dir/helm-install.log" 2>&1 ||
  fail "helm install; log: $dir/helm-install.log"
deploy=deployment/$release-acs-identity-operator
# The chart's CRDs are new: their versions are served a moment after they are created.
kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null || fail "the chart's CRDs were not Established"
for kind in communicationidentities.v1beta1.acs-operator.dev communicationservices.v1beta1.acs-operator.dev; do
  for ((i = 0; i < 60; i++)); do kubectl get "$kind" -A >/dev/null 2>&1 && break; sleep 0.5; done
  kubectl get "$kind" -A >/dev/null 2>&1 || fail "$kind not served after its CRD was Established"
done
kubectl -n "$ns" rollout status "$deploy" --timeout=180s >/dev/null ||
  fail "operator pods not Ready; see: kubectl -n $ns describe pods; kubelet log $dir/cluster/kubelet.log"
operator_ready=$((SECONDS - t_install))
selector=app.kubernetes.io/instance=$release,app.kubernetes.io/component=controller
ready_pods=$(kubectl -n "$ns" get "$deploy" -o jsonpath='{.status.readyReplicas}')
[[ $ready_pods == 2 ]] || fail "expected two Ready operator pods, got: $ready_pods"
ok "two operator pods Ready through /readyz ${operator_ready}s after helm install (read-only root, uid 65532)"

# --- a service over TLS and identities ------------------------------------------------
kubectl create namespace team-a >/dev/null
kubectl -n team-a create secret generic acs-connection --from-literal=connectionString="$conn" >/dev/null
t_identity=$SECONDS
# The API server can still answer 503 "Resource kind ... not found" for a new CRD version
# for a moment after it served a GET of it (its handler reloads when the CRD's status
# changes): such an answer, and only it, is retried.
for ((i = 0; ; i++)); do
  if out=$(kubectl -n team-a apply -f examples/communicationservice.yaml -f examples/communicationidentity.yaml 2>&1); then break; fi
  [[ $out == *ServiceUnavailable* && $i -lt 30 ]] || fail "applying the examples: $out"
  sleep 1
done
# A second identity with a day-long token (14 min at the emulator's scale): it must not
# be renewed during the test, which makes re-issued tokens visible.
kubectl -n team-a apply -f - >/dev/null <<YAML
apiVersion: acs-operator.dev/v1alpha1
kind: CommunicationIdentity
metadata: {name: steady}
spec:
  serviceRef: {kind: CommunicationService, name: acs}
  scopes: [chat]
  tokenLifetime: 24h
YAML
kubectl -n team-a wait communicationservice/acs --for=condition=Ready --timeout=60s >/dev/null ||
  fail "CommunicationService not Ready: $(kubectl -n team-a get communicationservice acs -o jsonpath='{.status.conditions}')"
kubectl -n team-a wait acsid/chat-bot acsid/steady --for=condition=Ready --timeout=120s >/dev/null ||
  fail "identities not Ready: $(kubectl -n team-a get acsid -o wide 2>&1)"
identity_ready=$((SECONDS - t_identity))
ok "CommunicationService over TLS (extraCA) at https://$acs_host and identities Ready ${identity_ready}s after they were applied"

# --- keyless: Entra ID workload identity for a tenant's ServiceAccount -----------------
admin_post() {
  curl -fsS --cacert "$dir/emulator-ca.pem" -H "x-admin-key: $admin_key" -H 'content-type: application/json' \
    -X POST "$endpoint$1" --data-binary @- >/dev/null
}
# The emulated Entra ID trusts this cluster's ServiceAccount issuer (as a federated
# credential on a managed identity does), for one subject, with a role on the resource.
issuer=$(kubectl get --raw /.well-known/openid-configuration | python3 -c 'import json,sys; print(json.load(sys.stdin)["issuer"])')
printf '{"issuer": "%s", "jwks": %s}' "$issuer" "$(kubectl get --raw /openid/v1/jwks)" | admin_post /admin/entra/issuers ||
  fail "registering the cluster's issuer with the emulated Entra ID"
entra_client=00000000-0000-0000-0000-00000000e2e0
admin_post /admin/entra/applications <<JSON || fail "registering the application with the emulated Entra ID"
{"clientId": "$entra_client", "federatedCredentials": [{"name": "team-b", "issuer": "$issuer",
 "subject": "system:serviceaccount:team-b:acs-client", "audiences": ["api://AzureADTokenExchange"]}]}
JSON
printf '{"principalId": "%s", "role": "Contributor"}' "$entra_client" | admin_post /admin/entra/roleAssignments ||
  fail "assigning the role in the emulated Entra ID"
operator_sa=$(kubectl -n "$ns" get "$deploy" -o jsonpath='{.spec.template.spec.serviceAccountName}')
acs_url=${conn#endpoint=}
acs_url=${acs_url%%/;*}
kubectl create namespace team-b >/dev/null
t_entra=$SECONDS
# docs/entra-id.md's manifests for a team, with this cluster's names.
kubectl apply -f - >/dev/null <<YAML || fail "applying the keyless manifests"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: acs-client
  namespace: team-b
  annotations:
    azure.workload.identity/client-id: $entra_client
    azure.workload.identity/tenant-id: $entra_tenant
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: acs-identity-operator-token-request, namespace: team-b}
rules:
  - {apiGroups: [""], resources: [serviceaccounts/token], resourceNames: [acs-client], verbs: [create]}
  - {apiGroups: [""], resources: [serviceaccounts], resourceNames: [acs-client], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: acs-identity-operator-token-request, namespace: team-b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: acs-identity-operator-token-request}
subjects: [{kind: ServiceAccount, name: $operator_sa, namespace: $ns}]
---
apiVersion: acs-operator.dev/v1alpha1
kind: CommunicationService
metadata: {name: acs, namespace: team-b}
spec:
  endpoint: $acs_url
  entraId:
    serviceAccountRef: {name: acs-client}
    authorityHost: $acs_url
---
apiVersion: acs-operator.dev/v1alpha1
kind: CommunicationIdentity
metadata: {name: keyless, namespace: team-b}
spec:
  serviceRef: {kind: CommunicationService, name: acs}
  scopes: [chat]
  tokenLifetime: 24h
YAML
kubectl -n team-b wait communicationservice/acs --for=condition=Ready --timeout=60s >/dev/null ||
  fail "keyless CommunicationService not Ready: $(kubectl -n team-b get communicationservice acs -o jsonpath='{.status.conditions}')"
kubectl -n team-b wait acsid/keyless --for=condition=Ready --timeout=120s >/dev/null ||
  fail "keyless identity not Ready: $(kubectl -n team-b get acsid keyless -o jsonpath='{.status.conditions}')"
entra_ready=$((SECONDS - t_entra))
method=$(kubectl -n team-b get communicationservice acs -o jsonpath='{.status.authentication.method}')
[[ $method == WorkloadIdentity ]] || fail "keyless service authenticates with '$method', not WorkloadIdentity"
keyless_user=$(kubectl -n team-b get acsid keyless -o jsonpath='{.status.userId}')
read -r keyless_tokens _ < <(emulator_user "$keyless_user")
((keyless_tokens >= 1)) || fail "the emulator issued no token for the keyless identity's user $keyless_user"
entra_tokens=$(curl -fsS --cacert "$dir/emulator-ca.pem" -H "x-admin-key: $admin_key" "$endpoint/admin/entra" |
  python3 -c 'import json,sys; c=json.load(sys.stdin)["counts"]; print(c.get("tokensIssued", c))')
secrets=$(kubectl -n team-b get secrets -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}')
[[ $secrets == "keyless " ]] || fail "team-b holds Secrets other than the token Secret: $secrets"
ok "keyless: CommunicationService with entraId.serviceAccountRef (TokenRequest under the tenant's Role, emulated Entra ID over TLS) and identity Ready ${entra_ready}s after they were applied; Entra tokens issued: $entra_tokens; the namespace holds no key"

# --- ambient: the operator's own projected token, no webhook ----------------------------
# The operator's identity: an application whose federated credential names the operator's
# ServiceAccount (docs/entra-id.md's "ambient mode" subject), with a role on the resource.
ambient_client=00000000-0000-0000-0000-00000000e2e1
admin_post /admin/entra/applications <<JSON || fail "registering the operator's application with the emulated Entra ID"
{"clientId": "$ambient_client", "federatedCredentials": [{"name": "operator", "issuer": "$issuer",
 "subject": "system:serviceaccount:$ns:$operator_sa", "audiences": ["api://AzureADTokenExchange"]}]}
JSON
printf '{"principalId": "%s", "role": "Contributor"}' "$ambient_client" | admin_post /admin/entra/roleAssignments ||
  fail "assigning the operator's role in the emulated Entra ID"
t_ambient=$SECONDS
# No Azure Workload Identity webhook on this node: the chart projects the token itself.
helm upgrade "$release" charts/acs-identity-operator -n "$ns" --reuse-values \
  --set workloadIdentity.enabled=true --set workloadIdentity.projectToken=true \
  --set workloadIdentity.clientId="$ambient_client" --set workloadIdentity.tenantId="$entra_tenant" \
  --set workloadIdentity.authorityHost="$acs_url" --post-renderer "$dir/host-alias.sh" \
  >"$dir/helm-ambient.log" 2>&1 || fail "helm upgrade with workloadIdentity.projectToken; log: $dir/helm-ambient.log"
kubectl -n "$ns" rollout status "$deploy" --timeout=180s >/dev/null ||
  fail "operator pods with the projected token not Ready; see: kubectl -n $ns describe pods"
kubectl create namespace team-c >/dev/null
kubectl apply -f - >/dev/null <<YAML || fail "applying the ambient manifests"
apiVersion: acs-operator.dev/v1alpha1
kind: ClusterCommunicationService
metadata: {name: ambient}
spec:
  endpoint: $acs_url
  entraId: {}
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: team-c}}
---
apiVersion: acs-operator.dev/v1alpha1
kind: CommunicationIdentity
metadata: {name: ambient, namespace: team-c}
spec:
  serviceRef: {kind: ClusterCommunicationService, name: ambient}
  scopes: [voip]
  tokenLifetime: 24h
YAML
kubectl wait clustercommunicationservice/ambient --for=condition=Ready --timeout=60s >/dev/null ||
  fail "ambient ClusterCommunicationService not Ready: $(kubectl get clustercommunicationservice ambient -o jsonpath='{.status.conditions}')"
kubectl -n team-c wait acsid/ambient --for=condition=Ready --timeout=120s >/dev/null ||
  fail "ambient identity not Ready: $(kubectl -n team-c get acsid ambient -o jsonpath='{.status.conditions}')"
ambient_ready=$((SECONDS - t_ambient))
auth=$(kubectl get clustercommunicationservice ambient -o jsonpath='{.status.authentication.method} {.status.authentication.clientId} {.status.authentication.tokenExpiresOn}')
read -r method auth_client auth_expiry <<<"$auth"
[[ $method == Ambient && $auth_client == "$ambient_client" && -n $auth_expiry ]] ||
  fail "ambient service status.authentication is '$auth', not Ambient with client $ambient_client and an expiry"
ambient_user=$(kubectl -n team-c get acsid ambient -o jsonpath='{.status.userId}')
read -r ambient_tokens _ < <(emulator_user "$ambient_user")
((ambient_tokens >= 1)) || fail "the emulator issued no token for the ambient identity's user $ambient_user"
# Entra tokens for the operator's own client: only its projected token carries that subject.
ambient_entra=$(curl -fsS --cacert "$dir/emulator-ca.pem" -H "x-admin-key: $admin_key" "$endpoint/admin/entra" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"]["byClient"].get(sys.argv[1], 0))' "$ambient_client")
((ambient_entra >= 1)) || fail "the emulated Entra ID issued no token to the operator's client $ambient_client"
[[ -z $(kubectl get clustercommunicationservice ambient -o jsonpath='{.spec.connectionStringSecretRef}') ]] ||
  fail "the ambient service names a connection string Secret"
secrets=$(kubectl -n team-c get secrets -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}')
[[ $secrets == "ambient " ]] || fail "team-c holds Secrets other than the token Secret: $secrets"
ns_secrets=$(kubectl -n "$ns" get secrets -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | grep -v '^sh\.helm\.release\.' || true)
[[ -z $ns_secrets ]] || fail "the operator's namespace holds Secrets besides helm's release records: $ns_secrets"
ok "ambient: helm upgrade with workloadIdentity.projectToken (no webhook), ClusterCommunicationService with entraId {} (method Ambient, Entra token until $auth_expiry) and identity Ready ${ambient_ready}s after the upgrade began; Entra tokens to the operator's client: $ambient_entra; no access key Secret"
# No token (Entra and ACS tokens are JWTs: "eyJ..."), client assertion or access key in the
# log of either operator pod, at info level, after both keyless modes ran.
oplog=$(kubectl -n "$ns" logs -l "$selector" --all-containers --tail=-1 2>&1) || fail "reading the operator pods' logs"
key=${conn##*accesskey=}
for pattern in eyJ client_assertion= "${key%%;*}"; do
  [[ -n $pattern ]] || continue
  if grep -qF -- "$pattern" <<<"$oplog"; then fail "secret material (${pattern:0:6}...) in the operator's log"; fi
done
ok "no token, client assertion or access key in the operator pods' logs ($(wc -l <<<"$oplog") lines)"

# --- the example workload sees a renewal ----------------------------------------------
jp() { kubectl -n team-a get "$1" -o jsonpath="$2"; }
sed -e 's#^\(    image:\).*#\1 localhost/acs-identity-operator:dev#' examples/pod.yaml | kubectl -n team-a apply -f - >/dev/null
kubectl -n team-a wait pod/chat-bot --for=condition=Ready --timeout=120s >/dev/null ||
  fail "pod chat-bot not Ready: $(jp pod/chat-bot '{.status}')"
kubectl -n team-a logs -f --timestamps chat-bot >"$dir/workload.log" 2>&1 &
logs_pid=$!
# Each log line: TIMESTAMP user=... scopes=... issuedAt=... expiresOn=...
workload_log=(tail -n +1 -f "$dir/workload.log")
after="" first=$(stream_until 120 later_expiry "${workload_log[@]}") ||
  fail "the workload logged no token; log: $dir/workload.log"
first_expiry=$(grep -oE 'expiresOn=[^ ]+' <<<"$first" | cut -d= -f2)
after=$first_expiry second=$(stream_until 120 later_expiry "${workload_log[@]}") ||
  fail "the workload saw no renewal after $first_expiry; log: $dir/workload.log"
seen_at=${second%% *}
second_expiry=$(grep -oE 'expiresOn=[^ ]+' <<<"$second" | cut -d= -f2)
secret_expiry=$(jp secret/chat-bot-token '{.data.expiresOn}' | base64 -d)
issued_at=$(jp acsid/chat-bot '{.status.lastTokenIssuedAt}')
lag="n/a"
if [[ $secret_expiry == "$second_expiry" ]]; then
  lag=$(python3 - "$seen_at" "$issued_at" <<'PY'
import re, sys
from datetime import datetime
def parse(s):  # RFC 3339 with up to nanoseconds -> datetime (microseconds)
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", s)
    return datetime.fromisoformat(m.group(1) + "." + (m.group(2) or "0").ljust(6, "0")[:6] + "+00:00")
print("%.1f" % (parse(sys.argv[1]) - parse(sys.argv[2])).total_seconds())
PY
  )
fi
ok "the workload (kubectl-acs in our image) saw expiresOn $first_expiry, then $second_expiry; token change seen ${lag}s after it was issued"

# --- helm upgrade of the log level only: no token re-issued -----------------------------
steady_user=$(jp acsid/steady '{.status.userId}')
read -r steady_tokens _ < <(emulator_user "$steady_user")
steady_issued=$(jp acsid/steady '{.status.lastTokenIssuedAt}')
helm upgrade "$release" charts/acs-identity-operator -n "$ns" --reuse-values --set logging.level=debug \
  --post-renderer "$dir/host-alias.sh" \
  >"$dir/helm-upgrade.log" 2>&1 || fail "helm upgrade; log: $dir/helm-upgrade.log"
kubectl -n "$ns" rollout status "$deploy" --timeout=180s >/dev/null || fail "upgraded operator pods not Ready"
grep -q -- '--log-level=debug' <<<"$(kubectl -n "$ns" get "$deploy" -o jsonpath='{.spec.template.spec.containers[0].args}')" ||
  fail "the upgrade did not change the log level"
# The new leader is at work once chat-bot renews again; steady must be left alone.
before=$(jp acsid/chat-bot '{.status.lastTokenIssuedAt}')
wait_renewal_after() { # identity, timestamp: waits (watch) until lastTokenIssuedAt moves past it
  after=$2 stream_until 120 later_time kubectl -n team-a get "acsid/$1" -w -o jsonpath='{.status.lastTokenIssuedAt}{"\n"}'
}
[[ -n $(wait_renewal_after chat-bot "$before") ]] || fail "no renewal after helm upgrade; see: kubectl -n $ns logs $deploy"
read -r steady_tokens_after _ < <(emulator_user "$steady_user")
[[ $steady_tokens_after == "$steady_tokens" && $(jp acsid/steady '{.status.lastTokenIssuedAt}') == "$steady_issued" ]] ||
  fail "helm upgrade re-issued a token for steady ($steady_tokens -> $steady_tokens_after tokens)"
ok "helm upgrade (log level only) rolled the pods and re-issued no token ($steady_tokens token for steady)"

# --- leader handover --------------------------------------------------------------------
lease=$(kubectl -n "$ns" get lease acs-identity-operator -o jsonpath='{.spec.holderIdentity}')
leader_pod=${lease%-*}
[[ -n $leader_pod ]] && kubectl -n "$ns" get pod "$leader_pod" >/dev/null 2>&1 || fail "no leader pod for Lease holder '$lease'"
t_delete=$SECONDS
kubectl -n "$ns" delete pod "$leader_pod" --wait=false >/dev/null
new_holder=$(after=$lease stream_until 90 other_holder \
  kubectl -n "$ns" get lease acs-identity-operator -w -o jsonpath='{.spec.holderIdentity}{"\n"}') || true
[[ -n $new_holder ]] || fail "the Lease was not handed over after deleting leader $leader_pod"
handover=$((SECONDS - t_delete))
after=$(date -u +%FT%TZ)
[[ -n $(wait_renewal_after chat-bot "$after") ]] || fail "no renewal by the new leader ${new_holder%-*}"
ok "deleting leader $leader_pod handed the Lease to ${new_holder%-*} in ${handover}s; renewals go on"

# --- uninstall as the README says -------------------------------------------------------
chat_user=$(jp acsid/chat-bot '{.status.userId}')
kubectl -n team-a delete acsid steady --timeout=60s >/dev/null || fail "deleting identity steady with the operator running"
read -r _ steady_deleted < <(emulator_user "$steady_user")
[[ $steady_deleted == true ]] || fail "the ACS user of a deleted identity was not deleted"
kubectl -n team-a delete pod chat-bot --timeout=60s >/dev/null
helm uninstall "$release" -n "$ns" >"$dir/helm-uninstall.log" 2>&1 || fail "helm uninstall; log: $dir/helm-uninstall.log"
kubectl -n "$ns" wait pod -l "$selector" --for=delete --timeout=90s >/dev/null || fail "operator pods still there after uninstall"
kubectl get crd communicationidentities.acs-operator.dev >/dev/null || fail "helm uninstall removed the CRDs (crds.keep)"
kubectl -n team-a delete acsid chat-bot --wait=false >/dev/null
[[ -n $(jp acsid/chat-bot '{.metadata.deletionTimestamp}') ]] || fail "chat-bot was not marked for deletion"
kubectl -n team-a patch acsid chat-bot --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null
kubectl -n team-a wait acsid/chat-bot --for=delete --timeout=30s >/dev/null || fail "chat-bot stayed after removing its finalizer"
read -r _ chat_deleted < <(emulator_user "$chat_user")
[[ $chat_deleted == false ]] || fail "the abandoned ACS user was deleted without an operator"
ok "helm uninstall: CRDs kept; an identity deleted without the operator waits on its finalizer until it is removed by hand (ACS user left)"

failed=0
say "times: node Ready ${node_ready}s, operator pods Ready ${operator_ready}s, identity Ready ${identity_ready}s, token change seen by the workload ${lag}s; total $((SECONDS - t0))s"
echo "node-e2e: $passed passed, 0 failed"

#!/usr/bin/env bash
# Starts a local Kubernetes control plane on loopback: etcd, kube-apiserver (secure
# port, RBAC, service-account issuer) and kube-controller-manager (garbage collector,
# namespace and service-account controllers). Ports are picked at start so several can
# run side by side.
#
# Usage: up.sh [--dir DIR] [--owner-pid PID]
#   --dir DIR        state directory (created; default: a new temp dir)
#   --owner-pid PID  stop everything when process PID exits (used by the Rust test
#                    harness so that a panicking or killed test binary leaves nothing)
# Environment: ETCD_PORT, APISERVER_PORT pin ports; KUBE_APISERVER_EXTRA_ARGS adds flags;
# APISERVER_ADVERTISE_ADDRESS (a node's IP, set by hack/node/up.sh) makes the apiserver
# listen on all addresses and publish itself there as the `kubernetes` Service's endpoint.
# Progress goes to stderr; the last line of stdout is `export KUBECONFIG=/abs/path`.
# On any failure: one line naming the failed component and its log, and nothing is
# left running.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"

dir="" owner=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --owner-pid) owner=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "controlplane: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "controlplane: $*" >&2; }

bin=$("$here/build.sh") || { say "ERROR: building the control-plane binaries failed (see above)"; exit 1; }

if [[ -z $dir ]]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/acs-controlplane.XXXXXX")
else
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
fi
[[ ! -s $dir/pids ]] || { say "ERROR: $dir already holds a running control plane (pids file present); stop it with down.sh --dir $dir"; exit 1; }
: >"$dir/pids"

fail() {
  # Stop everything; keep only the logs the message points to.
  "$here/down.sh" --dir "$dir" --keep-logs --quiet || true
  say "ERROR: $*"
  exit 1
}
trap 'fail "interrupted during start-up"' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Loopback by default. With a node, pods reach the apiserver through the `kubernetes`
# Service, whose endpoint must be an address they can route to.
advertise=${APISERVER_ADVERTISE_ADDRESS:-127.0.0.1}
api_bind=127.0.0.1 reconciler=none
if [[ $advertise != 127.0.0.1 ]]; then api_bind=0.0.0.0 reconciler=lease; fi

etcd_port=${ETCD_PORT:-$(free_port)}
peer_port=$(free_port)
api_port=${APISERVER_PORT:-$(free_port)}
for p in "$etcd_port" "$peer_port" "$api_port"; do
  port_in_use "$p" && fail "port 127.0.0.1:$p is already in use"
done

# --- PKI: a CA, the apiserver's serving cert, an admin client cert, SA signing keys ---
pki=$dir/pki
mkdir -p "$pki"
gen_pki() {
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=acs-local-ca" \
    -keyout ca.key -out ca.crt
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' "$advertise" >apiserver.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile apiserver.ext -out apiserver.crt
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" -keyout admin.key -out admin.csr
  printf 'extendedKeyUsage=clientAuth\n' >admin.ext
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile admin.ext -out admin.crt
  openssl genrsa -out sa.key 2048
  openssl rsa -in sa.key -pubout -out sa.pub
}
[[ -f $pki/sa.pub ]] || (gen_pki) >"$dir/pki.log" 2>&1 || fail "generating certificates with openssl failed; log: $dir/pki.log"

kubeconfig=$dir/admin.kubeconfig
cat >"$kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
KC

pids_file=$dir/pids log_dir=$dir
# shellcheck source=procs.sh
. "$here/procs.sh"

t0=$SECONDS
start etcd "$bin/etcd" --name local --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "local=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

# shellcheck disable=SC2086 # extra args are words on purpose
start kube-apiserver "$bin/kube-apiserver" ${KUBE_APISERVER_EXTRA_ARGS:-} \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --secure-port "$api_port" --bind-address "$api_bind" --advertise-address "$advertise" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --cert-dir "$dir/apiserver-certs" \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 --authorization-mode Node,RBAC \
  --endpoint-reconciler-type "$reconciler" --allow-privileged=true
wait_for kube-apiserver 90 curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
  "https://127.0.0.1:$api_port/readyz"

start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$kubeconfig" --controllers '*' \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0
# The service-account controller creating `default` proves the controller-manager runs.
wait_for kube-controller-manager 60 "$bin/kubectl" --kubeconfig "$kubeconfig" get serviceaccount default -n default

trap - INT TERM
cat >"$dir/env" <<ENV
KUBECONFIG=$kubeconfig
ACS_CONTROLPLANE_DIR=$dir
ACS_CONTROLPLANE_BIN=$bin
K8S_VERSION=$K8S_VERSION
ENV
if [[ -n $owner ]]; then
  # Watchdog: when the owner exits (normally, by panic or by a signal), stop everything.
  nohup bash -c 'trap "" INT TERM; while kill -0 "$0" 2>/dev/null; do sleep 1; done; exec "$1" --dir "$2" --quiet' \
    "$owner" "$here/down.sh" "$dir" >/dev/null 2>&1 &
  echo "$! watchdog" >>"$dir/pids"
fi
say "Kubernetes $K8S_VERSION ready in $((SECONDS - t0))s at https://127.0.0.1:$api_port (state: $dir)"
echo "export KUBECONFIG=$kubeconfig"

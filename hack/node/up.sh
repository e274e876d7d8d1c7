#!/usr/bin/env bash
# Starts the local control plane plus one node on this machine: containerd (Debian's),
# a kubelet, kube-scheduler and kube-proxy built from the same wrapper module as the
# control plane, and a CNI bridge configured in a private directory. The node's IP is
# the bridge's gateway address (never loopback): pods reach the host, and through
# kube-proxy's rules the apiserver behind the `kubernetes` Service, at that address.
#
# Usage: up.sh --dir DIR [--owner-pid PID] [--lock-wait SECONDS]
#   --dir DIR            state directory (control plane and node; created)
#   --owner-pid PID      stop everything when process PID exits
#   --lock-wait SECONDS  one node per machine (it programs the host's iptables and
#                        cgroups): wait this long for another one to stop (default 0)
# Progress goes to stderr; the last stdout line is `export KUBECONFIG=/abs/path`.
# Environment: NODE_KUBELET_EXTRA_ARGS adds kubelet flags.
# Exit 3 (one line saying why) when this machine cannot run a node (not root, no apt).
# On any other failure: one line naming what failed and its log; nothing is left
# running or mounted, and the network devices are removed (hack/node/down.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cp_scripts=$here/../controlplane
. "$cp_scripts/versions.env"
. "$here/node.env"

dir="" owner="" lock_wait=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --owner-pid) owner=$2; shift 2 ;;
    --lock-wait) lock_wait=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "node: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n $dir ]] || { echo "node: up.sh needs --dir DIR" >&2; exit 2; }
say() { echo "node: $*" >&2; }

rc=0; "$here/deps.sh" || rc=$?
((rc == 0)) || exit "$rc"
bin=$("$cp_scripts/build.sh" --node) || { say "ERROR: building the node binaries failed (see above)"; exit 1; }
cache=${ACS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator}

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
node=$dir/node
[[ ! -s $node/pids ]] || { say "ERROR: $dir already holds a running node; stop it with hack/node/down.sh --dir $dir"; exit 1; }
mkdir -p "$node"
: >"$node/pids"

fail() {
  "$here/down.sh" --dir "$dir" --keep-logs --quiet || true
  say "ERROR: $*"
  exit 1
}
trap 'fail "interrupted during start-up"' INT TERM

# Logs next to the control plane's, so that a failed start keeps them (down.sh --keep-logs).
pids_file=$node/pids log_dir=$dir
# shellcheck source=../controlplane/procs.sh
. "$cp_scripts/procs.sh"

# --- one node per machine: a lock held by a process of ours for the node's lifetime ---
lock=${TMPDIR:-/tmp}/acs-identity-operator-node.lock
# shellcheck disable=SC2016 # expanded by the inner shell
start node-lock bash -c 'exec 8>>"$0"; flock -w "$1" 8 || exit 1; echo "$2" >"$3"; exec sleep infinity' \
  "$lock" "$lock_wait" "$dir" "$node/lock-held"
until [[ -s $node/lock-held ]]; do
  alive node-lock || fail "another node runs on this machine (started with --dir $(cat "$lock.owner" 2>/dev/null || echo '?')); stop it first (hack/node/down.sh --dir DIR, or make cluster-down)"
  sleep 0.2
done
echo "$dir" >"$lock.owner"

# Leftovers of a node that was killed without down.sh (we hold the lock: they are stale).
"$here/cleanup-host.sh" >>"$dir/node-cleanup.log" 2>&1 || true

# --- network: the bridge carries the node IP; CNI config in a private directory -------
ip link add "$NODE_BRIDGE" type bridge >"$dir/network.log" 2>&1 ||
  fail "creating bridge $NODE_BRIDGE failed; log: $dir/network.log"
ip addr add "$NODE_IP/$NODE_PREFIX" dev "$NODE_BRIDGE" >>"$dir/network.log" 2>&1 &&
  ip link set "$NODE_BRIDGE" up >>"$dir/network.log" 2>&1 || fail "configuring $NODE_BRIDGE failed; log: $dir/network.log"
mkdir -p "$node/cni/net.d" "$node/cni/ipam"
cat >"$node/cni/net.d/10-acs-node.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "acs-node",
  "plugins": [
    {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$node/cni/ipam", "ranges": [[{"subnet": "$NODE_SUBNET", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
JSON

# --- the control plane, reachable at the node IP ----------------------------------------
# kubectl logs/exec go from the apiserver to the kubelet: by the node's IP (no DNS for
# node names here), as a client the kubelet's x509 authentication accepts.
export KUBE_APISERVER_EXTRA_ARGS="${KUBE_APISERVER_EXTRA_ARGS:-} --kubelet-preferred-address-types=InternalIP
  --kubelet-client-certificate=$dir/pki/admin.crt --kubelet-client-key=$dir/pki/admin.key"
line=$(APISERVER_ADVERTISE_ADDRESS=$NODE_IP "$cp_scripts/up.sh" --dir "$dir" | tail -n 1) ||
  fail "the control plane did not start (see the line above)"
kubeconfig=${line#export KUBECONFIG=}
pki=$dir/pki
api_server=$(awk '/server:/{print $2; exit}' "$kubeconfig")

# The kubelet's identity: system:node:NAME in system:nodes, as the Node authorizer wants.
(
  cd "$pki"
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$NODE_NAME" \
    -keyout kubelet-client.key -out kubelet-client.csr
  printf 'extendedKeyUsage=clientAuth\n' >kubelet-client.ext
  openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile kubelet-client.ext -out kubelet-client.crt
) >"$dir/node-pki.log" 2>&1 || fail "generating the kubelet's certificate failed; log: $dir/node-pki.log"
cat >"$node/kubelet.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$api_server", certificate-authority: "$pki/ca.crt"}
users:
- name: kubelet
  user: {client-certificate: "$pki/kubelet-client.crt", client-key: "$pki/kubelet-client.key"}
contexts:
- name: local
  context: {cluster: local, user: kubelet}
current-context: local
KC

# --- containerd ------------------------------------------------------------------------
ctrd=$node/containerd
sock=$ctrd/containerd.sock
mkdir -p "$ctrd"
cat >"$ctrd/config.toml" <<TOML
version = 2
root = "$ctrd/root"
state = "$ctrd/state"
plugin_dir = ""
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$ctrd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # runc fails with "can't get final child's PID from pipe" here without CAP_SYS_RESOURCE
  restrict_oom_score_adj = true
  # network namespaces under our state directory, so down.sh finds every mount
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
TOML
start containerd containerd --config "$ctrd/config.toml"
wait_for containerd 30 ctr --address "$sock" version

# The sandbox image (pause) and the last operator image `make image` built.
pause_archive=$("$here/pause-image.sh" "$bin/pause") || fail "building the sandbox image failed (see the line above)"
"$here/import-image.sh" "$dir" "$pause_archive" || fail "importing the sandbox image failed; log: $dir/containerd.log"
operator_archive=$cache/image/acs-identity-operator-dev.oci.tar
if [[ -f $operator_archive ]]; then
  "$here/import-image.sh" "$dir" "$operator_archive" || fail "importing $operator_archive failed; log: $dir/containerd.log"
fi

# --- kubelet ---------------------------------------------------------------------------
kubelet_dir=$node/kubelet
mkdir -p "$kubelet_dir" "$node/pod-logs"
cat >"$node/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# What this machine kind needs (cgroup v1, root without CAP_SYS_RESOURCE, no swap rules).
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://$sock
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
podLogsDir: $node/pod-logs
resolvConf: /etc/resolv.conf
# Mounted Secrets follow their object within seconds (the default sync is a minute).
syncFrequency: 10s
configMapAndSecretChangeDetectionStrategy: Watch
# A test node: never evict or collect images because the disk is fuller than a server's.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
YAML
# shellcheck disable=SC2086 # extra args are words on purpose
start kubelet "$bin/kubelet" --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
  --root-dir "$kubelet_dir" --cert-dir "$node/kubelet-pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" -v 1 \
  ${NODE_KUBELET_EXTRA_ARGS:-}
kubectl=("$bin/kubectl" --kubeconfig "$kubeconfig")
wait_for kubelet 60 "${kubectl[@]}" get node "$NODE_NAME"

# --- kube-scheduler and kube-proxy (the control plane's admin identity) ---------------
start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$kubeconfig" --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0
cat >"$node/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$kubeconfig"}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $NODE_SUBNET
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
# Leave the host's conntrack table settings alone (no CAP_SYS_RESOURCE here).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
YAML
start kube-proxy "$bin/kube-proxy" --config "$node/kube-proxy.yaml"
wait_for kube-proxy 60 curl -fsS "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
wait_for kubelet 120 "${kubectl[@]}" wait node "$NODE_NAME" --for=condition=Ready --timeout=5s
alive kube-scheduler || fail "kube-scheduler exited during start-up; log: $dir/kube-scheduler.log"

trap - INT TERM
cat >>"$dir/env" <<ENV
ACS_NODE_NAME=$NODE_NAME
ACS_NODE_IP=$NODE_IP
ACS_NODE_CONTAINERD=$sock
ENV
if [[ -n $owner ]]; then
  nohup bash -c 'trap "" INT TERM; while kill -0 "$0" 2>/dev/null; do sleep 1; done; exec "$1" --dir "$2" --quiet' \
    "$owner" "$here/down.sh" "$dir" >/dev/null 2>&1 &
  echo "$! watchdog" >>"$node/pids"
fi
say "node $NODE_NAME Ready at $NODE_IP (containerd $(containerd --version | awk '{print $3}'), kubelet $K8S_VERSION; logs: $dir/{containerd,kubelet,kube-proxy,kube-scheduler}.log)"
echo "export KUBECONFIG=$kubeconfig"

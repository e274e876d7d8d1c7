#!/usr/bin/env bash
# Installs what a local node needs, from Debian packages, idempotently: containerd and
# runc (the container runtime), the CNI plugins (pod networking), iptables (kube-proxy's
# Service rules) and podman (builds the operator image offline, FROM scratch).
#
# Exit status: 0 ready; 3 when this machine cannot run a node at all (not root, or no
# apt-get for the missing packages), with one line saying why; 1 on any other failure.
# Callers that may run without root (make test on a laptop) skip on 3.
set -euo pipefail
say() { echo "node-deps: $*" >&2; }
cannot() { echo "node-deps: CANNOT RUN A NODE HERE: $*" >&2; exit 3; }

# command -> Debian package
declare -A want=(
  [containerd]=containerd
  [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [iptables]=iptables
  [podman]=podman
  [conntrack]=conntrack
  [mount]=mount
  [ip]=iproute2
)
missing=()
for cmd in "${!want[@]}"; do
  if [[ $cmd == /* ]]; then [[ -x $cmd ]] || missing+=("${want[$cmd]}")
  else command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}"); fi
done

# kubelet mounts volumes, creates cgroups and network devices: it needs real root.
[[ $(id -u) == 0 ]] || cannot "a kubelet and containerd need root (running as uid $(id -u))"
[[ -d /sys/fs/cgroup ]] || cannot "no cgroup filesystem at /sys/fs/cgroup"

if ((${#missing[@]})); then
  command -v apt-get >/dev/null 2>&1 || cannot "missing Debian packages ${missing[*]} and no apt-get to install them"
  log=${TMPDIR:-/tmp}/acs-node-deps.log
  say "installing Debian packages: ${missing[*]} (log: $log)"
  # Never start the packaged containerd service: our node runs its own instance.
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 ||
    { echo "node-deps: ERROR: apt-get install ${missing[*]} failed; log: $log" >&2; exit 1; }
fi
say "ok: $(containerd --version | awk '{print $1, $3}'), $(runc --version | head -n 1), $(podman --version)"

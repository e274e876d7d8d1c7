#!/usr/bin/env bash
# Removes what a local node leaves on the host outside its state directory: kube-proxy's
# iptables rules, the pods' cgroups (killing what is still in them), the bridge and the
# veths on it, and the kubelet's links in /var/log/containers. Only call it while holding
# the node lock (one node per machine), or from down.sh after stopping that node.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/node.env"
. "$here/../controlplane/versions.env"
bin=${ACS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator}/k8s-$K8S_VERSION/bin

[[ -x $bin/kube-proxy ]] && "$bin/kube-proxy" --cleanup >/dev/null 2>&1
# What kube-proxy --cleanup leaves: the kubelet's KUBE-FIREWALL, canary and hint chains.
# Only KUBE-* chains and the rules that jump to them; no other node runs here (the lock).
for cmd in iptables ip6tables; do
  command -v "$cmd" >/dev/null 2>&1 || continue
  for table in filter nat mangle; do
    rules=$("$cmd" -t "$table" -S 2>/dev/null) || continue
    grep -E '^-A [A-Z]+ .*-j KUBE-' <<<"$rules" | grep -vE '^-A KUBE-' | sed 's/^-A /-D /' |
      while read -r rule; do eval "$cmd -t $table $rule"; done
    for chain in $(grep -oE '^-N KUBE-[A-Z0-9-]+' <<<"$rules" | cut -d' ' -f2); do
      "$cmd" -t "$table" -F "$chain"
    done
    for chain in $(grep -oE '^-N KUBE-[A-Z0-9-]+' <<<"$rules" | cut -d' ' -f2); do
      "$cmd" -t "$table" -X "$chain"
    done
  done
done

# The kubelet's cgroupfs tree is /kubepods in each hierarchy (cgroup v1) or once (v2).
for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [[ -d $root ]] || continue
  find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
  find "$root" -depth -type d -exec rmdir {} + 2>/dev/null
done

if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
  for veth in $(ip -o link show master "$NODE_BRIDGE" | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$veth"
  done
  ip link del "$NODE_BRIDGE"
fi

# Dangling links the kubelet made to pod logs (their targets were under a node's dir).
for link in /var/log/containers/*.log; do
  [[ -L $link && ! -e $link ]] && rm -f "$link"
done
exit 0

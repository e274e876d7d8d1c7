#!/usr/bin/env bash
# Stops a node started by up.sh and then its control plane: every pod's containers, the
# kubelet, kube-proxy (and its iptables rules), kube-scheduler and containerd, by the
# PIDs recorded in DIR/node/pids (never by process name); unmounts everything the
# kubelet and containerd mounted under DIR; removes the pods' cgroups and the network
# devices the node made. Works after a crash or a half-done start too.
# Usage: down.sh --dir DIR [--keep-logs] [--quiet]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/node.env"
dir="" keep_logs=0 quiet=0
cp_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --keep-logs) keep_logs=1; cp_args+=(--keep-logs); shift ;;
    --quiet) quiet=1; cp_args+=(--quiet); shift ;;
    *) echo "node: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -n $dir ]] || { echo "node: down.sh needs --dir DIR" >&2; exit 2; }
say() { ((quiet)) || echo "node: $*" >&2; }
if [[ ! -d $dir ]]; then say "nothing to stop: $dir does not exist"; exit 0; fi
dir=$(cd "$dir" && pwd)
node=$dir/node
sock=$node/containerd/containerd.sock
log=$dir/node-down.log

pids_file=$node/pids
# shellcheck source=../controlplane/procs.sh
. "$here/../controlplane/procs.sh"
stop() { local pid; pid=$(pid_of "$1"); [[ -z $pid || $pid == "$$" || $pid == "$PPID" ]] || stop_pid "$pid"; }

{
  # 1. Nothing may start new containers: the watchdog, the kubelet, then the others.
  for c in watchdog kubelet kube-scheduler kube-proxy; do stop "$c"; done

  # 2. Every container of every pod, through containerd while it runs. Shims started by
  #    a containerd that is already gone are found by the socket they were given.
  if [[ -S $sock ]] && ctr --address "$sock" version >/dev/null 2>&1; then
    ctr_() { ctr --address "$sock" -n k8s.io "$@"; }
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id"; done
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id"; done
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id"; done
  fi
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "containerd-shim.* -address $sock "; then
      kill -KILL "${p#/proc/}" 2>/dev/null
    fi
  done
  stop containerd

  # 3. Host state that outlives processes: kube-proxy's iptables rules, the pods'
  #    cgroups (their processes first), the bridge and its veths, kubelet log links.
  #    Only if this node got the one-node-per-machine lock: else it is another's.
  [[ ! -s $node/lock-held ]] || "$here/cleanup-host.sh"
  for link in /var/log/containers/*.log; do
    [[ -L $link && $(readlink "$link") == "$node/"* ]] && rm -f "$link"
  done

  # 4. Mounts under DIR (secret volumes, overlay snapshots, network namespaces, shm):
  #    deepest first; lazily when busy.
  for pass in 1 2; do
    findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r | while read -r m; do
      if ((pass == 1)); then umount "$m"; else umount -l "$m"; fi
    done
  done
  # 5. Let the next node start.
  stop node-lock
} >>"$log" 2>&1

if findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | grep -q .; then
  echo "node: ERROR: could not unmount everything under $dir (see findmnt); state kept" >&2
  "$here/../controlplane/down.sh" --dir "$dir" --keep --quiet
  exit 1
fi
: >"$node/pids" 2>/dev/null
"$here/../controlplane/down.sh" --dir "$dir" "${cp_args[@]}"

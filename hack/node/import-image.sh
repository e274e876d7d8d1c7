#!/usr/bin/env bash
# Loads an image archive into a running node's containerd (namespace k8s.io, where the
# kubelet looks), so pods with imagePullPolicy Never/IfNotPresent find it.
# Usage: import-image.sh NODE_DIR ARCHIVE
set -euo pipefail
dir=$1 archive=$2
sock=$dir/node/containerd/containerd.sock
[[ -S $sock ]] || { echo "node: ERROR: no running node in $dir (no $sock)" >&2; exit 1; }
log=$dir/image-import.log
if ! ctr --address "$sock" -n k8s.io images import "$archive" >>"$log" 2>&1; then
  echo "node: ERROR: ctr images import $archive failed; log: $log" >&2
  exit 1
fi
echo "node: imported $(basename "$archive") into the node's containerd ($(tail -n 1 "$log" | awk '{print $2}'))" >&2

#!/usr/bin/env bash
# Builds the node's sandbox image ($PAUSE_IMAGE: the static pause program, FROM scratch)
# with podman, offline, next to the pause binary; reused while the binary is unchanged.
# Usage: pause-image.sh PAUSE_BINARY   Prints the OCI archive's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/node.env"
# shellcheck source=../image/podman.sh
. "$here/../image/podman.sh"
pause_bin=$1
archive=$(dirname "$pause_bin")/pause.oci.tar
if [[ -f $archive && $archive -nt $pause_bin ]]; then echo "$archive"; exit 0; fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
log=$(dirname "$pause_bin")/pause-image.log
cp "$pause_bin" "$ctx/pause"
printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Containerfile"
{ podman build --pull=never --network=none -t "$PAUSE_IMAGE" "$ctx" &&
  rm -f "$archive.tmp" && podman save --format oci-archive -o "$archive.tmp" "$PAUSE_IMAGE"; } >"$log" 2>&1 ||
  { echo "node: ERROR: building the sandbox image $PAUSE_IMAGE failed; log: $log" >&2; exit 1; }
mv "$archive.tmp" "$archive"
echo "$archive"

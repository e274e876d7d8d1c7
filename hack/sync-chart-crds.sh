#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, from `cargo run --bin crdgen`) into the Helm
# chart, which renders them from files/crds/ (templates/crds.yaml), so that `helm
# install` and `kubectl apply -f crds/` install exactly the same schema.
#
# Usage: hack/sync-chart-crds.sh [--check]
#   (no flag)  copy crds/*.yaml into the chart, removing CRDs that no longer exist
#   --check    change nothing; exit 1 and name the files when the chart is out of sync
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/crds
dst=$root/charts/acs-identity-operator/files/crds

check=false
case ${1:-} in
  --check) check=true ;;
  "") ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "sync-chart-crds: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

shopt -s nullglob
srcs=("$src"/*.yaml)
[[ ${#srcs[@]} -gt 0 ]] || { echo "sync-chart-crds: no CRDs in $src; run cargo run --bin crdgen first" >&2; exit 1; }

if $check; then
  stale=()
  for f in "${srcs[@]}"; do
    cmp -s "$f" "$dst/$(basename "$f")" || stale+=("charts/acs-identity-operator/files/crds/$(basename "$f") differs from crds/$(basename "$f")")
  done
  for f in "$dst"/*.yaml; do
    [[ -e $src/$(basename "$f") ]] || stale+=("charts/acs-identity-operator/files/crds/$(basename "$f") has no crds/ counterpart")
  done
  if [[ ${#stale[@]} -gt 0 ]]; then
    printf 'sync-chart-crds: %s\n' "${stale[@]}" >&2
    echo "sync-chart-crds: run hack/sync-chart-crds.sh and commit the chart" >&2
    exit 1
  fi
  echo "sync-chart-crds: chart CRDs match crds/" >&2
  exit 0
fi

mkdir -p "$dst"
for f in "$dst"/*.yaml; do
  [[ -e $src/$(basename "$f") ]] || { rm -f "$f"; echo "sync-chart-crds: removed $(basename "$f")" >&2; }
done
for f in "${srcs[@]}"; do
  if ! cmp -s "$f" "$dst/$(basename "$f")"; then
    cp "$f" "$dst/" && echo "sync-chart-crds: updated $(basename "$f")" >&2
  fi
done

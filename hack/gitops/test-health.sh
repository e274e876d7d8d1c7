#!/usr/bin/env bash
# Runs the Argo CD health checks and actions in docs/gitops/argocd/resource_customizations
# on their fixtures with a real Lua 5.1 (Argo CD's gopher-lua is a Lua 5.1), in the
# sandbox Argo CD gives a script from argocd-cm. One line per case, then
# "gitops: N passed, N failed"; exits non-zero on any mismatch. Part of `make test`.
# Installs lua5.1 and lua-yaml from Debian when missing (hack/deps.sh does the same).
set -euo pipefail
cd "$(dirname "$0")/../.."
die() { echo "test-health: ERROR: $*" >&2; exit 1; }

LUA=${LUA:-lua5.1}
if ! command -v "$LUA" >/dev/null 2>&1 || ! "$LUA" -e 'require("lyaml")' >/dev/null 2>&1; then
  hack/deps.sh >/dev/null
fi
command -v "$LUA" >/dev/null 2>&1 || die "$LUA not found (Debian package lua5.1)"
"$LUA" -e 'require("lyaml")' 2>/dev/null || die "$LUA cannot load lyaml (Debian package lua-yaml)"

root=docs/gitops/argocd/resource_customizations
kinds=()
for dir in "$root"/*/*/; do
  [[ -f "$dir/health.lua" ]] || continue
  [[ -f "$dir/health_test.yaml" ]] || die "$dir has health.lua but no health_test.yaml"
  kinds+=("${dir%/}")
done
((${#kinds[@]})) || die "no health checks under $root"

# os.date in the actions reports this instant, so their outputs are fixed.
now=$(date -u -d 2026-01-02T03:04:05Z +%s)
exec "$LUA" hack/gitops/run-customizations.lua "$now" "${kinds[@]}"

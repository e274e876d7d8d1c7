#!/usr/bin/env bash
# Proves the emulator's fidelity: runs the official ACS SDKs (Python, JavaScript, and the
# retired Python administration package's quickstart) against the acs-emulator binary,
# over plain HTTP and over --tls, and Python azure-identity / JS @azure/identity (Entra ID
# workload identity) with local auth disabled. Prints one PASS/FAIL line per check and closes with
# `N passed, N failed`; exits non-zero on any failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
COMPAT_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator/compat"
VENV_PY="$COMPAT_DIR/venv/bin/python"
export NODE_PATH="$COMPAT_DIR/node/node_modules"

bash "$ROOT/hack/compat/install.sh" >/dev/null || { echo "compat: SDK install failed" >&2; echo "0 passed, 1 failed"; exit 1; }

cd "$ROOT"
cargo build --quiet --bin acs-emulator || { echo "compat: build failed" >&2; echo "0 passed, 1 failed"; exit 1; }
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | "$VENV_PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
EMULATOR="$TARGET_DIR/debug/acs-emulator"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

PASSED=0
FAILED=0

# start_emulator NAME ARGS... : starts the binary, waits for its first line, sets CONN.
start_emulator() {
    local name="$1"; shift
    "$EMULATOR" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=("$!")
    for _ in $(seq 1 100); do
        if CONN_LINE="$(head -n1 "$WORK/$name.out" 2>/dev/null)" && [ -n "$CONN_LINE" ]; then
            CONN="${CONN_LINE#ACS_CONNECTION_STRING=}"
            return 0
        fi
        sleep 0.1
    done
    echo "compat: emulator $name did not start:" >&2
    cat "$WORK/$name.err" >&2
    return 1
}

# run_checks NAME COMMAND... : runs one SDK script, echoes its PASS/FAIL lines, counts them.
run_checks() {
    local name="$1"; shift
    local log="$WORK/$name.log"
    "$@" >"$log" 2>&1
    local rc=$?
    grep -E '^(PASS|FAIL) ' "$log"
    local p f
    p=$(grep -c '^PASS ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name: exited $rc without reporting a check:"
        redact <"$log" | tail -n 20
        f=1
    fi
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
}

# Tokens and keys never reach this script's output.
redact() { sed -E 's/eyJ[A-Za-z0-9._-]+/<token>/g; s/accesskey=[^; ]+/accesskey=<key>/g'; }

pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1"; FAILED=$((FAILED + 1)); }

# The emulator must never log its key or a token.
check_logs_clean() {
    local name="$1" key="${CONN##*accesskey=}"
    if grep -qF -- "$key" "$WORK/$name.err" || grep -qE 'eyJ[A-Za-z0-9_-]{20,}\.' "$WORK/$name.err"; then
        fail "emulator[$name] logs hold a key or token"
    else
        pass "emulator[$name] logs hold no key or token"
    fi
}

# --- plain HTTP -----------------------------------------------------------------------
if start_emulator plain --listen 127.0.0.1:0; then
    COMPAT_MODE=http ACS_CONNECTION_STRING="$CONN" run_checks python-http "$VENV_PY" tests/compat/compat_python.py
    COMPAT_MODE=http ACS_CONNECTION_STRING="$CONN" run_checks js-http node tests/compat/compat_js.js
    check_logs_clean plain
else
    fail "emulator (plain) starts"
fi

# --- TLS ----------------------------------------------------------------------------------
CA="$WORK/ca.pem"
if start_emulator tls --listen 127.0.0.1:0 --tls --tls-ca-out "$CA"; then
    case "$CONN" in endpoint=https://*) pass "emulator[tls] announces an https endpoint" ;; *) fail "emulator[tls] announces an https endpoint" ;; esac
    COMPAT_MODE=tls ACS_CONNECTION_STRING="$CONN" REQUESTS_CA_BUNDLE="$CA" SSL_CERT_FILE="$CA" \
        run_checks python-tls "$VENV_PY" tests/compat/compat_python.py
    COMPAT_MODE=tls ACS_CONNECTION_STRING="$CONN" NODE_EXTRA_CA_CERTS="$CA" \
        run_checks js-tls node tests/compat/compat_js.js

    # The original quickstart, unmodified, on the retired administration package.
    COMMUNICATION_SERVICES_CONNECTION_STRING="$CONN" REQUESTS_CA_BUNDLE="$CA" SSL_CERT_FILE="$CA" \
        "$VENV_PY" tests/compat/quickstart_administration.py >"$WORK/quickstart.log" 2>&1
    if grep -q '^Deleted the identity with ID: 8:acs:' "$WORK/quickstart.log" \
        && grep -q '^Successfully revoked all access tokens' "$WORK/quickstart.log" \
        && grep -q "^Issued an access token with 'voip' scope that expires at" "$WORK/quickstart.log" \
        && ! grep -q '^Exception:' "$WORK/quickstart.log"; then
        pass "quickstart[administration 1.0.0b4, tls] create, issue, refresh, revoke, delete"
        # The emulator's own view agrees: that user is deleted and its tokens were revoked.
        QS_ID="$(sed -n 's/^Deleted the identity with ID: //p' "$WORK/quickstart.log")"
        ENDPOINT="${CONN#endpoint=}"; ENDPOINT="${ENDPOINT%%/;*}"
        if curl -fsS --cacert "$CA" "$ENDPOINT/admin/identities" | QS_ID="$QS_ID" "$VENV_PY" -c '
import json, os, sys
user = [i for i in json.load(sys.stdin) if i["id"] == os.environ["QS_ID"]]
sys.exit(0 if user and user[0]["deleted"] and user[0]["tokensRevokedAt"] and user[0]["tokensIssued"] == 2 else 1)'; then
            pass "quickstart[administration 1.0.0b4, tls] admin view: user deleted, 2 tokens issued, revoked"
        else
            fail "quickstart[administration 1.0.0b4, tls] admin view: user deleted, 2 tokens issued, revoked"
        fi
    else
        fail "quickstart[administration 1.0.0b4, tls] create, issue, refresh, revoke, delete:"
        redact <"$WORK/quickstart.log" | tail -n 20
    fi
    check_logs_clean tls
else
    fail "emulator (tls) starts"
fi

# --- Entra ID: TLS, local auth disabled -------------------------------------------------
# azure-identity's (Python) and @azure/identity's (JS, MSAL) WorkloadIdentityCredential
# against the emulated authority, with CommunicationIdentityClient(endpoint, credential):
# the quickstart on bearer tokens only.
CA_ENTRA="$WORK/ca-entra.pem"
if start_emulator entra --listen 127.0.0.1:0 --tls --tls-ca-out "$CA_ENTRA" --disable-local-auth --entra-tenant compat-tenant; then
    ENDPOINT="${CONN#endpoint=}"; ENDPOINT="${ENDPOINT%%/;*}"
    ACS_ENDPOINT="$ENDPOINT" ENTRA_TENANT=compat-tenant ACS_CONNECTION_STRING="$CONN" \
        REQUESTS_CA_BUNDLE="$CA_ENTRA" SSL_CERT_FILE="$CA_ENTRA" \
        run_checks python-entra "$VENV_PY" tests/compat/compat_entra_python.py
    ACS_ENDPOINT="$ENDPOINT" ENTRA_TENANT=compat-tenant NODE_EXTRA_CA_CERTS="$CA_ENTRA" \
        run_checks js-entra node tests/compat/compat_entra_js.js
    check_logs_clean entra
else
    fail "emulator (entra) starts"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]

#!/usr/bin/env bash
# `make reliability`: the reliability suite at scale (tests/reliability/, issue 11) on a
# local control plane: crash injection, ACS and Kubernetes faults, a simulated day, an
# ACS outage, bad input and fuzzing. Ends with the line
#   reliability: identities=N kills=K leaked=L duplicated=D expired_served=E lost_tokens=T secrets_in_logs=S bad_inputs=R/B
# Environment: RELIABILITY_N (default 200), RELIABILITY_SCENARIOS (crash,faults,kube,day,
# outage,badinput,fuzz,hostile,failpaths; default all), RELIABILITY_DAY_N (1000), RELIABILITY_DAY_TOKEN_SECS
# (120), RELIABILITY_DAY_SECS, RELIABILITY_FUZZ_CASES (20000), RELIABILITY_PLOT (the
# renewal-spread PNG; default docs/reliability-renewals.png).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "==> $*" >&2; }

hack/deps.sh
hack/controlplane/build.sh >/dev/null
export RELIABILITY_N=${RELIABILITY_N:-200}
export RELIABILITY_PLOT=${RELIABILITY_PLOT:-$PWD/docs/reliability-renewals.png}

say "building the operator, the emulator and the suite"
cargo build --quiet --bins --test reliability

say "starting a local control plane"
cpdir=$(mktemp -d "${TMPDIR:-/tmp}/acs-reliability-cp.XXXXXX")
log=$(mktemp "${TMPDIR:-/tmp}/acs-reliability.XXXXXX.log")
trap 'hack/controlplane/down.sh --dir "$cpdir" --quiet' EXIT
kubeconfig_line=$(hack/controlplane/up.sh --dir "$cpdir" --owner-pid $$ | tail -n 1)
export ACS_TEST_KUBECONFIG=${kubeconfig_line#export KUBECONFIG=}

say "reliability suite, RELIABILITY_N=$RELIABILITY_N (full log: $log)"
rc=0
cargo test --quiet --test reliability -- --ignored --exact reliability_full --nocapture 2>&1 | tee "$log" || rc=$?
echo
grep -E '^reliability: ' "$log" | tail -n 1 || { echo "reliability: the suite ended before its summary (see $log)"; rc=1; }
exit "$rc"

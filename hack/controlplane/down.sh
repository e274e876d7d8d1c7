#!/usr/bin/env bash
# Stops a control plane started by up.sh, by the PIDs it recorded (never by process
# name), and removes its state directory.
# Usage: down.sh --dir DIR [--keep | --keep-logs] [--quiet]
#   --keep       keep the whole state directory
#   --keep-logs  remove everything but the components' *.log files (after a failed start)
set -uo pipefail
dir="" keep=0 keep_logs=0 quiet=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --keep-logs) keep_logs=1; shift ;;
    --quiet) quiet=1; shift ;;
    *) echo "controlplane: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -n $dir ]] || { echo "controlplane: down.sh needs --dir DIR" >&2; exit 2; }
say() { ((quiet)) || echo "controlplane: $*" >&2; }
if [[ ! -d $dir ]]; then say "nothing to stop: $dir does not exist"; exit 0; fi

# shellcheck source=procs.sh
. "$(dirname "$0")/procs.sh"

if [[ -f $dir/pids ]]; then
  # Reverse start order, one at a time: the watchdog, the controller-manager, the
  # apiserver while etcd is still there to let it shut down quickly, then etcd. The
  # watchdog is skipped when it is the caller itself.
  while read -r pid _; do
    [[ $pid == "$$" || $pid == "$PPID" ]] && continue
    stop_pid "$pid"
  done < <(tac "$dir/pids")
  : >"$dir/pids"
fi
if ((keep)); then
  say "stopped; state kept in $dir"
elif ((keep_logs)) && compgen -G "$dir/*.log" >/dev/null; then
  find "$dir" -mindepth 1 -maxdepth 1 ! -name '*.log' -exec rm -rf {} +
  say "stopped; logs kept in $dir"
else
  rm -rf "$dir"
  say "stopped and removed $dir"
fi

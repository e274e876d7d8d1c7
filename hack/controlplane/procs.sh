# Sourced by the control plane's and the node's up.sh/down.sh: components started in the
# background with their PID recorded in $pids_file and their output in $log_dir/NAME.log;
# stopped by those PIDs, never by process name. The caller defines fail().

start() { # name, then the command; records the PID, logs to $log_dir/NAME.log
  local name=$1; shift
  "$@" >"$log_dir/$name.log" 2>&1 &
  echo "$! $name" >>"$pids_file"
}
pid_of() { awk -v n="$1" '$2==n{print $1}' "$pids_file" 2>/dev/null; }
alive() { local pid; pid=$(pid_of "$1"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }
wait_for() { # component, seconds, check command...
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || fail "$name exited during start-up; log: $log_dir/$name.log"
    ((SECONDS < deadline)) || fail "$name not ready after ${secs}s; log: $log_dir/$name.log"
    sleep 0.2
  done
}

gone() { [[ ! -e /proc/$1 ]] || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
stop_pid() { # TERM, up to 15 s to exit, then KILL and wait for it to be gone
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 150; i++)); do gone "$pid" && return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do gone "$pid" && return 0; sleep 0.1; done
}

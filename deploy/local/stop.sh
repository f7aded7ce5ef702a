#!/usr/bin/env bash
# Stop what start.sh started in a run folder, by PID: SIGTERM to the workers (each nanny closes
# its worker), then to the scheduler; SIGKILL to what is left of a process group after a grace
# period. Removes the PID files.
set -euo pipefail

usage() { echo "usage: $0 [-d RUN_DIR] [-t GRACE_S]   (defaults ./dask-run, 20)"; }
run_dir=dask-run grace=20
while getopts "d:t:h" opt; do
    case $opt in
        d) run_dir=$OPTARG ;; t) grace=$OPTARG ;; h) usage; exit 0 ;; *) usage >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
[[ -d $run_dir ]] || { echo "$0: no run folder $run_dir" >&2; exit 1; }
run_dir=$(cd "$run_dir" && pwd)

# stop PIDFILE...: SIGTERM to each, wait for them together, SIGKILL their leftovers.
stop() {
    local f pid i pids=() names=()
    for f in "$@"; do
        if ours "$run_dir" "$f"; then
            pid=$(cat "$f")
            kill -TERM "$pid" && pids+=("$pid") && names+=("$(basename "$f" .pid)")
        else
            echo "$(basename "$f" .pid): not running (stale PID file removed)"
        fi
        rm -f "$f"
    done
    for ((i = 0; i < 10 * grace; i++)); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if kill -0 "${pids[i]}" 2>/dev/null; then
            echo "${names[i]}: killed (PID ${pids[i]} did not stop within $grace s)"
        else
            echo "${names[i]}: stopped (PID ${pids[i]})"
        fi
        kill -KILL -- "-${pids[i]}" 2>/dev/null || true
    done
}

workers=()
for f in $(pid_files "$run_dir"); do
    [[ $(basename "$f") == scheduler.pid ]] || workers+=("$f")
done
((${#workers[@]} == 0)) || stop "${workers[@]}"
[[ ! -e $run_dir/scheduler.pid ]] || stop "$run_dir/scheduler.pid"
rm -f "$run_dir/address" "$run_dir/scheduler.json"

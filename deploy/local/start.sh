#!/usr/bin/env bash
# Start a Dask scheduler and CPU / GPU-tagged workers on this host, each in its own process
# group, with PID files and logs in a run folder. Stop them with stop.sh, inspect with status.sh.
set -euo pipefail

usage() {
    cat <<USAGE
usage: $0 [-d RUN_DIR] [-H HOST] [-p PORT] [-D DASHBOARD_PORT] [-c CPU_WORKERS]
          [-g GPU_WORKERS] [-t THREADS] [-m MEMORY] [-w WAIT_S]

  -d  run folder for PID files, logs, scheduler.json       (default ./dask-run)
  -H  address to listen on; 0.0.0.0 for other hosts too    (default 127.0.0.1)
  -p  scheduler port, 0 for a free one                     (default 8786)
  -D  dashboard port, 0 for a free one                     (default 8787)
  -c  CPU workers                                          (default 1)
  -g  GPU workers: --resources GPU=1, gpu-i sees CUDA device i only (default 0)
  -t  threads per worker                                   (default 1)
  -m  memory limit per worker, e.g. 8GiB                   (default auto)
  -w  seconds to wait for the scheduler and the workers    (default 60)

Environment: DASK (the dask command, default 'dask' on PATH), PYTHON (default: the python
beside it). Prints the scheduler address and dashboard; pass the address to
'pairsr apply|batch --scheduler'.
USAGE
}

run_dir=dask-run host=127.0.0.1 port=8786 dashboard=8787 cpu=1 gpu=0 threads=1 memory=auto wait=60
while getopts "d:H:p:D:c:g:t:m:w:h" opt; do
    case $opt in
        d) run_dir=$OPTARG ;; H) host=$OPTARG ;; p) port=$OPTARG ;; D) dashboard=$OPTARG ;;
        c) cpu=$OPTARG ;; g) gpu=$OPTARG ;; t) threads=$OPTARG ;; m) memory=$OPTARG ;;
        w) wait=$OPTARG ;; h) usage; exit 0 ;; *) usage >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)
for f in $(pid_files "$run_dir"); do
    if ours "$run_dir" "$f"; then
        echo "$0: $run_dir is in use ($(basename "$f" .pid) runs as PID $(cat "$f")); stop.sh it first" >&2
        exit 1
    fi
    rm -f "$f"  # stale
done
rm -f "$run_dir/scheduler.json"

# launch NAME ARGS...: run ARGS in a new session (setsid execs in place: $! is the process).
launch() {
    local name=$1
    shift
    setsid "$@" >"$run_dir/$name.log" 2>&1 </dev/null &
    echo $! >"$run_dir/$name.pid"
}

fail() {
    echo "$0: $1; log tails:" >&2
    tail -n 15 "$run_dir"/*.log >&2 || true
    "$here/stop.sh" -d "$run_dir" >&2 || true
    exit 1
}

launch scheduler "$DASK_BIN" scheduler --host "$host" --port "$port" \
    --dashboard-address "$host:$dashboard" --scheduler-file "$run_dir/scheduler.json"
deadline=$((SECONDS + wait))
until [[ -s $run_dir/scheduler.json ]]; do
    ours "$run_dir" "$run_dir/scheduler.pid" || fail "the scheduler exited"
    ((SECONDS < deadline)) || fail "no scheduler file after $wait s"
    sleep 0.2
done

# worker NAME CUDA_DEVICES [ARGS...]: one worker (and its nanny) that sees only CUDA_DEVICES
# ("" for none: CPU workers leave the GPUs to the GPU workers).
workers=()
worker() {
    local name=$1 devices=$2
    shift 2
    workers+=("$name")
    # MALLOC_MMAP_THRESHOLD_: pairsr's execution policy (pairsr.threads.MMAP_THRESHOLD).
    launch "$name" env CUDA_VISIBLE_DEVICES="$devices" MALLOC_MMAP_THRESHOLD_=33554432 \
        "$DASK_BIN" worker \
        --scheduler-file "$run_dir/scheduler.json" --name "$name" --host "$host" \
        --nthreads "$threads" --memory-limit "$memory" --local-directory "$run_dir/$name" "$@"
}
for ((i = 0; i < cpu; i++)); do worker "cpu-$i" ""; done
for ((i = 0; i < gpu; i++)); do worker "gpu-$i" "$i" --resources GPU=1; done

# Wait until every worker has registered with the scheduler (its log says so), or has died.
for name in "${workers[@]}"; do
    until grep -q "Registered to:" "$run_dir/$name.log"; do
        ours "$run_dir" "$run_dir/$name.pid" || fail "worker $name exited"
        ((SECONDS < deadline)) || fail "worker $name did not join within $wait s"
        sleep 0.2
    done
done
"$PYTHON" - "$run_dir/scheduler.json" >"$run_dir/address" <<'PY'
import json, sys
from urllib.parse import urlsplit

info = json.load(open(sys.argv[1]))
print(info["address"])
port = info["services"].get("dashboard")
print(f"http://{urlsplit(info['address']).hostname}:{port}/status" if port else "none (no bokeh)")
PY
{ read -r address; read -r link; } <"$run_dir/address"
echo "scheduler: $address  ($cpu CPU, $gpu GPU workers of $threads threads; run folder $run_dir)"
echo "dashboard: $link"

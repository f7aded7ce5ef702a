#!/usr/bin/env bash
# Show what start.sh started in a run folder: each process, then the scheduler's view of its
# workers (threads, memory, resources). Exit status 0 when the scheduler runs, else 1.
set -euo pipefail

usage() { echo "usage: $0 [-d RUN_DIR]   (default ./dask-run)"; }
run_dir=dask-run
while getopts "d:h" opt; do
    case $opt in d) run_dir=$OPTARG ;; h) usage; exit 0 ;; *) usage >&2; exit 2 ;; esac
done
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
[[ -d $run_dir ]] || { echo "$0: no run folder $run_dir" >&2; exit 1; }
run_dir=$(cd "$run_dir" && pwd)

for f in $(pid_files "$run_dir"); do
    if ours "$run_dir" "$f"; then state="running (PID $(cat "$f"))"; else state=stopped; fi
    printf '%-10s %s\n' "$(basename "$f" .pid)" "$state"
done
ours "$run_dir" "$run_dir/scheduler.pid" || exit 1
"$PYTHON" - "$run_dir/scheduler.json" <<'PY'
import sys
from distributed import Client

with Client(scheduler_file=sys.argv[1], timeout=10) as client:
    print(f"scheduler: {client.scheduler.address}\ndashboard: {client.dashboard_link}")
    workers = client.scheduler_info(n_workers=-1)["workers"].items()
    for address, w in sorted(workers, key=lambda item: str(item[1]["name"])):
        print(f"  {w['name']:<8} {address:<24} {w['nthreads']} threads, "
              f"{w['memory_limit'] / 2**30:.1f} GiB, resources {w['resources'] or '-'}")
PY

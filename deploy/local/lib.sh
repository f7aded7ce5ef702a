# Shared by start.sh, stop.sh and status.sh (sourced, not run).
# A run folder holds NAME.pid and NAME.log per process (scheduler, cpu-0, …, gpu-0, …),
# scheduler.json (Dask's scheduler file) and, per worker, its local directory NAME/.

DASK=${DASK:-dask}
if ! DASK_BIN=$(command -v "$DASK"); then
    echo "$0: '$DASK' not found: activate pairsr's environment or set DASK=/path/to/bin/dask" >&2
    exit 2
fi
# The Python of the environment dask runs in (used to ask the scheduler about its workers).
PYTHON=${PYTHON:-$(dirname "$DASK_BIN")/python}

# ours RUN_DIR PIDFILE: true when the PID file names a live process started for RUN_DIR
# (its command line mentions the run folder: guards against PIDs reused by other processes).
ours() {
    local pid
    [[ -f $2 ]] || return 1
    pid=$(cat "$2")
    [[ $pid =~ ^[0-9]+$ ]] && ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "$1"
}

# pid_files RUN_DIR: workers first, scheduler last (the order to stop them in).
pid_files() {
    local f
    for f in "$1"/*.pid; do
        [[ -e $f && $(basename "$f") != scheduler.pid ]] && echo "$f"
    done
    [[ -e $1/scheduler.pid ]] && echo "$1/scheduler.pid"
    return 0
}

#!/usr/bin/env bash
# A single-node SLURM for CI: install Debian's slurm-wlm and munge, write a slurm.conf for this
# host, start munged, slurmctld and slurmd directly (no systemd), wait until the node is idle.
#
#   .ci/slurm.sh start    # only when CI=true or PAIRSR_SLURM=1 (it installs packages as root)
#   .ci/slurm.sh status   # sinfo, daemon PIDs
#   .ci/slurm.sh stop     # stop the three daemons by their PID files
#
# tests/test_deploy.py submits deploy/slurm/pairsr-batch.sbatch (`pairsr batch --cluster slurm`)
# and dask-worker.sbatch jobs to it; those tests skip when sbatch is missing or slurmctld does
# not answer. Without root it does nothing; it never replaces a slurm.conf it did not write,
# and stops only the daemons it started. Folders: /etc/slurm (config), /var/spool/slurm{ctld,d}
# (state), /var/log/slurm (logs; jobcomp.log: one line per finished job), /run/pairsr-slurm
# (PID files).
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/pairsr-slurm
MARK="# Written by pairsr .ci/slurm.sh"
WAIT_S=${PAIRSR_SLURM_WAIT_S:-60}

log() { echo "slurm.sh: $*" >&2; }

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # Leave a fifth of the RAM (MB) to the OS and the daemons.
    mem=$(awk '/^MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" /var/spool/slurmctld /var/spool/slurmd
    cat > "$CONF_DIR/slurm.conf" <<EOF
$MARK: one node, one partition, root runs everything.
ClusterName=pairsr-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    log "wrote $CONF_DIR/slurm.conf (node $host, $cpus CPUs, $mem MB)"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    if [[ ${CI:-} != true && ${PAIRSR_SLURM:-} != 1 ]]; then
        log "not starting SLURM: set CI=true or PAIRSR_SLURM=1 (installs packages as root)"
        return 0
    fi
    if [[ $(id -u) != 0 ]]; then
        log "not root: cannot install or start SLURM (the SLURM tests skip unless one answers)"
        return 0
    fi
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        log "installing slurm-wlm and munge"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    fi
    if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -q "^$MARK" "$CONF_DIR/slurm.conf"; then
        log "$CONF_DIR/slurm.conf exists and was not written by this script: not replacing it"
        exit 1
    fi
    write_conf
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --force
    fi
    mkdir -p /run/munge
    if ! alive "$RUN_DIR/munged.pid" && ! pgrep -x munged >/dev/null; then
        munged --force  # --force: it warns about the log folder's owner
        cp /run/munge/munged.pid "$RUN_DIR/munged.pid"  # ours to stop (not a system munged)
    fi
    alive "$RUN_DIR/slurmctld.pid" || slurmctld
    alive "$RUN_DIR/slurmd.pid" || slurmd
    local deadline=$((SECONDS + WAIT_S)) state=""
    while ((SECONDS < deadline)); do
        state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
        if [[ $state == idle ]]; then
            log "node $(hostname -s) idle: SLURM is up"
            sinfo
            return 0
        fi
        sleep 1
    done
    log "node not idle after ${WAIT_S} s (state '${state}'); last log lines:"
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    exit 1
}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM, wait up to 20 s, then SIGKILL
    local name=$1 file=$2 pid i
    if ! alive "$file"; then
        log "$name not running"
        return 0
    fi
    pid=$(cat "$file")
    kill -TERM "$pid"
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name ($pid)"; rm -f "$file"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$file"
    log "killed $name ($pid): it did not stop within 20 s"
}

stop() {
    stop_pid slurmd "$RUN_DIR/slurmd.pid"
    stop_pid slurmctld "$RUN_DIR/slurmctld.pid"
    stop_pid munged "$RUN_DIR/munged.pid"
}

status() {
    local name
    for name in munged slurmctld slurmd; do
        if alive "$RUN_DIR/$name.pid"; then
            echo "$name: running ($(cat "$RUN_DIR/$name.pid"))"
        else
            echo "$name: stopped"
        fi
    done
    sinfo 2>&1 || true
}

case ${1:-start} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

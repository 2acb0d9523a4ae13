#!/usr/bin/env bash
# A single-node SLURM on this machine, for tests:  scripts/local-slurm.sh up|down|status
#
# up:   as root on Debian, installs slurm-wlm and munge with apt if missing, writes a
#       slurm.conf for this host under $LOCAL_SLURM_DIR (proctrack/linuxproc, task/none,
#       no accounting, MinJobAge high enough for squeue to report finished jobs), starts
#       munged (unless one runs), slurmctld and slurmd, and waits until the node is idle.
#       The config is linked from /etc/slurm/slurm.conf (where srun inside jobs looks),
#       unless another slurm.conf is there already; then export SLURM_CONF as printed.
# down: stops exactly the daemons `up` started (their pids are in $LOCAL_SLURM_DIR/pids)
#       and removes the /etc/slurm/slurm.conf link if `up` made it.
set -euo pipefail

DIR=${LOCAL_SLURM_DIR:-/tmp/local-slurm}
PARTITION=${LOCAL_SLURM_PARTITION:-local}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

die() { echo "local-slurm: $*" >&2; exit 1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    echo "local-slurm: installing slurm-wlm and munge (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    if pgrep -x munged >/dev/null; then
        return  # someone else's munged: use it, never stop it
    fi
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        [ -s /run/munge/munged.pid ] && break
        sleep 0.1
    done
    echo "munged $(cat /run/munge/munged.pid)" >> "$DIR/pids"
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    cat > "$CONF" <<CONF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=86400
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    if [ ! -e /etc/slurm/slurm.conf ]; then
        mkdir -p /etc/slurm
        ln -s "$CONF" /etc/slurm/slurm.conf
        echo /etc/slurm/slurm.conf > "$DIR/linked"
    elif [ "$(readlink /etc/slurm/slurm.conf)" != "$CONF" ]; then
        echo "local-slurm: /etc/slurm/slurm.conf belongs to another SLURM; jobs need SLURM_CONF=$CONF" >&2
    fi
}

up() {
    [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
    if [ -s "$DIR/pids" ]; then
        die "already up ($DIR/pids exists); run '$0 down' first"
    fi
    install_packages
    mkdir -p "$DIR/state" "$DIR/spool"
    : > "$DIR/pids"
    start_munge
    write_conf
    slurmctld -f "$CONF"
    slurmd -f "$CONF"
    for _ in $(seq 100); do
        [ -s "$DIR/slurmctld.pid" ] && [ -s "$DIR/slurmd.pid" ] && break
        sleep 0.1
    done
    echo "slurmctld $(cat "$DIR/slurmctld.pid")" >> "$DIR/pids"
    echo "slurmd $(cat "$DIR/slurmd.pid")" >> "$DIR/pids"
    for _ in $(seq 120); do
        if sinfo -h -p "$PARTITION" -o %T 2>/dev/null | grep -qx idle; then
            echo "local-slurm: partition $PARTITION idle; export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    sinfo || true
    tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    die "node did not become idle within 60 s"
}

down() {
    [ -s "$DIR/pids" ] || { echo "local-slurm: nothing to stop"; return; }
    # slurmd and slurmctld first, munged (if ours) last
    tac "$DIR/pids" | while read -r name pid; do
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            echo "local-slurm: stopped $name ($pid)"
        fi
    done
    rm -f "$DIR/pids"
    if [ -s "$DIR/linked" ]; then
        rm -f "$(cat "$DIR/linked")" "$DIR/linked"
    fi
}

status() {
    [ -s "$DIR/pids" ] && cat "$DIR/pids"
    sinfo 2>/dev/null || echo "local-slurm: not running"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

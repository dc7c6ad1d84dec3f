#!/usr/bin/env bash
# A real single-node Slurm (Debian slurm-wlm) on localhost for the test suite.
#   .ci/slurm.sh install   apt-get the packages
#   .ci/slurm.sh up        write slurm.conf, start slurmctld + slurmd, wait until the node is idle
#   .ci/slurm.sh down      stop both daemons
set -euo pipefail
conf_dir=/etc/slurm
state=/var/spool/slurm-ci
cpus=4  # advertised (config_overrides): lets the array tasks of the pipeline run side by side

case "${1:-}" in
install)
    if ! command -v slurmctld >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null
    fi
    command -v shellcheck >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
    ;;
up)
    "$0" down  # a clean start: no daemons or jobs left from an earlier run
    rm -rf "$state"
    mkdir -p "$conf_dir" "$state/ctld" "$state/d" /var/log/slurm-ci
    cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=pronlora-ci
SlurmctldHost=localhost
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=/var/log/slurm-ci/slurmctld.log
SlurmdLogFile=/var/log/slurm-ci/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerParameters=defer_batch
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld -c 2>/dev/null || slurmctld
    slurmd -c 2>/dev/null || slurmd
    for _ in $(seq 60); do
        if sinfo -h -o %t 2>/dev/null | grep -qE '^idle'; then
            sinfo
            exit 0
        fi
        sleep 1
    done
    echo "error: the Slurm node did not become idle" >&2
    sinfo || true
    tail -20 /var/log/slurm-ci/slurmctld.log /var/log/slurm-ci/slurmd.log >&2 || true
    exit 1
    ;;
down)
    scancel --user=root 2>/dev/null || true
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    for _ in $(seq 20); do
        pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
        sleep 0.5
    done
    ;;
*)
    echo "usage: $0 install|up|down" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# A real Slurm (Debian slurm-wlm) on localhost for the test suite: two nodes, each its own slurmd
# (slurmd -N), so multi-node jobs (srun over nodes, a rendezvous on the first) run for real.
#   .ci/slurm.sh install   apt-get the packages
#   .ci/slurm.sh up        write slurm.conf, start slurmctld + the slurmds, wait until nodes idle
#   .ci/slurm.sh down      stop the daemons
set -euo pipefail
conf_dir=/etc/slurm
state=/var/spool/slurm-ci
cpus=2  # per node, advertised (config_overrides): the pipeline's array tasks run side by side
nodes=(node1 node2)

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
    mkdir -p "$conf_dir" "$state/ctld" /var/log/slurm-ci
    for n in "${nodes[@]}"; do
        mkdir -p "$state/d/$n"
        # node names resolve, as on a real cluster (submitit's rendezvous uses them)
        grep -qE "^127\.0\.0\.1[[:space:]].*\b$n\b" /etc/hosts || echo "127.0.0.1 $n" >> /etc/hosts
    done
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
SlurmdSpoolDir=$state/d/%n
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm-ci/slurmctld.log
SlurmdLogFile=/var/log/slurm-ci/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerParameters=defer_batch
NodeName=node1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=$cpus RealMemory=4000 State=UNKNOWN
NodeName=node2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=$cpus RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld -c 2>/dev/null || slurmctld
    for n in "${nodes[@]}"; do slurmd -c -N "$n" 2>/dev/null || slurmd -N "$n"; done
    for _ in $(seq 60); do
        if [ "$(sinfo -h -N -o %t 2>/dev/null | grep -c '^idle')" -eq "${#nodes[@]}" ]; then
            sinfo
            exit 0
        fi
        sleep 1
    done
    echo "error: the Slurm node did not become idle" >&2
    sinfo || true
    tail -20 /var/log/slurm-ci/*.log >&2 || true
    exit 1
    ;;
down)
    # Stop only the daemons this script started (their pid files), not a developer's own Slurm.
    pids=()
    for f in "$state"/slurmctld.pid "$state"/slurmd-*.pid; do
        [ -f "$f" ] && pids+=("$(cat "$f")")
    done
    if [ ${#pids[@]} -gt 0 ]; then scancel --user=root 2>/dev/null || true; fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 20); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.5
    done
    ;;
*)
    echo "usage: $0 install|up|down" >&2
    exit 2
    ;;
esac

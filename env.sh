# shellcheck shell=bash
# pronlora site settings: the one place for cluster facts. Every value has a default and can be
# overridden from the environment; an empty value set before sourcing stays empty
# (PRONLORA_GRES= on CPU-only nodes, for example).
# Sourced by every sbatch script, slurm/pipeline.sh and read by jobs/submit.py.

_pronlora_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${PRONLORA_ROOT=$_pronlora_here}"

# --- scheduler -------------------------------------------------------------------------------
: "${PRONLORA_PARTITION=}"            # empty: the cluster's default partition
: "${PRONLORA_ACCOUNT=}"
: "${PRONLORA_QOS=}"
: "${PRONLORA_NODES=1}"               # nodes of a training job (one torchrun per node)
: "${PRONLORA_GPUS_PER_NODE=1}"       # GPUs per train/infer job node = processes per node
: "${PRONLORA_GRES=gpu:$PRONLORA_GPUS_PER_NODE}"  # empty on CPU-only nodes (processes stay)
: "${PRONLORA_CPUS_PER_TASK=8}"       # CPUs per GPU (per process); jobs ask for this x GPUs
: "${PRONLORA_MEM=64G}"               # memory per node
: "${PRONLORA_TIME_PREP=00:30:00}"
: "${PRONLORA_TIME_TRAIN=08:00:00}"
: "${PRONLORA_TIME_INFER=02:00:00}"
: "${PRONLORA_TIME_COLLECT=00:30:00}"
: "${PRONLORA_SIGNAL_GRACE_S=180}"    # pre-timeout signal: seconds to save a checkpoint

# --- software --------------------------------------------------------------------------------
: "${PRONLORA_CONTAINER=}"            # path to pronlora.sif; empty: run with PRONLORA_PYTHON
: "${PRONLORA_BINDS=}"                # extra apptainer --bind list (data, model, scratch)
: "${PRONLORA_PYTHON=}"                # empty: the checkout's .venv if it has one, else python3
if [ -z "$PRONLORA_PYTHON" ]; then
    if [ -x "$PRONLORA_ROOT/.venv/bin/python" ]; then
        PRONLORA_PYTHON=$PRONLORA_ROOT/.venv/bin/python
    else
        PRONLORA_PYTHON=python3
    fi
fi

# --- data, model, runs -----------------------------------------------------------------------
: "${PRONLORA_DATA=$PRONLORA_ROOT/work/speechocean762}"   # corpus (official layout or HF copy)
: "${PRONLORA_DATA_SOURCE=kaldi}"                         # kaldi | hf
: "${PRONLORA_PREPARED=$PRONLORA_ROOT/work/prepared}"
: "${PRONLORA_MODEL=$PRONLORA_ROOT/work/Phi-4-multimodal-instruct}"  # native-format snapshot
: "${PRONLORA_RUNS=$PRONLORA_ROOT/work/runs}"
: "${HF_HOME=$PRONLORA_ROOT/work/hf-cache}"
: "${PRONLORA_CACHE=$PRONLORA_ROOT/work/cache}"           # merged speech snapshots (shared)

export PRONLORA_ROOT PRONLORA_PARTITION PRONLORA_ACCOUNT PRONLORA_QOS PRONLORA_NODES \
    PRONLORA_GPUS_PER_NODE PRONLORA_GRES \
    PRONLORA_CPUS_PER_TASK PRONLORA_MEM PRONLORA_TIME_PREP PRONLORA_TIME_TRAIN \
    PRONLORA_TIME_INFER PRONLORA_TIME_COLLECT PRONLORA_SIGNAL_GRACE_S PRONLORA_CONTAINER \
    PRONLORA_BINDS PRONLORA_PYTHON PRONLORA_DATA PRONLORA_DATA_SOURCE PRONLORA_PREPARED \
    PRONLORA_MODEL PRONLORA_RUNS PRONLORA_CACHE HF_HOME
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

# Slurm reads these at submit time, so a plain `sbatch slurm/<stage>.sbatch` in a shell that
# sourced this file lands in the right partition/account/QOS.
[ -n "$PRONLORA_PARTITION" ] && export SBATCH_PARTITION="$PRONLORA_PARTITION"
[ -n "$PRONLORA_ACCOUNT" ] && export SBATCH_ACCOUNT="$PRONLORA_ACCOUNT"
[ -n "$PRONLORA_QOS" ] && export SBATCH_QOS="$PRONLORA_QOS"
unset _pronlora_here
true

"""Data-parallel training across processes: which engine, how ranks agree, how checkpoints move.

One process per GPU, started by ``torchrun`` (``slurm/lib/train.sh`` runs one torchrun per
node through ``srun``). The engine is a config key (``engine``):

- ``ddp``: plain PyTorch DDP; every rank holds the full optimizer state.
- ``zero2`` (the default with more than one process): DeepSpeed ZeRO-2, optimizer state and
  gradients partitioned; works for bf16 LoRA and nf4 QLoRA (4-bit base weights are frozen,
  so ZeRO never partitions them).
- ``zero3``: DeepSpeed ZeRO-3, also partitions the bf16 base weights; bf16 only (pronlora's
  4-bit loading does not set the bf16 quant storage ZeRO-3 would need to shard nf4 weights).

The JSON files under ``configs/deepspeed/`` are the DeepSpeed configs; their ``auto`` values
are filled by the Trainer from the recipe (micro-batch, accumulation, bf16, clipping).

Checkpoints resume on any process count (ddp, zero2): DDP checkpoints hold the full optimizer
state; a ZeRO-2 checkpoint written by a different number of ranks is converted once to
DeepSpeed's universal format and loaded from there. ZeRO-3 resumes on the same count only.
Switching engine on resume is refused (the optimizer state would be silently dropped).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from pronlora.core.atomic import write_json

log = logging.getLogger(__name__)

DEEPSPEED_ENGINES = {"zero2": "zero2.json", "zero3": "zero3.json"}
PARALLEL_FILE = "parallel.json"  # engine and rank count of a step checkpoint
UNIVERSAL_SUFFIX = "_universal"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def free_port() -> int:
    """A TCP port free on this host now, for a rendezvous of local processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """The torch.distributed environment of a lone process, for DeepSpeed without a launcher.

    DeepSpeed always runs inside a process group; a plain ``python jobs/train.py`` (one GPU, or
    a 1-GPU job resuming a ZeRO-2 run) gets the variables torchrun would have set.
    """
    if "LOCAL_RANK" in os.environ:
        return
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )


def resolve_engine(configured: str, world: int, checkpoint: Path | None) -> str:
    """``auto``: the engine of the checkpoint being resumed, else zero2 on several ranks."""
    if configured != "auto":
        return configured
    if checkpoint is not None:
        return checkpoint_parallel(checkpoint)["engine"]
    return "zero2" if world > 1 else "ddp"


def deepspeed_config(engine: str, load_universal: bool = False) -> dict[str, Any]:
    ds = json.loads(
        (files("pronlora") / "configs" / "deepspeed" / DEEPSPEED_ENGINES[engine]).read_text()
    )
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    return ds


def prepare_cpu_deepspeed() -> None:
    """Let DeepSpeed run over gloo on CPU-only machines (tests, CI).

    accelerate initialises DeepSpeed only on accelerators; a state configured beforehand with
    the gloo backend (then passed on with ``use_configured_state``) makes the Trainer's real
    DeepSpeed path run on CPU processes.
    """
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on one: ranks must stop at the same step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(value: int, device: torch.device) -> int:
    """A count summed over all ranks (every rank must call it at the same point)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def verify_replicas(model: torch.nn.Module, device: torch.device) -> str | None:
    """Under data parallelism, check every rank ends with the same trainable weights.

    The checksums travel as tensors on ``device``: NCCL moves GPU tensors only.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    total = torch.zeros(1, dtype=torch.float64, device=device)
    for p in model.parameters():
        if p.requires_grad:
            w = p.detach().double()
            total += (w.abs().sum() + w.sum()).to(device)
    gathered = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, total)
    values = [float(g) for g in gathered]
    if len(set(values)) != 1:
        raise RuntimeError(f"data-parallel replicas diverged: weight checksums {values}")
    return f"adapter weights identical on all {len(values)} ranks (checksum {values[0]!r})"


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_process_group() -> None:
    """Start the process group before the Trainer does, so ranks can wait for each other."""
    import torch.distributed as dist

    if world_size() == 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        # accelerate names CPU ranks "cpu:<i>", which torch.load rejects as a map_location
        # when a resumed rank loads its optimizer state; plain "cpu" is the same device.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=1))


def shutdown_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --- checkpoints -------------------------------------------------------------------------------
def write_checkpoint_parallel(checkpoint: Path, engine: str, world: int) -> None:
    write_json(checkpoint / PARALLEL_FILE, {"engine": engine, "world_size": world})


def _deepspeed_tag(checkpoint: Path) -> str | None:
    latest = checkpoint / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def checkpoint_parallel(checkpoint: Path) -> dict[str, Any]:
    """Engine and rank count that wrote ``checkpoint``.

    Recorded in ``parallel.json`` since DeepSpeed support; an older checkpoint without it is
    a DDP/single-process one, whose rank count its RNG files tell.
    """
    path = checkpoint / PARALLEL_FILE
    if path.is_file():
        return json.loads(path.read_text())
    if _deepspeed_tag(checkpoint) is not None:
        raise ValueError(f"{checkpoint}: DeepSpeed checkpoint without {PARALLEL_FILE} (incomplete)")
    return {"engine": "ddp", "world_size": len(list(checkpoint.glob("rng_state_*.pth"))) or 1}


def is_complete(checkpoint: Path) -> bool:
    """A DeepSpeed checkpoint is complete once its parallel.json is written (written last)."""
    return (checkpoint / PARALLEL_FILE).is_file() or _deepspeed_tag(checkpoint) is None


def resume_plan(checkpoint: Path, engine: str, world: int) -> bool:
    """Check a resume is possible; True when the DeepSpeed universal form must be loaded."""
    saved = checkpoint_parallel(checkpoint)
    if saved["engine"] != engine:
        raise ValueError(
            f"{checkpoint} was written by engine {saved['engine']!r}, this run uses {engine!r}: "
            f"resume with engine={saved['engine']} (it works on any number of GPUs) or start a "
            "new run dir"
        )
    if engine not in DEEPSPEED_ENGINES or saved["world_size"] == world:
        return False
    if engine == "zero3":
        raise ValueError(
            f"{checkpoint} was written by {saved['world_size']} ZeRO-3 process(es), this run has "
            f"{world}: ZeRO-3 checkpoints resume on the same process count only (DeepSpeed's "
            "universal loading breaks ZeRO-3's parameter prefetch on this model); use zero2 for "
            "runs that change GPU count"
        )
    return True


def ensure_universal(checkpoint: Path) -> None:
    """Convert a DeepSpeed checkpoint to the universal format once (main process only).

    DeepSpeed's own converter writes ``<tag>_universal`` and ``latest_universal``; the
    conversion goes to a temporary dir first, so a killed conversion leaves nothing half-done.
    """
    tag = _deepspeed_tag(checkpoint)
    if tag is None:
        raise ValueError(f"{checkpoint}: no DeepSpeed 'latest' file; not a DeepSpeed checkpoint")
    final = checkpoint / f"{tag}{UNIVERSAL_SUFFIX}"
    if (checkpoint / "latest_universal").is_file() and final.is_dir():
        return
    tmp = checkpoint / f"{tag}{UNIVERSAL_SUFFIX}.partial"
    log.info("converting %s to DeepSpeed's universal format for a new rank count", checkpoint)
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(checkpoint / tag),
        "--output_folder",
        str(tmp),
        "--inject_missing_state",
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"universal conversion of {checkpoint} failed:\n{proc.stderr[-3000:]}")
    # the converter writes 'latest_universal' next to its output folder, naming that folder
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (checkpoint / "latest_universal").write_text(final.name)

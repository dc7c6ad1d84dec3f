"""Data-parallel scaling benchmark: the training stage itself, under torchrun, on 1..N GPUs.

Each point is a real ``jobs/train.py`` run (same code path as a Slurm job) for a fixed number
of optimizer steps at the recipe's effective batch, so the 1-GPU and N-GPU runs see the same
samples per step. Reported per point: tokens/s over all ranks in the steady state (after
``warmup`` steps), seconds per optimizer step, peak GPU memory of rank 0, the scaling
efficiency against 1 GPU of the same engine, and how far the first steps' loss curve is from
the 1-GPU one (it should agree up to reduction-order rounding).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pronlora.core.atomic import read_jsonl
from pronlora.core.distributed import free_port
from pronlora.core.layout import RunDir
from pronlora.devtools.bench import results_heading

# Loss curves of the same samples on different rank counts differ by reduction order only;
# more than this relative gap means the data-parallel setup changed the optimisation.
LOSS_AGREEMENT_RTOL = 0.02


def steady_state(entries: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    """Tokens/s and s/step over the logged steps after ``warmup`` (one entry per step)."""
    timed = [e for e in entries if e["step"] > warmup and e.get("tokens_per_s")]
    if not timed:
        raise ValueError(f"no logged steps after the {warmup} warm-up step(s)")
    seconds = sum(e["tokens"] / e["tokens_per_s"] for e in timed)
    tokens = sum(e["tokens"] for e in timed)
    return {
        "tokens_per_s": round(tokens / seconds, 1),
        "step_s": round(seconds / len(timed), 4),
        "timed_steps": len(timed),
    }


def run_point(
    train_script: Path,
    procs: int,
    config: str,
    overrides: list[str],
    model: Path,
    prepared: Path,
    run_dir: Path,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """One training run of the stage's entry point (``jobs/train.py`` of the checkout) on
    ``procs`` processes under torchrun; its throughput and loss curve."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={procs}",
        f"--master-port={free_port()}",
        str(train_script),
        "--config",
        config,
        "--prepared",
        str(prepared),
        "--model",
        str(model),
        "--run-dir",
        str(run_dir),
        *overrides,
        f"max_steps={steps}",
        "logging_steps=1",
        f"save_steps={10**6}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{procs} process(es) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    entries = [e for e in read_jsonl(RunDir(run_dir).train_log) if "loss" in e]
    return {
        "procs": procs,
        "wall_s": round(wall, 1),
        **steady_state(entries, warmup),
        "peak_gb": max((e.get("gpu_mem_gb", 0.0) for e in entries), default=0.0),
        "losses": [round(e["loss"], 5) for e in entries],
    }


def compare(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scaling efficiency and loss agreement of each point against its 1-process point."""
    base = next((p for p in points if p["procs"] == 1), None)
    for p in points:
        if base is None:
            p["efficiency"] = p["loss_max_rel_diff"] = None
            continue
        p["speedup"] = round(p["tokens_per_s"] / base["tokens_per_s"], 3)
        p["efficiency"] = round(p["speedup"] / p["procs"], 3)
        pairs = zip(p["losses"], base["losses"], strict=True)  # same step count
        p["loss_max_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-9) for a, b in pairs)
        p["loss_agrees"] = p["loss_max_rel_diff"] <= LOSS_AGREEMENT_RTOL
    return points


def markdown(results: dict[str, Any]) -> str:
    lines = [
        *results_heading("Data-parallel scaling", results),
        "Random-weight checkpoint: speeds and memory are real, losses meaningless "
        "(they only have to agree between GPU counts). Each row is `jobs/train.py` under "
        f"torchrun for {results['steps']} optimizer steps at the recipe's effective batch; "
        f"throughput is over all ranks after {results['warmup']} warm-up steps.",
        "",
        "| setup | GPUs | tokens/s | s/step | speedup | efficiency | peak GB (rank 0) "
        "| loss vs 1 GPU (max rel. diff) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for series in results["series"]:
        for p in series["points"]:
            if "error" in p:
                lines.append(f"| {series['setup']} | {p['procs']} | error: {p['error'][:80]} |||||")
                continue
            diff = p.get("loss_max_rel_diff")
            lines.append(
                f"| {series['setup']} | {p['procs']} | {p['tokens_per_s']:,.0f} | {p['step_s']} "
                f"| {p.get('speedup', '-')} | {p.get('efficiency', '-')} | {p['peak_gb']} "
                f"| {'-' if diff is None else f'{diff:.2e}'} |"
            )
    lines += ["", "First losses per run:", ""]
    for series in results["series"]:
        for p in series["points"]:
            if "losses" in p:
                lines.append(f"- {series['setup']}, {p['procs']} GPU(s): {p['losses']}")
    return "\n".join(lines) + "\n"

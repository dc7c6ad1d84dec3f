"""Data-parallel training on CPU: two torchrun processes (gloo) on the tiny checkpoint."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pronlora.atomic import read_jsonl
from pronlora.config import ConfigError, load_config
from pronlora.train import accumulation_steps, train

from .conftest import REPO

OVERRIDES = ["lora.dropout=0.0", "epochs=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accumulation_keeps_the_effective_batch() -> None:
    cfg = load_config("paper_r64")  # 8 x 8 = 64
    assert [accumulation_steps(cfg, w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match="micro_batch: 8 x 16 processes does not divide"):
        accumulation_steps(cfg, 16)


def test_two_ranks_end_identical_and_match_one_process(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            str(REPO / "jobs" / "train.py"),
            "--config",
            "smoke",
            "--prepared",
            str(demo_prepared),
            "--model",
            str(tiny_model),
            "--run-dir",
            str(tmp_path / "ddp"),
            *OVERRIDES,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "adapter weights identical on all 2 ranks" in proc.stderr
    assert train(load_config("smoke", OVERRIDES), demo_prepared, tiny_model, tmp_path / "one") == 0
    # same samples per optimizer step, same loss normalisation: the loss curves agree
    losses = [
        [e["loss"] for e in read_jsonl(tmp_path / run / "train_log.jsonl") if "loss" in e]
        for run in ("ddp", "one")
    ]
    assert len(losses[0]) == len(losses[1]) >= 3
    torch.testing.assert_close(
        torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-3, atol=1e-4
    )
    name = "checkpoints/epoch-1/adapter_model.safetensors"
    a = load_file(str(tmp_path / "ddp" / name))
    b = load_file(str(tmp_path / "one" / name))
    assert a.keys() == b.keys()
    for k in a:  # gloo's reduction order leaves float-level differences after Adam steps
        torch.testing.assert_close(a[k], b[k], rtol=5e-2, atol=5e-4)

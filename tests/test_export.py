"""jobs/export.py: the export round-trips through get_model.py --check and the stages' loaders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pronlora.core.atomic import read_jsonl, write_json
from pronlora.core.config import ConfigError
from pronlora.core.errors import SnapshotError
from pronlora.core.layout import RunDir
from pronlora.infer.batching import generation_collator
from pronlora.infer.models import RunSpec, ensure_run, load_for_inference
from pronlora.model.export import export
from pronlora.model.snapshot import check_snapshot

from .conftest import REPO


def _logits(spec: RunSpec, ckpt: Path | None, rows: list[dict]) -> torch.Tensor:
    """The last 8 positions' logits: every layer and both tasks' weights shape them, and the
    full (rows, prompt, 200k) tensor made each comparison take seconds."""
    loaded = load_for_inference(spec, ckpt)
    batch = generation_collator(loaded, spec.cfg)(rows)
    with torch.no_grad():
        return loaded.model(**batch, logits_to_keep=8).logits


@pytest.mark.slow
def test_export_round_trips_and_carries_a_model_card(
    trained_run: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    # a collect report beside the run: the card quotes its metrics with their intervals
    write_json(
        RunDir(trained_run).report / "metrics.json",
        [
            {
                "run": trained_run.name,
                "checkpoint": "epoch-1",
                "wer": 0.5,
                "ci95": {"wer": [0.4, 0.6]},
            }
        ],
    )
    out = export(trained_run, "epoch-1", tmp_path / "export", merged=True)
    card = (out / "README.md").read_text()
    assert "wer: 0.5 [0.400, 0.600]" in card and "Random weights" in card
    assert "name: smoke" in card and "content hash" in card and '"torch"' in card
    files = json.loads((out / "export.json").read_text())["files"]
    assert "adapter/adapter_model.safetensors" in files and "merged/config.json" in files
    assert not any(name.endswith("training_args.bin") for name in files)  # a pickle

    check_snapshot(out / "merged")  # what jobs/get_model.py --check runs
    spec = ensure_run(trained_run, None, None)
    rows = read_jsonl(demo_prepared / "test.jsonl")[:2]
    trained = _logits(spec, RunDir(trained_run).checkpoint("epoch-1"), rows)
    # the adapter folder loads where a run's checkpoint does, to the same model
    assert torch.equal(_logits(spec, out / "adapter", rows), trained)
    # the merged snapshot, as a base model: the same model up to float rounding
    merged = _logits(RunSpec(spec.cfg, out / "merged"), None, rows)
    base = _logits(spec, None, rows)
    assert torch.allclose(merged, trained, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(base, trained, atol=1e-4, rtol=1e-4)  # the task weights matter

    job = [sys.executable, str(REPO / "jobs" / "export.py"), "--run-dir", str(trained_run)]
    again = subprocess.run(
        [*job, "--checkpoint", "epoch-1", "--out", str(out)], capture_output=True, text=True
    )
    assert again.returncode == 2 and f"--out {out}: exists" in again.stderr
    with pytest.raises(ConfigError, match="no task adapter"):
        export(trained_run, "base", tmp_path / "b")
    # a checkpoint damaged after training is named, and nothing is exported
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_run, damaged, ignore=shutil.ignore_patterns("predictions"))
    adapter = damaged / "checkpoints" / "epoch-1" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-10])
    with pytest.raises(SnapshotError, match=f"{adapter}: truncated or padded"):
        export(damaged, "epoch-1", tmp_path / "d")
    assert not (tmp_path / "d").exists()

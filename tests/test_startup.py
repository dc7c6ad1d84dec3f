"""What a job imports before it can fail, and the packages a model job never imports."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pronlora.core.atomic import write_json
from pronlora.core.config import load_config, to_dict
from pronlora.core.lean_imports import run_quantization, unused_packages

from .conftest import REPO


def _imported(importtime_stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:")
    }


@pytest.mark.parametrize("fault", ["override", "prepared", "snapshot", "run_dir"])
def test_a_refused_training_job_exits_2_before_torch_is_imported(
    fault: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A bad command is refused in about a second, not after 4-10 s of imports, whatever
    input is at fault: the config, the prepared dir, the snapshot or the run dir."""
    prepared = model = tmp_path / "empty"
    model.mkdir()
    run, overrides = tmp_path / "run", ["epochs=1"]
    if fault == "override":
        overrides, expected = ["epochs=banana"], "epochs: expected int, got 'banana'"
    elif fault == "prepared":
        expected = f"--prepared {prepared}: no train.jsonl"
    else:
        prepared = request.getfixturevalue("demo_prepared")
        expected = f"{model}: no config.json; not a model snapshot"
        if fault == "run_dir":  # a run of another setup is in it
            model = request.getfixturevalue("tiny_model")
            saved = to_dict(load_config("smoke", ["epochs=2"]))
            write_json(run / "run.json", {"config": saved, "model": str(model),
                                          "prepared": str(prepared)})  # fmt: skip
            expected = f"--run-dir {run} holds a run with a different setup (epochs differ)"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "jobs" / "train.py"), "--config", "smoke",
         "--prepared", str(prepared), "--model", str(model), "--run-dir", str(run), *overrides],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr[-2000:]
    assert not {"torch", "transformers", "peft"} & _imported(proc.stderr)


def _checkpoint(run: Path, name: str, weights: bytes | None = None) -> Path:
    """A finished checkpoint as the early checks see it: meta.json and a whole (here empty)
    adapter file; ``weights``: other bytes for it."""
    folder = run / "checkpoints" / name
    write_json(folder / "meta.json", {})
    empty = struct.pack("<Q", 2) + b"{}"  # a safetensors file holding no tensors
    (folder / "adapter_model.safetensors").write_bytes(empty if weights is None else weights)
    return folder


@pytest.mark.parametrize("fault", ["checkpoint", "damaged", "prepared", "data", "shard"])
def test_a_decode_job_refuses_any_item_of_its_share_before_decoding_the_first(
    fault: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A worker decodes its items one after the other: a missing epoch-2 must be refused
    before base and epoch-1 are decoded (and before torch is imported), not after."""
    run = tmp_path / "run"
    prepared = request.getfixturevalue("demo_prepared") if fault != "prepared" else tmp_path
    record = {"config": to_dict(load_config("smoke")), "model": str(tmp_path / "model")}
    if fault == "data":
        record["data_content_hash"] = "0" * 64
    write_json(run / "run.json", record)
    for name in ("epoch-1", "epoch-2"):
        (run / "checkpoints" / name).mkdir(parents=True)
        _checkpoint(run, name, b"\0" * 4 if fault == "damaged" and name == "epoch-2" else None)
    if fault == "checkpoint":  # its weights are there, its meta.json (written last) is not
        (run / "checkpoints" / "epoch-2" / "meta.json").unlink()
    share = ["--checkpoint", "base,epoch-1,epoch-2", "--num-shards", "2"]
    if fault == "shard":
        share = ["--checkpoint", "epoch-1", "--shard", "2", "--num-shards", "2"]
    expected = {
        "checkpoint": f"--checkpoint epoch-2: {run / 'checkpoints' / 'epoch-2'} is missing",
        "damaged": f"{run / 'checkpoints' / 'epoch-2' / 'adapter_model.safetensors'}: truncated",
        "prepared": f"--prepared {tmp_path}: no test.jsonl",
        "data": "was trained on data of hash 000000000000",
        "shard": "--shard 2 outside 0..1",
    }[fault]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "jobs" / "infer.py"), "--run-dir",
         str(run), "--prepared", str(prepared), *share],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr[-2000:]
    assert not {"torch", "transformers", "peft"} & _imported(proc.stderr)
    assert not (run / "predictions").exists()


def test_a_submitit_decode_task_refuses_any_item_of_its_share_before_decoding_the_first(
    demo_prepared: Path, tmp_path: Path
) -> None:
    """submitit's array task runs the same worker loop as jobs/infer.py, in its own entry."""
    from pronlora.core.config import ConfigError
    from pronlora.launch.submitit_backend import InferTask

    run = tmp_path / "run"
    record = {"config": to_dict(load_config("smoke")), "model": str(tmp_path / "model")}
    write_json(run / "run.json", record)
    _checkpoint(run, "epoch-1")
    task = InferTask(str(run), str(demo_prepared), ["base", "epoch-1", "epoch-2"], 1, 1, 1)
    missing = f"--checkpoint epoch-2: {run / 'checkpoints' / 'epoch-2'} is missing"
    with pytest.raises(ConfigError, match=missing):
        task(0)
    assert not (run / "predictions").exists()


def test_a_bf16_process_never_imports_bitsandbytes_or_datasets() -> None:
    """What keep_out promises: peft and transformers then see neither as installed."""
    code = (
        "import json, sys\n"
        "from pronlora.core.lean_imports import keep_out, unused_packages\n"
        "keep_out(unused_packages('bf16'))\n"
        "import peft, transformers.trainer\n"
        "from peft.import_utils import is_bnb_available\n"
        "from transformers.utils import is_bitsandbytes_available, is_datasets_available\n"
        "loaded = [m for m in ('bitsandbytes', 'datasets') if sys.modules.get(m)]\n"
        "print(json.dumps({'loaded': loaded,"
        " 'peft_bnb': is_bnb_available(), 'tf_bnb': is_bitsandbytes_available(),"
        " 'tf_datasets': is_datasets_available()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen == {"loaded": [], "peft_bnb": False, "tf_bnb": False, "tf_datasets": False}
    assert "bitsandbytes" not in unused_packages("nf4")  # a 4-bit job keeps it
    assert "bitsandbytes" not in unused_packages(None)  # as does one not known yet


def test_a_decode_job_reads_its_runs_quantization_before_the_imports(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_quantization(str(run), "smoke") == "bf16"  # a fresh run dir: --config
    assert run_quantization(str(run)) is None
    run.mkdir()
    cfg = to_dict(load_config("smoke", ["quantization=nf4", "dtype=bf16"]))
    write_json(run / "run.json", {"config": cfg, "model": "m"})
    assert run_quantization(str(run), "smoke") == "nf4"  # run.json wins, as in the stage
    (run / "run.json").write_text("{not json")
    assert run_quantization(str(run), "smoke") is None  # the stage names the fault

"""Data-parallel training on CPU: torchrun processes over gloo on the tiny checkpoint.

DDP, DeepSpeed ZeRO-2 and ZeRO-3 run through the same Trainer code path as on GPUs; the
single-process run is the reference every engine and rank count must reproduce.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pronlora.core.atomic import read_jsonl
from pronlora.core.config import ConfigError, accumulation_steps, load_config
from pronlora.core.distributed import free_port, resume_plan, write_checkpoint_parallel
from pronlora.train.recipe import train

from .conftest import REPO

OVERRIDES = ["lora.dropout=0.0", "epochs=1"]
ADAPTER = "checkpoints/epoch-1/adapter_model.safetensors"


pytestmark = pytest.mark.slow  # several processes each: the full suite runs them


def torchrun(nproc: int, prepared: Path, model: Path, run: Path, *extra: str) -> str:
    """jobs/train.py under torchrun (nproc 0: plain python); returns stderr (asserting success)."""
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    launcher += [f"--master_port={free_port()}"]
    proc = subprocess.run(
        [
            sys.executable,
            *(launcher if nproc else []),
            str(REPO / "jobs" / "train.py"),
            "--config",
            "smoke",
            "--prepared",
            str(prepared),
            "--model",
            str(model),
            "--run-dir",
            str(run),
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def losses(run: Path) -> list[float]:
    return [e["loss"] for e in read_jsonl(run / "train_log.jsonl") if "loss" in e]


def assert_same_adapter(a_run: Path, b_run: Path, atol: float) -> None:
    a, b = load_file(str(a_run / ADAPTER)), load_file(str(b_run / ADAPTER))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol)


def _reference(tiny_model: Path, demo_prepared: Path, tmp_path_factory, *extra: str) -> Path:
    run = tmp_path_factory.mktemp("reference") / "one"
    assert train(load_config("smoke", [*OVERRIDES, *extra]), demo_prepared, tiny_model, run) == 0
    return run


@pytest.fixture(scope="module")
def reference(tiny_model: Path, demo_prepared: Path, tmp_path_factory) -> Path:
    return _reference(tiny_model, demo_prepared, tmp_path_factory)


@pytest.fixture(scope="module")
def reference_uncached(tiny_model: Path, demo_prepared: Path, tmp_path_factory) -> Path:
    """Audio embedded in every pass, as under ZeRO-3 (audio_cache.why_not_cached)."""
    return _reference(tiny_model, demo_prepared, tmp_path_factory, "cache_audio_embeddings=false")


def test_accumulation_keeps_the_effective_batch() -> None:
    cfg = load_config("paper_r64", ["micro_batches_per_pass=1"])  # 8 x 8 = 64, one per pass
    assert [accumulation_steps(cfg, w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match="micro_batch: 8 x 16 processes does not divide"):
        accumulation_steps(cfg, 16)


# ddp on 2 ranks is compared with one process by the ddp-1-to-2 resume test below
@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_two_ranks_end_identical_and_match_one_process(
    engine: str, tiny_model: Path, demo_prepared: Path, request, tmp_path: Path
) -> None:
    reference = request.getfixturevalue("reference_uncached" if engine == "zero3" else "reference")
    run = tmp_path / engine
    log = torchrun(2, demo_prepared, tiny_model, run, *OVERRIDES, f"engine={engine}")
    assert f"2 process(es), engine {engine}" in log
    cached = "audio embeddings recomputed in every pass" not in log
    assert cached == (engine != "zero3"), log[-3000:]
    if engine != "zero3":  # ZeRO-3 ranks hold different partitions by design
        assert "adapter weights identical on all 2 ranks" in log
    # same samples per optimizer step, same loss normalisation: the loss curves agree
    assert len(losses(run)) == len(losses(reference)) >= 3
    torch.testing.assert_close(
        torch.tensor(losses(run)), torch.tensor(losses(reference)), rtol=1e-5, atol=1e-5
    )
    assert_same_adapter(run, reference, atol=1e-5)
    saved = json.loads((run / "trainer" / "checkpoint-4" / "parallel.json").read_text())
    assert saved == {"engine": engine, "world_size": 2}


@pytest.fixture(scope="module")
def stopped(tiny_model: Path, demo_prepared: Path, tmp_path_factory):
    """Runs stopped by the stop file after their first step, made once per (engine, count)."""
    made: dict[tuple[str, int], Path] = {}

    def get(engine: str, first: int) -> Path:
        if (engine, first) in made:
            return made[(engine, first)]
        run = tmp_path_factory.mktemp(f"stopped-{engine}-{first}") / "run"
        run.mkdir()
        stop, marker = run / "stop.request", run / "requeue.json"
        stop.touch()  # present from the start: every rank stops after the first optimizer step
        flags = ["--stop-file", str(stop), "--requeue-marker", str(marker)]
        log = torchrun(
            first, demo_prepared, tiny_model, run, *flags, *OVERRIDES, f"engine={engine}"
        )
        assert "stop requested (stop file)" in log
        assert json.loads(marker.read_text())["global_step"] == 1
        assert [p.name for p in (run / "trainer").glob("checkpoint-*")] == ["checkpoint-1"]
        assert not (run / "checkpoints" / "epoch-1").exists()
        stop.unlink()
        made[(engine, first)] = run
        return run

    return get


@pytest.mark.parametrize(
    ("engine", "first", "then"),
    [("zero2", 2, 1), ("zero2", 2, 0), ("ddp", 1, 2)],
    ids=["zero2-2-to-1", "zero2-2-to-plain-python", "ddp-1-to-2"],
)
def test_stop_file_then_resume_on_another_process_count(
    engine: str,
    first: int,
    then: int,
    tiny_model: Path,
    demo_prepared: Path,
    reference: Path,
    stopped,
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped(engine, first), run)  # each resume starts from the same stop
    # engine left at auto: the resumed run follows the checkpoint's engine
    log = torchrun(then, demo_prepared, tiny_model, run, *OVERRIDES)
    assert f"{max(then, 1)} process(es), engine {engine}" in log
    assert ("universal form" in log) == (engine == "zero2")
    # optimizer state, schedule and data position carried over: the uninterrupted result
    assert_same_adapter(run, reference, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor(losses(run)[-3:]), torch.tensor(losses(reference)[-3:]), rtol=0, atol=1e-6
    )


def test_resume_refuses_an_engine_switch_and_a_zero3_rank_change(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-8"
    ckpt.mkdir()
    write_checkpoint_parallel(ckpt, "ddp", 2)
    assert resume_plan(ckpt, "ddp", 4) is False  # full optimizer state on every rank
    with pytest.raises(ValueError, match="engine 'ddp', this run uses 'zero2'.*engine=ddp"):
        resume_plan(ckpt, "zero2", 2)
    write_checkpoint_parallel(ckpt, "zero2", 2)
    assert resume_plan(ckpt, "zero2", 2) is False
    assert resume_plan(ckpt, "zero2", 8) is True  # through DeepSpeed's universal format
    write_checkpoint_parallel(ckpt, "zero3", 2)
    with pytest.raises(ValueError, match="same process count only"):
        resume_plan(ckpt, "zero3", 4)


def test_engine_combinations_are_checked_before_any_run() -> None:
    with pytest.raises(ConfigError, match="zero3 .*not supported with nf4"):
        load_config("paper_r64", ["quantization=nf4", "engine=zero3"])
    with pytest.raises(ConfigError, match="zero3 partitions the unfrozen"):
        load_config("paper_r64", ["strategy=unfreeze", "engine=zero3"])
    with pytest.raises(ConfigError, match="engine: 'fsdp' is not one of"):
        load_config("paper_r64", ["engine=fsdp"])
    assert load_config("paper_r64", ["quantization=nf4", "engine=zero2"]).engine == "zero2"


def _agree(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from pronlora.core.distributed import any_rank

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # only rank 1 was signalled; both must stop
    Path(out, f"rank{rank}").write_text(str(any_rank(rank == 1, torch.device("cpu"))))
    dist.destroy_process_group()


def test_a_stop_request_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_agree, args=(free_port(), str(tmp_path)), nprocs=2)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["True", "True"]


def test_scaling_report_measures_the_steady_state_and_the_loss_gap() -> None:
    from pronlora.devtools.bench_scaling import compare, steady_state

    # 2 warm-up steps (slow), then 3 steps of 1,000 tokens in 0.5 s each
    log = [{"step": s, "tokens": 1000, "tokens_per_s": 100.0} for s in (1, 2)]
    log += [{"step": s, "tokens": 1000, "tokens_per_s": 2000.0} for s in (3, 4, 5)]
    assert steady_state(log, warmup=2) == {"tokens_per_s": 2000.0, "step_s": 0.5, "timed_steps": 3}
    with pytest.raises(ValueError, match="no logged steps after the 5 warm-up"):
        steady_state(log, warmup=5)
    one = {"procs": 1, "tokens_per_s": 1000.0, "losses": [10.0, 9.0]}
    four = {"procs": 4, "tokens_per_s": 3000.0, "losses": [10.0, 9.9]}
    compare([one, four])
    assert four["speedup"] == 3.0 and four["efficiency"] == 0.75
    assert four["loss_max_rel_diff"] == pytest.approx(0.1) and four["loss_agrees"] is False


def test_scaling_benchmark_checks_its_arguments_first(tmp_path: Path) -> None:
    script = str(REPO / "jobs" / "bench_scaling.py")
    args = [sys.executable, script, "--model", str(tmp_path / "none"), "--config", "smoke"]
    proc = subprocess.run([*args, "--steps", "3", "--warmup", "3"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--steps 3 must exceed --warmup 3" in proc.stderr
    proc = subprocess.run(
        [*args, "--engines", "zero3", "--quantization", "nf4", "--set", "dtype=bf16"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "zero3 shards bf16 base weights" in proc.stderr

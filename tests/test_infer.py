import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pronlora.core.atomic import read_jsonl
from pronlora.core.config import ConfigError, load_config
from pronlora.core.decode_grid import worker_items
from pronlora.core.layout import RunDir
from pronlora.infer.batching import decode_batches
from pronlora.infer.shard_file import shard_paths
from pronlora.infer.stage import BASE

from .conftest import REPO


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "infer.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


def test_shards_deal_out_the_splits_decode_batches_whole() -> None:
    """Every shard count decodes the same batches (the file's order aside), each id once."""
    rows = [
        {"id": f"{i:09d}-{t}", "task": t, "duration_s": 1 + i % 7, "prompt": "x" * (i % 5)}
        for i in range(500)
        for t in ("APA", "MDD")
    ]

    def batches(rows: list[dict], shards: int) -> list[list[str]]:
        dealt = [decode_batches(rows, 32, s, shards) for s in range(shards)]
        assert min(map(len, dealt)) >= len(rows) // 32 // shards  # about even
        return sorted([r["id"] for r in b] for shard in dealt for b in shard)

    one = batches(rows, 1)
    assert sorted(i for b in one for i in b) == sorted(r["id"] for r in rows)
    assert all(len({i.split("-")[1] for i in b}) == 1 for b in one)  # one task a batch
    assert batches(rows, 4) == one == batches(list(reversed(rows)), 3)


def test_workers_cover_the_grid_once_whatever_the_split() -> None:
    grid = ["base", "epoch-1", "epoch-2"]
    everything = [(c, s) for s in range(2) for c in grid]
    # one worker per shard (the plan's default): every checkpoint of its shard, one load
    assert [worker_items(grid, 2, w, 2) for w in range(2)] == [
        [(c, s) for c in grid] for s in (0, 1)
    ]
    # one array task per item, as in a 6-task array
    assert [worker_items(grid, 2, t, 6) for t in range(6)] == [[item] for item in everything]
    # contiguous blocks: a worker's items are consecutive checkpoints of as few shards as can be
    assert worker_items(grid, 2, 0, 3) == [("base", 0), ("epoch-1", 0)]
    assert [len(worker_items(grid, 2, w, 4)) for w in range(4)] == [2, 2, 1, 1]
    # 2 array tasks x 2 GPUs, and one 4-GPU job: every item exactly once
    for workers in (4, 1, 5):
        dealt = [i for w in range(workers) for i in worker_items(grid, 2, w, workers)]
        assert sorted(dealt) == sorted(everything), workers
    with pytest.raises(ConfigError, match="worker 6 outside 0..5"):
        worker_items(grid, 2, 6, 6)
    assert worker_items(grid, 2, 7, 8) == []  # a spare GPU


@pytest.mark.slow
def test_two_shards_cover_every_test_id_once(trained_run: Path, demo_prepared: Path) -> None:
    for task_id in (0, 1):  # as a Slurm array: the shard comes from SLURM_ARRAY_TASK_ID
        proc = _run(
            [
                "--run-dir",
                str(trained_run),
                "--checkpoint",
                "epoch-1",
                "--prepared",
                str(demo_prepared),
                "--num-shards",
                "2",
            ],
            env={"SLURM_ARRAY_TASK_ID": str(task_id)},
        )
        assert proc.returncode == 0, proc.stderr
    rows = []
    for shard in (0, 1):
        out, done = shard_paths(trained_run, "epoch-1", shard, 2)
        part = read_jsonl(out)
        assert json.loads(done.read_text())["instances"] == len(part)
        expected_ids = {
            r["id"]
            for b in decode_batches(read_jsonl(demo_prepared / "test.jsonl"), 32, shard, 2)
            for r in b
        }
        assert {r["id"] for r in part} == expected_ids
        rows += part
    ids = [r["id"] for r in rows]
    expected = {r["id"] for r in read_jsonl(demo_prepared / "test.jsonl")}
    assert len(ids) == len(set(ids)) and set(ids) == expected
    for r in rows:
        assert set(r) == {"id", "utt_id", "task", "output", "parsed", "parse_error"}
        assert (r["parsed"] is None) <= (r["parse_error"] is not None)


@pytest.mark.slow
def test_gpus_of_one_job_split_the_grid(
    trained_run: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    # one job with 2 GPUs, not an array: worker i takes the i-th contiguous block of the grid
    # (one shard of both checkpoints: one load, then the epoch swapped in)
    run = tmp_path / "run"  # no shard decoded by another test of the session
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("predictions"))
    outs = []
    for worker in (0, 1):
        proc = _run(
            [
                "--run-dir",
                str(run),
                "--checkpoint",
                "base,epoch-1",
                "--prepared",
                str(demo_prepared),
                "--num-shards",
                "2",
                "--gpus-per-task",
                "2",
                "--local-worker",
                str(worker),
            ]
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    for worker, out in enumerate(outs):
        assert f"shard {worker}/2 of base" in out and f"shard {worker}/2 of epoch-1" in out
        assert "model loads: 1, checkpoints swapped in: 1" in out, out
    for ckpt in ("base", "epoch-1"):
        for shard in (0, 1):
            assert shard_paths(run, ckpt, shard, 2)[1].is_file()


def test_worker_arguments_are_checked(trained_run: Path, demo_prepared: Path) -> None:
    base = ["--run-dir", str(trained_run), "--prepared", str(demo_prepared)]
    proc = _run([*base, "--checkpoint", "epoch-1", "--gpus-per-task", "2", "--local-worker", "2"])
    assert proc.returncode == 2 and "--local-worker 2 outside 0..1" in proc.stderr
    proc = _run([*base, "--checkpoint", "base,epoch-1", "--shard", "0"])
    assert proc.returncode == 2 and "--shard decodes one checkpoint" in proc.stderr


@pytest.mark.slow
def test_killed_shard_resumes_to_the_same_lines(trained_run: Path, demo_prepared: Path) -> None:
    args = ["--checkpoint", "epoch-1", "--prepared", str(demo_prepared), "--shard", "0"]
    full = _run(["--run-dir", str(trained_run), *args])
    assert full.returncode == 0, full.stderr
    reference, _ = shard_paths(trained_run, "epoch-1", 0, 1)
    lines = reference.read_text().splitlines(keepends=True)
    assert len(lines) >= 4
    # what a kill leaves: a few finished lines, a half-written one, no completion marker
    killed = trained_run.parent / "killed"
    killed.mkdir()
    for name in ("run.json", "config.yaml"):
        (killed / name).write_bytes((trained_run / name).read_bytes())
    (killed / "checkpoints").symlink_to(trained_run / "checkpoints")
    out, done = shard_paths(killed, "epoch-1", 0, 1)
    out.parent.mkdir(parents=True)
    out.write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    # lines whose decoding settings are unknown are not continued under today's
    settings = RunDir(killed).shard_settings("epoch-1", 0, 1)
    proc = _run(["--run-dir", str(killed), *args])
    assert proc.returncode == 2 and f"lines written without {settings.name}" in proc.stderr
    assert "dropping a truncated last line" in proc.stderr
    settings.write_text("[]")  # a settings file edited into something else is named
    proc = _run(["--run-dir", str(killed), *args])
    assert proc.returncode == 2 and f"{settings}: not a shard's decoding settings" in proc.stderr
    # nor under other ones (another pronlora, an edited run.json): the changed key is named
    reference_settings = RunDir(trained_run).shard_settings("epoch-1", 0, 1)
    before = json.loads(reference_settings.read_text())
    settings.write_text(json.dumps({**before, "merge_adapter": not before["merge_adapter"]}))
    proc = _run(["--run-dir", str(killed), *args])
    assert proc.returncode == 2
    assert (
        f"merge_adapter: {not before['merge_adapter']} -> {before['merge_adapter']}" in proc.stderr
    )
    assert out.read_text() == "".join(lines[:5])  # nothing written (the cut line dropped)
    # what a kill leaves: the settings were written before the first line
    settings.write_bytes(reference_settings.read_bytes())
    proc = _run(["--run-dir", str(killed), *args])
    assert proc.returncode == 0, proc.stderr
    assert _lines(out) == _lines(reference)
    assert done.is_file()
    again = _run(["--run-dir", str(killed), *args])
    assert "nothing to do" in again.stderr and _lines(out) == _lines(reference)
    done.write_text(done.read_text()[:20])  # a summary cut short by hand: named, no traceback
    again = _run(["--run-dir", str(killed), *args])
    assert again.returncode == 2 and f"{done}: not valid JSON" in again.stderr, again.stderr


@pytest.mark.slow
def test_base_checkpoint_needs_config_for_a_fresh_run_dir(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    args = [
        "--run-dir",
        str(tmp_path / "base"),
        "--checkpoint",
        BASE,
        "--prepared",
        str(demo_prepared),
    ]
    proc = _run(args)
    assert proc.returncode == 2 and "give --config and --model" in proc.stderr
    proc = _run([*args, "--config", "smoke", "--model", str(tiny_model)])
    assert proc.returncode == 0, proc.stderr
    out, _ = shard_paths(tmp_path / "base", BASE, 0, 1)
    assert len(read_jsonl(out)) == len(read_jsonl(demo_prepared / "test.jsonl"))


def test_missing_checkpoint_is_named(trained_run: Path, demo_prepared: Path) -> None:
    proc = _run(
        ["--run-dir", str(trained_run), "--checkpoint", "epoch-7", "--prepared", str(demo_prepared)]
    )
    assert proc.returncode == 2
    assert "epoch-7" in proc.stderr and "missing or incomplete" in proc.stderr


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_a_worker_swaps_each_next_checkpoint_in_as_a_fresh_load_has_it(
    trained_run: Path, tmp_path: Path
) -> None:
    """One load per worker: each next checkpoint of the run is swapped into the merged model,
    weight for weight what a fresh load of it holds (a merge is not undone by subtraction), and
    an unfreeze run drops its audio embeddings at each swap."""
    from safetensors.torch import load_file, save_file

    from pronlora.core.layout import UNFROZEN_FILE
    from pronlora.infer.models import Models, ensure_run
    from pronlora.model.load import load_model, unfrozen_state

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    epochs = [run / "checkpoints" / "epoch-1", run / "checkpoints" / "epoch-2"]
    shutil.copytree(epochs[0], epochs[1])
    g = torch.Generator().manual_seed(0)
    adapter = epochs[1] / "adapter_model.safetensors"
    state = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in load_file(adapter).items()}
    save_file(state, adapter)
    spec = ensure_run(run, None, None)
    worker = Models(swap=True)
    worker.get(spec, None)
    for ckpt in (epochs[0], epochs[1]):  # the second undoes a non-zero merge
        swapped = _state(worker.get(spec, ckpt).model)
        fresh = _state(Models().get(spec, ckpt).model)
        assert [k for k in fresh if not torch.equal(fresh[k], swapped[k])] == [], ckpt
    assert (worker.loads, worker.swaps) == (1, 2)
    worker.audio.embeds["clip"] = torch.zeros(1)
    worker.get(spec, epochs[0])
    assert "clip" in worker.audio.embeds  # no LoRA changes the audio embedding
    bad = run / "checkpoints" / "epoch-3"  # an adapter file that does not fit: refused, named
    shutil.copytree(epochs[1], bad)
    save_file({k.replace("lora_A", "lora_X"): v for k, v in state.items()}, bad / adapter.name)
    with pytest.raises(ConfigError, match=f"{bad / adapter.name}: adapter keys do not fit"):
        worker.get(spec, bad)

    # unfreeze: the checkpoints also carry the audio modules' weights
    meta = json.loads((run / "run.json").read_text())
    meta["config"]["strategy"] = "unfreeze"
    (run / "run.json").write_text(json.dumps(meta))
    spec = ensure_run(run, None, None)
    audio = unfrozen_state(load_model(spec.cfg, spec.model_dir, trainable=False).model)
    for i, ckpt in enumerate(epochs):
        save_file({k: v + 0.01 * (i + 1) for k, v in audio.items()}, ckpt / UNFROZEN_FILE)
    worker = Models(swap=True)
    worker.get(spec, epochs[0])
    worker.audio.embeds["clip"] = torch.zeros(1)
    swapped = _state(worker.get(spec, epochs[1]).model)
    assert "clip" not in worker.audio.embeds
    fresh = _state(Models().get(spec, epochs[1]).model)
    assert [k for k in fresh if not torch.equal(fresh[k], swapped[k])] == []
    worker.get(spec, None)
    assert (worker.loads, worker.swaps) == (2, 1)  # the untrained audio modules load afresh


def test_merged_adapter_generates_the_same_tokens(trained_run: Path, demo_prepared: Path) -> None:
    from dataclasses import replace

    from pronlora.infer.generation import generate
    from pronlora.infer.models import ensure_run, load_for_inference

    spec = ensure_run(trained_run, None, None)
    rows = [r for r in read_jsonl(demo_prepared / "test.jsonl") if r["task"] == "MDD"][:3]
    ckpt = trained_run / "checkpoints" / "epoch-1"
    merged = load_for_inference(spec, ckpt)
    plain_cfg = replace(spec.cfg, infer=replace(spec.cfg.infer, merge_adapter=False))
    plain = load_for_inference(replace(spec, cfg=plain_cfg), ckpt)
    assert not hasattr(merged.model, "peft_config") and hasattr(plain.model, "peft_config")
    assert generate(merged, spec.cfg, rows) == generate(plain, plain_cfg, rows)


@pytest.mark.slow
def test_a_worker_loads_a_checkpoint_once_and_benchmarks_decode_real_lengths(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    from pronlora.infer.generation import generate
    from pronlora.infer.models import Models
    from pronlora.infer.stage import run_shard

    rows = read_jsonl(demo_prepared / "test.jsonl")
    lengths = {r["id"]: 3 + i % 5 for i, r in enumerate(rows)}  # as a bench would ask
    models = Models()
    for shard in (0, 1):  # two shards of one checkpoint, as consecutive items of one worker
        summary = run_shard(
            tmp_path / "run",
            BASE,
            demo_prepared,
            "test",
            shard,
            2,
            "smoke",
            str(tiny_model),
            models=models,
            decode_lengths=lengths,
        )
        assert summary["instances"] > 0
    assert models.loads == 1
    cfg = load_config("smoke")
    batch = [r for r in rows if r["task"] == "MDD"][:3]
    answers = generate(models.loaded, cfg, batch, decode_lengths=lengths)
    assert [n for _, n in answers] == [lengths[r["id"]] for r in batch]
    # without the benchmark's lengths the same rows run to their own stop or the cap
    assert [n for _, n in generate(models.loaded, cfg, batch)] != [lengths[r["id"]] for r in batch]


def _run_with_batch_size(trained_run: Path, dest: Path, batch_size: int) -> Path:
    """A copy of the trained run whose run.json decodes in batches of ``batch_size``."""
    dest.mkdir(parents=True)
    for name in ("run.json", "versions.json", "checkpoints"):
        src = trained_run / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    saved = json.loads((dest / "run.json").read_text())
    saved["config"]["infer"]["batch_size"] = batch_size
    (dest / "run.json").write_text(json.dumps(saved))
    return dest


@pytest.mark.slow
def test_answers_and_clip_embeddings_do_not_depend_on_batch_size_or_shards(
    trained_run: Path, demo_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: the audio embeddings the language model is given, and every answer, are the
    same bits whatever infer.batch_size and the shard count. Embeddings are compared, not only
    answers (a tiny model's greedy answers hide most differences)."""
    import torch

    import pronlora.infer.stage as infer
    from pronlora.infer.batching import generation_collator
    from pronlora.infer.models import Models
    from pronlora.model.audio_cache import multimodal_model

    given: dict[str, dict[str, torch.Tensor]] = {}  # run -> clip -> rows the decoder got
    batches: dict[str, set[frozenset[str]]] = {}  # run -> the decode batches
    state: dict = {}
    real_generate = infer.generate  # the name run_shard calls

    def recording_generate(loaded, cfg, batch_rows, batch=None, *args, **kwargs):
        if state.get("model") is not loaded.model:  # each shard's process loads its own
            if "hook" in state:
                state.pop("hook").remove()
            layer = multimodal_model(loaded.model).layers[0]  # sees the prompt's embeddings
            state["hook"] = layer.register_forward_pre_hook(record, with_kwargs=True)
            state["model"] = loaded.model
        batches.setdefault(state["run"], set()).add(frozenset(r["id"] for r in batch_rows))
        collated = generation_collator(loaded, cfg)(batch_rows)  # the same prompt layout
        state.update(
            ids=collated["input_ids"], rows=batch_rows, audio_id=loaded.tokenizer.audio_token_id
        )
        return real_generate(loaded, cfg, batch_rows, batch, *args, **kwargs)

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        ids = state["ids"]
        if hidden.shape[:2] != ids.shape:  # a decoding step, not the prompt
            return
        for i, row in enumerate(state["rows"]):
            clip_rows = hidden[i][ids[i] == state["audio_id"]].detach().cpu().clone()
            seen = given.setdefault(state["run"], {})
            if row["audio"] in seen:  # its APA and MDD instance start from the same rows
                assert torch.equal(seen[row["audio"]], clip_rows), row["id"]
            seen[row["audio"]] = clip_rows

    monkeypatch.setattr(infer, "generate", recording_generate)
    answers = {}
    for batch_size, shards in ((1, 1), (7, 1), (256, 1), (7, 3), (1, 3)):
        state["run"] = key = f"batch {batch_size}, {shards} shards"
        run = _run_with_batch_size(trained_run, tmp_path / f"b{batch_size}s{shards}", batch_size)
        for shard in range(shards):  # each shard its own process, as array tasks are
            models = Models()
            infer.run_shard(run, "epoch-1", demo_prepared, "test", shard, shards, models=models)
        state.pop("hook").remove()
        state.pop("model")
        lines = [
            json.loads(line)
            for f in sorted((run / "predictions" / "epoch-1").glob("shard-*.jsonl"))
            for line in f.read_text().splitlines()
        ]
        answers[key] = {r["id"]: r["output"] for r in lines}
    reference = "batch 1, 1 shards"
    test_rows = read_jsonl(demo_prepared / "test.jsonl")
    assert set(answers[reference]) == {r["id"] for r in test_rows}
    assert set(given[reference]) == {r["audio"] for r in test_rows}
    # the shard count changes no decode batch (bf16 kernels round per batch shape on a GPU)
    assert batches["batch 7, 3 shards"] == batches["batch 7, 1 shards"]
    assert batches["batch 1, 3 shards"] == batches[reference]
    for key in answers:
        assert answers[key] == answers[reference], key
        assert given[key].keys() == given[reference].keys(), key
        for clip, emb in given[reference].items():
            assert torch.equal(given[key][clip], emb), (key, clip)


@pytest.mark.slow
def test_the_encoder_depends_on_its_batch_and_cached_decoding_equals_the_models_own(
    trained_run: Path, demo_prepared: Path
) -> None:
    """Why the clip groups exist (a clip embedded alone differs from the same clip in a padded
    batch), and that decoding from the embeddings is the model's own decoding when the batch
    is the clips' group."""
    import torch

    from pronlora.infer.generation import generate
    from pronlora.infer.models import Models, ensure_run
    from pronlora.model.audio_cache import clip_groups

    spec = ensure_run(trained_run, None, None)
    rows = read_jsonl(demo_prepared / "test.jsonl")
    models = Models()
    loaded = models.get(spec, trained_run / "checkpoints" / "epoch-1")
    (group,) = clip_groups(rows)  # the mini test split is one group: one encoder batch
    audio = models.embed_clips(spec.cfg, rows, set(group))
    alone = Models()
    alone.loaded, alone.key = loaded, models.key
    first = min(group, key=lambda c: next(r["duration_s"] for r in rows if r["audio"] == c))
    by_itself = alone.embed_clips(spec.cfg, [r for r in rows if r["audio"] == first], {first})
    assert not torch.equal(by_itself.embeds[first], audio.embeds[first])  # padding leaks in
    apa = sorted((r for r in rows if r["task"] == "APA"), key=lambda r: group.index(r["audio"]))
    assert [r["audio"] for r in apa] == group
    assert generate(loaded, spec.cfg, apa, audio=audio) == generate(loaded, spec.cfg, apa)


@pytest.mark.slow
def test_a_checkpoint_decodes_with_its_own_trained_weights(
    trained_run: Path, demo_prepared: Path
) -> None:
    """Issue 27: inference puts the epoch's adapter into the model. Reference: the adapter file
    merged by hand (W + alpha/r * B @ A, read with safetensors, no PEFT loader); the epoch's
    logits equal it and differ from the base model's."""
    import torch
    from safetensors.torch import load_file

    from pronlora.infer.batching import generation_collator
    from pronlora.infer.models import ensure_run, load_for_inference

    spec = ensure_run(trained_run, None, None)
    ckpt = trained_run / "checkpoints" / "epoch-1"
    rows = [r for r in read_jsonl(demo_prepared / "test.jsonl") if r["task"] == "APA"][:3]

    def last_logits(loaded) -> torch.Tensor:
        batch = generation_collator(loaded, spec.cfg)(rows)
        with torch.no_grad():
            return loaded.model(**batch).logits[:, -1].float()

    epoch = last_logits(load_for_inference(spec, ckpt))
    base = load_for_inference(spec, None)
    base_logits = last_logits(base)
    adapter = load_file(str(ckpt / "adapter_model.safetensors"))
    config = json.loads((ckpt / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    modules = dict(base.model.named_modules())
    merged = 0
    with torch.no_grad():
        for key, a in adapter.items():
            if ".lora_A." not in key:
                continue
            b = adapter[key.replace(".lora_A.", ".lora_B.")]
            name = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            weight = modules[name].weight
            weight += (scale * b.float() @ a.float()).to(weight.dtype)
            merged += 1
    assert merged == len(adapter) // 2 > 0
    reference = last_logits(base)
    torch.testing.assert_close(epoch, reference, rtol=1e-4, atol=1e-4)
    assert (epoch - base_logits).abs().max() > 100 * (epoch - reference).abs().max()


def test_the_rates_bench_decodes_a_checkpoint_at_its_targets_lengths(
    trained_run: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """bench/rates.sh's decode job (device time is scarce: it must not first fail on a GPU)."""
    from pronlora.devtools.bench import target_lengths
    from pronlora.model.load import load_tokenizer

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("predictions"))
    script = REPO / "bench" / "infer_real_lengths.py"
    args = ["--run-dir", str(run), "--checkpoint", "base,epoch-1", "--prepared", str(demo_prepared)]

    def bench() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )

    proc = bench()
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, summary = (json.loads(x) for x in proc.stdout.strip().splitlines()[-2:])
    assert (first["checkpoint"], summary["checkpoint"]) == ("base", "epoch-1")
    assert "swapped" in proc.stderr  # the next checkpoint as a worker takes it: no second load
    rows = read_jsonl(demo_prepared / "test.jsonl")
    assert summary["instances"] == len(rows) == summary["generated_this_run"]
    model = json.loads((run / "run.json").read_text())["model"]
    lengths = target_lengths(rows, load_tokenizer(Path(model)))
    assert summary["answer_tokens_mean"] == round(sum(lengths.values()) / len(rows), 1)
    # every answer decoded its target's tokens before <|end|> (random weights never stop alone)
    generated = summary["tokens_per_s"] * summary["seconds"]
    assert abs(generated - sum(lengths.values())) < 0.01 * generated
    _, done = shard_paths(run, "epoch-1", 0, 1, "test")
    assert json.loads(done.read_text())["instances"] == len(rows)
    # a second timing would only read the first one's summary back: refused, naming the file
    again = bench()
    base_out, _ = shard_paths(run, "base", 0, 1, "test")
    assert again.returncode == 2 and f"{base_out} exists" in again.stderr


def test_the_phase_bench_counts_each_tasks_prompts_and_decoding_steps(
    tiny_model: Path, tmp_path: Path
) -> None:
    """bench/infer_phases.py (run first on a GPU): the prefill/steps split is only worth its
    device time if its counts are those of the batches the stage decoded."""
    from pronlora.devtools.bench import target_lengths
    from pronlora.infer.batching import generation_batches
    from pronlora.model.load import load_tokenizer

    batch = 3
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "infer_phases.py"),
            *("--model", str(tiny_model), "--config", "smoke", "--utterances", "7"),
            *("--set", "infer.cache=static_graphs", "--set", f"infer.batch_size={batch}"),
            *("--work", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[0])
    rows = read_jsonl(tmp_path / "test-set" / "test.jsonl")
    lengths = target_lengths(rows, load_tokenizer(tiny_model))
    for task, got in result["tasks"].items():
        batches = [b for b in generation_batches(rows, batch) if b[0]["task"] == task]
        assert got["batches"] == len(batches) and got["rows"] == 7
        # each batch runs until its longest forced answer has written <|end|>
        assert got["steps"] == sum(max(lengths[r["id"]] for r in b) for b in batches)
        assert got["prompt_tokens"] <= got["padded_prompt_tokens"]
    assert set(result["tasks"]) == {"APA", "MDD"}
    assert 0 < result["decode_gpu_s"] <= result["second"]["seconds"]


def test_the_decode_rate_is_the_slope_between_two_decode_jobs(tmp_path: Path) -> None:
    """bench/rates.py: what a decode job pays in its first batches stays one-time; the
    seconds per instance come from the difference of a small and a large decode."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rates", REPO / "bench" / "rates.py")
    rates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rates)
    runs = {}
    for name, instances, seconds in (("small", 1000, 19.0), ("large", 3000, 49.0)):
        for ckpt, secs, load in (("epoch-1", seconds, 0.0), ("epoch-2", seconds - 5, 1.0)):
            done = tmp_path / name / "predictions" / ckpt / "shard-0-of-1.done.json"
            done.parent.mkdir(parents=True)
            summary = {"instances": instances, "seconds": secs, "load_s": load, "embed_s": 1.0}
            done.write_text(json.dumps({**summary, "device": "x", "checkpoint": ckpt}))
        runs[name] = tmp_path / name
    rec = rates.infer_record(runs["small"], 40.0, runs["large"])
    # 30 s more for 2,000 more instances: 0.015 s each; the small job's 4 s of warm-up (19 s
    # against 15 s at that rate) joins its 21 s outside the shard as one-time
    assert rec["s_per_instance"] == 0.015 and rec["fixed_s"] == 25.0
    alone = rates.infer_record(runs["small"], 40.0)
    assert alone["s_per_instance"] == 0.019 and alone["fixed_s"] == 21.0
    with pytest.raises(SystemExit, match="not more than"):
        rates.infer_record(runs["large"], 40.0, runs["small"])
    # a second checkpoint swapped in by the same process (15 s of its shard, the 1 s swap
    # included): its own rate, and its seconds leave the first checkpoint's one-time seconds
    both = rates.infer_record(runs["small"], 55.0, runs["large"], ("epoch-1", "epoch-2"))
    assert both["next_s_per_instance"] == 0.015 and both["next_fixed_s"] == 0.0
    assert both["s_per_instance"] == 0.015 and both["fixed_s"] == 25.0


def _four_bit(n_in: int, n_out: int, bias: bool = False) -> torch.nn.Module:
    import bitsandbytes as bnb

    dense = torch.nn.Linear(n_in, n_out, bias=bias).to(torch.bfloat16)
    layer = bnb.nn.Linear4bit(
        n_in, n_out, bias=bias, compute_dtype=torch.bfloat16, quant_type="nf4"
    )
    layer.weight = bnb.nn.Params4bit(
        dense.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True
    )
    if bias:
        layer.bias = torch.nn.Parameter(dense.bias.data.clone(), requires_grad=False)
    return layer.to("cpu")  # quantized on the way (bitsandbytes' CPU backend)


def test_a_qlora_checkpoint_merges_into_its_dequantized_base_as_peft_merges(tmp_path) -> None:
    """nf4 decoding (infer.merge_adapter): every merged weight equals PEFT's own dequantization
    plus its delta weight, summed in fp32 and rounded once to bf16 (PEFT's 4-bit merge without
    its re-quantization), and the merged net answers as the unmerged one does."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight

    from pronlora.model.dequantized_merge import merge_into_dequantized

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = _four_bit(64, 128), _four_bit(128, 64, bias=True)
            self.head = torch.nn.Linear(64, 8).to(torch.bfloat16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.down(torch.relu(self.up(x))))

    def lora_net(targets: list[str]) -> torch.nn.Module:
        torch.manual_seed(0)
        model = get_peft_model(Net(), LoraConfig(r=8, lora_alpha=16, target_modules=targets))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        return model.eval()

    model = lora_net(["up", "down"])
    expected = {}
    for name in ("up", "down"):
        layer = model.get_base_model().get_submodule(name)
        weight = layer.base_layer.weight
        dequantized = dequantize_bnb_weight(weight, state=weight.quant_state)
        expected[name] = (dequantized.float() + layer.get_delta_weight("default")).to(
            torch.bfloat16
        )
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        merged = merge_into_dequantized(model, torch.bfloat16)
        out = merged(x)
        # the same net again (seeded): bitsandbytes' CPU backend repacks a 4-bit weight at its
        # first forward, so the unmerged answer comes from a net that merges nothing
        unmerged = lora_net(["up", "down"])(x)
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    for name, weight in expected.items():
        layer = merged.get_submodule(name)
        assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.bfloat16
        assert torch.equal(layer.weight, weight), name
    assert torch.equal(merged.down.bias, model.get_base_model().down.bias.to(torch.bfloat16))
    torch.testing.assert_close(out, unmerged, rtol=0.02, atol=0.02)
    # a LoRA over a layer that is not 4-bit is named, not merged some other way
    with pytest.raises(RuntimeError, match="head: LoRA over Linear, not a 4-bit layer"):
        merge_into_dequantized(lora_net(["up", "head"]), torch.bfloat16)

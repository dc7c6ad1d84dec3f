import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pronlora.core.atomic import read_jsonl
from pronlora.core.config import ConfigError, load_config
from pronlora.core.errors import DataError, SnapshotError
from pronlora.core.layout import PreparedDir, RunDir
from pronlora.model.collate import IGNORE_INDEX, Collator, SequenceTooLongError
from pronlora.model.load import AUDIO_MODULES, load_model, load_unfrozen_state, unfrozen_state
from pronlora.train.recipe import NonFiniteLossError, build_trainer, train
from pronlora.train.stopping import EXIT_REQUEUE, StopRequest, install_stop_signals


def test_collator_labels_cover_exactly_the_answer(tiny_model: Path, demo_prepared: Path) -> None:
    loaded = load_model(load_config("smoke"), tiny_model)
    tok = loaded.tokenizer
    rows = read_jsonl(demo_prepared / "train.jsonl")[:3]
    batch = Collator(tok, loaded.feature_extractor)(rows)
    audio_id = tok.audio_token_id
    assert audio_id == 200011
    end_id = tok.convert_tokens_to_ids("<|end|>")
    for i, row in enumerate(rows):
        ids = batch["input_ids"][i].tolist()
        labels = batch["labels"][i].tolist()
        mask = batch["attention_mask"][i].tolist()
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(ids) - n)
        # audio tokens: exactly the count the feature extractor reports, ~12.5 per second
        n_audio = ids.count(audio_id)
        assert n_audio == int(batch["audio_embed_sizes"][i])
        assert abs(n_audio - row["duration_s"] * 12.5) <= 2
        answer = [*tok(row["target"], add_special_tokens=False)["input_ids"], end_id]
        start = n - len(answer)
        assert ids[start:n] == answer
        assert labels[start:n] == answer
        assert all(x == IGNORE_INDEX for x in labels[:start] + labels[n:])
        assert tok.decode(ids[start - 1 : start]) == "<|assistant|>"
        assert tok.decode(labels[start:n]) == row["target"] + "<|end|>"


def test_collator_refuses_overlong_instances(tiny_model: Path, demo_prepared: Path) -> None:
    loaded = load_model(load_config("smoke"), tiny_model)
    rows = read_jsonl(demo_prepared / "train.jsonl")[:2]
    with pytest.raises(SequenceTooLongError, match=rows[0]["id"]):
        Collator(loaded.tokenizer, loaded.feature_extractor, max_length=50)(rows)


def _lora_param_count(snapshot: Path, r: int) -> int:
    """LoRA parameters of rank ``r`` on the modules the snapshot's shipped speech adapter adapts,
    with their shapes read from that file (not from the regex that builds adapters)."""
    shipped = load_file(str(snapshot / "speech-lora" / "adapter_model.safetensors"))
    total = 0
    for key, a in shipped.items():
        if ".lora_A." in key:
            b = shipped[key.replace(".lora_A.", ".lora_B.")]
            total += r * (a.shape[1] + b.shape[0])  # A: r x in, B: out x r
    return total


@pytest.mark.parametrize("adapter", ["merge_speech", "continue_speech"])
@pytest.mark.parametrize("strategy", ["lora", "unfreeze"])
def test_configs_train_what_they_claim(tiny_model: Path, adapter: str, strategy: str) -> None:
    from transformers import Phi4MultimodalForCausalLM

    r = 8 if adapter == "continue_speech" else 4
    cfg = load_config(
        "smoke",
        [f"adapter={adapter}", f"strategy={strategy}", f"lora.r={r}", f"lora.alpha={2 * r}"],
    )
    model = load_model(cfg, tiny_model).model
    plain = Phi4MultimodalForCausalLM.from_pretrained(tiny_model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    expected = _lora_param_count(tiny_model, r)
    audio = {
        f"base_model.model.{m}.{k}": v
        for m in AUDIO_MODULES
        for k, v in plain.get_submodule(m).named_parameters()
    }
    if strategy == "unfreeze":
        expected += sum(v.numel() for v in audio.values())
    assert sum(p.numel() for p in trainable.values()) == expected
    for name in trainable:
        assert ".lora_A." in name or ".lora_B." in name or name in audio, name
    shipped = load_file(str(tiny_model / "speech-lora" / "adapter_model.safetensors"))
    qkv = "model.layers.0.self_attn.qkv_proj"
    if adapter == "continue_speech":
        ours = dict(model.named_parameters())
        b = ours[f"base_model.model.{qkv}.lora_B.default.weight"]
        assert torch.equal(b, shipped[f"{qkv}.lora_B.weight"])  # Hub-style key in the file
    else:
        base_w = model.get_submodule(f"base_model.model.{qkv}").base_layer.weight
        assert not torch.allclose(base_w, plain.get_submodule(qkv).weight)  # speech merged
        fresh_b = model.get_submodule(f"base_model.model.{qkv}").lora_B["default"].weight
        assert torch.count_nonzero(fresh_b) == 0


def test_a_bf16_run_trains_float32_weights_so_small_steps_land(tiny_model: Path) -> None:
    """The optimizer updates a weight in its own dtype: a bf16 audio encoder under AdamW at
    the paper's lr 2e-5 kept most of its weights exactly as loaded. Every trainable weight (the
    LoRA and Unfreeze's audio parts) is float32 and the frozen base bf16, so one such step moves
    every one of them."""
    cfg = load_config("smoke", ["dtype=bf16", "strategy=unfreeze"])
    model = load_model(cfg, tiny_model).model
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert any(".audio_embed.encoder." in n for n in trainable)
    assert any(".lora_A." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    for p in trainable.values():
        p.grad = torch.ones_like(p)
    torch.optim.AdamW(trainable.values(), lr=2e-5, weight_decay=0.0).step()
    unmoved = [n for n, p in trainable.items() if torch.equal(p.detach(), before[n])]
    assert not unmoved, unmoved[:3]


def test_float32_unfrozen_weights_decode_rounded_into_the_bf16_model(
    tiny_model: Path, tmp_path: Path
) -> None:
    """An Unfreeze checkpoint holds float32 audio weights; the decode model stays bf16 and holds
    them rounded, as decoding, the checkpoint swap and export load them."""
    cfg = load_config("smoke", ["dtype=bf16", "strategy=unfreeze"])
    trained = load_model(cfg, tiny_model).model
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 1e-3)
    saved = unfrozen_state(trained)
    weights = {n.removeprefix("base_model.model.") for n, p in trained.named_parameters()}
    assert {saved[k].dtype for k in saved if k in weights} == {torch.float32}  # buffers: bf16
    save_file(saved, str(tmp_path / "unfrozen.safetensors"))
    decode = load_model(cfg, tiny_model, trainable=False).model
    load_unfrozen_state(decode, tmp_path / "unfrozen.safetensors")
    state = decode.state_dict()
    for key, value in saved.items():
        ours = state[key] if key in state else state[f"base_model.model.{key}"]
        assert ours.dtype == (torch.bfloat16 if value.is_floating_point() else value.dtype), key
        assert torch.equal(ours, value.to(ours.dtype)), key


def test_a_new_lora_starts_from_its_seed_whatever_the_load_drew_before(tiny_model: Path) -> None:
    """A seed names one initial LoRA: a change in how the base is loaded (PEFT's speech-adapter
    wrapper used to draw 461M random values first) must not change the run a seed gives."""

    def lora_a(seed: int, drawn_before: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(1234)
        torch.rand(drawn_before)
        model = load_model(load_config("smoke", [f"seed={seed}"]), tiny_model).model
        return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}

    first = lora_a(7, 0)
    again = lora_a(7, 100_000)
    assert first.keys() == again.keys() and len(first) == 8
    assert all(torch.equal(first[n], again[n]) for n in first)
    other = lora_a(8, 0)
    assert not any(torch.equal(first[n], other[n]) for n in first)


def test_config_errors_name_the_key(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key.*lora.rank"):
        load_config("paper_r64", ["lora.rank=8"])
    with pytest.raises(ConfigError, match=r"micro_batch: must be >= 1"):
        load_config("paper_r64", ["micro_batch=0"])
    with pytest.raises(ConfigError, match="quantization: 'nf8' is not one of"):
        load_config("paper_r64", ["quantization=nf8"])
    with pytest.raises(ConfigError, match="dtype: nf4 quantization computes in bf16"):
        load_config("smoke", ["quantization=nf4"])
    with pytest.raises(ConfigError, match="no config named 'paper_r65'"):
        load_config("paper_r65")
    with pytest.raises(ConfigError, match="lora.r: config says 64, the shipped adapter"):
        load_model(load_config("smoke", ["adapter=continue_speech", "lora.r=64"]), tiny_model)
    with pytest.raises(ConfigError, match="control_tokens: special needs adapter: merge_speech"):
        cfg = load_config(
            "smoke",
            ["adapter=continue_speech", "lora.r=8", "lora.alpha=16", "control_tokens=special"],
        )
        load_model(cfg, tiny_model)
    with pytest.raises(SnapshotError, match=f"{tmp_path}: no config.json; not a model snapshot"):
        load_model(load_config("smoke"), tmp_path)
    with pytest.raises(DataError, match="no train.jsonl"):
        train(load_config("smoke"), tmp_path, tiny_model, tmp_path / "run")


def _few_rows(demo_prepared: Path, dest: Path) -> tuple[Path, list[dict]]:
    """A prepared dir of the demo's first 4 training rows: one optimizer step per epoch."""
    dest.mkdir()
    rows = read_jsonl(demo_prepared / "train.jsonl")[:4]
    (dest / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (dest / "test.jsonl").write_text("")
    (dest / "manifest.json").write_text(json.dumps(PreparedDir(dest).content_record()))
    return dest, rows


def test_the_tokenizer_is_saved_with_epoch_checkpoints_only(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """Step checkpoints are for resuming and need no tokenizer (13 MB each); every epoch
    checkpoint carries the files save_pretrained writes, the later ones from the first's bytes."""
    from pronlora.model.load import load_processors

    prepared, _ = _few_rows(demo_prepared, tmp_path / "few")
    cfg = load_config("smoke", ["epochs=2", "save_steps=1", "micro_batch=4", "grad_accum=1"])
    run = tmp_path / "run"
    assert train(cfg, prepared, tiny_model, run) == 0
    steps = sorted((run / "trainer").glob("checkpoint-*"))
    assert [s.name for s in steps] == ["checkpoint-1", "checkpoint-2"]
    assert all(not (s / "tokenizer.json").exists() for s in steps), list(steps[0].iterdir())
    fresh = tmp_path / "fresh"
    names = [Path(p).name for p in load_processors(tiny_model, cfg)[0].save_pretrained(fresh)]
    assert "tokenizer.json" in names
    for epoch in (1, 2):
        for name in names:
            saved = run / "checkpoints" / f"epoch-{epoch}" / name
            assert saved.read_bytes() == (fresh / name).read_bytes(), saved


@pytest.mark.slow
def test_loss_falls_when_overfitting(tiny_model: Path, demo_prepared: Path, tmp_path: Path) -> None:
    prepared, rows = _few_rows(demo_prepared, tmp_path / "few")
    cfg = load_config(
        "smoke",
        [
            "max_steps=20",  # the loss falls by ~1 nat within 20 steps
            "save_steps=20",  # no step checkpoints on the way: this test is about the loss
            "micro_batch=4",
            "grad_accum=1",
            "lr=0.01",
            "lora.dropout=0.0",
            "lora.r=32",
            "lora.alpha=32",
        ],
    )
    assert train(cfg, prepared, tiny_model, tmp_path / "run") == 0
    steps = [e for e in read_jsonl(tmp_path / "run" / "train_log.jsonl") if "loss" in e]
    losses = [e["loss"] for e in steps]
    assert sum(losses[-5:]) / 5 < losses[0] - 0.75, losses  # nats
    # every step trains the same 4 rows: each entry counts their non-padding tokens once
    from pronlora.model.load import load_processors

    tokens = int(Collator(*load_processors(tiny_model, cfg))(rows)["attention_mask"].sum())
    assert [e["tokens"] for e in steps] == [tokens] * 20


def _adapter(run: Path, epoch: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"epoch-{epoch}" / "adapter_model.safetensors"))


def tensorboard_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(run / "tensorboard"))
    reader.Reload()
    points = [(e.step, e.value) for e in reader.Scalars(tag)]
    assert len({s for s, _ in points}) == len(points) > 0, points
    return points


@pytest.mark.slow
def test_signal_mid_epoch_then_resume_equals_uninterrupted(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    cfg = load_config("smoke", ["save_steps=100", "strategy=unfreeze"])
    assert train(cfg, demo_prepared, tiny_model, tmp_path / "straight") == 0

    class SignalAtStep3(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:  # the signal lands during step 3
                os.kill(os.getpid(), signal.SIGUSR1)

    run = tmp_path / "interrupted"
    stop = StopRequest()
    replaced = install_stop_signals(stop)  # what the entry point does
    try:
        rc = train(cfg, demo_prepared, tiny_model, run, stop=stop, callbacks=[SignalAtStep3()])
    finally:
        for sig, handler in replaced.items():
            signal.signal(sig, handler)
    assert rc == EXIT_REQUEUE and stop.reason == "SIGUSR1"
    assert (run / "trainer" / "checkpoint-3" / "trainer_state.json").is_file()
    assert not (run / "checkpoints" / "epoch-1").exists()  # mid-epoch 1 (3 of 4 steps)
    partial = run / "trainer" / "checkpoint-99"  # a save cut off by a kill: must be ignored
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"")
    # as if a kill had come after steps 4 and 5 were logged but before their checkpoint
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tensorboard")) as lost:
        for step in (4, 5):
            lost.add_scalar("train/loss", 999.0, step)
    with open(run / "train_log.jsonl", "a") as fh:  # and in the log, the last line cut short
        fh.write('{"step": 4, "loss": 999.0}\n{"step": 5, "loss": 999.0}\n{"step": 6, "lo')
    assert train(cfg, demo_prepared, tiny_model, run) == 0
    # the log too: each step once, the resumed run's values, equal to the uninterrupted run's
    losses = [
        [(e["step"], e["loss"]) for e in RunDir(r).read_train_log() if "loss" in e]
        for r in (tmp_path / "straight", run)
    ]
    assert losses[0] == losses[1] and len(losses[0]) > 3
    # one continuous TensorBoard stream, read by TensorBoard's own reader: the replayed steps
    # once each, with the resumed run's values, equal to the uninterrupted run's
    assert tensorboard_scalars(run, "train/loss") == tensorboard_scalars(
        tmp_path / "straight", "train/loss"
    )
    for epoch in (1, 2):
        a, b = _adapter(tmp_path / "straight", epoch), _adapter(run, epoch)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (epoch, k)
    ua = load_file(str(tmp_path / "straight" / "checkpoints" / "epoch-2" / "unfrozen.safetensors"))
    ub = load_file(str(run / "checkpoints" / "epoch-2" / "unfrozen.safetensors"))
    assert all(torch.equal(ua[k], ub[k]) for k in ua)


@pytest.mark.slow
def test_a_stop_on_the_last_step_of_an_epoch_keeps_that_epoch(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    cfg = load_config("smoke", ["grad_accum=8"])  # 16 instances: one optimizer step per epoch
    run = tmp_path / "run"
    run.mkdir()
    (run / "stop").touch()  # the stop lands on step 1, which ends epoch 1
    marker = run / "requeue.json"
    rc = train(cfg, demo_prepared, tiny_model, run, stop_file=run / "stop", requeue_marker=marker)
    assert rc == EXIT_REQUEUE
    assert json.loads(marker.read_text()) == {"global_step": 1, "reason": "stop file"}
    assert (run / "checkpoints" / "epoch-1" / "adapter_model.safetensors").is_file()
    (run / "stop").unlink()
    assert train(cfg, demo_prepared, tiny_model, run) == 0
    assert json.loads((run / "checkpoints" / "done.json").read_text())["epochs"] == [
        "epoch-1",
        "epoch-2",
    ]


@pytest.mark.slow
def test_rerun_with_a_different_config_is_refused(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    cfg = load_config("smoke", ["max_steps=1"])
    assert train(cfg, demo_prepared, tiny_model, tmp_path / "run") == 0
    with pytest.raises(ConfigError, match="different setup.*lr"):
        train(
            load_config("smoke", ["max_steps=1", "lr=0.5"]),
            demo_prepared,
            tiny_model,
            tmp_path / "run",
        )
    # attention and generation settings are execution keys: accepted, and recorded
    changed = ["max_steps=1", "attn_implementation=sdpa", "infer.cache=static_eager"]
    assert train(load_config("smoke", changed), demo_prepared, tiny_model, tmp_path / "run") == 0
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert saved["attn_implementation"] == "sdpa" and saved["infer"]["cache"] == "static_eager"


def test_non_finite_loss_stops_with_a_clear_message(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    cfg = load_config("smoke")
    loaded = load_model(cfg, tiny_model)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_A" in name:
                p.fill_(float("nan"))
    rows = read_jsonl(demo_prepared / "train.jsonl")
    (tmp_path / "run").mkdir()
    trainer = build_trainer(cfg, loaded, rows, tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 1"):
        trainer.train()


def test_a_pass_that_turns_non_finite_is_caught_before_its_step_checkpoint(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """Losses are read one pass late (the GPU never waits for the host); a step checkpoint
    is still never written after a non-finite pass."""
    from transformers import TrainerCallback

    cfg = load_config("smoke", ["save_steps=2", "max_steps=4", "grad_accum=1"])
    loaded = load_model(cfg, tiny_model)
    rows = read_jsonl(demo_prepared / "train.jsonl")
    (tmp_path / "run").mkdir()
    trainer = build_trainer(cfg, loaded, rows, tmp_path / "run")

    class PoisonStepTwo(TrainerCallback):  # the last pass before the step-2 checkpoint
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                with torch.no_grad():
                    for name, p in loaded.model.named_parameters():
                        if "lora_A" in name:
                            p.fill_(float("nan"))

    trainer.add_callback(PoisonStepTwo())
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 2"):
        trainer.train()
    assert not list((tmp_path / "run").rglob("checkpoint-2"))


@pytest.mark.slow
def test_micro_batches_per_pass_runs_the_same_optimizer_step_in_fewer_passes(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """Two of the recipe's micro-batches in one pass: same instances, loss and gradients."""
    from transformers import TrainerCallback

    rows = read_jsonl(demo_prepared / "train.jsonl")
    seen = {}
    for per_pass in (1, 2):
        cfg = load_config(
            "smoke", ["lora.dropout=0", "max_steps=1", f"micro_batches_per_pass={per_pass}"]
        )
        torch.manual_seed(0)
        loaded = load_model(cfg, tiny_model)
        with torch.no_grad():  # non-zero LoRA B so every LoRA weight gets a gradient
            for n, p in loaded.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        run = tmp_path / f"run{per_pass}"
        run.mkdir()
        trainer = build_trainer(cfg, loaded, rows, run)
        passes: list[list[str]] = []
        grads: dict[str, torch.Tensor] = {}
        step = trainer.training_step

        def record(model, inputs, num_items_in_batch=None, step=step, passes=passes):
            passes.append(inputs["input_ids"].shape[0])
            return step(model, inputs, num_items_in_batch)

        class Grads(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, grads=grads, **kw):
                for n, p in kw["model"].named_parameters():
                    if p.requires_grad:
                        grads[n] = p.grad.detach().clone()

        trainer.training_step = record
        trainer.add_callback(Grads())
        trainer.train()
        loss = [e["loss"] for e in read_jsonl(run / "train_log.jsonl") if "loss" in e]
        seen[per_pass] = (passes, loss, grads)
    assert seen[1][0] == [2, 2] and seen[2][0] == [4]
    assert seen[2][1] == pytest.approx(seen[1][1], rel=1e-5)
    g1, g2 = seen[1][2], seen[2][2]
    assert g1.keys() == g2.keys() and len(g1) > 0
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_a_stopped_run_resumes_with_another_pass_size_to_the_same_losses(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """An execution key: the resumed steps see the same instances and loss in fewer passes."""
    base = ["lora.dropout=0", "save_steps=100", "epochs=1"]  # no dropout: same RNG use
    assert train(load_config("smoke", base), demo_prepared, tiny_model, tmp_path / "straight") == 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "stop").touch()
    cfg = load_config("smoke", base)
    assert train(cfg, demo_prepared, tiny_model, run, stop_file=run / "stop") == EXIT_REQUEUE
    (run / "stop").unlink()
    resumed = load_config("smoke", [*base, "micro_batches_per_pass=2"])
    assert train(resumed, demo_prepared, tiny_model, run) == 0

    # Adam turns rounding-level gradient differences into lr-sized steps where a gradient is
    # near zero, so the comparison is the loss: same instances per step (wrongly skipped or
    # regrouped batches would change it by far more than this), same number of steps
    def losses(r: Path) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in read_jsonl(r / "train_log.jsonl") if "loss" in e}

    a, b = losses(tmp_path / "straight"), losses(run)
    assert a.keys() == b.keys() and len(a) >= 3
    assert b == pytest.approx(a, rel=1e-4)
    assert (run / "checkpoints" / "epoch-1").is_dir()


def test_a_pass_takes_as_many_micro_batches_as_divide_each_process_share() -> None:
    from pronlora.core.config import accumulation_steps, pass_size

    cfg = load_config("paper_r64", ["micro_batches_per_pass=2"])
    assert [pass_size(cfg, w) for w in (1, 2, 4, 8)] == [2, 2, 2, 1]
    assert [accumulation_steps(cfg, w) for w in (1, 2, 4, 8)] == [4, 2, 1, 1]
    three = load_config("paper_r64", ["micro_batches_per_pass=3"])  # 8 micro-batches: 2 per pass
    assert (pass_size(three, 1), accumulation_steps(three, 1)) == (2, 4)
    with pytest.raises(ConfigError, match="micro_batches_per_pass"):
        load_config("paper_r64", ["micro_batches_per_pass=0"])


def test_one_process_never_wraps_the_model_in_data_parallel(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate a node where one process sees 4 GPUs (what TrainingArguments then reports)."""
    from transformers import TrainingArguments

    original = TrainingArguments._setup_devices

    def four_gpus(self):  # cached, like the real one: resolved once per arguments object
        first = "_simulated" not in self.__dict__
        device = original.__get__(self, TrainingArguments)
        if first:
            self.__dict__["_simulated"] = True
            self._n_gpu = 4
        return device

    monkeypatch.setattr(TrainingArguments, "_setup_devices", property(four_gpus))
    cfg = load_config("smoke")
    loaded = load_model(cfg, tiny_model)
    rows = read_jsonl(demo_prepared / "train.jsonl")
    (tmp_path / "run").mkdir()
    trainer = build_trainer(cfg, loaded, rows, tmp_path / "run")
    assert trainer.args.n_gpu == 1
    assert not isinstance(trainer._wrap_model(trainer.model), torch.nn.DataParallel)
    trainer.args._n_gpu = 4  # without the guard the Trainer would take the DataParallel path
    assert isinstance(trainer._wrap_model(trainer.model), torch.nn.DataParallel)


def test_step_counts_move_to_their_parameters_device_after_a_resume() -> None:
    """DeepSpeed's universal loading leaves AdamW step counts on the CPU, which the fused
    kernel refuses on a GPU; the callback moves them (``meta`` stands in for the GPU here)."""
    from types import SimpleNamespace

    from pronlora.train.trainer import OptimizerStateOnDevice

    param = torch.nn.Parameter(torch.zeros(3, device="meta"))
    adamw = torch.optim.AdamW([param])
    adamw.state[param]["step"] = torch.tensor(7.0)  # as the universal loader leaves it
    wrapped = SimpleNamespace(optimizer=SimpleNamespace(optimizer=adamw))  # accelerate, ZeRO
    OptimizerStateOnDevice(SimpleNamespace(optimizer=wrapped)).on_train_begin(None, None, None)
    assert adamw.state[param]["step"].device.type == "meta"


def test_a_process_count_that_cannot_split_the_batch_says_which_counts_can() -> None:
    from pronlora.core.config import accumulation_steps

    cfg = load_config("paper_r64")  # 8 x 8 = 64
    with pytest.raises(ConfigError, match=r"use a GPU count that divides 64: 1, 2, 4, 8, 16"):
        accumulation_steps(cfg, 3)
    with pytest.raises(ConfigError, match=r"pick a micro_batch that divides 4: 1, 2, 4$"):
        accumulation_steps(load_config("paper_r64", ["micro_batch=16", "grad_accum=4"]), 16)
    assert accumulation_steps(cfg, 4) == 1  # 2 micro-batches per process, in one pass of 2


def test_training_loads_a_bf16_base_onto_its_gpu_except_under_zero3_and_nf4(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The speech adapter merges where the base is: on the GPU (seconds on the host otherwise);
    ZeRO-3 partitions weights while loading and nf4 quantizes on the way, so both keep theirs."""
    from pronlora.train.recipe import training_device_map

    cfg = load_config("paper_r64")
    assert training_device_map(cfg, "ddp") is None  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert training_device_map(cfg, "ddp") == {"": 3}
    assert training_device_map(cfg, "zero2") == {"": 3}
    assert training_device_map(cfg, "zero3") is None
    assert training_device_map(load_config("paper_r64", ["quantization=nf4"]), "ddp") is None


@pytest.mark.filterwarnings("error::FutureWarning")  # a deprecated name warns, then is gone
def test_training_arguments_set_checkpointing_by_the_installed_transformers_names(
    tmp_path: Path,
) -> None:
    """transformers 5.23 renamed TrainingArguments' gradient_checkpointing(_kwargs) to
    activation_checkpointing(_kwargs); the config's setting must reach whichever it has."""
    from pronlora.train.trainer import training_arguments

    for on in (True, False):
        cfg = load_config("smoke", [f"gradient_checkpointing={str(on).lower()}"])
        args = training_arguments(cfg, tmp_path / "run", "ddp", load_universal=False)
        current = getattr(args, "activation_checkpointing", None)
        assert (args.gradient_checkpointing if current is None else current) is on
        kwargs = getattr(args, "activation_checkpointing_kwargs", None)
        assert (kwargs or args.gradient_checkpointing_kwargs) == {"use_reentrant": False}

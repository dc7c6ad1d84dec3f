"""Each performance lever against the plain path on the same inputs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pronlora.core.atomic import read_jsonl
from pronlora.core.config import ConfigError, load_config
from pronlora.model.collate import Collator
from pronlora.model.load import load_model
from pronlora.train.loss import label_only_loss
from pronlora.train.sampler import LengthGroupedSampler


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _nonzero_lora_b(model) -> None:
    """LoRA B starts at zero; non-zero, LoRA gradients flow into A as well."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)


@pytest.mark.slow
def test_label_only_loss_matches_the_models_loss_and_gradients(
    tiny_model: Path, demo_prepared: Path
) -> None:
    cfg = load_config("smoke", ["lora.dropout=0.0"])
    loaded = load_model(cfg, tiny_model)
    model = loaded.model
    _nonzero_lora_b(model)
    rows = read_jsonl(demo_prepared / "train.jsonl")[:4]
    batch = Collator(loaded.tokenizer, loaded.feature_extractor)(rows)

    model.zero_grad()
    plain = model(**batch).loss
    plain.backward()
    g_plain = _lora_grads(model)

    model.zero_grad()
    total, n = label_only_loss(model, batch)
    fast = total / n
    fast.backward()
    g_fast = _lora_grads(model)

    assert int(n) == int((batch["labels"] != -100).sum())
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    assert g_plain.keys() == g_fast.keys() and len(g_plain) > 0
    for k in g_plain:
        torch.testing.assert_close(g_fast[k], g_plain[k], rtol=1e-4, atol=1e-7)


def test_text_padding_to_a_multiple_leaves_the_loss_unchanged(
    tiny_model: Path, demo_prepared: Path
) -> None:
    loaded = load_model(load_config("smoke"), tiny_model)
    rows = read_jsonl(demo_prepared / "train.jsonl")[:3]
    tight = Collator(loaded.tokenizer, loaded.feature_extractor)(rows)
    padded = Collator(loaded.tokenizer, loaded.feature_extractor, pad_to_multiple_of=64)(rows)
    assert padded["input_ids"].shape[1] % 64 == 0
    assert padded["input_ids"].shape[1] > tight["input_ids"].shape[1]
    with torch.no_grad():
        a = label_only_loss(loaded.model, tight)
        b = label_only_loss(loaded.model, padded)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert int(a[1]) == int(b[1])


def test_length_grouped_sampler_is_a_seeded_permutation_of_similar_lengths() -> None:
    lengths = [600.0 if i % 3 else 200.0 for i in range(96)]  # APA-like and MDD-like rows
    s = LengthGroupedSampler(lengths, micro_batch=8, step_batches=2, seed=1, mega_steps=2)
    s.set_epoch(0)
    first = list(s)
    assert sorted(first) == list(range(96))
    assert list(s) == first  # same (seed, epoch): same order, so resumption replays it
    s.set_epoch(1)
    assert list(s) != first
    micro = [first[i : i + 8] for i in range(0, 96, 8)]
    mixed = sum(len({lengths[i] for i in m}) > 1 for m in micro)
    assert mixed <= 96 // 32  # at most one mixed micro-batch per mega-batch


def test_sampler_balances_ranks_without_changing_what_each_optimizer_step_sees() -> None:
    g = torch.Generator().manual_seed(0)
    apa = (550 + 150 * torch.rand(640, generator=g)).tolist()
    mdd = (150 + 100 * torch.rand(640, generator=g)).tolist()
    lengths = [x for pair in zip(apa, mdd, strict=True) for x in pair]
    micro, step_batches = 8, 8
    sampler = LengthGroupedSampler(lengths, micro, step_batches, seed=3)
    batches = sampler.micro_batches()
    steps = [batches[s : s + step_batches] for s in range(0, len(batches), step_batches)]
    # the instances of each optimizer step are those of the unsorted (round-robin-blind) order:
    # a fixed property of (seed, epoch), independent of the rank count
    assert sum(len(s) for s in steps) * micro == len(lengths)
    assert all(len(s) == step_batches for s in steps)

    def idle(order: list[list[int]], world: int) -> float:
        """Rank time spent waiting, as a share of all work (cost ~ padded tokens)."""
        waits = 0.0
        for k in range(0, len(order), world):  # batch b goes to rank b % world
            costs = [len(m) * max(lengths[i] for i in m) for m in order[k : k + world]]
            waits += sum(max(costs) - c for c in costs)
        return waits / sum(len(m) * max(lengths[i] for i in m) for m in order)

    for world in (2, 4):
        ours = sum(idle(s, world) for s in steps) / len(steps)
        blind = [[s[j] for j in torch.randperm(step_batches, generator=g).tolist()] for s in steps]
        theirs = sum(idle(s, world) for s in blind) / len(steps)
        assert ours < 0.5 * theirs, (world, ours, theirs)
        assert ours < {2: 0.08, 4: 0.2}[world], (world, ours)


def test_audio_features_per_clip_handle_lengths_the_batched_extractor_fails_on(
    tiny_model: Path,
) -> None:
    import numpy as np

    loaded = load_model(load_config("smoke"), tiny_model)
    fe = loaded.feature_extractor
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.1, n).astype(np.float32) for n in (37600, 37760, 38080, 38112)]
    with pytest.raises(RuntimeError, match="must match the size"):  # the upstream bug we avoid
        fe(clips, sampling_rate=16000, return_tensors="pt")
    collator = Collator(loaded.tokenizer, fe)
    feats = collator.audio_features(clips)
    for i, clip in enumerate(clips):
        alone = fe(clip, sampling_rate=16000, return_tensors="pt")
        n = alone["audio_input_features"].shape[1]
        torch.testing.assert_close(
            feats["audio_input_features"][i, :n], alone["audio_input_features"][0]
        )
        assert not feats["audio_input_features"][i, n:].any()
        assert feats["audio_attention_mask"][i].sum() == n
        assert feats["audio_embed_sizes"][i] == alone["audio_embed_sizes"][0]
    ok = fe(clips[:2], sampling_rate=16000, return_tensors="pt")  # a pair the batch path handles
    torch.testing.assert_close(
        collator.audio_features(clips[:2])["audio_input_features"],
        ok["audio_input_features"],
        rtol=1e-4,
        atol=1e-3,
    )


def test_lora_input_cast_off_gives_the_same_loss_under_bf16_autocast(
    tiny_model: Path, demo_prepared: Path
) -> None:
    from pronlora.model.load import set_lora_input_cast

    loaded = load_model(load_config("smoke", ["lora.dropout=0.0"]), tiny_model)
    model = loaded.model
    _nonzero_lora_b(model)
    batch = Collator(loaded.tokenizer, loaded.feature_extractor)(
        read_jsonl(demo_prepared / "train.jsonl")[:2]
    )
    assert set_lora_input_cast(model, enabled=True) > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = label_only_loss(model, batch)[0]
    set_lora_input_cast(model, enabled=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = label_only_loss(model, batch)[0]
    torch.testing.assert_close(fast, plain, rtol=2e-3, atol=1e-3)
    default = load_model(load_config("smoke"), tiny_model).model
    assert not any(getattr(m, "cast_input_dtype_enabled", False) for m in default.modules())


@pytest.mark.slow
def test_compiled_decoder_layers_give_the_plain_loss_and_gradients(
    tiny_model: Path, demo_prepared: Path
) -> None:
    """The regional-compile lever on the training path (inductor on CPU; on GPU in the bench),
    with gradient checkpointing as nf4 runs it (bf16 without: the same graphs, no recompute)."""
    checkpointing = True
    overrides = ["lora.dropout=0.0", f"gradient_checkpointing={checkpointing}"]
    plain_cfg = load_config("smoke", overrides)
    first = load_model(plain_cfg, tiny_model)
    batch = Collator(first.tokenizer, first.feature_extractor)(
        read_jsonl(demo_prepared / "train.jsonl")[:4]
    )
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = load_model(
            load_config("smoke", [*overrides, f"compile_layers={compiled}"]), tiny_model
        ).model
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
        _nonzero_lora_b(model)
        total, n = label_only_loss(model, batch)
        (total / n).backward()
        results.append((total / n, _lora_grads(model)))
        compiled_layers = [m for m in model.modules() if getattr(m, "_compiled_call_impl", None)]
        assert bool(compiled_layers) == compiled
    (plain, g_plain), (fast, g_fast) = results
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    assert g_plain.keys() == g_fast.keys() and len(g_plain) > 0
    for k in g_plain:
        torch.testing.assert_close(g_fast[k], g_plain[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("length", [1, 7])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_folded_gqa_attention_equals_sdpa_with_repeated_heads(length, mask_dtype) -> None:
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    from pronlora.model.attention import folded_gqa_attention

    g = torch.Generator().manual_seed(0)
    batch, heads, groups, dim, keys = 3, 6, 2, 16, 11
    q = torch.randn(batch, length, heads, dim, generator=g).transpose(1, 2)  # as the model's
    k, v = (torch.randn(batch, groups, keys, dim, generator=g) for _ in range(2))
    pad = torch.tensor([0, 2, 5])[:, None]  # left padding of each row
    pos = torch.arange(keys)
    allowed = (pos[None, None, :] >= pad[:, :, None]) & (
        pos[None, None, :] <= (keys - length + torch.arange(length))[None, :, None]
    )
    mask = allowed[:, None]  # (B, 1, L, S) as transformers' sdpa masks
    if mask_dtype is torch.float32:
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    module = torch.nn.Module()
    module.num_key_value_groups = heads // groups
    with torch.no_grad():  # the fold is for passes without autograd (generation)
        out, _ = folded_gqa_attention(module, q, k, v, mask, scaling=0.25)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, repeat_kv(k, 3), repeat_kv(v, 3), attn_mask=mask, scale=0.25
    ).transpose(1, 2)
    assert out.shape == (batch, length, heads, dim)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # the head -> (group, row) fold must not mix heads: permuting one group's heads permutes
    # exactly those outputs
    swapped = q[:, [1, 0, 2, 3, 4, 5]]
    with torch.no_grad():
        out2, _ = folded_gqa_attention(module, swapped, k, v, mask, scaling=0.25)
    torch.testing.assert_close(out2[:, :, [1, 0, 2, 3, 4, 5]], out)
    # under autograd (a training step) it is transformers' sdpa, gradients included
    q.requires_grad_(True)
    trained, _ = folded_gqa_attention(module, q, k, v, mask, scaling=0.25)
    plain, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    assert torch.equal(trained, plain)
    trained.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_folded_gqa_attention_generates_the_sdpa_tokens(
    tiny_model: Path, demo_prepared: Path
) -> None:
    """The whole model, left-padded batch, prefill and cached decoding steps."""
    from pronlora.infer.batching import generation_collator
    from pronlora.infer.generation import generate
    from pronlora.model.attention import FOLDED_GQA

    rows = [r for r in read_jsonl(demo_prepared / "test.jsonl") if r["task"] == "MDD"][:3]
    runs = {}
    for impl in ("sdpa", FOLDED_GQA):
        cfg = load_config("smoke", [f"attn_implementation={impl}", "infer.max_new_tokens_mdd=12"])
        loaded = load_model(cfg, tiny_model, trainable=False)
        assert loaded.model.config._attn_implementation == impl
        batch = generation_collator(loaded, cfg)(rows)
        assert (batch["attention_mask"] == 0).any()  # the padding mask is exercised
        with torch.no_grad():
            logits = loaded.model(**batch).logits[:, -1]
        runs[impl] = (logits, generate(loaded, cfg, rows, batch))
    torch.testing.assert_close(runs[FOLDED_GQA][0], runs["sdpa"][0], rtol=1e-4, atol=1e-5)
    assert runs[FOLDED_GQA][1] == runs["sdpa"][1]


@pytest.mark.slow
def test_preallocated_cache_generates_the_growing_cache_tokens(
    tiny_model: Path, demo_prepared: Path
) -> None:
    """infer.cache=static_eager (the paper configs' default) against the dynamic cache, on a
    left-padded batch of each task."""
    from pronlora.infer.batching import generation_batches
    from pronlora.infer.generation import generate

    rows = read_jsonl(demo_prepared / "test.jsonl")[:8]
    answers = {}
    for cache in ("dynamic", "static_eager"):
        cfg = load_config("smoke", [f"infer.cache={cache}", "infer.batch_size=4"])
        loaded = load_model(cfg, tiny_model, trainable=False)
        caches, plain_generate = [], loaded.model.generate

        def spy(*args, _plain=plain_generate, _caches=caches, **kwargs):
            out = _plain(*args, return_dict_in_generate=True, **kwargs)
            _caches.append(type(out.past_key_values).__name__)
            return out.sequences

        loaded.model.generate = spy
        answers[cache] = [generate(loaded, cfg, b) for b in generation_batches(rows, 4)]
        assert caches == [{"dynamic": "DynamicCache", "static_eager": "StaticCache"}[cache]] * 2
    assert len(answers["dynamic"]) == 2  # one batch per task
    assert answers["static_eager"] == answers["dynamic"]


def _context_sensitive(model) -> None:
    """Seeded unit-scale language-model weights: the tiny checkpoint's small ones answer
    one token over and over whatever the context, which no decoding bug would change."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "audio" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


@pytest.mark.filterwarnings("error::FutureWarning")  # a deprecated keyword is a silent loss
def test_graphed_decoding_loop_generates_the_static_cache_tokens(
    tiny_model: Path, demo_prepared: Path, monkeypatch
) -> None:
    """infer.cache=static_graphs (model/greedy.py; the same step eagerly on a CPU) against
    transformers' generate over its static cache, from the cached audio embeddings as run_shard
    decodes: a left-padded batch of each task, free and forced (the benchmarks' ExactLengths
    through the step counter: rows end at different steps), the prefill and each step
    attending to a window of the cache's first positions (cache_window.py)."""
    from pronlora.infer import generation
    from pronlora.infer.batching import generation_batches, generation_collator
    from pronlora.infer.generation import generate
    from pronlora.infer.models import Models, RunSpec
    from pronlora.model import cache_window

    rows = read_jsonl(demo_prepared / "test.jsonl")[:8]
    forced = {r["id"]: 2 + i % 5 for i, r in enumerate(rows)}
    answers: dict[str, list] = {}
    limits: list[int] = []  # the graphed loop's max_new_tokens, which sizes its cache

    def spy(model, inputs, max_new_tokens, *args, _plain=generation.greedy_decode, **kwargs):
        limits.append(max_new_tokens)
        return _plain(model, inputs, max_new_tokens, *args, **kwargs)

    monkeypatch.setattr(generation, "greedy_decode", spy)
    # attention windows that grow every 4 positions: many widths within each answer
    monkeypatch.setattr(cache_window, "WINDOW_STEP", 4)
    handed: list[tuple[int, int, int]] = []  # per layer call: keys written, given, cached
    plain_update = cache_window._FirstPositions.update

    def update_spy(self, key_states, *args, **kwargs):
        keys, values = plain_update(self, key_states, *args, **kwargs)
        handed.append((key_states.shape[-2], keys.shape[-2], self.layer.keys.shape[-2]))
        return keys, values

    monkeypatch.setattr(cache_window._FirstPositions, "update", update_spy)
    for cache in ("static_eager", "static_graphs"):
        cfg = load_config("smoke", [f"infer.cache={cache}", "infer.max_new_tokens_mdd=20"])
        models = Models()
        loaded = models.get(RunSpec(cfg, tiny_model), None)
        _context_sensitive(loaded.model)
        audio = models.embed_clips(cfg, rows, {r["audio"] for r in rows})
        answers[cache] = []
        for lengths in (None, forced):
            for batch_rows in generation_batches(rows, 4):
                batch = generation_collator(loaded, cfg, audio)(batch_rows)
                assert (batch["attention_mask"] == 0).any()  # left padding is exercised
                answers[cache] += generate(loaded, cfg, batch_rows, batch, lengths, audio)
    assert len(answers["static_eager"]) == 16
    got = answers["static_graphs"]
    assert len({a for a, _ in got[:8]}) > 4  # the free answers depend on their inputs
    assert sorted(n for _, n in got[8:]) == sorted(forced.values())
    assert got == answers["static_eager"]
    # forced answers (the benchmarks) keep the config's cache size, as a real decode has
    assert sorted(limits) == sorted([cfg.infer.max_new_tokens_apa, 20] * 2)
    # every layer of each of the 4 prefills was handed the prompt's keys only, and the steps
    # windows of 4: a view the layers ignore (a renamed cache keyword) leaves attention the
    # whole cache with the same tokens
    layers = len(loaded.model.model.layers)
    prefills = [(written, got) for written, got, _ in handed if written > 1]
    assert len(prefills) == 4 * layers and all(w == n for w, n in prefills), prefills
    steps = {(got, size) for written, got, size in handed if written == 1}
    assert len(steps) > 3 and all(n % 4 == 0 or n == size for n, size in steps), steps
    assert any(n < size for n, size in steps)


@pytest.mark.slow
def test_compiled_prefill_gives_the_eager_tokens_with_one_graph_for_all_layers(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path, monkeypatch
) -> None:
    """infer.compile_prefill (model/prefill.py; inductor on a CPU): the same greedy tokens as
    the eager prefill over batches of both tasks and other prompt lengths, the keys/values
    written where the decoding steps read them (a wrong cache layer changes the answers), and
    every layer and padded batch served by one compiled graph (dynamic shapes, the cache
    layer's index not specialized), plus one for single rows, which have no padding mask: more
    graphs would mean a compile per layer or per batch."""
    from torch._dynamo.utils import counters

    from pronlora.infer.batching import generation_batches
    from pronlora.infer.generation import generate
    from pronlora.infer.models import Models, RunSpec

    monkeypatch.setenv("PRONLORA_CACHE", str(tmp_path / "cache"))
    rows = read_jsonl(demo_prepared / "test.jsonl")[:10]
    answers: dict[bool, list] = {}
    for compiled in (False, True):
        cfg = load_config(
            "smoke",
            [
                "infer.cache=static_graphs",
                f"infer.compile_prefill={compiled}",
                "infer.max_new_tokens_mdd=12",
            ],
        )
        models = Models()
        loaded = models.get(RunSpec(cfg, tiny_model), None)
        assert (loaded.prefill is not None) == compiled
        _context_sensitive(loaded.model)
        audio = models.embed_clips(cfg, rows, {r["audio"] for r in rows})
        torch._dynamo.reset()
        counters.clear()
        answers[compiled] = [
            generate(loaded, cfg, batch_rows, None, None, audio)
            for size in (4, 3)
            for batch_rows in generation_batches(rows, size)
        ]
        assert any(len(b) == 1 for b in generation_batches(rows, 3))
        graphs = counters["stats"]["unique_graphs"]
        assert graphs == (2 if compiled else 0), dict(counters["stats"])
    assert len({a for batch in answers[False] for a, _ in batch}) > 4
    assert answers[True] == answers[False]
    inner = loaded.model.model
    assert all(type(m).__name__.endswith("DecoderLayer") for m in inner.layers)


def test_compiled_prefill_needs_the_graphed_decoding_loop_and_bf16() -> None:
    with pytest.raises(ConfigError, match="infer.compile_prefill: needs infer.cache"):
        load_config("smoke", ["infer.cache=static_eager", "infer.compile_prefill=true"])
    with pytest.raises(ConfigError, match="infer.compile_prefill: measured for"):
        load_config("paper_r64", ["quantization=nf4", "infer.compile_prefill=true"])
    assert load_config("paper_r64", ["infer.compile_prefill=true"]).infer.compile_prefill


def test_graphed_decoding_refuses_batches_past_the_rotary_switch(monkeypatch) -> None:
    """LongRoPE changes its angles past original_max_position_embeddings, which one table of
    angles per batch cannot follow: such a batch is refused naming the key, not decoded."""
    from types import SimpleNamespace

    from pronlora.core.errors import ConfigError
    from pronlora.model import audio_cache, greedy

    config = SimpleNamespace(
        rope_parameters={"rope_type": "longrope", "original_max_position_embeddings": 8}
    )
    monkeypatch.setattr(audio_cache, "multimodal_model", lambda m: SimpleNamespace(config=config))
    assert greedy.rope_limit(config) == 8
    assert greedy.rope_limit(SimpleNamespace(rope_parameters={"rope_type": "default"})) is None
    mask = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="infer.cache=static_graphs"):
        greedy.greedy_decode(SimpleNamespace(config=config), {"attention_mask": mask}, 6, [1], 0)


def _rows_sharing_clips(demo_prepared: Path, clips: int) -> list[dict]:
    """Both tasks' rows of the first ``clips`` clips: each clip appears twice."""
    rows = read_jsonl(demo_prepared / "train.jsonl")
    first = list(dict.fromkeys(r["audio"] for r in rows))[:clips]
    picked = [r for r in rows if r["audio"] in first]
    assert len(picked) == 2 * clips
    return picked


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])  # True: as nf4 trains
def test_cached_audio_embeddings_give_the_plain_loss_and_gradients(
    checkpointing: bool, tiny_model: Path, demo_prepared: Path
) -> None:
    """One group of clips padded as the pass pads them: the cached pass is the plain pass,
    and the audio encoder does not run in it."""
    from contextlib import nullcontext

    from pronlora.model.audio_cache import AudioEmbeddingCache, multimodal_model, why_not_cached

    cfg = load_config("smoke", ["lora.dropout=0.0"])
    loaded = load_model(cfg, tiny_model)
    model = loaded.model
    if checkpointing:  # what the Trainer does: the embedding output then requires grad
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    _nonzero_lora_b(model)
    assert why_not_cached(model, cfg.strategy, "ddp") is None
    rows = _rows_sharing_clips(demo_prepared, 3)
    plain_batch = Collator(loaded.tokenizer, loaded.feature_extractor)(rows)
    keyed = Collator(loaded.tokenizer, loaded.feature_extractor, clip_keys=True)
    cache = AudioEmbeddingCache.build(model, rows, keyed, torch.device("cpu"), nullcontext())
    assert len(cache.rows) == 3  # each clip once, though every clip has two rows
    encoder = multimodal_model(model).embed_tokens_extend.audio_embed.encoder
    calls = []
    hook = encoder.register_forward_hook(lambda *a: calls.append(1))

    results = []
    for batch in (plain_batch, cache.model_inputs(model, keyed(rows))):
        model.zero_grad()
        total, n = label_only_loss(model, batch)
        (total / n).backward()
        results.append((total / n, _lora_grads(model), len(calls)))
    hook.remove()
    (plain, g_plain, plain_calls), (cached, g_cached, cached_calls) = results
    assert plain_calls == 1 and cached_calls == 1  # the cached pass ran no encoder
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-6)
    assert g_plain.keys() == g_cached.keys() and len(g_plain) > 0
    for k in g_plain:
        torch.testing.assert_close(g_cached[k], g_plain[k], rtol=1e-4, atol=1e-7)


def test_audio_embeddings_are_cached_only_while_the_audio_path_is_frozen(
    tiny_model: Path,
) -> None:
    from pronlora.model.audio_cache import multimodal_model, why_not_cached

    lora = load_model(load_config("smoke"), tiny_model).model
    assert why_not_cached(lora, "lora", "zero2") is None
    assert "ZeRO-3" in why_not_cached(lora, "lora", "zero3")
    audio = multimodal_model(lora).embed_tokens_extend.audio_embed
    drop = next(m for m in audio.modules() if isinstance(m, torch.nn.Dropout))
    drop.p = 0.1
    assert "dropout" in why_not_cached(lora, "lora", "ddp")
    drop.p = 0.0
    multimodal_model(lora).embed_tokens.weight.requires_grad_(True)  # as trainable token rows
    assert "control_tokens" in why_not_cached(lora, "lora", "ddp")
    unfrozen = load_model(load_config("smoke", ["strategy=unfreeze"]), tiny_model).model
    assert "unfreeze" in why_not_cached(unfrozen, "unfreeze", "ddp")
    assert "trains" in why_not_cached(unfrozen, "lora", "ddp")  # any trainable audio weight


def test_training_embeds_each_clip_once(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """The Trainer builds the cache at its first pass; no pass runs the encoder after it."""
    from pronlora.model.audio_cache import GROUP, multimodal_model
    from pronlora.train.trainer import build_trainer

    rows = read_jsonl(demo_prepared / "train.jsonl")
    cfg = load_config("smoke", ["max_steps=3"])
    loaded = load_model(cfg, tiny_model)
    encoder = multimodal_model(loaded.model).embed_tokens_extend.audio_embed.encoder
    calls: list[int] = []
    encoder.register_forward_hook(lambda *a: calls.append(1))
    trainer = build_trainer(cfg, loaded, rows, tmp_path / "run")
    passes: list[set[str]] = []
    step = trainer.training_step

    def record(model, inputs, num_items_in_batch=None):
        passes.append(set(inputs))
        return step(model, inputs, num_items_in_batch)

    trainer.training_step = record
    trainer.train()
    clips = {r["audio"] for r in rows}
    assert len(calls) == -(-len(clips) // GROUP)  # the build's groups, and nothing after
    assert len(trainer.audio_cache.rows) == len(clips) and len(passes) == 6
    assert all("audio_clips" in p and "audio_input_features" not in p for p in passes)


_COMPILE_ONE_STEP = """
import sys
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from pronlora.core.atomic import read_jsonl
from pronlora.core.config import ConfigError, load_config
from pronlora.model.collate import Collator
from pronlora.model.load import load_model
from pronlora.train.loss import label_only_loss

loaded = load_model(load_config("smoke", ["compile_layers=true"]), Path(sys.argv[1]))
rows = read_jsonl(Path(sys.argv[2]) / "train.jsonl")[:2]
batch = Collator(loaded.tokenizer, loaded.feature_extractor)(rows)
with torch.no_grad():  # the forward graphs suffice to show where they are cached
    label_only_loss(loaded.model, batch)
print("HITS", counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
aot = counters["aot_autograd"]
print("AOT", aot["autograd_cache_hit"], aot["autograd_cache_miss"])
"""


@pytest.mark.slow
def test_a_second_job_finds_the_compiled_layers_in_the_shared_cache(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """Two processes (two jobs of a grid) with the same $PRONLORA_CACHE: the first compiles the
    decoder layers into <cache>/inductor, the second loads every graph from there, the
    AOTAutograd ones included (no analysis restarted and traced again)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["PRONLORA_CACHE"] = str(tmp_path / "cache")
    args = [sys.executable, "-c", _COMPILE_ONE_STEP, str(tiny_model), str(demo_prepared)]
    counts = []
    for _ in range(2):
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        hits, misses = re.search(r"HITS (\d+) (\d+)", proc.stdout).groups()
        aot_hits, aot_misses = re.search(r"AOT (\d+) (\d+)", proc.stdout).groups()
        counts.append((int(hits), int(misses), int(aot_hits), int(aot_misses)))
    (hits1, misses1, _, aot_misses1), (hits2, misses2, aot_hits2, aot_misses2) = counts
    assert misses1 > 0 and hits1 == 0 and aot_misses1 > 0  # the first job compiles
    assert hits2 >= misses1 and misses2 == 0, counts  # the second finds every graph
    assert aot_hits2 >= aot_misses1 and aot_misses2 == 0, counts
    assert any(p.is_file() for p in (tmp_path / "cache" / "inductor").rglob("*"))

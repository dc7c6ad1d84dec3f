"""Greedy decoding over a preallocated KV cache, each decoding step replayed as one CUDA graph.

Why: with the key/value copies gone, eager decoding steps still kept an H100 only 55-72 %
busy: about 1,500 kernel launches and 4 host syncs per step at batches of 256
(bench/results/*-2026-11-27-profile-bf16-same-machine-infer.md). A captured step is one launch.

What runs is what transformers' ``generate`` runs for greedy search with
``cache_implementation="static"``: the prefill is the model's own forward (prefill.py); each
step feeds the model's own embedding, decoder layers, norm and head with the inputs generate
gives them (the left-padding mask extended by one real position per step, each row's next
position, the rotary angles of those positions, the same static cache), takes the float32
argmax, pads rows that stopped and stops when every row has. Three differences, none changing
a token: the cache is sized by this batch alone (generate keeps the largest size any earlier
call used, so its shapes depended on what the process decoded before); attention skips the
cache's unwritten positions (cache_window.py); and the stop check reads the GPU every
``CHECK_EVERY`` steps instead of every step (the extra steps only write padding).
On a CPU the same step runs eagerly, which is how the tests compare it with ``generate``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from pronlora.core.errors import ConfigError
from pronlora.model.cache_window import (
    TAKES_A_CUT_MASK,
    attention_of,
    cache_keyword,
    on_cache,
    window,
)
from pronlora.model.prefill import Prefill

# Steps between two reads of "has every row stopped?" (each read waits for the GPU).
CHECK_EVERY = 8

# (step index as a 0-d device tensor, float32 scores) -> scores; step 0 is the prefill's token.
Force = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def causal_lm(model: Any) -> Any:
    """The CausalLM (the module with ``lm_head``) inside a PEFT-wrapped or plain model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def rope_limit(config: Any) -> int | None:
    """Longest sequence whose rotary angles do not depend on the sequence's length (LongRoPE
    and dynamic NTK change them past ``original_max_position_embeddings``); None: no such
    switch."""
    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind not in ("longrope", "dynamic"):
        return None
    limit = params.get("original_max_position_embeddings") or getattr(
        config, "original_max_position_embeddings", None
    )
    if limit is None:
        raise ValueError(f"rope_type {kind!r} without original_max_position_embeddings")
    return int(limit)


@torch.inference_mode()
def greedy_decode(
    model: Any,
    inputs: dict[str, torch.Tensor],
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    force: Force | None = None,
    graphs: bool = True,
    prefill: Prefill | None = None,
) -> torch.Tensor:
    """(batch, max_new_tokens) answer tokens: each row's greedy tokens, ``pad_id`` after its
    first stop token. ``inputs``: ``attention_mask`` (left padding) and ``inputs_embeds`` or
    ``input_ids``. ``graphs``: capture the step as a CUDA graph (ignored off CUDA).
    ``prefill``: the loaded model's (compiled) prefill, else an eager one."""
    from transformers import StaticCache

    from pronlora.model.audio_cache import multimodal_model

    lm, inner = causal_lm(model), multimodal_model(model)
    mask2d = inputs["attention_mask"]
    batch, prompt = mask2d.shape
    dev = mask2d.device
    # generate's size: max_length - 1 = prompt + max_new_tokens - 1 (the last token is never fed)
    size = prompt + max_new_tokens - 1
    limit = rope_limit(inner.config)
    if limit is not None and size > limit:
        raise ConfigError(
            f"infer.cache=static_graphs: a batch of {prompt}-token prompts plus "
            f"{max_new_tokens} answer tokens passes position {limit}, where this model's rotary "
            "angles change; use infer.cache=static_eager or a smaller max_length"
        )
    cache = StaticCache(config=lm.config.get_text_config(decoder=True), max_cache_len=size)
    positions = mask2d.long().cumsum(-1) - 1
    positions = positions.masked_fill(mask2d == 0, 0)
    prompt_inputs = {k: v for k, v in inputs.items() if k not in ("attention_mask", "input_ids")}
    if "inputs_embeds" not in prompt_inputs:
        prompt_inputs["input_ids"] = inputs["input_ids"]
    if prefill is None:
        prefill = Prefill(inner, compiled=False)
    with prefill.active(cache, batch):
        out = model(
            **prompt_inputs,
            attention_mask=mask2d,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
            **{cache_keyword(lm): cache},
        )
    stop = torch.tensor(stop_ids, device=dev)
    step_no = torch.zeros((), dtype=torch.long, device=dev)
    scores = out.logits[:, -1].to(copy=True, dtype=torch.float32)
    del out
    first = (force(step_no, scores) if force else scores).argmax(-1)
    finished = torch.isin(first, stop)
    answer = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    answer[:, 0] = first
    if max_new_tokens == 1:
        return answer

    # the step's inputs, updated in place (a graph replays on fixed addresses)
    tokens = first[:, None].clone()
    pos = positions[:, -1:] + 1
    mask = torch.zeros((batch, 1, 1, size), dtype=torch.bool, device=dev)
    mask[:, 0, 0, :prompt] = mask2d.bool()
    write_at = torch.tensor([prompt], device=dev)
    step_no.fill_(1)
    # every position's rotary angles at once: the same values as per step (guarded above)
    probe = torch.zeros((1, 1, 1), dtype=inner.embed_tokens.weight.dtype, device=dev)
    cos_t, sin_t = inner.rotary_emb(probe, torch.arange(size, device=dev)[None])
    cos_t, sin_t = cos_t[0], sin_t[0]
    pad = torch.tensor(pad_id, device=dev)

    eager_layers = list(inner.layers)
    cut = attention_of(inner) in TAKES_A_CUT_MASK

    def step(width: int, layers: list[torch.nn.Module]) -> None:
        """One decoding step whose ``layers`` attend to the cache's first ``width`` positions."""
        mask.index_fill_(3, write_at, True)
        hidden = inner.embed_tokens(tokens)
        flat = pos.view(-1)
        angles = (cos_t[flat][:, None], sin_t[flat][:, None])
        for layer in layers:
            hidden = layer(
                hidden,
                attention_mask=mask[..., :width] if cut else mask,
                position_ids=pos,
                use_cache=True,
                position_embeddings=angles,
            )
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        logits = lm.lm_head(inner.norm(hidden)[:, -1:])[:, -1].to(torch.float32)
        nxt = (force(step_no, logits) if force else logits).argmax(-1)
        nxt = torch.where(finished, pad, nxt)
        finished.logical_or_(torch.isin(nxt, stop))
        answer.index_copy_(1, step_no.view(1), nxt[:, None])
        tokens.copy_(nxt[:, None])
        pos.add_(1)
        write_at.add_(1)
        step_no.add_(1)

    # Step i writes position prompt + i - 1, so it attends to window(prompt + i) positions.
    # With graphs, each window width's first step runs eagerly on a side stream (warming up
    # what capture needs), then one step is captured (not executed) and replayed until the
    # window grows; the graphs share one memory pool.
    graphed = graphs and dev.type == "cuda" and max_new_tokens > 2
    side = torch.cuda.Stream(device=dev) if graphed else None
    run: Callable[[], None] | None = None
    run_width = warm_width = 0
    pool = None
    i = 1
    while i < max_new_tokens:
        if (i - 1) % CHECK_EVERY == 0 and bool(finished.all()):
            break
        width = window(prompt + i, size) if cut else size
        if width != run_width:
            layers = on_cache(eager_layers, cache, width, cut)
            if not graphed:
                run, run_width = functools.partial(step, width, layers), width
            elif warm_width != width:
                side.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(side):
                    step(width, layers)
                torch.cuda.current_stream(dev).wait_stream(side)
                warm_width = width
                i += 1
                continue
            else:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    step(width, layers)
                pool = pool or graph.pool()
                run, run_width = graph.replay, width
        run()
        i += 1
    return answer

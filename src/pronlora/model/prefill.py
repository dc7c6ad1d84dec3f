"""The prompt's forward (prefill) of the graphed decoding loop, over a fresh static cache.

Each decoder layer is handed its own layer of the batch's cache, wrapped so that attention
sees only the positions the prompt wrote. The cache is sized for the prompt plus
``max_new_tokens`` (256 for MDD), and the model's attention would otherwise run over every
column, the empty ones masked: about twice the keys an MDD prompt has. Masked columns add
exact zeros to the softmax, so the answers do not change (tested against ``generate``).

``compiled``: the layers go through ``torch.compile`` (dynamic shapes: every batch has its own
prompt length and cache size). What bounds graphed decoding is the prefill (the APA prompt is
about 500 tokens after the audio), and a third of its kernel time went to the eager layer's
unfused copies, casts and bf16 elementwise kernels (RMSNorm, partial rotary, SiLU gating,
residual adds; ``bench/results/*-2026-12-06-profile-bf16-graphs.md``). Because each layer calls
its own cache layer's ``update`` (with an index that layer ignores), all 32 layers share one
compiled graph instead of specializing on their index. The decoding steps stay eager (a
captured step is one launch already); fused kernels round bf16 intermediates otherwise than
eager ones, so answers can move where the top two tokens tie.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pronlora.model.attention import FOLDED_GQA
from pronlora.model.compiling import use_shared_compile_cache


class _PromptPositions:
    """A fresh static cache layer: keeps what the prompt writes, returns only those positions
    (valid because the prefill starts at position 0)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kw: Any):
        keys, values = self.layer.update(key_states, value_states, *args, **kw)
        written = key_states.shape[-2]
        return keys[:, :, :written], values[:, :, :written]


class _WithCacheLayer(torch.nn.Module):
    """A decoder layer that writes its keys/values into its own cache layer."""

    def __init__(self, layer: torch.nn.Module, cache_layer: Any) -> None:
        super().__init__()
        self.layer = layer
        self.cache_layer = cache_layer

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> Any:
        kwargs["past_key_values"] = self.cache_layer
        return self.layer(hidden_states, **kwargs)


class Prefill:
    """The decoder layers of one loaded model, as prefills run them (``active``)."""

    def __init__(self, inner: Any, compiled: bool) -> None:
        self.inner = inner
        self.compiled = compiled
        self.layers: list[torch.nn.Module] = list(inner.layers)
        if compiled:
            use_shared_compile_cache()
            # emulate_precision_casts: fused kernels round where eager rounds to bf16
            options = {"emulate_precision_casts": True}
            self.layers = [torch.compile(m, dynamic=True, options=options) for m in self.layers]
        # only this attention cuts the mask to the keys it is given (attention.py)
        implementation = getattr(inner.layers[0].self_attn.config, "_attn_implementation", None)
        self.prompt_keys_only = implementation == FOLDED_GQA

    @contextmanager
    def active(self, cache: Any, batch: int) -> Iterator[None]:
        """Within: ``inner``'s layers are these, each writing into its layer of ``cache`` (a
        fresh StaticCache, allocated here for ``batch`` rows)."""
        config = self.inner.config
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        weight = self.inner.embed_tokens.weight
        cache.early_initialization(
            batch, config.num_key_value_heads, head_dim, weight.dtype, weight.device
        )
        layers = self.inner.layers
        eager = list(layers)
        for i, (layer, cache_layer) in enumerate(zip(self.layers, cache.layers, strict=True)):
            view = _PromptPositions(cache_layer) if self.prompt_keys_only else cache_layer
            layers[i] = _WithCacheLayer(layer, view)
        try:
            yield
        finally:
            for i, layer in enumerate(eager):
                layers[i] = layer

"""The prompt's forward (prefill) through decoder layers compiled once per worker.

Why: with each decoding step a CUDA graph replay, what bounds decoding is the prefill (the APA
prompt is about 500 tokens after the audio), and a third of its kernel time went to the eager
layer's unfused copies, casts and bf16 elementwise kernels (RMSNorm, partial rotary, SiLU
gating, residual adds; ``bench/results/*-2026-12-06-profile-bf16-graphs.md``).

Each layer is ``torch.compile``-d with dynamic shapes (every batch has its own prompt length
and cache size) and, for the prefill only, handed its own layer of the batch's static cache:
the attention then calls that layer's ``update`` with an index it ignores, so all 32 layers
share one compiled graph instead of specializing on their index. The decoding steps run the
eager layers (a captured step is one launch already). The model's own forward still builds
the mask, rotary angles and head, so only the layers' arithmetic changes: fused kernels round
bf16 intermediates otherwise than eager ones (answers can move where the top two tokens tie).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pronlora.model.compiling import use_shared_compile_cache


class _WithCacheLayer(torch.nn.Module):
    """A compiled decoder layer that writes its keys/values into its own cache layer."""

    def __init__(self, compiled: torch.nn.Module, cache_layer: Any) -> None:
        super().__init__()
        self.compiled = compiled
        self.cache_layer = cache_layer

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> Any:
        kwargs["past_key_values"] = self.cache_layer
        return self.compiled(hidden_states, **kwargs)


class CompiledPrefill:
    """The decoder layers of one loaded model, compiled for prefills (``active``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        use_shared_compile_cache()
        # emulate_precision_casts: fused kernels round where eager rounds to bf16
        self.compiled = [
            torch.compile(layer, dynamic=True, options={"emulate_precision_casts": True})
            for layer in inner.layers
        ]

    @contextmanager
    def active(self, cache: Any, batch: int) -> Iterator[None]:
        """Within: ``inner``'s layers are the compiled ones, each writing into its layer of
        ``cache`` (a StaticCache, allocated here for ``batch`` rows)."""
        config = self.inner.config
        heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // (
            config.num_attention_heads
        )
        weight = self.inner.embed_tokens.weight
        cache.early_initialization(batch, heads, head_dim, weight.dtype, weight.device)
        layers = self.inner.layers
        eager = list(layers)
        pairs = zip(self.compiled, cache.layers, strict=True)
        for i, (compiled, cache_layer) in enumerate(pairs):
            layers[i] = _WithCacheLayer(compiled, cache_layer)
        try:
            yield
        finally:
            for i, layer in enumerate(eager):
                layers[i] = layer

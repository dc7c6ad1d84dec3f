"""The prompt's forward (prefill) of the graphed decoding loop, over a fresh static cache.

Each decoder layer is handed its own layer of the batch's cache, wrapped so that attention
sees only the positions the prompt wrote (cache_window.py: the cache is sized for the prompt
plus ``max_new_tokens``, about twice the keys an MDD prompt has).

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

from pronlora.model.cache_window import CUTS_ITS_MASK, attention_of, on_cache
from pronlora.model.compiling import use_shared_compile_cache


class Prefill:
    """The decoder layers of one loaded model, as prefills run them (``active``)."""

    def __init__(self, inner: Any, compiled: bool) -> None:
        self.inner = inner
        self.layers: list[torch.nn.Module] = list(inner.layers)
        if compiled:
            use_shared_compile_cache()
            # emulate_precision_casts: fused kernels round where eager rounds to bf16
            options = {"emulate_precision_casts": True}
            self.layers = [torch.compile(m, dynamic=True, options=options) for m in self.layers]
        # the model builds the prefill's mask for the whole cache
        self.prompt_keys_only = attention_of(inner) in CUTS_ITS_MASK

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
        for i, layer in enumerate(on_cache(self.layers, cache, None, self.prompt_keys_only)):
            layers[i] = layer
        try:
            yield
        finally:
            for i, layer in enumerate(eager):
                layers[i] = layer

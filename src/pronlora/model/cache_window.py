"""Decoder layers that attend to the first positions of a static cache only.

The graphed decoding loop sizes its cache for the prompt plus ``max_new_tokens`` (256 for MDD),
and attention would otherwise run over every column, the unwritten ones masked: a trained
model's MDD answer is about 60 tokens, so most of an MDD batch's columns stay empty. Masked
columns add exact zeros to the softmax, so a window that holds every written position gives
the same attention (the tests compare the tokens with ``generate``'s).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from pronlora.model.attention import FOLDED_GQA

# Window widths grow in steps of this many positions (each width is one captured graph).
WINDOW_STEP = 64
# Attention implementations that cut the mask to the keys they are given (the prefill's
# mask is built by the model for the whole cache); the steps pass their own cut mask.
CUTS_ITS_MASK = (FOLDED_GQA,)
TAKES_A_CUT_MASK = ("sdpa", FOLDED_GQA)


class _FirstPositions:
    """A static cache layer that hands attention only its first ``width`` positions (None:
    as many as this update wrote, for a prefill from position 0)."""

    def __init__(self, layer: Any, width: int | None) -> None:
        self.layer, self.width = layer, width

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kw: Any):
        keys, values = self.layer.update(key_states, value_states, *args, **kw)
        width = key_states.shape[-2] if self.width is None else self.width
        return keys[:, :, :width], values[:, :, :width]


def cache_keyword(module: torch.nn.Module) -> str:
    """The keyword a transformers model or decoder layer takes its cache by.

    transformers 5.24 renamed ``past_key_values`` to ``cache``; given both, a layer uses
    ``cache`` and ignores the other with a FutureWarning, so a cache view passed by the old
    name would silently lose to the model's whole cache.
    """
    return _cache_keyword_of(type(module))


@functools.cache  # read once per class: decoding wraps 32 layers at every window change
def _cache_keyword_of(cls: type) -> str:
    forward = inspect.unwrap(cls.forward)
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class _OnCacheLayer(torch.nn.Module):
    """A decoder layer that writes its keys/values into its own cache layer (so that layers
    sharing one compiled graph need not look up their index in the whole cache)."""

    def __init__(self, layer: torch.nn.Module, cache_layer: Any) -> None:
        super().__init__()
        self.layer = layer
        self.cache_layer = cache_layer
        # the layer may be compiled: its keyword is read from the module it wraps
        self.keyword = cache_keyword(getattr(layer, "_orig_mod", layer))

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> Any:
        kwargs[self.keyword] = self.cache_layer
        return self.layer(hidden_states, **kwargs)


def attention_of(inner: Any) -> str | None:
    return getattr(inner.layers[0].self_attn.config, "_attn_implementation", None)


def on_cache(
    layers: list[torch.nn.Module], cache: Any, width: int | None, cut: bool = True
) -> list[torch.nn.Module]:
    """``layers``, each on its layer of ``cache``, attending to its first ``width`` positions
    (None: the positions the call writes); ``cut=False``: to the whole cache."""
    views = [_FirstPositions(c, width) if cut else c for c in cache.layers]
    return [_OnCacheLayer(m, v) for m, v in zip(layers, views, strict=True)]


def window(needed: int, size: int) -> int:
    """The window width for ``needed`` written positions: the next multiple of WINDOW_STEP,
    at most the cache size."""
    return min(size, -(-needed // WINDOW_STEP) * WINDOW_STEP)

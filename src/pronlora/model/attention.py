"""SDPA for grouped-query attention under a padding mask, without copying keys and values.

Phi-4-mini has 24 query heads over 8 key/value heads. transformers' ``sdpa`` passes
``enable_gqa`` to PyTorch only when there is no mask; with one (left-padded generation
batches, padded training micro-batches) it first copies every key and value three times
(``repeat_kv``), and each decoding step re-copies the whole cache: over half of the
generation kernel time on an H100 went to copies. Here the query heads that share a
key/value head are folded into the query length instead (head h = g * n + j becomes query
row j * L + i of group g, the mask's row i repeated for each j). Every query row meets the
same keys, values and mask row as before, so the result is the same attention, and PyTorch
picks its masked kernels on tensors a third the size.

Only passes without autograd (generation, evaluation) are folded. In a training step on an H100
the copies were 3 % of kernel time either way, and the folded kernels' attention time was higher
(bench/results/*-2026-11-26-profile-bf16-{same-run,attention}-train.md), so passes that build a
graph go to transformers' ``sdpa`` unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

FOLDED_GQA = "sdpa_folded_gqa"


def folded_gqa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (B, Hq, L, D) queries over (B, Hkv, S, D)
    keys/values -> (B, L, Hq, D). Without a mask, without grouping or under autograd, plain
    ``sdpa``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    groups = key.shape[1]
    if (
        attention_mask is None
        or torch.is_grad_enabled()
        or heads == groups
        or attention_mask.dim() != 4
        or attention_mask.shape[1] != 1
        or kwargs.get("position_bias") is not None
    ):
        if attention_mask is not None:  # keys may be cut short of the mask (cache_window.py)
            attention_mask = attention_mask[..., : key.shape[2]]
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    per_group = heads // groups
    mask = attention_mask[:, :, :, : key.shape[2]]
    mask = mask[:, :, None].expand(-1, -1, per_group, -1, -1)
    mask = mask.reshape(mask.shape[0], 1, per_group * length, mask.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(batch, groups, per_group * length, dim),
        key,
        value,
        attn_mask=mask,
        dropout_p=dropout,
        scale=scaling,
    )
    return out.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``attn_implementation="sdpa_folded_gqa"`` known to transformers (its masks are
    sdpa's); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FOLDED_GQA, folded_gqa_attention)
    AttentionMaskInterface.register(FOLDED_GQA, sdpa_mask)

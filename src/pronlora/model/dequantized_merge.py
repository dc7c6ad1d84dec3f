"""A QLoRA checkpoint for decoding: its 4-bit base dequantized to bf16, the LoRA merged into it.

Why: an nf4 decode ran the LoRA beside every 4-bit layer, with its input cast to the fp32
adapter, fp32 matmuls and an add per module, at 50 instances/s on an H100 against 85 for the
merged bf16 model (bench/results/*-12-06-profile-nf4-graphs.md); only 4 % of its kernel time was
dequantization. Merged into the dequantized weights it decodes as a bf16 model does.

The arithmetic is PEFT's merge of a 4-bit layer (``peft.tuners.lora.bnb.Linear4bit.merge``:
the dequantized weight plus ``get_delta_weight``, summed in fp32) without its last step, which
quantizes the sum to 4 bits again and so rounds most of the LoRA update away. The weights are
the nf4 values training saw plus the update, rounded once to bf16 (as a bf16 merge rounds): the
language model then takes about 7.6 GB instead of 2.3.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def merge_into_dequantized(model: Any, dtype: torch.dtype) -> Any:
    """The CausalLM inside PEFT model ``model`` with each LoRA layer over a 4-bit layer replaced
    by one ``dtype`` Linear holding the merged weight."""
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    merged = 0
    for name, module in list(inner.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        base = module.base_layer
        if not isinstance(base, bnb.nn.Linear4bit):
            raise RuntimeError(f"{name}: LoRA over {type(base).__name__}, not a 4-bit layer")
        adapters = list(module.active_adapters)
        if len(adapters) != 1 or module.merged:
            raise RuntimeError(f"{name}: expected one active, unmerged adapter, got {adapters}")
        (adapter,) = adapters
        if module.use_dora.get(adapter) or module.lora_bias.get(adapter):
            raise RuntimeError(f"{name}: DoRA and LoRA biases are not merged here")
        if getattr(module, "fan_in_fan_out", False):
            raise RuntimeError(f"{name}: fan_in_fan_out is not merged here")
        weight = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state)
        a = module.lora_A[adapter].weight.float()
        b = module.lora_B[adapter].weight.float()
        total = weight.float() + (b @ a) * module.scaling[adapter]
        plain = torch.nn.Linear(
            base.in_features, base.out_features, bias=base.bias is not None, device="meta"
        )
        plain.weight = torch.nn.Parameter(total.to(dtype), requires_grad=False)
        if base.bias is not None:
            plain.bias = torch.nn.Parameter(base.bias.data.to(dtype), requires_grad=False)
        parent, _, leaf = name.rpartition(".")
        setattr(inner.get_submodule(parent) if parent else inner, leaf, plain)
        merged += 1
    if not merged:
        raise RuntimeError(f"{type(inner).__name__}: no LoRA layer to merge")
    log.info("LoRA merged into %d dequantized 4-bit layers (%s)", merged, dtype)
    return inner

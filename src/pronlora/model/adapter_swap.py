"""Another checkpoint of the same run swapped into a loaded, merged model, so that a worker
decoding several checkpoints loads the base once (the load, the speech-adapter merge and, for a
LoRA run, the audio embeddings are the same for all of them).

The swapped weights must equal a fresh load's. Subtracting the last delta does not undo a merge
(``W + d`` rounded to bf16, minus ``d``, is not ``W``), so each LoRA target's unmerged weight is
kept (in pinned host memory on a GPU) and restored; then the next checkpoint's LoRA factors are
copied into PEFT's own LoRA layers, kept after ``merge_and_unload``, and PEFT's ``merge`` adds
their delta with the arithmetic a fresh load uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pronlora.core.config import ConfigError
from pronlora.core.layout import UNFROZEN_FILE
from pronlora.model.load import TRAIN_ADAPTER, load_unfrozen_state
from pronlora.model.snapshot import ADAPTER_WEIGHTS

log = logging.getLogger(__name__)


@dataclass
class SwappableLora:
    peft_model: Any  # the PeftModel whose base model was merged and unloaded
    layers: dict[str, Any]  # PEFT module name -> its LoRA layer, kept after the unload
    base: dict[str, torch.Tensor]  # PEFT module name -> its unmerged base weight
    unfrozen: bool  # the checkpoints also carry the audio modules' weights

    @classmethod
    def capture(cls, peft_model: Any, unfrozen: bool) -> SwappableLora | None:
        """Before the merge: the LoRA layers and a copy of their base weights; None when the
        model holds something a swap does not restore (another kind of adapter layer, a LoRA
        variant, LoRA biases, several adapters, a 4-bit base)."""
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers: dict[str, Any] = {}
        for name, module in peft_model.named_modules():
            if not isinstance(module, BaseTunerLayer):
                continue
            base = module.get_base_layer()
            plain = (
                type(module) is LoraLinear
                and list(module.lora_A) == [TRAIN_ADAPTER]
                and not module.lora_variant
                and not module.lora_bias[TRAIN_ADAPTER]
                and not module.fan_in_fan_out
                and isinstance(base, torch.nn.Linear)
                and base.weight.dtype in (torch.bfloat16, torch.float16, torch.float32)
            )
            if not plain:
                log.info("%s (%s): checkpoints load afresh", name, type(module).__name__)
                return None
            layers[name] = module
        if not layers:
            return None
        pin = torch.cuda.is_available()
        saved = {}
        for name, module in layers.items():
            w = module.get_base_layer().weight
            saved[name] = torch.empty(w.shape, dtype=w.dtype, pin_memory=pin).copy_(w.detach())
        return cls(peft_model, layers, saved, unfrozen)

    @property
    def touches_audio(self) -> bool:
        """Whether a checkpoint changes what the audio embedding computes."""
        audio = "embed_tokens_extend"
        return self.unfrozen or any(audio in name for name in self.layers)

    def accepts(self, checkpoint_dir: Path | None) -> bool:
        """False where a fresh load is needed: the untrained audio modules of an unfreeze run
        are not kept."""
        return not (checkpoint_dir is None and self.unfrozen)

    def swap(self, checkpoint_dir: Path | None) -> None:
        """Put ``checkpoint_dir``'s weights in place of the merged ones (``None``: the untrained
        LoRA, whose B is zero)."""
        from safetensors.torch import load_file

        if not self.accepts(checkpoint_dir):
            raise ValueError(f"{checkpoint_dir}: needs a fresh load")
        factors = {}
        if checkpoint_dir is not None:
            path = checkpoint_dir / ADAPTER_WEIGHTS
            state = load_file(str(path))
            expected = {
                f"{name}.lora_{ab}.weight": getattr(layer, f"lora_{ab}")[TRAIN_ADAPTER].weight
                for name, layer in self.layers.items()
                for ab in "AB"
            }
            wrong = sorted(state.keys() ^ expected.keys())
            if wrong:
                raise ConfigError(f"{path}: adapter keys do not fit the model: {wrong[:3]}")
            for key, param in expected.items():
                if state[key].shape != param.shape:
                    raise ConfigError(
                        f"{path}: {key} has shape {tuple(state[key].shape)}, the model's LoRA "
                        f"{tuple(param.shape)}"
                    )
            factors = state
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.get_base_layer().weight.copy_(self.base[name], non_blocking=True)
                a, b = layer.lora_A[TRAIN_ADAPTER].weight, layer.lora_B[TRAIN_ADAPTER].weight
                if checkpoint_dir is None:
                    b.zero_()
                else:
                    a.copy_(factors[f"{name}.lora_A.weight"])
                    b.copy_(factors[f"{name}.lora_B.weight"])
                layer.merged_adapters = []
                layer.merge(adapter_names=[TRAIN_ADAPTER])
        if checkpoint_dir is not None and self.unfrozen:
            load_unfrozen_state(self.peft_model, checkpoint_dir / UNFROZEN_FILE)

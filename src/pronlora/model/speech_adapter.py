"""The snapshot's speech adapter: read in either key style, attach, merge, and prove it landed.

The Hub's native conversion stores ``speech-lora/adapter_model.safetensors`` with keys such as
``model.layers.0.self_attn.qkv_proj.lora_A.weight``; PEFT's ``save_pretrained`` prefixes them
with ``base_model.model.``. ``PeftModel.from_pretrained`` on unprefixed keys only warns and
applies nothing, so a model that cannot hear would be trained without an error. Here both
styles are normalised, every adapted module is checked to hold exactly the file's values, and
a merge is checked to have changed every adapted weight.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pronlora.core.errors import SnapshotError
from pronlora.model.snapshot import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_KEY_PREFIX,
    SPEECH_ADAPTER_DIR,
    adapter_modules,
    read_json,
    safetensors_header,
)

log = logging.getLogger(__name__)


@dataclass
class SpeechAdapter:
    path: Path
    config: Any  # peft.LoraConfig
    state: dict[str, torch.Tensor]  # keys in PEFT's saved form (prefixed, no adapter name)
    style: str  # "hub" or "peft": how the file keyed them
    modules: set[str]  # adapted module names, relative to the CausalLM


def read_speech_adapter(model_dir: Path) -> SpeechAdapter:
    from peft import LoraConfig
    from safetensors.torch import load_file

    folder = Path(model_dir) / SPEECH_ADAPTER_DIR
    weights = folder / ADAPTER_WEIGHTS
    raw_cfg = read_json(folder / ADAPTER_CONFIG)
    safetensors_header(weights)  # a truncated file is named, not a safetensors traceback
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"{folder / ADAPTER_CONFIG}: not a LoRA config ({exc})") from exc
    raw = load_file(str(weights))
    style, modules = adapter_modules(sorted(raw), weights)
    if all(not torch.any(v != 0) for k, v in raw.items() if ".lora_B." in k):
        raise SnapshotError(f"{weights}: every lora_B is zero, the adapter would change nothing")
    state = {PEFT_KEY_PREFIX + k.removeprefix(PEFT_KEY_PREFIX): v for k, v in raw.items()}
    log.info(
        "speech adapter %s: %d modules, r=%s, alpha=%s, %s-style keys",
        weights,
        len(modules),
        raw_cfg.get("r"),
        raw_cfg.get("lora_alpha"),
        style,
    )
    return SpeechAdapter(weights, config, state, style, modules)


def _lora_layers(model: Any, adapter_name: str) -> dict[str, Any]:
    """LoRA layers holding ``adapter_name``, keyed by module name relative to the CausalLM."""
    out = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and adapter_name in lora_a:
            out[name.removeprefix(PEFT_KEY_PREFIX)] = module
    return out


def attach_speech_adapter(base: Any, model_dir: Path, *, adapter_name: str, trainable: bool) -> Any:
    """PeftModel with the snapshot's speech adapter loaded, checked value by value."""
    from peft import get_peft_model, set_peft_model_state_dict

    adapter = read_speech_adapter(model_dir)
    adapter.config.inference_mode = not trainable
    model = get_peft_model(base, adapter.config, adapter_name=adapter_name)
    result = set_peft_model_state_dict(model, adapter.state, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise SnapshotError(f"{adapter.path}: keys that match no module: {unexpected[:3]}")
    layers = _lora_layers(model, adapter_name)
    if set(layers) != adapter.modules:
        extra = sorted(set(layers) - adapter.modules)
        absent = sorted(adapter.modules - set(layers))
        raise SnapshotError(
            f"{adapter.path}: adapter config targets {len(layers)} modules, the file holds "
            f"{len(adapter.modules)} (targeted without weights: {extra[:3]}; weights without a "
            f"target: {absent[:3]})"
        )
    for name, layer in layers.items():
        for ab in ("A", "B"):
            got = getattr(layer, f"lora_{ab}")[adapter_name].weight
            want = adapter.state[f"{PEFT_KEY_PREFIX}{name}.lora_{ab}.weight"]
            if not torch.equal(got.detach().to("cpu", want.dtype), want):
                raise SnapshotError(
                    f"{adapter.path}: {name}.lora_{ab} did not load (values differ from the file)"
                )
    if not trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    log.info("speech adapter attached: %d modules hold the file's values", len(layers))
    return model


def merge_speech_adapter(base: Any, model_dir: Path) -> Any:
    """Base with the speech adapter merged in; raises if any adapted weight did not change.

    Merged straight from the file, on the weights' device, with PEFT's own arithmetic (fp32
    ``B @ A`` times ``alpha / r`` added to the bf16 weight, as ``merge_and_unload`` does after
    upcasting the adapter; a test compares the two bit for bit). Wrapping the model in PEFT
    first built and initialised 461M rank-320 adapter parameters only to overwrite them: 3-4 s
    of every job's start on an H100, where the merge itself takes under a second.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    adapter = read_speech_adapter(model_dir)
    config = adapter.config
    unsupported = [
        key
        for key, value in (
            ("use_dora", config.use_dora),
            ("fan_in_fan_out", config.fan_in_fan_out),
            ("lora_bias", getattr(config, "lora_bias", False)),
            ("rank_pattern", config.rank_pattern),
            ("alpha_pattern", config.alpha_pattern),
        )
        if value
    ]
    if unsupported:
        raise SnapshotError(
            f"{adapter.path.parent / ADAPTER_CONFIG}: sets {', '.join(unsupported)}; the "
            "speech adapter merge handles a plain LoRA only"
        )
    targets = {
        name
        for name, module in base.named_modules()
        if isinstance(module, torch.nn.Linear) and check_target_module_exists(config, name)
    }
    if targets != adapter.modules:
        raise SnapshotError(
            f"{adapter.path}: adapter config targets {len(targets)} modules, the file holds "
            f"{len(adapter.modules)} (targeted without weights: "
            f"{sorted(targets - adapter.modules)[:3]}; weights without a target: "
            f"{sorted(adapter.modules - targets)[:3]})"
        )
    scaling = config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)
    unchanged = []
    with torch.no_grad():
        for name in sorted(adapter.modules):
            weight = base.get_submodule(name).weight
            a, b = (
                adapter.state[f"{PEFT_KEY_PREFIX}{name}.lora_{ab}.weight"].to(
                    weight.device, torch.float32
                )
                for ab in ("A", "B")
            )
            if a.shape != (config.r, weight.shape[1]) or b.shape != (weight.shape[0], config.r):
                raise SnapshotError(
                    f"{adapter.path}: {name} has lora_A {tuple(a.shape)} and lora_B "
                    f"{tuple(b.shape)}, its weight {tuple(weight.shape)} with r={config.r} "
                    f"needs {(config.r, weight.shape[1])} and {(weight.shape[0], config.r)}"
                )
            before = _fingerprint(weight)
            weight += (b @ a) * scaling
            if _fingerprint(weight) == before:
                unchanged.append(name)
    if unchanged:
        raise SnapshotError(
            f"{model_dir / SPEECH_ADAPTER_DIR}: merging left {len(unchanged)} adapted weights "
            f"unchanged (first: {unchanged[0]})"
        )
    log.info("speech adapter merged: %d weights changed", len(adapter.modules))
    return base


def _fingerprint(weight: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(weight.detach().float()))

"""Random-weight Phi-4-multimodal snapshots in the Hub's native format.

``full`` uses the real configuration values (24 heads, tied embeddings, longrope with partial
rotary 0.75, audio bias distance 500); ``tiny`` shrinks every width and depth so CPU tests run
in seconds. Both carry the real tokenizer (o200k_base plus Phi-4's special tokens, vocabulary
200,064), the converted config's token ids and generation settings, and a speech adapter stored
the way transformers' native conversion stores it (keys without PEFT's ``base_model.model.``
prefix). Weights are random: metrics are meaningless.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from pronlora.core.atomic import follow_umask, write_text
from pronlora.devtools.o200k_tokenizer import write_phi4_tokenizer
from pronlora.model.snapshot import (
    ADAPTER_TARGET_REGEX,
    ADAPTER_WEIGHTS,
    AUDIO_SPECIAL_TOKEN,
    ENDOFTEXT_TOKEN,
    EOS_TOKEN_IDS,
    IMAGE_SPECIAL_TOKEN,
    PEFT_KEY_PREFIX,
    RANDOM_WEIGHTS_MARKER,
    REAL_SPECIAL_IDS,
    SPEECH_ADAPTER_DIR,
    VOCAB_SIZE,
)

log = logging.getLogger(__name__)


# Token ids as the native conversion writes them into config.json and generation_config.json.
_TOKEN_IDS: dict[str, Any] = {
    "bos_token_id": REAL_SPECIAL_IDS[ENDOFTEXT_TOKEN],
    "pad_token_id": REAL_SPECIAL_IDS[ENDOFTEXT_TOKEN],
    "eos_token_id": EOS_TOKEN_IDS,
}


def _longrope(head_dim: int, partial: float) -> dict[str, Any]:
    half = int(head_dim * partial) // 2
    # Placeholder factors of the right length; they only matter past 4,096 tokens.
    return {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": partial,
        "short_factor": [1.0] * half,
        "long_factor": [1.0 + 0.1 * i for i in range(half)],
    }


def full_config() -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_parameters": _longrope(3072 // 24, 0.75),
        **_TOKEN_IDS,
        "audio_config": {
            "hidden_size": 1024,
            "intermediate_size": 1536,
            "num_blocks": 24,
            "num_attention_heads": 16,
            "bias_max_distance": 500,
            "time_reduction": 8,
            "nemo_conv_channels": 1024,
            "ext_pw_out_channel": 1024,
            "depthwise_separable_out_channel": 1024,
            "input_size": 80,
            "left_chunk": 18,
            "chunk_size": -1,
            "audio_token_id": REAL_SPECIAL_IDS[AUDIO_SPECIAL_TOKEN],
        },
        "vision_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 448,
            "patch_size": 14,
            "image_token_id": REAL_SPECIAL_IDS[IMAGE_SPECIAL_TOKEN],
        },
    }


def tiny_config() -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_parameters": _longrope(64 // 4, 0.75),
        **_TOKEN_IDS,
        "audio_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_blocks": 2,
            "num_attention_heads": 2,
            "bias_max_distance": 500,
            "time_reduction": 8,
            "nemo_conv_channels": 16,
            "ext_pw_out_channel": 32,
            "depthwise_separable_out_channel": 32,
            "input_size": 80,
            "left_chunk": 18,
            "chunk_size": -1,
            "audio_token_id": REAL_SPECIAL_IDS[AUDIO_SPECIAL_TOKEN],
        },
        "vision_config": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
            "image_token_id": REAL_SPECIAL_IDS[IMAGE_SPECIAL_TOKEN],
        },
    }


SIZES = {
    "tiny": (tiny_config, 8, torch.float32),
    "full": (full_config, 320, torch.bfloat16),
}


def make_random_checkpoint(size: str, out: str | Path, seed: int = 0) -> Path:
    """Write a complete snapshot directory (model, tokenizer, feature extractor, speech-lora)."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        GenerationConfig,
        Phi4MultimodalConfig,
        Phi4MultimodalFeatureExtractor,
        Phi4MultimodalForCausalLM,
    )

    if size not in SIZES:
        raise ValueError(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    make_cfg, rank, dtype = SIZES[size]
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Phi4MultimodalConfig(**make_cfg())
    config.architectures = ["Phi4MultimodalForCausalLM"]
    log.info("building %s model (random weights)", size)
    init_device = "cuda" if size == "full" and torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(init_device):
            model = Phi4MultimodalForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(**_TOKEN_IDS)
    model.save_pretrained(out, max_shard_size="5GB")
    write_phi4_tokenizer(out)
    Phi4MultimodalFeatureExtractor().save_pretrained(out)

    # The shipped speech adapter: r=320/alpha=640 at full size, random non-zero B so that
    # merging it really changes the base weights.
    lora = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.01,
        target_modules=ADAPTER_TARGET_REGEX,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora, adapter_name="default")
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02 if size == "tiny" else 1e-3)
    write_speech_adapter(out, lora, _adapter_state(peft_model), style="hub")
    n_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    write_text(
        out / RANDOM_WEIGHTS_MARKER,
        json.dumps(
            {"size": size, "seed": seed, "random_weights": True, "params": n_params}, indent=2
        )
        + "\n",
    )
    follow_umask(out)
    log.info("wrote %s (%d parameters without adapters)", out, n_params)
    return out


def _adapter_state(peft_model: Any) -> dict[str, torch.Tensor]:
    """LoRA weights keyed as the Hub's conversion keys them (no PEFT prefix, no adapter name)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    return {k.removeprefix(PEFT_KEY_PREFIX): v.contiguous() for k, v in state.items()}


def write_speech_adapter(
    model_dir: Path, lora: Any, state: dict[str, torch.Tensor], *, style: str
) -> None:
    """``speech-lora/`` with Hub-style keys (``style="hub"``) or PEFT's prefixed ones ("peft").

    The config is written as the conversion writes it: no base-model path.
    """
    from safetensors.torch import save_file

    if style not in ("hub", "peft"):
        raise ValueError(f"style must be 'hub' or 'peft', got {style!r}")
    folder = model_dir / SPEECH_ADAPTER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lora.base_model_name_or_path = None
    lora.save_pretrained(folder)
    prefix = PEFT_KEY_PREFIX if style == "peft" else ""
    keyed = {prefix + k.removeprefix(PEFT_KEY_PREFIX): v for k, v in state.items()}
    tmp = folder / f".{ADAPTER_WEIGHTS}.tmp"
    save_file(keyed, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / ADAPTER_WEIGHTS)

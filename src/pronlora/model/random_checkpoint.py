"""Random-weight Phi-4-multimodal snapshots that load exactly like the real one.

``full`` uses the real configuration values (24 heads, tied embeddings, longrope with partial
rotary 0.75, audio bias distance 500, real special-token ids); ``tiny`` shrinks every width
and depth so CPU tests run in seconds. Both are written with ``save_pretrained`` and read back
with the same ``from_pretrained`` path a lab's local snapshot of the Hub repo goes through,
including the ``speech-lora/`` PEFT adapter folder. Weights are random: metrics are meaningless.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from pronlora.atomic import write_text
from pronlora.model.tokenizer_build import REAL_SPECIAL_IDS, build_tokenizer

log = logging.getLogger(__name__)

# Target modules of the shipped speech/vision adapters (paper-protocol.md).
ADAPTER_TARGET_REGEX = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"
SPEECH_ADAPTER_DIR = "speech-lora"
MARKER = "pronlora_random_checkpoint.json"


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
        "vocab_size": 200064,
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
        "bos_token_id": 199999,
        "pad_token_id": 199999,
        "eos_token_id": [199999, 200020],
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
            "audio_token_id": 200011,
        },
        "vision_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 448,
            "patch_size": 14,
            "image_token_id": 200010,
        },
    }


# Byte-level BPE size for both sizes: with it the paper's prompts tokenize to about the lengths
# the real tokenizer gives (APA prompt ~510 tokens, MDD prompt ~115), so benchmarks see
# realistic sequence lengths (paper-protocol.md: APA 644 tokens with 51 audio, MDD 234).
BASE_VOCAB = 1000
TINY_SPECIAL_IDS = {tok: BASE_VOCAB + i for i, tok in enumerate(REAL_SPECIAL_IDS)}


def tiny_config() -> dict[str, Any]:
    eos = [TINY_SPECIAL_IDS["<|endoftext|>"], TINY_SPECIAL_IDS["<|end|>"]]
    return {
        "vocab_size": BASE_VOCAB + 64,
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
        "bos_token_id": eos[0],
        "pad_token_id": eos[0],
        "eos_token_id": eos,
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
            "audio_token_id": TINY_SPECIAL_IDS["<|audio|>"],
        },
        "vision_config": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
            "image_token_id": TINY_SPECIAL_IDS["<|image|>"],
        },
    }


SIZES = {
    "tiny": (tiny_config, TINY_SPECIAL_IDS, 8, torch.float32),
    "full": (full_config, REAL_SPECIAL_IDS, 320, torch.bfloat16),
}


def make_random_checkpoint(size: str, out: str | Path, seed: int = 0) -> Path:
    """Write a complete snapshot directory (model, tokenizer, feature extractor, speech-lora)."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        Phi4MultimodalConfig,
        Phi4MultimodalFeatureExtractor,
        Phi4MultimodalForCausalLM,
    )

    if size not in SIZES:
        raise ValueError(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    make_cfg, special_ids, rank, dtype = SIZES[size]
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
    model.save_pretrained(out, max_shard_size="5GB")
    build_tokenizer(out, BASE_VOCAB, special_ids)
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
    peft_model.save_pretrained(out / SPEECH_ADAPTER_DIR)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    write_text(
        out / MARKER,
        json.dumps(
            {"size": size, "seed": seed, "random_weights": True, "params": n_params}, indent=2
        )
        + "\n",
    )
    log.info("wrote %s (%d parameters without adapters)", out, n_params)
    return out

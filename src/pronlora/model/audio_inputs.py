"""A pass's audio merged into the language model's input embeddings with every index known on
the host, for runs that recompute the audio in every pass (Unfreeze).

The model's own merge asks the GPU whether the batch holds audio tokens (``.any()``), where
(``nonzero``) and how many per clip (a sync per clip), and its encoder copies a streaming mask from
pageable memory: host syncs at the start of every pass. The host then could not launch a pass's
~2,000 eager encoder kernels while the GPU still ran the previous pass's backward. Here the
collator's host-side indices take their place and the mask goes over from pinned memory without a
wait. The modules, their order and their random draws are the model's, so are the values (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pronlora.model.audio_cache import AUDIO_INPUTS, merge_audio, multimodal_model

# keys the collator adds (host_audio_index), which the language model does not take
INDEX_KEYS = ("audio_positions", "audio_frames")


def audio_merge_outside_the_model(model: Any, engine: str) -> bool:
    """Whether a pass may run the audio embedding's modules itself: not under ZeRO-3 (its
    weights are gathered for the engine's forward), nor with trainable embedding rows."""
    inner = multimodal_model(model)
    return engine != "zero3" and not any(p.requires_grad for p in inner.embed_tokens.parameters())


def audio_embedded_in_pass(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """The batch with its clips run through the model's audio embedding (encoder, speech
    projection, dropout) and merged as ``Phi4MultimodalAudioEmbedding.forward`` merges them.
    Call it in the autocast context the model's forward runs in."""
    audio = multimodal_model(model).embed_tokens_extend.audio_embed
    up, down = audio.up_proj_for_speech, audio.down_proj_for_speech
    features = inputs["audio_input_features"].to(dtype=up.bias.dtype)
    with _streaming_mask_without_wait(audio.encoder, features.device):
        hidden = audio.encoder(features, inputs["audio_attention_mask"])
    embeds = down(torch.nn.functional.gelu(up(hidden)))
    sizes = inputs["audio_embed_sizes"]
    if max(sizes) > embeds.shape[1]:
        raise RuntimeError(f"audio sizes {sizes} exceed the encoder's {embeds.shape[1]} frames")
    clip, frame = inputs["audio_frames"].to(embeds.device, non_blocking=True)
    merged = merge_audio(model, inputs, embeds[clip, frame], (*AUDIO_INPUTS, *INDEX_KEYS))
    merged["inputs_embeds"] = audio.drop(merged["inputs_embeds"])
    return merged


@contextmanager
def _streaming_mask_without_wait(encoder: Any, device: torch.device) -> Iterator[None]:
    """The encoder's streaming mask (drawn on the host, as the model draws it) copied to the GPU
    from pinned memory without blocking; the encoder's own ``.to(device)`` is then a no-op."""
    build = getattr(encoder, "_streaming_mask", None)
    if device.type != "cuda" or build is None:  # nothing to wait for, or a renamed method
        yield
        return

    def on_device(*args: Any, **kwargs: Any) -> torch.Tensor:
        mask = build(*args, **kwargs)  # (batch, T, T), one (T, T) mask expanded
        return mask[:1].pin_memory().to(device, non_blocking=True).expand(mask.shape)

    encoder._streaming_mask = on_device
    try:
        yield
    finally:
        del encoder._streaming_mask

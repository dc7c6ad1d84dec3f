"""Speech embeddings computed once per clip, in groups fixed by the data alone.

Training (while the audio path is frozen): nothing in the audio encoder or its projection trains,
yet the model recomputes every clip's embeddings in every pass (each clip 6 times over 3 epochs of
APA + MDD): an eager encoder of ~1,300 small kernels plus a host sync per instance, about 45 ms of
a 420-470 ms training pass on an H100 (``bench/pass_costs.py``). The cache runs the model's own
audio embedding once per clip and the passes hand the language model its input embeddings.

Inference: every clip is embedded once for its APA and its MDD instance, and the language model
decodes from those embeddings in batches of any size.

Transformers' Phi-4-MM encoder attends to padding frames (its boolean mask is added to the
position bias, not applied), so a clip's embedding depends on how much padding its batch has.
Clips are therefore embedded in the groups ``clip_groups`` cuts from the whole split: 16 clips
in (duration, path) order. The values depend on the split only: not on the batch size, the
shard, the GPU count, a resume, or the rank that computes them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pronlora.model.collate import Collator, load_audio

log = logging.getLogger(__name__)

GROUP = 16  # clips per encoder batch, in duration order
# keys the collator adds for a cached run, and the audio inputs the language model then skips
CLIP_KEYS = ("audio_clips", "audio_positions")
AUDIO_INPUTS = ("audio_input_features", "audio_embed_sizes", "audio_attention_mask")


def multimodal_model(model: Any) -> Any:
    """The ``Phi4MultimodalModel`` inside a (PEFT-, DDP- or engine-wrapped) CausalLM."""
    while hasattr(model, "module"):  # DDP, DeepSpeed
        model = model.module
    if hasattr(model, "base_model") and hasattr(model.base_model, "model"):  # PeftModel
        model = model.base_model.model
    return model.model


def why_not_cached(model: Any, strategy: str, engine: str) -> str | None:
    """Why this run recomputes the audio embeddings in every pass (None: they can be cached)."""
    if strategy == "unfreeze":
        return "strategy: unfreeze trains the audio encoder"
    if engine == "zero3":
        return "ZeRO-3 partitions the audio encoder's weights"
    inner = multimodal_model(model)
    features = inner.embed_tokens_extend
    if any(p.requires_grad for p in features.audio_embed.parameters()):
        return "a weight of the audio path trains"
    if any(p.requires_grad for p in inner.embed_tokens.parameters()):
        return "embedding rows train (control_tokens: special)"
    drops = [m.p for m in features.audio_embed.modules() if isinstance(m, torch.nn.Dropout)]
    if any(p > 0 for p in drops):
        return f"the audio path has dropout (p={max(drops)}): its embeddings vary by pass"
    if features.audio_embed.encoder.config.chunk_size > 0:
        return "the audio encoder draws streaming chunks at random in training"
    return None


def clip_groups(rows: list[dict[str, Any]], size: int = GROUP) -> list[list[str]]:
    """The encoder batches of a split: all its clips in (duration, path) order, ``size`` each.

    ``rows`` is the whole split (every shard of it), so a clip's group mates, and hence its
    embedding, are the same whichever subset of the split a process decodes or trains on.
    """
    duration = {r["audio"]: float(r["duration_s"]) for r in rows}
    order = sorted(duration, key=lambda clip: (duration[clip], clip))
    return [order[i : i + size] for i in range(0, len(order), size)]


@dataclass
class AudioEmbeddingCache:
    """Each clip's embedding rows on the device, looked up by the clip's path."""

    embeds: dict[str, torch.Tensor]  # clip -> (audio token count, hidden size)

    @property
    def rows(self) -> dict[str, int]:
        """Clip -> its audio token count."""
        return {clip: int(e.shape[0]) for clip, e in self.embeds.items()}

    @classmethod
    def build(
        cls,
        model: Any,
        rows: list[dict[str, Any]],
        collator: Collator,
        device: torch.device,
        autocast: Any,
        workers: int = 0,
    ) -> AudioEmbeddingCache:
        """Embed every clip of ``rows`` through the model's own audio embedding, in the groups
        of ``clip_groups(rows)``; ``autocast`` is the context the model's forward runs under."""
        cache = cls({})
        cache.add(model, clip_groups(rows), collator, device, autocast, workers)
        return cache

    def add(
        self,
        model: Any,
        groups: list[list[str]],
        collator: Collator,
        device: torch.device,
        autocast: Any,
        workers: int = 0,
    ) -> None:
        """Embed each of ``groups`` (one encoder batch each) not embedded yet."""
        groups = [g for g in groups if any(c not in self.embeds for c in g)]
        if not groups:
            return
        t0 = time.perf_counter()
        inner = multimodal_model(model)
        loader = torch.utils.data.DataLoader(
            groups, batch_size=None, num_workers=workers, collate_fn=_GroupFeatures(collator)
        )
        audio_id = int(collator.audio_id)
        dtype = inner.embed_tokens.weight.dtype
        n_clips = 0
        with _rng_untouched(device), torch.no_grad(), autocast:
            for clips, feats in loader:
                sizes = feats["audio_embed_sizes"].tolist()
                # the model's own audio embedding, placed at the first sizes[i] positions of
                # row i (every position an audio token), then cut back out
                width = max(sizes)
                ids = torch.full((len(clips), width), audio_id, dtype=torch.long)
                ids.masked_fill_(torch.arange(width)[None, :] >= torch.tensor(sizes)[:, None], 0)
                embeds = inner.embed_tokens_extend(
                    ids.to(device),
                    torch.zeros(
                        (len(clips), width, inner.config.hidden_size), dtype=dtype, device=device
                    ),
                    **{k: v.to(device) for k, v in feats.items()},
                )
                # one compact copy per group (the padded output is released)
                flat = torch.cat([embeds[i, :n] for i, n in enumerate(sizes)])
                for clip, piece in zip(clips, flat.split(sizes), strict=True):
                    self.embeds[clip] = piece
                n_clips += len(clips)
        seconds = time.perf_counter() - t0
        log.info(
            "audio embedded once per clip: %d clips in %.1f s (%.0f clips/s), %.2f GB on %s",
            n_clips,
            seconds,
            n_clips / max(seconds, 1e-9),
            sum(e.numel() * e.element_size() for e in self.embeds.values()) / 2**30,
            device,
        )

    def model_inputs(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch with its audio replaced by the language model's input embeddings."""
        clips = inputs["audio_clips"]
        positions = inputs["audio_positions"]
        try:
            audio = torch.cat([self.embeds[c] for c in clips])
        except KeyError as exc:
            raise RuntimeError(f"audio clip {exc}: not embedded when the cache was built") from None
        if audio.shape[0] != positions.numel():
            raise RuntimeError(
                f"{positions.numel()} audio positions in the batch, {audio.shape[0]} cached "
                f"embeddings for its clips {clips}"
            )
        inner = multimodal_model(model)
        text = inner.embed_tokens(inputs["input_ids"])
        positions = positions.to(text.device, non_blocking=True)
        # out of place, as the model does: under gradient checkpointing transformers makes the
        # embedding output a leaf that requires grad (enable_input_require_grads)
        flat = text.view(-1, text.shape[-1]).index_copy(0, positions, audio.to(text.dtype))
        skip = {"input_ids", *CLIP_KEYS, *AUDIO_INPUTS}
        kept = {k: v for k, v in inputs.items() if k not in skip}
        return {"inputs_embeds": flat.view_as(text), **kept}


@contextmanager
def _rng_untouched(device: torch.device) -> Iterator[None]:
    """The build draws random numbers (the DataLoader's worker seeds, the encoder's streaming
    mask): restore every generator, so a run resumed at step N (whose generators the Trainer
    restores before this first pass) draws what the uninterrupted run drew."""
    py, npy = random.getstate(), np.random.get_state()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        yield
    random.setstate(py)
    np.random.set_state(npy)


class _GroupFeatures:
    """DataLoader collate: one group's clips and their padded features (in worker processes)."""

    def __init__(self, collator: Collator) -> None:
        self.collator = collator

    def __call__(self, clips: list[str]) -> tuple[list[str], dict[str, torch.Tensor]]:
        return clips, self.collator.audio_features([load_audio(c) for c in clips])

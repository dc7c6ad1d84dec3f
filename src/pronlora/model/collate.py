"""Batches of prepared instances -> model inputs, without the torchvision-bound processor.

The user turn comes from the checkpoint's own chat template; the paper's single audio
placeholder is replaced by as many of the tokenizer's own audio token ids as the feature
extractor says the clip yields (``ceil(frames / 8)``), exactly what the native processor does
with its ``audio_token``. The model embeds audio only where ``input_ids == audio_token_id``, so
every instance is checked to hold exactly that many. Labels are -100 everywhere except the
answer and its closing ``<|end|>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import soundfile as sf
import torch

from pronlora.core.errors import DataError
from pronlora.core.protocol import AUDIO_PLACEHOLDER, SAMPLE_RATE
from pronlora.model.snapshot import END_TOKEN, special_token_id

IGNORE_INDEX = -100


class SequenceTooLongError(DataError, ValueError):
    pass


@lru_cache(maxsize=8192)
def load_audio(path: str) -> np.ndarray:
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=False)
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise DataError(f"{path}: audio unreadable ({exc}); rerun jobs/prep.py") from None
    if rate != SAMPLE_RATE or data.ndim != 1:
        raise DataError(f"{path}: expected 16 kHz mono audio, got {rate} Hz, shape {data.shape}")
    return data


def user_turn(tokenizer: Any, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


@dataclass
class Collator:
    """Callable for a DataLoader; ``with_labels=False`` builds generation prompts only."""

    tokenizer: Any
    feature_extractor: Any
    max_length: int = 2048
    with_labels: bool = True
    padding_side: str = "right"
    # Round the text width up to a multiple of this (0: pad to the longest only): fewer distinct
    # shapes, better-shaped matmuls. Right padding under a causal mask leaves outputs unchanged.
    pad_to_multiple_of: int = 0
    # A run whose audio embeddings are cached (audio_cache.py): each row's clip path and the
    # flat positions of the audio tokens take the place of the features.
    clip_keys: bool = False
    # With clip_keys: each clip's audio token count where already known (its cached
    # embedding's length), so the batch needs no log-mel features.
    clip_sizes: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        self.pad_id = self.tokenizer.pad_token_id
        self.audio_id = int(self.tokenizer.audio_token_id)
        self.end_id = special_token_id(self.tokenizer, END_TOKEN)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, row: dict[str, Any], n_audio: int) -> tuple[list[int], list[int]]:
        prompt = user_turn(self.tokenizer, row["prompt"])
        if prompt.count(AUDIO_PLACEHOLDER) != 1:
            raise DataError(
                f"instance {row['id']}: the prompt must hold the audio placeholder "
                f"{AUDIO_PLACEHOLDER} exactly once (prepared by an older pronlora? rerun prep)"
            )
        before, after = prompt.split(AUDIO_PLACEHOLDER)
        prompt_ids = self._ids(before) + [self.audio_id] * n_audio + self._ids(after)
        answer_ids = [*self._ids(row["target"]), self.end_id] if self.with_labels else []
        ids = prompt_ids + answer_ids
        held = ids.count(self.audio_id)
        if held != n_audio:
            raise DataError(
                f"instance {row['id']}: {held} audio token ids (id {self.audio_id}) for a clip "
                f"of {n_audio} audio embeddings: its text holds the audio token itself"
            )
        if not self.with_labels:
            return prompt_ids, []
        labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        return ids, labels

    def audio_features(self, audio: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Log-mel features one clip at a time, padded here.

        The extractor's batched path is ~20x slower than per-clip calls on CPU and fails for
        some length combinations (transformers 5.17: "size of tensor a (40) must match ... b
        (41)" for clips of 37600, 37760, 38080 and 38112 samples); per clip it runs the
        original unbatched computation.
        """
        per_clip = [
            self.feature_extractor(a, sampling_rate=SAMPLE_RATE, return_tensors="pt") for a in audio
        ]
        frames = [int(f["audio_input_features"].shape[1]) for f in per_clip]
        width = max(frames)
        dim = int(per_clip[0]["audio_input_features"].shape[2])
        features = torch.zeros((len(audio), width, dim), dtype=torch.float32)
        for i, f in enumerate(per_clip):
            features[i, : frames[i]] = f["audio_input_features"][0]
        return {
            "audio_input_features": features,
            "audio_embed_sizes": torch.cat([f["audio_embed_sizes"] for f in per_clip]),
            "audio_attention_mask": torch.arange(width)[None, :] < torch.tensor(frames)[:, None],
        }

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        known = self.clip_sizes if self.clip_keys else None
        if known is not None and all(r["audio"] in known for r in rows):
            feats, sizes = {}, [known[r["audio"]] for r in rows]
        else:
            feats = self.audio_features([load_audio(r["audio"]) for r in rows])
            sizes = feats["audio_embed_sizes"].tolist()
        encoded = [self.encode(r, int(n)) for r, n in zip(rows, sizes, strict=True)]
        too_long = [
            (r["id"], len(ids))
            for r, (ids, _) in zip(rows, encoded, strict=True)
            if len(ids) > self.max_length
        ]
        if too_long:
            raise SequenceTooLongError(
                f"instances longer than max_length={self.max_length} tokens: {too_long}"
            )
        width = _round_up(max(len(ids) for ids, _ in encoded), self.pad_to_multiple_of)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, lab) in enumerate(encoded):
            n = len(ids)
            sl = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            input_ids[i, sl] = torch.tensor(ids)
            attention[i, sl] = 1
            if self.with_labels:
                labels[i, sl] = torch.tensor(lab)
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        if self.clip_keys:
            batch["audio_clips"] = [r["audio"] for r in rows]
            batch["audio_positions"] = torch.nonzero(input_ids.view(-1) == self.audio_id)[:, 0]
        else:
            batch.update(feats)
        if self.with_labels:
            batch["labels"] = labels
        return batch


def _round_up(n: int, multiple: int) -> int:
    return n if multiple <= 1 else -(-n // multiple) * multiple


# ~4 characters per text token (the real tokenizer on English prose); audio ~12.5 tokens/s.
CHARS_PER_TOKEN = 4.0
AUDIO_TOKENS_PER_S = 12.5


def approx_prompt_tokens(row: dict[str, Any]) -> float:
    """Cheap length estimate of the prompt, for length-grouped batching."""
    return row["duration_s"] * AUDIO_TOKENS_PER_S + len(row["prompt"]) / CHARS_PER_TOKEN


def approx_tokens(row: dict[str, Any]) -> float:
    """Cheap length estimate of prompt plus answer."""
    return approx_prompt_tokens(row) + len(row.get("target", "")) / CHARS_PER_TOKEN

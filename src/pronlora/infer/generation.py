"""Greedy answers for one decode batch: the graphed loop (``model/greedy.py``) or
transformers' ``generate``, and the forced answer lengths of the benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pronlora.core.config import TrainConfig
from pronlora.core.protocol import Task
from pronlora.infer.batching import generation_collator
from pronlora.infer.models import device
from pronlora.model.audio_cache import AudioEmbeddingCache
from pronlora.model.greedy import greedy_decode
from pronlora.model.load import Loaded, torch_dtype
from pronlora.model.snapshot import END_TOKEN, special_token_id


def stop_token_ids(loaded: Loaded) -> list[int]:
    """The checkpoint's own end-of-turn ids (generation_config), plus ``<|end|>``."""
    eos = loaded.model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted({*eos, special_token_id(loaded.tokenizer, END_TOKEN)})


class ExactLengths:
    """A logits processor for benchmarks of random weights, which never stop by themselves:
    row i ends with ``<|end|>`` after exactly ``lengths[i]`` tokens (a real target's length),
    so a benchmark decodes what a trained model would. Its tensors go to the device once, so
    it adds no host synchronisation to a decoding step (a trained model's run has none)."""

    def __init__(self, lengths: list[int], prompt_len: int, end_id: int, stop: list[int]):
        self.lengths, self.prompt_len, self.end_id, self.stop = lengths, prompt_len, end_id, stop
        self._on: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.at_step(input_ids.shape[1] - self.prompt_len, scores)

    def at_step(self, step: int | torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``step``: tokens generated before this one (a 0-d device tensor inside a CUDA
        graph, whose replays advance it)."""
        if self._on is None:
            dev = scores.device
            ending = torch.full((1, scores.shape[1]), float("-inf"), device=dev)
            ending[0, self.end_id] = 0.0
            self._on = (
                torch.tensor(self.lengths, device=dev),
                torch.tensor(self.stop, device=dev),
                ending.to(scores.dtype),
            )
        due, stop, ending = self._on
        scores = scores.index_fill(1, stop, float("-inf"))
        return torch.where((due == step)[:, None], ending, scores)


@torch.inference_mode()
def generate(
    loaded: Loaded,
    cfg: TrainConfig,
    batch_rows: list[dict[str, Any]],
    batch: dict[str, Any] | None = None,
    decode_lengths: Mapping[str, int] | None = None,
    audio: AudioEmbeddingCache | None = None,
) -> list[tuple[str, int]]:
    """Greedy answers (text up to ``<|end|>``) and their token counts.

    ``audio``: the clips' embeddings (``Models.embed_clips``), else the model embeds the batch's
    audio itself, as one encoder batch. ``decode_lengths`` (benchmarks only): answer tokens per
    instance id, see ExactLengths.
    """
    tok = loaded.tokenizer
    if batch is None:
        batch = generation_collator(loaded, cfg, audio)(batch_rows)
    dev = device()
    batch = {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if "audio_clips" in batch:
        if audio is None:
            raise ValueError("a batch of clip names needs the clips' embeddings (audio=)")
        # input_ids stay: generate returns them ahead of the answer, as without embeddings
        batch = {"input_ids": batch["input_ids"], **audio.model_inputs(loaded.model, batch)}
    else:
        batch["audio_input_features"] = batch["audio_input_features"].to(torch_dtype(cfg))
    task = Task(batch_rows[0]["task"])
    stop = stop_token_ids(loaded)
    extra = {}
    if cfg.infer.cache == "static_eager" or (cfg.infer.cache == "static" and dev.type == "cuda"):
        extra["cache_implementation"] = "static"
        extra["disable_compile"] = cfg.infer.cache == "static_eager"
    limit = cfg.infer.max_new_tokens_apa if task is Task.APA else cfg.infer.max_new_tokens_mdd
    processor = None
    if decode_lengths is not None:
        lengths = [decode_lengths[r["id"]] for r in batch_rows]
        end = special_token_id(tok, END_TOKEN)
        prompt_len = batch["input_ids"].shape[1]
        from transformers import LogitsProcessorList

        processor = ExactLengths(lengths, prompt_len, end, stop)
        extra["logits_processor"] = LogitsProcessorList([processor])
        # the cache stays sized by the config's limit, as a trained model's decode is
        limit = max(limit, max(lengths) + 1)
    if cfg.infer.cache == "static_graphs":
        force = processor.at_step if processor is not None else None
        new = greedy_decode(
            loaded.model, batch, limit, stop, tok.pad_token_id, force, prefill=loaded.prefill
        ).tolist()
    else:
        out = loaded.model.generate(
            **batch,
            **extra,
            max_new_tokens=limit,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tok.pad_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :].tolist()
    answers = []
    for ids in new:
        cut = next((i for i, t in enumerate(ids) if t in stop), len(ids))
        answers.append((tok.decode(ids[:cut], skip_special_tokens=False).strip(), cut))
    return answers

"""The model a decode worker holds: loaded once as training built it, then each next
checkpoint of the run swapped in (``Models``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pronlora.core.atomic import write_json
from pronlora.core.config import ConfigError, TrainConfig, from_dict, load_config, to_dict
from pronlora.core.layout import UNFROZEN_FILE, RunDir
from pronlora.core.versions import versions
from pronlora.infer.batching import generation_collator
from pronlora.infer.inputs import no_run_record
from pronlora.model.adapter_swap import SwappableLora
from pronlora.model.audio_cache import AudioEmbeddingCache, clip_groups, multimodal_model
from pronlora.model.dequantized_merge import merge_into_dequantized
from pronlora.model.load import Loaded, load_model, load_unfrozen_state, torch_dtype
from pronlora.model.prefill import Prefill
from pronlora.model.snapshot import ADAPTER_WEIGHTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    cfg: TrainConfig
    model_dir: Path


def ensure_run(run_dir: Path, config: str | TrainConfig | None, model: str | None) -> RunSpec:
    """Config and model of a run dir from its run.json; for an inference-only run (no
    training ran there), the run.json is written first from ``config`` (a name, or a
    resolved config) and ``model``."""
    run_json = RunDir(run_dir).run_json
    if run_json.is_file():
        saved = RunDir(run_dir).read_run()
        if config is not None or model is not None:
            log.info("%s has run.json; --config/--model are ignored", run_dir)
        return RunSpec(from_dict(saved["config"], str(run_json)), Path(saved["model"]))
    if config is None or model is None:
        raise no_run_record(run_dir)
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_json,
        {
            "config": to_dict(cfg),
            "model": str(Path(model).resolve()),
            "prepared": None,
            "inference_only": True,
        },
    )
    write_json(RunDir(run_dir).versions_json, versions())
    return RunSpec(cfg, Path(model).resolve())


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_for_inference(
    spec: RunSpec, checkpoint_dir: Path | None, swappable: bool = False
) -> Loaded:
    """``swappable``: keep what ``Models`` needs to swap the next checkpoint of the run in
    (``Loaded.swap``; bf16 LoRA merged into the base only)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    cfg = spec.cfg
    dev = device()
    loaded = load_model(
        cfg,
        spec.model_dir,
        trainable=False,
        device_map={"": dev.index or 0} if dev.type == "cuda" else None,
    )
    model = loaded.model
    if checkpoint_dir is not None:
        state = load_file(str(checkpoint_dir / ADAPTER_WEIGHTS))
        result = set_peft_model_state_dict(model, state, adapter_name="default")
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ConfigError(
                f"{checkpoint_dir}: adapter keys do not fit the model: {unexpected[:3]}"
            )
        if cfg.strategy == "unfreeze":
            load_unfrozen_state(model, checkpoint_dir / UNFROZEN_FILE)
    swap = None
    if cfg.infer.merge_adapter and cfg.quantization == "nf4":
        model = merge_into_dequantized(model, torch_dtype(cfg))
    elif cfg.infer.merge_adapter:
        if swappable:
            swap = SwappableLora.capture(model, unfrozen=cfg.strategy == "unfreeze")
        model = model.merge_and_unload()
    if dev.type != "cuda":
        model = model.to(dev)
    model.eval()
    prefill = None
    if cfg.infer.compile_prefill:
        prefill = Prefill(multimodal_model(model), compiled=True)
    return Loaded(model, loaded.tokenizer, loaded.feature_extractor, prefill, swap)


class Models:
    """The model a worker decodes with, loaded and merged once for all its shards of a
    checkpoint, and with ``swap`` once for all its checkpoints of a run.

    A worker's items are consecutive in the grid (``worker_items``). ``swap`` (a worker with
    several checkpoints to decode): the next checkpoint of the same snapshot and config is
    swapped into the loaded model (``model/adapter_swap.py``: the same weights as a fresh load;
    a LoRA run also keeps its audio embeddings, which no LoRA changes). Anything else loads
    again, after the previous model is released.
    """

    def __init__(self, swap: bool = False) -> None:
        self.swap = swap
        self.key: str | None = None
        self.loaded: Loaded | None = None
        self.audio = AudioEmbeddingCache({})  # the clips embedded by the loaded model
        self.loads = self.swaps = 0

    def get(self, spec: RunSpec, ckpt_dir: Path | None) -> Loaded:
        same_run = json.dumps([str(spec.model_dir), to_dict(spec.cfg)], sort_keys=True)
        key = json.dumps([same_run, str(ckpt_dir)])
        if key != self.key and self._swapped(same_run, ckpt_dir):
            self.key = key
        elif key != self.key:
            # released before the next one loads
            self.key, self.loaded, self.audio = None, None, AudioEmbeddingCache({})
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            t0 = time.perf_counter()
            self.loaded = load_for_inference(spec, ckpt_dir, swappable=self.swap)
            self.key = key
            self.loads += 1
            what = ckpt_dir or f"base model {spec.model_dir}"
            log.info("loaded %s in %.1f s", what, time.perf_counter() - t0)
        assert self.loaded is not None
        return self.loaded

    def _swapped(self, same_run: str, ckpt_dir: Path | None) -> bool:
        swap = self.loaded.swap if self.loaded is not None else None
        if swap is None or self.key is None or json.loads(self.key)[0] != same_run:
            return False
        if not swap.accepts(ckpt_dir):
            return False
        t0 = time.perf_counter()
        self.key = None  # nothing is loaded if the swap stops half-way
        swap.swap(ckpt_dir)
        if swap.touches_audio:
            self.audio = AudioEmbeddingCache({})
        self.swaps += 1
        what = ckpt_dir or "the untrained LoRA"
        log.info("swapped %s into the loaded model in %.1f s", what, time.perf_counter() - t0)
        return True

    def embed_clips(
        self, cfg: TrainConfig, split_rows: list[dict[str, Any]], clips: set[str]
    ) -> AudioEmbeddingCache:
        """The loaded model's embeddings of ``clips``, each computed in its group of the split
        (``clip_groups(split_rows)``) and kept for the worker's next shards."""
        assert self.loaded is not None
        size = cfg.infer.clips_per_encoder_batch
        groups = [g for g in clip_groups(split_rows, size) if clips.intersection(g)]
        dev = device()
        workers = min(4, (os.cpu_count() or 1) // 2) if dev.type == "cuda" else 0
        collate = generation_collator(self.loaded, cfg)
        self.audio.add(self.loaded.model, groups, collate, dev, nullcontext(), workers)
        return self.audio

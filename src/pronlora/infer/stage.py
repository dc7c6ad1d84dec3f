"""The inference stage: one shard of a split -> ``predictions/<checkpoint>/shard-I-of-N.jsonl``.

The model is loaded exactly as training built it (same quantization, the same speech-adapter
merge), then the checkpoint's trained weights are put into that structure; ``base`` keeps the
untrained adapter (the paper's "no training" row: the shipped model with its speech adapter).
Every computation is batched by the whole split, never by the shard: each clip is embedded once,
in the encoder batch ``audio_cache.clip_groups`` gives it, and its APA and MDD instances are
decoded from that embedding in the split's decode batches (``decode_batches``: per task, by
length, ``infer.batch_size`` each), which shards deal out whole. So the shard count and the
number of GPUs change no batch and no answer (the audio encoder attends to its batch's padding,
and bf16 kernels round differently per batch shape); ``infer.batch_size`` changes the decode
batches, hence the bf16 rounding of the language model, and is recorded with every shard.

Output is appended one line per instance and flushed per batch: a rerun skips what is written
and drops a last line cut off by a kill.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pronlora.core.atomic import jsonl_line, umask_mode, write_json
from pronlora.core.config import ConfigError, TrainConfig, from_dict, load_config, to_dict
from pronlora.core.errors import DataError
from pronlora.core.layout import (
    BASE_CHECKPOINT,
    UNFROZEN_FILE,
    PreparedDir,
    RunDir,
    read_json_file,
)
from pronlora.core.lock import OutputLock
from pronlora.core.parse import parse_answer
from pronlora.core.protocol import Task
from pronlora.core.versions import versions
from pronlora.infer.inputs import check_item, check_trained_on, no_run_record
from pronlora.model.adapter_swap import SwappableLora
from pronlora.model.audio_cache import AudioEmbeddingCache, clip_groups, multimodal_model
from pronlora.model.collate import Collator, approx_prompt_tokens
from pronlora.model.dequantized_merge import merge_into_dequantized
from pronlora.model.greedy import greedy_decode
from pronlora.model.load import Loaded, load_model, load_unfrozen_state, torch_dtype
from pronlora.model.prefill import Prefill
from pronlora.model.snapshot import END_TOKEN, special_token_id

log = logging.getLogger(__name__)

BASE = BASE_CHECKPOINT


def shard_paths(
    run_dir: Path, checkpoint: str, shard: int, num_shards: int, split: str = "test"
) -> tuple[Path, Path]:
    lines, done, _ = RunDir(run_dir).shard(checkpoint, shard, num_shards, split)
    return lines, done


def read_written(path: Path) -> dict[str, dict[str, Any]]:
    """Lines already written; a last line cut off by a kill is removed from the file."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        log.warning("%s: dropping a truncated last line (%d bytes)", path, len(data) - keep)
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, keep)
        finally:
            os.close(fd)
    done: dict[str, dict[str, Any]] = {}
    # split on b"\n" only: str.splitlines() also breaks at U+2028, U+0085 and others, which
    # JSON leaves unescaped in an answer's text
    for n, raw in enumerate(data[:keep].split(b"\n")[:-1], 1):
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(
                f"{path}:{n}: corrupt prediction line (not the last line); delete the file "
                "to decode this shard again"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise DataError(f"{path}:{n}: a prediction line without an id")
        if row["id"] in done:
            raise DataError(
                f"{path}:{n}: id {row['id']} written twice (two writers?); delete the file "
                "to decode this shard again"
            )
        done[row["id"]] = row
    return done


@dataclass(frozen=True)
class RunSpec:
    cfg: TrainConfig
    model_dir: Path


def checkpoint_dir(run_dir: Path, checkpoint: str) -> Path | None:
    """The checkpoint a decode loads (None: the base model), as ``Models`` keys it."""
    return None if checkpoint == BASE else RunDir(Path(run_dir).resolve()).checkpoint(checkpoint)


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


def decoding_settings(cfg: TrainConfig) -> dict[str, Any]:
    """What decides a checkpoint's answers besides its weights, as each shard records it for
    the collector. ``batch_size`` is one: it changes no audio embedding (the split's groups),
    but it cuts the decode batches, and bf16 kernels round differently per batch shape (7-9 %
    of the answers of a barely trained model on an H100, bench/results/*-batch-invariance.md)."""
    return {
        "search": "greedy",
        "max_new_tokens_apa": cfg.infer.max_new_tokens_apa,
        "max_new_tokens_mdd": cfg.infer.max_new_tokens_mdd,
        "audio_encoder_batches": (
            f"the split's clips by duration, {cfg.infer.clips_per_encoder_batch} per batch"
        ),
        # nf4: into the dequantized base (model/dequantized_merge.py)
        "merge_adapter": cfg.infer.merge_adapter,
        "kv_cache": cfg.infer.cache,
        "compiled_prefill": cfg.infer.compile_prefill,
        "attn_implementation": cfg.attn_implementation,
        "batch_size": cfg.infer.batch_size,
    }


def check_settings(path: Path, settings: dict[str, Any], lines: Path, resuming: bool) -> None:
    """A shard's lines all come from one set of decoding settings: written (``path``) before
    the first line, compared on a resume (a pronlora that merges or caches otherwise, an edited
    run.json)."""
    if not resuming:
        write_json(path, settings)
        return
    if not path.is_file():
        raise DataError(
            f"{lines}: lines written without {path.name} (by an older pronlora?), so their "
            "decoding settings are unknown; delete the file to decode this shard again"
        )
    before = read_json_file(path)
    if not isinstance(before, dict):
        raise DataError(f"{path}: not a shard's decoding settings; delete {lines} to decode again")
    changed = sorted(k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k))
    if changed:
        what = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise DataError(
            f"{lines}: its lines were decoded under other settings ({what}, {path}); delete "
            "the file to decode this shard again"
        )


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
        state = load_file(str(checkpoint_dir / "adapter_model.safetensors"))
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


def generation_batches(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Same-task batches of similar length, longest first (fail fast on memory); the order
    depends on the rows alone, not on the order of the file."""
    out = []
    for task in sorted({r["task"] for r in rows}):
        group = sorted(
            (r for r in rows if r["task"] == task),
            key=lambda r: (-approx_prompt_tokens(r), r["id"]),
        )
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def decode_batches(
    split_rows: list[dict[str, Any]], size: int, shard: int, num_shards: int
) -> list[list[dict[str, Any]]]:
    """One shard's decode batches: the whole split's ``generation_batches``, dealt out whole
    (batch i to shard i mod num_shards), so every shard count decodes the same batches."""
    return generation_batches(split_rows, size)[shard::num_shards]


def generation_collator(
    loaded: Loaded, cfg: TrainConfig, audio: AudioEmbeddingCache | None = None
) -> Collator:
    """Prompts, left-padded; with ``audio``, batches name their clips instead of carrying
    features (the language model then starts from the cached embeddings)."""
    return Collator(
        loaded.tokenizer,
        loaded.feature_extractor,
        max_length=cfg.max_length,
        with_labels=False,
        padding_side="left",
        clip_keys=audio is not None,
        clip_sizes=audio.rows if audio is not None else None,
    )


def prefetched(
    batches: list[list[dict[str, Any]]], collate: Collator, depth: int = 2
) -> Iterator[tuple[list[dict[str, Any]], dict[str, torch.Tensor]]]:
    """Collate (audio decoding, log-mel features) the next batches while the GPU decodes."""
    with ThreadPoolExecutor(max_workers=depth) as pool:
        pending = [pool.submit(collate, b) for b in batches[:depth]]
        for i, rows in enumerate(batches):
            batch = pending[i].result()
            if i + depth < len(batches):
                pending.append(pool.submit(collate, batches[i + depth]))
            yield rows, batch


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


def run_shard(
    run_dir: str | Path,
    checkpoint: str,
    prepared: str | Path,
    split: str = "test",
    shard: int = 0,
    num_shards: int = 1,
    config: str | TrainConfig | None = None,
    model: str | None = None,
    models: Models | None = None,
    decode_lengths: Mapping[str, int] | None = None,
    other_data: bool = False,
) -> dict[str, Any]:
    """Decode one shard into its predictions file (resuming what is written).

    ``models``: the worker's model holder, so consecutive shards of one checkpoint share a
    load; ``decode_lengths``: benchmarks only (see ExactLengths); ``other_data``: decode a
    prepared dir other than the one the run was trained on (named in the log and the shard's
    summary).
    """
    run_dir, prepared = Path(run_dir).resolve(), Path(prepared).resolve()
    check_item(run_dir, checkpoint, shard, num_shards)
    out_path, _, lock = RunDir(run_dir).shard(checkpoint, shard, num_shards, split)
    split_rows = PreparedDir(prepared).load_split(split)
    data_hash = check_trained_on(run_dir, prepared, other_data)
    with OutputLock(lock, f"predictions shard {out_path}"):
        return _write_shard(
            run_dir,
            checkpoint,
            split,
            shard,
            num_shards,
            split_rows,
            config,
            model,
            models=models or Models(),
            decode_lengths=decode_lengths,
            data={"prepared": str(prepared), "prepared_content_hash": data_hash},
        )


def _write_shard(
    run_dir: Path,
    checkpoint: str,
    split: str,
    shard: int,
    num_shards: int,
    split_rows: list[dict[str, Any]],
    config: str | TrainConfig | None,
    model: str | None,
    models: Models,
    decode_lengths: Mapping[str, int] | None,
    data: dict[str, Any],
) -> dict[str, Any]:
    out_path, done_path = shard_paths(run_dir, checkpoint, shard, num_shards, split)
    spec = ensure_run(run_dir, config, model)
    batches = decode_batches(split_rows, spec.cfg.infer.batch_size, shard, num_shards)
    rows = [r for b in batches for r in b]
    ids = {r["id"] for r in rows}
    written = read_written(out_path)
    stray = sorted(set(written) - ids)
    if stray:
        raise ConfigError(
            f"{out_path}: holds ids that are not in this shard: {stray[:5]} (decoded under "
            "another infer.batch_size or by an older pronlora? delete the file to decode again)"
        )
    # a batch partly written (a kill inside its write) is decoded whole again: the same batch
    # gives the same answers; only its missing lines are written
    todo = [b for b in batches if any(r["id"] not in written for r in b)]
    if not todo and done_path.is_file():  # its summary records the settings it was decoded with
        log.info("%s is complete (%d instances); nothing to do", out_path, len(rows))
        return json.loads(done_path.read_text())
    check_settings(
        RunDir(run_dir).shard_settings(checkpoint, shard, num_shards, split),
        decoding_settings(spec.cfg),
        out_path,
        bool(written),
    )
    ckpt_dir = checkpoint_dir(run_dir, checkpoint)
    log.info(
        "shard %d/%d of %s (%s): %d instances in %d batches, %d already written",
        shard,
        num_shards,
        split,
        checkpoint,
        len(rows),
        len(batches),
        len(written),
    )
    t0 = time.perf_counter()
    n_tokens = n_new = 0
    load_s = embed_s = 0.0
    if todo:
        loaded = models.get(spec, ckpt_dir)
        load_s = time.perf_counter() - t0  # 0 when this worker's last shard loaded it
        t0 = time.perf_counter()
        audio = models.embed_clips(spec.cfg, split_rows, {r["audio"] for b in todo for r in b})
        embed_s = time.perf_counter() - t0
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # appended, never through a link (one planted after the check above is refused here)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        with os.fdopen(os.open(out_path, flags, umask_mode()), "a", encoding="utf-8") as fh:
            collate = generation_collator(loaded, spec.cfg, audio)
            for batch_rows, batch in prefetched(todo, collate):
                answers = generate(loaded, spec.cfg, batch_rows, batch, decode_lengths, audio)
                lines = []
                for row, (text, n) in zip(batch_rows, answers, strict=True):
                    if row["id"] in written:
                        continue
                    parsed, error = parse_answer(row["task"], text)
                    record = {
                        "id": row["id"],
                        "utt_id": row["utt_id"],
                        "task": row["task"],
                        "output": text,
                        "parsed": parsed,
                        "parse_error": error,
                    }
                    lines.append(jsonl_line(record))
                    n_tokens += n
                try:
                    fh.write("".join(lines))
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError as exc:  # a full disk names the shard (cli.run_job says more)
                    raise OSError(exc.errno, exc.strerror, str(out_path)) from None
                n_new += len(lines)
                elapsed = time.perf_counter() - t0
                log.info(
                    "%d/%d instances, %.2f inst/s, %.1f generated tok/s",
                    len(written) + n_new,
                    len(rows),
                    n_new / elapsed,
                    n_tokens / elapsed,
                )
    seconds = time.perf_counter() - t0
    final = read_written(out_path)
    missing = ids - set(final)
    if missing:
        raise RuntimeError(f"{out_path}: {len(missing)} ids missing after the run")
    counts = Counter(r["task"] for r in final.values())
    failures = Counter(r["task"] for r in final.values() if r["parse_error"])
    summary = {
        "checkpoint": checkpoint,
        "split": split,
        "shard": shard,
        "num_shards": num_shards,
        "instances": len(final),
        "by_task": {
            t: {
                "n": counts[t],
                "parse_failures": failures[t],
                "parse_failure_rate": round(failures[t] / counts[t], 4),
            }
            for t in sorted(counts)
        },
        "decoding": decoding_settings(spec.cfg),
        **data,
        "generated_this_run": n_new,
        "seconds": round(seconds, 2),  # embedding and decoding; the load is load_s
        "load_s": round(load_s, 2),
        "embed_s": round(embed_s, 2),
        "instances_per_s": round(n_new / seconds, 3) if todo and seconds else None,
        "tokens_per_s": round(n_tokens / seconds, 1) if todo and seconds else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    write_json(done_path, summary)
    for t, v in summary["by_task"].items():
        log.info(
            "%s parse failures: %d/%d (%.1f%%)",
            t,
            v["parse_failures"],
            v["n"],
            100 * v["parse_failure_rate"],
        )
    return summary

"""Named recipe configs: YAML data validated into typed objects before anything heavy runs.

Like torchtune, a recipe (``jobs/train.py``) takes a named config (``configs/<name>.yaml`` in
the package) or a path to a YAML file, plus ``key=value`` overrides. Every key is checked:
an unknown key, a wrong type, a value out of range or an impossible combination raises
ConfigError naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml

from pronlora.core.errors import ConfigError


@dataclass(frozen=True)
class LoraSpec:
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05


@dataclass(frozen=True)
class InferSpec:
    batch_size: int = 32
    max_new_tokens_apa: int = 48
    max_new_tokens_mdd: int = 256
    # Merge the trained LoRA into the base weights before decoding; under nf4 into the base
    # dequantized to bf16 (model/dequantized_merge.py: 7.6 GB instead of 2.3 for the language
    # model). false: the LoRA runs beside each layer, as in training.
    merge_adapter: bool = True
    # static: preallocated KV cache with compiled decoding steps (CUDA only; compilation is
    # paid once per worker process); static_eager: the preallocated cache, eager steps;
    # static_graphs: the preallocated cache, each eager step captured once per batch as a CUDA
    # graph and replayed (model/greedy.py; runs eagerly off CUDA).
    cache: Literal["dynamic", "static", "static_eager", "static_graphs"] = "dynamic"
    # static_graphs only: the prompt's forward through decoder layers compiled once per worker
    # (model/prefill.py); fused kernels round bf16 otherwise than eager ones.
    compile_prefill: bool = False
    # Clips per audio-encoder batch, in the split's duration order. The encoder attends to its
    # batch's padding, so this decides the embeddings: 1 embeds each clip alone (the model
    # card's one-clip forward), more is faster and fixed by the split.
    clips_per_encoder_batch: int = 16


@dataclass(frozen=True)
class TrainConfig:
    name: str
    # continue_speech: keep training the shipped speech adapter from its weights.
    # merge_speech: merge the shipped speech adapter into the base, then train a fresh LoRA.
    adapter: Literal["continue_speech", "merge_speech"] = "merge_speech"
    lora: LoraSpec = field(default_factory=LoraSpec)
    strategy: Literal["lora", "unfreeze"] = "lora"
    quantization: Literal["bf16", "nf4"] = "bf16"
    # text: <|APA|>/<|MDD|> are ordinary text (default: base model and adapter stay portable,
    # nothing but LoRA weights changes). special: added tokens with trainable embedding rows.
    control_tokens: Literal["text", "special"] = "text"
    # Compute dtype; fp32 exists for the CPU smoke config only.
    dtype: Literal["bf16", "fp32"] = "bf16"
    epochs: int = 3
    micro_batch: int = 8
    grad_accum: int = 8
    # Up to how many of the recipe's micro-batches go through the model in one forward/backward
    # pass (neighbouring ones of the same optimizer step, so of similar length): fewer, fuller
    # passes, the same 64 instances per optimizer step and the same loss. An execution choice;
    # see config.pass_size for the count used on N processes.
    micro_batches_per_pass: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = 0.0
    max_length: int = 2048
    seed: int = 42
    # auto: on for nf4 (fits 16-24 GB cards), off for bf16 (speed).
    gradient_checkpointing: Literal["auto", True, False] = "auto"
    # Performance levers (issue: one H100); each has a test against the plain path.
    label_only_loss: bool = True  # vocabulary projection only where labels are
    group_by_length: bool = True  # micro-batches of similar length (see sampler.py)
    pad_to_multiple_of: int = 64  # text width rounded up: fewer distinct shapes
    kbit_prepare: bool = False  # PEFT's prepare_model_for_kbit_training (fp32 upcasts)
    # PEFT casts every LoRA input to the fp32 adapter dtype, a full copy of each activation
    # that bf16 autocast then casts back for the matmul: off, the matmuls see the same values.
    lora_input_cast: bool = False
    # Regional torch.compile of the language model's decoder layers (model/load.py).
    compile_layers: bool = False
    # Embed each training clip once while the audio path is frozen (audio_cache.py); runs that
    # train it (strategy: unfreeze) recompute the embeddings in every pass whatever this says.
    cache_audio_embeddings: bool = True
    save_steps: int = 50
    keep_step_checkpoints: int = 2
    logging_steps: int = 5
    max_steps: int = -1
    # sdpa_folded_gqa: in generation, PyTorch SDPA without sdpa's key/value copies under a
    # padding mask, the same attention; training steps run sdpa (model/attention.py).
    # flash_attention_2 in the container.
    attn_implementation: Literal["sdpa", "sdpa_folded_gqa", "flash_attention_2", "eager"] = (
        "sdpa_folded_gqa"
    )
    dataloader_workers: int = 2
    # Data-parallel engine (see distributed.py): auto = the engine of the checkpoint being
    # resumed, else zero2 on several processes and plain training on one. Not part of the
    # recipe's identity: a run may resume under another process count.
    engine: Literal["auto", "ddp", "zero2", "zero3"] = "auto"
    # Where the training metrics go, comma-separated: tensorboard (event files in the run dir),
    # wandb and mlflow (offline by default, their run id kept in the run dir), or none.
    report_to: str = "tensorboard"
    infer: InferSpec = field(default_factory=InferSpec)

    @property
    def trackers(self) -> tuple[str, ...]:
        names = tuple(x.strip() for x in self.report_to.split(",") if x.strip())
        return () if names == ("none",) else names

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum

    @property
    def use_gradient_checkpointing(self) -> bool:
        if self.gradient_checkpointing == "auto":
            return self.quantization == "nf4"
        return bool(self.gradient_checkpointing)


TRACKERS = ("tensorboard", "wandb", "mlflow")

_POSITIVE = (
    "epochs",
    "micro_batch",
    "grad_accum",
    "micro_batches_per_pass",
    "max_length",
    "save_steps",
    "keep_step_checkpoints",
    "logging_steps",
)


# YAML 1.1 (PyYAML) reads 1e-4 and 2E5 as strings: numbers are read as Python would.
_PY_FLOAT = re.compile(r"[+-]?(\d[\d_]*(\.[\d_]*)?|\.\d[\d_]*)([eE][+-]?\d+)?")
# a config name becomes a run dir's name: one path component, no dot-dot
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    if tp is float and isinstance(value, str) and _PY_FLOAT.fullmatch(value.strip()):
        value = float(value.strip())
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known: {', '.join(prefix + n for n in sorted(names))}"
        )
    kwargs = {k: _check_type(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range and combination checks that need more than one key."""
    if not _NAME.fullmatch(cfg.name) or ".." in cfg.name:
        raise ConfigError(
            f"name: {cfg.name!r} names the run dir: letters, digits, '.', '_' and '-' only, "
            "no '/' or '..'"
        )
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed: must be in 0..2**32-1, got {cfg.seed}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay: must be >= 0, got {cfg.weight_decay}")
    for key in _POSITIVE:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    for key in (
        "batch_size",
        "max_new_tokens_apa",
        "max_new_tokens_mdd",
        "clips_per_encoder_batch",
    ):
        if getattr(cfg.infer, key) < 1:
            raise ConfigError(f"infer.{key}: must be >= 1, got {getattr(cfg.infer, key)}")
    if cfg.infer.compile_prefill and cfg.infer.cache != "static_graphs":
        raise ConfigError(
            f"infer.compile_prefill: needs infer.cache=static_graphs, got {cfg.infer.cache!r}"
        )
    if cfg.infer.compile_prefill and cfg.quantization != "bf16":
        # bitsandbytes' 4-bit layers inside the compiled layer were never run
        raise ConfigError("infer.compile_prefill: measured for quantization=bf16 only")
    if cfg.pad_to_multiple_of < 0:
        raise ConfigError(f"pad_to_multiple_of: must be >= 0, got {cfg.pad_to_multiple_of}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError(f"warmup_ratio: must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.lora.r < 1 or cfg.lora.alpha < 1 or not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"lora: r and alpha must be >= 1 and dropout in [0, 1), got {cfg.lora}")
    if cfg.quantization == "nf4" and cfg.dtype != "bf16":
        raise ConfigError("dtype: nf4 quantization computes in bf16; set dtype: bf16")
    if cfg.engine == "zero3" and cfg.quantization == "nf4":
        raise ConfigError(
            "engine: zero3 shards bf16 base weights and is not supported with nf4 "
            "quantization; use engine: zero2 (or ddp) for QLoRA"
        )
    if cfg.engine == "zero3" and cfg.strategy == "unfreeze":
        raise ConfigError(
            "engine: zero3 partitions the unfrozen audio modules' weights; use engine: zero2 "
            "(or ddp) with strategy: unfreeze"
        )
    unknown = sorted(set(cfg.trackers) - set(TRACKERS))
    if unknown or (not cfg.trackers and cfg.report_to.strip() != "none"):
        raise ConfigError(
            f"report_to: {cfg.report_to!r}; expected none or a comma-separated choice of "
            f"{', '.join(TRACKERS)}"
        )
    if cfg.attn_implementation == "flash_attention_2" and cfg.dtype != "bf16":
        raise ConfigError("attn_implementation: flash_attention_2 needs dtype: bf16")
    return cfg


def config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    packaged = files("pronlora") / "configs" / f"{name_or_path}.yaml"
    if not packaged.is_file():
        raise ConfigError(f"no config named {name_or_path!r}; available: {', '.join(available())}")
    return Path(str(packaged))


def available() -> list[str]:
    return sorted(
        p.name[:-5] for p in (files("pronlora") / "configs").iterdir() if p.name.endswith(".yaml")
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not plain YAML ({problem})") from None
    return key.strip().split("."), value


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    path = config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"override {text!r}: {where} is not a mapping ({node!r})")
        node[keys[-1]] = value
    data.setdefault("name", path.stem)
    return from_dict(data, str(path))


def from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """A resolved config read back (a run dir's run.json), checked like a YAML file."""
    try:
        return validate(_build(TrainConfig, data))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# Keys that change how a run executes but not what it trains (a resume may change them).
EXECUTION_KEYS = (
    # no instance is ever cut: max_length only refuses, so a rerun may raise it
    "max_length",
    "engine",
    "dataloader_workers",
    "compile_layers",
    "cache_audio_embeddings",
    "micro_batches_per_pass",
    "attn_implementation",
    "report_to",
    "infer",
)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _micro_batches_per_process(cfg: TrainConfig, world: int) -> int:
    per_step = cfg.micro_batch * world
    if cfg.effective_batch % per_step:
        batch = cfg.effective_batch
        if batch % world:  # no micro_batch can help: the process count must change
            counts = [n for n in range(1, batch + 1) if batch % n == 0 and n <= 64]
            fix = f"use a GPU count that divides {batch}: {', '.join(map(str, counts[:8]))}"
        else:
            sizes = [m for m in range(1, batch // world + 1) if (batch // world) % m == 0]
            fix = f"pick a micro_batch that divides {batch // world}: {', '.join(map(str, sizes))}"
        raise ConfigError(
            f"micro_batch: {cfg.micro_batch} x {world} processes does not divide the effective "
            f"batch {batch} (micro_batch x grad_accum); {fix}"
        )
    return cfg.effective_batch // per_step


def pass_size(cfg: TrainConfig, world: int) -> int:
    """Micro-batches per forward/backward pass: the most, up to ``micro_batches_per_pass``, that
    divide each process's share of an optimizer step (on 8 GPUs each has one)."""
    share = _micro_batches_per_process(cfg, world)
    return max(k for k in range(1, min(share, cfg.micro_batches_per_pass) + 1) if share % k == 0)


def accumulation_steps(cfg: TrainConfig, world: int) -> int:
    """Passes per process and optimizer step: the effective batch whatever the process count."""
    return _micro_batches_per_process(cfg, world) // pass_size(cfg, world)

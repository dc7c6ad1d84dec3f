"""Load Phi-4-multimodal from a local snapshot and attach the adapters a config asks for.

One function serves training and inference so both see the same weights, quantization and
merges. Snapshot layout (as a lab holds the Hub repo in native transformers format): base
weights + tokenizer + ``preprocessor_config.json`` at the top, the speech adapter in
``speech-lora/``.

Modules kept out of 4-bit under ``nf4``: the whole multimodal embedding (audio encoder, audio
projector and the vision tower: conformer convolutions and the relative-position bias are
precision-sensitive, and ``unfreeze`` must train the audio parts) and ``lm_head`` (tied to the
embeddings). Only the language model's linear layers are quantized.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pronlora.core.atomic import follow_umask
from pronlora.core.config import ConfigError, TrainConfig
from pronlora.core.distributed import rank
from pronlora.core.errors import SnapshotError
from pronlora.core.layout import model_cache
from pronlora.core.protocol import CONTROL_TOKENS, TASKS, prompt_text
from pronlora.model.attention import FOLDED_GQA
from pronlora.model.attention import register as register_folded_gqa
from pronlora.model.compiling import use_shared_compile_cache
from pronlora.model.snapshot import (
    ADAPTER_CONFIG,
    ADAPTER_TARGET_REGEX,
    SPEECH_ADAPTER_DIR,
    check_snapshot,
    read_json,
)
from pronlora.model.speech_adapter import attach_speech_adapter, merge_speech_adapter

if TYPE_CHECKING:
    from pronlora.model.prefill import Prefill

log = logging.getLogger(__name__)

AUDIO_MODULES = (
    "model.embed_tokens_extend.audio_embed.encoder",
    "model.embed_tokens_extend.audio_embed.up_proj_for_speech",
    "model.embed_tokens_extend.audio_embed.down_proj_for_speech",
)
# Full dotted names: transformers 5 keeps a module out of 4-bit only when a pattern matches the
# start or the end of its full name (4.x matched anywhere inside), so "embed_tokens_extend"
# alone quantized the audio encoder.
NF4_SKIP_MODULES = ["lm_head", "model.embed_tokens_extend"]
TRAIN_ADAPTER = "default"


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    feature_extractor: Any
    # decoding only: the decoder layers compiled for prefills
    prefill: Prefill | None = None
    # decoding only: what swaps the run's next checkpoint in (model/adapter_swap.py)
    swap: Any = None


def torch_dtype(cfg: TrainConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.dtype == "bf16" else torch.float32


def load_tokenizer(model_dir: Path) -> Any:
    """The snapshot's tokenizer exactly as its ``tokenizer.json`` defines it, proven on probes.

    ``AutoTokenizer`` maps the snapshot's ``GPT2TokenizerFast`` to transformers 5's
    ``GPT2Tokenizer``, which rebuilds the pre-tokenizer as GPT-2's and drops o200k's split
    pattern from ``tokenizer.json`` (the APA prompt becomes 581 tokens instead of 557). The
    file-backed tokenizer keeps the file's pipeline; it is then compared with the file itself
    on the paper's prompts.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = model_dir / "tokenizer.json"
    try:  # check_snapshot read only the file's head; a fault further on is named here
        reference = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot read
        raise SnapshotError(f"{path}: not a tokenizer file ({exc})") from exc
    # fix_mistral_regex=False: o200k's pattern is not Mistral's; this silences a false alarm.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir, fix_mistral_regex=False)
    for probe in (*(prompt_text(t) for t in TASKS), "It's 2025: DORA'S 12345 cats\n\n  ok"):
        got = tokenizer(probe, add_special_tokens=False)["input_ids"]
        want = reference.encode(probe, add_special_tokens=False).ids
        if got != want:
            raise SnapshotError(
                f"{path}: transformers tokenizes differently from the file itself "
                f"({len(got)} vs {len(want)} tokens for {probe[:30]!r}...)"
            )
    if getattr(tokenizer, "audio_token_id", None) is None:
        raise SnapshotError(
            f"{model_dir / 'tokenizer_config.json'}: names no audio_token (extra_special_tokens)"
        )
    return tokenizer


def load_processors(model_dir: Path, cfg: TrainConfig) -> tuple[Any, Any]:
    """Tokenizer (plus added control tokens if configured) and the audio feature extractor.

    The feature extractor is used directly: the native processor also wants an image processor,
    which needs torchvision, and we have no images.
    """
    from tokenizers import AddedToken
    from transformers import Phi4MultimodalFeatureExtractor

    tokenizer = load_tokenizer(model_dir)
    if cfg.control_tokens == "special":
        tokenizer.add_tokens(
            [AddedToken(CONTROL_TOKENS[t], special=True, normalized=False) for t in TASKS],
            special_tokens=True,
        )
    fe = Phi4MultimodalFeatureExtractor.from_pretrained(model_dir)
    return tokenizer, fe


def _snapshot_key(model_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors"):
            st = path.stat()
            h.update(f"{path.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def missing_weights(snapshot: Path) -> list[str]:
    """What a saved snapshot lacks to load: config.json, or weights (one file, or an index and
    every shard it names). Empty when complete."""
    missing = [] if (snapshot / "config.json").is_file() else ["config.json"]
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        missing += sorted(f for f in shards if not (snapshot / f).is_file())
    elif not (snapshot / "model.safetensors").is_file():
        missing.append("model.safetensors (or an index with its shards)")
    return missing


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Held by one process at a time (other jobs on the node or, through the file system's
    locks, on other nodes); the others wait. Not lock.OutputLock: that one refuses a live
    holder (an output has one writer), while here the waiters want the holder's result; and a
    flock dies with its process, so a killed builder leaves nothing to take over."""
    with open(lock_file, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process holding %s", lock_file)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def merged_snapshot(model_dir: Path, cache_dir: Path) -> Path:
    """Base + speech adapter merged in bf16 and saved once, keyed by the snapshot's hash.

    4-bit weights cannot take a LoRA merge, so the merge must happen before quantization. One
    process builds it under a lock while the others wait and then load it; the build is
    checked before it is published, since transformers' ``save_pretrained`` writes nothing
    (and says nothing) on a torch.distributed rank other than 0.
    """
    from transformers import Phi4MultimodalForCausalLM

    dest = cache_dir / f"merged-speech-{_snapshot_key(model_dir)}"
    if not missing_weights(dest):
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.with_name(f"{dest.name}.lock")):
        if not missing_weights(dest):  # built by the process we waited for
            return dest
        log.info("merging %s/%s into the base (cached at %s)", model_dir, SPEECH_ADAPTER_DIR, dest)
        base = _checked_load(Phi4MultimodalForCausalLM, model_dir, {"dtype": torch.bfloat16})
        merged = merge_speech_adapter(base, model_dir)
        tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        merged.save_pretrained(tmp)
        missing = missing_weights(tmp)
        if missing:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SnapshotError(
                f"{dest}: the merged snapshot was saved without {', '.join(missing)}"
                + (
                    f" (this process is torch.distributed rank {rank()}: transformers saves on "
                    "rank 0 only; let rank 0 build the cache first, see load.prepare_cache)"
                    if rank()
                    else ""
                )
            )
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
            "preprocessor_config.json",
            "generation_config.json",
        ):
            if (model_dir / name).is_file():
                shutil.copy(model_dir / name, tmp / name)
        follow_umask(tmp)
        shutil.rmtree(dest, ignore_errors=True)  # an incomplete leftover of an older version
        tmp.rename(dest)
    return dest


def prepare_cache(cfg: TrainConfig, model_dir: Path) -> None:
    """Build what ``load_model`` would cache for ``cfg`` (the merged snapshot nf4 loads)."""
    if cfg.quantization == "nf4" and cfg.adapter == "merge_speech":
        merged_snapshot(Path(model_dir).resolve(), model_cache())


def _base_model(path: Path, cfg: TrainConfig, device_map: Any) -> Any:
    from transformers import Phi4MultimodalForCausalLM

    if cfg.attn_implementation == FOLDED_GQA:
        register_folded_gqa()
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(cfg),
        "attn_implementation": cfg.attn_implementation,
    }
    if cfg.quantization == "nf4":
        if not torch.cuda.is_available():
            raise ConfigError("quantization: nf4 needs a CUDA GPU (bitsandbytes 4-bit)")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=NF4_SKIP_MODULES,
        )
    if device_map is not None:
        kwargs["device_map"] = device_map
    started = time.perf_counter()
    model = _checked_load(Phi4MultimodalForCausalLM, path, kwargs)
    log.info(
        "base weights %s loaded (%s, %s) in %.1f s",
        path,
        cfg.quantization,
        next(model.parameters()).device,
        time.perf_counter() - started,
    )
    if cfg.quantization == "nf4":
        check_kept_out_of_4bit(model)
    # The audio encoder's relative-position bias is additive: keep it off flash-attention.
    audio = model.model.embed_tokens_extend.audio_embed.encoder
    if (
        hasattr(audio.config, "_attn_implementation")
        and cfg.attn_implementation == "flash_attention_2"
    ):
        audio.config._attn_implementation = "sdpa"
    return model


def check_kept_out_of_4bit(model: Any) -> None:
    """Fail loudly when the loader quantized a module NF4_SKIP_MODULES keeps in bf16: a
    quantized audio encoder cannot be unfrozen and silently changes every embedding."""
    wrong = [
        name
        for name, module in model.named_modules()
        if type(module).__name__ == "Linear4bit"
        and any(name == k or name.startswith(k + ".") for k in NF4_SKIP_MODULES)
    ]
    if wrong:
        raise RuntimeError(
            f"nf4 quantized {len(wrong)} module(s) meant to stay bf16 (first: {wrong[0]}); "
            "this transformers matches llm_int8_skip_modules differently"
        )


def _checked_load(cls: Any, path: Path, kwargs: dict[str, Any]) -> Any:
    """``from_pretrained`` that refuses missing, unexpected or mis-shaped weights.

    transformers logs such keys and goes on with randomly initialised modules. From 5.25 it
    also swaps layers for kernels fetched from the Hub by default: a download a compute node
    cannot make, refused as untrusted, and other rounding than the model's own layers, which
    every measurement here ran (5.24 and earlier default to off).
    """
    kwargs = {"use_kernels": False, **kwargs}
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    faults = {k: list(v) for k, v in info.items() if k != "error_msgs" and v}
    if faults or info.get("error_msgs"):
        detail = "; ".join(f"{k}: {v[:3]}{' ...' if len(v) > 3 else ''}" for k, v in faults.items())
        raise SnapshotError(
            f"{path}: the weights do not match the model of its config.json ({detail})"
        )
    return model


def _adapter_config(model_dir: Path) -> dict[str, Any]:
    return read_json(model_dir / SPEECH_ADAPTER_DIR / ADAPTER_CONFIG)


def load_model(
    cfg: TrainConfig,
    model_dir: str | Path,
    *,
    trainable: bool = True,
    device_map: Any = None,
    snapshot_config: dict[str, Any] | None = None,
) -> Loaded:
    """Base model with the configured adapters attached (LoRA trainable if ``trainable``).

    ``snapshot_config``: what ``check_snapshot`` returned for ``model_dir`` when the caller has
    just checked it (its tokenizer.json parse takes 0.5-0.7 s).
    """
    from peft import LoraConfig, get_peft_model

    model_dir = Path(model_dir).resolve()
    if snapshot_config is None:
        snapshot_config = check_snapshot(model_dir)
    shipped = _adapter_config(model_dir)
    tokenizer, fe = load_processors(model_dir, cfg)
    audio_id = snapshot_config["audio_config"]["audio_token_id"]
    if tokenizer.audio_token_id != audio_id:
        raise SnapshotError(
            f"{model_dir}: the tokenizer's audio token {tokenizer.audio_token!r} has id "
            f"{tokenizer.audio_token_id}, config.json's audio_token_id is {audio_id}"
        )

    if cfg.adapter == "continue_speech":
        for key, theirs in (("r", shipped["r"]), ("alpha", shipped["lora_alpha"])):
            if getattr(cfg.lora, key) != theirs:
                raise ConfigError(
                    f"lora.{key}: config says {getattr(cfg.lora, key)}, the shipped adapter "
                    f"{model_dir / SPEECH_ADAPTER_DIR} has {theirs}; continue_speech keeps its "
                    f"shape: set lora.{key}={theirs}, or adapter=merge_speech for a new LoRA"
                )
        if cfg.control_tokens == "special":
            raise ConfigError("control_tokens: special needs adapter: merge_speech")
        base = _base_model(model_dir, cfg, device_map)
        model = attach_speech_adapter(
            base, model_dir, adapter_name=TRAIN_ADAPTER, trainable=trainable
        )
        if trainable:
            for module in model.modules():
                if hasattr(module, "lora_dropout") and TRAIN_ADAPTER in module.lora_dropout:
                    drop = module.lora_dropout[TRAIN_ADAPTER]
                    if isinstance(drop, torch.nn.Dropout):
                        drop.p = cfg.lora.dropout
    else:
        if cfg.quantization == "nf4":
            base = _base_model(merged_snapshot(model_dir, model_cache()), cfg, device_map)
        else:
            base = merge_speech_adapter(_base_model(model_dir, cfg, device_map), model_dir)
        extra: dict[str, Any] = {}
        if cfg.control_tokens == "special":
            ids = [tokenizer.convert_tokens_to_ids(CONTROL_TOKENS[t]) for t in TASKS]
            if max(ids) >= base.config.vocab_size:
                raise ConfigError(
                    f"control_tokens: new token ids {ids} exceed the model's vocab_size "
                    f"{base.config.vocab_size}"
                )
            extra["trainable_token_indices"] = {"embed_tokens": ids}
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=shipped.get("target_modules", ADAPTER_TARGET_REGEX),
            task_type="CAUSAL_LM",
            **extra,
        )
        if cfg.quantization == "nf4" and trainable and cfg.kbit_prepare:
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(
                base, use_gradient_checkpointing=cfg.use_gradient_checkpointing
            )
        if trainable:
            # the new LoRA's initial weights from the seed alone, whatever the load drew from
            # the generator before (PEFT's speech-adapter wrapper used to draw 461M values)
            torch.manual_seed(cfg.seed)
        model = get_peft_model(base, lora, adapter_name=TRAIN_ADAPTER)
    if cfg.strategy == "unfreeze" and trainable:
        for name in AUDIO_MODULES:
            module = model.get_submodule(_peft_path(model, name))
            module.requires_grad_(True)
            upcast_trainable(module)
    if trainable and not cfg.lora_input_cast:
        set_lora_input_cast(model, enabled=False)
    if trainable and cfg.compile_layers:
        log.info(
            "compiled %d decoder layers (regional torch.compile)", compile_decoder_layers(model)
        )
    if not trainable:
        model.eval()
    return Loaded(model, tokenizer, fe)


def upcast_trainable(module: Any) -> None:
    """The module's trainable bf16/fp16 weights to float32.

    The optimizer updates a weight in its own dtype. AdamW's steps are about the lr (2e-5, the
    paper's), and on a bf16 weight over about 0.008 half its spacing is larger: the step rounds
    away. PEFT keeps the LoRA in float32 for that reason; ``unfreeze`` would otherwise train the
    audio encoder in bf16, hardly at all, on one GPU, while DeepSpeed (float32 master weights)
    trains it. Autocast still runs the matmuls in bf16. ZeRO-3's partitioned weights
    (``ds_id``) are DeepSpeed's to keep. Not for PEFT's trainable token rows
    (``control_tokens: special``): it writes them into the bf16 embedding with ``index_copy``,
    which wants one dtype.
    """
    for p in module.parameters():
        half = p.dtype in (torch.bfloat16, torch.float16)
        if p.requires_grad and half and not hasattr(p, "ds_id"):
            p.data = p.data.float()


def compile_decoder_layers(model: Any) -> int:
    """Regional ``torch.compile``: each language-model decoder layer, LoRA included.

    The layers share one code object, so the graph is compiled once and reused by all 32; the
    norms, SiLU gating, LoRA dropout and scaling fuse into few kernels (a bf16 step is bound by
    those elementwise kernels, not by its matmuls). The audio branch stays eager: its shapes
    depend on the clip lengths. ``dynamic=True``: sequence lengths vary from batch to batch.
    """
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise RuntimeError(f"{type(model).__name__}: no decoder layers to compile")
    use_shared_compile_cache()
    # Python floats (LoRA scaling, norm eps) as constants of the graph: traced as symbols, they
    # made Dynamo restart its analysis of the layer, and the discarded attempt always missed
    # the AOTAutograd cache (torch 2.13, tiny model on a CPU: a job with a warm cache 6.7 -> 4.0
    # s to its first step, the same loss; bench/results/cpu-2026-12-06-compile-restart.md).
    torch._dynamo.config.specialize_float = True
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def set_lora_input_cast(model: Any, enabled: bool) -> int:
    """Switch PEFT's cast of LoRA inputs to the adapter dtype; returns the layers touched.

    Only safe under autocast (training): without it a bf16 input would meet fp32 LoRA weights.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = enabled
            n += 1
    return n


def _peft_path(model: Any, name: str) -> str:
    """Module path of ``name`` (relative to the CausalLM) inside a PeftModel wrapper."""
    return f"base_model.model.{name}" if hasattr(model, "base_model") else name


def unfrozen_state(model: Any) -> dict[str, torch.Tensor]:
    """Weights of the unfrozen audio modules, keyed relative to the CausalLM."""
    out = {}
    for name in AUDIO_MODULES:
        module = model.get_submodule(_peft_path(model, name))
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().cpu().contiguous()
    return out


def load_unfrozen_state(model: Any, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(path)
    for name in AUDIO_MODULES:
        prefix = f"{name}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise ConfigError(f"{path}: no weights for {name}")
        model.get_submodule(_peft_path(model, name)).load_state_dict(sub)

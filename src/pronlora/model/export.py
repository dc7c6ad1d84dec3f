"""A trained checkpoint as something to hand over: the task adapter with a model card, and on
request a merged snapshot in the native Phi-4-multimodal layout.

The adapter folder holds the checkpoint's own files (PEFT layout, plus the unfrozen audio
weights of an Unfreeze run), so every loader that reads a run's checkpoint reads it. The merged
snapshot adds the task LoRA's weight deltas (and the unfrozen audio weights) to the base weights
and keeps the shipped ``speech-lora/`` unchanged: LoRA deltas add, so loading it the usual way
(``adapter: merge_speech``) gives the trained model, and ``get_model.py --check`` accepts it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from pronlora.core.atomic import follow_umask, write_json, write_text
from pronlora.core.config import ConfigError, TrainConfig, from_dict, to_dict
from pronlora.core.errors import DataError
from pronlora.core.layout import (
    BASE_CHECKPOINT,
    UNFROZEN_FILE,
    RunDir,
    checkpoint_name,
    read_json_file,
)
from pronlora.core.protocol import TABLE3_METRICS
from pronlora.model.load import _checked_load, load_unfrozen_state, torch_dtype
from pronlora.model.snapshot import (
    RANDOM_WEIGHTS_MARKER,
    SPEECH_ADAPTER_DIR,
    check_checkpoint_weights,
    check_snapshot,
)

# Table 3's columns and the counts that say how far to trust them
CARD_METRICS = (
    *TABLE3_METRICS,
    "n_apa",
    "apa_parse_failures",
    "n_mdd",
    "mdd_parse_failures",
)
# checkpoint files a colleague does not need: the Trainer's pickled arguments (paths, and a
# pickle is code) and PEFT's placeholder card (ours replaces it)
NOT_EXPORTED = ("training_args.bin", "README.md")
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
SNAPSHOT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "generation_config.json",
    RANDOM_WEIGHTS_MARKER,
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _metrics(run: RunDir, checkpoint: str, report: Path | None) -> dict[str, Any] | None:
    """This checkpoint's test metrics from a collect report (given, the run's, or its grid's)."""
    candidates = [report] if report else [run.report, run.root.parent / "report"]
    for folder in candidates:
        path = folder / "metrics.json"
        if path.is_file():
            for entry in read_json_file(path):
                if entry.get("run") == run.root.name and entry.get("checkpoint") == checkpoint:
                    return entry | {"source": str(path)}
    return None


def model_card(meta: dict[str, Any], checkpoint: str, metrics: dict[str, Any] | None) -> str:
    cfg = meta["config"]
    random = meta.get("random_weights")
    lines = [
        f"# pronlora task adapter: {cfg['name']} ({cfg['strategy']}), {checkpoint}",
        "",
        "Phi-4-multimodal-instruct fine-tuned for pronunciation assessment (APA) and",
        "mispronunciation detection and diagnosis (MDD) on SpeechOcean762, after Ahn & Nam,",
        "arXiv:2509.02915; trained with pronlora. The prompts (`<|APA|>` / `<|MDD|>`) are",
        "part of the protocol: use pronlora's `jobs/infer.py` or `jobs/score.py`.",
        "",
    ]
    if random:
        lines += [
            "> **Random weights.** The base snapshot was a pronlora test checkpoint: this adapter",
            "> and any metric below are meaningless.",
            "",
        ]
    lines += [
        "## Load it",
        "",
        f"- `{ADAPTER_DIR}/`: the task LoRA in PEFT's layout"
        + (
            " and the unfrozen audio encoder (`unfrozen.safetensors`)"
            if cfg["strategy"] == "unfreeze"
            else ""
        )
        + f". It applies on top of the base with its speech adapter merged (`adapter: "
        f"{cfg['adapter']}`); base snapshot at training time: `{meta['model']}`.",
        f"- `{MERGED_DIR}/` (with `--merged`): a whole snapshot in the native layout; pass it as "
        "`--model` (it holds the task weights; `jobs/get_model.py --check` accepts it).",
        "",
        "## Data",
        "",
        f"- prepared dir `{meta.get('prepared')}`, content hash `{meta.get('data_content_hash')}`"
        + (" (SYNTHETIC corpus)" if meta.get("synthetic_data") else ""),
        "",
        "## Test metrics",
        "",
    ]
    if metrics is None:
        lines.append("None recorded: run `jobs/collect.py` over this run, then export again.")
    else:
        lines.append(f"From `{metrics['source']}` (95 % intervals, bootstrap over speakers):")
        lines.append("")
        for key in CARD_METRICS:
            if key not in metrics:
                continue
            value = metrics[key]
            ci = (metrics.get("ci95") or {}).get(key)
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"- {key}: {'n/a (undefined)' if value is None else shown}{interval}")
    lines += [
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(cfg, sort_keys=True).rstrip(),
        "```",
        "",
        "## Versions",
        "",
        "```json",
        json.dumps(meta.get("versions", {}), indent=1, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def _merged(cfg: TrainConfig, model_dir: Path, ckpt: Path, dest: Path) -> None:
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    if cfg.adapter != "merge_speech" or cfg.control_tokens != "text" or cfg.quantization != "bf16":
        raise ConfigError(
            "--merged: only runs with adapter: merge_speech, control_tokens: text and "
            f"quantization: bf16 merge into a snapshot (this run: adapter: {cfg.adapter}, "
            f"control_tokens: {cfg.control_tokens}, quantization: {cfg.quantization}); "
            "export the adapter alone"
        )
    base = _checked_load(Phi4MultimodalForCausalLM, model_dir, {"dtype": torch_dtype(cfg)})
    model = PeftModel.from_pretrained(base, str(ckpt))
    if cfg.strategy == "unfreeze":
        load_unfrozen_state(model, ckpt / UNFROZEN_FILE)
    with torch.no_grad():
        merged = model.merge_and_unload()
    merged.save_pretrained(dest)
    for name in SNAPSHOT_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, dest / name)
    shutil.copytree(model_dir / SPEECH_ADAPTER_DIR, dest / SPEECH_ADAPTER_DIR)
    check_snapshot(dest)


def export(
    run_dir: Path, checkpoint: str, out: Path, merged: bool = False, report: Path | None = None
) -> Path:
    """Write ``out/`` (refused if it exists): adapter, model card, provenance, [merged]."""
    run = RunDir(run_dir)
    meta = run.read_run()
    cfg = from_dict(meta["config"], str(run.run_json))
    if checkpoint_name(checkpoint) == BASE_CHECKPOINT:
        raise ConfigError("--checkpoint base: the base model has no task adapter to export")
    ckpt = run.complete_checkpoint(checkpoint)
    assert ckpt is not None
    check_checkpoint_weights(ckpt)
    if out.exists() or out.is_symlink():
        raise DataError(f"--out {out}: exists; export into a new folder")
    model_dir = Path(meta["model"])
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt, tmp / ADAPTER_DIR, ignore=shutil.ignore_patterns(*NOT_EXPORTED))
    if merged:
        _merged(cfg, model_dir, ckpt, tmp / MERGED_DIR)
    card_meta = meta | {
        "versions": read_json_file(run.versions_json) if run.versions_json.is_file() else {},
        "random_weights": (model_dir / RANDOM_WEIGHTS_MARKER).is_file(),
    }
    write_text(
        tmp / "README.md", model_card(card_meta, checkpoint, _metrics(run, checkpoint, report))
    )
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    write_json(
        tmp / "export.json",
        {
            "run_dir": str(run.root),
            "checkpoint": checkpoint,
            "config": to_dict(cfg),
            "model": str(model_dir),
            "files": {str(p.relative_to(tmp)): _sha256(p) for p in files},
        },
    )
    follow_umask(tmp)
    tmp.rename(out)
    return out

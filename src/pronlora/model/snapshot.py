"""The Phi-4-multimodal snapshot format, and an offline check of a snapshot directory.

Facts here are the Hub's (paper-protocol.md): the native revision written by transformers'
conversion, its tokenizer ids, the speech adapter's folder and key style. The check reads only
JSON files and safetensors headers, so it runs in seconds before any weight is loaded and names
every file at fault with the fix.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from pronlora.core.errors import SnapshotError
from pronlora.core.layout import UNFROZEN_FILE

HUB_REPO = "microsoft/Phi-4-multimodal-instruct"
# The native-format weights live on this revision (what transformers' integration test loads).
NATIVE_REVISION = "refs/pr/70"
NATIVE_MODEL_TYPE = "phi4_multimodal"
REMOTE_CODE_MODEL_TYPE = "phi4mm"
DOWNLOAD_COMMAND = "python jobs/get_model.py --out DIR"
HF_CLI_COMMAND = f"hf download {HUB_REPO} --revision {NATIVE_REVISION} --local-dir DIR"

SPEECH_ADAPTER_DIR = "speech-lora"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Target modules of the shipped speech/vision adapters.
ADAPTER_TARGET_REGEX = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"
# PEFT's save_pretrained prefixes adapter keys with this; the Hub's conversion does not.
PEFT_KEY_PREFIX = "base_model.model."

VOCAB_SIZE = 200_064
IMAGE_SPECIAL_TOKEN = "<|endoftext10|>"
AUDIO_SPECIAL_TOKEN = "<|endoftext11|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_TOKEN = "<|end|>"
SYSTEM_TOKEN = "<|system|>"
ENDOFTEXT_TOKEN = "<|endoftext|>"
REAL_SPECIAL_IDS: dict[str, int] = {
    ENDOFTEXT_TOKEN: 199_999,
    IMAGE_SPECIAL_TOKEN: 200_010,
    AUDIO_SPECIAL_TOKEN: 200_011,
    "<|endofprompt|>": 200_018,
    ASSISTANT_TOKEN: 200_019,
    END_TOKEN: 200_020,
    USER_TOKEN: 200_021,
    SYSTEM_TOKEN: 200_022,
}
CHAT_TOKENS = (USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN, SYSTEM_TOKEN)
RSTRIP_TOKENS = frozenset(CHAT_TOKENS)
EOS_TOKEN_IDS = [REAL_SPECIAL_IDS[ENDOFTEXT_TOKEN], REAL_SPECIAL_IDS[END_TOKEN]]

# The checkpoint's chat format: <|role|>content<|end|> ... <|assistant|>
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

# Written by pronlora's random-weight checkpoints (devtools): reports say "meaningless".
RANDOM_WEIGHTS_MARKER = "pronlora_random_checkpoint.json"

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def special_token_id(tokenizer: Any, token: str) -> int:
    """Id of a special token the snapshot format promises; never the unknown id."""
    idx = tokenizer.convert_tokens_to_ids(token)
    if idx is None or (idx == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise SnapshotError(f"the tokenizer has no {token!r} token (not a Phi-4 tokenizer)")
    return int(idx)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: not valid JSON ({exc})") from exc


_DECODER = json.JSONDecoder()
_BLANK = re.compile(r"[ \t\n\r]*")


def read_json_member(path: Path, key: str) -> Any:
    """One member of a file's top-level JSON object (None if it has none), decoded only as far
    as that member. tokenizer.json is 27 MB and its added_tokens come before the vocabulary:
    decoding all of it cost every training and decoding job 1.3 s. A file cut short (it does
    not end its object) is refused as read_json refuses it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SnapshotError(f"{path}: not valid JSON ({exc})") from exc
    try:
        if not text.rstrip().endswith("}"):
            raise ValueError("the file ends before its object does")
        i = _BLANK.match(text).end()
        if not text.startswith("{", i):
            raise ValueError("not a JSON object")
        i = _BLANK.match(text, i + 1).end()
        while not text.startswith("}", i):
            name, i = _DECODER.raw_decode(text, i)
            i = _BLANK.match(text, i).end()
            if not isinstance(name, str) or not text.startswith(":", i):
                raise ValueError(f"no member name before char {i}")
            value, i = _DECODER.raw_decode(text, _BLANK.match(text, i + 1).end())
            if name == key:
                return value
            i = _BLANK.match(text, i).end()
            if text.startswith(",", i):
                i = _BLANK.match(text, i + 1).end()
            elif not text.startswith("}", i):
                raise ValueError(f"expected ',' or '}}' at char {i}")
        return None
    except ValueError as exc:  # json.JSONDecodeError included
        raise SnapshotError(f"{path}: not valid JSON ({exc})") from exc


def safetensors_header(path: Path, fix: str = "download it again") -> dict[str, Any]:
    """Tensor names -> (dtype, shape, offsets) from the file header; checks the file is whole.
    ``fix``: what the message tells the user to do about a damaged file."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise SnapshotError(f"{path}: truncated ({size} bytes, no safetensors header); {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise SnapshotError(
                f"{path}: truncated (header of {n} bytes, file {size} bytes); {fix}"
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SnapshotError(f"{path}: corrupt safetensors header ({exc}); {fix}") from exc
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if size != 8 + n + end:
        raise SnapshotError(
            f"{path}: truncated or padded ({size} bytes, its header describes {8 + n + end}); {fix}"
        )
    return header


def check_checkpoint_weights(ckpt_dir: Path) -> None:
    """A trained checkpoint's weight files are whole (headers only, no torch): a file damaged
    after training is named before a decode or export starts, not as a safetensors traceback
    after the items before it."""
    fix = "the checkpoint was damaged after training; train that epoch again"
    adapter = ckpt_dir / ADAPTER_WEIGHTS
    if not adapter.is_file():
        raise SnapshotError(f"{adapter}: missing; {fix}")
    for path in (adapter, ckpt_dir / UNFROZEN_FILE):
        if path.is_file():
            safetensors_header(path, fix)


def weight_files(model_dir: Path) -> dict[Path, set[str]]:
    """Each base-weight file with the tensor names it must hold (index checked against files)."""
    index = model_dir / "model.safetensors.index.json"
    single = model_dir / "model.safetensors"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise SnapshotError(f"{index}: no weight_map")
        files: dict[Path, set[str]] = {}
        for key, name in weight_map.items():
            files.setdefault(model_dir / name, set()).add(key)
        missing = sorted(str(p) for p in files if not p.is_file())
        if missing:
            raise SnapshotError(
                f"{index} lists shards that are missing: {', '.join(missing)}; "
                f"finish the download ({DOWNLOAD_COMMAND} resumes)"
            )
        for path, keys in files.items():
            absent = sorted(keys - set(safetensors_header(path)))
            if absent:
                raise SnapshotError(
                    f"{path}: {len(absent)} tensors that {index.name} maps to it are absent "
                    f"(first: {absent[0]})"
                )
        return files
    if single.is_file():
        return {single: set(safetensors_header(single))}
    raise SnapshotError(
        f"{model_dir}: no model.safetensors or model.safetensors.index.json; "
        f"download the native revision: {DOWNLOAD_COMMAND}"
    )


def adapter_modules(keys: list[str], path: Path) -> tuple[str, set[str]]:
    """Key style ('peft' or 'hub') and the module names an adapter file has LoRA pairs for."""
    styles = {k.startswith(PEFT_KEY_PREFIX) for k in keys}
    if len(styles) != 1:
        raise SnapshotError(f"{path}: mixes PEFT-prefixed and unprefixed adapter keys")
    style = "peft" if styles.pop() else "hub"
    pairs: dict[str, set[str]] = {}
    for key in keys:
        bare = key.removeprefix(PEFT_KEY_PREFIX)
        m = _LORA_KEY.match(bare)
        if not m:
            raise SnapshotError(
                f"{path}: key {key!r} is not a LoRA weight "
                "(expected <module>.lora_A.weight / <module>.lora_B.weight)"
            )
        pairs.setdefault(m["module"], set()).add(m["ab"])
    half = sorted(m for m, ab in pairs.items() if ab != {"A", "B"})
    if half:
        raise SnapshotError(f"{path}: modules with only one of lora_A/lora_B: {half[:3]}")
    return style, set(pairs)


def _check_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise SnapshotError(
            f"{model_dir}: no config.json; not a model snapshot "
            f"(download the native revision: {DOWNLOAD_COMMAND})"
        )
    config = read_json(path)
    remote = (
        config.get("model_type") == REMOTE_CODE_MODEL_TYPE
        or "auto_map" in config
        or "Phi4MMForCausalLM" in (config.get("architectures") or [])
    )
    if remote:
        raise SnapshotError(
            f"{path}: this is the Hub's main branch in remote-code format (model_type "
            f"{config.get('model_type')!r}, auto_map), which native transformers cannot train "
            f"with this project's adapters. Download the native revision {NATIVE_REVISION} "
            f"instead: {DOWNLOAD_COMMAND}  (or: {HF_CLI_COMMAND})"
        )
    if config.get("model_type") != NATIVE_MODEL_TYPE:
        raise SnapshotError(
            f"{path}: model_type {config.get('model_type')!r}, expected {NATIVE_MODEL_TYPE!r} "
            "(a Phi-4-multimodal snapshot in native transformers format)"
        )
    return config


def _check_tokenizer(model_dir: Path, config: dict[str, Any]) -> None:
    tok_json = model_dir / "tokenizer.json"
    tok_cfg = model_dir / "tokenizer_config.json"
    for path in (tok_json, tok_cfg):
        if not path.is_file():
            raise SnapshotError(
                f"{path}: missing; the snapshot has no tokenizer (download it again: "
                f"{DOWNLOAD_COMMAND})"
            )
    added = {t["content"]: t["id"] for t in read_json_member(tok_json, "added_tokens") or []}
    extra = read_json(tok_cfg).get("extra_special_tokens") or {}
    audio_token = extra.get("audio_token") if isinstance(extra, dict) else None
    audio_id = (config.get("audio_config") or {}).get("audio_token_id")
    if audio_token is None:
        raise SnapshotError(
            f"{tok_cfg}: names no audio_token in extra_special_tokens; this tokenizer is not "
            f"the native conversion's (it names {AUDIO_SPECIAL_TOKEN})"
        )
    if added.get(audio_token) != audio_id:
        raise SnapshotError(
            f"{tok_json}: the audio token {audio_token!r} has id {added.get(audio_token)}, but "
            f"config.json's audio_config.audio_token_id is {audio_id}: the tokenizer does not "
            "belong to this model"
        )
    absent = [t for t in CHAT_TOKENS if t not in added]
    if absent:
        raise SnapshotError(f"{tok_json}: chat tokens {absent} are not special tokens")
    vocab = config.get("vocab_size")
    top = max(added.values(), default=0)
    if isinstance(vocab, int) and top >= vocab:
        raise SnapshotError(
            f"{tok_json}: token id {top} is outside the model's vocab_size {vocab}: the "
            "tokenizer does not belong to this model"
        )


def _check_adapter(model_dir: Path, base_keys: set[str]) -> None:
    folder = model_dir / SPEECH_ADAPTER_DIR
    cfg_path, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    for path in (cfg_path, weights):
        if not path.is_file():
            raise SnapshotError(
                f"{path}: missing; the speech adapter is part of the snapshot (without it the "
                f"model cannot hear): download it again ({DOWNLOAD_COMMAND})"
            )
    cfg = read_json(cfg_path)
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            raise SnapshotError(f"{cfg_path}: no {key!r}")
    header = safetensors_header(weights)
    _, modules = adapter_modules(sorted(header), weights)
    absent = sorted(m for m in modules if f"{m}.weight" not in base_keys)
    if absent:
        raise SnapshotError(
            f"{weights}: adapts modules the base weights do not have, e.g. {absent[0]!r}"
        )
    targeted = {k.removesuffix(".weight") for k in base_keys if k.endswith(".weight")}
    pattern = cfg["target_modules"]
    if isinstance(pattern, str):
        wanted = {m for m in targeted if re.fullmatch(pattern, m)}
        uncovered = sorted(wanted - modules)
        if uncovered:
            raise SnapshotError(
                f"{weights}: no LoRA weights for {len(uncovered)} of the {len(wanted)} modules "
                f"{cfg_path.name} targets (first: {uncovered[0]!r})"
            )
    bad_rank = sorted(
        k for k, v in header.items() if ".lora_A." in k and int(v["shape"][0]) != int(cfg["r"])
    )
    if bad_rank:
        found = int(header[bad_rank[0]]["shape"][0])
        raise SnapshotError(
            f"{weights}: {bad_rank[0]} has rank {found}, but {cfg_path} says r={cfg['r']}: the "
            f"adapter files do not belong together; download the snapshot again "
            f"({DOWNLOAD_COMMAND})"
        )


def check_snapshot(model_dir: str | Path) -> dict[str, Any]:
    """Raise SnapshotError naming the file and the fix, or return the snapshot's config."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SnapshotError(f"--model {model_dir}: no such directory ({DOWNLOAD_COMMAND})")
    config = _check_config(model_dir)
    if not (model_dir / "preprocessor_config.json").is_file():
        raise SnapshotError(
            f"{model_dir / 'preprocessor_config.json'}: missing (the audio feature extractor)"
        )
    _check_tokenizer(model_dir, config)
    base_keys = set().union(*weight_files(model_dir).values())
    _check_adapter(model_dir, base_keys)
    return config


def describe_snapshot(model_dir: str | Path) -> str:
    """One line on a checked snapshot: weight files, adapter shape and key style, audio id."""
    model_dir = Path(model_dir)
    config = read_json(model_dir / "config.json")
    files = weight_files(model_dir)
    adapter_cfg = read_json(model_dir / SPEECH_ADAPTER_DIR / ADAPTER_CONFIG)
    keys = sorted(safetensors_header(model_dir / SPEECH_ADAPTER_DIR / ADAPTER_WEIGHTS))
    style, modules = adapter_modules(keys, model_dir / SPEECH_ADAPTER_DIR / ADAPTER_WEIGHTS)
    random = (model_dir / RANDOM_WEIGHTS_MARKER).is_file()
    return (
        f"{len(files)} weight file(s), {sum(len(k) for k in files.values())} tensors; "
        f"speech adapter r={adapter_cfg['r']} alpha={adapter_cfg['lora_alpha']} on "
        f"{len(modules)} modules ({style}-style keys); audio token id "
        f"{config['audio_config']['audio_token_id']}"
        + ("; RANDOM WEIGHTS (pronlora test checkpoint)" if random else "")
    )

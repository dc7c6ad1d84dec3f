"""Phi-4-multimodal's tokenizer rebuilt offline: o200k_base ranks plus Phi-4's special tokens.

The real snapshot cannot be downloaded here, but its tokenizer is o200k_base (tiktoken) with
Phi-4's special tokens on top, and the o200k rank file ships in the PyPI package ``bpe-openai``
(a dev/test dependency). The file's sha256 is checked against tiktoken's published hash before
use, so the random checkpoints tokenize exactly as the real one does. Labs use their snapshot's
own tokenizer; nothing here runs on a real snapshot.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

from pronlora.core.errors import EnvironmentProblem
from pronlora.model.snapshot import (
    AUDIO_SPECIAL_TOKEN,
    CHAT_TEMPLATE,
    IMAGE_SPECIAL_TOKEN,
    REAL_SPECIAL_IDS,
    RSTRIP_TOKENS,
    VOCAB_SIZE,
)

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_RANKS = 199_998
# tiktoken's o200k_base pre-tokenizer pattern.
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)


def o200k_rank_file() -> bytes:
    """The unzipped o200k_base rank file from ``bpe-openai``, hash-checked."""
    # Located without importing the package (its import builds every encoding).
    spec = importlib.util.find_spec("bpe_openai")
    try:
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("bpe_openai")
        ref = Path(spec.submodule_search_locations[0]) / "data" / "o200k_base.tiktoken.gz"
        raw = gzip.decompress(ref.read_bytes())
    except FileNotFoundError as exc:
        raise EnvironmentProblem(
            "the o200k_base rank file comes from the dev/test dependency bpe-openai: "
            "pip install 'bpe-openai==0.1.4' (or install pronlora with its [test] extra)"
        ) from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != O200K_SHA256:
        raise EnvironmentProblem(
            f"{ref}: sha256 {digest} is not tiktoken's o200k_base ({O200K_SHA256}); "
            "reinstall bpe-openai==0.1.4"
        )
    return raw


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _ranks(raw: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != O200K_RANKS or sorted(ranks.values()) != list(range(O200K_RANKS)):
        raise EnvironmentProblem(f"o200k_base rank file: expected ranks 0..{O200K_RANKS - 1}")
    return ranks


def _split(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The last merge tiktoken makes to build ``token``: BPE on its bytes with lower ranks."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise EnvironmentProblem(f"o200k_base: token rank {rank} is not reachable by merges")
    return parts[0], parts[1]


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order: the BPE merge table tiktoken implies.

    tiktoken always merges the adjacent pair whose concatenation has the lowest rank, so the
    merge that forms a token is found by running that procedure on the token's own bytes.
    """
    ordered = sorted((r, t) for t, r in ranks.items() if len(t) > 1)
    return [_split(ranks, token, rank) for rank, token in ordered]


def special_tokens() -> dict[int, str]:
    """Every id above the o200k ranks up to the padded vocabulary, with its string.

    Named ones are those the snapshot format fixes (paper-protocol.md); the rest are
    placeholders that keep the vocabulary at the real size.
    """
    named = {idx: tok for tok, idx in REAL_SPECIAL_IDS.items()}
    return {
        idx: named.get(idx, f"<|placeholder{idx - O200K_RANKS}|>")
        for idx in range(O200K_RANKS, VOCAB_SIZE)
    }


def _added_token(tok: str) -> dict:
    """An added token's flags: special, not normalised; chat tokens strip space on the right."""
    return {
        "content": tok,
        "lstrip": False,
        "normalized": False,
        "rstrip": tok in RSTRIP_TOKENS,
        "single_word": False,
        "special": True,
    }


def tokenizer_json(raw: bytes) -> dict:
    ranks = _ranks(raw)
    to_text = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_text[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    merges = [[text(a), text(b)] for a, b in _merges(ranks)]
    added = [{"id": idx, **_added_token(tok)} for idx, tok in special_tokens().items()]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": O200K_PATTERN},
                    "behavior": "Removed",
                    "invert": True,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": False,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def tokenizer_config() -> dict:
    """``tokenizer_config.json`` as the native conversion writes it (flags as on the Hub)."""
    decoder = {str(idx): _added_token(tok) for idx, tok in special_tokens().items()}
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "extra_special_tokens": {
            "image_token": IMAGE_SPECIAL_TOKEN,
            "audio_token": AUDIO_SPECIAL_TOKEN,
        },
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "GPT2TokenizerFast",
        "unk_token": "<|endoftext|>",
    }


def write_phi4_tokenizer(out: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` of the real format into ``out``."""
    from pronlora.core.atomic import write_text

    write_text(out / "tokenizer.json", json.dumps(tokenizer_json(o200k_rank_file())) + "\n")
    write_text(out / "tokenizer_config.json", json.dumps(tokenizer_config(), indent=2) + "\n")

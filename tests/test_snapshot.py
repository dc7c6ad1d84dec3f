"""The real artefacts' formats: o200k tokenizer, Hub-style speech adapter, refused snapshots.

Every expectation here comes from outside the project: token ids and the o200k encoding from
tiktoken's rank file through an independent encoder (bpe-openai's Rust crate), key styles and
config fields from transformers' native conversion (paper-protocol.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pronlora.core.atomic import read_jsonl
from pronlora.core.config import load_config
from pronlora.core.errors import SnapshotError
from pronlora.core.protocol import Task, prompt_text
from pronlora.model.collate import Collator
from pronlora.model.load import load_model, load_tokenizer
from pronlora.model.snapshot import PEFT_KEY_PREFIX, check_snapshot

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def o200k():
    import bpe_openai

    return bpe_openai.get_encoding("o200k_base")


def copy_snapshot(src: Path, dst: Path) -> Path:
    """A snapshot copy whose big files are symlinks (tests replace what they change)."""
    dst.mkdir(parents=True)
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        elif path.stat().st_size > 1_000_000:
            target.symlink_to(path)
        else:
            shutil.copy(path, target)
    return dst


def replace_file(path: Path) -> Path:
    if path.is_symlink():
        real = path.resolve()
        path.unlink()
        shutil.copy(real, path)
    return path


def get_model_check(model_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "get_model.py"), "--check", str(model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_chat_and_modality_token_ids_are_the_real_ones(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    want = {
        "<|endoftext|>": 199999,
        "<|endofprompt|>": 200018,
        "<|assistant|>": 200019,
        "<|end|>": 200020,
        "<|user|>": 200021,
        "<|system|>": 200022,
        "<|endoftext10|>": 200010,
        "<|endoftext11|>": 200011,
    }
    assert {t: tok.convert_tokens_to_ids(t) for t in want} == want
    assert (tok.audio_token, tok.audio_token_id) == ("<|endoftext11|>", 200011)
    assert len(tok) == 200064
    assert tok.eos_token_id == tok.pad_token_id == 199999
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["vocab_size"] == 200064
    assert config["eos_token_id"] == [199999, 200020]
    assert config["audio_config"]["audio_token_id"] == 200011
    gen = json.loads((tiny_model / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [199999, 200020]


def test_prompts_and_real_targets_encode_as_o200k(
    tiny_model: Path, mini: Path, tmp_path: Path, o200k
) -> None:
    from pronlora.data.prep import prepare

    tok = load_tokenizer(tiny_model)
    apa, mdd = (tok(prompt_text(t), add_special_tokens=False)["input_ids"] for t in Task)
    assert (len(apa), len(mdd)) == (557, 111)  # paper-protocol.md, measured with tiktoken
    assert apa == o200k.encode(prompt_text(Task.APA))
    assert mdd == o200k.encode(prompt_text(Task.MDD))
    rows = read_jsonl(prepare("kaldi", mini, tmp_path / "prep").out / "train.jsonl")
    targets = sorted({r["target"] for r in rows})
    assert len(targets) > 150  # distinct APA dicts and MDD transcripts of the real corpus
    ours = tok(targets, add_special_tokens=False)["input_ids"]
    assert ours == [o200k.encode(t) for t in targets]
    # and any text: digits, contractions, whitespace runs, accents, CJK, emoji
    import random
    import string

    rng = random.Random(0)
    alphabet = string.printable + "éüß日本語😀’—"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(300)]
    assert tok(texts, add_special_tokens=False)["input_ids"] == [o200k.encode(t) for t in texts]


def test_label_mask_is_the_o200k_answer_plus_end(
    tiny_model: Path, demo_prepared: Path, o200k
) -> None:
    loaded = load_model(load_config("smoke"), tiny_model)
    rows = read_jsonl(demo_prepared / "train.jsonl")[:4]
    batch = Collator(loaded.tokenizer, loaded.feature_extractor)(rows)
    for i, row in enumerate(rows):
        labels = [x for x in batch["labels"][i].tolist() if x != -100]
        assert labels == [*o200k.encode(row["target"]), 200020]
        ids = batch["input_ids"][i].tolist()
        assert ids[:2] == [200021, *o200k.encode("<|")[:1]]  # <|user|> then the control token
        assert ids.count(200011) == int(batch["audio_embed_sizes"][i])
        assert ids[len(ids) - ids[::-1].index(200011)] != 200011  # one contiguous audio run


def test_autotokenizer_trap_is_caught(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 5 rebuilds GPT2TokenizerFast with GPT-2's split: the loader must notice."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    auto = AutoTokenizer.from_pretrained(tiny_model)
    n_auto = len(auto(prompt_text(Task.APA), add_special_tokens=False)["input_ids"])
    if n_auto == 557:
        pytest.skip("this transformers keeps tokenizer.json's pre-tokenizer under AutoTokenizer")
    monkeypatch.setattr(PreTrainedTokenizerFast, "from_pretrained", lambda *a, **k: auto)
    with pytest.raises(SnapshotError, match="tokenizes differently from the file itself"):
        load_tokenizer(tiny_model)


def test_a_tokenizer_damaged_past_its_head_is_named_when_loaded(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The snapshot check decodes tokenizer.json only up to its added tokens; damage in the
    vocabulary behind them is named by the loader, not raised as tokenizers' bare Exception."""
    snap = copy_snapshot(tiny_model, tmp_path / "snap")
    path = replace_file(snap / "tokenizer.json")
    text = path.read_text()
    cut = text.index('"vocab"')
    path.write_text(text[:cut] + '"vocab": [1, 2], ' + text[text.index('"merges"') :])
    check_snapshot(snap)  # the head is whole
    with pytest.raises(SnapshotError, match=re.escape(f"{path}: not a tokenizer file")):
        load_tokenizer(snap)


def test_a_json_member_is_read_as_the_whole_file_gives_it(tmp_path: Path) -> None:
    from pronlora.model.snapshot import read_json_member

    doc = {"a": {"}": "{,"}, "b": [1, {"c": None}], "big": list(range(1000)), "z": "last"}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc, indent=2))
    assert {k: read_json_member(path, k) for k in doc} == doc
    assert read_json_member(path, "absent") is None
    for bad in ('{"a": 1 "b": 2}', '{"a": 1,', "[1, 2]", '{"a" 1}', "{1: 2}"):
        path.write_text(bad)
        with pytest.raises(SnapshotError, match="not valid JSON"):
            read_json_member(path, "b")


def _first_loss(model_dir: Path, rows: list[dict], silence: bool = False) -> float:
    import numpy as np

    from pronlora.model.collate import load_audio

    loaded = load_model(load_config("smoke", ["lora.dropout=0.0"]), model_dir)
    collator = Collator(loaded.tokenizer, loaded.feature_extractor)
    batch = collator(rows)
    if silence:  # same lengths, so the same number of audio tokens; zeros instead of speech
        batch.update(collator.audio_features([np.zeros_like(load_audio(r["audio"])) for r in rows]))
    loaded.model.eval()
    with torch.no_grad():
        return float(loaded.model(**batch).loss)


@pytest.mark.slow
def test_hub_style_adapter_is_applied_like_peft_style(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    rows = read_jsonl(demo_prepared / "train.jsonl")[:2]
    hub = _first_loss(tiny_model, rows)

    peft_dir = copy_snapshot(tiny_model, tmp_path / "peft")
    weights = peft_dir / "speech-lora" / "adapter_model.safetensors"
    state = load_file(str(replace_file(weights)))
    assert not any(k.startswith(PEFT_KEY_PREFIX) for k in state)  # the Hub's key style
    save_file({PEFT_KEY_PREFIX + k: v for k, v in state.items()}, str(weights))
    assert _first_loss(peft_dir, rows) == pytest.approx(hub, rel=1e-6)

    # Without the speech adapter the loss is another one: the adapter was really applied.
    from transformers import Phi4MultimodalForCausalLM

    loaded = load_model(load_config("smoke"), tiny_model)
    base = Phi4MultimodalForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        plain = float(base(**Collator(loaded.tokenizer, loaded.feature_extractor)(rows)).loss)
    assert abs(plain - hub) > 1e-4

    zero_dir = copy_snapshot(tiny_model, tmp_path / "zero")
    zweights = replace_file(zero_dir / "speech-lora" / "adapter_model.safetensors")
    save_file(
        {k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in state.items()},
        str(zweights),
    )
    with pytest.raises(SnapshotError, match="every lora_B is zero"):
        load_model(load_config("smoke"), zero_dir)


@pytest.mark.slow
def test_silence_in_place_of_speech_changes_the_loss(tiny_model: Path, demo_prepared: Path) -> None:
    rows = read_jsonl(demo_prepared / "train.jsonl")[:2]
    assert _first_loss(tiny_model, rows, silence=True) != pytest.approx(
        _first_loss(tiny_model, rows), rel=1e-5
    )


def test_adapter_missing_a_targeted_module_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    snap = copy_snapshot(tiny_model, tmp_path / "partial")
    weights = replace_file(snap / "speech-lora" / "adapter_model.safetensors")
    state = load_file(str(weights))
    gone = "model.layers.1.mlp.down_proj"
    save_file({k: v for k, v in state.items() if not k.startswith(gone)}, str(weights))
    with pytest.raises(SnapshotError, match=f"no LoRA weights for 1 of the 8 modules.*{gone}"):
        check_snapshot(snap)


def test_the_model_runs_its_own_layers_not_kernels_from_the_hub(tiny_model: Path) -> None:
    """transformers 5.25 kernelizes every loaded model by default with kernels it downloads
    from the Hub: on a GPU node that fails as untrusted (and offline), and elsewhere it would
    change the rounding every measurement here was made with. The load turns it off."""
    model = load_model(load_config("smoke"), tiny_model, trainable=False).model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert getattr(base, "use_kernels", False) is False


def test_missing_or_unexpected_base_weights_are_errors(tiny_model: Path, tmp_path: Path) -> None:
    snap = copy_snapshot(tiny_model, tmp_path / "keys")
    weights = replace_file(snap / "model.safetensors")
    state = load_file(str(weights))
    gone = "model.embed_tokens_extend.audio_embed.up_proj_for_speech.weight"
    state.pop(gone)
    state["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(SnapshotError, match="do not match the model") as err:
        load_model(load_config("smoke"), snap)
    assert gone in str(err.value) and "mlp.extra" in str(err.value)


def _remote_code(snap: Path) -> str:
    path = replace_file(snap / "config.json")
    config = json.loads(path.read_text())
    config.update(
        model_type="phi4mm",
        architectures=["Phi4MMForCausalLM"],
        auto_map={"AutoModelForCausalLM": "modeling_phi4mm.Phi4MMForCausalLM"},
    )
    path.write_text(json.dumps(config))
    return f"{path}.*remote-code.*refs/pr/70.*get_model.py --out"


def _missing_shard(snap: Path) -> str:
    state = load_file(str(snap / "model.safetensors"))
    (snap / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half]}
    shards["model-00002-of-00002.safetensors"] = names[half:]
    for fname, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(snap / fname), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (snap / "model.safetensors.index.json").write_text(json.dumps(index))
    (snap / "model-00002-of-00002.safetensors").unlink()
    return r"model.safetensors.index.json lists shards that are missing: .*00002.*resumes"


def _wrong_tokenizer(snap: Path) -> str:
    # Phi-4-mini's tokenizer config (same vocabulary, no audio token) copied in by mistake.
    path = replace_file(snap / "tokenizer_config.json")
    config = json.loads(path.read_text())
    del config["extra_special_tokens"]
    path.write_text(json.dumps(config))
    return f"{path}: names no audio_token.*not the native conversion"


def _truncated_weights(snap: Path) -> str:
    path = replace_file(snap / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"{path}: truncated.*download it again"


def _no_tokenizer(snap: Path) -> str:
    (snap / "tokenizer.json").unlink()
    return f"{snap / 'tokenizer.json'}: missing; the snapshot has no tokenizer"


def _tokenizer_cut_short(snap: Path) -> str:
    # the check decodes only the file's head (added_tokens); a download cut short is still named
    path = replace_file(snap / "tokenizer.json")
    path.write_bytes(path.read_bytes()[:-5000])
    return f"{path}: not valid JSON"


def _audio_id_of_another_model(snap: Path) -> str:
    path = replace_file(snap / "config.json")
    config = json.loads(path.read_text())
    config["audio_config"]["audio_token_id"] += 1
    path.write_text(json.dumps(config))
    tok = snap / "tokenizer.json"
    return f"{tok}: the audio token .* has id 200011, but config.json's .* is 200012"


def _chat_token_not_special(snap: Path) -> str:
    path = replace_file(snap / "tokenizer.json")
    tok = json.loads(path.read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|assistant|>"]
    path.write_text(json.dumps(tok))
    return re.escape(f"{path}: chat tokens ['<|assistant|>'] are not special tokens")


def _adapter_rank_of_another_adapter(snap: Path) -> str:
    path = replace_file(snap / "speech-lora" / "adapter_config.json")
    config = json.loads(path.read_text())
    config["r"] = 16  # the weights are rank 8
    path.write_text(json.dumps(config))
    return f"adapter_model.safetensors: .*lora_A.* has rank 8, but {path} says r=16: .*download"


@pytest.mark.parametrize(
    "damage",
    [
        _remote_code,
        _missing_shard,
        _wrong_tokenizer,
        _truncated_weights,
        _no_tokenizer,
        _tokenizer_cut_short,
        _audio_id_of_another_model,
        _chat_token_not_special,
        _adapter_rank_of_another_adapter,
    ],
)
def test_unusable_snapshots_exit_2_naming_file_and_fix(
    tiny_model: Path, tmp_path: Path, damage
) -> None:
    snap = copy_snapshot(tiny_model, tmp_path / "snap")
    pattern = damage(snap)
    proc = get_model_check(snap)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(pattern, proc.stderr), proc.stderr


def test_check_passes_a_good_snapshot_and_says_what_it_holds(tiny_model: Path) -> None:
    proc = get_model_check(tiny_model)
    assert proc.returncode == 0, proc.stderr
    assert "r=8 alpha=16 on 8 modules (hub-style keys); audio token id 200011" in proc.stdout
    assert "RANDOM WEIGHTS" in proc.stdout


def test_download_asks_for_the_native_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from pronlora.model.hub import download_snapshot

    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        return kwargs["local_dir"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert download_snapshot(tmp_path) == tmp_path
    assert calls == [
        {
            "repo_id": "microsoft/Phi-4-multimodal-instruct",
            "revision": "refs/pr/70",
            "local_dir": str(tmp_path),
        }
    ]


def test_the_merged_snapshot_is_built_once_by_processes_asking_together(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranks or inference workers starting at once: one builds, the others wait and reuse it."""
    import threading

    from pronlora.model import load

    builds = []
    real_merge = load.merge_speech_adapter

    def counted(*args, **kw):
        builds.append(threading.get_ident())
        return real_merge(*args, **kw)

    monkeypatch.setattr(load, "merge_speech_adapter", counted)
    got: list[Path] = []
    threads = [
        threading.Thread(target=lambda: got.append(load.merged_snapshot(tiny_model, tmp_path)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(got) == 2 and got[0] == got[1]
    assert load.missing_weights(got[0]) == []
    assert not list(tmp_path.glob("*.partial-*"))
    assert load.merged_snapshot(tiny_model, tmp_path) == got[0] and len(builds) == 1


def test_a_merged_snapshot_saved_without_weights_is_never_published(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' save_pretrained writes nothing on a torch.distributed rank other than 0;
    before, that empty folder became the cache and every later load failed on it."""
    from transformers import PreTrainedModel

    from pronlora.model import load

    monkeypatch.setattr(PreTrainedModel, "should_save_on_this_rank", lambda self, main: False)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SnapshotError, match=r"without config.json.*rank 1: transformers saves"):
        load.merged_snapshot(tiny_model, tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_sharded_snapshot_counts_as_complete_only_with_every_shard(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The Hub snapshot and a full-size merge are sharded (an index naming its shards)."""
    from transformers import Phi4MultimodalForCausalLM

    from pronlora.model.load import missing_weights

    model = Phi4MultimodalForCausalLM.from_pretrained(tiny_model)
    model.save_pretrained(tmp_path / "s", max_shard_size="1MB")
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and missing_weights(tmp_path / "s") == []
    (tmp_path / "s" / shards[1]).unlink()
    assert missing_weights(tmp_path / "s") == [shards[1]]
    (tmp_path / "s" / "config.json").unlink()
    assert missing_weights(tmp_path / "s") == ["config.json", shards[1]]
    assert missing_weights(tmp_path / "nothing") == [
        "config.json",
        "model.safetensors (or an index with its shards)",
    ]


def _base(tiny_model: Path, *overrides: str):
    from pronlora.core.config import load_config
    from pronlora.model.load import _base_model

    return _base_model(tiny_model, load_config("smoke", list(overrides)), None)


def test_the_speech_adapter_loader_refuses_what_it_did_not_load(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three ways a load can go wrong silently: keys that match no module, weights left at
    their initial values, a merge that changes a weight not at all (one lora_B of zeros)."""
    from types import SimpleNamespace

    import peft

    from pronlora.model.snapshot import SnapshotError
    from pronlora.model.speech_adapter import attach_speech_adapter, merge_speech_adapter

    real = peft.set_peft_model_state_dict
    monkeypatch.setattr(
        peft, "set_peft_model_state_dict",
        lambda *a, **k: SimpleNamespace(unexpected_keys=["x.lora_A.weight"], missing_keys=[]),
    )  # fmt: skip
    with pytest.raises(SnapshotError, match=r"keys that match no module: \['x.lora_A.weight'\]"):
        attach_speech_adapter(_base(tiny_model), tiny_model, adapter_name="s", trainable=False)
    monkeypatch.setattr(peft, "set_peft_model_state_dict", lambda *a, **k: SimpleNamespace())
    with pytest.raises(SnapshotError, match=r"lora_A did not load \(values differ from the file\)"):
        attach_speech_adapter(_base(tiny_model), tiny_model, adapter_name="s", trainable=False)
    monkeypatch.setattr(peft, "set_peft_model_state_dict", real)
    snap = copy_snapshot(tiny_model, tmp_path / "one-zero-b")
    weights = replace_file(snap / "speech-lora" / "adapter_model.safetensors")
    state = load_file(str(weights))
    zeroed = "model.layers.1.self_attn.o_proj"
    key = f"{zeroed}.lora_B.weight"
    save_file({**state, key: torch.zeros_like(state[key])}, str(weights))
    with pytest.raises(SnapshotError, match=f"merging left 1 adapted weights unchanged.*{zeroed}"):
        merge_speech_adapter(_base(snap), snap)


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.bfloat16])
def test_the_speech_adapter_merge_gives_peft_merge_and_unload_bit_for_bit(
    tiny_model: Path, tmp_path: Path, file_dtype: torch.dtype
) -> None:
    """The merge skips PEFT's wrapper (3-4 s of every job's start on an H100) but must leave the
    weights PEFT's merge_and_unload leaves, or every decode and training run would shift.
    Whichever dtype the snapshot's adapter file holds (this project writes fp32; the Hub's
    file is not pinned down in paper-protocol.md)."""
    from peft import get_peft_model, set_peft_model_state_dict

    from pronlora.model.speech_adapter import merge_speech_adapter, read_speech_adapter

    snap = copy_snapshot(tiny_model, tmp_path / "snap")
    weights = replace_file(snap / "speech-lora" / "adapter_model.safetensors")
    save_file({k: v.to(file_dtype) for k, v in load_file(str(weights)).items()}, str(weights))

    def bf16_base():  # the paper configs' dtype: the fp32 adapter product meets bf16 weights
        return _base(snap, "dtype=bf16")

    ours = merge_speech_adapter(bf16_base(), snap).state_dict()
    adapter = read_speech_adapter(snap)
    assert {v.dtype for v in adapter.state.values()} == {file_dtype}
    wrapped = get_peft_model(bf16_base(), adapter.config, adapter_name="speech")
    set_peft_model_state_dict(wrapped, adapter.state, adapter_name="speech")
    theirs = wrapped.merge_and_unload().state_dict()
    assert ours.keys() == theirs.keys()
    changed = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert changed == []
    plain = bf16_base().state_dict()
    assert sum(not torch.equal(ours[k], plain[k]) for k in ours) == 8
    assert {ours[k].dtype for k in ours if k.endswith("qkv_proj.weight")} == {torch.bfloat16}


def test_the_speech_adapter_merge_refuses_a_lora_b_of_the_wrong_shape(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A rank that matches the config (what check_snapshot checks) but an output size that
    does not fit the weight is named with both shapes, not left to a matmul traceback."""
    from pronlora.model.speech_adapter import merge_speech_adapter

    snap = copy_snapshot(tiny_model, tmp_path / "wrong-shape")
    weights = replace_file(snap / "speech-lora" / "adapter_model.safetensors")
    state = load_file(str(weights))
    module = "model.layers.0.mlp.down_proj"
    b = state[f"{module}.lora_B.weight"]
    save_file(
        {**state, f"{module}.lora_B.weight": torch.ones(b.shape[0] + 1, b.shape[1])}, str(weights)
    )
    check_snapshot(snap)  # the rank is right
    with pytest.raises(
        SnapshotError, match=rf"{module} has lora_A .* and lora_B \({b.shape[0] + 1}, "
    ):
        merge_speech_adapter(_base(snap), snap)


def test_the_speech_adapter_merge_refuses_a_config_targeting_other_modules(
    tiny_model: Path, tmp_path: Path
) -> None:
    from pronlora.model.speech_adapter import merge_speech_adapter

    snap = copy_snapshot(tiny_model, tmp_path / "other-targets")
    config_path = replace_file(snap / "speech-lora" / "adapter_config.json")
    config = json.loads(config_path.read_text())
    shipped = config["target_modules"]
    config["target_modules"] = r"model.layers.\d+.self_attn.(qkv|o)_proj"
    config_path.write_text(json.dumps(config))
    with pytest.raises(SnapshotError, match=r"config targets 4 modules, the file holds 8.*gate_up"):
        merge_speech_adapter(_base(snap), snap)
    config.update(target_modules=shipped, use_dora=True)
    config_path.write_text(json.dumps(config))
    with pytest.raises(SnapshotError, match=r"adapter_config.json: sets use_dora; .*plain LoRA"):
        merge_speech_adapter(_base(snap), snap)


def test_nf4_keeps_the_audio_encoder_and_lm_head_in_bf16(tiny_model: Path) -> None:
    """The installed transformers decides which Linear layers become 4-bit; ask its own rule
    about every Linear of the real architecture (issue 25: the audio encoder was quantized)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    from pronlora.model.load import NF4_SKIP_MODULES

    cfg = load_config("smoke")
    model = load_model(cfg, tiny_model).model.get_base_model()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    kept = {n for n in linears if not should_convert_module(n, NF4_SKIP_MODULES)}
    audio = [n for n in linears if n.startswith("model.embed_tokens_extend.audio_embed.")]
    assert audio and set(audio) <= kept
    assert "lm_head" in kept
    assert any(".self_attn.qkv_proj" in n for n in linears)
    assert not any(n.startswith("model.layers.") for n in kept)


def test_a_quantized_audio_encoder_is_refused(tiny_model: Path) -> None:
    from pronlora.model.load import check_kept_out_of_4bit

    class Linear4bit(torch.nn.Linear):  # the class name bitsandbytes gives 4-bit layers
        pass

    model = load_model(load_config("smoke"), tiny_model).model
    model = model.get_base_model()
    check_kept_out_of_4bit(model)
    name = next(
        n
        for n, m in model.named_modules()
        if "up_proj_for_speech" in n and isinstance(m, torch.nn.Linear)
    )
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, Linear4bit(2, 2))
    with pytest.raises(RuntimeError, match="up_proj_for_speech"):
        check_kept_out_of_4bit(model)

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pronlora.core.atomic import read_jsonl
from pronlora.data.prep import PrepError, prepare
from pronlora.devtools.synthetic_corpus import make_demo_corpus

from .conftest import REPO, write_hf_parquet


def _instances(out: Path) -> dict[str, dict]:
    return {r["id"]: r for s in ("train", "test") for r in read_jsonl(out / f"{s}.jsonl")}


def test_mini_counts_match_the_corpus_readme(mini: Path, tmp_path: Path) -> None:
    result = prepare("kaldi", mini, tmp_path / "p")
    counts = result.manifest["counts"]
    assert counts["train"] == {"utterances": 140, "APA": 140, "MDD": 140}
    assert counts["test"] == {"utterances": 60, "APA": 60, "MDD": 60}
    assert result.manifest["audio_seconds"]["train"] == pytest.approx(481.4, abs=0.1)
    rows = _instances(tmp_path / "p")
    canonical = sum(len(r["canonical_phones"]) for r in rows.values() if r["task"] == "MDD")
    assert canonical == 2907
    mis = sum(len(r["mispronunciations"]) for r in rows.values() if r["task"] == "MDD")
    assert mis == 18
    row = rows["000440147-MDD"]
    assert row["target"] == (
        "{'word_transcript': 'LILLY LIVES IN CAIRO NOW', "
        "'phoneme_transcript': 'L IH L IY L IH V Z IH N K AH EH R <unk> R AH UW N AW'}"
    )
    assert rows["000010011-APA"]["target"] == (
        "{'accuracy': 8, 'fluency': 9, 'prosodic': 9, 'total': 8}"
    )
    assert rows["000560084-MDD"]["perceived_phones"] == rows["000560084-MDD"]["canonical_phones"]
    for r in rows.values():
        assert Path(r["audio"]).is_absolute() and r["id"] == f"{r['utt_id']}-{r['task']}"


def test_kaldi_and_hf_forms_give_identical_instances(mini: Path, tmp_path: Path) -> None:
    hf_dir = write_hf_parquet(mini, tmp_path / "hf")
    kaldi = _instances(prepare("kaldi", mini, tmp_path / "k").out)
    hf = _instances(prepare("hf", hf_dir, tmp_path / "h").out)
    assert kaldi.keys() == hf.keys()
    for key, k_row in kaldi.items():
        h_row = hf[key]
        assert Path(h_row["audio"]).is_relative_to(tmp_path / "h" / "audio")
        assert {**k_row, "audio": None} == {**h_row, "audio": None}, key
    for key in ("000010011-APA", "000920002-MDD"):
        a, _ = sf.read(kaldi[key]["audio"], dtype="int16")
        b, rate = sf.read(hf[key]["audio"], dtype="int16")
        assert rate == 16000 and np.array_equal(a, b)


def test_prep_never_writes_audio_through_a_link_in_its_out_dir(mini: Path, tmp_path: Path) -> None:
    """The Hugging Face form's clips are written under --out/audio/: a link planted there by
    anyone sharing the prepared dir would take them (and feed its files back as clips)."""
    from pronlora.core.errors import DataError

    hf_dir = write_hf_parquet(mini, tmp_path / "hf")
    (tmp_path / "outside").mkdir()
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "audio").symlink_to(tmp_path / "outside")
    with pytest.raises(DataError, match=f"{out / 'audio'}: a symbolic link inside {out}"):
        prepare("hf", hf_dir, out)
    assert list((tmp_path / "outside").iterdir()) == []


def _edit_scores(corpus: Path, fn) -> None:
    path = corpus / "resource" / "scores.json"
    scores = json.loads(path.read_text())
    fn(scores)
    path.write_text(json.dumps(scores))


def _first(corpus: Path, split: str = "train") -> tuple[str, Path]:
    utt, rel = (corpus / split / "wav.scp").read_text().split("\n")[0].split(maxsplit=1)
    return utt, corpus / rel


def _break_missing_audio(c: Path) -> str:
    utt, wav = _first(c)
    wav.unlink()
    return rf"{utt} \[{wav}\]: audio missing or unreadable"


def _break_unreadable_audio(c: Path) -> str:
    utt, wav = _first(c)
    wav.write_bytes(b"not a wav file at all")
    return rf"{utt} \[{wav}\]: audio missing or unreadable"


def _break_sample_rate(c: Path) -> str:
    utt, wav = _first(c)
    data, _ = sf.read(wav, dtype="int16")
    sf.write(wav, data, 8000, format="WAV", subtype="PCM_16")
    return rf"{utt} \[{wav}\]: sample rate 8000 Hz, expected 16000"


def _break_channels(c: Path) -> str:
    utt, wav = _first(c)
    data, rate = sf.read(wav, dtype="int16")
    sf.write(wav, np.stack([data, data], axis=1), rate, format="WAV", subtype="PCM_16")
    return rf"{utt} \[{wav}\]: 2 channels, expected mono"


def _break_no_scores(c: Path) -> str:
    utt, _ = _first(c, "test")
    _edit_scores(c, lambda s: s.pop(utt))
    return rf"{utt} \[.*scores.json\]: utterance has no scores"


def _break_missing_aspect(c: Path) -> str:
    utt, _ = _first(c)
    _edit_scores(c, lambda s: s[utt].pop("fluency"))
    return rf"{utt} \[.*scores.json\]: missing score 'fluency'"


def _break_mis_index(c: Path) -> str:
    utt, _ = _first(c)

    def fn(s):
        s[utt]["words"][0]["mispronunciations"] = [
            {"canonical-phone": "W", "index": 9, "pronounced-phone": "V"}
        ]

    _edit_scores(c, fn)
    return rf"{utt} \[.*scores.json\]: word 0: mispronunciation index 9 outside"


def _break_mis_canonical(c: Path) -> str:
    utt, _ = _first(c)

    def fn(s):
        first = s[utt]["words"][0]["phones"][0]
        wrong = "ZH" if first != "ZH" else "SH"
        s[utt]["words"][0]["mispronunciations"] = [
            {"canonical-phone": wrong, "index": 0, "pronounced-phone": "V"}
        ]

    _edit_scores(c, fn)
    return rf"{utt} \[.*scores.json\]: word 0: mispronunciation says canonical-phone"


def _break_unknown_phone(c: Path) -> str:
    utt, _ = _first(c)

    def fn(s):
        first = s[utt]["words"][0]["phones"][0]
        s[utt]["words"][0]["mispronunciations"] = [
            {"canonical-phone": first.rstrip("012"), "index": 0, "pronounced-phone": "IX"}
        ]

    _edit_scores(c, fn)
    return rf"{utt} \[.*scores.json\]: word 0: unknown pronounced phone 'IX'"


BREAKERS = [
    _break_missing_audio,
    _break_unreadable_audio,
    _break_sample_rate,
    _break_channels,
    _break_no_scores,
    _break_missing_aspect,
    _break_mis_index,
    _break_mis_canonical,
    _break_unknown_phone,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[7:])
def test_bad_input_is_reported_and_nothing_is_written(
    small_corpus: Path, tmp_path: Path, breaker
) -> None:
    pattern = breaker(small_corpus)
    out = tmp_path / "out"
    with pytest.raises(PrepError, match=pattern) as info:
        prepare("kaldi", small_corpus, out)
    assert "nothing was written" in str(info.value)
    assert not out.exists() or not any(out.iterdir())


def test_all_problems_are_collected_and_cli_exits_nonzero(
    small_corpus: Path, tmp_path: Path
) -> None:
    patterns = [_break_missing_audio(small_corpus), _break_no_scores(small_corpus)]
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "prep.py"),
            "--source",
            "kaldi",
            "--data",
            str(small_corpus),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    import re

    for p in patterns:
        assert re.search(p, proc.stderr), (p, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_skip_invalid_drops_and_lists_them(small_corpus: Path, tmp_path: Path) -> None:
    _break_sample_rate(small_corpus)
    utt, _ = _first(small_corpus)
    result = prepare("kaldi", small_corpus, tmp_path / "out", skip_invalid=True)
    assert [s["utt_id"] for s in result.manifest["skipped"]] == [utt]
    assert result.manifest["counts"]["train"]["utterances"] == 2
    assert not any(r["utt_id"] == utt for r in _instances(tmp_path / "out").values())


def test_rerun_is_a_no_op_and_changed_input_rebuilds(small_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare("kaldi", small_corpus, out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = prepare("kaldi", small_corpus, out)
    assert first.rebuilt and not again.rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    utt, _ = _first(small_corpus)
    _edit_scores(small_corpus, lambda s: s[utt].update(accuracy=3))
    third = prepare("kaldi", small_corpus, out)
    assert third.rebuilt and third.manifest["content_hash"] != first.manifest["content_hash"]
    assert "'accuracy': 3" in _instances(out)[f"{utt}-APA"]["target"]


def test_tampered_output_is_rebuilt(small_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare("kaldi", small_corpus, out)
    (out / "test.jsonl").write_text("")
    assert prepare("kaldi", small_corpus, out).rebuilt


def test_task_subset(small_corpus: Path, tmp_path: Path) -> None:
    result = prepare("kaldi", small_corpus, tmp_path / "out", tasks=("MDD",))
    assert result.manifest["counts"]["test"] == {"utterances": 3, "MDD": 3}


def test_demo_corpus_passes_validation_and_is_marked_synthetic(tmp_path: Path) -> None:
    corpus = make_demo_corpus(tmp_path / "demo", utterances=30, seed=3)
    result = prepare("kaldi", corpus, tmp_path / "out")
    assert result.manifest["synthetic"] is True
    assert result.manifest["skipped"] == []
    counts = result.manifest["counts"]
    assert counts["train"]["utterances"] + counts["test"]["utterances"] == 30
    train_spk = {r["speaker"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")}
    test_spk = {r["speaker"] for r in read_jsonl(tmp_path / "out" / "test.jsonl")}
    assert train_spk and test_spk and not train_spk & test_spk
    rows = _instances(tmp_path / "out").values()
    assert any(r["mispronunciations"] for r in rows)
    again = make_demo_corpus(tmp_path / "demo2", utterances=30, seed=3)
    for wav in sorted(corpus.rglob("*.WAV")):
        assert wav.read_bytes() == (again / wav.relative_to(corpus)).read_bytes()

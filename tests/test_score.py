"""jobs/score.py: new recordings scored by a run's checkpoint, phones aligned to CMUdict's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pronlora.core.atomic import read_jsonl
from pronlora.core.config import load_config
from pronlora.core.errors import DataError
from pronlora.core.lexicon import canonical_word_phones, corpus_lexicon
from pronlora.core.phones import transcript_phones
from pronlora.data.prep import prepare
from pronlora.infer.score import word_alignment
from pronlora.train.recipe import train

from .conftest import REPO


@pytest.fixture(scope="module")
def mini_prepared(mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("kaldi", mini, tmp_path_factory.mktemp("mini") / "prepared").out


@pytest.fixture(scope="module")
def mini_test_rows(mini_prepared: Path) -> list[dict]:
    return [r for r in read_jsonl(mini_prepared / "test.jsonl") if r["task"] == "MDD"]


@pytest.fixture(scope="module")
def mini_train_rows(mini_prepared: Path) -> list[dict]:
    return [r for r in read_jsonl(mini_prepared / "train.jsonl") if r["task"] == "MDD"]


@pytest.fixture(scope="module")
def mini_run(
    tiny_model: Path, mini_prepared: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny run trained for a few steps on the real mini corpus (its lexicon is the one
    score.py reads)."""
    run = tmp_path_factory.mktemp("run") / "smoke"
    cfg = load_config("smoke", ["epochs=1", "max_steps=1"])  # a run dir with its data
    assert train(cfg, mini_prepared, tiny_model, run) == 0
    return run


def _by_word(row: dict) -> list[list[str]]:
    phones, out = list(row["canonical_phones"]), []
    for n in row["word_phone_counts"]:
        out.append(phones[:n])
        phones = phones[n:]
    return out


def test_canonical_phones_are_the_corpus_ones_and_the_alignment_finds_its_errors(
    mini_test_rows: list[dict], mini_train_rows: list[dict]
) -> None:
    """With the training split's lexicon first and CMUdict after it, a test utterance's
    canonical phones are the annotators' for most words; where they are for a whole utterance,
    aligning the annotated heard phones marks exactly the positions the annotators marked."""
    corpus = corpus_lexicon(mini_train_rows)
    words = agree = checked = unknown = 0
    cmu_words = cmu_agree = 0
    for row in mini_test_rows:
        try:
            lexicon = canonical_word_phones(row["text"], corpus=corpus)
        except DataError as exc:  # a name CMUdict lacks (LYNDA'S): refused, named
            assert "CMUdict has no pronunciation of" in str(exc)
            unknown += 1
            continue
        corpus = _by_word(row)
        assert [w for w, _, _ in lexicon] == row["text"].upper().split()
        annotated_words = _by_word(row)
        same = [p == c for (_, p, _), c in zip(lexicon, annotated_words, strict=True)]
        words, agree = words + len(same), agree + sum(same)
        cmu = [
            (p, c) for (_, p, s), c in zip(lexicon, annotated_words, strict=True) if s != "corpus"
        ]
        cmu_words, cmu_agree = cmu_words + len(cmu), cmu_agree + sum(p == c for p, c in cmu)
        if not all(same):
            continue
        per_word, wrong = word_alignment(lexicon, transcript_phones(row["perceived_phones"]))
        annotated = [
            (c, p)
            for c, p in zip(row["canonical_phones"], row["perceived_phones"], strict=True)
            if c != p
        ]
        assert [(m["canonical"], m["heard"]) for m in wrong] == annotated, row["utt_id"]
        assert [p for w in per_word for p in w["heard"]] == row["perceived_phones"]
        checked += bool(annotated)
    print(
        f"canonical phones as annotated: {agree}/{words} words; CMUdict's {cmu_agree}/{cmu_words}"
    )
    # the corpus lexicon is largely non-rhotic and CMUdict is not: on the mini corpus about
    # three words in four agree (192 of 250 here; the README says so)
    assert agree / words > 0.7 and unknown < len(mini_test_rows) / 10, (agree, words, unknown)
    assert cmu_agree < cmu_words
    assert checked >= 2  # utterances with errors whose every position was compared


@pytest.mark.slow
def test_score_a_real_recording_and_refuse_bad_ones(
    mini_run: Path, mini_test_rows: list[dict], mini_train_rows: list[dict], tmp_path: Path
) -> None:
    row = next(r for r in mini_test_rows if r["mispronunciations"] and "'" not in r["text"])
    out = tmp_path / "scores.json"
    args = [sys.executable, str(REPO / "jobs" / "score.py"), "--run-dir", str(mini_run)]
    args += ["--checkpoint", "base"]
    proc = subprocess.run(
        [*args, "--audio", row["audio"], "--text", row["text"], "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [result] = json.loads(out.read_text())
    assert set(result) >= {"apa", "apa_output", "mdd_transcript", "mdd_phones", "words"}
    assert result["checkpoint"] == "base" and result["text"] == row["text"]
    train = corpus_lexicon(mini_train_rows)
    expected = canonical_word_phones(row["text"], corpus=train)
    assert [(w["canonical"], w["lexicon"]) for w in result["words"]] == [
        (p, s) for _, p, s in expected
    ]
    if result["mdd_parse_error"]:  # a random-weight model: nothing heard, nothing marked
        assert all(w["heard"] is None for w in result["words"]) and not result["mispronounced"]
        assert "MDD: answer not parsed" in proc.stdout
    else:
        for w in result["words"]:
            assert len(w["heard"]) == len(w["canonical"]) == len(w["mispronounced"])
        marked = sum(m for w in result["words"] for m in w["mispronounced"])
        assert marked == len(result["mispronounced"])
    assert f"{Path(row['audio']).stem} (" in proc.stdout  # the readable table

    slow = tmp_path / "folder"
    slow.mkdir()
    sf.write(slow / "a.wav", np.zeros(8000, dtype=np.int16), 8000)
    (slow / "a.txt").write_text("WE CALL IT BEAR")
    sf.write(slow / "b.wav", np.zeros(16000, dtype=np.int16), 16000)
    (slow / "b.txt").write_text("WE CALL IT ZXQWV")
    proc = subprocess.run([*args, "--folder", str(slow)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{slow / 'a.wav'}: sample rate 8000 Hz, expected 16000 Hz" in proc.stderr
    assert "b text: CMUdict has no pronunciation of ZXQWV" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_parsed_answers_reach_the_scores_and_the_marks(
    mini_run: Path, mini_test_rows: list[dict], mini_train_rows: list[dict], monkeypatch
) -> None:
    """The model's answers (here the annotation itself, as a perfect model would give) go
    through parsing, the lexicon and the alignment into the result."""
    import pronlora.infer.score as score

    row = next(r for r in mini_test_rows if r["mispronunciations"] and "'" not in r["text"])
    heard = " ".join(transcript_phones(row["perceived_phones"]))
    answers = {
        "APA": "{'accuracy': 7, 'fluency': 8, 'prosodic': 6, 'total': 7}",
        "MDD": f"{{'word_transcript': '{row['text']}', 'phoneme_transcript': '{heard}'}}",
    }

    def fake_generate(loaded, cfg, rows, batch, lengths, audio):
        return [(answers[r["task"]], 5) for r in rows]

    monkeypatch.setattr(score, "generate", fake_generate)
    rec = score.Recording("utt", Path(row["audio"]), row["text"])
    [result] = score.score_recordings(mini_run, "base", [rec])
    assert result["apa"] == {"accuracy": 7, "fluency": 8, "prosodic": 6, "total": 7}
    assert result["mdd_transcript"] == row["text"] and result["mdd_phones"] == heard.split()
    words = canonical_word_phones(row["text"], corpus=corpus_lexicon(mini_train_rows))
    per_word, wrong = word_alignment(words, heard.split())
    assert result["words"] == per_word and result["mispronounced"] == wrong and wrong
    assert "phones heard otherwise" in score.describe(result)

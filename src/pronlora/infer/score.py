"""A run's checkpoint applied to new recordings: APA scores and an annotated MDD answer.

Each recording is checked as prep checks the corpus (``core.audio``), decoded with both task
prompts exactly as the test split is (same loader, audio embedding and generation), and its
MDD phones are aligned to the canonical phones of the text it was meant to say (CMUdict, see
``core.lexicon``) with the alignment the MDD metrics use: every canonical phone gets what was
heard there, and the ones heard otherwise are marked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pronlora.core.audio import AudioRef, check_audio
from pronlora.core.errors import DataError
from pronlora.core.layout import PreparedDir, RunDir
from pronlora.core.lexicon import canonical_word_phones, corpus_lexicon
from pronlora.core.parse import parse_answer
from pronlora.core.phones import DEL, align_to_canonical, normalise_phone_sequence
from pronlora.core.protocol import APA_ASPECTS, MDD_FIELDS, TASKS, user_content
from pronlora.infer.batching import generation_batches, generation_collator
from pronlora.infer.generation import generate
from pronlora.infer.inputs import checkpoint_to_decode
from pronlora.infer.models import Models, ensure_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recording:
    name: str  # the id in the output: the file's stem
    audio: Path
    text: str  # what the speaker was asked to say


def recordings_in(folder: Path) -> list[Recording]:
    """Every ``NAME.wav`` of ``folder`` with its ``NAME.txt`` (the text the speaker read)."""
    if not folder.is_dir():
        raise DataError(f"--folder {folder}: no such folder")
    wavs = sorted(folder.glob("*.wav"))
    if not wavs:
        raise DataError(f"--folder {folder}: no .wav files")
    out = []
    for wav in wavs:
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            raise DataError(f"{wav}: no transcript {txt.name} beside it (the text it reads)")
        out.append(Recording(wav.stem, wav.resolve(), txt.read_text(encoding="utf-8").strip()))
    return out


Words = list[tuple[str, list[str], str]]  # (word, canonical phones, which lexicon)


def training_lexicon(run_dir: Path) -> dict[str, list[str]]:
    """The canonical phones of the words the run was trained on (none for a run without
    training data on disk: CMUdict alone then)."""
    meta = RunDir(run_dir).read_run()
    prepared = PreparedDir(Path(meta["prepared"])) if meta.get("prepared") else None
    if prepared is None or not prepared.split_path("train").is_file():
        log.warning("no training data on disk for %s: canonical phones from CMUdict only", run_dir)
        return {}
    return corpus_lexicon(prepared.load_split("train"))


def _checked(
    recs: list[Recording], lexicon: dict[str, list[str]]
) -> list[tuple[Recording, float, Words]]:
    """Every recording's duration and canonical phones; all problems named before any load."""
    problems, out = [], []
    for rec in recs:
        issues, duration = check_audio(AudioRef(name=str(rec.audio), path=rec.audio))
        problems += [f"{rec.audio}: {m}" for m in issues]
        try:
            words = canonical_word_phones(rec.text, f"{rec.name} text", lexicon)
        except DataError as exc:
            problems.append(str(exc))
            continue
        out.append((rec, duration, words))
    if problems:
        raise DataError("cannot score:\n  " + "\n  ".join(problems))
    return out


def word_alignment(
    words: Words, heard: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per word: its canonical phones and what was heard at each; and the mispronounced
    phones (word index, phone index, canonical, heard), as the corpus annotates them."""
    canonical = [p for _, phones, _ in words for p in phones]
    aligned = align_to_canonical(canonical, normalise_phone_sequence(heard))
    out, wrong, pos = [], [], 0
    for w, (word, phones, source) in enumerate(words):
        here = aligned[pos : pos + len(phones)]
        marks = [h != c for c, h in zip(phones, here, strict=True)]
        out.append(
            {
                "word": word,
                "canonical": phones,
                "lexicon": source,
                "heard": here,
                "mispronounced": marks,
            }
        )
        wrong += [
            {"word_index": w, "word": word, "index": i, "canonical": c, "heard": h}
            for i, (c, h, bad) in enumerate(zip(phones, here, marks, strict=True))
            if bad
        ]
        pos += len(phones)
    return out, wrong


def score_recordings(run_dir: Path, checkpoint: str, recs: list[Recording]) -> list[dict[str, Any]]:
    spec = ensure_run(run_dir, None, None)
    checked = _checked(recs, training_lexicon(run_dir))
    names = [r.name for r, _, _ in checked]
    if len(set(names)) != len(names):
        raise DataError(
            f"recordings share a name: {sorted(n for n in names if names.count(n) > 1)}"
        )
    ckpt_dir = checkpoint_to_decode(run_dir, checkpoint)
    rows = [
        {
            "id": f"{rec.name}-{task.value}",
            "utt_id": rec.name,
            "task": task.value,
            "prompt": user_content(task),
            "audio": str(rec.audio),
            "duration_s": duration,
        }
        for rec, duration, _ in checked
        for task in TASKS
    ]
    models = Models()
    loaded = models.get(spec, ckpt_dir)
    audio = models.embed_clips(spec.cfg, rows, {r["audio"] for r in rows})
    collate = generation_collator(loaded, spec.cfg, audio)
    answers: dict[str, tuple[str, Any, str | None]] = {}
    for batch_rows in generation_batches(rows, spec.cfg.infer.batch_size):
        batch = collate(batch_rows)
        for row, (text, _) in zip(
            batch_rows, generate(loaded, spec.cfg, batch_rows, batch, None, audio), strict=True
        ):
            parsed, error = parse_answer(row["task"], text)
            answers[row["id"]] = (text, parsed, error)
    out = []
    for rec, duration, words in checked:
        apa_text, apa, apa_error = answers[f"{rec.name}-APA"]
        mdd_text, mdd, mdd_error = answers[f"{rec.name}-MDD"]
        heard = mdd[MDD_FIELDS[1]].split() if mdd else []
        if mdd is None:  # nothing heard to compare: no marks rather than all deleted
            per_word = [
                {"word": w, "canonical": p, "lexicon": src, "heard": None, "mispronounced": None}
                for w, p, src in words
            ]
            wrong: list[dict[str, Any]] = []
        else:
            per_word, wrong = word_alignment(words, heard)
        out.append(
            {
                "name": rec.name,
                "audio": str(rec.audio),
                "duration_s": round(duration, 3),
                "text": rec.text,
                "run_dir": str(RunDir(run_dir).root),
                "checkpoint": checkpoint,
                "apa": {k: apa.get(k) for k in APA_ASPECTS} if apa else None,
                "apa_output": apa_text,
                "apa_parse_error": apa_error,
                "mdd_transcript": mdd[MDD_FIELDS[0]] if mdd else None,
                "mdd_phones": heard,
                "mdd_output": mdd_text,
                "mdd_parse_error": mdd_error,
                "words": per_word,
                "mispronounced": wrong,
            }
        )
    return out


def describe(result: dict[str, Any]) -> str:
    """A readable table: the scores, then each word's canonical and heard phones."""
    apa = result["apa"]
    scores = (
        "  ".join(f"{k} {apa[k] if apa[k] is not None else '-'}" for k in APA_ASPECTS)
        if (apa)
        else "no scores"
    )
    if result["apa_parse_error"]:
        scores += f" (answer: {result['apa_parse_error']})"
    lines = [
        f"{result['name']} ({result['duration_s']} s): {result['text']}",
        f"  APA: {scores}",
        f"  MDD heard: {result['mdd_transcript'] if result['mdd_transcript'] is not None else '-'}",
    ]
    if result["mdd_parse_error"]:
        lines[-1] = f"  MDD: answer not parsed ({result['mdd_parse_error']}): no phones to compare"
    width = max(len(w["word"]) for w in result["words"])
    for w in result["words"]:
        heard = w["heard"] or w["canonical"]
        cells = [
            c if h == c else f"{c}>{'-' if h == DEL else h.replace(' ', '+')}*"
            for c, h in zip(w["canonical"], heard, strict=True)
        ]
        mark = "" if w["lexicon"] == "corpus" else "  (CMUdict)"
        lines.append(f"  {w['word']:<{width}}  {' '.join(cells)}{mark}")
    if not result["mdd_parse_error"]:
        lines.append(
            f"  {len(result['mispronounced'])} of "
            f"{sum(len(w['canonical']) for w in result['words'])} phones heard otherwise "
            "(canonical>heard*, - deleted)"
        )
    return "\n".join(lines)

"""Turn a validated utterance into the paper's APA and MDD training/test instances."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from pronlora.core.phones import transcript_phones
from pronlora.core.protocol import (
    APA_ASPECTS,
    Task,
    format_apa_answer,
    format_mdd_answer,
    user_content,
)
from pronlora.data.corpus import Utterance


def target_for(task: Task, utt: Utterance) -> str:
    """Answer text; APA scores are corpus integers (half-up rounding if a copy has floats)."""
    if task is Task.APA:
        return format_apa_answer({k: math.floor(utt.scores[k] + 0.5) for k in APA_ASPECTS})
    return format_mdd_answer(utt.text, " ".join(transcript_phones(utt.perceived)))


def build_instances(utt: Utterance, tasks: Iterable[Task], audio_path: str) -> list[dict[str, Any]]:
    """One instance per task, in the layout every later stage reads."""
    common = {
        "utt_id": utt.utt_id,
        "split": utt.split,
        "speaker": utt.speaker,
        "audio": audio_path,
        "duration_s": utt.duration_s,
        "text": utt.text,
        "scores": dict(utt.scores),
        "canonical_phones": list(utt.canonical),
        "perceived_phones": list(utt.perceived),
        "word_phone_counts": [len(p) for p in utt.word_phones],
        "mispronunciations": [m.as_json() for m in utt.mispronunciations],
    }
    return [
        {
            "id": f"{utt.utt_id}-{task.value}",
            "task": task.value,
            "prompt": user_content(task),
            "target": target_for(task, utt),
            **common,
        }
        for task in tasks
    ]

"""The experimental protocol's fixed facts: tasks, control tokens, chat tokens, score aspects.

Everything that must be spelled identically in data preparation, training, inference and
metrics lives here, so a change of protocol is one edit.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from importlib.resources import files


class Task(StrEnum):
    APA = "APA"
    MDD = "MDD"


TASKS: tuple[Task, ...] = (Task.APA, Task.MDD)

# Control tokens that select the task at the start of the user turn (paper Fig. 3).
CONTROL_TOKENS: dict[Task, str] = {Task.APA: "<|APA|>", Task.MDD: "<|MDD|>"}

# The paper's audio placeholder (the remote-code processor's <|audio_1|>), kept in the prepared
# prompts as the paper wrote them. Which token stands for audio is a checkpoint fact: the
# collator replaces this placeholder with the snapshot's own audio token ids.
AUDIO_PLACEHOLDER = "<|audio_1|>"

# The full corpus's official split sizes (utterances): what a plan assumes before prep has run.
CORPUS_UTTERANCES: dict[str, int] = {"train": 2500, "test": 2500}

# Sentence-level aspects the model predicts. Completeness is excluded (paper: near-constant).
APA_ASPECTS: tuple[str, ...] = ("accuracy", "fluency", "prosodic", "total")
# Aspects carried through the prepared data (completeness kept for analysis only).
SCORE_FIELDS: tuple[str, ...] = (*APA_ASPECTS, "completeness")
SCORE_RANGE: tuple[int, int] = (0, 10)

MDD_FIELDS: tuple[str, str] = ("word_transcript", "phoneme_transcript")

SAMPLE_RATE = 16_000

_PROMPT_FILES: dict[Task, str] = {Task.APA: "apa_prompt.txt", Task.MDD: "mdd_prompt.txt"}


@cache
def prompt_text(task: Task) -> str:
    """The paper's prompt for ``task``, byte-exact (it is part of the protocol)."""
    data = files("pronlora") / "prompts_data" / _PROMPT_FILES[Task(task)]
    return data.read_bytes().decode("utf-8")


def user_content(task: Task) -> str:
    """User-turn content: control token, audio placeholder, prompt text (paper Fig. 3)."""
    task = Task(task)
    return f"{CONTROL_TOKENS[task]}{AUDIO_PLACEHOLDER}{prompt_text(task)}"


def format_apa_answer(scores: dict[str, int]) -> str:
    """The APA answer in the dict style the prompt shows."""
    body = ", ".join(f"'{k}': {int(scores[k])}" for k in APA_ASPECTS)
    return "{" + body + "}"


def format_mdd_answer(word_transcript: str, phoneme_transcript: str) -> str:
    """The MDD answer in the prompt's own style: single quotes, no escaping.

    The prompt's example (``'That's an interesting observation.'``) is not a valid Python
    literal; we follow the prompt rather than ``repr`` so the target matches what the model is
    shown. The answer parser therefore reads MDD answers by field, not with ``literal_eval``.
    """
    return f"{{'{MDD_FIELDS[0]}': '{word_transcript}', '{MDD_FIELDS[1]}': '{phoneme_transcript}'}}"


# The metric keys of Table 3's columns (collect computes them; the model card quotes them).
TABLE3_METRICS: tuple[str, ...] = (
    "accuracy_pcc",
    "fluency_pcc",
    "prosodic_pcc",
    "total_pcc",
    "wer",
    "per",
    "mdd_f1",
    "mdd_precision",
    "mdd_recall",
)

"""Read model answers back into scores and transcripts; never raises.

Accepted: the paper's dict style (single quotes, unescaped apostrophes inside values, as our
targets are written), JSON, extra text around the dict, a missing closing brace, scores
written as strings or floats. A result is ``(parsed, error)``: ``error`` is None for a usable
answer; otherwise it says why and the answer counts as a failure in every metric, even when
``parsed`` holds what could be read (e.g. a score of 12 is read, flagged, and not used).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from pronlora.core.protocol import APA_ASPECTS, MDD_FIELDS, SCORE_RANGE, Task

Parsed = tuple[dict[str, Any] | None, str | None]

_NUMBER = r"""['"]?\s*(-?\d+(?:\.\d+)?)\s*['"]?"""
_SCORE_RES = {k: re.compile(rf"""['"]?{k}['"]?\s*:\s*{_NUMBER}""", re.I) for k in APA_ASPECTS}
_MDD_RE = re.compile(
    r"""['"]?word_transcript['"]?\s*:\s*(['"])(?P<words>.*?)\1\s*,\s*"""
    r"""['"]?phoneme_transcript['"]?\s*:\s*(['"])(?P<phones>.*?)(?:\3\s*(?:}|,|$)|$)""",
    re.S,
)


def _dict_span(text: str) -> str | None:
    start = text.find("{")
    if start < 0:
        return None
    end = text.find("}", start)
    return text[start : end + 1] if end >= 0 else text[start:] + "}"


def _literal(span: str) -> dict[str, Any] | None:
    for loader in (ast.literal_eval, json.loads):
        try:
            value = loader(span)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def parse_apa(text: str) -> Parsed:
    try:
        span = _dict_span(text) or text
        found: dict[str, float] = {}
        literal = _literal(span)
        if literal is not None:
            lowered = {str(k).lower(): v for k, v in literal.items()}
            for k in APA_ASPECTS:
                value = _number(lowered.get(k))
                if value is not None:
                    found[k] = value
        for k in APA_ASPECTS:
            if k not in found and (m := _SCORE_RES[k].search(span)):
                found[k] = float(m.group(1))
        missing = [k for k in APA_ASPECTS if k not in found]
        if len(missing) == len(APA_ASPECTS):
            return None, "no scores found"
        parsed = {k: (int(v) if v.is_integer() else v) for k, v in found.items()}
        if missing:
            return parsed, f"missing score(s): {', '.join(missing)}"
        lo, hi = SCORE_RANGE
        bad = [f"{k}={v:g}" for k, v in found.items() if not lo <= v <= hi]
        if bad:
            return parsed, f"score(s) outside {lo}-{hi}: {', '.join(bad)}"
        return parsed, None
    except Exception as exc:  # the contract is: never raise
        return None, f"parser error: {type(exc).__name__}"


def parse_mdd(text: str) -> Parsed:
    try:
        start = text.find("{")
        body = text[start:] if start >= 0 else text
        m = _MDD_RE.search(body)
        if m:
            phones = m.group("phones").strip().rstrip("}").rstrip("'\"").strip()
            return {MDD_FIELDS[0]: m.group("words").strip(), MDD_FIELDS[1]: phones}, None
        literal = _literal(_dict_span(body) or "")
        if literal is not None and all(isinstance(literal.get(k), str) for k in MDD_FIELDS):
            return {k: literal[k].strip() for k in MDD_FIELDS}, None
        if literal is not None or "word_transcript" in body:
            return None, "missing word_transcript or phoneme_transcript"
        return None, "no transcript dict found"
    except Exception as exc:
        return None, f"parser error: {type(exc).__name__}"


def parse_answer(task: str, text: str) -> Parsed:
    if not isinstance(text, str):
        return None, "output is not text"
    return parse_apa(text) if Task(task) is Task.APA else parse_mdd(text)

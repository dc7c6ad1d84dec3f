"""ARPAbet phone inventory and the "as heard" phone sequence of SpeechOcean762.

The perceived-sequence rules follow paper-protocol.md (as in Joint-CAPT-L1's code):
stress digits stripped, mispronunciations substituted at their word index, a trailing ``*``
(accented but correct) stripped, two-phone entries kept as both phones, ``<DEL>`` kept as an
aligned position but dropped from transcripts, ``<unk>`` kept as a token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# The 39 CMUdict phones (stress-less).
CMU_PHONES: frozenset[str] = frozenset(
    [
        "AA",
        "AE",
        "AH",
        "AO",
        "AW",
        "AY",
        "B",
        "CH",
        "D",
        "DH",
        "EH",
        "ER",
        "EY",
        "F",
        "G",
        "HH",
        "IH",
        "IY",
        "JH",
        "K",
        "L",
        "M",
        "N",
        "NG",
        "OW",
        "OY",
        "P",
        "R",
        "S",
        "SH",
        "T",
        "TH",
        "UH",
        "UW",
        "V",
        "W",
        "Y",
        "Z",
        "ZH",
    ]
)
VOWELS: frozenset[str] = frozenset(
    ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
)
UNK = "<unk>"
DEL = "<DEL>"
DISTORTION_MARK = "*"


class PhoneError(ValueError):
    """A phone symbol or mispronunciation entry that the protocol cannot interpret."""


def strip_stress(phone: str) -> str:
    """``AA1`` -> ``AA``; phones without a digit (some IH/UH in the corpus) pass through."""
    return phone[:-1] if phone and phone[-1] in "012" else phone


def canonical_phone(phone: str) -> str:
    """Validate one canonical phone (stress digit optional) and return it stress-less."""
    base = strip_stress(phone)
    if base not in CMU_PHONES or (base != phone and base not in VOWELS):
        raise PhoneError(f"unknown canonical phone {phone!r}")
    return base


def pronounced_phones(entry: str) -> list[str]:
    """Interpret a ``pronounced-phone`` entry as the list of phones heard at one position.

    ``R*`` -> ``["R"]``; ``EH R`` -> ``["EH", "R"]``; ``<unk>`` -> ``["<unk>"]``;
    ``<DEL>`` -> ``["<DEL>"]``. Anything else is an unknown symbol.
    """
    entry = entry.strip()
    if entry in (UNK, DEL):
        return [entry]
    parts = entry.split()
    if not parts:
        raise PhoneError("empty pronounced-phone")
    out = []
    for part in parts:
        base = strip_stress(part.rstrip(DISTORTION_MARK))
        if base not in CMU_PHONES:
            raise PhoneError(f"unknown pronounced phone {entry!r}")
        out.append(base)
    return out


@dataclass(frozen=True)
class Mispronunciation:
    word_index: int
    index: int
    canonical: str
    pronounced: str

    def as_json(self) -> dict[str, object]:
        return {
            "word_index": self.word_index,
            "index": self.index,
            "canonical-phone": self.canonical,
            "pronounced-phone": self.pronounced,
        }


def perceived_alignment(
    word_phones: Sequence[Sequence[str]], mispronunciations: Iterable[Mispronunciation]
) -> tuple[list[str], list[str]]:
    """Canonical phones and, position by position, what was heard there.

    Returns ``(canonical, perceived)`` of equal length. A perceived entry is a phone,
    ``<unk>``, ``<DEL>``, or several phones joined by a space (one canonical position heard as
    two phones). Raises PhoneError naming the word and index of any inconsistent entry.
    """
    offsets: list[int] = []
    canonical: list[str] = []
    for w, phones in enumerate(word_phones):
        offsets.append(len(canonical))
        for p in phones:
            try:
                canonical.append(canonical_phone(p))
            except PhoneError as exc:
                raise PhoneError(f"word {w}: {exc}") from None
    perceived = list(canonical)
    for m in mispronunciations:
        if not 0 <= m.word_index < len(word_phones):
            raise PhoneError(f"mispronunciation on word {m.word_index}: no such word")
        n = len(word_phones[m.word_index])
        if not 0 <= m.index < n:
            raise PhoneError(
                f"word {m.word_index}: mispronunciation index {m.index} outside its {n} phones"
            )
        pos = offsets[m.word_index] + m.index
        if strip_stress(m.canonical) != canonical[pos]:
            raise PhoneError(
                f"word {m.word_index}: mispronunciation says canonical-phone "
                f"{m.canonical!r} at index {m.index}, the word has {canonical[pos]!r}"
            )
        try:
            heard = pronounced_phones(m.pronounced)
        except PhoneError as exc:
            raise PhoneError(f"word {m.word_index}: {exc}") from None
        perceived[pos] = " ".join(heard)
    return canonical, perceived


def transcript_phones(perceived: Iterable[str]) -> list[str]:
    """Flatten aligned perceived entries into the phone sequence a listener heard."""
    out: list[str] = []
    for entry in perceived:
        if entry == DEL:
            continue
        out.extend(entry.split())
    return out


def normalise_phone_sequence(phones: Iterable[str]) -> list[str]:
    """Recognised phones as metrics compare them: stress digits and ``*`` stripped, no ``<DEL>``."""
    out = []
    for p in phones:
        if p == DEL:
            continue
        out.append(p if p == UNK else strip_stress(p.rstrip(DISTORTION_MARK)))
    return out


# --- aligning recognised phones to canonical ones (MDD scoring, score.py) -------------------
_INDEL = 10
_SUB_SAME_CLASS = 10
_SUB_CROSS_CLASS = 12


def _sub_cost(c: str, r: str) -> int:
    """Substitution cost: vowel for vowel or consonant for consonant (or ``<unk>``) costs an
    ordinary edit; across classes slightly more, so among equal-edit alignments the phonetically
    plausible one wins (IH heard as ``EH R``: IH->EH plus an inserted R, not IH->R)."""
    if c == r:
        return 0
    if UNK in (c, r) or (c in VOWELS) == (r in VOWELS):
        return _SUB_SAME_CLASS
    return _SUB_CROSS_CLASS


def align_to_canonical(canonical: Sequence[str], recognised: Sequence[str]) -> list[str]:
    """What was recognised at each canonical position (weighted Levenshtein alignment).

    A canonical phone with nothing aligned gets ``<DEL>``. A recognised phone aligned to no
    canonical phone (an insertion) joins the entry of the preceding canonical position (the
    first one if it comes before all), so ``EH R`` recognised for one canonical ``IH`` reads as
    one position heard as two phones, like the corpus's two-phone annotations. Costs: insertion
    and deletion 10, substitution 10 within a phone class and 12 across (see ``_sub_cost``);
    remaining ties prefer a match, then an insertion, then a substitution, then a deletion.
    """
    n, m = len(canonical), len(recognised)
    if n == 0:
        return []
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[:, 0] = np.arange(n + 1) * _INDEL
    cost[0, :] = np.arange(m + 1) * _INDEL
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(
                cost[i - 1, j - 1] + _sub_cost(canonical[i - 1], recognised[j - 1]),
                cost[i - 1, j] + _INDEL,
                cost[i, j - 1] + _INDEL,
            )
    aligned: list[list[str]] = [[] for _ in range(n)]
    pending: list[str] = []  # insertions before the first canonical phone
    i, j = n, m
    while i > 0 or j > 0:
        diag = i > 0 and j > 0
        sub = _sub_cost(canonical[i - 1], recognised[j - 1]) if diag else None
        if diag and sub == 0 and cost[i, j] == cost[i - 1, j - 1]:
            aligned[i - 1].insert(0, recognised[j - 1])  # match
            i, j = i - 1, j - 1
        elif j > 0 and cost[i, j] == cost[i, j - 1] + _INDEL:
            (aligned[i - 1] if i > 0 else pending).insert(0, recognised[j - 1])  # insertion
            j -= 1
        elif diag and cost[i, j] == cost[i - 1, j - 1] + sub:
            aligned[i - 1].insert(0, recognised[j - 1])  # substitution
            i, j = i - 1, j - 1
        else:
            i -= 1  # deletion
    if pending:
        aligned[0] = pending + aligned[0]
    return [" ".join(a) if a else DEL for a in aligned]

"""Evaluation metrics, each with its definition. All rates are corpus-level.

Parse failures count as wrong, never as missing:
- APA: a failed answer (unparsable, a score missing or outside 0-10) is scored with a
  no-information fallback, the training-set mean of that aspect (or the scale midpoint 5 when
  no training data is given). Its count is reported next to every APA number.
- WER/PER/MDD: a failed answer is an empty transcript, i.e. every reference word or phone is a
  deletion and every canonical phone is rejected.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import jiwer
import numpy as np
from scipy import stats

from pronlora.core.phones import align_to_canonical, normalise_phone_sequence


# --- APA -------------------------------------------------------------------------------------
def correlation(pred: Sequence[float], human: Sequence[float]) -> dict[str, float]:
    """Pearson r with its two-sided p-value, Spearman rho, and mean squared error.

    Undefined correlations (fewer than 3 pairs, or a constant input) are NaN, not 0.
    """
    x = np.asarray(pred, dtype=float)
    y = np.asarray(human, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} predictions for {len(y)} human scores")
    out = {"mse": float(np.mean((x - y) ** 2)) if len(x) else math.nan}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pcc": math.nan, "pcc_p": math.nan, "spearman": math.nan, **out}
    r, p = stats.pearsonr(x, y)
    rho = stats.spearmanr(x, y).statistic
    return {"pcc": float(r), "pcc_p": float(p), "spearman": float(rho), **out}


# --- WER / PER -------------------------------------------------------------------------------
_PUNCT = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")


def normalise_words(text: str) -> str:
    """Upper case, punctuation removed (apostrophes inside words kept: DORA'S), single spaces."""
    return " ".join(_PUNCT.sub(" ", text.upper()).split())


@dataclass
class EditCounts:
    """Levenshtein counts summed over a corpus: rate = (S + D + I) / N."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_length: int = 0

    def add(self, other: EditCounts) -> None:
        self.substitutions += other.substitutions
        self.deletions += other.deletions
        self.insertions += other.insertions
        self.reference_length += other.reference_length

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        if self.reference_length == 0:
            return math.nan
        return (self.substitutions + self.deletions + self.insertions) / self.reference_length


def edit_counts(reference: Sequence[str], hypothesis: Sequence[str]) -> EditCounts:
    """Minimum-edit counts between token sequences (jiwer's alignment)."""
    if not reference:
        return EditCounts(0, 0, len(hypothesis), 0)
    if not hypothesis:
        return EditCounts(0, len(reference), 0, len(reference))
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    return EditCounts(out.substitutions, out.deletions, out.insertions, len(reference))


def corpus_rate(pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> EditCounts:
    total = EditCounts()
    for ref, hyp in pairs:
        total.add(edit_counts(ref, hyp))
    return total


def recognised_phones(transcript: str) -> list[str]:
    """Phones of a model's phoneme transcript as compared: upper case, stress digits and ``*``
    stripped, ``<DEL>`` removed, ``<unk>`` kept."""
    tokens = [t if t.lower() == "<unk>" else t.upper() for t in transcript.split()]
    return normalise_phone_sequence("<unk>" if t.lower() == "<unk>" else t for t in tokens)


# --- MDD: the hierarchical protocol ----------------------------------------------------------


@dataclass
class MDDCounts:
    """Per canonical phone: C = canonical, P = perceived (annotated), R = recognised.

    TA: P=C, R=C. FR: P=C, R!=C. FA: P!=C, R=C. TR: P!=C, R!=C, split into correct diagnosis
    (CD, R=P) and diagnosis error (DE, R!=P).
    """

    ta: int = 0
    fr: int = 0
    fa: int = 0
    cd: int = 0
    de: int = 0
    confusion: Counter = field(default_factory=Counter)  # (canonical, recognised) -> count

    @property
    def tr(self) -> int:
        return self.cd + self.de

    def add(
        self, canonical: Sequence[str], perceived: Sequence[str], recognised: Sequence[str]
    ) -> None:
        if len(canonical) != len(perceived):
            raise ValueError("perceived phones must be aligned to canonical phones")
        for c, p, r in zip(
            canonical, perceived, align_to_canonical(canonical, recognised), strict=True
        ):
            self.confusion[(c, r)] += 1
            if p == c:
                if r == c:
                    self.ta += 1
                else:
                    self.fr += 1
            elif r == c:
                self.fa += 1
            elif r == p:
                self.cd += 1
            else:
                self.de += 1

    def merge(self, other: MDDCounts) -> None:
        self.ta += other.ta
        self.fr += other.fr
        self.fa += other.fa
        self.cd += other.cd
        self.de += other.de
        self.confusion.update(other.confusion)

    def rates(self) -> dict[str, float]:
        """Precision TR/(TR+FR), recall TR/(TR+FA), F1, false-acceptance rate FA/(FA+TR),
        false-rejection rate FR/(FR+TA), diagnosis error rate DE/(CD+DE); NaN when undefined."""

        def div(a: float, b: float) -> float:
            return a / b if b else math.nan

        precision = div(self.tr, self.tr + self.fr)
        recall = div(self.tr, self.tr + self.fa)
        f1 = (
            div(2 * precision * recall, precision + recall)
            if not (math.isnan(precision) or math.isnan(recall))
            else math.nan
        )
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "far": div(self.fa, self.fa + self.tr),
            "frr": div(self.fr, self.fr + self.ta),
            "der": div(self.de, self.cd + self.de),
        }


def phone_match_counts(ref: Sequence[str], hyp: Sequence[str]) -> tuple[int, int, int]:
    """(hits of the Levenshtein alignment, recognised length, perceived length) of one pair."""
    hits = jiwer.process_words(" ".join(ref), " ".join(hyp)).hits if ref and hyp else 0
    return hits, len(hyp), len(ref)


def phone_match_prf(pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> dict[str, float]:
    """Sequence-match precision/recall/F1 of recognised vs perceived phones: hits of the
    Levenshtein alignment over the recognised (P) and the perceived (R) lengths. Not the
    hierarchical protocol; a candidate for the paper's undefined P/R/F1 (P ~ R ~ F1)."""
    counts = [phone_match_counts(ref, hyp) for ref, hyp in pairs]
    return match_rates(*(sum(c[i] for c in counts) for i in range(3)))


def match_rates(hits: float, n_hyp: float, n_ref: float) -> dict[str, float]:
    p = hits / n_hyp if n_hyp else math.nan
    r = hits / n_ref if n_ref else math.nan
    f1 = 2 * p * r / (p + r) if p + r else math.nan
    return {"precision": p, "recall": r, "f1": f1}

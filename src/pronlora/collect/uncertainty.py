"""95 % bootstrap intervals over test speakers, and paired comparisons on the same resamples.

Why speakers: SpeechOcean762's test set is 125 speakers x 20 utterances. A speaker's
utterances share voice, proficiency and recording conditions, so their errors and scores are
correlated; resampling utterances independently treats them as independent and understates the
spread. Each resample therefore draws speakers with replacement and keeps every utterance of a
drawn speaker (a cluster bootstrap). Resamples are seeded and depend only on the test set's
speakers, so every checkpoint sees the same ones: differences between checkpoints are paired.

Every metric is a function of per-utterance sufficient statistics (APA score pairs; edit,
reference and MDD counts per utterance), so a resample is a weight vector and 1,000 resamples
cost a few matrix products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pronlora.core.protocol import TABLE3_METRICS

N_BOOT = 1000
SEED = 2509_02915  # the paper's arXiv id: fixed, so reruns are byte-identical
LEVEL = 0.95
# Metrics with intervals: the Table 3 columns plus the sequence-match P/R/F1 variant.
BOOT_METRICS = (
    *TABLE3_METRICS,
    "phone_match_f1",
    "phone_match_precision",
    "phone_match_recall",
)
MDD_COUNTS = (
    "word_err",
    "word_n",
    "phone_err",
    "phone_n",
    "ta",
    "fr",
    "fa",
    "cd",
    "de",
    "pm_hits",
    "pm_hyp",
    "pm_ref",
)


@dataclass
class Samples:
    """Per-utterance statistics of one checkpoint on the test set, with each row's speaker."""

    apa_speakers: list[str] = field(default_factory=list)
    apa: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # pred, human
    apa_failed: list[bool] = field(default_factory=list)  # scored with the training mean
    mdd_speakers: list[str] = field(default_factory=list)
    mdd: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in MDD_COUNTS})


def speaker_weights(
    speakers: list[str], all_speakers: list[str], n_boot: int, seed: int
) -> np.ndarray:
    """(n_boot x rows) multiplicity of each row's speaker in each resample of ``all_speakers``."""
    rng = np.random.default_rng(seed)
    s = len(all_speakers)
    draws = rng.integers(0, s, size=(n_boot, s))
    counts = np.stack([np.bincount(d, minlength=s) for d in draws]).astype(float)
    index = {sp: i for i, sp in enumerate(all_speakers)}
    return counts[:, [index[sp] for sp in speakers]]


def weighted_pcc(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of (x, y) with each row counted w times, for every row of ``w``."""
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = w @ x / sw, w @ y / sw
        cov = w @ (x * y) / sw - mx * my
        vx = w @ (x * x) / sw - mx * mx
        vy = w @ (y * y) / sw - my * my
        r = cov / np.sqrt(vx * vy)
    r[(vx <= 1e-12 * np.maximum(1.0, mx * mx)) | (vy <= 1e-12 * np.maximum(1.0, my * my))] = np.nan
    return r


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den == 0] = np.nan
    return out


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * p * r / (p + r)


def resampled_metrics(
    samples: Samples, w_apa: np.ndarray, w_mdd: np.ndarray
) -> dict[str, np.ndarray]:
    """Every BOOT_METRICS value under each resample (NaN where undefined)."""
    out: dict[str, np.ndarray] = {}
    for aspect, (pred, human) in samples.apa.items():
        out[f"{aspect}_pcc"] = weighted_pcc(w_apa, np.asarray(pred), np.asarray(human))
    c = {k: w_mdd @ np.asarray(v, dtype=float) for k, v in samples.mdd.items()}
    out["wer"] = _ratio(c["word_err"], c["word_n"])
    out["per"] = _ratio(c["phone_err"], c["phone_n"])
    tr = c["cd"] + c["de"]
    out["mdd_precision"] = _ratio(tr, tr + c["fr"])
    out["mdd_recall"] = _ratio(tr, tr + c["fa"])
    out["mdd_f1"] = _f1(out["mdd_precision"], out["mdd_recall"])
    out["phone_match_precision"] = _ratio(c["pm_hits"], c["pm_hyp"])
    out["phone_match_recall"] = _ratio(c["pm_hits"], c["pm_ref"])
    out["phone_match_f1"] = _f1(out["phone_match_precision"], out["phone_match_recall"])
    return out


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile interval; None when more than the tail mass of resamples is undefined."""
    finite = values[np.isfinite(values)]
    if len(finite) < (1 - (1 - level) / 2) * len(values):
        return None
    lo, hi = np.percentile(finite, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class Bootstrap:
    """The resamples of one test set, shared by every checkpoint scored on it."""

    apa_speakers: list[str]
    mdd_speakers: list[str]
    speakers: list[str]  # every test speaker: the same list gives the same draws
    n_boot: int = N_BOOT
    seed: int = SEED

    def __post_init__(self) -> None:
        self.w_apa = speaker_weights(self.apa_speakers, self.speakers, self.n_boot, self.seed)
        self.w_mdd = speaker_weights(self.mdd_speakers, self.speakers, self.n_boot, self.seed)

    def metrics(self, samples: Samples) -> dict[str, np.ndarray]:
        if samples.apa_speakers != self.apa_speakers or samples.mdd_speakers != self.mdd_speakers:
            raise ValueError("samples are not in the bootstrap's row order")
        return resampled_metrics(samples, self.w_apa, self.w_mdd)


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """Interval of a - b over the same resamples."""
    return interval(a - b)


def differs(a: np.ndarray, b: np.ndarray) -> bool | None:
    """Whether the paired interval of a - b excludes 0 (None when undefined)."""
    iv = paired_difference(a, b)
    if iv is None:
        return None
    return iv[0] > 0 or iv[1] < 0


def mean_sd(values: list[float]) -> tuple[float, float] | None:
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2:
        return None
    return float(np.mean(finite)), float(np.std(finite, ddof=1))

"""Bootstrap intervals over speakers: coverage, pairing, speaker-level resampling."""

from __future__ import annotations

import numpy as np
import pytest

from pronlora.collect.uncertainty import Bootstrap, Samples, interval, speaker_weights, weighted_pcc


def _test_set(rng: np.random.Generator, speakers: int = 125, per: int = 20):
    """Scores with a speaker effect: population r = (0.8 + 0.3) / 2 = 0.55."""
    between = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], size=speakers)
    within = rng.multivariate_normal([0, 0], [[1, 0.3], [0.3, 1]], size=speakers * per)
    xy = np.repeat(between, per, axis=0) + within
    labels = [f"spk{i:03d}" for i in range(speakers) for _ in range(per)]
    return xy[:, 0], xy[:, 1], labels


def test_speaker_resampling_keeps_a_speakers_utterances_together() -> None:
    labels = ["a", "a", "b", "c", "c", "c"]
    w = speaker_weights(labels, ["a", "b", "c"], 50, seed=1)
    assert w.shape == (50, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(axis=1) == 3).all()  # 3 speakers drawn per resample


def test_weighted_pcc_equals_pcc_of_the_duplicated_sample() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    w = rng.integers(0, 3, size=(4, 30)).astype(float)
    for row, r in zip(w, weighted_pcc(w, x, y), strict=True):
        keep = np.repeat(np.arange(30), row.astype(int))
        assert np.isclose(r, np.corrcoef(x[keep], y[keep])[0, 1])
    assert np.isnan(weighted_pcc(w[:1], np.full(30, 5.0), y)[0])  # constant: undefined


@pytest.mark.slow
def test_intervals_cover_the_true_correlation_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    covered_speaker = covered_utterance = 0
    n_sets = 200
    for k in range(n_sets):
        x, y, labels = _test_set(rng)
        w = speaker_weights(labels, sorted(set(labels)), 400, seed=k)
        lo, hi = interval(weighted_pcc(w, x, y))
        covered_speaker += lo <= 0.55 <= hi
        w_utt = rng.multinomial(len(x), np.full(len(x), 1 / len(x)), size=400).astype(float)
        lo, hi = interval(weighted_pcc(w_utt, x, y))
        covered_utterance += lo <= 0.55 <= hi
    assert 0.90 <= covered_speaker / n_sets <= 0.99, covered_speaker
    # resampling utterances as if independent understates the spread: it misses far more often
    assert covered_utterance / n_sets < 0.80, covered_utterance


def test_same_resamples_for_every_checkpoint_make_differences_paired() -> None:
    rng = np.random.default_rng(3)
    x, y, labels = _test_set(rng, speakers=40, per=5)
    speakers = sorted(set(labels))

    def samples(pred: np.ndarray) -> Samples:
        s = Samples(apa_speakers=labels)
        s.apa = {a: (list(pred), list(y)) for a in ("accuracy", "fluency", "prosodic", "total")}
        return s

    a = Bootstrap(labels, [], speakers, n_boot=300).metrics(samples(x))
    nudged = x + 0.01 * rng.normal(size=len(x))
    b = Bootstrap(labels, [], speakers, n_boot=300).metrics(samples(nudged))
    diff = a["accuracy_pcc"] - b["accuracy_pcc"]
    # a tiny perturbation: paired differences are far tighter than either interval
    lo, hi = interval(a["accuracy_pcc"])
    assert np.nanstd(diff) < 0.1 * (hi - lo)


def test_interval_is_the_central_95_percent_of_the_resamples() -> None:
    """1,001 evenly spaced values: the 2.5th and 97.5th percentiles, NaNs beyond the tail
    mass making the interval undefined."""
    values = np.arange(1001, dtype=float)
    assert interval(values) == pytest.approx((25.0, 975.0))
    values[:20] = np.nan  # 2 % undefined: still an interval over the rest
    assert interval(values) is not None
    values[:30] = np.nan  # 3 % undefined: more than the lower tail's 2.5 %
    assert interval(values) is None

import math
import random

import jiwer
import numpy as np
import pytest
from scipy import stats

from pronlora.collect.metrics import (
    MDDCounts,
    align_to_canonical,
    corpus_rate,
    correlation,
    edit_counts,
    normalise_words,
    phone_match_prf,
    recognised_phones,
)


def test_correlation_hand_case_and_undefined() -> None:
    c = correlation([1, 2, 3, 4], [2, 4, 6, 8])
    assert c["pcc"] == pytest.approx(1.0) and c["spearman"] == pytest.approx(1.0)
    assert c["mse"] == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert math.isnan(correlation([5, 5, 5], [1, 2, 3])["pcc"])
    assert math.isnan(correlation([1, 2], [1, 2])["pcc"])


def test_correlation_matches_scipy_on_random_data() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 11, 50).astype(float)
        y = x + rng.normal(0, 2, 50)
        c = correlation(x, y)
        r, p = stats.pearsonr(x, y)
        assert c["pcc"] == pytest.approx(r, abs=1e-12) and c["pcc_p"] == pytest.approx(p)
        assert c["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
        assert c["mse"] == pytest.approx(float(np.mean((x - y) ** 2)))


def test_word_normalisation_and_wer_hand_case() -> None:
    assert normalise_words("We call it, a 'bear'. DORA'S!") == "WE CALL IT A BEAR DORA'S"
    counts = corpus_rate(
        [
            (
                normalise_words("WE CALL IT BEAR").split(),
                normalise_words("we call it a bear.").split(),
            ),
            (["THREE", "FIVE"], ["TREE"]),
        ]
    )
    assert (counts.substitutions, counts.deletions, counts.insertions) == (1, 1, 1)
    assert counts.rate == pytest.approx(3 / 6)


def test_corpus_rate_matches_jiwer_on_random_cases() -> None:
    rng = random.Random(1)
    vocab = ["A", "B", "C", "D", "E", "F", "G"]
    refs = [[rng.choice(vocab) for _ in range(rng.randint(1, 8))] for _ in range(40)]
    hyps = [[rng.choice(vocab) for _ in range(rng.randint(1, 8))] for _ in range(40)]
    ours = corpus_rate(list(zip(refs, hyps, strict=True))).rate
    assert ours == pytest.approx(
        jiwer.wer([" ".join(r) for r in refs], [" ".join(h) for h in hyps])
    )


def test_edit_counts_with_empty_sides() -> None:
    assert edit_counts(["A", "B"], []).rate == 1.0
    e = edit_counts([], ["A"])
    assert e.insertions == 1 and math.isnan(e.rate)


def test_recognised_phones_are_normalised() -> None:
    assert recognised_phones("k ae1 T* <DEL> <unk> <UNK>") == ["K", "AE", "T", "<unk>", "<unk>"]


@pytest.mark.parametrize(
    "canonical,recognised,expected",
    [
        (["K", "AH", "IH", "R"], ["K", "AH", "EH", "R", "R"], ["K", "AH", "EH R", "R"]),
        (["K", "AH", "IH"], ["X", "K", "AH", "IH"], ["X K", "AH", "IH"]),
        (["K", "AH", "IH"], ["K", "IH"], ["K", "<DEL>", "IH"]),
        (["K", "AH", "IH"], ["K", "AA", "IH"], ["K", "AA", "IH"]),
        (["K", "AH", "IH"], [], ["<DEL>", "<DEL>", "<DEL>"]),
    ],
)
def test_alignment_to_canonical(canonical, recognised, expected) -> None:
    assert align_to_canonical(canonical, recognised) == expected


def test_mdd_counts_one_of_each_outcome() -> None:
    canonical = ["K", "AE", "T", "S", "IH"]
    perceived = ["K", "AE", "D", "<DEL>", "EH"]
    recognised = ["K", "AH", "T", "IY"]  # K ok, AE->AH, T kept, S deleted, IH->IY
    c = MDDCounts()
    c.add(canonical, perceived, recognised)
    assert (c.ta, c.fr, c.fa, c.cd, c.de) == (1, 1, 1, 1, 1)
    r = c.rates()
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["far"] == pytest.approx(1 / 3) and r["frr"] == pytest.approx(1 / 2)
    assert r["der"] == pytest.approx(1 / 2)
    assert c.confusion[("S", "<DEL>")] == 1 and c.confusion[("AE", "AH")] == 1


def test_mdd_rates_from_unequal_counts() -> None:
    """Each rate's numerator and denominator told apart (equal counts would hide a swap):
    P = TR/(TR+FR), R = TR/(TR+FA), FAR = FA/(FA+TR), FRR = FR/(FR+TA), DER = DE/(CD+DE)."""
    r = MDDCounts(ta=7, fr=1, fa=2, cd=3, de=1).rates()
    assert r["precision"] == pytest.approx(4 / 5) and r["recall"] == pytest.approx(4 / 6)
    assert r["f1"] == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))
    assert r["far"] == pytest.approx(2 / 6) and r["frr"] == pytest.approx(1 / 8)
    assert r["der"] == pytest.approx(1 / 4)


def test_mdd_two_phone_entry_is_a_correct_diagnosis() -> None:
    c = MDDCounts()
    c.add(["K", "IH"], ["K", "EH R"], ["K", "EH", "R"])
    assert (c.ta, c.cd) == (1, 1)
    assert math.isnan(c.rates()["frr"]) is False and c.rates()["precision"] == 1.0


def test_phone_match_prf() -> None:
    out = phone_match_prf([(["A", "B", "C", "D"], ["A", "B", "X"])])
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 4)


def test_alignment_prefers_phonetically_plausible_pairing() -> None:
    # CAIRO in the mini test set: IH heard as "EH R", the next AH as <unk>
    canonical = ["K", "AH", "IH", "AH", "R", "AH", "UW"]
    recognised = ["K", "AH", "EH", "R", "<unk>", "R", "AH", "UW"]
    assert align_to_canonical(canonical, recognised) == [
        "K",
        "AH",
        "EH R",
        "<unk>",
        "R",
        "AH",
        "UW",
    ]

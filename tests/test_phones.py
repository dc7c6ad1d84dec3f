import pytest

from pronlora.core.phones import (
    Mispronunciation,
    PhoneError,
    normalise_phone_sequence,
    perceived_alignment,
    pronounced_phones,
    transcript_phones,
)

WORDS = [["W", "IY0"], ["K", "AO1", "L"], ["HH", "IH", "R"]]  # IH without a stress digit


def m(word: int, index: int, canonical: str, pronounced: str) -> Mispronunciation:
    return Mispronunciation(word, index, canonical, pronounced)


def test_no_mispronunciation_is_canonical_without_stress() -> None:
    canonical, perceived = perceived_alignment(WORDS, [])
    assert canonical == ["W", "IY", "K", "AO", "L", "HH", "IH", "R"]
    assert perceived == canonical


def test_star_is_stripped_and_counts_as_correct() -> None:
    _, perceived = perceived_alignment(WORDS, [m(1, 2, "L", "L*")])
    assert perceived[4] == "L"


def test_star_on_a_different_phone_keeps_the_substitution() -> None:
    _, perceived = perceived_alignment(WORDS, [m(1, 1, "AO", "AH*")])
    assert perceived[3] == "AH"


def test_del_keeps_position_but_leaves_transcript() -> None:
    canonical, perceived = perceived_alignment(WORDS, [m(0, 1, "IY", "<DEL>")])
    assert len(perceived) == len(canonical)
    assert perceived[1] == "<DEL>"
    assert transcript_phones(perceived) == ["W", "K", "AO", "L", "HH", "IH", "R"]


def test_unk_stays_a_token() -> None:
    _, perceived = perceived_alignment(WORDS, [m(2, 0, "HH", "<unk>")])
    assert transcript_phones(perceived)[5] == "<unk>"


def test_two_phone_entry_contributes_both_in_order() -> None:
    _, perceived = perceived_alignment(WORDS, [m(2, 1, "IH", "EH R")])
    assert perceived[6] == "EH R"
    assert transcript_phones(perceived)[5:] == ["HH", "EH", "R", "R"]


def test_phone_without_stress_digit_matches_its_canonical() -> None:
    _, perceived = perceived_alignment(WORDS, [m(2, 1, "IH", "IY")])
    assert perceived[6] == "IY"


def test_canonical_phone_mismatch_names_word_and_index() -> None:
    with pytest.raises(PhoneError, match=r"word 1: .*canonical-phone 'K' at index 2.* has 'L'"):
        perceived_alignment(WORDS, [m(1, 2, "K", "G")])


def test_index_outside_word_is_an_error() -> None:
    with pytest.raises(PhoneError, match="index 3 outside its 3 phones"):
        perceived_alignment(WORDS, [m(1, 3, "L", "R")])


@pytest.mark.parametrize("bad", ["XX", "AO7", "", "E*"])
def test_unknown_pronounced_symbol(bad: str) -> None:
    with pytest.raises(PhoneError):
        pronounced_phones(bad)


def test_unknown_canonical_phone_and_stressed_consonant() -> None:
    with pytest.raises(PhoneError, match="'Q'"):
        perceived_alignment([["Q"]], [])
    with pytest.raises(PhoneError, match="'K1'"):
        perceived_alignment([["K1"]], [])


def test_normalise_recognised_phones() -> None:
    assert normalise_phone_sequence(["AA1", "R*", "<DEL>", "<unk>", "IH"]) == [
        "AA",
        "R",
        "<unk>",
        "IH",
    ]

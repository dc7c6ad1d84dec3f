import pytest

from pronlora.core.parse import parse_answer


@pytest.mark.parametrize(
    "text",
    [
        "{'accuracy': 8, 'fluency': 9, 'prosodic': 7, 'total': 8}",  # the paper's dict style
        '{"accuracy": 8, "fluency": 9, "prosodic": 7, "total": 8}',  # JSON
        "Scores: {'accuracy': 8, 'fluency': 9, 'prosodic': 7, 'total': 8} done.",  # extra text
        "{'accuracy': 8, 'fluency': 9, 'prosodic': 7, 'total': 8",  # missing closing brace
        "{'accuracy': '8', 'fluency': \"9\", 'prosodic': 7.0, 'total': 8}",  # strings, floats
        "{accuracy: 8, fluency: 9, prosodic: 7, total: 8}",  # unquoted keys
    ],
)
def test_apa_good_and_slipped_answers(text: str) -> None:
    parsed, error = parse_answer("APA", text)
    assert error is None
    assert parsed == {"accuracy": 8, "fluency": 9, "prosodic": 7, "total": 8}


def test_apa_out_of_range_is_flagged_not_used() -> None:
    parsed, error = parse_answer(
        "APA", "{'accuracy': 12, 'fluency': 9, 'prosodic': -1, 'total': 8}"
    )
    assert error == "score(s) outside 0-10: accuracy=12, prosodic=-1"
    assert parsed["accuracy"] == 12


def test_apa_missing_aspect_and_garbage() -> None:
    assert parse_answer("APA", "{'accuracy': 8, 'fluency': 9}")[1] == (
        "missing score(s): prosodic, total"
    )
    assert parse_answer("APA", "' ' ' ' garbage") == (None, "no scores found")
    assert parse_answer("APA", "{{{{") == (None, "no scores found")
    assert parse_answer("APA", None)[1] == "output is not text"


@pytest.mark.parametrize(
    "text,words",
    [
        (
            "{'word_transcript': 'WE CALL IT', 'phoneme_transcript': 'W IY K AO L IH T'}",
            "WE CALL IT",
        ),
        (
            '{"word_transcript": "WE CALL IT", "phoneme_transcript": "W IY K AO L IH T"}',
            "WE CALL IT",
        ),
        (
            "Here: {'word_transcript': 'WE CALL IT', 'phoneme_transcript': 'W IY K AO L IH T'",
            "WE CALL IT",
        ),
        ("{'word_transcript': 'DORA'S', 'phoneme_transcript': 'W IY K AO L IH T'}", "DORA'S"),
        ("{'word_transcript': 'WE CALL IT', 'phoneme_transcript': 'W IY K AO L IH T", "WE CALL IT"),
    ],
)
def test_mdd_good_and_slipped_answers(text: str, words: str) -> None:
    parsed, error = parse_answer("MDD", text)
    assert error is None
    assert parsed == {"word_transcript": words, "phoneme_transcript": "W IY K AO L IH T"}


def test_mdd_failures() -> None:
    assert parse_answer("MDD", "no dict here") == (None, "no transcript dict found")
    assert parse_answer("MDD", "{'word_transcript': 'HI'}") == (
        None,
        "missing word_transcript or phoneme_transcript",
    )
    assert parse_answer("MDD", "x" * 10000)[1] == "no transcript dict found"

import pytest

from pronlora.core.protocol import (
    Task,
    format_apa_answer,
    format_mdd_answer,
    prompt_text,
    user_content,
)

from .conftest import SHARED


@pytest.mark.parametrize("task,name", [(Task.APA, "apa_prompt.txt"), (Task.MDD, "mdd_prompt.txt")])
def test_packaged_prompts_are_byte_exact(task: Task, name: str) -> None:
    reference = (SHARED / "reference" / "prompts" / name).read_bytes()
    assert prompt_text(task).encode("utf-8") == reference


def test_user_content_starts_with_control_then_audio_token() -> None:
    assert user_content(Task.MDD).startswith("<|MDD|><|audio_1|>Transcribe the audio")
    assert user_content(Task.APA).endswith(prompt_text(Task.APA))


def test_answer_formats_match_prompt_examples() -> None:
    assert (
        format_apa_answer({"accuracy": 8, "fluency": 9, "prosodic": 9, "total": 8, "x": 1})
        == "{'accuracy': 8, 'fluency': 9, 'prosodic': 9, 'total': 8}"
    )
    assert (
        format_mdd_answer("DORA'S BOOK", "D AO R AH S B UH K")
        == "{'word_transcript': 'DORA'S BOOK', 'phoneme_transcript': 'D AO R AH S B UH K'}"
    )

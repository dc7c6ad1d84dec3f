"""A byte-level BPE tokenizer carrying Phi-4-multimodal's special-token strings and ids.

The real tokenizer cannot be downloaded here; this one is trained on the protocol's own text
(prompts, ARPAbet phones, answer dicts) so sequence lengths are realistic, and it places every
special token at the id the real checkpoint uses (full size) or at the top of a small vocabulary
(tiny). Code downstream reads ids from the tokenizer, never from constants.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pronlora.phones import CMU_PHONES
from pronlora.protocol import (
    ASSISTANT_TOKEN,
    AUDIO_TOKEN,
    END_TOKEN,
    ENDOFTEXT_TOKEN,
    SYSTEM_TOKEN,
    TASKS,
    USER_TOKEN,
    prompt_text,
)

# Real Phi-4-multimodal ids (paper-protocol.md).
REAL_SPECIAL_IDS: dict[str, int] = {
    ENDOFTEXT_TOKEN: 199999,
    "<|image|>": 200010,
    AUDIO_TOKEN: 200011,
    ASSISTANT_TOKEN: 200019,
    END_TOKEN: 200020,
    USER_TOKEN: 200021,
    SYSTEM_TOKEN: 200022,
}

# The checkpoint's chat format: <|role|>content<|end|> ... <|assistant|>
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)


def _corpus() -> list[str]:
    words = (
        "WE CALL IT BEAR THREE FIVE SEVEN MARK IS GOING TO SEE THE RED BOOK SHE LIKES MUSIC "
        "THANK YOU VERY MUCH GOOD MORNING JUMP OVER FENCE ZERO ONE TWO FOUR SIX EIGHT NINE TEN"
    )
    phones = " ".join(sorted(CMU_PHONES))
    answers = [
        "{'accuracy': 8, 'fluency': 9, 'prosodic': 9, 'total': 8}",
        "{'word_transcript': 'WE CALL IT BEAR', 'phoneme_transcript': 'W IY K AO L IH T B EH R'}",
        "0 1 2 3 4 5 6 7 8 9 10 <unk> <DEL>",
    ]
    return [prompt_text(t) for t in TASKS] + [words, phones, *answers] * 20


def build_tokenizer(
    out: Path, base_vocab: int, special_ids: dict[str, int]
) -> PreTrainedTokenizerFast:
    """Train the BPE, place the special tokens at ``special_ids`` and save it under ``out``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=base_vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    vocab = tok.get_vocab()
    taken = set(vocab.values())
    clash = {s: i for s, i in special_ids.items() if i in taken}
    if clash:
        raise ValueError(f"special ids {clash} collide with the trained vocabulary")
    model = tok.model
    merges = [tuple(m.split(" ")) for m in _merges(tok)]
    vocab.update(special_ids)
    tok.model = models.BPE(vocab=vocab, merges=merges)
    del model
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT_TOKEN,
        eos_token=ENDOFTEXT_TOKEN,
        pad_token=ENDOFTEXT_TOKEN,
        unk_token=ENDOFTEXT_TOKEN,
        additional_special_tokens=[t for t in special_ids if t != ENDOFTEXT_TOKEN],
        model_max_length=131072,
    )
    hf.chat_template = CHAT_TEMPLATE
    for token, idx in special_ids.items():
        got = hf.convert_tokens_to_ids(token)
        if got != idx:
            raise AssertionError(f"{token} got id {got}, wanted {idx}")
    hf.save_pretrained(out)
    return hf


def _merges(tok: Tokenizer) -> list[str]:
    import json

    return [
        m if isinstance(m, str) else " ".join(m)
        for m in json.loads(tok.to_str())["model"]["merges"]
    ]

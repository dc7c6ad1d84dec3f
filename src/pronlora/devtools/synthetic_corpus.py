"""A small synthetic corpus in the official SpeechOcean762 layout, for runs without real data.

The audio is synthetic (harmonic tones for vowels, shaped noise for consonants), the scores
and mispronunciations are drawn at random with plausible distributions. It exists so a fresh
clone can run every stage; any metric computed on it is meaningless. The corpus root holds a
``SYNTHETIC`` marker that data preparation records in its manifest.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from pronlora.core.atomic import write_text
from pronlora.core.phones import CMU_PHONES, VOWELS, strip_stress
from pronlora.core.protocol import SAMPLE_RATE
from pronlora.data.prep import SYNTHETIC_MARKER

LEXICON: dict[str, list[str]] = {
    "WE": ["W", "IY1"],
    "CALL": ["K", "AO1", "L"],
    "IT": ["IH1", "T"],
    "BEAR": ["B", "EH1", "R"],
    "THREE": ["TH", "R", "IY1"],
    "FIVE": ["F", "AY1", "V"],
    "SEVEN": ["S", "EH1", "V", "AH0", "N"],
    "MARK": ["M", "AA1", "R", "K"],
    "IS": ["IH1", "Z"],
    "GOING": ["G", "OW1", "IH0", "NG"],
    "TO": ["T", "UW1"],
    "SEE": ["S", "IY1"],
    "THE": ["DH", "AH0"],
    "RED": ["R", "EH1", "D"],
    "BOOK": ["B", "UH1", "K"],
    "HERE": ["HH", "IH", "R"],
    "SHE": ["SH", "IY1"],
    "LIKES": ["L", "AY1", "K", "S"],
    "MUSIC": ["M", "Y", "UW1", "Z", "IH0", "K"],
    "THANK": ["TH", "AE1", "NG", "K"],
    "YOU": ["Y", "UW1"],
    "VERY": ["V", "EH1", "R", "IY0"],
    "MUCH": ["M", "AH1", "CH"],
    "GOOD": ["G", "UH1", "D"],
    "MORNING": ["M", "AO1", "R", "N", "IH0", "NG"],
    "JUMP": ["JH", "AH1", "M", "P"],
    "OVER": ["OW1", "V", "ER0"],
    "FENCE": ["F", "EH1", "N", "S"],
}
_SENTENCES = [
    "WE CALL IT BEAR",
    "THREE FIVE SEVEN",
    "MARK IS GOING TO SEE THE RED BOOK",
    "SHE LIKES MUSIC",
    "THANK YOU VERY MUCH",
    "GOOD MORNING",
    "THE BEAR IS HERE",
    "WE JUMP OVER THE FENCE",
    "SEE YOU",
    "SHE IS GOING TO CALL YOU",
]
_KINDS = ("substitute", "substitute", "unk", "del", "star", "two")


def _phone_audio(phone: str, f0: float, rng: np.random.Generator) -> np.ndarray:
    n = int(0.09 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    base = strip_stress(phone)
    if base in VOWELS:
        formant = 300 + 90 * (sorted(VOWELS).index(base) % 9)
        sig = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
        sig += 0.6 * np.sin(2 * np.pi * formant * t)
    else:
        sig = rng.normal(0, 0.5, n) * (0.4 + 0.6 * ((sorted(CMU_PHONES).index(base) % 7) / 7))
    env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    return 0.25 * sig * env


def _utterance_audio(
    word_phones: list[list[str]], f0: float, rng: np.random.Generator
) -> np.ndarray:
    gap = np.zeros(int(0.08 * SAMPLE_RATE))
    parts = [gap]
    for phones in word_phones:
        parts.extend(_phone_audio(p, f0, rng) for p in phones)
        parts.append(gap)
    sig = np.concatenate(parts) + rng.normal(0, 0.003, sum(len(p) for p in parts))
    return np.clip(sig, -1, 1)


def _mispronounce(phone: str, rng: random.Random) -> str:
    base = strip_stress(phone)
    kind = rng.choice(_KINDS)
    if kind == "substitute":
        return rng.choice(sorted(CMU_PHONES - {base}))
    if kind == "unk":
        return "<unk>"
    if kind == "del":
        return "<DEL>"
    if kind == "star":
        return base + "*"
    return f"{rng.choice(sorted(VOWELS))} R"


def make_demo_corpus(out: str | Path, utterances: int = 24, seed: int = 0) -> Path:
    """Write the corpus; two thirds of the speakers in train, one third in test."""
    if utterances < 4:
        raise ValueError("--utterances must be at least 4 (two per split)")
    out = Path(out).resolve()
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    per_speaker = 4
    n_speakers = max(2, -(-utterances // per_speaker))
    speakers = [f"{9001 + i:04d}" for i in range(n_speakers)]
    n_train_spk = max(1, round(n_speakers * 2 / 3))
    scores: dict[str, dict] = {}
    kaldi: dict[str, dict[str, list[str]]] = {s: {} for s in ("train", "test")}
    made = 0
    for si, spk in enumerate(speakers):
        split = "train" if si < n_train_spk else "test"
        skill = rng.uniform(4.5, 9.5)
        f0 = rng.uniform(110, 260)
        age = rng.randint(6, 40)
        gender = rng.choice("mf")
        for j in range(per_speaker):
            if made == utterances:
                break
            made += 1
            utt = f"0{spk}{j + 1:04d}"
            text = rng.choice(_SENTENCES)
            words = []
            n_mis = 0
            for w in text.split():
                phones = list(LEXICON[w])
                entry: dict = {"text": w, "phones": phones, "stress": 10}
                mis = []
                for k, p in enumerate(phones):
                    if rng.random() < (10 - skill) / 40:
                        mis.append(
                            {
                                "canonical-phone": strip_stress(p),
                                "index": k,
                                "pronounced-phone": _mispronounce(p, rng),
                            }
                        )
                n_mis += len(mis)
                if mis:
                    entry["mispronunciations"] = mis
                acc = max(0, min(10, round(skill + 1 - 2 * len(mis))))
                entry.update(
                    accuracy=acc,
                    total=acc,
                    **{"phones-accuracy": [2 if not mis else 1] * len(phones)},
                )
                words.append(entry)

            def score(spread: float, skill: float = skill, n_mis: int = n_mis) -> int:
                return max(0, min(10, round(skill - 0.5 * n_mis + rng.gauss(0, spread))))

            rec = {
                "text": text,
                "accuracy": score(0.5),
                "fluency": score(0.8),
                "prosodic": score(0.9),
                "completeness": 10.0,
                "words": words,
            }
            rec["total"] = round((rec["accuracy"] + rec["fluency"] + rec["prosodic"]) / 3)
            scores[utt] = rec
            wav = out / "WAVE" / f"SPEAKER{spk}" / f"{utt}.WAV"
            wav.parent.mkdir(parents=True, exist_ok=True)
            audio = _utterance_audio([w["phones"] for w in words], f0, nrng)
            sf.write(str(wav), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            d = kaldi[split]
            d.setdefault("wav.scp", []).append(f"{utt}\tWAVE/SPEAKER{spk}/{utt}.WAV")
            d.setdefault("text", []).append(f"{utt}\t{text}")
            d.setdefault("utt2spk", []).append(f"{utt} {spk}")
            d.setdefault("spk2utt", {}).setdefault(spk, []).append(utt)  # type: ignore[union-attr]
            d.setdefault("spk2age", {})[spk] = age  # type: ignore[index]
            d.setdefault("spk2gender", {})[spk] = gender  # type: ignore[index]
    for split, d in kaldi.items():
        for name in ("wav.scp", "text", "utt2spk"):
            write_text(out / split / name, "\n".join(d.get(name, [])) + "\n")
        spk2utt = d.get("spk2utt", {})
        write_text(
            out / split / "spk2utt", "".join(f"{s} {' '.join(u)}\n" for s, u in spk2utt.items())
        )
        for name in ("spk2age", "spk2gender"):
            write_text(
                out / split / name, "".join(f"{s}\t{v}\n" for s, v in d.get(name, {}).items())
            )
    write_text(
        out / "resource" / "scores.json", json.dumps(scores, indent=2, sort_keys=True) + "\n"
    )
    write_text(
        out / SYNTHETIC_MARKER, "synthetic corpus made by pronlora; not SpeechOcean762 data\n"
    )
    write_text(
        out / "README.md",
        "# SYNTHETIC demo corpus (not SpeechOcean762)\n\n"
        f"Made by `jobs/make_demo_corpus.py` (seed {seed}, {utterances} utterances). Audio is "
        "tones and noise; scores and mispronunciations are random. Any metric computed on it is "
        "meaningless. Layout is the official one so every pronlora stage runs on it.\n",
    )
    return out

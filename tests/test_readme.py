"""The README is a manual that matches the code: short, every promise in its model, Table 3 and
reliability sections names a test that exists, and the facts it shares with the code agree."""

from __future__ import annotations

import re
from pathlib import Path

from pronlora.core.config import load_config
from pronlora.core.protocol import AUDIO_PLACEHOLDER

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PROMISE_SECTIONS = (
    "Get the model",
    "Table 3: outputs and how to read them",
    "Track, check, score, share",
    "What survives what",
)


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def bullets(text: str) -> list[str]:
    """The section's bullet items, each with its continuation lines."""
    return [b.strip() for b in re.split(r"^- ", text, flags=re.M)[1:]]


def defined_tests() -> set[str]:
    names = set()
    for path in (REPO / "tests").glob("test_*.py"):
        names |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    return names


def test_the_readme_is_a_manual_of_at_most_300_lines() -> None:
    assert len(README.splitlines()) <= 300
    for heading in (
        "## Install",
        "## Demo",
        "## Get the model",
        "## Run Table 3 on a Slurm",
        "## Configs",
        "## What survives what",
        "## Troubleshooting",
        "## Layout",
    ):
        assert heading in README, heading


def test_every_promise_names_a_test_that_exists() -> None:
    tests = defined_tests()
    for title in PROMISE_SECTIONS:
        items = bullets(section(title))
        assert len(items) >= 5, title
        for item in items:
            named = re.findall(r"`(test_\w+)`", item)
            assert named, f"{title}: a promise without its test: {item[:80]!r}"
            missing = [n for n in named if n not in tests]
            assert not missing, f"{title}: {missing} named but not defined"


def test_facts_the_readme_shares_with_the_code_agree() -> None:
    assert f"`{AUDIO_PLACEHOLDER}`" in section("Get the model")
    paper = load_config("paper_r64")
    assert f"infer: {{batch_size: {paper.infer.batch_size}, cache: {paper.infer.cache}}}" in README
    assert f"micro-batch {paper.micro_batch} x accumulation {paper.grad_accum}" in README
    assert f"lr {paper.lr:g}".replace("e-05", "e-5") in README
    assert f"{paper.epochs} epochs" in section("Configs")
    assert f"LoRA r={paper.lora.r}, alpha {paper.lora.alpha}" in README
    assert f"groups of {paper.infer.clips_per_encoder_batch} clips" in README.replace(
        "group of 16 clips", "groups of 16 clips"
    )
    for path in re.findall(r"`((?:src|bench|containers|tests|tools|slurm|jobs)/[\w./-]+)`", README):
        assert (REPO / path).exists(), f"README names {path}, which does not exist"

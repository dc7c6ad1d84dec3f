"""Packages a job never uses, kept out of its process before the heavy imports.

peft and transformers import bitsandbytes and datasets whenever they are installed: about 3 s
of every training and decoding process's start on a 2-core box, and 4 s on an H100 node
(bitsandbytes registers its operators and calls ``torch.compile`` as it is imported), paid again
by every job of a grid and every rank. A ``None`` entry in ``sys.modules`` is Python's own way
to say "not installed": ``importlib.util.find_spec`` returns None for it, so the libraries'
availability checks say no and skip the code that needs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pronlora.core.config import load_config
from pronlora.core.errors import InputError
from pronlora.core.layout import RunDir

# transformers' Trainer imports datasets only to recognise its Dataset type; jobs/prep.py,
# the one stage that reads Hub datasets, does not keep it out.
NEVER_USED_BY_MODEL_JOBS = ("datasets",)


def unused_packages(quantization: str | None) -> tuple[str, ...]:
    """What a training or decoding process of this quantization never imports; None (not
    known before the stage reads its inputs) keeps bitsandbytes available."""
    if quantization in (None, "nf4"):
        return NEVER_USED_BY_MODEL_JOBS
    return (*NEVER_USED_BY_MODEL_JOBS, "bitsandbytes")


def keep_out(packages: tuple[str, ...]) -> None:
    """Each package reads as not installed in this process, unless already imported."""
    for name in packages:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def run_quantization(run_dir: str, config: str | None = None) -> str | None:
    """A run's quantization as its run.json (else ``config``) gives it, read before the heavy
    imports; None where neither is readable (the stage then names the fault)."""
    run = RunDir(Path(run_dir))
    try:
        if run.run_json.is_file():
            return run.read_run()["config"].get("quantization")
        return load_config(config).quantization if config else None
    except (InputError, OSError, AttributeError):
        return None

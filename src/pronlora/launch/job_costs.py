"""What a plan's jobs cost, from measurements only: ``measured_rates.json``.

A training job costs its one-time seconds (process start, load, compile, audio cache, saves)
plus seconds per training instance per epoch; a decode worker costs its one-time seconds plus
seconds per test instance for its first checkpoint, and each next checkpoint it swaps in its
own one-time and per-instance seconds where those were measured (else a first checkpoint's).
Each rate was measured through ``jobs/train.py`` or the decode job of ``jobs/infer.py`` on one
GPU (``bench/rates.sh``) and names its results file and command; a combination nobody measured
gets no estimate, and the plan says so instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from pronlora.core.config import TrainConfig
from pronlora.core.layout import PreparedDir
from pronlora.core.protocol import CORPUS_UTTERANCES, TASKS

RATES_FILE = "measured_rates.json"


@dataclass(frozen=True)
class Rate:
    fixed_s: float
    s_per_instance: float
    source: str  # the bench/results file that holds the measurement and its command
    # decoding: each next checkpoint a worker swaps into its loaded model
    next_fixed_s: float | None = None
    next_s_per_instance: float | None = None

    def seconds(self, instances: int, times: int = 1) -> float:
        """One job: its one-time cost plus ``times`` passes over ``instances``."""
        return self.fixed_s + times * instances * self.s_per_instance

    def next_seconds(self, instances: int) -> float:
        """A worker's next checkpoint (a first checkpoint's cost where none was measured)."""
        if self.next_fixed_s is None or self.next_s_per_instance is None:
            return self.seconds(instances)
        return self.next_fixed_s + instances * self.next_s_per_instance


def combination(cfg: TrainConfig) -> str:
    """What a rate is measured for: the named config, its strategy and its quantization."""
    return f"{cfg.name} {cfg.strategy} {cfg.quantization}"


@cache
def measured_rates() -> dict[str, Any]:
    return json.loads((files("pronlora") / RATES_FILE).read_text())


def rate(stage: str, cfg: TrainConfig) -> Rate | None:
    m = measured_rates().get(stage, {}).get(combination(cfg))
    if not m:
        return None
    nxt = (m.get("next_fixed_s"), m.get("next_s_per_instance"))
    return Rate(m["fixed_s"], m["s_per_instance"], m["source"], *nxt)


def instance_counts(settings: dict[str, str], prep: bool) -> tuple[dict[str, int], str]:
    """Instances per split the plan's jobs will see, and where the count comes from: the
    corpus's wav.scp lists (kaldi layout), else the prepared dir's manifest, else the full
    corpus's official sizes."""
    data, source = settings.get("PRONLORA_DATA", ""), settings.get("PRONLORA_DATA_SOURCE")
    if prep and (source or "kaldi") == "kaldi" and data:
        lists = {s: Path(data) / s / "wav.scp" for s in CORPUS_UTTERANCES}
        if all(p.is_file() for p in lists.values()):
            n = {
                s: sum(1 for x in p.read_text().splitlines() if x.strip()) for s, p in lists.items()
            }
            return {s: k * len(TASKS) for s, k in n.items()}, f"the corpus {data}"
    prepared = PreparedDir(Path(settings.get("PRONLORA_PREPARED") or "."))
    if not prep and prepared.manifest_path.is_file():
        counts = prepared.manifest()["counts"]
        n = {s: sum(counts[s].get(t.value, 0) for t in TASKS) for s in CORPUS_UTTERANCES}
        return n, f"the prepared dir {prepared.root}"
    full = {s: k * len(TASKS) for s, k in CORPUS_UTTERANCES.items()}
    return full, "the full SpeechOcean762"

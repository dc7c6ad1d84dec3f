#!/usr/bin/env python3
"""Job costs from a run of bench/rates.sh, and the rates file the launch plan reads.

  python bench/rates.py record --combo C --run-dir R --train-wall S --infer-wall S ...
  python bench/rates.py install RESULTS.jsonl --source bench/results/FILE.md

``record``: one JSON line for a combo from its run dir: the training job's wall time split into
one-time seconds (process start, load, compile, audio cache, saves) and seconds per training
instance (the median step time of the second half of the epoch, over the instances of a step);
the decode job's into one-time seconds (process start, load, first-batch warm-up) and seconds
per test instance (from two decodes of different sizes), and with a second checkpoint the same
for each next checkpoint a worker swaps in (see infer_record).
``install``: writes those lines into ``src/pronlora/measured_rates.json`` with their source
(``--stages infer``: only their decode halves).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

RATES = Path(__file__).resolve().parents[1] / "src" / "pronlora" / "measured_rates.json"


def train_record(run: Path, wall: float) -> dict[str, Any]:
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    meta = json.loads((run / "run.json").read_text())
    config = meta["config"]
    instances = len((Path(meta["prepared"]) / "train.jsonl").read_text().splitlines())
    gaps = [(b["time_s"] - a["time_s"]) / (b["step"] - a["step"]) for a, b in pairwise(steps)]
    steady = statistics.median(gaps[len(gaps) // 2 :])
    n_steps = steps[-1]["step"]
    return {
        "wall_s": wall,
        "instances": instances,
        "steps": n_steps,
        "step_s": round(steady, 3),
        "s_per_instance": round(steady * n_steps / instances, 5),
        "fixed_s": round(wall - steady * n_steps, 1),
        "tokens_per_s": statistics.median(e["tokens_per_s"] for e in steps[len(steps) // 2 :]),
        "gpu_mem_gb": max(e.get("gpu_mem_gb", 0) for e in log),
        "micro_batch": config["micro_batch"],
    }


def infer_record(
    run: Path, wall: float, large: Path | None = None, checkpoints: tuple[str, ...] = ("epoch-1",)
) -> dict[str, Any]:
    """The decode job's rate. With ``large`` (a decode of more instances in another process),
    the seconds per instance are the difference of the two jobs' in-process seconds (audio
    embedding and decoding) over the difference of their instances: what a job pays once per
    process in its first batches (graph warm-up, cuBLAS, the allocator) is then one-time, where
    one job alone would spread it over its instances.

    A second checkpoint (decoded by the same process, swapped into its model) gives the rate of
    each next checkpoint of a worker: its in-process seconds, the swap included, as one-time
    seconds plus seconds per instance (the slope again with ``large``); its seconds leave the
    first checkpoint's one-time seconds."""
    done = _shard_summary(run, checkpoints[0])
    rec = {
        "wall_s": wall,
        "instances": done["instances"],
        "load_s": done["load_s"],
        "embed_s": done["embed_s"],
        "decode_s": done["seconds"],
        "device": done["device"],
    }
    per = _slope(run, large, checkpoints[0], "seconds", rec)
    fixed = wall - per * rec["instances"]
    if len(checkpoints) > 1:
        nxt = _shard_summary(run, checkpoints[1])
        spent = nxt["load_s"] + nxt["seconds"]
        next_per = _slope(run, large, checkpoints[1], "swap_and_seconds", None)
        rec["next"] = {k: nxt[k] for k in ("checkpoint", "load_s", "embed_s", "seconds")}
        rec["next_s_per_instance"] = round(next_per, 5)
        rec["next_fixed_s"] = round(spent - next_per * nxt["instances"], 1)
        fixed -= spent
    return rec | {"s_per_instance": round(per, 5), "fixed_s": round(fixed, 1)}


def _slope(
    run: Path, large: Path | None, checkpoint: str, what: str, rec: dict[str, Any] | None
) -> float:
    """Seconds per instance of ``checkpoint``'s shard: over its instances alone, or between
    ``run`` and ``large``."""

    def seconds(d: dict[str, Any]) -> float:
        return d["seconds"] + (d["load_s"] if what == "swap_and_seconds" else 0.0)

    small = _shard_summary(run, checkpoint)
    if large is None:
        return seconds(small) / small["instances"]
    big = _shard_summary(large, checkpoint)
    if big["instances"] <= small["instances"]:
        raise SystemExit(f"{large}: {big['instances']} instances, not more than {run}'s")
    if rec is not None:
        rec["large"] = {k: big[k] for k in ("instances", "embed_s", "seconds")}
    return (seconds(big) - seconds(small)) / (big["instances"] - small["instances"])


def _shard_summary(run: Path, checkpoint: str) -> dict[str, Any]:
    return json.loads((run / f"predictions/{checkpoint}/shard-0-of-1.done.json").read_text())


def cmd_record(a: argparse.Namespace) -> None:
    run = Path(a.run_dir)
    rec = {
        "combo": a.combo.replace(":", " "),
        "train": train_record(run, a.train_wall) | {"command": a.train_command},
        "infer": infer_record(
            run, a.infer_wall, a.infer_large_run_dir, tuple(a.checkpoints.split(","))
        )
        | {"command": a.infer_command},
    }
    print(json.dumps(rec))


def cmd_install(a: argparse.Namespace) -> None:
    rows = [json.loads(x) for x in Path(a.results).read_text().splitlines() if x.strip()]
    rates = json.loads(RATES.read_text()) if RATES.is_file() else {"train": {}, "infer": {}}
    for r in rows:
        for stage in a.stages.split(","):
            m = r[stage]
            rates[stage][r["combo"]] = {
                "fixed_s": m["fixed_s"],
                "s_per_instance": m["s_per_instance"],
                "source": a.source,
                "command": m["command"],
            } | {k: m[k] for k in ("next_fixed_s", "next_s_per_instance") if k in m}
    RATES.write_text(json.dumps(rates, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RATES}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--combo", required=True)
    r.add_argument("--run-dir", required=True)
    r.add_argument("--train-wall", type=float, required=True)
    r.add_argument("--infer-wall", type=float, required=True)
    r.add_argument("--train-command", default="")
    r.add_argument("--infer-command", default="")
    r.add_argument(
        "--infer-large-run-dir", type=Path, help="the same checkpoint decoding more instances"
    )
    r.add_argument(
        "--checkpoints",
        default="epoch-1",
        help="the decode job's checkpoints (comma list): the first, then the next one swapped in",
    )
    i = sub.add_parser("install")
    i.add_argument("results")
    i.add_argument("--source", required=True)
    i.add_argument("--stages", default="train,infer", help="which halves to install (comma list)")
    a = ap.parse_args()
    cmd_record(a) if a.cmd == "record" else cmd_install(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

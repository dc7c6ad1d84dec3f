"""CPU seconds per test of the suite, where the wall clock hides them: three workers and their
job processes share two cores, so a test's wall time says little about what it costs.

As a pytest plugin (each worker appends one JSON line per test to $SUITE_CPU_DIR):

    SUITE_CPU_DIR=/tmp/cpu PYTHONPATH=bench .venv/bin/python -m pytest -n 3 --dist loadfile \
        -p suite_cpu

then ``python bench/suite_cpu.py /tmp/cpu``: CPU per file and the costliest tests, and when
each worker ran each file. CPU is the worker's own plus its waited-for children's (job
processes, torchrun and its ranks); Slurm jobs run under slurmd and are not counted.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest


def _cpu() -> tuple[float, float]:
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    start, (own0, kids0) = time.time(), _cpu()
    yield
    own1, kids1 = _cpu()
    row = {"test": item.nodeid, "t0": start, "wall": time.time() - start}
    row.update(self=own1 - own0, children=kids1 - kids0)
    out = Path(os.environ.get("SUITE_CPU_DIR", "suite-cpu"))
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"worker-{os.getpid()}.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def summarize(folder: Path, top: int = 20) -> str:
    rows = [json.loads(line) for f in folder.glob("worker-*.jsonl") for line in f.open()]
    if not rows:
        return f"{folder}: no worker-*.jsonl"
    per_file: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for r in rows:
        acc = per_file[r["test"].split("::")[0]]
        acc[0] += r["self"]
        acc[1] += r["children"]
        acc[2] += r["wall"]
    lines = ["| file | CPU s (worker) | CPU s (children) | wall s |", "|---|---|---|---|"]
    for name, (own, kids, wall) in sorted(per_file.items(), key=lambda kv: -sum(kv[1][:2])):
        lines.append(f"| {name} | {own:.0f} | {kids:.0f} | {wall:.0f} |")
    own = sum(r["self"] for r in rows)
    kids = sum(r["children"] for r in rows)
    lines += ["", f"{len(rows)} tests: {own:.0f} CPU-s in the workers, {kids:.0f} in children", ""]
    lines += ["| CPU s | wall s | test |", "|---|---|---|"]
    for r in sorted(rows, key=lambda r: -(r["self"] + r["children"]))[:top]:
        lines.append(f"| {r['self'] + r['children']:.0f} | {r['wall']:.0f} | {r['test']} |")
    start = min(r["t0"] for r in rows)
    lines += ["", "| worker | file | from s | to s |", "|---|---|---|---|"]
    for f in sorted(folder.glob("worker-*.jsonl")):
        spans: dict[str, list[float]] = {}
        for r in map(json.loads, f.open()):
            span = spans.setdefault(r["test"].split("::")[0], [r["t0"], r["t0"]])
            span[0] = min(span[0], r["t0"])
            span[1] = max(span[1], r["t0"] + r["wall"])
        for name, (a, b) in sorted(spans.items(), key=lambda kv: kv[1][0]):
            lines.append(f"| {f.stem} | {name} | {a - start:.0f} | {b - start:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))

"""The plan's estimate against a grid's measured job times (issue 25, item 6).

Reads the plan a dry run printed (``plan.txt``: "estimate JOB: X min ...") and the local
executor's ``job_times.jsonl``; prints one row per GPU job and the totals.
    python bench/grid_vs_plan.py PLAN_TXT JOB_TIMES_JSONL
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path


def main(plan: Path, times: Path) -> int:
    estimate = {
        m[1]: float(m[2]) * 60
        for m in re.finditer(r"^estimate (\S+): ([\d.]+) min", plan.read_text(), re.M)
    }
    measured: dict[str, float] = defaultdict(float)
    for line in times.read_text().splitlines():
        row = json.loads(line)
        measured[row["job"].split("[")[0]] += row["wall_s"]
    print("| job | plan s | measured s | measured / plan |\n|---|---|---|---|")
    for job, est in estimate.items():
        print(f"| {job} | {est:.0f} | {measured[job]:.0f} | {measured[job] / est:.2f} |")
    est_sum = sum(estimate.values())
    got = sum(measured[j] for j in estimate)
    print(f"| GPU jobs | {est_sum:.0f} | {got:.0f} | {got / est_sum:.2f} |")
    others = {j: s for j, s in measured.items() if j not in estimate}
    print(f"\nnot estimated (CPU jobs): {json.dumps(others)}")
    print(f"estimate is {100 * (est_sum - got) / got:+.1f} % of the measured GPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))

"""Where a submitted plan stands: its runs' progress on disk and its jobs' states in Slurm.

Read-only. Progress comes from the run dirs (epoch checkpoints, train_log, prediction shards,
the report); job states from ``sacct`` where the site keeps accounting, else from
``scontrol show job`` (which knows jobs until the controller forgets them, MinJobAge).
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from pronlora.core.layout import JOB_TIMES, RunDir, read_json_file
from pronlora.launch.submission import read_submission

FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "BOOT_FAIL", "DEADLINE"}
_FIELD = re.compile(r"(\w+)=(\S*)")


def _seconds(text: str) -> int:
    """Slurm's [D-]HH:MM:SS (or MM:SS) as seconds."""
    days, _, hms = text.rpartition("-")
    parts = [int(p) for p in hms.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _gpus(tres: str) -> int:
    m = re.search(r"gres/gpu(?::[^=,]+)?=(\d+)", tres)
    return int(m.group(1)) if m else 0


def _from_sacct(ids: list[str]) -> list[dict[str, Any]] | None:
    fields = "JobID,JobName,State,ExitCode,ElapsedRaw,AllocTRES"
    proc = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", ",".join(ids), f"--format={fields}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return None  # no accounting on this site: scontrol instead
    rows = []
    for line in proc.stdout.splitlines():
        job_id, name, state, code, elapsed, tres = (line.split("|") + [""] * 6)[:6]
        rows.append(
            {
                "job_id": job_id,
                "name": name,
                "state": state.split()[0] if state else "UNKNOWN",
                "exit_code": code,
                "elapsed_s": int(elapsed or 0),
                "gpus": _gpus(tres),
            }
        )
    return rows


def _from_scontrol(ids: list[str]) -> list[dict[str, Any]]:
    rows = []
    for job_id in ids:
        proc = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True
        )
        if proc.returncode != 0:
            rows.append(
                {
                    "job_id": job_id,
                    "state": "UNKNOWN",
                    "note": "the controller "
                    "no longer knows it (a site with accounting keeps it: sacct)",
                }
            )
            continue
        for line in proc.stdout.splitlines():
            f = dict(_FIELD.findall(line))
            task = f.get("ArrayTaskId")
            rows.append(
                {
                    "job_id": f"{f.get('ArrayJobId')}_{task}" if task else f.get("JobId", job_id),
                    "name": f.get("JobName", ""),
                    "state": f.get("JobState", "UNKNOWN"),
                    "exit_code": f.get("ExitCode", ""),
                    "elapsed_s": _seconds(f.get("RunTime", "0:0")),
                    "gpus": _gpus(f.get("TRES", "") or f.get("AllocTRES", "")),
                    "log": f.get("StdOut"),
                }
            )
    return rows


def slurm_jobs(ids: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Every allocation (array tasks one by one) of the given job ids, and the source."""
    if not ids:
        return [], "none"
    if shutil.which("sacct"):
        rows = _from_sacct(ids)
        if rows is not None:
            return rows, "sacct"
    if shutil.which("scontrol"):
        return _from_scontrol(ids), "scontrol"
    return [{"job_id": i, "state": "UNKNOWN", "note": "no Slurm here"} for i in ids], "none"


def _log_path(pattern: str, row: dict[str, Any]) -> str:
    base, _, task = row["job_id"].partition("_")
    return (
        pattern.replace("%x", row.get("name") or "")
        .replace("%A", base)
        .replace("%a", task)
        .replace("%j", row["job_id"])
    )


def local_jobs(root: Path, jobs: list[dict[str, Any]], ids: dict[str, str]) -> list[dict[str, Any]]:
    """The local executor's finished jobs (it records a job's wall time once it succeeded)."""
    path = root / JOB_TIMES
    gpus = {j["key"]: j["nodes"] * j["procs_per_node"] if j["gpu"] else 0 for j in jobs}
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        done = json.loads(line)
        key = done["job"].split("[")[0]
        rows.append(
            {
                "key": key,
                "job_id": done["job"].replace(key, ids.get(key, "local"), 1),
                "state": "COMPLETED",
                "elapsed_s": done["wall_s"],
                "gpus": gpus.get(key, 0),
            }
        )
    return rows


def run_progress(run_dir: Path, epochs: int, evaluate: list[str], shards: int) -> dict[str, Any]:
    run = RunDir(run_dir)
    steps = [e for e in run.read_train_log() if "loss" in e]
    states = sorted(
        run.trainer.glob("checkpoint-*/trainer_state.json"), key=lambda p: p.stat().st_mtime
    )
    total = read_json_file(states[-1]).get("max_steps") if states else None
    out: dict[str, Any] = {
        "run_dir": str(run.root),
        "epochs_done": len(run.epoch_checkpoints()),
        "epochs": epochs,
        "training_done": run.done_json.is_file(),
        "step": steps[-1]["step"] if steps else 0,
        "steps": total,
        "loss": steps[-1]["loss"] if steps else None,
        "time_left_s": None,
    }
    gaps = [
        (b["time_s"] - a["time_s"]) / (b["step"] - a["step"])
        for a, b in itertools.pairwise(steps)
        if b["step"] > a["step"] and b["time_s"] > a["time_s"]
    ]
    if gaps and total and not out["training_done"]:
        out["time_left_s"] = round(statistics.median(gaps[-5:]) * (total - out["step"]))
    inference = {}
    for ckpt in evaluate:
        folder = run.predictions(ckpt)
        done = len(list(folder.glob(f"shard-*-of-{shards}.done.json")))
        answers = sum(
            len(p.read_text().splitlines()) for p in folder.glob(f"shard-*-of-{shards}.jsonl")
        )
        inference[ckpt] = {"shards_done": done, "shards": shards, "answers": answers}
    out["inference"] = inference
    return out


def grid_status(root: Path) -> dict[str, Any]:
    plan, ids = read_submission(root)
    runs = {
        r["name"]: run_progress(Path(r["run_dir"]), r["epochs"], r["evaluate"], plan["shards"])
        for r in plan["runs"]
    }
    report = Path(plan["report_dir"]) / "report.md"
    slurm = plan["backend"] in ("sbatch", "slurm")
    rows, source = slurm_jobs(list(ids.values()) if slurm else [])
    by_base: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_base.setdefault(row["job_id"].split("_")[0], []).append(row)
    if not slurm:
        rows, source = local_jobs(root, plan["jobs"], ids), JOB_TIMES
    jobs = []
    for job in plan["jobs"]:
        job_id = ids.get(job["key"])
        allocs = (
            by_base.get(job_id or "", []) if slurm else [r for r in rows if r["key"] == job["key"]]
        )
        for a in allocs:
            if a["state"] in FAILED and not a.get("log"):
                a["log"] = _log_path(job["log"], a)
        jobs.append({"key": job["key"], "job_id": job_id, "allocations": allocs})
    used = sum(r.get("elapsed_s", 0) * r.get("gpus", 0) for r in rows) / 3600
    estimate = plan.get("estimate_s") or {}
    known = [s for s in estimate.values() if s is not None]
    return {
        "dir": str(root),
        "backend": plan["backend"],
        "submitted_at": plan["submitted_at"],
        "runs": runs,
        "collect": "written" if report.is_file() else "not yet",
        "report": str(report),
        "jobs": jobs,
        "job_states_from": source,
        "gpu_hours_used": round(used, 3),
        "gpu_hours_estimated": round(sum(known) / 3600, 3) if known else None,
        "resume_command": shlex.join(plan["command"]),
    }


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f} min"


def describe(status: dict[str, Any]) -> str:
    lines = [f"{status['dir']}: submitted {status['submitted_at']} ({status['backend']})"]
    for name, r in status["runs"].items():
        if r["training_done"]:
            train = "training done"
        elif not r["step"]:
            train = "training not started"
        else:
            left = _minutes(r["time_left_s"])
            train = f"step {r['step']} of {r['steps'] or '?'}, about {left} left"
        loss = f", last loss {r['loss']:.4g}" if r["loss"] is not None else ""
        lines.append(
            f"run {name}: {r['epochs_done']} of {r['epochs'] or '?'} epochs, {train}{loss}"
        )
        for ckpt, i in r["inference"].items():
            lines.append(
                f"  infer {ckpt}: {i['shards_done']} of {i['shards']} shard(s) done, "
                f"{i['answers']} answers written"
            )
    lines.append(f"collect: {status['collect']} ({status['report']})")
    lines.append(f"jobs (states from {status['job_states_from']}):")
    failed = []
    for job in status["jobs"]:
        if not job["allocations"]:
            lines.append(f"  {job['key']}: {job['job_id'] or 'not submitted'}")
        for a in job["allocations"]:
            extra = (
                f", exit {a['exit_code']}" if a.get("exit_code") not in (None, "", "0:0") else ""
            )
            note = f" ({a['note']})" if a.get("note") else ""
            lines.append(
                f"  {job['key']}: {a['job_id']} {a['state']}, "
                f"{_minutes(a.get('elapsed_s', 0))}{extra}{note}"
            )
            if a["state"] in FAILED:
                failed.append(f"  {job['key']} ({a['job_id']}): {a.get('log') or 'no log path'}")
    if failed:
        lines += ["failed, logs:", *failed, f"resume: {status['resume_command']}"]
    est = status["gpu_hours_estimated"]
    lines.append(
        f"GPU-hours: {status['gpu_hours_used']:.3f} used"
        + (f" of {est:.3f} estimated" if est is not None else " (no estimate)")
    )
    return "\n".join(lines)

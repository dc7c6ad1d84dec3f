#!/usr/bin/env python3
"""How far a clip's audio embedding, and the answers, move with the way inference is batched.

  python bench/batch_invariance.py embeddings --run-dir R --checkpoint epoch-1 --prepared P
  python bench/batch_invariance.py answers --prepared P NAME=PRED_DIR [NAME=PRED_DIR ...]

``embeddings``: every test clip embedded alone (the model card's one-clip decode) and then as
the inference stage's encoder batches would hold it: its group of the split (today), the same
group stacked twice (same padding, twice the rows: bf16 kernels alone), and the length-sorted
decode batches of 256 and of 8 the stage embedded in before (issue 24). Prints, per grouping,
the clips' relative L2 distance to the clip embedded alone, and writes them as JSON (--out).

``answers``: the share of identical answers (all, APA, MDD) between each two prediction dirs of
the same instances (``predictions/<checkpoint>`` of runs decoded differently).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from pronlora.core.atomic import read_jsonl
from pronlora.core.layout import PreparedDir, RunDir
from pronlora.infer.batching import generation_batches, generation_collator
from pronlora.infer.models import device, ensure_run, load_for_inference
from pronlora.model.audio_cache import AudioEmbeddingCache, clip_groups


def embed(loaded: Any, cfg: Any, groups: list[list[str]]) -> dict[str, torch.Tensor]:
    cache = AudioEmbeddingCache({})
    cache.add(loaded.model, groups, generation_collator(loaded, cfg), device(), nullcontext())
    return {c: e.float().cpu() for c, e in cache.embeds.items()}


def distances(a: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, Any]:
    d = [float((a[c] - ref[c]).norm() / ref[c].norm()) for c in ref]
    d.sort()
    return {
        "clips": len(d),
        "bitwise_equal": sum(torch.equal(a[c], ref[c]) for c in ref),
        "rel_l2_median": statistics.median(d),
        "rel_l2_p95": d[int(0.95 * (len(d) - 1))],
        "rel_l2_max": d[-1],
    }


def cmd_embeddings(args: argparse.Namespace) -> dict[str, Any]:
    run = Path(args.run_dir).resolve()
    spec = ensure_run(run, None, None)
    rows = PreparedDir(Path(args.prepared).resolve()).load_split("test")
    loaded = load_for_inference(spec, RunDir(run).checkpoint(args.checkpoint))
    clips = sorted({r["audio"] for r in rows})
    groups = clip_groups(rows)
    # the earlier stage's encoder batches were its decode batches: per task, length-sorted
    apa = [r for r in rows if r["task"] == "APA"]
    runs = {
        "alone": embed(loaded, spec.cfg, [[c] for c in clips]),
        "split group (now)": embed(loaded, spec.cfg, groups),
        "split group, again": embed(loaded, spec.cfg, groups),
        "split group stacked twice": embed(loaded, spec.cfg, [g + g for g in groups]),
    }
    for size in (256, 8):
        batches = [[r["audio"] for r in b] for b in generation_batches(apa, size)]
        runs[f"decode batches of {size} (before)"] = embed(loaded, spec.cfg, batches)
    ref = runs["alone"]
    out: dict[str, Any] = {"clips": len(clips), "group_size": len(groups[0]), "vs_alone": {}}
    for name, emb in runs.items():
        out["vs_alone"][name] = distances(emb, ref)
    out["pairs"] = {
        "split group vs split group, again": distances(
            runs["split group, again"], runs["split group (now)"]
        ),
        "split group vs stacked twice (bf16 kernels only)": distances(
            runs["split group stacked twice"], runs["split group (now)"]
        ),
        "decode batches 8 vs 256 (before)": distances(
            runs["decode batches of 8 (before)"], runs["decode batches of 256 (before)"]
        ),
    }
    return out


def predictions(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for f in sorted(path.glob("shard-*.jsonl")):
        for r in read_jsonl(f):
            out[r["id"]] = r
    return out


def cmd_answers(args: argparse.Namespace) -> dict[str, Any]:
    runs = dict(item.split("=", 1) for item in args.runs)
    preds = {name: predictions(Path(p)) for name, p in runs.items()}
    out: dict[str, Any] = {}
    for a, b in itertools.combinations(preds, 2):
        pa, pb = preds[a], preds[b]
        if pa.keys() != pb.keys():  # decodes of different test sets
            continue
        pair: dict[str, Any] = {}
        for task in ("all", "APA", "MDD"):
            ids = [i for i in pa if task == "all" or pa[i]["task"] == task]
            same = sum(pa[i]["output"] == pb[i]["output"] for i in ids)
            pair[task] = {"identical": same, "of": len(ids), "share": round(same / len(ids), 4)}
        pair["examples"] = [
            (i, pa[i]["output"], pb[i]["output"])
            for i in sorted(pa)
            if pa[i]["output"] != pb[i]["output"]
        ][:3]
        out[f"{a} vs {b}"] = pair
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embeddings")
    e.add_argument("--run-dir", required=True)
    e.add_argument("--checkpoint", default="epoch-1")
    e.add_argument("--prepared", required=True)
    a = sub.add_parser("answers")
    a.add_argument("runs", nargs="+", help="NAME=predictions dir")
    for p in (e, a):
        p.add_argument("--out", help="also write the result as JSON here")
    args = ap.parse_args()
    result = cmd_embeddings(args) if args.cmd == "embeddings" else cmd_answers(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The collector stage: prediction files of many runs -> one metrics entry per checkpoint.

Finds every ``predictions/<checkpoint>/`` under the given run dirs, checks that each test id
appears exactly once per checkpoint, and scores it with ``pronlora.collect.metrics``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pronlora.collect.metrics import (
    EditCounts,
    MDDCounts,
    correlation,
    edit_counts,
    match_rates,
    normalise_words,
    phone_match_counts,
    recognised_phones,
)
from pronlora.collect.uncertainty import BOOT_METRICS, Bootstrap, Samples, interval
from pronlora.core.atomic import read_jsonl
from pronlora.core.errors import DataError
from pronlora.core.layout import CHECKPOINT_META, PreparedDir, RunDir
from pronlora.core.parse import parse_answer
from pronlora.core.phones import transcript_phones
from pronlora.core.protocol import APA_ASPECTS, MDD_FIELDS, SCORE_RANGE, Task
from pronlora.model.snapshot import RANDOM_WEIGHTS_MARKER

METRIC_KEYS = (
    *(f"{a}_pcc" for a in APA_ASPECTS),
    *(f"{a}_pcc_p" for a in APA_ASPECTS),
    *(f"{a}_spearman" for a in APA_ASPECTS),
    *(f"{a}_mse" for a in APA_ASPECTS),
    "wer",
    "per",
    "mdd_precision",
    "mdd_recall",
    "mdd_f1",
    "mdd_far",
    "mdd_frr",
    "mdd_der",
    "phone_match_precision",
    "phone_match_recall",
    "phone_match_f1",
    "per_acc_pcc_human",
    "per_acc_pcc_pred",
    "n_apa",
    "n_mdd",
    "apa_parse_failures",
    "mdd_parse_failures",
)


class CoverageError(DataError, ValueError):
    pass


UNRECORDED = {"recorded": False}  # shards of a pronlora older than the record


def shard_summaries(pred_dir: Path) -> dict[Path, dict[str, Any]]:
    """The checkpoint's shard summaries (``*.done.json``), read once for every check."""
    found = {}
    for done in sorted(pred_dir.glob("shard-*.done.json")):
        summary = _read_json(done)
        if summary is None:
            raise DataError(f"{done}: unreadable shard summary; rerun that shard's inference")
        found[done] = summary
    return found


def decoding_of(pred_dir: Path, summaries: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    """The decoding settings the checkpoint's shards record, one for all."""
    found = {done.name: s.get("decoding", UNRECORDED) for done, s in summaries.items()}
    if len({json.dumps(d, sort_keys=True) for d in found.values()}) > 1:
        raise DataError(
            f"{pred_dir}: its shards were decoded under different settings "
            f"({'; '.join(f'{n}: {d}' for n, d in found.items())}); delete the shards "
            "decoded under the wrong ones and rerun them"
        )
    return next(iter(found.values()), UNRECORDED)


def check_predicted_from(summaries: dict[Path, dict[str, Any]], data_hash: str) -> None:
    """The shards were decoded from these prepared data (as far as their summaries record)."""
    for done, summary in summaries.items():
        recorded = summary.get("prepared_content_hash")
        if recorded is not None and recorded != data_hash:
            raise DataError(
                f"{done}: decoded from prepared data of content hash {recorded[:12]}, not the "
                f"--prepared given to collect ({data_hash[:12]}); collect with the prepared dir "
                "the predictions were made from"
            )


def check_same_decoding(entries: list[Entry]) -> None:
    """One table holds checkpoints decoded alike: a setting that differs is named."""
    unrecorded = [
        f"{e.run}/{e.checkpoint}" for e in entries if e.provenance["decoding"] == UNRECORDED
    ]
    recorded = [e for e in entries if e.provenance["decoding"] != UNRECORDED]
    if unrecorded and recorded:
        raise DataError(
            f"{', '.join(unrecorded[:3])}: decoded by a pronlora that did not record its "
            "decoding settings, unlike the other checkpoints; delete its predictions and rerun "
            "its inference, or pass --allow-mixed-decoding"
        )
    keys = sorted({k for e in recorded for k in e.provenance["decoding"]})
    for key in keys:
        values: dict[str, list[str]] = {}
        for e in recorded:
            value = json.dumps(e.provenance["decoding"].get(key, "not recorded"))
            values.setdefault(value, []).append(f"{e.run}/{e.checkpoint}")
        if len(values) > 1:
            which = "; ".join(f"{v} for {', '.join(c[:3])}" for v, c in values.items())
            raise DataError(
                f"checkpoints decoded under different settings: {key} is {which}. Decode them "
                "alike (the run's infer.* keys) or pass --allow-mixed-decoding to put them in "
                "one table anyway (the report then lists each one's settings)"
            )


@dataclass
class Entry:
    run: str
    label: str
    checkpoint: str
    epoch: int
    strategy: str
    partial: bool
    metrics: dict[str, float]
    provenance: dict[str, Any]
    confusion: Counter = field(default_factory=Counter, repr=False)
    apa_pairs: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict, repr=False)
    per_vs_acc: list[tuple[float, float, float]] = field(default_factory=list, repr=False)
    # resampled values of each BOOT_METRICS key (same resamples for every entry)
    boot: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    apa_failed: list[bool] = field(default_factory=list, repr=False)

    def interval(self, key: str) -> tuple[float, float] | None:
        return interval(self.boot[key]) if key in self.boot else None

    def as_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "label": self.label,
            "checkpoint": self.checkpoint,
            "epoch": self.epoch,
            "strategy": self.strategy,
            "partial": self.partial,
            **{k: _clean(self.metrics[k]) for k in METRIC_KEYS},
            "ci95": {k: self.interval(k) for k in BOOT_METRICS},
            "provenance": self.provenance,
        }


def _clean(value: float) -> float | int | None:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def epoch_of(checkpoint: str) -> int:
    m = re.fullmatch(r"epoch-(\d+)", checkpoint)
    return int(m.group(1)) if m else 0


def read_predictions(
    pred_dir: Path, expected: set[str], allow_partial: bool
) -> tuple[dict[str, dict], bool]:
    """All shard lines of one checkpoint, checked for coverage; returns (by id, partial)."""
    seen: dict[str, dict] = {}
    where: dict[str, str] = {}
    duplicates: list[str] = []
    for path in sorted(pred_dir.glob("shard-*.jsonl")):
        for n, row in enumerate(read_jsonl(path), 1):
            if not isinstance(row.get("id"), str):
                raise CoverageError(f"{path}:{n}: a prediction line without an id")
            if row["id"] in seen:
                duplicates.append(f"{row['id']} ({where[row['id']]} and {path.name}:{n})")
            seen[row["id"]] = row
            where[row["id"]] = f"{path.name}:{n}"
    unknown = sorted(set(seen) - expected)
    missing = sorted(expected - set(seen))
    problems = []
    if duplicates:
        problems.append(
            f"ids written twice: {', '.join(duplicates[:5])}"
            f"{' ...' if len(duplicates) > 5 else ''} (shards of different --num-shards, or two "
            "writers: delete the shard files of this checkpoint and rerun its inference)"
        )
    if unknown:
        problems.append(
            f"ids not in the test set: {', '.join(unknown[:5])} (predictions of another "
            "prepared dir? rerun inference with this --prepared)"
        )
    if missing and not allow_partial:
        problems.append(
            f"{len(missing)} missing ids: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (finish the inference, or use "
            "--allow-partial to collect the ids present)"
        )
    if problems:
        raise CoverageError(f"{pred_dir}: " + "; ".join(problems))
    return seen, bool(missing)


def apa_fallback(train_rows: list[dict[str, Any]]) -> dict[str, float]:
    """Training-set mean per aspect: the no-information prediction used for failed answers."""
    apa = [r["scores"] for r in train_rows if r["task"] == Task.APA]
    if not apa:
        return {a: sum(SCORE_RANGE) / 2 for a in APA_ASPECTS}
    return {a: float(np.mean([s[a] for s in apa])) for a in APA_ASPECTS}


def score_checkpoint(
    test: dict[str, dict], preds: dict[str, dict], fallback: dict[str, float]
) -> tuple[dict[str, float], Counter, dict, list, Samples]:
    metrics: dict[str, float] = {}
    samples = Samples()
    apa_rows = [r for r in test.values() if r["task"] == Task.APA and r["id"] in preds]
    mdd_rows = [r for r in test.values() if r["task"] == Task.MDD and r["id"] in preds]
    pred_acc: dict[str, float] = {}
    apa_failures = 0
    apa_pairs: dict[str, tuple[list[float], list[float]]] = {a: ([], []) for a in APA_ASPECTS}
    for row in apa_rows:
        samples.apa_speakers.append(row["speaker"])
        p = preds[row["id"]]
        parsed, error = parse_answer(Task.APA, p.get("output", ""))
        failed = error is not None
        apa_failures += failed
        samples.apa_failed.append(failed)
        for a in APA_ASPECTS:
            value = fallback[a] if failed else float(parsed[a])
            apa_pairs[a][0].append(value)
            apa_pairs[a][1].append(float(row["scores"][a]))
        pred_acc[row["utt_id"]] = fallback["accuracy"] if failed else float(parsed["accuracy"])
    for a in APA_ASPECTS:
        c = correlation(*apa_pairs[a])
        metrics.update(
            {
                f"{a}_pcc": c["pcc"],
                f"{a}_pcc_p": c["pcc_p"],
                f"{a}_spearman": c["spearman"],
                f"{a}_mse": c["mse"],
            }
        )

    samples.apa = apa_pairs
    mdd_failures = 0
    word_total, phone_total = EditCounts(), EditCounts()
    counts = MDDCounts()
    per_vs_acc = []
    stats = samples.mdd
    for row in mdd_rows:
        samples.mdd_speakers.append(row["speaker"])
        parsed, error = parse_answer(Task.MDD, preds[row["id"]].get("output", ""))
        if error is not None:
            mdd_failures += 1
            parsed = {MDD_FIELDS[0]: "", MDD_FIELDS[1]: ""}
        ref_words = normalise_words(row["text"]).split()
        words = edit_counts(ref_words, normalise_words(parsed[MDD_FIELDS[0]]).split())
        perceived = transcript_phones(row["perceived_phones"])
        recognised = recognised_phones(parsed[MDD_FIELDS[1]])
        phones = edit_counts(perceived, recognised)
        word_total.add(words)
        phone_total.add(phones)
        utt = MDDCounts()
        utt.add(row["canonical_phones"], row["perceived_phones"], recognised)
        counts.merge(utt)
        hits, n_hyp, n_ref = phone_match_counts(perceived, recognised)
        for key, value in (
            ("word_err", words.errors),
            ("word_n", words.reference_length),
            ("phone_err", phones.errors),
            ("phone_n", phones.reference_length),
            ("ta", utt.ta),
            ("fr", utt.fr),
            ("fa", utt.fa),
            ("cd", utt.cd),
            ("de", utt.de),
            ("pm_hits", hits),
            ("pm_hyp", n_hyp),
            ("pm_ref", n_ref),
        ):
            stats[key].append(value)
        utt_per = phones.rate
        human_acc = float(row["scores"]["accuracy"])
        per_vs_acc.append((utt_per, human_acc, pred_acc.get(row["utt_id"], math.nan)))
    metrics["wer"] = word_total.rate
    metrics["per"] = phone_total.rate
    metrics.update({f"mdd_{k}": v for k, v in counts.rates().items()})
    totals = (sum(stats[k]) for k in ("pm_hits", "pm_hyp", "pm_ref"))
    metrics.update({f"phone_match_{k}": v for k, v in match_rates(*totals).items()})
    finite = [(u, h, p) for u, h, p in per_vs_acc if not math.isnan(u)]
    metrics["per_acc_pcc_human"] = correlation(
        [u for u, _, _ in finite], [h for _, h, _ in finite]
    )["pcc"]
    with_pred = [(u, p) for u, _, p in finite if not math.isnan(p)]
    metrics["per_acc_pcc_pred"] = correlation([u for u, _ in with_pred], [p for _, p in with_pred])[
        "pcc"
    ]
    metrics.update(
        n_apa=len(apa_rows),
        n_mdd=len(mdd_rows),
        apa_parse_failures=apa_failures,
        mdd_parse_failures=mdd_failures,
    )
    return metrics, counts.confusion, apa_pairs, per_vs_acc, samples


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_label(run_dir: Path) -> tuple[str, str, dict[str, Any]]:
    """(label, strategy, provenance); a run dir without run.json is labelled by its name."""
    run = _read_json(RunDir(run_dir).run_json)
    versions = _read_json(RunDir(run_dir).versions_json)
    if run is None:
        return run_dir.name, "unknown", {"config": None, "note": "no run.json: labelled by folder"}
    cfg = run["config"]
    model = Path(run["model"])
    random_weights = (model / RANDOM_WEIGHTS_MARKER).is_file()
    prov = {
        "config": cfg,
        "model": str(model),
        "random_weights": random_weights,
        "data_content_hash": run.get("data_content_hash"),
        "versions": versions,
    }
    return f"{run_dir.name} ({cfg.get('name')})", cfg.get("strategy", "unknown"), prov


def collect(
    prepared: Path,
    runs: list[Path],
    allow_partial: bool = False,
    allow_mixed_decoding: bool = False,
) -> list[Entry]:
    prep = PreparedDir(prepared)
    if not prep.split_path("test").is_file():
        raise DataError(f"--prepared {prep.root}: no test.jsonl (run jobs/prep.py first)")
    test_rows = read_jsonl(prep.split_path("test"))
    data_hash = prep.verified_hash()
    test = {r["id"]: r for r in test_rows}
    speakers = sorted({r["speaker"] for r in test_rows})
    train_path = prep.split_path("train")
    fallback = apa_fallback(read_jsonl(train_path) if train_path.is_file() else [])
    entries = []
    for run_dir in runs:
        run = RunDir(run_dir)
        run_dir = run.root
        pred_dirs = run.prediction_checkpoints()
        if not pred_dirs:
            raise CoverageError(f"{run_dir}: no predictions/ folder (run jobs/infer.py first)")
        label, strategy, prov = run_label(run_dir)
        for pred_dir in pred_dirs:
            summaries = shard_summaries(pred_dir)
            check_predicted_from(summaries, data_hash)
            preds, partial = read_predictions(pred_dir, set(test), allow_partial)
            metrics, confusion, apa_pairs, per_vs_acc, samples = score_checkpoint(
                test, preds, fallback
            )
            boot = Bootstrap(samples.apa_speakers, samples.mdd_speakers, speakers).metrics(samples)
            meta = _read_json(run.checkpoint(pred_dir.name) / CHECKPOINT_META)
            entries.append(
                Entry(
                    run=run_dir.name,
                    label=label,
                    checkpoint=pred_dir.name,
                    epoch=epoch_of(pred_dir.name),
                    strategy=strategy,
                    partial=partial,
                    metrics=metrics,
                    provenance={
                        **prov,
                        "checkpoint_meta": meta,
                        "apa_fallback": fallback,
                        "decoding": decoding_of(pred_dir, summaries),
                    },
                    confusion=confusion,
                    apa_pairs=apa_pairs,
                    per_vs_acc=per_vs_acc,
                    boot=boot,
                    apa_failed=samples.apa_failed,
                )
            )
    entries.sort(key=lambda e: (e.run, e.epoch, e.checkpoint))
    if not allow_mixed_decoding:
        check_same_decoding(entries)
    return entries

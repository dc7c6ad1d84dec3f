"""Table 3 in the paper's layout (markdown, LaTeX, CSV): cells with intervals, marks, notes.

A cell is ``value [lo, hi]`` with marks worked out from the bootstrap (see ``_cells``); a value
with no result to rank (undefined or degenerate) carries a numbered note saying why.
"""

from __future__ import annotations

import csv
import io
import math

from pronlora.collect.paper import TABLE3
from pronlora.collect.stage import METRIC_KEYS, Entry
from pronlora.collect.uncertainty import BOOT_METRICS, differs, mean_sd, paired_difference

# Table 3 columns: (header, metrics key, higher is better)
COLUMNS: list[tuple[str, str, bool]] = [
    ("Acc", "accuracy_pcc", True),
    ("Flu", "fluency_pcc", True),
    ("Pros", "prosodic_pcc", True),
    ("Total", "total_pcc", True),
    ("WER", "wer", False),
    ("PER", "per", False),
    ("F1", "mdd_f1", True),
    ("P", "mdd_precision", True),
    ("R", "mdd_recall", True),
]
NOT_SIGNIFICANT = "†"  # Pearson p >= 0.05
BEST = "*"
OFF_PAPER = "‡"  # the paper's value lies outside our 95 % interval
BETTER, WORSE = "↑", "↓"  # vs the previous epoch of the same run, paired bootstrap


def layers_label(e: Entry) -> str:
    if e.epoch == 0:
        return "no training"
    return {"lora": "LoRA", "unfreeze": "Unfreeze"}.get(e.strategy, e.strategy)


def fmt(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )


def undefined_reason(e: Entry, key: str) -> str | None:
    """Why ``key`` of ``e`` is undefined or degenerate (no result to rank), or None."""
    m = e.metrics
    if key.endswith("_pcc"):
        if m["n_apa"] == 0:
            return "no APA predictions"
        if m["apa_parse_failures"] == m["n_apa"]:
            return (
                "constant predictions: every APA answer failed to parse (each scored as the "
                "training mean)"
            )
        pred = e.apa_pairs.get(key[: -len("_pcc")], ([], []))[0]
        if pred and len(set(pred)) == 1:
            return "constant predictions: the model gave the same score to every utterance"
        if math.isnan(m[key]):
            return "undefined: the human scores are constant on this test set"
        return None
    if m["n_mdd"] == 0:
        return "no MDD predictions"
    if m["mdd_parse_failures"] == m["n_mdd"]:
        return "every MDD answer failed to parse (scored as empty transcripts)"
    if math.isnan(m[key]):
        return "undefined: 0/0 (no mispronunciation detected or annotated)"
    return None


def _best(entries: list[Entry]) -> dict[str, float]:
    best = {}
    for _, key, higher in COLUMNS:
        values = [
            e.metrics[key]
            for e in entries
            if not math.isnan(e.metrics[key]) and undefined_reason(e, key) is None
        ]
        if values:
            best[key] = max(values) if higher else min(values)
    return best


def _paper_row(e: Entry) -> tuple | None:
    return next((r for r in TABLE3 if r[0] == layers_label(e) and r[1] == e.epoch), None)


def _previous(e: Entry, entries: list[Entry]) -> Entry | None:
    earlier = [x for x in entries if x.run == e.run and x.epoch < e.epoch and x.boot]
    return max(earlier, key=lambda x: x.epoch) if earlier else None


class Notes:
    """Numbered reasons for n/a and degenerate cells, listed under the table."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def mark(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"[{self.reasons.index(reason) + 1}]"


def _cells(
    e: Entry, best: dict[str, float], entries: list[Entry], notes: Notes, with_ci: bool = True
) -> list[str]:
    cells = []
    paper = _paper_row(e)
    before = _previous(e, entries)
    for i, (_, key, higher) in enumerate(COLUMNS):
        v = e.metrics[key]
        reason = undefined_reason(e, key)
        text = fmt(v)
        ci = e.interval(key)
        if with_ci and ci:
            text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        if reason:  # shown, never ranked or compared: the note says why
            cells.append(f"{text} {notes.mark(reason)}")
            continue
        if key.endswith("_pcc"):
            p = e.metrics[f"{key}_p"]
            if not math.isnan(p) and p >= 0.05:
                text += NOT_SIGNIFICANT
        if paper is not None and ci and not ci[0] <= paper[2 + i] <= ci[1]:
            text += OFF_PAPER
        comparable = before is not None and key in e.boot and key in before.boot
        if (
            comparable
            and undefined_reason(before, key) is None
            and differs(e.boot[key], before.boot[key])
        ):
            text += BETTER if (v > before.metrics[key]) == higher else WORSE
        if key in best and v == best[key]:
            text += BEST
        cells.append(text)
    return cells


def _fails(e: Entry) -> str:
    m = e.metrics
    return f"{m['apa_parse_failures']}/{m['n_apa']}, {m['mdd_parse_failures']}/{m['n_mdd']}"


def table3_markdown(entries: list[Entry]) -> str:
    best = _best(entries)
    notes = Notes()
    head = (
        "| run | layers | ep | " + " | ".join(c for c, _, _ in COLUMNS) + " | parse fail APA/MDD |"
    )
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for e in entries:
        partial = " (partial)" if e.partial else ""
        lines.append(
            f"| {e.label}{partial} | {layers_label(e)} | {e.epoch} | "
            + " | ".join(_cells(e, best, entries, notes))
            + f" | {_fails(e)} |"
        )
    for row in TABLE3:
        lines.append(
            f"| paper (reference) | {row[0]} | {row[1]} | "
            + " | ".join(f"{v:g}" for v in row[2:])
            + " | |"
        )
    lines += [
        "",
        f"Cells: value [95 % interval, bootstrap over test speakers]. APA columns: Pearson r "
        f"with human scores ({NOT_SIGNIFICANT} p >= 0.05); WER/PER: corpus-level edit rates; "
        f"F1/P/R: hierarchical MDD protocol. {BEST} best of our rows with a defined, "
        f"non-degenerate value; {OFF_PAPER} the paper's value for this row lies outside our "
        f"interval; {BETTER}/{WORSE} better/worse than the run's previous epoch (paired "
        "bootstrap, 95 %). Failed answers count as wrong: APA as the training mean, MDD as "
        "an empty transcript (counts in the last column).",
    ]
    if notes.reasons:
        lines += [""] + [f"[{i}] n/a or degenerate: {r}" for i, r in enumerate(notes.reasons, 1)]
    lines += _seed_table(entries)
    return "\n".join(lines) + "\n"


def strategy_comparisons(entries: list[Entry]) -> list[str]:
    """Paired differences between runs of different strategies at the same epoch."""
    lines = []
    skipped: set[str] = set()
    pairs = 0
    by_epoch: dict[int, list[Entry]] = {}
    for e in entries:
        if e.epoch > 0 and e.boot:
            by_epoch.setdefault(e.epoch, []).append(e)
    for epoch, group in sorted(by_epoch.items()):
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a.strategy == b.strategy:
                    continue
                pairs += 1
                for header, key, _ in COLUMNS:
                    why = undefined_reason(a, key) or undefined_reason(b, key)
                    if why:
                        skipped.add(why)
                        continue
                    iv = paired_difference(a.boot[key], b.boot[key])
                    if iv is None:
                        continue
                    d = a.metrics[key] - b.metrics[key]
                    verdict = "differ" if iv[0] > 0 or iv[1] < 0 else "not distinguishable"
                    lines.append(
                        f"| {epoch} | {header} | {a.label} - {b.label} | {d:+.3f} "
                        f"[{iv[0]:+.3f}, {iv[1]:+.3f}] | {verdict} |"
                    )
    title = "## Strategies compared (paired bootstrap over test speakers)"
    if not lines:
        if not pairs:
            return []  # one strategy only: nothing to compare
        why = "; ".join(sorted(skipped)) or "no metric has a defined interval"
        return [title, "", f"No comparison to show: {why}.", ""]
    return [
        title,
        "",
        "| ep | metric | difference | value [95 %] | verdict |",
        "|---|---|---|---|---|",
        *lines,
        "",
    ]


def _seed_table(entries: list[Entry]) -> list[str]:
    """Mean +- sd over seeds where several runs share config, strategy and epoch."""
    groups: dict[tuple, list[Entry]] = {}
    for e in entries:
        cfg = e.provenance.get("config") or {}
        groups.setdefault((cfg.get("name"), layers_label(e), e.epoch), []).append(e)
    multi = {k: v for k, v in groups.items() if len(v) > 1 and k[2] > 0}
    if not multi:
        return []
    lines = [
        "",
        "Over seeds (mean +- sd of the seed runs' values):",
        "",
        "| config | layers | ep | seeds | " + " | ".join(c for c, _, _ in COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 4),
    ]
    for (name, layers, epoch), group in sorted(multi.items(), key=lambda kv: kv[0][1:]):
        cells = []
        for _, key, _ in COLUMNS:
            ms = mean_sd([g.metrics[key] for g in group if undefined_reason(g, key) is None])
            cells.append(f"{ms[0]:.3f} +- {ms[1]:.3f}" if ms else "n/a")
        lines.append(f"| {name} | {layers} | {epoch} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


def _tex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def table3_latex(entries: list[Entry]) -> str:
    best = _best(entries)
    cols = "lll" + "r" * len(COLUMNS)
    out = [
        r"\begin{tabular}{" + cols + "}",
        r"\toprule",
        "Run & Layers & Ep & " + " & ".join(c for c, _, _ in COLUMNS) + r" \\",
        r"\midrule",
    ]
    notes = Notes()
    for e in entries:
        cells = []
        for text in _cells(e, best, entries, notes):
            bold = text.endswith(BEST)
            text = text.rstrip(BEST).replace(NOT_SIGNIFICANT, r"$^\dagger$")
            text = text.replace(OFF_PAPER, r"$^\ddagger$").replace(BETTER, r"$\uparrow$")
            text = text.replace(WORSE, r"$\downarrow$")
            cells.append(r"\textbf{" + text + "}" if bold else text)
        out.append(
            f"{_tex_escape(e.label)} & {layers_label(e)} & {e.epoch} & "
            + " & ".join(cells)
            + r" \\"
        )
    out.append(r"\midrule")
    for row in TABLE3:
        out.append(
            f"Paper & {row[0]} & {row[1]} & " + " & ".join(f"{v:g}" for v in row[2:]) + r" \\"
        )
    out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


def table3_csv(entries: list[Entry]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    ci_cols = [f"{k}_ci{side}" for k in BOOT_METRICS for side in ("_lo", "_hi")]
    w.writerow(["run", "checkpoint", "layers", "epoch", "partial", *METRIC_KEYS, *ci_cols])
    for e in entries:
        w.writerow(
            [
                e.run,
                e.checkpoint,
                layers_label(e),
                e.epoch,
                e.partial,
                *(
                    ""
                    if isinstance(e.metrics[k], float) and math.isnan(e.metrics[k])
                    else repr(e.metrics[k])
                    for k in METRIC_KEYS
                ),
                *(
                    "" if e.interval(k) is None else repr(e.interval(k)[side])
                    for k in BOOT_METRICS
                    for side in (0, 1)
                ),
            ]
        )
    return buf.getvalue()

"""Collector outputs: metrics.json, Table 3 (md/tex/csv), plots and report.md.

Everything is a pure function of the collected entries, written in a fixed order with fixed
formatting and no timestamps, so rerunning over the same inputs gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from pronlora.collect.paper import FIG5_PER_ACC_PCC, TABLE3
from pronlora.collect.stage import METRIC_KEYS, Entry
from pronlora.collect.uncertainty import BOOT_METRICS, differs, mean_sd, paired_difference
from pronlora.core.atomic import write_bytes, write_json, write_text
from pronlora.core.errors import DataError
from pronlora.core.layout import PreparedDir
from pronlora.core.protocol import APA_ASPECTS

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


def _fmt(value: float | None) -> str:
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
        text = _fmt(v)
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
    by_epoch: dict[int, list[Entry]] = {}
    for e in entries:
        if e.epoch > 0 and e.boot:
            by_epoch.setdefault(e.epoch, []).append(e)
    for epoch, group in sorted(by_epoch.items()):
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a.strategy == b.strategy:
                    continue
                for header, key, _ in COLUMNS:
                    if undefined_reason(a, key) or undefined_reason(b, key):
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
    if not lines:
        return []
    return [
        "## Strategies compared (paired bootstrap over test speakers)",
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


# --- plots -----------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def plots(entries: list[Entry], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    last = {}
    for e in entries:  # the latest epoch of each run
        if e.run not in last or e.epoch >= last[e.run].epoch:
            last[e.run] = e

    for run, e in sorted(last.items()):
        fig, axes = plt.subplots(1, 4, figsize=(16, 4))
        failed = e.apa_failed or [False] * len(e.apa_pairs[APA_ASPECTS[0]][0])
        for ax, aspect in zip(axes, APA_ASPECTS, strict=True):
            pred, human = e.apa_pairs[aspect]
            ok = [(h, p) for h, p, f in zip(human, pred, failed, strict=True) if not f]
            fb = [(h, p) for h, p, f in zip(human, pred, failed, strict=True) if f]
            if ok:
                ax.scatter(*zip(*ok, strict=True), s=10, alpha=0.6, label="parsed answer")
            if fb:
                ax.scatter(
                    *zip(*fb, strict=True),
                    s=14,
                    marker="x",
                    color="tab:red",
                    alpha=0.6,
                    label="failed answer: training mean",
                )
                ax.legend(fontsize=6, loc="upper left")
            if not ok:
                ax.text(
                    5,
                    9.5,
                    "every answer failed to parse:\nno predicted score to show",
                    ha="center",
                    va="top",
                    fontsize=7,
                )
            ax.plot([0, 10], [0, 10], color="grey", lw=0.8)
            ax.set(
                xlim=(-0.5, 10.5),
                ylim=(-0.5, 10.5),
                xlabel="human",
                ylabel="predicted",
                title=f"{aspect}  r={_fmt(e.metrics[f'{aspect}_pcc'])}",
            )
        fig.suptitle(f"{e.label} {e.checkpoint}: predicted vs human scores")
        fig.tight_layout()
        name = f"scores_{run}.png"
        write_bytes(out / name, _png(fig))
        plt.close(fig)
        written.append(name)

        fig, ax = plt.subplots(figsize=(5, 4))
        per = [u for u, _, _ in e.per_vs_acc]
        ax.scatter(per, [h for _, h, _ in e.per_vs_acc], s=10, label="human accuracy")
        ax.scatter(
            per, [p for _, _, p in e.per_vs_acc], s=10, marker="x", label="predicted accuracy"
        )
        ax.set(
            xlabel="utterance PER",
            ylabel="accuracy",
            title=f"PER vs accuracy (r human {_fmt(e.metrics['per_acc_pcc_human'])}, "
            f"pred {_fmt(e.metrics['per_acc_pcc_pred'])}; paper {FIG5_PER_ACC_PCC['human']}, "
            f"{FIG5_PER_ACC_PCC['pred']})",
        )
        ax.title.set_fontsize(8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"per_vs_accuracy_{run}.png"
        write_bytes(out / name, _png(fig))
        plt.close(fig)
        written.append(name)

        pairs = e.confusion
        canon = sorted({c for c, _ in pairs})
        recog = sorted({r for _, r in pairs})
        grid = np.zeros((len(canon), len(recog)))
        for (c, r), n in pairs.items():
            grid[canon.index(c), recog.index(r)] = n
        grid = grid / np.maximum(grid.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(max(6, len(recog) * 0.25), max(5, len(canon) * 0.25)))
        im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(len(recog)), recog, rotation=90, fontsize=5)
        ax.set_yticks(range(len(canon)), canon, fontsize=6)
        ax.set(
            xlabel="recognised",
            ylabel="canonical",
            title=f"{e.label} {e.checkpoint}: canonical -> recognised (row-normalised)",
        )
        ax.title.set_fontsize(8)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        name = f"confusion_{run}.png"
        write_bytes(out / name, _png(fig))
        plt.close(fig)
        written.append(name)

    runs = sorted({e.run for e in entries})
    fig, axes = plt.subplots(3, 3, figsize=(12, 9))
    for i, (ax, (header, key, _)) in enumerate(zip(axes.flat, COLUMNS, strict=True)):
        drawn = 0
        reasons = set()
        for run in runs:
            pts = []
            for e in sorted((x for x in entries if x.run == run), key=lambda x: x.epoch):
                why = undefined_reason(e, key)
                if why:
                    reasons.add(why)
                    continue
                pts.append((e.epoch, e.metrics[key], e.interval(key)))
            if not pts:
                continue
            drawn += 1
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            line = ax.plot(xs, ys, marker="o", label=run)[0]
            cis = [(x, ci) for x, _, ci in pts if ci]
            if cis:
                ax.fill_between(
                    [x for x, _ in cis],
                    [c[0] for _, c in cis],
                    [c[1] for _, c in cis],
                    color=line.get_color(),
                    alpha=0.15,
                )
        for layers, style in (("LoRA", "--"), ("Unfreeze", ":")):
            ref = [(r[1], r[2 + i]) for r in TABLE3 if r[0] in (layers, "no training")]
            ax.plot(*zip(*ref, strict=True), style, color="grey", lw=1, label=f"paper {layers}")
        if not drawn:
            why = "; ".join(sorted(reasons)) or "no checkpoint"
            text = "nothing of ours to draw:\n" + "\n".join(textwrap.wrap(why, 38))
            ax.text(
                0.5,
                0.5,
                text,
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=6,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
            )
        ax.set(title=header, xlabel="epoch")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(
        "Metrics per epoch (epoch 0 = no training; bands: 95 % intervals; grey: the paper)"
    )
    fig.tight_layout()
    write_bytes(out / "epochs.png", _png(fig))
    plt.close(fig)
    written.append("epochs.png")
    return written


# --- report ----------------------------------------------------------------------------------
def report_markdown(entries: list[Entry], plot_files: list[str], synthetic: bool) -> str:
    random_weights = any(e.provenance.get("random_weights") for e in entries)
    lines = ["# pronlora evaluation report", ""]
    if random_weights or synthetic:
        lines += [
            "> **Meaningless numbers**: "
            + ("random-weight model " if random_weights else "")
            + ("on a synthetic corpus " if synthetic else "")
            + "- this report exercises the pipeline; it says nothing about the method.",
            "",
        ]
    lines += [
        "## Table 3",
        "",
        table3_markdown(entries).rstrip(),
        "",
        *strategy_comparisons(entries),
        "## Rules",
        "",
        "- APA: Pearson r (two-sided p), Spearman, MSE per aspect. A failed answer (not "
        "parsable, a score missing or outside 0-10) is scored with the training-set mean "
        "of that aspect (a no-information prediction): it counts as wrong, never as "
        "missing; the failure counts are in the last column.",
        "- WER: corpus-level (S+D+I)/N over words, upper-cased, punctuation removed "
        "(apostrophes inside words kept). PER: corpus-level edit rate of the recognised "
        "phones (stress digits and `*` stripped, `<DEL>` removed) against the perceived "
        "phones. A failed MDD answer is an empty transcript.",
        "- MDD (hierarchical): recognised phones aligned to canonical ones (Levenshtein); "
        "a recognised insertion joins the preceding canonical position. P = TR/(TR+FR), "
        "R = TR/(TR+FA), FAR = FA/(FA+TR), FRR = FR/(FR+TA), DER = DE/(CD+DE). The "
        "paper does not define its P/R/F1; `phone_match_*` in metrics.json is a "
        "sequence-match alternative (hits over recognised / perceived lengths).",
        "",
    ]
    if plot_files:
        lines += ["## Plots", ""] + [f"![{p}](<{p}>)" for p in plot_files] + [""]
    lines += decoding_section(entries)
    lines += ["## Runs", ""]
    seen = set()
    for e in entries:
        if e.run in seen:
            continue
        seen.add(e.run)
        prov = e.provenance
        cfg = prov.get("config") or {}
        versions = prov.get("versions") or {}
        lines += [
            f"### {e.label}",
            "",
            f"- config: `{cfg.get('name', 'unknown')}` (adapter {cfg.get('adapter')}, "
            f"strategy {cfg.get('strategy')}, quantization {cfg.get('quantization')}, "
            f"LoRA {cfg.get('lora')})",
            f"- model: `{prov.get('model')}`"
            + (" (random weights)" if prov.get("random_weights") else ""),
            f"- data content hash: `{prov.get('data_content_hash')}`",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v),
            "- checkpoints: "
            + ", ".join(
                f"{x.checkpoint}{' (partial)' if x.partial else ''}"
                for x in entries
                if x.run == e.run
            ),
            "",
        ]
    return "\n".join(lines) + "\n"


def decoding_section(entries: list[Entry]) -> list[str]:
    """The inference settings behind the table, once if every checkpoint shares them."""
    groups: dict[str, list[str]] = {}
    for e in entries:
        decoding = e.provenance.get("decoding") or {}
        text = ", ".join(f"{k} {v}" for k, v in decoding.items()) or "not recorded"
        groups.setdefault(text, []).append(f"{e.run}/{e.checkpoint}")
    lines = ["## Inference settings", ""]
    if len(groups) == 1:
        lines.append(f"- every checkpoint: {next(iter(groups))}")
    else:
        lines.append(
            "> **Checkpoints decoded under different settings** (--allow-mixed-decoding): "
            "compare their rows with care."
        )
        lines.append("")
        lines += [f"- {', '.join(c)}: {text}" for text, c in groups.items()]
    lines += [
        "",
        "Answers do not depend on the shard count or the number of GPUs: clips are embedded "
        "and instances decoded in batches fixed by the split. batch_size cuts those batches, "
        "and bf16 kernels round differently per batch shape, so it is a decoding setting "
        "(README, Stage 3).",
        "",
    ]
    return lines


def write_outputs(entries: list[Entry], out: Path, synthetic: bool) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", [e.as_json() for e in entries])
    write_text(out / "table3.md", table3_markdown(entries))
    write_text(out / "table3.tex", table3_latex(entries))
    write_text(out / "table3.csv", table3_csv(entries))
    plot_files = plots(entries, out) if entries else []
    write_text(out / "report.md", report_markdown(entries, plot_files, synthetic))
    return {"report": out / "report.md", "table": out / "table3.md"}


def collect_and_report(
    prepared: Path,
    runs: list[Path],
    out: Path,
    allow_partial: bool = False,
    allow_mixed_decoding: bool = False,
) -> dict[str, Path]:
    """The collect stage: score every run's predictions, write tables, plots and report.md."""
    from pronlora.collect.stage import collect

    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: an existing file, not a folder for the report")
    entries = collect(prepared, runs, allow_partial, allow_mixed_decoding)
    synthetic = bool(PreparedDir(prepared).manifest().get("synthetic"))
    return write_outputs(entries, out, synthetic=synthetic)

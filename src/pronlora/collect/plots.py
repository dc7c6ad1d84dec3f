"""The report's figures, one function each; every figure names its runs and checkpoints, and a
panel with nothing meaningful to draw says why in readable type instead of drawing."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from pronlora.collect.paper import FIG5_PER_ACC_PCC, TABLE3
from pronlora.collect.stage import Entry
from pronlora.collect.table3 import COLUMNS, fmt, undefined_reason
from pronlora.core.atomic import write_bytes
from pronlora.core.protocol import APA_ASPECTS

MESSAGE_PT = 10  # readable type for a panel that explains why it draws nothing
TICK_PT = 8


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _say(ax: Any, text: str, width: int = 40) -> None:
    """A panel's reason for drawing nothing, in words, instead of a misleading picture."""
    ax.text(
        0.5,
        0.5,
        "\n".join(textwrap.wrap(text, width)),
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=MESSAGE_PT,
        bbox={"facecolor": "white", "alpha": 0.9, "edgecolor": "grey"},
    )


def _every_mdd_failed(e: Entry) -> bool:
    return e.metrics["n_mdd"] > 0 and e.metrics["mdd_parse_failures"] == e.metrics["n_mdd"]


def _every_apa_failed(e: Entry) -> bool:
    return e.metrics["n_apa"] > 0 and e.metrics["apa_parse_failures"] == e.metrics["n_apa"]


def score_scatter(plt: Any, e: Entry) -> Any:
    """Predicted vs human score per APA aspect; failed answers (scored as the training mean)
    marked apart from parsed ones."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.5))
    failed = e.apa_failed or [False] * len(e.apa_pairs[APA_ASPECTS[0]][0])
    for ax, aspect in zip(axes, APA_ASPECTS, strict=True):
        pred, human = e.apa_pairs[aspect]
        ok = [(h, p) for h, p, f in zip(human, pred, failed, strict=True) if not f]
        fb = [(h, p) for h, p, f in zip(human, pred, failed, strict=True) if f]
        if ok:
            ax.scatter(*zip(*ok, strict=True), s=10, alpha=0.6, label="parsed answer")
        if fb and ok:
            ax.scatter(
                *zip(*fb, strict=True),
                s=14,
                marker="x",
                color="tab:red",
                alpha=0.6,
                label="failed answer: training mean",
            )
            ax.legend(fontsize=TICK_PT, loc="upper left")
        if not ok:
            _say(
                ax,
                f"every one of the {len(fb)} APA answers failed to parse: no predicted "
                "score to show (the table scores each as the training mean)",
                30,
            )
        ax.plot([0, 10], [0, 10], color="grey", lw=0.8)
        ax.set(
            xlim=(-0.5, 10.5),
            ylim=(-0.5, 10.5),
            xlabel="human",
            ylabel="predicted",
            title=f"{aspect}  r={fmt(e.metrics[f'{aspect}_pcc'])}",
        )
    fig.suptitle(f"run {e.label}, {e.checkpoint}: predicted vs human scores")
    fig.tight_layout()
    return fig


def per_vs_accuracy(plt: Any, e: Entry) -> Any:
    """Utterance PER against human and predicted accuracy (the paper's Fig. 5)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if _every_mdd_failed(e):
        _say(
            ax,
            "every MDD answer failed to parse, so every utterance's PER is 1.00: "
            "nothing to relate to accuracy",
        )
    elif _every_apa_failed(e):
        _say(ax, "every APA answer failed to parse: no predicted accuracy to relate to PER")
    else:
        per = [u for u, _, _ in e.per_vs_acc]
        ax.scatter(per, [h for _, h, _ in e.per_vs_acc], s=10, label="human accuracy")
        ax.scatter(
            per, [p for _, _, p in e.per_vs_acc], s=10, marker="x", label="predicted accuracy"
        )
        ax.legend(fontsize=TICK_PT)
    ax.set(xlabel="utterance PER", ylabel="accuracy")
    ax.set_title(
        f"run {e.label}, {e.checkpoint}: PER vs accuracy\n"
        f"r human {fmt(e.metrics['per_acc_pcc_human'])}, "
        f"predicted {fmt(e.metrics['per_acc_pcc_pred'])} "
        f"(paper: {FIG5_PER_ACC_PCC['human']}, {FIG5_PER_ACC_PCC['pred']})",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def confusion(plt: Any, e: Entry) -> Any:
    """Canonical -> recognised phone confusion, row-normalised."""
    title = f"run {e.label}, {e.checkpoint}: canonical -> recognised phones (row-normalised)"
    if _every_mdd_failed(e) or not e.confusion:
        fig, ax = plt.subplots(figsize=(7, 4))
        _say(
            ax,
            "every MDD answer failed to parse (scored as empty transcripts): every "
            "canonical phone counts as deleted, so a confusion matrix would show one "
            "<DEL> column, not what the model hears",
            50,
        )
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
        return fig
    canon = sorted({c for c, _ in e.confusion})
    recog = sorted({r for _, r in e.confusion})
    grid = np.zeros((len(canon), len(recog)))
    for (c, r), n in e.confusion.items():
        grid[canon.index(c), recog.index(r)] = n
    grid = grid / np.maximum(grid.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(7, len(recog) * 0.3), max(6, len(canon) * 0.3)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=1)
    ax.set_xticks(range(len(recog)), recog, rotation=90, fontsize=TICK_PT)
    ax.set_yticks(range(len(canon)), canon, fontsize=TICK_PT)
    ax.set(xlabel="recognised", ylabel="canonical")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def epoch_curves(plt: Any, entries: list[Entry]) -> Any:
    """Each Table 3 metric per epoch for every run, with interval bands and the paper's curves."""
    runs = sorted({e.run for e in entries})
    fig, axes = plt.subplots(3, 3, figsize=(13, 10))
    for i, (ax, (header, key, _)) in enumerate(zip(axes.flat, COLUMNS, strict=True)):
        drawn, reasons = 0, set()
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
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=run)[0]
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
            _say(
                ax,
                "none of our values to draw (only the paper's, grey): "
                + "; ".join(sorted(reasons) or ["no checkpoint"]),
                34,
            )
        ax.set(title=header, xlabel="epoch")
    axes.flat[0].legend(fontsize=TICK_PT)
    fig.suptitle(
        f"Metrics per epoch, runs {', '.join(runs)} (epoch 0 = no training; "
        "bands: 95 % intervals; grey: the paper)"
    )
    fig.tight_layout()
    return fig


def plots(entries: list[Entry], out: Path) -> list[str]:
    """Write every figure; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last: dict[str, Entry] = {}
    for e in entries:  # the latest epoch of each run
        if e.run not in last or e.epoch >= last[e.run].epoch:
            last[e.run] = e
    figures = []
    for run, e in sorted(last.items()):
        figures += [
            (f"scores_{run}.png", score_scatter(plt, e)),
            (f"per_vs_accuracy_{run}.png", per_vs_accuracy(plt, e)),
            (f"confusion_{run}.png", confusion(plt, e)),
        ]
    figures.append(("epochs.png", epoch_curves(plt, entries)))
    for name, fig in figures:
        write_bytes(out / name, _png(fig))
        plt.close(fig)
    return [name for name, _ in figures]

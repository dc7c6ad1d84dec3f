"""Collector outputs: metrics.json, Table 3 (md/tex/csv), plots and report.md.

Everything is a pure function of the collected entries, written in a fixed order with fixed
formatting and no timestamps, so rerunning over the same inputs gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from pronlora.collect.plots import plots
from pronlora.collect.stage import Entry
from pronlora.collect.table3 import (
    strategy_comparisons,
    table3_csv,
    table3_latex,
    table3_markdown,
)
from pronlora.collect.tensorboard import write_tensorboard
from pronlora.core.atomic import write_json, write_text
from pronlora.core.errors import DataError
from pronlora.core.layout import PreparedDir


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
    write_tensorboard(entries, out)
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

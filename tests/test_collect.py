"""The collector on prediction files built from the real mini test set with known perturbations."""

import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pronlora.collect.report import write_outputs
from pronlora.collect.stage import CoverageError, apa_fallback, collect
from pronlora.core.atomic import read_jsonl, write_jsonl
from pronlora.core.errors import DataError
from pronlora.core.phones import transcript_phones
from pronlora.core.protocol import format_apa_answer, format_mdd_answer
from pronlora.data.prep import prepare

from .conftest import REPO


@pytest.fixture(scope="module")
def mini_prepared(mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("kaldi", mini, tmp_path_factory.mktemp("mini") / "prepared").out


def _write_run(run: Path, rows: list[dict], checkpoint: str = "epoch-1", shards: int = 1) -> None:
    for s in range(shards):
        part = [r for i, r in enumerate(rows) if i % shards == s]
        write_jsonl(run / "predictions" / checkpoint / f"shard-{s}-of-{shards}.jsonl", part)


def _pred(row: dict, output: str) -> dict:
    return {
        "id": row["id"],
        "utt_id": row["utt_id"],
        "task": row["task"],
        "output": output,
        "parsed": None,
        "parse_error": None,
    }


def test_reference_answers_score_perfectly(mini_prepared: Path, tmp_path: Path) -> None:
    test = read_jsonl(mini_prepared / "test.jsonl")
    _write_run(tmp_path / "oracle", [_pred(r, r["target"]) for r in test], shards=2)
    [e] = collect(mini_prepared, [tmp_path / "oracle"])
    m = e.metrics
    for a in ("accuracy", "fluency", "prosodic", "total"):
        assert m[f"{a}_pcc"] == pytest.approx(1.0) and m[f"{a}_mse"] == 0
    assert m["wer"] == 0 and m["per"] == 0
    assert m["mdd_precision"] == 1 and m["mdd_recall"] == 1 and m["mdd_der"] == 0
    assert m["mdd_far"] == 0 and m["mdd_frr"] == 0
    assert (m["n_apa"], m["n_mdd"], m["apa_parse_failures"], m["mdd_parse_failures"]) == (
        60,
        60,
        0,
        0,
    )
    assert e.label == "oracle"  # no run.json: labelled by folder


def test_known_perturbations_give_the_implied_numbers(mini_prepared: Path, tmp_path: Path) -> None:
    test = read_jsonl(mini_prepared / "test.jsonl")
    mdd = [r for r in test if r["task"] == "MDD"]
    apa = [r for r in test if r["task"] == "APA"]
    n_phones = sum(len(transcript_phones(r["perceived_phones"])) for r in mdd)
    n_words = sum(len(r["text"].split()) for r in mdd)
    preds = []
    flipped = 0
    for i, r in enumerate(mdd):
        phones = transcript_phones(r["perceived_phones"])
        words = r["text"].split()
        if i < 10 and r["perceived_phones"][0] == r["canonical_phones"][0]:
            phones[0] = "ZH" if phones[0] != "ZH" else "SH"  # a correct phone heard as wrong: FR
            flipped += 1
        if i < 5:
            words[-1] = "XYZZY"  # one word substitution
        preds.append(_pred(r, format_mdd_answer(" ".join(words), " ".join(phones))))
    garbage = 7
    for i, r in enumerate(apa):
        preds.append(_pred(r, "I cannot rate this." if i < garbage else r["target"]))
    _write_run(tmp_path / "perturbed", preds)
    [e] = collect(mini_prepared, [tmp_path / "perturbed"])
    m = e.metrics
    assert m["per"] == pytest.approx(flipped / n_phones)
    assert m["wer"] == pytest.approx(5 / n_words)
    c = e.provenance
    assert m["mdd_recall"] == 1.0
    tr = sum(
        r["perceived_phones"][k] != r["canonical_phones"][k]
        for r in mdd
        for k in range(len(r["canonical_phones"]))
    )
    assert m["mdd_precision"] == pytest.approx(tr / (tr + flipped))
    assert m["apa_parse_failures"] == garbage and m["mdd_parse_failures"] == 0
    fallback = apa_fallback(read_jsonl(mini_prepared / "train.jsonl"))
    assert c["apa_fallback"] == fallback
    pred = [fallback["accuracy"]] * garbage + [r["scores"]["accuracy"] for r in apa[garbage:]]
    human = [r["scores"]["accuracy"] for r in apa]
    assert m["accuracy_pcc"] == pytest.approx(stats.pearsonr(pred, human)[0])
    assert m["accuracy_mse"] == pytest.approx(float(np.mean((np.array(pred) - human) ** 2)))


def test_coverage_errors_list_the_offending_ids(mini_prepared: Path, tmp_path: Path) -> None:
    test = read_jsonl(mini_prepared / "test.jsonl")
    rows = [_pred(r, r["target"]) for r in test]
    missing, dup = rows[3]["id"], rows[10]["id"]
    _write_run(tmp_path / "bad", [r for r in rows if r["id"] != missing] + [rows[10]])
    with pytest.raises(
        CoverageError, match=f"ids written twice: {dup} .*delete the shard files.*1 missing ids"
    ) as err:
        collect(mini_prepared, [tmp_path / "bad"])
    assert "--allow-partial to collect the ids present" in str(err.value)
    assert str(err.value).index("--allow-partial") > str(err.value).index("missing ids")
    _write_run(tmp_path / "gap", [r for r in rows if r["id"] != missing])
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "collect.py"),
            "--prepared",
            str(mini_prepared),
            "--runs",
            str(tmp_path / "gap"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and missing in proc.stderr and "--allow-partial" in proc.stderr
    [e] = collect(mini_prepared, [tmp_path / "gap"], allow_partial=True)
    assert e.partial and e.metrics["n_apa"] + e.metrics["n_mdd"] == len(rows) - 1


def test_outputs_round_trip_and_are_byte_identical(mini_prepared: Path, tmp_path: Path) -> None:
    test = read_jsonl(mini_prepared / "test.jsonl")
    _write_run(tmp_path / "run", [_pred(r, r["target"]) for r in test], checkpoint="epoch-1")
    noisy = [_pred(r, r["target"].replace("'accuracy': ", "'accuracy': 1")) for r in test]
    _write_run(tmp_path / "run", noisy, checkpoint="base")
    entries = collect(mini_prepared, [tmp_path / "run"])
    assert [e.checkpoint for e in entries] == ["base", "epoch-1"]
    write_outputs(entries, tmp_path / "a", synthetic=False)
    write_outputs(collect(mini_prepared, [tmp_path / "run"]), tmp_path / "b", synthetic=False)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {
        "metrics.json",
        "table3.md",
        "table3.tex",
        "table3.csv",
        "report.md",
        "epochs.png",
        "scores_run.png",
        "confusion_run.png",
        "per_vs_accuracy_run.png",
    } <= set(files)
    for name in files:
        if name == "tensorboard":  # event files hold wall times; rebuilt whole (next test)
            continue
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    with open(tmp_path / "a" / "table3.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(metrics) == 2
    for row, m in zip(table, metrics, strict=True):
        assert row["checkpoint"] == m["checkpoint"]
        for key, value in m.items():
            if key in row and key not in ("run", "checkpoint", "epoch", "partial"):
                assert (float(row[key]) if row[key] else None) == value, key
    md = (tmp_path / "a" / "table3.md").read_text()
    assert "| run | no training | 0 |" in md and "paper (reference)" in md


def test_intervals_in_outputs_and_no_star_on_degenerate_rows(
    mini_prepared: Path, tmp_path: Path
) -> None:
    test = read_jsonl(mini_prepared / "test.jsonl")

    def near(i: int, row: dict) -> str:  # the human scores, accuracy off by -1/0/+1
        if row["task"] != "APA":
            return row["target"]
        s = {k: round(v) for k, v in row["scores"].items()}
        s["accuracy"] = min(10, max(0, s["accuracy"] + i % 3 - 1))
        return format_apa_answer(s)

    preds = [_pred(r, near(i, r)) for i, r in enumerate(test)]
    _write_run(tmp_path / "run", preds, checkpoint="epoch-1")
    _write_run(tmp_path / "run", [_pred(r, "no idea") for r in test], checkpoint="base")
    exact = [_pred(r, r["target"]) for r in test]
    _write_run(tmp_path / "run", exact, checkpoint="epoch-2")
    entries = collect(mini_prepared, [tmp_path / "run"])
    write_outputs(entries, tmp_path / "out", synthetic=False)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    metrics = {m["checkpoint"]: m for m in written}
    lo, hi = metrics["epoch-1"]["ci95"]["accuracy_pcc"]
    assert lo <= metrics["epoch-1"]["accuracy_pcc"] <= hi and hi - lo > 0  # a real spread
    assert metrics["base"]["ci95"]["accuracy_pcc"] is None  # constant predictions
    md = (tmp_path / "out" / "table3.md").read_text()
    base_row = next(line for line in md.splitlines() if "| no training | 0 |" in line)
    oracle_row = next(line for line in md.splitlines() if line.startswith("| run | unknown | 1 |"))
    assert "*" not in base_row and "n/a [1]" in base_row
    assert "[1] n/a or degenerate: constant predictions: every APA answer failed" in md
    assert "every MDD answer failed to parse (scored as empty transcripts)" in md
    assert re.search(r"\| 1\.000 \[1\.00, 1\.00\]\S*\* \| ", oracle_row)  # fluency: exact
    assert "↑" not in oracle_row  # never compared with a degenerate row
    exact_row = next(line for line in md.splitlines() if line.startswith("| run | unknown | 2 |"))
    assert exact_row.split(" | ")[3].startswith("1.000 [1.00, 1.00]↑*")  # paired: better
    csv_text = (tmp_path / "out" / "table3.csv").read_text()
    assert "accuracy_pcc_ci_lo" in csv_text.splitlines()[0]
    # TensorBoard: per epoch, with the interval; the undefined base value is not drawn, and a
    # second collect replaces the first one's points instead of adding to them
    write_outputs(entries, tmp_path / "out", synthetic=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(tmp_path / "out" / "tensorboard" / "run"))
    reader.Reload()

    def points(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in reader.Scalars(tag)]

    assert [s for s, _ in points("test/accuracy_pcc")] == [1, 2]
    assert points("test/accuracy_pcc_ci95_low")[0] == (1, pytest.approx(lo, abs=1e-6))
    assert points("test/accuracy_pcc_ci95_high")[0] == (1, pytest.approx(hi, abs=1e-6))
    assert [s for s, _ in points("test/wer")] == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


def test_strategies_are_compared_on_the_same_resamples(mini_prepared: Path, tmp_path: Path) -> None:
    test = read_jsonl(mini_prepared / "test.jsonl")
    for strategy, off in (("lora", 0), ("unfreeze", 2)):
        run = tmp_path / strategy
        rows = []
        apa = [r for r in test if r["task"] == "APA"]
        for r in test:
            answer = r["target"]
            i = apa.index(r) if r["task"] == "APA" else -1
            if off and i % 2 == 1:  # every other APA answer's accuracy off by 2
                s = {k: round(v) for k, v in r["scores"].items()}
                s["accuracy"] = min(10, max(0, s["accuracy"] + off * (1 if i % 4 == 1 else -1)))
                answer = format_apa_answer(s)
            rows.append(_pred(r, answer))
        _write_run(run, rows, checkpoint="epoch-1")
        cfg = {"name": "paper_r64", "strategy": strategy}
        (run / "run.json").write_text(json.dumps({"config": cfg, "model": str(tmp_path)}))
    entries = collect(mini_prepared, [tmp_path / "lora", tmp_path / "unfreeze"])
    write_outputs(entries, tmp_path / "out", synthetic=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Strategies compared (paired bootstrap over test speakers)" in report
    acc = next(line for line in report.splitlines() if line.startswith("| 1 | Acc |"))
    assert "lora (paper_r64) - unfreeze (paper_r64)" in acc and acc.endswith("| differ |")
    flu = next(line for line in report.splitlines() if line.startswith("| 1 | Flu |"))
    assert "+0.000 [+0.000, +0.000] | not distinguishable |" in flu  # identical answers


def _decoded(run: Path, checkpoint: str, shards: int, **settings) -> None:
    """Shard summaries as the inference stage writes them, with its decoding settings."""
    decoding = {
        "search": "greedy",
        "max_new_tokens_apa": 48,
        "max_new_tokens_mdd": 256,
        "batch_size": 256,
        **settings,
    }
    for s in range(shards):
        done = run / "predictions" / checkpoint / f"shard-{s}-of-{shards}.done.json"
        done.write_text(json.dumps({"checkpoint": checkpoint, "decoding": decoding}))


def test_checkpoints_decoded_differently_are_refused_unless_asked(
    mini_prepared: Path, tmp_path: Path
) -> None:
    """Issue 24: one table holds checkpoints decoded alike; the differing setting is named
    (a batch size too: bf16 rounding differs per batch shape), and the report lists them."""
    test = read_jsonl(mini_prepared / "test.jsonl")
    rows = [_pred(r, r["target"]) for r in test]
    for run, mdd_cap, batch in (("lora", 256, 256), ("unfreeze", 128, 256), ("lora8", 256, 8)):
        _write_run(tmp_path / run, rows, shards=2)
        _decoded(tmp_path / run, "epoch-1", 2, max_new_tokens_mdd=mdd_cap, batch_size=batch)
    with pytest.raises(DataError, match="batch_size is 256 for lora/epoch-1; 8 for lora8/epoch-1"):
        collect(mini_prepared, [tmp_path / "lora", tmp_path / "lora8"])
    args = [sys.executable, str(REPO / "jobs" / "collect.py"), "--prepared", str(mini_prepared)]
    args += ["--runs", str(tmp_path / "lora"), str(tmp_path / "unfreeze")]
    args += ["--out", str(tmp_path / "out")]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "max_new_tokens_mdd is 256 for lora/epoch-1; 128 for unfreeze/epoch-1" in proc.stderr
    assert "--allow-mixed-decoding" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "table3.md").exists()
    proc = subprocess.run([*args, "--allow-mixed-decoding"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Checkpoints decoded under different settings" in report
    assert (
        "unfreeze/epoch-1: search greedy, max_new_tokens_apa 48, max_new_tokens_mdd 128" in report
    )

    # shards of one checkpoint decoded under different settings: named, whatever is asked
    _decoded(tmp_path / "lora", "epoch-1", 1, max_new_tokens_apa=24)
    (tmp_path / "lora" / "predictions" / "epoch-1" / "shard-0-of-1.done.json").rename(
        tmp_path / "lora" / "predictions" / "epoch-1" / "shard-0-of-2.done.json"
    )
    with pytest.raises(DataError, match="its shards were decoded under different settings"):
        collect(mini_prepared, [tmp_path / "lora"], allow_mixed_decoding=True)


def test_a_checkpoint_without_recorded_settings_is_named_beside_recorded_ones(
    mini_prepared: Path, tmp_path: Path
) -> None:
    test = read_jsonl(mini_prepared / "test.jsonl")
    rows = [_pred(r, r["target"]) for r in test]
    _write_run(tmp_path / "old", rows)  # no shard summaries: an older pronlora's shards
    _write_run(tmp_path / "new", rows)
    _decoded(tmp_path / "new", "epoch-1", 1)
    with pytest.raises(DataError, match="old/epoch-1: decoded by a pronlora that did not record"):
        collect(mini_prepared, [tmp_path / "old", tmp_path / "new"])
    assert len(collect(mini_prepared, [tmp_path / "old"])) == 1


def test_intervals_resample_speakers_as_an_independent_cluster_bootstrap(
    mini_prepared: Path, tmp_path: Path
) -> None:
    """Issue 27: WER's interval on a speaker-clustered test set (one speaker's answers all
    wrong, the others' all right) equals a speaker bootstrap computed here by plain loops, and
    is wider than the utterance-level interval the README warns against."""
    from pronlora.collect.metrics import normalise_words
    from pronlora.collect.uncertainty import LEVEL, N_BOOT, SEED

    test = read_jsonl(mini_prepared / "test.jsonl")
    speakers = sorted({r["speaker"] for r in test})
    bad = speakers[0]
    preds = []
    for r in test:
        if r["task"] == "MDD" and r["speaker"] == bad:
            preds.append(_pred(r, format_mdd_answer("ZZZ " * len(r["text"].split()), "AA")))
        else:
            preds.append(_pred(r, r["target"]))
    _write_run(tmp_path / "run", preds)
    [entry] = collect(mini_prepared, [tmp_path / "run"])

    # per utterance: (speaker, word errors, reference words), in the test file's order
    mdd = []
    for r in test:
        if r["task"] != "MDD":
            continue
        n = len(normalise_words(r["text"]).split())
        mdd.append((r["speaker"], n if r["speaker"] == bad else 0, n))
    assert entry.metrics["wer"] == pytest.approx(
        sum(e for _, e, _ in mdd) / sum(n for *_, n in mdd)
    )

    def percentile_interval(values: list[float]) -> tuple[float, float]:
        lo, hi = np.percentile(values, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
        return float(lo), float(hi)

    # the speaker draws: SEED's generator, N_BOOT rows of len(speakers) indices (the convention
    # every checkpoint shares); the WER of each resample summed by hand
    draws = np.random.default_rng(SEED).integers(0, len(speakers), size=(N_BOOT, len(speakers)))
    by_speaker = {s: [(e, n) for sp, e, n in mdd if sp == s] for s in speakers}
    wers = []
    for row in draws:
        errors = words = 0
        for i in row:
            for e, n in by_speaker[speakers[i]]:
                errors, words = errors + e, words + n
        wers.append(errors / words)
    expected = percentile_interval(wers)
    assert entry.interval("wer") == pytest.approx(expected)

    rng = np.random.default_rng(0)  # utterances resampled as if independent
    utt_wers = []
    for _ in range(N_BOOT):
        pick = rng.integers(0, len(mdd), size=len(mdd))
        utt_wers.append(sum(mdd[i][1] for i in pick) / sum(mdd[i][2] for i in pick))
    utt_lo, utt_hi = percentile_interval(utt_wers)
    lo, hi = entry.interval("wer")
    assert hi - lo > 2 * (utt_hi - utt_lo)


def _entry(run: str, epoch: int, values: dict[str, float], spread: float = 0.01, **kw):
    """A Table 3 entry with chosen values: each BOOT_METRICS key resampled as value + N(0, spread)
    (the same draws for every entry, as collect pairs them)."""
    from pronlora.collect.stage import METRIC_KEYS, Entry
    from pronlora.collect.uncertainty import BOOT_METRICS

    draws = np.random.default_rng(0).normal(0, spread, 400)
    metrics = {k: 0.5 for k in METRIC_KEYS} | {k: 0.01 for k in METRIC_KEYS if k.endswith("_p")}
    metrics |= {"n_apa": 10, "n_mdd": 10, "apa_parse_failures": 0, "mdd_parse_failures": 0}
    metrics |= values
    boot = {k: metrics[k] + draws for k in BOOT_METRICS}
    pairs = {a: ([1.0, 2.0], [1.0, 2.0]) for a in ("accuracy", "fluency", "prosodic", "total")}
    return Entry(
        run=run, label=run, checkpoint=f"epoch-{epoch}", epoch=epoch, strategy="lora",
        partial=False, metrics=metrics, provenance=kw.get("provenance", {}), boot=boot,
        apa_pairs=pairs,
    )  # fmt: skip


def _row(table: str, epoch: int, run: str = "lora") -> list[str]:
    """The cells of ``run``'s row for ``epoch``, by column header."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = dict(zip(header, cells, strict=True))
        if row.get("ep") == str(epoch) and run in line:
            return row
    raise AssertionError(f"no row for {run} epoch {epoch} in\n{table}")


def test_table3_marks_significance_the_paper_and_the_previous_epoch() -> None:
    """Expected marks worked out by hand: † where Pearson's p >= 0.05; ‡ where the paper's value
    (LoRA epoch 2: Acc 0.637, Flu 0.726, WER 0.139) is outside our interval; ↑/↓ where the paired
    interval against the previous epoch excludes 0, by the column's direction."""
    from pronlora.collect.table3 import table3_markdown

    first = _entry("lora", 1, {"accuracy_pcc": 0.60, "fluency_pcc": 0.72, "wer": 0.14})
    second = _entry(
        "lora",
        2,
        {
            "accuracy_pcc": 0.637,  # the paper's value, inside the interval: no ‡
            "accuracy_pcc_p": 0.2,  # not significant: †
            "fluency_pcc": 0.50,  # far below the paper's 0.726: ‡; and below epoch 1's: ↓
            "wer": 0.30,  # higher WER than epoch 1: worse, ↓ (lower is better); paper 0.139: ‡
            "per": 0.40,  # lower PER than epoch 1's 0.5: better, ↑
        },
    )
    row = _row(table3_markdown([first, second]), 2)
    acc, flu, wer, per = (re.sub(r"\[[^]]*\]", "", row[c]) for c in ("Acc", "Flu", "WER", "PER"))
    assert "†" in acc and "‡" not in acc and "↑" in acc  # 0.637 vs 0.60: better than epoch 1
    assert "‡" in flu and "↓" in flu and "†" not in flu
    assert "‡" in wer and "↓" in wer
    assert "↑" in per and "↓" not in per
    assert not any(m in re.sub(r"\[[^]]*\]", "", _row(table3_markdown([first]), 1)["Total"])
                   for m in "†↑↓")  # fmt: skip


def test_the_seed_table_is_mean_and_sample_sd_over_the_seed_runs() -> None:
    from pronlora.collect.table3 import table3_markdown

    cfg = {"config": {"name": "paper_r64"}}
    values = [0.61, 0.65, 0.70]
    seeds = [
        _entry(f"lora-s{i}", 2, {"accuracy_pcc": v}, provenance=cfg)
        for i, v in enumerate(values, 1)
    ]
    table = table3_markdown(seeds)
    assert "Over seeds (mean +- sd" in table
    row = next(line for line in table.splitlines() if line.startswith("| paper_r64 | LoRA | 2 |"))
    mean = sum(values) / 3
    sd = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5  # the sample sd (n - 1)
    assert row.split("|")[4].strip() == "3"
    assert row.split("|")[5].strip() == f"{mean:.3f} +- {sd:.3f}"
    assert "Over seeds" not in table3_markdown(seeds[:1])


def test_figures_name_their_run_and_say_why_they_draw_nothing() -> None:
    """A run whose every answer failed to parse: no figure draws points or a matrix; each says
    why in readable type and names its run and checkpoint (two runs' figures differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pronlora.collect.plots import MESSAGE_PT, confusion, per_vs_accuracy, score_scatter

    def failed(run: str):
        e = _entry(run, 2, {"apa_parse_failures": 10, "mdd_parse_failures": 10})
        e.apa_failed = [True, True]
        e.per_vs_acc = [(1.0, 5.0, 6.0), (1.0, 7.0, 6.0)]
        e.confusion = Counter({("AA", "<DEL>"): 3, ("B", "<DEL>"): 2})  # empty transcripts
        return e

    def texts(fig) -> list:
        return [t for ax in fig.axes for t in ax.texts] + [ax.title for ax in fig.axes]

    for run in ("lora", "unfreeze"):
        e = failed(run)
        for draw, says in (
            (confusion, "every MDD answer failed to parse"),
            (per_vs_accuracy, "every utterance's PER is 1.00"),
            (score_scatter, "APA answers failed to parse"),
        ):
            fig = draw(plt, e)
            words = " ".join(t.get_text().replace("\n", " ") for t in texts(fig))
            title = fig._suptitle.get_text() if fig._suptitle else words
            assert says in words, (draw.__name__, words)
            assert f"run {run}" in title and "epoch-2" in title, (draw.__name__, title)
            assert all(t.get_fontsize() >= 8 for t in texts(fig))
            assert any(t.get_fontsize() >= MESSAGE_PT for t in texts(fig))
            assert not any(ax.collections or ax.images for ax in fig.axes), draw.__name__
            plt.close(fig)

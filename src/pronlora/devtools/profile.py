"""Where a training step's time goes: kernel time by category, GPU busy share, syncs, MFU.

Reads the Chrome trace that ``torch.profiler`` exports: its event format (``cat`` kernel /
gpu_memcpy / gpu_memset / cuda_runtime, ``ts`` and ``dur`` in microseconds) has held across
torch releases, where the Python event API renamed its time fields twice.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pronlora.core.config import accumulation_steps
from pronlora.devtools.bench import PAPER_EPOCHS, PAPER_TRAIN_PER_TASK, results_heading

# First match wins: nccl before the generic patterns, dequantisation before matmul.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("communication", r"nccl"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("nf4 dequantize", r"dequant|4bit|bnb"),
    ("matmul", r"gemm|cutlass|nvjet|xmma|cublas|wgmma|matmul|splitk"),
    ("optimizer", r"multi_tensor|adam|foreach"),
    ("compiled (triton)", r"^triton"),
    ("norm/softmax/reduce", r"norm|softmax|reduce|cross_entropy|scan"),
    # not "nocast": PyTorch's binary kernels (gpu_kernel_impl_nocast<BinaryFunctor...>)
    ("copy/cast/gather", r"copy|(?<!no)cast|convert|index|gather|scatter"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise|fill"),
)
GPU_CATS = {"kernel": None, "gpu_memcpy": "memcpy", "gpu_memset": "memset"}
SYNC_CALLS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"}


def kernel_category(name: str) -> str:
    low = name.lower()
    for category, pattern in CATEGORIES:
        if re.search(pattern, low):
            return category
    return "other"


def _union_s(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by (start, end) microsecond intervals (kernels of several streams
    overlap; their sum would count the overlap twice)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1e6


def _innermost(spans: list[tuple[float, float, str]], starts: list[float], ts: float) -> str:
    """Name of the innermost span (sorted by start) that contains ``ts``; nested spans of one
    thread: the latest-starting one that still contains it."""
    i = bisect.bisect_right(starts, ts) - 1
    while i >= 0:
        _, end, name = spans[i]
        if end >= ts:
            return name
        i -= 1
    return "-"


BACKWARD_NODE = "autograd::engine::evaluate_function: "


def _spans(events: list[dict[str, Any]]) -> dict[tuple[str, Any], list[tuple[float, float, str]]]:
    """Host spans by (kind, thread), each list sorted by start. Kinds: ``python_function`` and
    ``cpu_op`` as traced; ``module``, the ``nn.Module: Name_i`` frames of a with_stack trace;
    ``backward``, the autograd engine's nodes (``autograd::engine::evaluate_function: X``)."""
    spans: dict[tuple[str, Any], list[tuple[float, float, str]]] = {}

    def add(kind: str, e: dict[str, Any], name: str) -> None:
        ts = float(e["ts"])
        spans.setdefault((kind, e.get("tid")), []).append((ts, ts + float(e.get("dur", 0)), name))

    for e in events:
        cat, name = e.get("cat"), e.get("name", "")
        if cat == "python_function":
            # "<built-in method to of Tensor object at 0x7f...>": one name for every call
            add(cat, e, re.sub(r" object at 0x[0-9a-f]+", "", name))
            if name.startswith("nn.Module: "):
                add("module", e, re.sub(r"_\d+$", "", name[len("nn.Module: ") :]))
        elif cat == "cpu_op":
            add(cat, e, f"[op] {name}")
            if name.startswith(BACKWARD_NODE):
                add("backward", e, "[backward] " + re.sub(r"\d+$", "", name[len(BACKWARD_NODE) :]))
    for v in spans.values():
        v.sort()
    return spans


class _Frames:
    """The innermost host span of a kind around a moment on a thread."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.spans = _spans(events)
        self.starts = {k: [s[0] for s in v] for k, v in self.spans.items()}

    def around(self, kinds: tuple[str, ...], tid: Any, ts: float) -> str:
        for kind in kinds:
            key = (kind, tid)
            if key in self.spans:
                where = _innermost(self.spans[key], self.starts[key], ts)
                if where != "-":
                    return where
        return "-"


def sync_sources(frames: _Frames, syncs: list[dict[str, Any]]) -> dict[str, int]:
    """Where the host waits for the GPU: the innermost Python frame (with_stack traces) or else
    the innermost operator around each synchronising call, counted."""
    found: Counter[str] = Counter(
        frames.around(("python_function", "cpu_op"), e.get("tid"), float(e["ts"])) for e in syncs
    )
    return dict(found.most_common(12))


def idle_sources(
    frames: _Frames, launches: dict[Any, dict[str, Any]], gpu: list[dict[str, Any]], steps: int
) -> dict[str, float]:
    """Where the GPU waits for the host: each gap between GPU events (seconds per step),
    charged to what the host was running when it launched the event that ended the gap: the
    innermost model module (``nn.Module`` frames of a with_stack trace), else the autograd node
    (backward), else the innermost Python frame or operator. ``launches``: the runtime or
    driver call behind each GPU event, by correlation id."""
    kinds = ("module", "backward", "python_function", "cpu_op")
    idle: Counter[str] = Counter()
    busy_until = None
    for e in sorted(gpu, key=lambda e: float(e["ts"])):
        ts = float(e["ts"])
        if busy_until is not None and ts > busy_until:
            launch = launches.get(e.get("args", {}).get("correlation"))
            where = (
                "-"
                if launch is None
                else frames.around(kinds, launch.get("tid"), float(launch["ts"]))
            )
            idle[where] += ts - busy_until
        end = ts + float(e.get("dur", 0))
        busy_until = end if busy_until is None else max(busy_until, end)
    return {k: round(v / 1e6 / steps, 4) for k, v in idle.most_common(12)}


def summarize_trace(trace: dict[str, Any], wall_s: float, steps: int) -> dict[str, Any]:
    """GPU time by category, the busy share of ``wall_s``, per-step syncs, launches and data
    loading waits, where the syncs come from and what the GPU waited for."""
    by_cat: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    intervals = []
    launches = dtoh = runtime = 0
    loader_us = 0.0
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    sync_events, gpu_events = [], []
    launched_by: dict[Any, dict[str, Any]] = {}  # correlation id -> the launching call
    for e in events:
        cat, name = e.get("cat"), e.get("name", "")
        if cat in GPU_CATS:
            gpu_events.append(e)
            dur = float(e.get("dur", 0))
            by_cat[GPU_CATS[cat] or kernel_category(name)] += dur
            by_name[name] += dur
            intervals.append((float(e["ts"]), float(e["ts"]) + dur))
            launches += cat == "kernel"
            dtoh += cat == "gpu_memcpy" and "DtoH" in name
        elif cat in ("cuda_runtime", "cuda_driver"):
            if "correlation" in e.get("args", {}):
                launched_by[e["args"]["correlation"]] = e
            if cat == "cuda_runtime":
                runtime += 1
                if name in SYNC_CALLS:
                    sync_events.append(e)
        elif cat == "user_annotation" and name.startswith("enumerate(DataLoader)"):
            loader_us += float(e.get("dur", 0))
    syncs = len(sync_events)
    frames = _Frames(events)
    gpu_total = sum(by_cat.values()) or 1.0
    busy = _union_s(intervals)
    return {
        "gpu_busy_s": round(busy, 4),
        "gpu_busy_share": round(busy / wall_s, 3) if wall_s > 0 else None,
        "categories": {
            k: {"s": round(v / 1e6, 4), "share": round(v / gpu_total, 3)}
            for k, v in by_cat.most_common()
        },
        "top_kernels": [
            {"name": n[:120], "s": round(v / 1e6, 4), "share": round(v / gpu_total, 3)}
            for n, v in by_name.most_common(16)
        ],
        "kernels_per_step": round(launches / steps),
        # None, not 0, when the trace holds no runtime calls to count them in
        "host_syncs_per_step": round(syncs / steps, 1) if runtime else None,
        "dtoh_copies_per_step": round(dtoh / steps, 1),
        "dataloader_wait_s_per_step": round(loader_us / 1e6 / steps, 4),
        "sync_sources": sync_sources(frames, sync_events),
        "idle_s_per_step": idle_sources(frames, launched_by, gpu_events, steps),
    }


def language_model_linear_params(model: Any) -> int:
    """Weights multiplied per token by the language model's decoder layers (LoRA included).

    Counted from in/out features, so 4-bit layers (packed weights) count their real size; the
    audio and vision encoders are left out (their work scales with audio, not tokens).
    """
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "embed_tokens_extend" in name:
            continue
        if re.search(r"\.layers\.\d+\.", name):
            total += module.in_features * module.out_features
    return total


def training_flops_per_token(linear_params: int, recompute: bool) -> dict[str, int]:
    """Useful FLOPs (forward 2N, activation gradients 2N: the base is frozen, so no weight
    gradients) and what the GPU executes (plus a second forward under checkpointing)."""
    useful = 4 * linear_params
    return {"useful": useful, "executed": useful + (2 * linear_params if recompute else 0)}


def matmul_ceiling_tflops() -> float:
    """bf16 TFLOP/s of a large square matmul on this GPU: the roof MFU is quoted against."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


def profile_training(
    cfg: Any, model_dir: Path, rows: list[dict[str, Any]], run_dir: Path, warmup: int, steps: int
) -> dict[str, Any]:
    """Optimizer steps of the stage's Trainer at the config's real accumulation: ``warmup``
    steps (compilation, allocator), ``steps`` timed without the profiler, ``steps`` profiled."""
    from transformers import TrainerCallback

    from pronlora.model.load import load_model
    from pronlora.train.trainer import build_trainer

    # one step after the profiled ones, so the final save at the run's end stays outside them
    cfg = replace(cfg, max_steps=warmup + 2 * steps + 1, save_steps=10**6, logging_steps=10**6)
    loaded = load_model(cfg, model_dir)  # its LoRA seeded from cfg.seed
    trainer = build_trainer(cfg, loaded, rows, run_dir)
    prof = _profiler()
    marks: dict[str, tuple[float, int]] = {}
    bounds = {warmup: "timed", warmup + steps: "profiled", warmup + 2 * steps: "end"}

    class Windows(TrainerCallback):
        def __init__(self, trainer: Any) -> None:
            self.trainer = trainer

        def on_step_begin(self, args, state, control, **kw):
            mark = bounds.get(state.global_step)
            if mark is None:
                return
            torch.cuda.synchronize()
            marks[mark] = (time.perf_counter(), self.trainer.tokens_total)
            if mark == "profiled":
                prof.start()
            elif mark == "end":
                prof.stop()

    trainer.add_callback(Windows(trainer))
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, k0), (t1, k1), (t2, _) = marks["timed"], marks["profiled"], marks["end"]
    trace = _trace(prof, run_dir)
    step_s = (t1 - t0) / steps
    linear = language_model_linear_params(loaded.model)
    flops = training_flops_per_token(linear, cfg.use_gradient_checkpointing)
    tokens_per_s = (k1 - k0) / (t1 - t0)
    ceiling = matmul_ceiling_tflops()
    result = {
        "instances_per_step": cfg.effective_batch,
        "passes_per_step": accumulation_steps(cfg, 1),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens_per_s, 1),
        "projected_3_epochs_min": round(
            PAPER_EPOCHS * 2 * PAPER_TRAIN_PER_TASK / cfg.effective_batch * step_s / 60, 2
        ),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "lm_linear_params": linear,
        "model_tflops": round(flops["useful"] * tokens_per_s / 1e12, 1),
        "executed_tflops": round(flops["executed"] * tokens_per_s / 1e12, 1),
        "matmul_ceiling_tflops": round(ceiling, 1),
        "mfu": round(flops["useful"] * tokens_per_s / 1e12 / ceiling, 3),
        "profiled_step_s": round((t2 - t1) / steps, 4),
        # GPU time of the profiled steps over the wall time of the same number of plain ones
        **summarize_trace(trace, t1 - t0, steps),
    }
    del trainer, loaded
    torch.cuda.empty_cache()
    return result


def profile_inference(cfg: Any, model_dir: Path, prepared: Path, run_dir: Path) -> dict[str, Any]:
    """The inference stage over the test split, each instance decoding its real target's length
    (``bench_infer``: a warm-up pass and a timed one), then a third pass under the profiler,
    all on one model load. Per-step figures are per generation batch."""
    from pronlora.core.layout import PreparedDir
    from pronlora.devtools.bench import bench_infer, decode_test_split, target_lengths
    from pronlora.infer.models import Models
    from pronlora.model.load import load_tokenizer

    models = Models()
    result = bench_infer(cfg, model_dir, prepared, run_dir, models=models)
    rows = PreparedDir(prepared).load_split("test")
    lengths = target_lengths(rows, load_tokenizer(model_dir))
    prof = _profiler()
    with prof:
        profiled = decode_test_split(
            cfg, model_dir, prepared, run_dir / "profiled", models, lengths
        )
    trace = _trace(prof, run_dir)
    batches = -(-len(rows) // cfg.infer.batch_size)
    del models
    torch.cuda.empty_cache()
    return {
        **result,
        "batches": batches,
        "profiled_pass_s": profiled["seconds"],
        **summarize_trace(trace, result["steady_pass_s"], batches),
    }


def _profiler() -> Any:
    return torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
        with_stack=True,  # Python frames: where the host waits for the GPU
    )


def _trace(prof: Any, work: Path) -> dict[str, Any]:
    trace_file = work / "trace.json"
    prof.export_chrome_trace(str(trace_file))
    try:
        return json.loads(trace_file.read_text())
    finally:
        trace_file.unlink()


def _section(
    runs: list[dict[str, Any]],
    stage: str,
    heading: list[str],
    columns: list[str],
    cells: Callable[[dict[str, Any]], list[str]],
) -> list[str]:
    """One stage's table (a row per setup, failures named) and its kernel-category table."""
    ok = [r for r in runs if "error" not in r[stage]]
    lines = [
        *heading,
        "",
        "| setup | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        *(f"| {r['setup']} | " + " | ".join(cells(r[stage])) + " |" for r in ok),
        *(f"| {r['setup']} | failed: {r[stage]['error'][:80]} |" for r in runs if r not in ok),
    ]
    if not ok:
        return [*lines, ""]
    cats = sorted({c for r in ok for c in r[stage]["categories"]})
    lines += [
        "",
        "GPU time by kernel category (share of the profiled kernel time):",
        "",
        "| setup | " + " | ".join(cats) + " |",
        "|---|" + "---|" * len(cats),
    ]
    for r in ok:
        c = r[stage]["categories"]
        shares = [f"{c[k]['share']:.0%}" if k in c else "-" for k in cats]
        lines.append(f"| {r['setup']} | " + " | ".join(shares) + " |")
    return [*lines, ""]


def _train_cells(p: dict[str, Any]) -> list[str]:
    return [
        str(p["step_s"]),
        f"{p['tokens_per_s']:,.0f}",
        str(p["projected_3_epochs_min"]),
        str(p["peak_gb"]),
        f"{p['gpu_busy_share']:.0%}",
        str(p["model_tflops"]),
        f"{p['mfu']:.0%}",
        str(p["host_syncs_per_step"]),
        f"{p['kernels_per_step']:,}",
    ]


def _infer_cells(p: dict[str, Any]) -> list[str]:
    return [
        str(p["batch_size"]),
        p["cache"],
        str(p["instances_per_s"]),
        str(p["projected_test_set_s"]),
        str(p.get("load_s", "")),
        str(p.get("answers_unlike_first_setup", "")),
        str(p["peak_gb"]),
        f"{p['gpu_busy_share']:.0%}",
        str(p["host_syncs_per_step"]),
        f"{p['kernels_per_step']:,}",
    ]


def _idle_lines(runs: list[dict[str, Any]], stage: str, per: str) -> list[str]:
    """Where each setup's GPU waited for the host, largest first (traces of older versions
    have no such entry)."""
    lines = []
    for r in runs:
        idle = r[stage].get("idle_s_per_step")
        if idle:
            top = sorted(idle.items(), key=lambda kv: -kv[1])[:8]  # the JSON sorts by name
            where = ", ".join(f"{k} {v:.3f}" for k, v in top)
            lines.append(f"- {r['setup']}: {where}")
    if not lines:
        return []
    head = (
        f"GPU idle (s per {per}, under the profiler, which slows the host: compare shares, not "
        "sums with the timed wall), by what the host ran when it launched the next kernel:"
    )
    return [head, "", *lines, ""]


def markdown(results: dict[str, Any]) -> str:
    """The profile tables people read; rendered from the JSON."""
    lines = [*results_heading("Profile", results)]
    train = [r for r in results["runs"] if "profile" in r]
    if train:
        heading = [
            "## Training steps",
            "",
            "Random-weight full-size checkpoint. Optimizer steps of the stage's Trainer at the "
            "recipe's accumulation (its effective batch per step, the run's own sampler over "
            f"APA+MDD rows), after {results['warmup']} warm-up steps: {results['steps']} timed, "
            f"then {results['steps']} under the profiler. Model TFLOP/s counts 4 x the language "
            "model's linear weights per token (forward, activation gradients; the base is "
            "frozen); MFU is that over the matmul ceiling measured in the same process. GPU busy: "
            "kernel time of the profiled steps over the wall time of the timed ones.",
        ]
        columns = "s/step|tok/s|3 epochs (min)|peak GB|GPU busy|model TFLOP/s|MFU|syncs/step"
        lines += _section(
            train, "profile", heading, [*columns.split("|"), "kernels/step"], _train_cells
        )
        lines += _idle_lines(train, "profile", "step")
    infer = [r for r in results["runs"] if "infer" in r]
    if infer:
        heading = [
            "## Inference stage",
            "",
            "`run_shard` over the bench's test split, every instance decoding its real target's "
            "token count plus `<|end|>`: a warm-up pass, a timed pass, then a pass under the "
            "profiler, on one model load. GPU busy: kernel time of the profiled pass over the "
            "timed pass's wall time; per-batch figures are per generation batch. Test set: "
            "the warm-up plus 5,000 instances at the timed rate, the load apart. Unlike first: "
            "answers that differ from the first setup's on the same instances.",
        ]
        columns = (
            "batch|cache|inst/s|test set (s)|load (s)|unlike first|peak GB|GPU busy|syncs/batch"
            "|kernels/batch"
        )
        lines += _section(infer, "infer", heading, columns.split("|"), _infer_cells)
        lines += _idle_lines(infer, "infer", "batch")
    return "\n".join(lines).rstrip("\n") + "\n"

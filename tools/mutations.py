#!/usr/bin/env python3
"""Break central behaviours on purpose, one at a time, and check that a test notices.

Each mutation (``MUTATIONS`` below) replaces one exact piece of code in a copy of the repo and
runs the tests named for it there; a mutation whose tests still pass is a survivor. Run it
before a release (about 20-30 min on 2 cores), not in every CI run:

  .venv/bin/python tools/mutations.py [--only ID[,ID...]] [--report tools/mutations-report.md]

The copy sits in a temporary folder beside a link to ``../shared`` (the tests read the mini
corpus from there) and imports its own ``src/`` first, so the checkout is never touched.
Survivors the suite accepts on purpose are listed in ``EXPLAINED`` with the reason.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    path: str  # relative to the repo
    find: str  # must occur exactly once
    replace: str
    tests: tuple[str, ...]  # pytest node ids or files
    what: str


INFER, COLLECT, LAYOUT = (
    "src/pronlora/infer/stage.py",
    "src/pronlora/collect/stage.py",
    "src/pronlora/core/layout.py",
)
T_INFER, T_COLLECT = "tests/test_infer.py", "tests/test_collect.py"
T_SHARED, T_REL = "tests/test_shared_cluster.py", "tests/test_reliability.py"

MUTATIONS = (
    Mutation(
        "adapter-not-loaded",
        "src/pronlora/infer/models.py",
        "set_peft_model_state_dict(model, state, adapter_name",
        "set_peft_model_state_dict(model, {}, adapter_name",
        (f"{T_INFER}::test_a_checkpoint_decodes_with_its_own_trained_weights",),
        "inference decodes the untrained adapter",
    ),
    Mutation(
        "bootstrap-utterances",
        COLLECT,
        'samples.mdd_speakers.append(row["speaker"])',
        'samples.mdd_speakers.append(row["utt_id"])',
        (f"{T_COLLECT}::test_intervals_resample_speakers_as_an_independent_cluster_bootstrap",),
        "MDD intervals resample utterances instead of speakers",
    ),
    Mutation(
        "interval-percentiles",
        "src/pronlora/collect/uncertainty.py",
        "[100 * (1 - level) / 2, 100 * (1 + level) / 2]",
        "[100 * (1 - level), 100 * level]",
        ("tests/test_uncertainty.py::test_interval_is_the_central_95_percent_of_the_resamples",),
        "a 90 % interval reported as 95 %",
    ),
    Mutation(
        "clip-groups-per-shard",
        INFER,
        'audio = models.embed_clips(spec.cfg, split_rows, {r["audio"] for b in todo for r in b})',
        'audio = models.embed_clips(spec.cfg, rows, {r["audio"] for b in todo for r in b})',
        (f"{T_INFER}::test_answers_and_clip_embeddings_do_not_depend_on_batch_size_or_shards",),
        "clips embedded in groups cut from the shard, not the split",
    ),
    Mutation(
        "decode-batches-embed-audio",
        INFER,
        "answers = generate(loaded, spec.cfg, batch_rows, batch, decode_lengths, audio)",
        "answers = generate(loaded, spec.cfg, batch_rows, None, decode_lengths)",
        (f"{T_INFER}::test_answers_and_clip_embeddings_do_not_depend_on_batch_size_or_shards",),
        "each decode batch embeds its own audio (the padding leaks per batch)",
    ),
    Mutation(
        "decode-batches-per-shard",
        "src/pronlora/infer/batching.py",
        "return generation_batches(split_rows, size)[shard::num_shards]",
        "return generation_batches(split_rows[shard::num_shards], size)",
        (f"{T_INFER}::test_shards_deal_out_the_splits_decode_batches_whole",),
        "decode batches cut from the shard's rows",
    ),
    Mutation(
        "mixed-decoding-accepted",
        COLLECT,
        "    if not allow_mixed_decoding:\n        check_same_decoding(entries)",
        "    pass",
        (f"{T_COLLECT}::test_checkpoints_decoded_differently_are_refused_unless_asked",),
        "checkpoints decoded differently share one table silently",
    ),
    Mutation(
        "predicted-from-other-data",
        COLLECT,
        "            check_predicted_from(summaries, data_hash)\n",
        "",
        (f"{T_SHARED}::test_inference_and_collect_use_the_data_the_run_was_trained_on",),
        "collect scores predictions of other prepared data",
    ),
    Mutation(
        "links-followed",
        LAYOUT,
        "        if here.is_symlink():",
        "        if False:",
        (f"{T_SHARED}::test_links_planted_in_a_run_dir_are_refused_naming_them",),
        "a link planted in a run dir is not named",
    ),
    Mutation(
        "checkpoint-as-path",
        LAYOUT,
        "    if name != BASE_CHECKPOINT and not EPOCH_DIR.fullmatch(name):",
        "    if False:",
        (f"{T_SHARED}::test_a_checkpoint_is_a_name_of_the_run_not_a_path",),
        "--checkpoint taken as a path",
    ),
    Mutation(
        "edited-prep-accepted",
        LAYOUT,
        "        if actual != recorded:",
        "        if False:",
        (f"{T_SHARED}::test_prepared_files_edited_after_prep_are_refused_by_every_stage",),
        "prepared files edited after prep are used",
    ),
    Mutation(
        "other-training-data",
        "src/pronlora/infer/inputs.py",
        "    if trained_on and trained_on != data_hash:",
        "    if False:",
        (f"{T_SHARED}::test_inference_and_collect_use_the_data_the_run_was_trained_on",),
        "a run decodes prepared data it was not trained on without a word",
    ),
    Mutation(
        "missing-epoch-leaves-folder",
        LAYOUT,
        "        if not (path / CHECKPOINT_META).is_file():",
        "        if False:",
        (
            "tests/test_startup.py::"
            "test_a_decode_job_refuses_any_item_of_its_share_before_decoding_the_first",
        ),
        "a checkpoint without its meta.json (an unfinished save) is decoded as complete",
    ),
    Mutation(
        "yaml-1.1-numbers",
        "src/pronlora/core/config.py",
        "    if tp is float and isinstance(value, str) and _PY_FLOAT.fullmatch(value.strip()):",
        "    if False:",
        (f"{T_REL}::test_numbers_read_as_python_reads_them",),
        "lr=1e-4 refused as a string",
    ),
    Mutation(
        "negative-seed",
        "src/pronlora/core/config.py",
        "    if not 0 <= cfg.seed < 2**32:",
        "    if False:",
        (f"{T_REL}::test_bad_overrides_are_named",),
        "seed=-1 accepted (a traceback later)",
    ),
    Mutation(
        "score-range",
        "src/pronlora/core/protocol.py",
        "SCORE_RANGE: tuple[int, int] = (0, 10)",
        "SCORE_RANGE: tuple[int, int] = (0, 11)",
        ("tests/test_parse.py",),
        "an APA score of 11 is used",
    ),
    Mutation(
        "mdd-precision",
        "src/pronlora/collect/metrics.py",
        "        precision = div(self.tr, self.tr + self.fr)",
        "        precision = div(self.tr, self.tr + self.fa)",
        ("tests/test_metrics.py",),
        "MDD precision divides by false acceptances",
    ),
    Mutation(
        "wer-normalisation",
        "src/pronlora/collect/metrics.py",
        '    return " ".join(_PUNCT.sub(" ", text.upper()).split())',
        '    return " ".join(text.upper().split())',
        ("tests/test_metrics.py",),
        "punctuation counts as word errors",
    ),
    Mutation(
        "prompt-in-labels",
        "src/pronlora/model/collate.py",
        "        labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids",
        "        labels = prompt_ids + answer_ids",
        ("tests/test_train.py::test_collator_labels_cover_exactly_the_answer",),
        "the loss also trains on the prompt",
    ),
    Mutation(
        "cut-line-kept",
        "src/pronlora/infer/shard_file.py",
        '    keep = data.rfind(b"\\n") + 1',
        "    keep = len(data)",
        (f"{T_INFER}::test_killed_shard_resumes_to_the_same_lines",),
        "a line cut by a kill stays in the predictions",
    ),
    Mutation(
        "two-lock-holders",
        "src/pronlora/core/lock.py",
        "os.O_CREAT | os.O_EXCL | os.O_WRONLY",
        "os.O_CREAT | os.O_WRONLY",
        (f"{T_REL}::test_live_lock_is_refused_naming_the_holder",),
        "a second writer takes a held lock",
    ),
    Mutation(
        "full-disk-traceback",
        "src/pronlora/core/cli.py",
        "    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):\n        return None",
        "    return None",
        (f"{T_SHARED}::test_a_full_disk_is_one_line_naming_the_file",),
        "a full disk is a traceback",
    ),
    Mutation(
        "untrusted-pickle-traceback",
        "src/pronlora/train/recipe.py",
        "        except pickle.UnpicklingError as exc:",
        "        except KeyError as exc:",
        (f"{T_SHARED}::test_a_tampered_step_checkpoint_is_named_as_untrusted",),
        "a tampered step checkpoint is a traceback",
    ),
    Mutation(
        "max-length-identity",
        "src/pronlora/core/config.py",
        '    "max_length",\n    "engine",',
        '    "engine",',
        (f"{T_SHARED}::test_a_run_refused_for_a_long_instance_accepts_the_corrected_command",),
        "the corrected max_length is refused as a different setup",
    ),
    Mutation(
        "resume-with-changed-data",
        "src/pronlora/train/inputs.py",
        '        diffs.append("the prepared data (its content hash)")',
        "        pass",
        (f"{T_SHARED}::test_a_resumed_run_refuses_changed_prepared_data",),
        "a resumed run trains on changed prepared data",
    ),
    Mutation(
        "local-jobs-without-gpus",
        "src/pronlora/launch/submitit_backend.py",
        "gpus = job.procs_per_node if job.gpu else 0",
        "gpus = 0",
        ("tests/test_orchestration.py::test_local_jobs_get_the_gpus_their_plan_asks_for",),
        "the local executor hides the GPUs from every job (found by the grid on an H100)",
    ),
    Mutation(
        "login-node-needs-python",
        "slurm/pipeline.sh",
        'if [ -z "$PRONLORA_CONTAINER" ]; then\n    require_python\n    exec',
        "if true; then\n    require_python\n    exec",
        (
            "tests/test_orchestration.py::"
            "test_a_login_node_without_python_submits_the_plan_built_in_the_image",
        ),
        "submission needs a host Python even with an image",
    ),
    Mutation(
        "estimate-one-epoch",
        "src/pronlora/launch/job_costs.py",
        "self.fixed_s + times * instances * self.s_per_instance",
        "self.fixed_s + instances * self.s_per_instance",
        ("tests/test_orchestration.py::test_the_estimate_comes_from_the_measured_rates_file",),
        "the training estimate ignores the epochs",
    ),
    Mutation(
        "paper-mark-off-by-one",
        "src/pronlora/collect/table3.py",
        "not ci[0] <= paper[2 + i] <= ci[1]",
        "not ci[0] <= paper[3 + i] <= ci[1]",
        (f"{T_COLLECT}::test_table3_marks_significance_the_paper_and_the_previous_epoch",),
        "the paper mark compares with the next column's value",
    ),
    Mutation(
        "seed-sd-population",
        "src/pronlora/collect/uncertainty.py",
        "np.std(finite, ddof=1)",
        "np.std(finite, ddof=0)",
        (f"{T_COLLECT}::test_the_seed_table_is_mean_and_sample_sd_over_the_seed_runs",),
        "the seed table's sd divides by n",
    ),
    Mutation(
        "confusion-of-failed-answers",
        "src/pronlora/collect/plots.py",
        "if _every_mdd_failed(e) or not e.confusion:",
        "if not e.confusion:",
        (f"{T_COLLECT}::test_figures_name_their_run_and_say_why_they_draw_nothing",),
        "a run whose every MDD answer failed draws a <DEL> column as if the model deleted phones",
    ),
    Mutation(
        "tensorboard-purge",
        "src/pronlora/train/tracking.py",
        "purge_step=state.global_step + 1)",
        "purge_step=None)",
        ("tests/test_train.py::test_signal_mid_epoch_then_resume_equals_uninterrupted",),
        "a resumed run logs its replayed steps twice in TensorBoard",
    ),
    Mutation(
        "nf4-skip-audio",
        "src/pronlora/model/load.py",
        'NF4_SKIP_MODULES = ["lm_head", "model.embed_tokens_extend"]',
        'NF4_SKIP_MODULES = ["lm_head", "embed_tokens_extend"]',
        ("tests/test_snapshot.py::test_nf4_keeps_the_audio_encoder_and_lm_head_in_bf16",),
        "nf4 quantizes the audio encoder (transformers 5 matching)",
    ),
    Mutation(
        "score-marks",
        "src/pronlora/infer/score.py",
        "marks = [h != c for c, h in zip(phones, here, strict=True)]",
        "marks = [False for c, h in zip(phones, here, strict=True)]",
        (
            "tests/test_score.py::"
            "test_canonical_phones_are_the_corpus_ones_and_the_alignment_finds_its_errors",
        ),
        "score.py marks no mispronunciation",
    ),
    Mutation(
        "status-sacct-state",
        "src/pronlora/launch/status.py",
        '"state": state.split()[0] if state else "UNKNOWN",',
        '"state": state or "UNKNOWN",',
        ("tests/test_status.py",),
        "a job sacct lists as 'CANCELLED by 0' is not seen as failed",
    ),
    Mutation(
        "compile-float-restart",
        "src/pronlora/model/load.py",
        "    torch._dynamo.config.specialize_float = True\n",
        "",
        (
            "tests/test_fast_paths.py::"
            "test_a_second_job_finds_the_compiled_layers_in_the_shared_cache",
        ),
        "every job traces its compiled layers twice (Dynamo restarts on symbolic floats)",
    ),
    Mutation(
        "graphs-positions",
        "src/pronlora/model/greedy.py",
        "        pos.add_(1)\n",
        "",
        ("tests/test_fast_paths.py::test_graphed_decoding_loop_generates_the_static_cache_tokens",),
        "graphed decoding steps keep feeding the same rotary position",
    ),
    Mutation(
        "loss-check-before-save",
        "src/pronlora/train/trainer.py",
        "        self.check_losses(wait_for_all=True)  # no checkpoint after a non-finite pass\n",
        "",
        (
            "tests/test_train.py::"
            "test_a_pass_that_turns_non_finite_is_caught_before_its_step_checkpoint",
        ),
        "a step checkpoint is written after a pass whose loss was NaN (checked one pass late)",
    ),
    Mutation(
        "tokens-logged-cumulative",
        "src/pronlora/train/trainer.py",
        "            self._tokens_logged, self._t0 = seen, now\n",
        "            self._t0 = now\n",
        ("tests/test_train.py::test_loss_falls_when_overfitting",),
        "each log entry counts every token since the start, not since the last entry",
    ),
    Mutation(
        "window-too-narrow",
        "src/pronlora/model/cache_window.py",
        "    return min(size, -(-needed // WINDOW_STEP) * WINDOW_STEP)\n",
        "    return min(size, -(-needed // WINDOW_STEP) * WINDOW_STEP - 1)\n",
        ("tests/test_fast_paths.py::test_graphed_decoding_loop_generates_the_static_cache_tokens",),
        "a decoding step's attention window leaves out a written position",
    ),
    Mutation(
        "prefill-keys-cut-short",
        "src/pronlora/model/cache_window.py",
        "        width = key_states.shape[-2] if self.width is None else self.width\n",
        "        width = key_states.shape[-2] - 1 if self.width is None else self.width\n",
        ("tests/test_fast_paths.py::test_graphed_decoding_loop_generates_the_static_cache_tokens",),
        "the prefill's attention leaves out the prompt's last position",
    ),
    Mutation(
        "bench-cache-cut",
        "src/pronlora/infer/generation.py",
        "        limit = max(limit, max(lengths) + 1)\n",
        "        limit = max(lengths) + 1\n",
        ("tests/test_fast_paths.py::test_graphed_decoding_loop_generates_the_static_cache_tokens",),
        "forced-length benchmark decodes size their cache below a real decode's",
    ),
    Mutation(
        "speech-merge-rounds-first",
        "src/pronlora/model/speech_adapter.py",
        "            weight += (b @ a) * scaling\n",
        "            weight += ((b @ a) * scaling).to(weight.dtype)\n",
        (
            "tests/test_snapshot.py::"
            "test_the_speech_adapter_merge_gives_peft_merge_and_unload_bit_for_bit",
        ),
        "the speech adapter's product is rounded to bf16 before it is added (not PEFT's merge)",
    ),
    Mutation(
        "speech-merge-skips-a-module",
        "src/pronlora/model/speech_adapter.py",
        "        for name in sorted(adapter.modules):\n",
        "        for name in sorted(adapter.modules)[1:]:\n",
        (
            "tests/test_snapshot.py::"
            "test_the_speech_adapter_merge_gives_peft_merge_and_unload_bit_for_bit",
        ),
        "one adapted weight is left out of the speech adapter's merge",
    ),
    Mutation(
        "lora-init-from-the-loads-draws",
        "src/pronlora/model/load.py",
        "            torch.manual_seed(cfg.seed)\n",
        "            pass\n",
        (
            "tests/test_train.py::"
            "test_a_new_lora_starts_from_its_seed_whatever_the_load_drew_before",
        ),
        "the new LoRA's initial weights depend on what the load drew from the generator",
    ),
    Mutation(
        "nf4-merge-rounds-first",
        "src/pronlora/model/dequantized_merge.py",
        "        total = weight.float() + (b @ a) * module.scaling[adapter]\n",
        "        total = weight + ((b @ a) * module.scaling[adapter]).to(weight.dtype)\n",
        (
            "tests/test_infer.py::"
            "test_a_qlora_checkpoint_merges_into_its_dequantized_base_as_peft_merges",
        ),
        "an nf4 checkpoint's LoRA update is rounded to bf16 before it meets the dequantized base",
    ),
    Mutation(
        "shard-resume-ignores-settings",
        "src/pronlora/infer/shard_file.py",
        "    if changed:\n",
        "    if False:\n",
        ("tests/test_infer.py::test_killed_shard_resumes_to_the_same_lines",),
        "a shard resumed under other decoding settings mixes their answers with the earlier ones",
    ),
    Mutation(
        "swap-subtracts-delta",
        "src/pronlora/model/adapter_swap.py",
        "                layer.get_base_layer().weight.copy_(self.base[name], non_blocking=True)\n",
        "                layer.unmerge()\n",
        (
            "tests/test_infer.py::"
            "test_a_worker_swaps_each_next_checkpoint_in_as_a_fresh_load_has_it",
        ),
        "a swap undoes the last merge by subtracting its delta instead of restoring the base",
    ),
    Mutation(
        "swap-keeps-unfrozen-audio",
        "src/pronlora/model/adapter_swap.py",
        "        return self.unfrozen or any(audio in name for name in self.layers)\n",
        "        return any(audio in name for name in self.layers)\n",
        (
            "tests/test_infer.py::"
            "test_a_worker_swaps_each_next_checkpoint_in_as_a_fresh_load_has_it",
        ),
        "an unfreeze run's next checkpoint decodes from the last checkpoint's audio embeddings",
    ),
    Mutation(
        "decode-worker-per-item",
        "src/pronlora/launch/plan.py",
        "                array=math.ceil(shards / gpus),\n",
        "                array=math.ceil(len(r.evaluate) * shards / gpus),\n",
        ("tests/test_orchestration.py::test_table3_grid_plan_under_both_launchers",),
        "each checkpoint of a run gets a decode task of its own, paying the load again",
    ),
    Mutation(
        "unfreeze-trains-bf16",
        "src/pronlora/model/load.py",
        "            p.data = p.data.float()\n",
        "            p.data = p.data\n",
        ("tests/test_train.py::test_a_bf16_run_trains_float32_weights_so_small_steps_land",),
        "Unfreeze trains its audio weights in bf16, where AdamW's small steps round away",
    ),
    Mutation(
        "train-checks-after-imports",
        "jobs/train.py",
        "    inputs = check_training_inputs(cfg, args.prepared, args.model)\n"
        "    check_same_run(args.run_dir, cfg, inputs)\n",
        "    inputs = None\n",
        ("tests/test_startup.py::test_a_refused_training_job_exits_2_before_torch_is_imported",),
        "a training job refuses bad inputs only after torch and transformers are imported",
    ),
    Mutation(
        "decode-checks-per-item",
        "jobs/infer.py",
        "    check_decode_inputs(\n        args.run_dir,\n",
        "    (lambda *a, **k: None)(\n        args.run_dir,\n",
        (
            "tests/test_startup.py::"
            "test_a_decode_job_refuses_any_item_of_its_share_before_decoding_the_first",
        ),
        "a decode job refuses its last item only after decoding the ones before it",
    ),
    Mutation(
        "submitit-decode-checks-per-item",
        "src/pronlora/launch/submitit_backend.py",
        "        check_decode_inputs(\n            self.run_dir,\n",
        "        (lambda *a, **k: None)(\n            self.run_dir,\n",
        (
            "tests/test_startup.py::test_a_submitit_decode_task_refuses_any_item_of_its_share_"
            "before_decoding_the_first",
        ),
        "a submitit decode task refuses its last item only after decoding the ones before it",
    ),
    Mutation(
        "training-follows-planted-links",
        "src/pronlora/core/layout.py",
        "        for path in self.training_outputs:\n"
        "            no_links_in_tree(self.root, path)\n",
        "        pass\n",
        (f"{T_SHARED}::test_a_training_job_never_writes_through_a_planted_link",),
        "a training job writes its log and checkpoints through a link planted in its run dir",
    ),
    Mutation(
        "appends-follow-a-late-link",
        "src/pronlora/core/atomic.py",
        "flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW",
        "flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT",
        (f"{T_SHARED}::test_a_training_job_never_writes_through_a_planted_link",),
        "the training log (and shards, job times) appended through a link planted mid-job",
    ),
    Mutation(
        "train-log-keeps-replayed-steps",
        "src/pronlora/train/trainer.py",
        '        kept = [e for e in entries if e["step"] <= state.global_step]\n',
        "        kept = entries\n",
        ("tests/test_train.py::test_signal_mid_epoch_then_resume_equals_uninterrupted",),
        "a resumed run's log holds the replayed steps twice",
    ),
    Mutation(
        "prep-audio-through-links",
        LAYOUT,
        'return no_links_inside(self.root, self.root / "audio" / split / f"{utt_id}.wav")',
        'return self.root / "audio" / split / f"{utt_id}.wav"',
        ("tests/test_prep.py::test_prep_never_writes_audio_through_a_link_in_its_out_dir",),
        "prep writes a corpus's byte-only clips through a link planted in its out dir",
    ),
    Mutation(
        "damaged-checkpoint-found-late",
        "src/pronlora/infer/inputs.py",
        "        check_checkpoint_weights(ckpt_dir)\n",
        "        pass\n",
        (
            "tests/test_startup.py::"
            "test_a_decode_job_refuses_any_item_of_its_share_before_decoding_the_first",
        ),
        "a checkpoint damaged after training is found only when its turn to decode comes",
    ),
)

# Survivors accepted on purpose: mutation id -> why no test should fail.
EXPLAINED: dict[str, str] = {}


def mutant_copy(work: Path) -> Path:
    """The repo without its venv and caches, beside a link to ../shared."""
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".pytest_cache", "bench", ".whl", ".so762", ".bnb", "demo"
    )
    copy = work / "repo"
    shutil.copytree(REPO, copy, ignore=ignore)
    (work / "shared").symlink_to((REPO.parent / "shared").resolve())
    return copy


def run(mutation: Mutation, copy: Path) -> tuple[str, float]:
    path = copy / mutation.path
    original = path.read_text()
    if original.count(mutation.find) != 1:
        return f"stale: the code to replace occurs {original.count(mutation.find)} times", 0.0
    path.write_text(original.replace(mutation.find, mutation.replace))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
            cwd=copy,
            capture_output=True,
            text=True,
            env=_env(copy),
        )
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - t0
    if proc.returncode == 1:
        return "killed", seconds
    if proc.returncode == 0:
        return "SURVIVED", seconds
    return f"error (pytest exit {proc.returncode}): {proc.stdout[-300:]}", seconds


def _env(copy: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(copy / "src")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", help="comma list of mutation ids")
    ap.add_argument("--report", help="write the results as markdown here")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pronlora-mutants-") as tmp:
        copy = mutant_copy(Path(tmp))
        imported = subprocess.run(
            [sys.executable, "-c", "import pronlora; print(pronlora.__file__)"],
            capture_output=True,
            text=True,
            env=_env(copy),
        ).stdout.strip()
        if not imported.startswith(str(copy)):
            raise SystemExit(f"the copy imports pronlora from {imported}, not from {copy}")
        for m in chosen:
            outcome, seconds = run(m, copy)
            if outcome == "SURVIVED" and m.id in EXPLAINED:
                outcome = f"survived (explained: {EXPLAINED[m.id]})"
            rows.append((m, outcome, seconds))
            print(f"{m.id:28s} {outcome} ({seconds:.0f} s)", flush=True)
    lines = [
        "# Mutation check",
        "",
        f"`.venv/bin/python tools/mutations.py` on {time.strftime('%Y-%m-%d')}: "
        f"{sum(o == 'killed' for _, o, _ in rows)} of {len(rows)} mutations killed.",
        "",
        "| mutation | what it breaks | file | outcome | s |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| `{m.id}` | {m.what} | `{m.path}` | {o} | {s:.0f} |" for m, o, s in rows]
    if args.report:
        Path(args.report).write_text("\n".join(lines) + "\n")
    bad = [m.id for m, o, _ in rows if o == "SURVIVED" or o.startswith(("stale", "error"))]
    if bad:
        print(f"not killed: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""The training stage: a named config, prepared instances and a snapshot -> LoRA checkpoints.

Uses the transformers ``Trainer`` rather than TRL's ``SFTTrainer``: our collator already does
what SFTTrainer adds (chat formatting, completion-only labels, audio feature extraction), and
SFTTrainer's dataset preparation would have to be switched off for audio rows anyway; the
Trainer gives the rest (AdamW, schedules, exact mid-epoch resumption with RNG and data order).

The run dir's layout is ``layout.RunDir``.

Stopping: a stop signal (USR1/USR2/TERM) or the appearance of ``stop_file`` makes every rank
finish the current optimizer step, save a step checkpoint and return EXIT_REQUEUE; under
several processes the ranks agree on the stop (any rank's request stops all at the same
step), and the main process writes ``requeue_marker`` for the batch script, since torchrun
turns a worker's non-zero exit into a failure.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from pronlora.atomic import follow_umask, write_json, write_text
from pronlora.collate import Collator, approx_tokens
from pronlora.config import EXECUTION_KEYS, ConfigError, TrainConfig, accumulation_steps, to_dict
from pronlora.distributed import (
    DEEPSPEED_ENGINES,
    any_rank,
    barrier,
    deepspeed_config,
    ensure_universal,
    init_process_group,
    is_complete,
    is_main_process,
    prepare_cpu_deepspeed,
    resolve_engine,
    resume_plan,
    shutdown_process_group,
    single_process_env,
    sum_over_ranks,
    verify_replicas,
    world_size,
    write_checkpoint_parallel,
)
from pronlora.errors import DataError, InputError
from pronlora.layout import UNFROZEN_FILE, PreparedDir, RunDir
from pronlora.lock import OutputLock
from pronlora.loss import label_only_loss
from pronlora.model.load import Loaded, load_model, load_unfrozen_state, unfrozen_state
from pronlora.model.snapshot import check_snapshot
from pronlora.sampler import LengthGroupedSampler
from pronlora.versions import versions

log = logging.getLogger(__name__)

# Exit status meaning "checkpoint saved after a signal; requeue me" (the sbatch template
# turns it into `scontrol requeue`).
EXIT_REQUEUE = 3
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class NonFiniteLossError(InputError, RuntimeError):
    pass


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _complete_checkpoints(trainer_dir: Path) -> list[Path]:
    """Step checkpoints whose trainer state was written (the Trainer writes it last)."""
    found = []
    for d in trainer_dir.glob("checkpoint-*"):
        state, adapter = d / "trainer_state.json", d / "adapter_model.safetensors"
        if state.is_file() and adapter.is_file() and is_complete(d):
            found.append(d)
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


def _save_epoch(trainer: Any, tokenizer: Any, dest: Path, meta: dict[str, Any]) -> None:
    """Write one epoch checkpoint into a temporary dir and rename it into place.

    Called on every rank: ``save_model`` gathers partitioned weights (ZeRO-3) and writes on
    the main process only (adapter, plus unfrozen modules through ``_save``).
    """
    tmp = dest.with_name(dest.name + ".partial")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "meta.json", meta)
        follow_umask(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    barrier()


def build_trainer(
    cfg: TrainConfig,
    loaded: Loaded,
    rows: list[dict[str, Any]],
    run_dir: Path,
    stop: dict[str, Any] | None = None,
    engine: str = "ddp",
    load_universal: bool = False,
    stop_file: Path | None = None,
) -> Any:
    """The Trainer for one run; ``engine`` is resolved (see distributed.resolve_engine).

    ``stop`` is the request a signal handler fills in (``install_stop_signals``, called by the
    training stage only: building a Trainer, e.g. in a benchmark, installs no handler).
    """
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cuda = torch.cuda.is_available()
    deepspeed = engine in DEEPSPEED_ENGINES
    stop = stop if stop is not None else {"signal": None}

    class StopOnSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            asked = stop["signal"] is not None or (stop_file is not None and stop_file.exists())
            if any_rank(asked, args.device):  # one all-reduce per optimizer step
                if stop["signal"] is None:
                    stop["signal"] = "stop file" if asked else "another rank"
                    log.warning("stop requested (%s): saving a checkpoint", stop["signal"])
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kw):
            barrier()  # every rank's shard of this checkpoint is on disk
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                follow_umask(ckpt)  # before the marker that makes it count as complete
                write_checkpoint_parallel(ckpt, engine, args.world_size)
            return control

    class SaveEpoch(TrainerCallback):
        trainer: Any = None

        def on_epoch_end(self, args, state, control, model=None, **kw):
            epoch = round(state.epoch or 0)
            # an epoch that ended, also on the step a stop was requested: the resumed run
            # starts after it and would never write it
            if abs((state.epoch or 0) - epoch) > 1e-6 or epoch < 1:
                return control
            dest = RunDir(run_dir).epoch(epoch)
            trained = [p for p in self.trainer.model.parameters() if p.requires_grad]
            bad = any(not torch.isfinite(p).all() for p in trained)
            if any_rank(bad, args.device):
                raise NonFiniteLossError(
                    f"trainable weights are not finite at the end of epoch {epoch} (lr "
                    f"{cfg.lr}); {dest} is not written"
                )
            meta = {"epoch": epoch, "global_step": state.global_step, "config": cfg.name}
            _save_epoch(self.trainer, loaded.tokenizer, dest, meta)
            log.info("saved %s", dest)
            return control

    class PronloraTrainer(Trainer):
        _tokens = 0
        tokens_total = 0  # non-padding tokens trained on, for throughput and benchmarks
        _t0 = time.perf_counter()

        def training_step(self, model, inputs, num_items_in_batch=None):
            n = int(inputs["attention_mask"].sum())
            self._tokens += n
            self.tokens_total += n
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss).all():
                last = _complete_checkpoints(RunDir(run_dir).trainer)
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at step {self.state.global_step + 1}; stopping. "
                    f"Last good checkpoint: {last[-1] if last else 'none'}"
                )
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not cfg.label_only_loss or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss_sum, n = label_only_loss(model, inputs)
            # Same normalisation as the model's own loss: by the label count of the whole
            # accumulated batch when the Trainer provides it (so accumulation is exact).
            denom = num_items_in_batch if num_items_in_batch is not None else n
            if torch.is_tensor(denom):
                denom = denom.to(loss_sum.device)
            loss = loss_sum / denom
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # denom counts every rank's labels and DDP averages gradients over ranks:
                # scale back up, as the Trainer does for a model's own loss.
                loss = loss * self.accelerator.num_processes
            return loss

        def _get_train_sampler(self, train_dataset=None):
            if not cfg.group_by_length:
                return super()._get_train_sampler(train_dataset)
            return LengthGroupedSampler(
                [approx_tokens(r) for r in rows],
                cfg.micro_batch,
                mega_batch=cfg.micro_batch * cfg.grad_accum * 4,
                seed=cfg.seed,
            )

        def log(self, logs, start_time=None):
            # every rank logs at the same steps (the Trainer gathers the loss first)
            now = time.perf_counter()
            tokens = sum_over_ranks(self._tokens, self.args.device)
            if "loss" in logs:  # a step entry; the end-of-training summary has its own rates
                logs["tokens"] = tokens  # non-padding tokens of all ranks since the last entry
                logs["tokens_per_s"] = round(tokens / max(now - self._t0, 1e-9), 1)
                self._tokens, self._t0 = 0, now
            if cuda:
                logs["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            super().log(logs, start_time)
            if not self.is_world_process_zero():
                return
            entry = {"step": self.state.global_step, "epoch": self.state.epoch, **logs}
            with open(RunDir(run_dir).train_log, "a") as fh:
                fh.write(json.dumps(entry) + "\n")

        def _save(self, output_dir=None, state_dict=None):
            super()._save(output_dir, state_dict)
            if cfg.strategy == "unfreeze":
                from safetensors.torch import save_file

                save_file(unfrozen_state(self.model), str(Path(output_dir) / UNFROZEN_FILE))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            path = Path(resume_from_checkpoint) / UNFROZEN_FILE
            if cfg.strategy == "unfreeze":
                load_unfrozen_state(self.model, path)

    cpu_deepspeed = deepspeed and not cuda
    if cpu_deepspeed:
        prepare_cpu_deepspeed()
    args = TrainingArguments(
        output_dir=str(RunDir(run_dir).trainer),
        per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=accumulation_steps(cfg, world_size()),
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a fraction of all steps
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.keep_step_checkpoints,
        bf16=cfg.dtype == "bf16" and cuda,
        seed=cfg.seed,
        data_seed=cfg.seed,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        gradient_checkpointing=cfg.use_gradient_checkpointing,
        ddp_find_unused_parameters=False,  # every trainable weight is used by every batch
        gradient_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=cfg.dataloader_workers,
        remove_unused_columns=False,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not cuda and not deepspeed,
        deepspeed=deepspeed_config(engine, load_universal) if deepspeed else None,
        accelerator_config={"use_configured_state": cpu_deepspeed},
    )
    one_device_per_process(args)
    collator = Collator(
        loaded.tokenizer,
        loaded.feature_extractor,
        max_length=cfg.max_length,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
    )
    save_epoch = SaveEpoch()
    trainer = PronloraTrainer(
        model=loaded.model,
        args=args,
        train_dataset=_Rows(rows),
        data_collator=collator,
        callbacks=[StopOnSignal(), save_epoch],
    )
    save_epoch.trainer = trainer
    trainer.stop_state = stop
    return trainer


def install_stop_signals(signals: tuple[signal.Signals, ...]) -> dict[str, Any]:
    """Make ``signals`` request a checkpoint and a stop at the end of the current step."""
    stop: dict[str, Any] = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        stop["signal"] = signal.Signals(signum).name

    for sig in signals:
        signal.signal(sig, on_signal)
    return stop


def one_device_per_process(args: Any) -> None:
    """Never nn.DataParallel: a single process trains on exactly one GPU.

    The Trainer wraps the model in DataParallel when one process sees several GPUs (an
    interactive allocation of 4 GPUs, say); our fast paths break in its replicas and the
    throughput is far below data-parallel training. Several GPUs are used through torchrun
    (or the Slurm template, which starts it), one process each.
    """
    visible = args.n_gpu  # resolves the device first
    if visible > 1 and world_size() == 1:
        log.warning(
            "this process sees %d GPUs and uses only %s; to train on all of them start one "
            "process per GPU: torchrun --nproc-per-node=%d jobs/train.py ... (slurm/pipeline.sh "
            "--gpus-per-node %d does this)",
            visible,
            args.device,
            visible,
            visible,
        )
        args._n_gpu = 1  # what the Trainer itself sets under model parallelism


def _check_same_run(run_dir: Path, resolved: dict[str, Any], model: Path, prepared: Path) -> None:
    saved_path = RunDir(run_dir).run_json
    if not saved_path.is_file():
        return
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{saved_path}: not valid JSON ({exc})") from None
    diffs = [
        k for k in resolved if k not in EXECUTION_KEYS and saved["config"].get(k) != resolved[k]
    ]
    if diffs or saved["model"] != str(model) or saved["prepared"] != str(prepared):
        what = ", ".join(diffs) or "model/prepared path"
        raise ConfigError(
            f"--run-dir {run_dir} holds a run with a different setup ({what} differ); "
            "use a new run dir"
        )


def _train_ranks(
    cfg: TrainConfig,
    rows: list[dict[str, Any]],
    model_dir: Path,
    run_dir: Path,
    stop_signals: tuple[signal.Signals, ...],
    stop_file: str | Path | None,
    requeue_marker: str | Path | None,
) -> int:
    world = world_size()
    done = _complete_checkpoints(RunDir(run_dir).trainer)
    resume = done[-1] if done else None
    engine = resolve_engine(cfg.engine, world, resume)
    if engine in DEEPSPEED_ENGINES and world == 1:
        single_process_env()
    universal = False
    if resume is not None:
        try:
            universal = resume_plan(resume, engine, world)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if universal and is_main_process():
            ensure_universal(resume)
        barrier()

    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg, model_dir)
    if resume is not None and is_main_process():
        recover_epoch_checkpoint(run_dir, resume, loaded.tokenizer)
    trainable = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    log.info(
        "config %s: %d trainable parameters, %d training instances, effective batch %d "
        "(%d process(es), engine %s)",
        cfg.name,
        trainable,
        len(rows),
        cfg.effective_batch,
        world,
        engine,
    )
    stop_path = Path(stop_file) if stop_file else None
    stop = install_stop_signals(stop_signals)
    trainer = build_trainer(cfg, loaded, rows, run_dir, stop, engine, universal, stop_path)
    if resume:
        log.info("resuming from %s%s", resume, " (universal form)" if universal else "")
    steps_per_epoch = math.ceil(len(rows) / cfg.effective_batch)
    log.info("%d optimizer steps per epoch", steps_per_epoch)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.stop_state["signal"] is not None:
        step = trainer.state.global_step
        if requeue_marker and is_main_process():
            write_json(
                Path(requeue_marker),
                {"global_step": step, "reason": str(trainer.stop_state["signal"])},
            )
        log.warning(
            "stopped after step %d with a checkpoint; exit %d to requeue", step, EXIT_REQUEUE
        )
        return EXIT_REQUEUE
    # ZeRO-3 ranks hold different partitions by design
    agreed = verify_replicas(trainer.model, trainer.args.device) if engine != "zero3" else None
    if agreed:
        log.info(agreed)
    if is_main_process():
        run = RunDir(run_dir)
        done = {"global_step": trainer.state.global_step, "epochs": run.epoch_checkpoints()}
        write_json(run.done_json, done)
    return 0


def recover_epoch_checkpoint(run_dir: Path, resume: Path, tokenizer: Any) -> Path | None:
    """Rebuild the epoch checkpoint a kill interrupted, from the step checkpoint at its end.

    When the last step of an epoch is also a save step, the Trainer writes that step
    checkpoint before the epoch callback; a kill during the epoch save then leaves a resumable
    state after the epoch's end, and the resumed run would never write the epoch. The step
    checkpoint holds the same weights, so the epoch is rebuilt from it.
    """
    state = json.loads((resume / "trainer_state.json").read_text())
    epoch = float(state.get("epoch") or 0)
    k = round(epoch)
    dest = RunDir(run_dir).epoch(k)
    if k < 1 or abs(epoch - k) > 1e-6 or dest.is_dir():
        return None
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", UNFROZEN_FILE):
        if (resume / name).is_file():
            shutil.copy2(resume / name, tmp / name)
    tokenizer.save_pretrained(tmp)
    meta = {"epoch": k, "global_step": state["global_step"], "config": _run_config_name(run_dir)}
    write_json(tmp / "meta.json", meta)
    follow_umask(tmp)
    tmp.rename(dest)
    log.warning("rebuilt %s from %s (a kill had interrupted its save)", dest, resume)
    return dest


def _run_config_name(run_dir: Path) -> str:
    return RunDir(run_dir).read_run()["config"]["name"]


def train(
    cfg: TrainConfig,
    prepared: str | Path,
    model_dir: str | Path,
    run_dir: str | Path,
    stop_signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
    stop_file: str | Path | None = None,
    requeue_marker: str | Path | None = None,
) -> int:
    """Train (or resume) into ``run_dir``; returns 0 when done, EXIT_REQUEUE after a stop.

    ``stop_signals`` are the signals that make it save and stop; a launcher that handles
    signals itself (submitit) passes fewer. ``stop_file``: stop when this file appears.
    ``requeue_marker``: written (main process) when stopping with a checkpoint to resume from.
    """
    prepared, model_dir, run_dir = (Path(p).resolve() for p in (prepared, model_dir, run_dir))
    # Every input is checked before anything is written, so a corrected command is not refused
    # as "a different setup" by the run.json of a failed one.
    rows = PreparedDir(prepared).load_split("train")
    manifest = PreparedDir(prepared).manifest()
    check_snapshot(model_dir)
    resolved = to_dict(cfg)
    run = RunDir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(run.lock, f"run dir {run_dir}")
    if is_main_process():
        lock.acquire()
    try:
        if is_main_process():
            _check_same_run(run_dir, resolved, model_dir, prepared)
            write_text(run.config_yaml, yaml.safe_dump(resolved, sort_keys=True))
            write_json(run.versions_json, versions())
            write_json(
                run.run_json,
                {
                    "config": resolved,
                    "model": str(model_dir),
                    "prepared": str(prepared),
                    "data_content_hash": manifest.get("content_hash"),
                    "synthetic_data": manifest.get("synthetic"),
                },
            )
        init_process_group()
        rc = _train_ranks(cfg, rows, model_dir, run_dir, stop_signals, stop_file, requeue_marker)
        # every rank done: tear the group down before exit (a gloo group left to the
        # interpreter's shutdown can abort the process after a successful run)
        shutdown_process_group()
    finally:
        lock.release()
    return rc

"""The transformers ``Trainer`` as pronlora trains with it: loss, sampling, logging, stops, epochs.

Uses the transformers ``Trainer`` rather than TRL's ``SFTTrainer``: our collator already does
what SFTTrainer adds (chat formatting, completion-only labels, audio feature extraction), and
SFTTrainer's dataset preparation would have to be switched off for audio rows anyway; the
Trainer gives the rest (AdamW, schedules, exact mid-epoch resumption with RNG and data order).
``build_trainer`` is the one way to make it (the training recipe and the benchmarks use it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from pronlora.core.atomic import follow_umask, open_append, write_text
from pronlora.core.config import TrainConfig, accumulation_steps, pass_size
from pronlora.core.distributed import (
    DEEPSPEED_ENGINES,
    any_rank,
    barrier,
    deepspeed_config,
    prepare_cpu_deepspeed,
    sum_over_ranks,
    world_size,
    write_checkpoint_parallel,
)
from pronlora.core.errors import InputError
from pronlora.core.layout import UNFROZEN_FILE, RunDir
from pronlora.model.audio_cache import AudioEmbeddingCache, why_not_cached
from pronlora.model.collate import Collator, approx_tokens
from pronlora.model.load import Loaded, load_unfrozen_state, unfrozen_state
from pronlora.train.checkpoints import TokenizerFiles, complete_checkpoints, save_epoch
from pronlora.train.loss import label_only_loss
from pronlora.train.sampler import LengthGroupedSampler
from pronlora.train.stopping import StopRequest
from pronlora.train.tracking import integration_trackers, tracking_callbacks

log = logging.getLogger(__name__)


class NonFiniteLossError(InputError, RuntimeError):
    pass


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class StopOnRequest(TrainerCallback):
    """Ranks agree on a stop after each optimizer step; a step checkpoint is then saved."""

    def __init__(self, stop: StopRequest, engine: str) -> None:
        self.stop, self.engine = stop, engine

    def on_step_end(self, args, state, control, **kw):
        asked = self.stop.asked_here()
        if any_rank(asked, args.device):  # one all-reduce per optimizer step
            self.stop.agree("stop file" if asked else "another rank")
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kw):
        barrier()  # every rank's shard of this checkpoint is on disk
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            follow_umask(ckpt)  # before the marker that makes it count as complete
            write_checkpoint_parallel(ckpt, self.engine, args.world_size)
        return control


class OptimizerStateOnDevice(TrainerCallback):
    """Put every AdamW step count on its parameter's device once the checkpoint is loaded.

    DeepSpeed's universal loading (a ZeRO-2 run resumed on another GPU count) restores the
    step counts as CPU tensors, which the fused AdamW kernel refuses ("state_steps is on cpu");
    found resuming a 2-GPU run on 1 GPU.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kw):
        opt = self.trainer.optimizer
        while getattr(opt, "optimizer", None) is not None:  # accelerate's, DeepSpeed's wrappers
            opt = opt.optimizer
        if not isinstance(opt, torch.optim.Optimizer):
            return control
        for group in opt.param_groups:
            for p in group["params"]:
                step = opt.state.get(p, {}).get("step")
                if torch.is_tensor(step) and step.device != p.device:
                    opt.state[p]["step"] = step.to(p.device)
        return control


class LaggedLossCheck:
    """Each pass's loss checked for NaN/inf one pass later, without stalling the GPU.

    Reading a loss on the host waits for every kernel queued before it; done right after each
    pass, the GPU idled while the host prepared the next one. The loss is instead copied to
    pinned memory behind a CUDA event and read once the next pass is queued (or before any
    save), so a non-finite loss still stops the run before a checkpoint holds its update.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[torch.Tensor, Any, int]] = []

    def record(self, loss: torch.Tensor, step: int) -> None:
        value = loss.detach().float().reshape(())
        if value.is_cuda:
            host = torch.empty((), dtype=torch.float32, pin_memory=True)
            host.copy_(value, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, event, step))
        else:
            self._pending.append((value, None, step))

    def take(self, wait_for_all: bool) -> tuple[float, int] | None:
        """The first non-finite (loss, step) among the checked passes: every pass recorded
        when ``wait_for_all``, else all but the last."""
        keep = 0 if wait_for_all else 1
        while len(self._pending) > keep:
            host, event, step = self._pending.pop(0)
            if event is not None:
                event.synchronize()
            value = float(host)
            if not math.isfinite(value):
                self._pending.clear()
                return value, step
        return None


class LossCheckedAtTrainEnd(TrainerCallback):
    """The last passes' losses are checked too (saves check theirs in the trainer)."""

    def __init__(self, trainer: PronloraTrainer) -> None:
        self.trainer = trainer

    def on_train_end(self, args, state, control, **kw):
        self.trainer.check_losses(wait_for_all=True)
        return control


class TrainLogFromResumedStep(TrainerCallback):
    """The training log continues from the resumed step: entries of steps this job replays
    (logged before a kill, after the last step checkpoint) and a line cut off by the kill are
    dropped, as TensorBoard's ``purge_step`` drops their events, so each step appears once."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero or not self.run.train_log.is_file():
            return
        entries = self.run.read_train_log()
        kept = [e for e in entries if e["step"] <= state.global_step]
        text = "".join(json.dumps(e) + "\n" for e in kept)
        # the kept lines are the file's own (same dumps), so any drop shortens it
        if len(text.encode()) != self.run.train_log.stat().st_size:
            log.info(
                "%s: %d entries after step %d dropped (this job logs those steps again)",
                self.run.train_log,
                len(entries) - len(kept),
                state.global_step,
            )
            write_text(self.run.train_log, text)


class EpochCheckpoints(TrainerCallback):
    """An epoch checkpoint at every epoch's end, refused when the trained weights are not finite."""

    def __init__(self, trainer: PronloraTrainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kw):
        t = self.trainer
        t.check_losses(wait_for_all=True)
        epoch = round(state.epoch or 0)
        # an epoch that ended, also on the step a stop was requested: the resumed run
        # starts after it and would never write it
        if abs((state.epoch or 0) - epoch) > 1e-6 or epoch < 1:
            return control
        dest = t.run.epoch(epoch)
        trained = [p for p in t.model.parameters() if p.requires_grad]
        bad = any(not torch.isfinite(p).all() for p in trained)
        if any_rank(bad, args.device):
            raise NonFiniteLossError(
                f"trainable weights are not finite at the end of epoch {epoch} (lr "
                f"{t.cfg.lr}); {dest} is not written"
            )
        meta = {"epoch": epoch, "global_step": state.global_step, "config": t.cfg.name}
        t.run.check_training_outputs()  # a link planted since the start would take it
        save_epoch(t, t.tokenizer_to_save, dest, meta)
        log.info("saved %s", dest)
        return control


class PronloraTrainer(Trainer):
    """Label-only loss, length-grouped sampling, token throughput, unfrozen modules, epochs."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        rows: list[dict[str, Any]],
        tokenizer: Any,
        **kw: Any,
    ) -> None:
        super().__init__(train_dataset=Rows(rows), **kw)
        self.cfg, self.run, self.lengths = cfg, RunDir(run_dir), [approx_tokens(r) for r in rows]
        # built at the first pass, once the model sits on its training device; the collator's
        # clip_keys says whether this run caches (build_trainer)
        self.audio_cache: AudioEmbeddingCache | None = None
        # saved with epoch checkpoints only (as processing_class it would go into every step one)
        self.tokenizer_to_save = TokenizerFiles(tokenizer)
        # non-padding tokens trained on (throughput, benchmarks): counted on the batch's device
        # and read at logging steps, so a pass never waits for the GPU to count them
        self._tokens_seen: torch.Tensor | int = 0
        self._tokens_logged, self._t0 = 0, time.perf_counter()
        self._started = self._t0  # log entries carry time_s since, for rates and time left
        self.loss_check = LaggedLossCheck()
        self.add_callback(TrainLogFromResumedStep(self.run))
        self.add_callback(EpochCheckpoints(self))
        self.add_callback(OptimizerStateOnDevice(self))
        self.add_callback(LossCheckedAtTrainEnd(self))

    @property
    def tokens_total(self) -> int:
        return int(self._tokens_seen)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._tokens_seen = self._tokens_seen + inputs["attention_mask"].sum()
        loss = super().training_step(model, inputs, num_items_in_batch)
        # this pass is queued; the previous one's check waits for that pass only
        self.check_losses()
        self.loss_check.record(loss, self.state.global_step + 1)
        return loss

    def check_losses(self, wait_for_all: bool = False) -> None:
        """Raise if a checked pass's loss was not finite (all recorded ones when asked)."""
        bad = self.loss_check.take(wait_for_all)
        if bad is not None:
            value, step = bad
            last = complete_checkpoints(self.run.trainer)
            raise NonFiniteLossError(
                f"loss became {value} at step {step}; stopping. "
                f"Last good checkpoint: {last[-1] if last else 'none'}"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.data_collator.clip_keys:
            if self.audio_cache is None:
                self.audio_cache = AudioEmbeddingCache.build(
                    model,
                    self.train_dataset.rows,
                    self.data_collator,
                    self.args.device,
                    self.accelerator.autocast(),  # the context the model's forward runs in
                    self.args.dataloader_num_workers,
                )
            inputs = self.audio_cache.model_inputs(model, inputs)
        if not self.cfg.label_only_loss or return_outputs:
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
        if not self.cfg.group_by_length:
            return super()._get_train_sampler(train_dataset)
        cfg = self.cfg
        # one optimizer step = grad_accum micro-batches of the recipe, on any rank count
        return LengthGroupedSampler(self.lengths, cfg.micro_batch, cfg.grad_accum, cfg.seed)

    def log(self, logs, start_time=None):
        # every rank logs at the same steps (the Trainer gathers the loss first)
        now = time.perf_counter()
        seen = self.tokens_total
        tokens = sum_over_ranks(seen - self._tokens_logged, self.args.device)
        if "loss" in logs:  # a step entry; the end-of-training summary has its own rates
            logs["tokens"] = tokens  # non-padding tokens of all ranks since the last entry
            logs["tokens_per_s"] = round(tokens / max(now - self._t0, 1e-9), 1)
            self._tokens_logged, self._t0 = seen, now
        if torch.cuda.is_available():
            logs["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        super().log(logs, start_time)
        if not self.is_world_process_zero():
            return
        entry = {
            "step": self.state.global_step,
            "epoch": self.state.epoch,
            "time_s": round(now - self._started, 2),
            **logs,
        }
        with open_append(self.run.train_log) as fh:
            fh.write(json.dumps(entry) + "\n")

    def _save_checkpoint(self, model, trial):
        self.check_losses(wait_for_all=True)  # no checkpoint after a non-finite pass
        self.run.check_training_outputs()  # a link planted since the start would take it
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir=None, state_dict=None):
        # Without a processing_class the Trainer saves its collator's tokenizer into every
        # checkpoint (13 MB, 0.2-0.3 s each); epoch checkpoints get theirs from save_epoch.
        collator, self.data_collator = self.data_collator, None
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.data_collator = collator
        if self.cfg.strategy == "unfreeze":
            from safetensors.torch import save_file

            save_file(unfrozen_state(self.model), str(Path(output_dir) / UNFROZEN_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.cfg.strategy == "unfreeze":
            load_unfrozen_state(self.model, Path(resume_from_checkpoint) / UNFROZEN_FILE)


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """Activation checkpointing by the names the installed transformers takes: 5.23 renamed
    ``gradient_checkpointing(_kwargs)`` to ``activation_checkpointing(_kwargs)``, and the old
    names warn until v6 removes them."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    stem = "activation" if "activation_checkpointing" in names else "gradient"
    return {
        f"{stem}_checkpointing": enabled,
        f"{stem}_checkpointing_kwargs": {"use_reentrant": False},
    }


def training_arguments(
    cfg: TrainConfig, run_dir: Path, engine: str, load_universal: bool
) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    deepspeed = engine in DEEPSPEED_ENGINES
    cpu_deepspeed = deepspeed and not cuda
    if cpu_deepspeed:
        prepare_cpu_deepspeed()
    args = TrainingArguments(
        output_dir=str(RunDir(run_dir).trainer),
        # the sampler orders each step's micro-batches longest first, so a pass of several
        # takes neighbouring ones (see sampler.py)
        per_device_train_batch_size=cfg.micro_batch * pass_size(cfg, world_size()),
        gradient_accumulation_steps=accumulation_steps(cfg, world_size()),
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        # transformers 5 takes the warm-up as steps, or as a fraction of all steps when < 1
        # (validated in config.py); it has no separate ratio argument any more
        warmup_steps=cfg.warmup_ratio,
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
        **checkpointing_arguments(cfg.use_gradient_checkpointing),
        ddp_find_unused_parameters=False,  # every trainable weight is used by every batch
        dataloader_num_workers=cfg.dataloader_workers,
        remove_unused_columns=False,
        report_to=integration_trackers(cfg),
        disable_tqdm=True,
        use_cpu=not cuda and not deepspeed,
        deepspeed=deepspeed_config(engine, load_universal) if deepspeed else None,
        # batches copied to the GPU from pinned memory without waiting for it (the host then
        # prepares the next pass while the GPU still runs the last one)
        dataloader_pin_memory=cuda,
        accelerator_config={"use_configured_state": cpu_deepspeed, "non_blocking": cuda},
    )
    one_device_per_process(args)
    return args


def one_device_per_process(args: TrainingArguments) -> None:
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


def build_trainer(
    cfg: TrainConfig,
    loaded: Loaded,
    rows: list[dict[str, Any]],
    run_dir: Path,
    stop: StopRequest | None = None,
    engine: str = "ddp",
    load_universal: bool = False,
) -> PronloraTrainer:
    """The Trainer for one run; ``engine`` is resolved (see distributed.resolve_engine).

    ``stop`` is the request the entry point's signal handlers fill in; without one only
    ``max_steps`` or the epochs end the run.
    """
    uncached = (
        why_not_cached(loaded.model, cfg.strategy, engine)
        if cfg.cache_audio_embeddings
        else "cache_audio_embeddings: false"
    )
    if uncached:
        log.info("audio embeddings recomputed in every pass: %s", uncached)
    collator = Collator(
        loaded.tokenizer,
        loaded.feature_extractor,
        max_length=cfg.max_length,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
        clip_keys=uncached is None,
    )
    return PronloraTrainer(
        cfg,
        run_dir,
        rows,
        loaded.tokenizer,
        model=loaded.model,
        args=training_arguments(cfg, run_dir, engine, load_universal),
        data_collator=collator,
        callbacks=[StopOnRequest(stop or StopRequest(), engine), *tracking_callbacks(cfg, run_dir)],
    )

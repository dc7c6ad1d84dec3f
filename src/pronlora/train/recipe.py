"""The training stage: a named config, prepared instances and a snapshot -> LoRA checkpoints.

A recipe in torchtune's manner: every input is validated before anything is written, then
explicit setup steps (run dir, resume point and engine, model, trainer with its callbacks),
the loop, and the run's end (requeue marker or ``done.json``). The run dir's layout is
``layout.RunDir``; the Trainer itself is ``trainer.py``; stopping is ``stopping.py``'s protocol
(the entry point installs the signal handlers and passes the ``StopRequest`` they fill).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from pronlora.core.atomic import write_json, write_text
from pronlora.core.config import ConfigError, TrainConfig, to_dict
from pronlora.core.distributed import (
    DEEPSPEED_ENGINES,
    barrier,
    ensure_universal,
    init_process_group,
    is_main_process,
    resolve_engine,
    resume_plan,
    shutdown_process_group,
    single_process_env,
    verify_replicas,
    world_size,
)
from pronlora.core.errors import DataError
from pronlora.core.layout import RunDir
from pronlora.core.lock import OutputLock
from pronlora.core.versions import versions
from pronlora.model.load import Loaded, load_model, prepare_cache
from pronlora.train.checkpoints import complete_checkpoints, recover_epoch_checkpoint
from pronlora.train.inputs import TrainingInputs, check_same_run, check_training_inputs
from pronlora.train.stopping import EXIT_REQUEUE, StopRequest
from pronlora.train.tracking import start_tracking
from pronlora.train.trainer import NonFiniteLossError, PronloraTrainer, build_trainer

__all__ = ["EXIT_REQUEUE", "NonFiniteLossError", "TrainingRecipe", "build_trainer", "train"]

log = logging.getLogger(__name__)


def training_device_map(cfg: TrainConfig, engine: str) -> dict[str, int] | None:
    """Where a training process loads its bf16 base: straight onto its own GPU, so that the
    speech adapter's merge and its checks run there (about 10 s on the host for the 128
    weights, measured on an H100 node). ZeRO-3 partitions the weights as it loads them, nf4
    quantizes them on their way to the GPU as before, and a CPU run stays on the host."""
    if not torch.cuda.is_available() or engine == "zero3" or cfg.quantization != "bf16":
        return None
    return {"": torch.cuda.current_device()}


class TrainingRecipe:
    """One run into ``run_dir``: ``run()`` = validate, claim the run dir, set up, train.

    ``stop``: the request the entry point's signal handlers fill in (and the stop file, if
    any); ``requeue_marker``: written by the main process when stopping with a checkpoint to
    resume from (torchrun reports a worker's non-zero exit as a failure, so under torchrun the
    marker, not the exit status, tells the batch script to requeue). ``callbacks``: extra
    Trainer callbacks (benchmarks, tests); ``inputs``: the entry point's checked inputs
    (``inputs.py``), checked here when not given.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        prepared: str | Path,
        model_dir: str | Path,
        run_dir: str | Path,
        stop: StopRequest | None = None,
        requeue_marker: str | Path | None = None,
        callbacks: Sequence[Any] = (),
        inputs: TrainingInputs | None = None,
    ) -> None:
        self.cfg = cfg
        self.prepared, self.model_dir, self.run_dir = (
            Path(p).resolve() for p in (prepared, model_dir, run_dir)
        )
        self.layout = RunDir(self.run_dir)
        self.stop = stop if stop is not None else StopRequest()
        self.requeue_marker = Path(requeue_marker) if requeue_marker else None
        self.callbacks = list(callbacks)
        self.inputs = inputs  # set by validate() when not given
        self.engine = "ddp"
        self.resume: Path | None = None
        self.load_universal = False
        self.loaded: Loaded | None = None
        self.trainer: PronloraTrainer | None = None

    # --- before anything is written --------------------------------------------------------
    def validate(self) -> None:
        """Every input checked first, so a corrected command is not refused as "a different
        setup" by the run.json of a failed one."""
        if self.cfg.dtype == "bf16" and not torch.cuda.is_available():
            where = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ConfigError(
                f"config {self.cfg.name} computes in bf16 on a GPU (dtype: bf16), but this process "
                f"sees no GPU (CUDA_VISIBLE_DEVICES={where!r}); run it on a GPU node, or on a CPU "
                "use --config smoke (dtype: fp32)"
            )
        if self.inputs is None:
            self.inputs = check_training_inputs(self.cfg, self.prepared, self.model_dir)
        if (self.inputs.prepared, self.inputs.model_dir) != (self.prepared, self.model_dir):
            raise ValueError("inputs checked for another prepared dir or model")

    def claim_run_dir(self) -> None:
        """Refuse a run dir of another setup, checked again under the lock; record this one
        (main process)."""
        if not is_main_process():
            return
        assert self.inputs is not None, "validate first"
        check_same_run(self.run_dir, self.cfg, self.inputs)
        self.layout.check_training_outputs()
        resolved = to_dict(self.cfg)
        write_text(self.layout.config_yaml, yaml.safe_dump(resolved, sort_keys=True))
        write_json(self.layout.versions_json, versions())
        write_json(
            self.layout.run_json,
            {
                "config": resolved,
                "model": str(self.model_dir),
                "prepared": str(self.prepared),
                "data_content_hash": self.inputs.data_hash,
                "synthetic_data": self.inputs.manifest.get("synthetic"),
            },
        )

    # --- setup steps -----------------------------------------------------------------------
    def setup(self) -> None:
        init_process_group()
        self.setup_resume()
        self.setup_model()
        self.setup_trainer()

    def setup_resume(self) -> None:
        """The step checkpoint to resume from, the engine, and whether it loads in universal
        form (a ZeRO-2 checkpoint of another rank count)."""
        world = world_size()
        done = complete_checkpoints(self.layout.trainer)
        self.resume = done[-1] if done else None
        self.engine = resolve_engine(self.cfg.engine, world, self.resume)
        if self.engine in DEEPSPEED_ENGINES and world == 1:
            single_process_env()
        if self.resume is None:
            return
        try:
            self.load_universal = resume_plan(self.resume, self.engine, world)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.load_universal and is_main_process():
            ensure_universal(self.resume)
        barrier()

    def setup_model(self) -> None:
        assert self.inputs is not None, "validate first"
        if is_main_process():  # rank 0 builds any cached form of the base; the others wait
            prepare_cache(self.cfg, self.model_dir)
        barrier()
        self.loaded = load_model(
            self.cfg,
            self.model_dir,
            device_map=training_device_map(self.cfg, self.engine),
            snapshot_config=self.inputs.snapshot_config,
        )
        if self.resume is not None and is_main_process():
            recover_epoch_checkpoint(self.run_dir, self.resume, self.loaded.tokenizer)

    def setup_trainer(self) -> None:
        assert self.loaded is not None and self.inputs is not None, "setup_model first"
        cfg, rows = self.cfg, self.inputs.rows
        trainable = sum(p.numel() for p in self.loaded.model.parameters() if p.requires_grad)
        log.info(
            "config %s: %d trainable parameters, %d training instances, effective batch %d "
            "(%d process(es), engine %s)",
            cfg.name,
            trainable,
            len(rows),
            cfg.effective_batch,
            world_size(),
            self.engine,
        )
        if is_main_process():
            start_tracking(cfg, self.run_dir)
        self.trainer = build_trainer(
            cfg, self.loaded, rows, self.run_dir, self.stop, self.engine, self.load_universal
        )
        for callback in self.callbacks:
            self.trainer.add_callback(callback)
        log.info("%d optimizer steps per epoch", math.ceil(len(rows) / cfg.effective_batch))

    # --- the loop and the run's end ----------------------------------------------------------
    def train(self) -> int:
        """Train (resuming if a checkpoint exists); 0 when done, EXIT_REQUEUE after a stop."""
        assert self.trainer is not None, "setup first"
        if self.resume:
            form = " (universal form)" if self.load_universal else ""
            log.info("resuming from %s%s", self.resume, form)
        try:
            self.trainer.train(resume_from_checkpoint=str(self.resume) if self.resume else None)
        except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused a file
            if self.resume is None:
                raise
            raise DataError(
                f"{self.resume}: a file of this step checkpoint cannot be trusted (it holds "
                f"more than tensors: {str(exc).splitlines()[0][:160]}); delete {self.resume} "
                "to resume from the step checkpoint before it"
            ) from None
        step = self.trainer.state.global_step
        if self.stop.stopped:
            if self.requeue_marker and is_main_process():
                write_json(self.requeue_marker, {"global_step": step, "reason": self.stop.reason})
            log.warning(
                "stopped after step %d with a checkpoint; exit %d to requeue", step, EXIT_REQUEUE
            )
            return EXIT_REQUEUE
        # ZeRO-3 ranks hold different partitions by design
        if self.engine != "zero3":
            agreed = verify_replicas(self.trainer.model, self.trainer.args.device)
            if agreed:
                log.info(agreed)
        if is_main_process():
            done = {"global_step": step, "epochs": self.layout.epoch_checkpoints()}
            write_json(self.layout.done_json, done)
        return 0

    def run(self) -> int:
        self.validate()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(self.layout.lock, f"run dir {self.run_dir}")
        if is_main_process():
            lock.acquire()
        try:
            self.claim_run_dir()
            self.setup()
            rc = self.train()
            # every rank done: tear the group down before exit (a gloo group left to the
            # interpreter's shutdown can abort the process after a successful run)
            shutdown_process_group()
        finally:
            lock.release()
        return rc


def train(
    cfg: TrainConfig,
    prepared: str | Path,
    model_dir: str | Path,
    run_dir: str | Path,
    stop: StopRequest | None = None,
    stop_file: str | Path | None = None,
    requeue_marker: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    inputs: TrainingInputs | None = None,
) -> int:
    """Train (or resume) into ``run_dir``; returns 0 when done, EXIT_REQUEUE after a stop.

    ``stop_file``: stop when this file appears (added to ``stop``). No signal handler is
    installed here: the entry point does that (``stopping.install_stop_signals``), and checks
    the inputs before the imports (``inputs``).
    """
    stop = stop if stop is not None else StopRequest()
    if stop_file is not None:
        stop.stop_file = Path(stop_file)
    recipe = TrainingRecipe(
        cfg, prepared, model_dir, run_dir, stop, requeue_marker, callbacks, inputs
    )
    return recipe.run()

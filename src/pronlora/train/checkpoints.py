"""Step and epoch checkpoints of a run dir: which count as written, and how an epoch is saved.

A checkpoint counts once everything in it is on disk: step checkpoints once the Trainer's
state (written last) and, for DeepSpeed, ``parallel.json`` are there; epoch checkpoints are
written into ``<name>.partial`` and renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pronlora.core.atomic import follow_umask, write_json
from pronlora.core.distributed import barrier, is_complete
from pronlora.core.layout import CHECKPOINT_META, UNFROZEN_FILE, RunDir
from pronlora.model.snapshot import ADAPTER_CONFIG, ADAPTER_WEIGHTS

log = logging.getLogger(__name__)


def complete_checkpoints(trainer_dir: Path) -> list[Path]:
    """Step checkpoints whose trainer state was written (the Trainer writes it last)."""
    found = []
    for d in trainer_dir.glob("checkpoint-*"):
        state, adapter = d / "trainer_state.json", d / ADAPTER_WEIGHTS
        if state.is_file() and adapter.is_file() and is_complete(d):
            found.append(d)
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


class TokenizerFiles:
    """The files ``save_pretrained`` writes for the run's tokenizer, serialized once.

    The tokenizer never changes while a run trains, and o200k's 13 MB ``tokenizer.json`` takes
    0.2-0.3 s to serialize; every later epoch checkpoint gets the first one's bytes.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._files: dict[str, bytes] | None = None

    def write(self, dest: Path) -> None:
        if self._files is None:
            written = [Path(p) for p in self.tokenizer.save_pretrained(dest)]
            self._files = {p.name: p.read_bytes() for p in written if p.is_file()}
            return
        for name, data in self._files.items():
            (dest / name).write_bytes(data)


def save_epoch(trainer: Any, tokenizer: TokenizerFiles, dest: Path, meta: dict[str, Any]) -> None:
    """Write one epoch checkpoint into a temporary dir and rename it into place.

    Called on every rank: ``save_model`` gathers partitioned weights (ZeRO-3) and writes on
    the main process only (adapter, plus unfrozen modules through ``_save``).
    """
    tmp = dest.with_name(dest.name + ".partial")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        tokenizer.write(tmp)
        write_json(tmp / CHECKPOINT_META, meta)
        follow_umask(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    barrier()


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
    run = RunDir(run_dir)
    dest = run.epoch(k)
    if k < 1 or abs(epoch - k) > 1e-6 or dest.is_dir():
        return None
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, UNFROZEN_FILE):
        if (resume / name).is_file():
            shutil.copy2(resume / name, tmp / name)
    tokenizer.save_pretrained(tmp)
    name = run.read_run()["config"]["name"]
    meta = {"epoch": k, "global_step": state["global_step"], "config": name}
    write_json(tmp / CHECKPOINT_META, meta)
    follow_umask(tmp)
    tmp.rename(dest)
    log.warning("rebuilt %s from %s (a kill had interrupted its save)", dest, resume)
    return dest

"""A decode job's inputs, checked for its whole share before torch is imported.

A worker decodes its items (checkpoint, shard) one after the other; checked one by one, a
missing ``epoch-4`` was refused only after the items before it had been decoded (minutes of
GPU). ``jobs/infer.py`` checks every item first; ``run_shard`` checks its own item again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pronlora.core.config import ConfigError
from pronlora.core.errors import DataError
from pronlora.core.layout import PreparedDir, RunDir
from pronlora.model.snapshot import check_checkpoint_weights

log = logging.getLogger(__name__)


def checkpoint_to_decode(run_dir: Path, checkpoint: str) -> Path | None:
    """A complete checkpoint of the run with whole weight files (None: ``base``)."""
    ckpt_dir = RunDir(run_dir).complete_checkpoint(checkpoint)
    if ckpt_dir is not None:
        check_checkpoint_weights(ckpt_dir)
    return ckpt_dir


def check_item(run_dir: Path, checkpoint: str, shard: int, num_shards: int) -> None:
    """The shard is one of ``num_shards`` and the checkpoint a complete one of the run."""
    if not 0 <= shard < num_shards:
        raise ConfigError(f"--shard {shard} outside 0..{num_shards - 1}")
    checkpoint_to_decode(run_dir, checkpoint)


def no_run_record(run_dir: Path) -> ConfigError:
    return ConfigError(
        f"--run-dir {run_dir} has no run.json (no training ran there); "
        "give --config and --model to evaluate the base model"
    )


def check_run_record(run_dir: Path, config_and_model_given: bool) -> None:
    """A run dir records its config and model (run.json), or the command gives both."""
    if not RunDir(run_dir).run_json.is_file() and not config_and_model_given:
        raise no_run_record(run_dir)


def check_trained_on(run_dir: Path, prepared: Path, other_data: bool) -> str:
    """The prepared dir's verified content hash, checked to be the data the run was trained on
    (an inference-only run dir records none)."""
    data_hash = PreparedDir(prepared).verified_hash()
    run = RunDir(run_dir)
    trained_on = run.read_run().get("data_content_hash") if run.run_json.is_file() else None
    if trained_on and trained_on != data_hash:
        if not other_data:
            raise DataError(
                f"--prepared {prepared}: content hash {data_hash[:12]}, but {run.run_json} was "
                f"trained on data of hash {trained_on[:12]}; give the prepared dir it was "
                "trained on, or --other-data to decode this one anyway"
            )
        log.warning(
            "decoding %s (content hash %s), not the data %s was trained on (%s)",
            prepared,
            data_hash[:12],
            run_dir,
            trained_on[:12],
        )
    return data_hash


def check_decode_inputs(
    run_dir: str | Path,
    items: Sequence[tuple[str, int]],
    num_shards: int,
    prepared: str | Path,
    split: str,
    *,
    other_data: bool,
    config_and_model_given: bool,
) -> None:
    """Every item of a worker's share, the prepared split and the run's record, before the
    first item is decoded."""
    run_dir, prepared = Path(run_dir).resolve(), Path(prepared).resolve()
    for checkpoint, shard in items:
        check_item(run_dir, checkpoint, shard, num_shards)
    check_run_record(run_dir, config_and_model_given)
    prepared_dir = PreparedDir(prepared)
    prepared_dir.load_split(split)
    if other_data:  # any data, as prep wrote it; each shard names it in the log
        prepared_dir.verified_hash()
    else:
        check_trained_on(run_dir, prepared, other_data=False)
